"""The validation stage: an exported model + raw LFW (or another pair set) -> report.

Raw images are aligned through the preprocessing library with exactly the settings the
model's training crops were made with (read from model.json), and cached under data/.
Pair files are read by utils.verify.pair_files and scored by utils.verify.pair_metrics.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

from utils.verify.embeddings import embed_arrays, embed_files, l2_normalize, load_embedding_model
from utils.preprocess.manifest import MANIFEST_NAME, read_manifest
from utils.verify.pair_files import contiguous_folds, pair_rows, read_bin_pairs, read_pairs
from utils.verify.pair_metrics import evaluate_pairs, plot_roc, score_pairs
from utils.preprocess.settings import SETTINGS_NAME, PreprocessSettings, default_output_dir, normalised_settings
from utils.preprocess.driver import run_preprocess
from utils.core.run_io import read_json, write_json
from utils.core.errors import IcyfaceError


class ValidationError(IcyfaceError):
    """Validation cannot run as asked; the message says why and what to do."""


def aligned_cache_dir(raw_dir: Path, settings: PreprocessSettings, data_root: Path = Path("data")) -> Path:
    """data/<raw name>-<align tag>-<hash>: one cache per raw folder and way of aligning."""
    key = {"raw_dir": str(Path(raw_dir).resolve()), "settings": settings.to_dict()}
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:8]
    base = default_output_dir(raw_dir, settings.align, data_root)
    return base.with_name(f"{base.name}-{digest}")


def align_like_training(raw_dir: Path, info: dict, aligned_dir: Path | None = None, workers: int = 1,
                        progress: bool = True, cache_root: Path = Path("data")) -> tuple[Path, dict]:
    """Aligned copy of raw_dir made with the model's preprocessing settings, and its manifest
    rows. A given aligned_dir must have been made with those same settings."""
    settings = PreprocessSettings.from_dict(info["preprocess_settings"])
    if aligned_dir is not None:
        path = Path(aligned_dir) / SETTINGS_NAME
        if not path.exists():
            raise ValidationError(f"{aligned_dir} has no {SETTINGS_NAME}; pass the raw images with --lfw-dir instead")
        theirs = read_json(path)["settings"]
        if normalised_settings(theirs) != settings.to_dict():
            raise ValidationError(
                f"{aligned_dir} was aligned differently from the model's training crops:\n"
                f"  aligned set: {theirs}\n  training:    {settings.to_dict()}\n"
                f"Pass the raw images with --lfw-dir and they will be aligned the training way.")
    else:
        aligned_dir = aligned_cache_dir(raw_dir, settings, cache_root)
        run_preprocess(raw_dir, aligned_dir, settings, workers=workers, progress=progress)
    return Path(aligned_dir), read_manifest(Path(aligned_dir) / MANIFEST_NAME)


def crops_for(images: list[str], raw_dir: Path, aligned_dir: Path, manifest: dict) -> list[str]:
    """The crop of every raw image, in order; all images without one are named in the error."""
    raw_dir = Path(raw_dir).resolve()
    crops, missing = [], []
    for image in images:
        try:
            rel = Path(image).resolve().relative_to(raw_dir).as_posix()
        except ValueError:
            raise ValidationError(f"pair image {image} is not inside {raw_dir}") from None
        row = manifest.get(rel)
        if row is None or row["status"] == "error":
            missing.append(f"{rel} ({row['error'] if row else 'not aligned'})")
        else:
            crops.append(str(Path(aligned_dir) / row["output"]))
    if missing:
        raise ValidationError(f"{len(missing)} pair images have no aligned crop: " + "; ".join(missing[:20])
                              + (" ..." if len(missing) > 20 else ""))
    return crops


def aligned_pair_crops(lfw_dir: Path, pairs_path: Path, info: dict, aligned_dir: Path | None = None,
                       workers: int = 1, progress: bool = True, cache_root: Path = Path("data")):
    """(pairs, crops): a pair list over raw images, and the aligned crop of every image in
    pairs.images, aligned the way info's model was trained (see align_like_training)."""
    pairs = read_pairs(Path(pairs_path), Path(lfw_dir))
    aligned_dir, manifest = align_like_training(Path(lfw_dir), info, aligned_dir, workers, progress, cache_root)
    return pairs, crops_for(pairs.images, Path(lfw_dir), aligned_dir, manifest)


