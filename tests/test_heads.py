"""Heads and losses (models/heads.py) against independent float64 NumPy references,
plus the PK batch sampler (utils/sampling.py). TensorFlow backend (the default)."""
import ast
import itertools
import re
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from models.heads import (HEAD_KINDS, CenterDistance, MarginHead, SemiHardTripletLoss, SoftmaxHead, build_head,
                          mean_prediction_loss, semi_hard_triplet_loss)
from utils.sampling import identity_batches

HEADS_SOURCE = Path(__file__).resolve().parent.parent / "models" / "heads.py"


# ---------------------------------------------------------------- NumPy references (float64)

def ref_margin_logits(emb, kernel, labels, kind, scale, margin):
    """Literal definition: theta = arccos(cos); target cos(theta + m) (arcface, with the
    cos - m sin m rule once theta + m > pi) or cos - m (cosface); everything times s."""
    emb = np.asarray(emb, np.float64)
    kernel = np.asarray(kernel, np.float64)
    cos = (emb / np.linalg.norm(emb, axis=1, keepdims=True)) @ (kernel / np.linalg.norm(kernel, axis=0))
    cos = np.clip(cos, -1.0, 1.0)
    out = cos.copy()
    if labels is not None:
        for i, y in enumerate(np.ravel(labels)):
            theta = np.arccos(cos[i, y])
            if kind == "cosface":
                out[i, y] = cos[i, y] - margin
            elif theta + margin <= np.pi:
                out[i, y] = np.cos(theta + margin)
            else:
                out[i, y] = cos[i, y] - margin * np.sin(margin)
    return scale * out


def ref_sparse_ce(logits, labels):
    logits = np.asarray(logits, np.float64)
    top = logits.max(axis=1, keepdims=True)
    log_z = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
    return float(np.mean(log_z - logits[np.arange(len(labels)), labels]))


def ref_triplet_loss(labels, emb, margin):
    """Slow, literal semi-hard triplet loss: loops over anchors, positives and negatives."""
    emb = np.asarray(emb, np.float64)
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    labels = np.ravel(labels)
    n = len(labels)
    losses = []
    for a in range(n):
        negatives = [j for j in range(n) if labels[j] != labels[a]]
        if not negatives:
            continue
        for p in range(n):
            if p == a or labels[p] != labels[a]:
                continue
            d_ap = np.sum((emb[a] - emb[p]) ** 2)
            farther = [np.sum((emb[a] - emb[j]) ** 2) for j in negatives if np.sum((emb[a] - emb[j]) ** 2) > d_ap]
            d_an = min(farther) if farther else max(np.sum((emb[a] - emb[j]) ** 2) for j in negatives)
            losses.append(max(d_ap - d_an + margin, 0.0))
    return float(np.mean(losses)) if losses else 0.0


# ---------------------------------------------------------------- margin heads

def _unit(v):
    return v / np.linalg.norm(v)


def _margin_case(kind, scale=64.0, margin=0.5, seed=0):
    """A built head plus embeddings: random rows, then the edge cases of the target angle."""
    rng = np.random.default_rng(seed)
    dim, classes = 8, 6
    head = MarginHead(classes, kind=kind, scale=scale, margin=margin)
    head.build((None, dim))
    kernel = rng.normal(size=(dim, classes)).astype(np.float32)
    head.kernel.assign(kernel)

    emb = list(rng.normal(size=(10, dim)))
    labels = list(rng.integers(0, classes, size=10))
    # Rows at a chosen angle theta from their target column: theta + m > pi (fallback rule)
    # and theta + m just under pi (ordinary branch).
    for y, theta in ((1, np.pi - 0.2), (2, np.pi - 0.7), (3, 0.3)):
        u = _unit(kernel[:, y].astype(np.float64))
        r = rng.normal(size=dim)
        v = _unit(r - (r @ u) * u)  # unit, orthogonal to u
        emb.append(np.cos(theta) * u + np.sin(theta) * v)
        labels.append(y)
    generic = len(emb)
    # cos exactly +1 and -1: the embedding is (a multiple of) the target column or its opposite.
    emb += [3.0 * kernel[:, 4], -2.0 * kernel[:, 5]]
    labels += [4, 5]
    return head, kernel, np.array(emb, np.float32), np.array(labels), generic


