"""The run's own people identified 1:N: each one's first training crop enrolled, the holdout
crops as probes, with the run's split remade from its config.json (the training stage owns it).
validate_on_lfw.py --identification passes holdout_identification to the verify stage."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from utils.core.errors import IcyfaceError
from utils.core.run_io import read_json
from utils.training.config import TrainConfig, recipe_from_json
from utils.training.data import load_crops
from utils.verify.aligned_cache import ValidationError
from utils.verify.embeddings import embed_files
from utils.verify.identification import identification_metrics


def holdout_identification(run_dir: Path, model, info: dict, strangers: np.ndarray, flip: bool, batch_size: int,
                            progress: bool) -> dict:
    """The training people as the gallery (each one's first training crop), the holdout as probes."""
    config = replace(TrainConfig(), **recipe_from_json(read_json(run_dir / "config.json")["recipe"]))
    try:
        crops = load_crops(config)  # the same split as training: the recipe's seed and settings
    except IcyfaceError as err:  # moved, unreadable, too few identities...
        raise ValidationError(f"the run's training crops are not readable here ({err})") from None
    if crops.files.pack is not None:
        raise ValidationError("the run trained on an insightface pack; holdout identification reads crops folders")
    if not len(crops.val_idx):
        raise ValidationError("the run held no images out (--val-split 0)")
    labels = np.asarray(crops.files.labels)
    _, first = np.unique(labels[crops.train_idx], return_index=True)
    gallery = np.asarray(crops.train_idx)[first]
    probes = np.asarray(crops.val_idx)[np.isin(labels[crops.val_idx], labels[gallery])]
    emb = embed_files(model, [crops.files.paths[i] for i in (*gallery, *probes)], info["input_size"], flip,
                      batch_size, progress)
    return {"crops": config.data_dir, **identification_metrics(emb[:len(gallery)], labels[gallery],
                                                               emb[len(gallery):], labels[probes], strangers)}