def embed_bin_pairs(model, size: int, pairs_path: Path, flip: bool, batch_size: int = 128):
    """(emb_a, emb_b, same, fold) of an insightface .bin set, whose pre-aligned 112 px crops are
    decoded and embedded as they are (resized to the model's input `size`)."""
    import cv2

    encoded, same = read_bin_pairs(pairs_path)
    out = []
    for start in range(0, len(encoded), batch_size):
        batch = []
        for data in encoded[start:start + batch_size]:
            bgr = cv2.imdecode(np.frombuffer(bytes(data), np.uint8), cv2.IMREAD_COLOR)
            if bgr is None:
                raise ValidationError(f"{pairs_path}: image {start + len(batch)} does not decode")
            batch.append(cv2.resize(bgr[:, :, ::-1], (size, size), interpolation=cv2.INTER_AREA))
        out.append(embed_arrays(model, np.asarray(batch, np.float32), flip))
    emb = np.concatenate(out)
    return emb[0::2], emb[1::2], np.asarray(same, bool), contiguous_folds(len(same))


def target_names(pairs_files, taken=()) -> list[str]:
    """A short unique name per pair set, for report folders and logged columns: the file's stem
    (agedb_30.bin -> agedb_30), or its folder's for a pairs.txt (lfw/pairs.txt -> lfw)."""
    import re

    names, taken = [], set(taken)
    for path in map(Path, pairs_files):
        base = path.parent.name if path.stem == "pairs" and path.parent.name else path.stem
        base = re.sub(r"[^a-z0-9_]+", "_", base.lower()).strip("_") or "pairs"
        name, n = base, 1
        while name in taken:
            n += 1
            name = f"{base}_{n}"
        taken.add(name)
        names.append(name)
    return names


FUSIONS = ("concat", "mean-score")
# The headline figures of a verification, as reports, summaries and benchmarks list them.
FIGURES = ("accuracy_mean", "accuracy_std", "val_at_far", "auc", "eer")


class _Member(NamedTuple):
    """One model's L2-normalised embeddings of both sides of every pair."""
    run_dir: Path
    info: dict
    emb_a: np.ndarray
    emb_b: np.ndarray
    same: np.ndarray
    fold: np.ndarray
    images: int
    pair_crops: tuple[list[str], list[str]] | None  # None for .bin sets, which have no files
    pair_images: tuple[list[str], list[str]] | None  # the raw images, likewise
    timings: dict


def _embed_member(run_dir: Path, lfw_dir: Path, pairs_path: Path, flip: bool, aligned_dir: Path | None,
                  workers: int, batch_size: int, progress: bool, cache_root: Path, memo: dict | None) -> _Member:
    """The run's model embeds the pairs, LFW aligned the way its own training crops were."""
    model, info = load_embedding_model(run_dir)
    timings = {}
    t = time.time()
    if pairs_path.suffix == ".bin":
        emb_a, emb_b, same, fold = embed_bin_pairs(model, info["input_size"], pairs_path, flip, batch_size)
        timings["embed_s"] = round(time.time() - t, 2)
        return _Member(run_dir, info, emb_a, emb_b, same, fold, 2 * len(same), None, None, timings)
    pairs, crops = aligned_pair_crops(lfw_dir, pairs_path, info, aligned_dir, workers, progress, cache_root)
    timings["align_s"] = round(time.time() - t, 2)
    t = time.time()
    emb = embed_files(model, crops, info["input_size"], flip, batch_size, progress, memo)
    timings["embed_s"] = round(time.time() - t, 2)
    rows_a, rows_b = pair_rows(pairs)
    return _Member(run_dir, info, emb[rows_a], emb[rows_b], np.asarray(pairs.same), np.asarray(pairs.fold),
                   len(pairs.images), ([crops[i] for i in rows_a], [crops[i] for i in rows_b]),
                   (list(pairs.path_a), list(pairs.path_b)), timings)


def checked_weights(weights, members: int) -> np.ndarray:
    """An ensemble's member weights scaled to sum to 1 (None: equal), or why they cannot be used."""
    weights = np.ones(members) if weights is None else np.asarray(weights, dtype=np.float64)
    if weights.shape != (members,) or (weights < 0).any() or not weights.sum() > 0:
        raise ValidationError(f"fusion weights must be one per --model ({members}), in the same order, none negative "
                              f"and not all zero; got {weights.tolist()}")
    return weights / weights.sum()