@pytest.mark.parametrize("kind", ["arcface", "cosface"])
def test_margin_logits_match_reference(kind):
    head, kernel, emb, labels, generic = _margin_case(kind)
    got = keras.ops.convert_to_numpy(head(emb, labels))
    want = ref_margin_logits(emb, kernel, labels, kind, 64.0, 0.5)
    cos = ref_margin_logits(emb, kernel, None, kind, 1.0, 0.5)
    assert cos[generic - 3, 1] < np.cos(np.pi - 0.5) < cos[generic - 2, 2]  # the edge rows are where intended
    np.testing.assert_allclose(got[:generic], want[:generic], rtol=1e-5, atol=2e-4)
    # At cos = +-1 the head clips cos to 1 - eps (eps = 1e-7), i.e. theta ~ 5e-4 rad instead of 0:
    # the arcface target logit moves by about s * sin(m) * 5e-4 ~ 0.015.
    np.testing.assert_allclose(got[generic:], want[generic:], atol=0.03)
    # Non-target logits are plain s * cos; the labels [N, 1] form gives the same result.
    np.testing.assert_allclose(keras.ops.convert_to_numpy(head(emb, labels[:, None])), got)


@pytest.mark.parametrize("kind", ["arcface", "cosface"])
def test_margin_head_without_labels_is_scaled_cosine(kind):
    head, kernel, emb, _, _ = _margin_case(kind, scale=30.0)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(head(emb)),
                               ref_margin_logits(emb, kernel, None, kind, 30.0, 0.5), rtol=1e-5, atol=1e-4)


def test_arcface_target_logit_decreases_with_theta():
    head = MarginHead(2, kind="arcface", scale=1.0, margin=0.5)
    head.build((None, 2))
    head.kernel.assign(np.eye(2, dtype=np.float32))
    theta = np.linspace(0.0, np.pi, 2001)
    emb = np.stack([np.cos(theta), np.sin(theta)], axis=1).astype(np.float32)
    target = keras.ops.convert_to_numpy(head(emb, np.zeros(len(theta), int)))[:, 0]
    assert np.all(np.diff(target) <= 1e-6)
    assert np.all(np.isfinite(target))


@pytest.mark.parametrize("kind", ["arcface", "cosface"])
def test_softmax_cross_entropy_on_margin_logits(kind):
    head, kernel, emb, labels, _ = _margin_case(kind, seed=3)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(labels, head(emb, labels))
    want = ref_sparse_ce(ref_margin_logits(emb, kernel, labels, kind, 64.0, 0.5), labels)
    # The two cos = +-1 rows carry the clip error above (<= 0.03 in one logit).
    np.testing.assert_allclose(float(loss), want, rtol=1e-4, atol=0.01)


@pytest.mark.parametrize("kind", ["arcface", "cosface"])
def test_margin_loss_gradients_are_finite_at_cos_plus_minus_one(kind):
    head = MarginHead(3, kind=kind)
    head.build((None, 4))
    kernel = keras.ops.convert_to_numpy(head.kernel)
    emb = tf.Variable(np.stack([kernel[:, 0], -kernel[:, 1], 2.0 * kernel[:, 2]]))
    labels = np.array([0, 1, 2])
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    with tf.GradientTape() as tape:
        logits = head(emb, labels)
        loss = loss_fn(labels, logits)
    grads = tape.gradient(loss, [emb, head.kernel])
    assert np.isfinite(float(loss))
    assert np.all(np.isfinite(keras.ops.convert_to_numpy(logits)))
    for g in grads:
        assert g is not None and np.all(np.isfinite(keras.ops.convert_to_numpy(g)))


def test_margin_head_config_round_trip():
    head, _, emb, labels, _ = _margin_case("cosface", scale=20.0, margin=0.35)
    config = head.get_config()
    assert (config["num_classes"], config["kind"], config["scale"], config["margin"]) == (6, "cosface", 20.0, 0.35)
    clone = MarginHead.from_config(config)
    clone.build((None, emb.shape[1]))
    clone.set_weights(head.get_weights())
    np.testing.assert_allclose(keras.ops.convert_to_numpy(clone(emb, labels)),
                               keras.ops.convert_to_numpy(head(emb, labels)))
    revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(head))
    assert isinstance(revived, MarginHead) and revived.get_config() == config


