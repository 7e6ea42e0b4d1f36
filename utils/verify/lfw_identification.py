"""1:N identification of a run over a folder-per-identity tree (LFW) and over the run's own
holdout; the metrics themselves are utils.verify.identification's."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from utils.verify.aligned_cache import ValidationError, identity_of, tree_embeddings
from utils.verify.embeddings import load_embedding_model
from utils.verify.identification import identification_metrics, split_gallery


def identification_report(run_dir: Path, lfw_dir: Path, flip: bool = True, aligned_dir: Path | None = None,
                          workers: int = 1, batch_size: int = 128, progress: bool = True,
                          cache_root: Path = Path("data"), memo: dict | None = None, holdout=None) -> dict:
    """1:N identification (utils.verify.identification), twice:
    - "lfw": every aligned image of lfw_dir (<Name>/<image>), aligned the way the run was trained;
      people with two or more images enrol their first and probe with the rest, people with one
      image are the strangers (non-mated probes);
    - "holdout": the run's own people: one training crop of each enrolled, the holdout crops as
      probes, LFW's strangers as non-mated probes (or why it was skipped), scored by
      holdout(run_dir, model, info, strangers, flip, batch_size, progress): the training stage's
      utils.training.holdout.holdout_identification, which knows the run's split;
    memo: the LFW crops' embeddings validate() already made with this run (see embed_files)."""
    model, info = load_embedding_model(run_dir)  # once, for LFW and the holdout
    paths, emb = tree_embeddings(model, info, lfw_dir, flip, aligned_dir, workers, batch_size, progress, cache_root,
                                 memo)
    people = np.array([identity_of(p) for p in paths])
    split = split_gallery(people)
    if not len(split.gallery):
        raise ValidationError(f"{lfw_dir} has nobody with two or more aligned images: no gallery to identify against")
    strangers = emb[split.non_mated]
    report = {"lfw": {"images": len(paths), "flip": flip, **identification_metrics(
        emb[split.gallery], people[split.gallery], emb[split.mated], people[split.mated], strangers)}}
    if holdout is None:
        report["holdout"] = {"skipped": "no holdout scorer given (validate_on_lfw.py passes the training stage's)"}
        return report
    try:
        report["holdout"] = holdout(Path(run_dir), model, info, strangers, flip, batch_size, progress)
    except ValidationError as err:
        report["holdout"] = {"skipped": str(err)}
    return report