def fused_scores(members, metric: str, fusion: str, weights=None) -> np.ndarray:
    """Pair scores of several models: "concat" scores the concatenated L2-normalised embeddings,
    "mean-score" averages the models' own pair scores. With the cosine metric the two are the
    same number (the cosine of concatenated unit vectors is the mean of their cosines); with the
    Euclidean one they differ. One model: its own scores either way. `weights` (one per member,
    default equal) scale each unit embedding by the weight's square root before concatenating, so
    that with cosine the fused score is the weighted mean of the members' scores."""
    if fusion not in FUSIONS:
        raise ValidationError(f"unknown fusion {fusion!r}; choose from {', '.join(FUSIONS)}")
    weights = checked_weights(weights, len(members))
    if fusion == "concat":
        def joined(side):
            return l2_normalize(np.concatenate([np.sqrt(w) * l2_normalize(getattr(m, side))
                                                for m, w in zip(members, weights)], axis=1))
        return score_pairs(joined("emb_a"), joined("emb_b"), metric)
    return weights @ np.array([score_pairs(m.emb_a, m.emb_b, metric) for m in members])


def _run_list(run_dirs) -> list[Path]:
    """One run directory, or several (an ensemble), as a list."""
    return [Path(run_dirs)] if isinstance(run_dirs, (str, Path)) else [Path(r) for r in run_dirs]


def _summary(metrics: dict) -> dict:
    return {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in metrics.items()
            if k not in ("fpr", "tpr", "roc_thresholds")}


def validate(run_dirs, lfw_dir: Path, pairs_path: Path, out_dir: Path | None = None, flip: bool = True,
             metric: str = "cosine", aligned_dir: Path | None = None, workers: int = 1, batch_size: int = 128,
             progress: bool = True, cache_root: Path = Path("data"), fusion: str = "concat",
             fusion_weights: dict | None = None, memo: dict | None = None) -> dict:
    """Score the pairs with one run's model, or an ensemble of several (fused by `fusion`, each
    member weighted by fusion_weights["weights"] when given: utils.verify.fusion_weights, or the user's);
    write report.json, roc.png and scores.csv (per-pair scores; not for .bin sets, which have
    no files) into out_dir (default: the run's directory; an ensemble needs one). memo: one model's
    crop embeddings, shared with identification_report (see embed_files)."""
    started = time.time()
    runs = _run_list(run_dirs)
    pairs_path = Path(pairs_path)
    if len(runs) > 1 and (out_dir is None or aligned_dir is not None):
        raise ValidationError("an ensemble of several --model runs needs --out (its report is its own), and no "
                              "--aligned-dir (each member aligns LFW the way its own crops were aligned)")
    if fusion_weights is not None:
        checked_weights(fusion_weights["weights"], len(runs))  # before minutes of aligning and embedding
    if not pairs_path.exists():
        raise ValidationError(f"pairs file {pairs_path} not found (LFW's View 2 pairs.txt goes in lfw/)")
    if pairs_path.suffix != ".bin" and not Path(lfw_dir).is_dir():
        raise ValidationError(f"LFW images not found in {lfw_dir}: put the official lfw/<Name>/<Name>_NNNN.jpg "
                              f"tree there or pass --lfw-dir")
    if memo is not None and len(runs) > 1:
        raise ValidationError("a memo of embeddings belongs to one model; an ensemble has several")
    members = [_embed_member(run, Path(lfw_dir), pairs_path, flip, aligned_dir, workers, batch_size, progress,
                             cache_root, memo) for run in runs]
    same, fold = members[0].same, members[0].fold
    weights = fusion_weights["weights"] if fusion_weights else None
    scores = fused_scores(members, metric, fusion, weights)
    metrics = evaluate_pairs(scores, same, fold)
    out_dir = Path(out_dir or runs[0])
    out_dir.mkdir(parents=True, exist_ok=True)
    net_type = " + ".join(m.info["net_type"] for m in members)
    plot_roc(metrics, out_dir / "roc.png", title=f"{net_type} on {pairs_path.name}")
    report = {"model": str(runs[0]), "net_type": net_type, "pairs": str(pairs_path),
              "pairs_count": int(len(same)), "images": int(members[0].images), "flip": flip, "metric": metric, "alignment": members[0].info["alignment"], "metrics": _summary(metrics)}
    if len(members) == 1:
        report["timings"] = {**members[0].timings, "total_s": round(time.time() - started, 2)}
    else:
        # Every fusion's figures beside the chosen one's, weighted and not: cheap (scores only), and what the
        # choice rests on.
        options = [(name, name, weights) for name in FUSIONS]
        if weights is not None:
            options += [(f"{name}, equal weights", name, None) for name in FUSIONS]
        by_fusion = {label: {k: v for k, v in evaluate_pairs(fused_scores(members, metric, name, w), same,
                                                             fold).items() if k in FIGURES}
                     for label, name, w in options}
        if fusion_weights:
            report["fusion_weights"] = fusion_weights
        report.update(model=[str(r) for r in runs], alignment=[m.info["alignment"] for m in members], fusion=fusion,
                      by_fusion=by_fusion, timings={"total_s": round(time.time() - started, 2)}, members=[
                          {"model": str(m.run_dir), "net_type": m.info["net_type"], "alignment": m.info["alignment"],
                           "timings": m.timings, "metrics": _summary(evaluate_pairs(
                               score_pairs(m.emb_a, m.emb_b, metric), same, fold))} for m in members])
    write_json(out_dir / "report.json", report)
    if members[0].pair_crops is not None:  # an ensemble's members have crops of their own: name the photos
        single = len(members) == 1
        _write_scores(out_dir / "scores.csv", members[0].pair_crops if single else members[0].pair_images,
                      same, fold, scores, ("crop_a", "crop_b") if single else ("image_a", "image_b"))
    return report