def test_margin_head_model_saves_and_loads_in_safe_mode(tmp_path):
    keras.utils.set_random_seed(1)
    x = keras.Input((5,))
    labels = keras.Input((), dtype="int32")
    emb = keras.layers.Dense(4)(x)
    out = MarginHead(7, kind="arcface", scale=30.0, margin=0.3, name="head")(emb, labels)
    model = keras.Model([x, labels], out)
    path = tmp_path / "margin.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded.get_layer("head"), MarginHead)
    assert loaded.get_layer("head").get_config() == model.get_layer("head").get_config()
    data = [np.random.default_rng(0).normal(size=(6, 5)).astype(np.float32), np.arange(6) % 7]
    np.testing.assert_allclose(loaded.predict(data, verbose=0), model.predict(data, verbose=0), rtol=1e-6)


def test_cosface_model_learns_a_separable_problem():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 8)) * 3.0
    y = np.repeat(np.arange(4), 64)
    x = (centres[y] + rng.normal(size=(len(y), 8))).astype(np.float32)

    inputs, labels = keras.Input((8,)), keras.Input((), dtype="int32")
    emb = keras.layers.Dense(8)(keras.layers.Dense(16, activation="relu")(inputs))
    head = MarginHead(4, kind="cosface", scale=16.0, margin=0.2)
    model = keras.Model([inputs, labels], head(emb, labels))
    model.compile(keras.optimizers.Adam(0.01), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["sparse_categorical_accuracy"])
    history = model.fit([x, y], y, batch_size=32, epochs=5, verbose=0)  # 40 steps
    assert history.history["sparse_categorical_accuracy"][-1] > 0.9  # with the margin applied
    embed = keras.Model(inputs, emb)
    predicted = np.argmax(keras.ops.convert_to_numpy(head(embed.predict(x, verbose=0))), axis=1)
    assert np.mean(predicted == y) > 0.9  # inference: no labels, no margin


# ---------------------------------------------------------------- softmax + center loss

def test_softmax_head_is_dense_logits():
    head = SoftmaxHead(3)
    emb = np.random.default_rng(0).normal(size=(4, 5)).astype(np.float32)
    out = keras.ops.convert_to_numpy(head(emb, np.zeros(4, int)))
    kernel, bias = head.kernel.numpy().astype(np.float64), head.bias.numpy()
    np.testing.assert_allclose(out, emb.astype(np.float64) @ kernel + bias, rtol=1e-5, atol=1e-6)
    assert [w.name for w in head.weights] == ["kernel", "bias"]
    assert SoftmaxHead.from_config(head.get_config()).get_config() == head.get_config()


def test_center_distance_matches_reference():
    rng = np.random.default_rng(2)
    emb = rng.normal(size=(9, 5)).astype(np.float32)
    labels = rng.integers(0, 4, size=9)
    layer = CenterDistance(4)
    layer.build((None, 5))
    assert layer.centers.shape == (4, 5) and layer.centers.trainable
    np.testing.assert_array_equal(layer.centers.numpy(), 0.0)  # initialised to zeros
    centres = rng.normal(size=(4, 5))
    layer.centers.assign(centres.astype(np.float32))
    want = 0.5 * np.sum((emb.astype(np.float64) - centres[labels]) ** 2, axis=1)
    got = keras.ops.convert_to_numpy(layer(emb, labels[:, None]))
    assert got.shape == (9,)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    np.testing.assert_allclose(float(mean_prediction_loss(np.zeros(9), got)), want.mean(), rtol=1e-5)


