"""Verification metrics on pair scores: similarities, cross-validated thresholds, ROC plots.

Conventions used throughout:

* A score is a similarity: higher means more alike. For distances, pass the negated distance.
* A pair is predicted "same person" when ``score >= threshold``.
* Pairs are split into folds; every threshold is chosen on the other folds and measured on
  the held-out one (the LFW View 2 protocol), so no fold's result has seen its own labels.

NumPy, scikit-learn and matplotlib only: no TensorFlow import, so evaluating saved
embeddings stays cheap.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from sklearn.metrics import auc as area_under_curve
from sklearn.metrics import roc_curve

from utils.core.run_io import atomic_write_bytes
from utils.verify.names import METRICS  # noqa: F401  (score_pairs' choices)
from utils.verify.pair_files import as_bool_array

# ---------------------------------------------------------------------------------------------
# Scores
# ---------------------------------------------------------------------------------------------

def _paired_rows(a, b) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"expected two (pairs, dims) arrays of the same shape, got {a.shape} and {b.shape}")
    return a, b


def cosine_similarity(a, b) -> np.ndarray:
    """Cosine of the angle between a[i] and b[i], for every row i.

    A row that is all zeros scores 0 (no evidence either way): ReLU embeddings such as the
    seed's 160-d hidden layer are all-zero for some inputs, and validation must still run.
    """
    a, b = _paired_rows(a, b)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.einsum("ij,ij->i", a, b) / np.where(norms > 0, norms, 1.0)


def euclidean_distance(a, b) -> np.ndarray:
    """Distance between a[i] and b[i], for every row i (negate it to use as a score)."""
    a, b = _paired_rows(a, b)
    return np.linalg.norm(a - b, axis=1)


def score_pairs(emb_a: np.ndarray, emb_b: np.ndarray, metric: str) -> np.ndarray:
    """Higher = more alike: cosine similarity, or the negated Euclidean distance."""
    return cosine_similarity(emb_a, emb_b) if metric == "cosine" else -euclidean_distance(emb_a, emb_b)


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------

def predict_same(scores, threshold: float) -> np.ndarray:
    """The one decision rule every metric here uses."""
    return np.asarray(scores) >= threshold


def best_accuracy_threshold(scores, same) -> float:
    """Threshold that classifies the most pairs correctly.

    Candidates are -inf, the midpoints between consecutive distinct scores, and +inf. Several
    candidates can tie; the median one in score order (the lower of the two middle ones for an
    even count) is returned, so the threshold sits inside a flat optimum rather than at its edge.
    """
    scores, same = np.asarray(scores, dtype=np.float64), np.asarray(same, dtype=bool)
    values, inverse = np.unique(scores, return_inverse=True)
    same_per_value = np.bincount(inverse[same], minlength=len(values))
    different_per_value = np.bincount(inverse[~same], minlength=len(values))
    # Candidate j accepts values[j:]: it gets right the matched pairs from j on and the
    # mismatched pairs below j.
    same_accepted = same_per_value.sum() - np.concatenate(([0], np.cumsum(same_per_value)))
    different_rejected = np.concatenate(([0], np.cumsum(different_per_value)))
    correct = same_accepted + different_rejected
    candidates = np.concatenate(([-np.inf], (values[:-1] + values[1:]) / 2, [np.inf]))
    best = np.flatnonzero(correct == correct.max())
    return float(candidates[best[(len(best) - 1) // 2]])


def threshold_at_far(impostor_scores, far_target: float) -> float:
    """Threshold whose false-accept rate on these mismatched-pair scores is far_target.

    As in FaceNet, the threshold is linearly interpolated as a function of FAR between the
    measured (FAR, score) points. A target below the smallest measurable FAR gets the tightest
    threshold that rejects every impostor seen.
    """
    values, counts = np.unique(np.asarray(impostor_scores, dtype=np.float64), return_counts=True)
    # accepting values[j:] lets through counts[j:] impostors; reversed, FAR strictly increases
    far_from_top = np.cumsum(counts[::-1]) / counts.sum()
    far_knots = np.concatenate(([0.0], far_from_top))
    threshold_knots = np.concatenate(([np.nextafter(values[-1], np.inf)], values[::-1]))
    return float(np.interp(far_target, far_knots, threshold_knots))


def _checked_pairs(scores, same, fold) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    same = as_bool_array(same, "same")
    fold = np.asarray(fold)
    if scores.ndim != 1 or not (len(scores) == len(same) == len(fold)):
        raise ValueError(f"scores, same and fold must be 1-D and equally long, got {scores.shape}, "
                         f"{same.shape}, {fold.shape}")
    if not np.isfinite(scores).all():
        raise ValueError(f"{np.count_nonzero(~np.isfinite(scores))} scores are not finite")
    if fold.dtype.kind not in "iu":
        raise ValueError(f"fold must hold integers, got dtype {fold.dtype}")
    folds = np.unique(fold)
    if len(folds) < 2:
        raise ValueError("cross-validation needs at least two folds")
    for k in folds:
        classes = np.unique(same[fold == k])
        if len(classes) < 2:
            raise ValueError(f"fold {k} holds only {'matched' if classes[0] else 'mismatched'} pairs; every fold "
                             "needs both (were the pairs listed one class after the other?)")
    return scores, same, fold


def _equal_error_rate(fpr: np.ndarray, tpr: np.ndarray) -> float:
    # FAR - FRR = fpr + tpr - 1 never decreases along the ROC and goes from -1 to 1; the EER
    # is where it crosses zero, linearly interpolated on the segment that crosses.
    gap = fpr + tpr - 1
    after = int(np.argmax(gap >= 0))
    before = after - 1
    weight = -gap[before] / (gap[after] - gap[before])
    return float(fpr[before] + weight * (fpr[after] - fpr[before]))


def evaluate_pairs(scores, same, fold, far_target: float = 1e-3) -> dict:
    """Cross-validated verification metrics for pair similarity scores.

    For each fold k, thresholds are chosen on the other folds and applied to fold k:
    best_accuracy_threshold for the accuracy, threshold_at_far for VAL (true-accept rate) at
    FAR=far_target. Returns a dict of:

    * accuracy_mean, accuracy_std: over folds; std is numpy's population std (ddof=0), as
      insightface and FaceNet report it (LFW's results page gives the standard error instead).
    * fold_accuracies, fold_thresholds: per fold (arrays).
    * threshold: mean of fold_thresholds, the single threshold a deployment would use
      (pairs with score >= threshold are accepted).
    * far_target, val_at_far, val_at_far_std: VAL on the held-out folds, mean and std (ddof=0).
    * far_achieved: mean FAR measured on the held-out folds at those thresholds.
    * fold_val, fold_far, fold_val_thresholds: per fold (arrays).
    * auc, eer: area under the ROC and equal error rate over all pairs, no folds.
    * fpr, tpr, roc_thresholds: the ROC over all pairs (sklearn.metrics.roc_curve), for plots.
    """
    if not 0 < far_target <= 1:
        raise ValueError(f"far_target must be in (0, 1], got {far_target}")
    scores, same, fold = _checked_pairs(scores, same, fold)
    accuracies, thresholds, vals, fars, val_thresholds = [], [], [], [], []
    for k in np.unique(fold):
        held_out = fold == k
        train_scores, train_same = scores[~held_out], same[~held_out]
        test_scores, test_same = scores[held_out], same[held_out]

        threshold = best_accuracy_threshold(train_scores, train_same)
        thresholds.append(threshold)
        accuracies.append(np.mean(predict_same(test_scores, threshold) == test_same))

        val_threshold = threshold_at_far(train_scores[~train_same], far_target)
        val_thresholds.append(val_threshold)
        vals.append(np.mean(predict_same(test_scores[test_same], val_threshold)))
        fars.append(np.mean(predict_same(test_scores[~test_same], val_threshold)))

    fpr, tpr, roc_thresholds = roc_curve(same, scores)
    return {
        "accuracy_mean": float(np.mean(accuracies)),
        "accuracy_std": float(np.std(accuracies)),
        "fold_accuracies": np.array(accuracies),
        "fold_thresholds": np.array(thresholds),
        "threshold": float(np.mean(thresholds)),
        "far_target": far_target,
        "val_at_far": float(np.mean(vals)),
        "val_at_far_std": float(np.std(vals)),
        "far_achieved": float(np.mean(fars)),
        "fold_val": np.array(vals),
        "fold_far": np.array(fars),
        "fold_val_thresholds": np.array(val_thresholds),
        "auc": float(area_under_curve(fpr, tpr)),
        "eer": _equal_error_rate(fpr, tpr),
        "fpr": fpr,
        "tpr": tpr,
        "roc_thresholds": roc_thresholds,
    }


def plot_roc(metrics: dict, path, title: str | None = None) -> Path:
    """Save the ROC of evaluate_pairs' result as a PNG: TAR against FAR on a log axis."""
    # Figure + Agg canvas rather than pyplot: no global backend switch, no figure left open.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fpr, tpr = metrics["fpr"], metrics["tpr"]
    # A log axis cannot show FAR = 0; put those points just below the smallest measured FAR.
    far_floor = min(1e-4, fpr[fpr > 0].min() / 2)
    figure = Figure(figsize=(6, 5))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.plot(np.maximum(fpr, far_floor), tpr,
              label=f"accuracy {metrics['accuracy_mean']:.4f} ± {metrics['accuracy_std']:.4f}, "
                    f"AUC {metrics['auc']:.4f}")
    eer = metrics["eer"]
    axes.plot([max(eer, far_floor)], [1 - eer], "o", label=f"EER {eer:.4f}")
    axes.set_xscale("log")
    axes.set_xlim(far_floor, 1)
    axes.set_ylim(0, 1.01)
    axes.set_xlabel("false accept rate")
    axes.set_ylabel("true accept rate")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(loc="best")
    if title:
        axes.set_title(title)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())
    return path