SUMMARY_FIGURES = (*FIGURES, "threshold")


def decision_threshold(report: dict) -> float | None:
    """The threshold a report.json chose: its own or, when it scored several sets, LFW's (the one
    this project documents); None when those sets do not include LFW."""
    if "targets" in report:
        rows = {row["name"]: row for row in report["targets"]}
        return float(rows["lfw"]["threshold"]) if "lfw" in rows else None
    return float(report["metrics"]["threshold"])


def validate_targets(run_dirs, lfw_dir: Path, targets, out_dir: Path | None = None, **options) -> dict:
    """validate() on each pair set of `targets`; with several, each one's report goes to
    out_dir/<name>/ and out_dir/report.json holds a row per target."""
    targets = [Path(t) for t in targets]
    if len(targets) == 1:
        return validate(run_dirs, lfw_dir, targets[0], out_dir, **options)
    runs = _run_list(run_dirs)
    out_dir = Path(out_dir or runs[0])
    rows = []
    for name, target in zip(target_names(targets), targets):
        report = validate(runs, lfw_dir, target, out_dir / name, **options)
        rows.append({"name": name, "pairs": str(target), "pairs_count": report["pairs_count"],
                     **{k: report["metrics"][k] for k in SUMMARY_FIGURES},
                     "report": str(out_dir / name / "report.json")})
    summary = {"model": [str(r) for r in runs] if len(runs) > 1 else str(runs[0]), "targets": rows,
               "flip": options.get("flip", True), "metric": options.get("metric", "cosine")}
    if options.get("fusion_weights"):  # one set of weights for every target: verify_faces.py reads them here
        summary["fusion_weights"] = options["fusion_weights"]
    write_json(out_dir / "report.json", summary)
    return summary


def _write_scores(path: Path, pair_files, same, fold, scores, names=("crop_a", "crop_b")):
    """Every pair's score, for finding the hardest false accepts and rejects."""
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow([*names, "same", "fold", "score"])
        for a, b, s, k, v in zip(*pair_files, same, fold, scores):
            writer.writerow([a, b, int(s), int(k), f"{float(v):.6f}"])