def test_center_loss_wiring_trains_saves_and_loads(tmp_path):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 16)
    x = (rng.normal(size=(3, 6))[y] * 2 + rng.normal(size=(len(y), 6))).astype(np.float32)
    inputs, labels = keras.Input((6,)), keras.Input((), dtype="int32")
    emb = keras.layers.Dense(4)(inputs)
    model = keras.Model([inputs, labels], {"logits": build_head("center", 3, name="logits")(emb),
                                           "center": CenterDistance(3, name="center")(emb, labels)})
    model.compile(keras.optimizers.SGD(0.05),
                  loss={"logits": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                        "center": mean_prediction_loss},
                  loss_weights={"logits": 1.0, "center": 0.1})
    targets = {"logits": y, "center": np.zeros(len(y), np.float32)}
    history = model.fit([x, y], targets, batch_size=16, epochs=3, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert np.abs(model.get_layer("center").centers.numpy()).sum() > 0  # the centres moved
    model.save(tmp_path / "center.keras")
    loaded = keras.saving.load_model(tmp_path / "center.keras", safe_mode=True)
    want, got = model.predict([x, y], verbose=0), loaded.predict([x, y], verbose=0)
    for key in ("logits", "center"):
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5)


# ---------------------------------------------------------------- triplet loss

@pytest.mark.parametrize("seed,margin", [(0, 0.2), (1, 0.2), (2, 0.5), (3, 1.0)])
def test_semi_hard_triplet_loss_matches_reference(seed, margin):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 5, size=24)
    emb = rng.normal(size=(24, 6)).astype(np.float32)
    got = float(semi_hard_triplet_loss(labels, emb, margin=margin))
    np.testing.assert_allclose(got, ref_triplet_loss(labels, emb, margin), rtol=1e-5, atol=1e-6)
    wrapped = float(SemiHardTripletLoss(margin)(labels[:, None], emb))
    np.testing.assert_allclose(wrapped, got, rtol=1e-6)


def test_semi_hard_triplet_loss_hand_computed_case():
    # Unit vectors at 0, 60 (label 0) and 90, 180 degrees (label 1); d = 2 - 2 cos(angle).
    angles = np.deg2rad([0.0, 60.0, 90.0, 180.0])
    emb = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    labels = np.array([0, 0, 1, 1])
    # margin 1.5:  (0,1): d_ap 1, semi-hard neg d 2           -> 0.5
    #              (1,0): d_ap 1, semi-hard neg d 3           -> 0
    #              (2,3): d_ap 2, no farther neg -> farthest 2 -> 1.5
    #              (3,2): d_ap 2, semi-hard neg d 3           -> 0.5      mean 0.625
    np.testing.assert_allclose(float(semi_hard_triplet_loss(labels, emb, margin=1.5)), 0.625, rtol=1e-5)
    np.testing.assert_allclose(ref_triplet_loss(labels, emb, 1.5), 0.625, rtol=1e-6)


def test_semi_hard_triplet_loss_ties_are_not_farther():
    # A = e1, B = e2 (label 0); C = e3, D = -e1 (label 1). Squared distances are exact:
    # AB = AC = BC = BD = CD = 2, AD = 4. "Farther" is strict, so a negative at d_an == d_ap
    # is not semi-hard:  (A,B): D at 4 -> 0;  (B,A): none farther, farthest 2 -> 0.5;
    # (C,D): none farther -> 0.5;  (D,C): A at 4 -> 0.   Mean 0.25 (0.5 if ties counted).
    emb = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [-1, 0, 0]], np.float32)
    labels = np.array([0, 0, 1, 1])
    assert ref_triplet_loss(labels, emb, 0.5) == 0.25
    np.testing.assert_allclose(float(semi_hard_triplet_loss(labels, emb, margin=0.5)), 0.25, rtol=1e-6)


def test_semi_hard_triplet_loss_is_zero_for_separated_clusters_and_degenerate_batches():
    rng = np.random.default_rng(4)
    labels = np.repeat(np.arange(3), 4)
    emb = (np.eye(5)[labels] * 10 + rng.normal(scale=0.01, size=(12, 5))).astype(np.float32)
    assert float(semi_hard_triplet_loss(labels, emb, margin=0.2)) == 0.0
    assert float(semi_hard_triplet_loss(np.zeros(4, int), emb[:4])) == 0.0  # no negatives
    assert float(semi_hard_triplet_loss(np.arange(4), emb[:4])) == 0.0  # no positives


