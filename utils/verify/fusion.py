"""An ensemble's pair scores: several models' embeddings fused into one score per pair."""
from __future__ import annotations

import numpy as np

from utils.verify.aligned_cache import ValidationError
from utils.verify.embeddings import l2_normalize
from utils.verify.names import FUSIONS
from utils.verify.pair_metrics import score_pairs


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
