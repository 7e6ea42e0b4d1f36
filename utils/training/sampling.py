"""Batch sampling for metric-learning losses (plain NumPy, no Keras).

Triplet training (``models.heads.SemiHardTripletLoss``) only learns from anchor-positive
pairs inside a batch, so batches must hold several images of each identity: P identities
x K images ("PK sampling", Hermans et al. 2017).
"""
from __future__ import annotations

import numpy as np


def identity_batches(labels, identities_per_batch: int, images_per_identity: int, seed: int,
                     epoch: int = 0) -> list[np.ndarray]:
    """Index batches of ``identities_per_batch`` (P) identities x ``images_per_identity`` (K) images.

    ``labels``: one identity label per example (ints or strings), ``[num_examples]``.
    Returns a list of int64 index arrays into ``labels``, each of length P*K, laid out
    identity by identity (K consecutive indices share a label; the P identities differ).

    One epoch is one pass over the *identities*: the eligible identities are shuffled and
    cut into groups of P, so each appears in exactly one batch, with K of its images drawn
    without replacement. The last group, if short, is topped up with identities drawn at
    random from the others (those appear twice in the epoch), so every batch is full.
    Identities with many images contribute K per epoch; a different ``epoch`` draws
    different images and a different order.

    Identities with fewer than K images are **skipped** (never sampled with replacement):
    a repeated image would make a zero-distance anchor-positive pair that teaches nothing.
    Lower K to keep them.

    Deterministic for a given ``(seed, epoch)``. Raises ``ValueError`` when fewer than P
    identities have K images.
    """
    p, k = int(identities_per_batch), int(images_per_identity)
    if p < 1 or k < 1:
        raise ValueError(f"identities_per_batch and images_per_identity must be positive, got {p}, {k}")
    labels = np.asarray(labels)
    if labels.ndim != 1:
        labels = labels.reshape(-1)
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    order = np.argsort(inverse, kind="stable")  # example indices grouped by identity, in input order
    members = np.split(order, np.cumsum(counts)[:-1])
    eligible = np.flatnonzero(counts >= k)
    if len(eligible) < p:
        raise ValueError(f"only {len(eligible)} identities have at least {k} images; "
                         f"a batch needs {p}")

    rng = np.random.default_rng([int(seed), int(epoch)])
    ids = rng.permutation(eligible)
    short = -len(ids) % p
    if short:
        last = ids[len(ids) - (p - short):]
        others = np.setdiff1d(eligible, last)
        ids = np.concatenate([ids, rng.choice(others, size=short, replace=False)])
    batches = []
    for group in ids.reshape(-1, p):
        batches.append(np.concatenate([rng.choice(members[i], size=k, replace=False) for i in group])
                       .astype(np.int64))
    return batches