def test_triplet_training_with_identity_batches():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(8), 6)
    x = (rng.normal(size=(8, 10))[y] + 0.5 * rng.normal(size=(len(y), 10))).astype(np.float32)
    model = keras.Sequential([keras.Input((10,)), keras.layers.Dense(6)])
    assert build_head("triplet", 8) is None
    model.compile(keras.optimizers.Adam(0.01), SemiHardTripletLoss(0.2))
    before = float(semi_hard_triplet_loss(y, model.predict(x, verbose=0)))
    for epoch in range(4):
        order = np.concatenate(identity_batches(y, 4, 3, seed=0, epoch=epoch))
        model.fit(x[order], y[order], batch_size=12, shuffle=False, verbose=0)
    after = float(semi_hard_triplet_loss(y, model.predict(x, verbose=0)))
    assert np.isfinite(after) and after < before


# ---------------------------------------------------------------- build_head, purity

def test_build_head_kinds():
    assert isinstance(build_head("softmax", 5), SoftmaxHead)
    assert isinstance(build_head("center", 5), SoftmaxHead)
    arc = build_head("arcface", 5, scale=32.0, margin=0.4)
    assert isinstance(arc, MarginHead) and (arc.kind, arc.scale, arc.margin) == ("arcface", 32.0, 0.4)
    assert build_head("cosface", 5).kind == "cosface"
    assert build_head("triplet", 5) is None
    assert set(HEAD_KINDS) == {"softmax", "center", "arcface", "cosface", "triplet"}
    with pytest.raises(ValueError):
        build_head("sphereface", 5)
    with pytest.raises(ValueError):
        MarginHead(5, kind="softmax")


def test_heads_module_uses_keras_only():
    source = HEADS_SOURCE.read_text()
    assert "tensorflow" not in source.lower()
    assert not re.search(r"\btf\.", source)
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert imported <= {"__future__", "math", "keras"}, imported


# ---------------------------------------------------------------- identity_batches

SAMPLER_LABELS = np.repeat(np.arange(9), [5, 3, 1, 4, 2, 6, 3, 1, 4])  # identities 2 and 7 have 1 image


def test_identity_batches_shape_and_validity():
    p, k = 3, 2
    batches = identity_batches(SAMPLER_LABELS, p, k, seed=7)
    eligible = {0, 1, 3, 4, 5, 6, 8}
    assert len(batches) == -(-len(eligible) // p)
    seen = set()
    for batch in batches:
        assert batch.shape == (p * k,) and batch.dtype == np.int64
        assert batch.min() >= 0 and batch.max() < len(SAMPLER_LABELS)
        assert len(set(batch.tolist())) == p * k  # no image twice in a batch
        ids = SAMPLER_LABELS[batch].reshape(p, k)
        assert (ids == ids[:, :1]).all()  # k consecutive images of one identity
        assert len(set(ids[:, 0])) == p  # p distinct identities
        seen |= set(ids[:, 0].tolist())
    assert seen == eligible  # every identity with >= k images, once per epoch; the others never


def test_identity_batches_are_deterministic_per_seed_and_epoch():
    def run(seed, epoch):
        return [b.tolist() for b in identity_batches(SAMPLER_LABELS, 2, 2, seed=seed, epoch=epoch)]

    assert run(0, 0) == run(0, 0)
    assert run(0, 1) == run(0, 1)
    assert run(0, 0) != run(0, 1)
    assert run(0, 0) != run(1, 0)
    # String labels work the same way.
    names = np.array([f"person_{i}" for i in SAMPLER_LABELS])
    assert len(identity_batches(names, 2, 2, seed=0)) == len(run(0, 0))


def test_identity_batches_refuse_too_few_identities():
    with pytest.raises(ValueError):
        identity_batches(SAMPLER_LABELS, 3, 5, seed=0)  # only identities 0 and 5 have 5 images
    # Every eligible identity is still covered when the counts are uneven.
    for epoch, (p, k) in itertools.product(range(3), [(2, 3), (4, 1)]):
        batches = identity_batches(SAMPLER_LABELS, p, k, seed=0, epoch=epoch)
        covered = set(SAMPLER_LABELS[np.concatenate(batches)].tolist())
        assert covered == set(np.flatnonzero(np.bincount(SAMPLER_LABELS) >= k).tolist())
