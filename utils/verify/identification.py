"""1:N identification: "who is this, or nobody?", the question a recognition service answers.

A gallery holds one enrolled embedding per known person. A mated probe is another photo of a
gallery person; a non-mated probe is someone not enrolled, who must be rejected.
- closed set: rank-k, the share of mated probes whose person is among the k best gallery scores;
- open set: a probe is matched to its best gallery entry when that score reaches a threshold.
  The threshold is set on the non-mated probes so that at most a share FPIR of them (the false
  positive identification rate) is matched to anyone; DIR (detection and identification rate) is
  then the share of mated probes matched, and matched to the right person.
Scores are cosine similarities of L2-normalised embeddings (numpy matrix products).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

RANKS = (1, 5)
FPIR_TARGETS = (0.01, 0.1)


class GallerySplit(NamedTuple):
    """Indices into one list of images."""
    gallery: np.ndarray  # one image per person with two or more
    mated: np.ndarray  # the rest of those people's images
    non_mated: np.ndarray  # people with a single image: not enrolled


def split_gallery(identities) -> GallerySplit:
    """People with two or more images enrol their first (in the given order) and probe with the
    rest; people with one image are the non-mated probes."""
    identities = np.asarray(identities)
    _, first, counts = np.unique(identities, return_index=True, return_counts=True)
    several = np.isin(identities, identities[first[counts >= 2]])
    gallery = np.sort(first[counts >= 2])
    mated = np.setdiff1d(np.flatnonzero(several), gallery)
    return GallerySplit(gallery, mated, np.flatnonzero(~several))


def open_set_threshold(non_mated_top: np.ndarray, fpir: float) -> float:
    """The lowest threshold at which at most fpir of the non-mated probes' best scores reach it."""
    ordered = np.sort(np.asarray(non_mated_top, np.float64))[::-1]
    allowed = int(np.floor(fpir * len(ordered)))
    if allowed >= len(ordered):
        return float(ordered[-1])
    return float(np.nextafter(ordered[allowed], np.inf))  # just above the first one that must be rejected


def identification_metrics(gallery: np.ndarray, gallery_ids, mated: np.ndarray, mated_ids,
                           non_mated: np.ndarray | None = None, ranks=RANKS, fpir_targets=FPIR_TARGETS) -> dict:
    """Closed-set rank-k accuracy of the mated probes and, given non-mated probes, open-set DIR at
    each FPIR target with its threshold. Embeddings are L2-normalised rows."""
    gallery_ids, mated_ids = np.asarray(gallery_ids), np.asarray(mated_ids)
    if len(np.unique(gallery_ids)) != len(gallery_ids):
        raise ValueError("the gallery must hold one entry per person")
    column = {person: i for i, person in enumerate(gallery_ids)}
    missing = [p for p in mated_ids if p not in column]
    if missing:
        raise ValueError(f"{len(missing)} mated probes have nobody in the gallery (e.g. {missing[0]!r})")
    scores = mated @ gallery.T
    true_score = scores[np.arange(len(mated)), [column[p] for p in mated_ids]]
    rank = 1 + (scores > true_score[:, None]).sum(axis=1)
    result = {"gallery": int(len(gallery)), "mated_probes": int(len(mated)),
              **{f"rank_{k}": float(np.mean(rank <= k)) for k in ranks}}
    if non_mated is not None and len(non_mated):
        non_mated_top = (non_mated @ gallery.T).max(axis=1)
        best = scores.max(axis=1)
        result["non_mated_probes"] = int(len(non_mated))
        result["open_set"] = []
        for fpir in fpir_targets:
            threshold = open_set_threshold(non_mated_top, fpir)
            result["open_set"].append({
                "fpir": fpir, "threshold": threshold,
                "fpir_achieved": float(np.mean(non_mated_top >= threshold)),
                "dir": float(np.mean((rank == 1) & (best >= threshold)))})
    return result


def identify(gallery: np.ndarray, names, probes: np.ndarray, threshold: float) -> list[tuple[str | None, float]]:
    """(name or None for "unknown", best score) of each probe against the gallery."""
    scores = probes @ gallery.T
    best = scores.argmax(axis=1)
    top = scores[np.arange(len(probes)), best]
    return [(names[b] if s >= threshold else None, float(s)) for b, s in zip(best, top)]


def format_identification(report: dict) -> str:
    """identification_report()'s sections, a few lines each."""
    lines = []
    for section, what in (("lfw", "LFW"), ("holdout", "the run's holdout")):
        result = report[section]
        if "skipped" in result:
            lines.append(f"1:N identification on {what}: skipped ({result['skipped']})")
            continue
        lines.append(f"1:N identification on {what}: gallery {result['gallery']} people, {result['mated_probes']} "
                     f"mated probes" + (f", {result['non_mated_probes']} strangers" if "non_mated_probes" in result
                                        else ""))
        lines.append("  closed set: " + ", ".join(f"rank-{k.split('_')[1]} {100 * v:.2f} %"
                                                  for k, v in result.items() if k.startswith("rank_")))
        for row in result.get("open_set", []):
            lines.append(f"  open set: DIR {100 * row['dir']:.2f} % at FPIR {100 * row['fpir']:g} % "
                         f"(threshold {row['threshold']:.4f}, FPIR measured {100 * row['fpir_achieved']:.2f} %)")
    return "\n".join(lines)
