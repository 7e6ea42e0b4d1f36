"""The validation stage: an exported model (or an ensemble) + raw LFW (or another pair set)
-> report.json, roc.png, scores.csv.

Raw images are aligned like the model's training crops (utils.verify.aligned_cache), pair
files are read by utils.verify.pair_files, scored by utils.verify.pair_metrics, and an
ensemble's members fused by utils.verify.fusion. 1:N identification: lfw_identification.
"""
from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

from utils.core.run_io import write_json
from utils.verify.aligned_cache import ValidationError, aligned_pair_crops
from utils.verify.embeddings import embed_arrays, embed_files, load_embedding_model
from utils.verify.fusion import FUSIONS, checked_weights, fused_scores
from utils.verify.pair_files import check_pair_sets, contiguous_folds, pair_rows, read_bin_pairs
from utils.verify.pair_metrics import evaluate_pairs, plot_roc, score_pairs


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


@contextlib.contextmanager
def _embedding_timed(timings: dict):
    """embed_s, and the CPU seconds this process spent per wall second meanwhile beside the CPUs it
    may use: about 1 on 2 CPUs means it had one core's worth (a neighbour, a pin or a 1-thread pool;
    benchmarks/embed_speed_probe.py), so a slow run says why."""
    wall, cpu = time.time(), time.process_time()
    yield
    wall = time.time() - wall
    timings.update(embed_s=round(wall, 2), embed_cpu_per_wall=round((time.process_time() - cpu) / max(wall, 1e-6), 2),
                   cpus_allowed=len(os.sched_getaffinity(0)))


def _embed_member(run_dir: Path, lfw_dir: Path, pairs_path: Path, flip: bool, aligned_dir: Path | None,
                  workers: int, batch_size: int, progress: bool, cache_root: Path, memo: dict | None) -> _Member:
    """The run's model embeds the pairs, LFW aligned the way its own training crops were."""
    model, info = load_embedding_model(run_dir)
    timings = {}
    if pairs_path.suffix == ".bin":
        with _embedding_timed(timings):
            emb_a, emb_b, same, fold = embed_bin_pairs(model, info["input_size"], pairs_path, flip, batch_size)
        return _Member(run_dir, info, emb_a, emb_b, same, fold, 2 * len(same), None, None, timings)
    t = time.time()
    pairs, crops = aligned_pair_crops(lfw_dir, pairs_path, info, aligned_dir, workers, progress, cache_root)
    timings["align_s"] = round(time.time() - t, 2)
    with _embedding_timed(timings):
        emb = embed_files(model, crops, info["input_size"], flip, batch_size, progress, memo)
    rows_a, rows_b = pair_rows(pairs)
    return _Member(run_dir, info, emb[rows_a], emb[rows_b], np.asarray(pairs.same), np.asarray(pairs.fold),
                   len(pairs.images), ([crops[i] for i in rows_a], [crops[i] for i in rows_b]),
                   (list(pairs.path_a), list(pairs.path_b)), timings)


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
    check_pair_sets(lfw_dir, [pairs_path])
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
              "pairs_count": int(len(same)), "images": int(members[0].images), "flip": flip, "metric": metric,
              "alignment": members[0].info["alignment"], "metrics": _summary(metrics)}
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
             "time         " + ", ".join(f"{k} {v}{' s' if k.endswith('_s') else ''}"
                                        for k, v in report["timings"].items())]
    weights = report.get("fusion_weights", {}).get("weights") or [None] * len(report.get("members", []))
    for member, weight in zip(report.get("members", []), weights):
        mm = member["metrics"]
        weighted = "" if weight is None else f", weight {weight:.2f}"
        lines.append(f"  member {member['model']} ({member['net_type']}{weighted}): "
                     f"accuracy {mm['accuracy_mean']:.4f} ± "
                     f"{mm['accuracy_std']:.4f}, VAL@FAR=1e-3 {mm['val_at_far']:.4f}")
    if "fusion_weights" in report and "chosen_on" in report["fusion_weights"]:
        tuned = report["fusion_weights"]
        lines.append(f"  weights chosen on {tuned['chosen_on']} ({tuned['pairs']} pairs): pair accuracy "
                     f"{tuned['pair_accuracy']:.4f}, equal weights {tuned['equal_weights_pair_accuracy']:.4f}")
    return "\n".join(lines)


