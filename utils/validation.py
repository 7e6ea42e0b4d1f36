"""The validation stage: an exported model + raw LFW (or another pair set) -> report.

Raw images are aligned through the preprocessing library with exactly the settings the
model's training crops were made with (read from model.json), and cached under data/.
Pair files are read by utils.pair_files and scored by utils.pair_metrics.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np

from utils.embeddings import embed_arrays, embed_files, load_embedding_model
from utils.manifest import MANIFEST_NAME, read_manifest
from utils.pair_files import contiguous_folds, pair_rows, read_bin_pairs, read_pairs
from utils.pair_metrics import evaluate_pairs, plot_roc, score_pairs
from utils.preprocess_settings import SETTINGS_NAME, PreprocessSettings, default_output_dir, normalised_settings
from utils.preprocessing import run_preprocess
from utils.run_io import read_json, write_json


class ValidationError(Exception):
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


def _embed_bin(model, info: dict, pairs_path: Path, flip: bool, batch_size: int):
    """insightface .bin sets hold pre-aligned 112 px crops: decode and embed them as they are."""
    import cv2

    encoded, same = read_bin_pairs(pairs_path)
    size = info["input_size"]
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


def validate(run_dir: Path, lfw_dir: Path, pairs_path: Path, out_dir: Path | None = None, flip: bool = True,
             metric: str = "cosine", aligned_dir: Path | None = None, workers: int = 1, batch_size: int = 128,
             progress: bool = True, cache_root: Path = Path("data")) -> dict:
    """Score the pairs with the run's model; write report.json, roc.png and scores.csv
    (per-pair scores; not for .bin sets, which have no files) into out_dir."""
    started = time.time()
    run_dir, pairs_path = Path(run_dir), Path(pairs_path)
    out_dir = Path(out_dir or run_dir)
    if not pairs_path.exists():
        raise ValidationError(f"pairs file {pairs_path} not found (LFW's View 2 pairs.txt goes in lfw/)")
    model, info = load_embedding_model(run_dir)
    timings = {}
    if pairs_path.suffix == ".bin":
        t = time.time()
        emb_a, emb_b, same, fold = _embed_bin(model, info, pairs_path, flip, batch_size)
        timings["embed_s"] = round(time.time() - t, 2)
        n_images = 2 * len(same)
    else:
        if not Path(lfw_dir).is_dir():
            raise ValidationError(f"LFW images not found in {lfw_dir}: put the official lfw/<Name>/<Name>_NNNN.jpg "
                                  f"tree there or pass --lfw-dir")
        t = time.time()
        pairs, crops = aligned_pair_crops(Path(lfw_dir), pairs_path, info, aligned_dir, workers, progress,
                                          cache_root)
        timings["align_s"] = round(time.time() - t, 2)
        images = pairs.images
        t = time.time()
        emb = embed_files(model, crops, info["input_size"], flip, batch_size, progress)
        timings["embed_s"] = round(time.time() - t, 2)
        rows_a, rows_b = pair_rows(pairs)
        emb_a, emb_b = emb[rows_a], emb[rows_b]
        same, fold, n_images = pairs.same, pairs.fold, len(images)
        pair_crops = ([crops[i] for i in rows_a], [crops[i] for i in rows_b])
    scores = score_pairs(emb_a, emb_b, metric)
    metrics = evaluate_pairs(scores, same, fold)
    timings["total_s"] = round(time.time() - started, 2)
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_roc(metrics, out_dir / "roc.png", title=f"{info['net_type']} on {pairs_path.name}")
    report = {
        "model": str(run_dir), "net_type": info["net_type"], "pairs": str(pairs_path), "pairs_count": int(len(same)),
        "images": int(n_images), "flip": flip, "metric": metric,
        "alignment": info["alignment"], "timings": timings,
        "metrics": {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in metrics.items()
                    if k not in ("fpr", "tpr", "roc_thresholds")},
    }
    write_json(out_dir / "report.json", report)
    if pairs_path.suffix != ".bin":
        _write_scores(out_dir / "scores.csv", pair_crops, same, fold, scores)
    return report


def _write_scores(path: Path, pair_crops, same, fold, scores):
    """Every pair's score, for finding the hardest false accepts and rejects."""
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["crop_a", "crop_b", "same", "fold", "score"])
        for a, b, s, k, v in zip(*pair_crops, same, fold, scores):
            writer.writerow([a, b, int(s), int(k), f"{float(v):.6f}"])


def format_report(report: dict) -> str:
    m = report["metrics"]
    lines = [f"{report['net_type']} on {report['pairs_count']} pairs of {report['pairs']} "
             f"({report['metric']}, flip {'on' if report['flip'] else 'off'})",
             f"accuracy     {m['accuracy_mean']:.4f} ± {m['accuracy_std']:.4f}  (10-fold)",
             f"threshold    {m['threshold']:.4f}",
             f"VAL@FAR=1e-3 {m['val_at_far']:.4f}",
             f"AUC          {m['auc']:.4f}",
             f"EER          {m['eer']:.4f}",
             f"time         " + ", ".join(f"{k} {v} s" for k, v in report["timings"].items())]
    return "\n".join(lines)