def format_report(report: dict) -> str:
    if "targets" in report:  # several pair sets: a row each
        lines = [f"{'target':<14} {'pairs':>6}  {'accuracy':<16} {'VAL@FAR=1e-3':>12} {'AUC':>7} {'EER':>7}"]
        for t in report["targets"]:
            lines.append(f"{t['name']:<14} {t['pairs_count']:>6}  {t['accuracy_mean']:.4f} ± {t['accuracy_std']:.4f}"
                         f"  {t['val_at_far']:>12.4f} {t['auc']:>7.4f} {t['eer']:>7.4f}")
        return "\n".join(lines)
    m = report["metrics"]
    fused = f", {report['fusion']} fusion" if "fusion" in report else ""
    lines = [f"{report['net_type']} on {report['pairs_count']} pairs of {report['pairs']} "
             f"({report['metric']}{fused}, flip {'on' if report['flip'] else 'off'})",
             f"accuracy     {m['accuracy_mean']:.4f} ± {m['accuracy_std']:.4f}  (10-fold)",
             f"threshold    {m['threshold']:.4f}",
             f"VAL@FAR=1e-3 {m['val_at_far']:.4f}",
             f"AUC          {m['auc']:.4f}",
             f"EER          {m['eer']:.4f}",
             "time         " + ", ".join(f"{k} {v} s" for k, v in report["timings"].items())]
    weights = report.get("fusion_weights", {}).get("weights") or [None] * len(report.get("members", []))
    for member, weight in zip(report.get("members", []), weights):
        mm = member["metrics"]
        weighted = "" if weight is None else f", weight {weight:.2f}"
        lines.append(f"  member {member['model']} ({member['net_type']}{weighted}): accuracy {mm['accuracy_mean']:.4f} ± "
                     f"{mm['accuracy_std']:.4f}, VAL@FAR=1e-3 {mm['val_at_far']:.4f}")
    if "fusion_weights" in report and "chosen_on" in report["fusion_weights"]:
        tuned = report["fusion_weights"]
        lines.append(f"  weights chosen on {tuned['chosen_on']} ({tuned['pairs']} pairs): pair accuracy "
                     f"{tuned['pair_accuracy']:.4f}, equal weights {tuned['equal_weights_pair_accuracy']:.4f}")
    return "\n".join(lines)


def tree_embeddings(model, info: dict, tree: Path, flip: bool = True, aligned_dir: Path | None = None,
                    workers: int = 1, batch_size: int = 128, progress: bool = True,
                    cache_root: Path = Path("data"), memo: dict | None = None) -> tuple[list[str], np.ndarray]:
    """(raw paths relative to tree, in sorted order; their L2-normalised embeddings) of every image
    of a folder-per-identity tree in which the alignment of the run (model, its model.json) found
    a face, aligned (and cached) the way the run was trained."""
    aligned_dir, manifest = align_like_training(Path(tree), info, aligned_dir, workers, progress, cache_root)
    rows = sorted((rel, row) for rel, row in manifest.items() if row["status"] != "error")
    if not rows:
        raise ValidationError(f"no face was found in any image of {tree}")
    emb = embed_files(model, [str(Path(aligned_dir) / row["output"]) for _, row in rows], info["input_size"], flip,
                      batch_size, progress, memo)
    return [rel for rel, _ in rows], emb


def identity_of(relative_path: str) -> str:
    """The person of an image in a folder-per-identity tree: its first folder."""
    return relative_path.split("/", 1)[0]


def identification_report(run_dir: Path, lfw_dir: Path, flip: bool = True, aligned_dir: Path | None = None,
                          workers: int = 1, batch_size: int = 128, progress: bool = True,
                          cache_root: Path = Path("data"), memo: dict | None = None) -> dict:
    """1:N identification (utils.verify.identification), twice:
    - "lfw": every aligned image of lfw_dir (<Name>/<image>), aligned the way the run was trained;
      people with two or more images enrol their first and probe with the rest, people with one
      image are the strangers (non-mated probes);
    - "holdout": the run's own people: one training crop of each enrolled, the holdout crops as
      probes, LFW's strangers as non-mated probes (or why it was skipped).
    memo: the LFW crops' embeddings validate() already made with this run (see embed_files)."""
    from utils.verify.identification import identification_metrics, split_gallery

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
    try:
        report["holdout"] = _holdout_identification(Path(run_dir), model, info, strangers, flip, batch_size,
                                                    progress)
    except ValidationError as err:
        report["holdout"] = {"skipped": str(err)}
    return report


def _holdout_identification(run_dir: Path, model, info: dict, strangers: np.ndarray, flip: bool, batch_size: int,
                            progress: bool) -> dict:
    """The training people as the gallery (each one's first training crop), the holdout as probes."""
    from dataclasses import replace

    from utils.verify.identification import identification_metrics
    from utils.training.config import TrainConfig, TrainingError, recipe_from_json
    from utils.training.data import load_crops

    config = replace(TrainConfig(), **recipe_from_json(read_json(run_dir / "config.json")["recipe"]))
    try:
        crops = load_crops(config)  # the same split as training: the recipe's seed and settings
    except TrainingError as err:
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
