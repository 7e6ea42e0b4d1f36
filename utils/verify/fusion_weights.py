"""An ensemble's fusion weights, chosen on people who are neither in the test set nor trained on.

Unweighted fusion gives a weak member as much say as a strong one, so a strong member gains
least from weaker company. The weights here are chosen without looking at the test set: each
member embeds a folder-per-identity tree of other people (aligned the way its own crops were),
every same-person pair of the tree and as many different-person pairs (drawn with a fixed seed)
are scored by each member, and the weights on a grid over the simplex that classify the most
pairs at their best threshold win (ties: the grid point nearest to equal weights).
"""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

from utils.preprocess.identity_overlap import shared_people, trained_identities
from utils.verify.aligned_cache import ValidationError, identity_of, tree_embeddings
from utils.verify.embeddings import load_embedding_model
from utils.verify.pair_metrics import best_accuracy_threshold, predict_same, score_pairs

DEFAULT_STEP = 0.05


def tuning_pairs(people, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows_a, rows_b, same): every pair of images of one person, and as many pairs of two
    different people drawn at random (fixed seed; no pair twice)."""
    people = np.asarray(people)
    genuine = [pair for person in np.unique(people)
               for pair in itertools.combinations(np.flatnonzero(people == person), 2)]
    if not genuine:
        raise ValidationError("the tuning tree has nobody with two or more aligned images: no same-person pairs")
    if len(np.unique(people)) < 2:
        raise ValidationError("the tuning tree has one person: no different-person pairs")
    rng = np.random.default_rng(seed)
    impostors: set[tuple[int, int]] = set()
    while len(impostors) < len(genuine):
        a, b = rng.integers(len(people), size=2)
        if people[a] != people[b]:
            impostors.add((int(min(a, b)), int(max(a, b))))
    pairs = np.array([*genuine, *sorted(impostors)])
    same = np.arange(len(pairs)) < len(genuine)
    return pairs[:, 0], pairs[:, 1], same


def simplex_grid(members: int, step: float = DEFAULT_STEP) -> np.ndarray:
    """Every weight vector with entries that are multiples of step and sum to 1 (one per row)."""
    units = int(round(1 / step))
    if members < 1 or units < 1 or not np.isclose(units * step, 1.0):
        raise ValueError(f"step must divide 1 (got {step}) and there must be a member (got {members})")
    rows = [(*cuts, units - sum(cuts)) for cuts in itertools.product(range(units + 1), repeat=members - 1)
            if sum(cuts) <= units]
    return np.array(rows, dtype=np.float64) / units


def pair_accuracy(scores, same) -> float:
    """The share of pairs classified right at the threshold that classifies the most right."""
    return float(np.mean(predict_same(scores, best_accuracy_threshold(scores, same)) == same))


def best_weights(member_scores: np.ndarray, same, step: float = DEFAULT_STEP) -> tuple[np.ndarray, float]:
    """The grid's weights (members x pairs scores -> one score per pair) with the best pair accuracy,
    and that accuracy; among equals, the one nearest to equal weights."""
    member_scores = np.asarray(member_scores, dtype=np.float64)
    grid = simplex_grid(len(member_scores), step)
    accuracy = np.array([pair_accuracy(w @ member_scores, same) for w in grid])
    best = np.flatnonzero(accuracy == accuracy.max())
    nearest = best[np.argmin(np.linalg.norm(grid[best] - 1 / len(member_scores), axis=1))]
    return grid[nearest], float(accuracy[nearest])


def check_tuning_people(run_dirs, tree: Path):
    """Weights tuned on a member's own training people would favour that member for knowing them:
    refuse a tuning tree that shares people with any member's training data (its classes.txt)."""
    for run in run_dirs:
        try:
            trained = trained_identities(Path(run))
        except OSError as err:
            raise ValidationError(f"cannot read the training identities of {run} ({err.strerror or err}): "
                                  f"--tune-weights-on checks them against the tuning tree") from None
        shared = shared_people(Path(tree), trained)
        if shared:
            raise ValidationError(f"--tune-weights-on {tree}: {len(shared)} of its people are in the training data "
                                  f"of {run} ({', '.join(shared[:10])}{', ...' if len(shared) > 10 else ''}); tune "
                                  f"on people no member trained on")


def choose_fusion_weights(run_dirs, tree: Path, metric: str = "cosine", flip: bool = True, workers: int = 1,
                          batch_size: int = 128, progress: bool = True, cache_root: Path = Path("data"),
                          step: float = DEFAULT_STEP) -> dict:
    """The members' fusion weights chosen on `tree` (module docstring), and what they rest on."""
    tree = Path(tree)
    if not tree.is_dir():
        raise ValidationError(f"tuning tree {tree} not found: give a folder with one sub-folder of images per "
                              f"person, none of them in the test set or a member's training data")
    check_tuning_people(run_dirs, tree)
    embedded = []
    for run in run_dirs:
        model, info = load_embedding_model(Path(run))
        embedded.append(dict(zip(*tree_embeddings(model, info, tree, flip, None, workers, batch_size, progress,
                                                  cache_root))))
    # Only images every member found a face in, so that all score the same pairs.
    paths = sorted(set.intersection(*(set(e) for e in embedded)))
    rows_a, rows_b, same = tuning_pairs([identity_of(p) for p in paths])
    member_scores = np.array([score_pairs(np.array([e[paths[i]] for i in rows_a]),
                                          np.array([e[paths[i]] for i in rows_b]), metric) for e in embedded])
    weights, accuracy = best_weights(member_scores, same, step)
    equal = np.full(len(member_scores), 1 / len(member_scores))
    return {"weights": [round(float(w), 4) for w in weights], "chosen_on": str(tree), "images": len(paths),
            "pairs": int(len(same)), "same_pairs": int(same.sum()), "grid_step": step, "metric": metric,
            "pair_accuracy": round(accuracy, 4), "equal_weights_pair_accuracy": round(pair_accuracy(
                equal @ member_scores, same), 4),
            "member_pair_accuracy": [round(pair_accuracy(s, same), 4) for s in member_scores]}
