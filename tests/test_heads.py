"""Heads and losses (models/heads.py) against independent float64 NumPy references, the
loss registry (models/losses.py), plus the PK batch sampler (utils/training/sampling.py).
TensorFlow backend (the default)."""
import ast
import inspect
import itertools
import re
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from models.heads import (
    CLASSIFIER_INITS,
    ArcFaceMargin,
    CenterDistance,
    CosFaceMargin,
    CosineClassifier,
    SemiHardTripletLoss,
    SoftmaxHead,
    mean_prediction_loss,
    semi_hard_triplet_loss,
)
from models.losses import LOSSES, SmoothedCrossEntropy, TrainingHead, make_loss, with_distillation
from utils.training.model import model_batch
from utils.training.sampling import identity_batches

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"


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


class _MarginHead:
    """The class-centre layer feeding a margin transform, as the registry's margin losses wire them."""

    def __init__(self, num_classes, kind, scale=64.0, margin=0.5):
        self.classifier = CosineClassifier(num_classes)
        self.margin = LOSSES[kind].margin_layer(scale, margin)

    def build(self, embeddings_shape):
        self.classifier.build(embeddings_shape)
        self.kernel = self.classifier.kernel

    def __call__(self, embeddings, labels=None):
        return self.margin(self.classifier(embeddings), labels)


def _margin_case(kind, scale=64.0, margin=0.5, seed=0):
    """A built head plus embeddings: random rows, then the edge cases of the target angle."""
    rng = np.random.default_rng(seed)
    dim, classes = 8, 6
    head = _MarginHead(classes, kind, scale=scale, margin=margin)
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
    head = _MarginHead(2, "arcface", scale=1.0, margin=0.5)
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
    head = _MarginHead(3, kind)
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
    classifier, margin = head.classifier, head.margin
    assert classifier.get_config()["num_classes"] == 6
    assert isinstance(margin, CosFaceMargin)
    assert (margin.get_config()["scale"], margin.get_config()["margin"]) == (20.0, 0.35)
    clone = CosineClassifier.from_config(classifier.get_config())
    clone.build((None, emb.shape[1]))
    clone.set_weights(classifier.get_weights())
    clone_margin = CosFaceMargin.from_config(margin.get_config())
    np.testing.assert_allclose(keras.ops.convert_to_numpy(clone_margin(clone(emb), labels)),
                               keras.ops.convert_to_numpy(head(emb, labels)))
    for layer in (classifier, margin, ArcFaceMargin(30.0, 0.3, name="arc")):
        revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
        assert type(revived) is type(layer) and revived.get_config() == layer.get_config()


def test_margin_head_model_saves_and_loads_in_safe_mode(tmp_path):
    keras.utils.set_random_seed(1)
    x = keras.Input((5,))
    labels = keras.Input((), dtype="int32")
    emb = keras.layers.Dense(4)(x)
    out = ArcFaceMargin(30.0, 0.3, name="head")(CosineClassifier(7, name="centres")(emb), labels)
    model = keras.Model([x, labels], out)
    path = tmp_path / "margin.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    for name, cls in (("head", ArcFaceMargin), ("centres", CosineClassifier)):
        assert isinstance(loaded.get_layer(name), cls)
        assert loaded.get_layer(name).get_config() == model.get_layer(name).get_config()
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
    head = _MarginHead(4, "cosface", scale=16.0, margin=0.2)
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
    model = keras.Model([inputs, labels], {"logits": SoftmaxHead(3, name="logits")(emb),
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
    inputs = keras.Input((10,))
    emb = keras.layers.Dense(6)(inputs)
    triplet = make_loss("triplet", 8, triplet_margin=0.2)
    head = triplet.attach(emb, None)
    assert head.outputs is emb and head.metrics is None  # no classifier: the loss is on the embedding
    assert triplet.identity_batches and not triplet.needs_labels
    model = keras.Model(inputs, head.outputs)
    model.compile(keras.optimizers.Adam(0.01), head.loss)
    before = float(semi_hard_triplet_loss(y, model.predict(x, verbose=0)))
    for epoch in range(4):
        order = np.concatenate(identity_batches(y, 4, 3, seed=0, epoch=epoch))
        model.fit(x[order], y[order], batch_size=12, shuffle=False, verbose=0)
    after = float(semi_hard_triplet_loss(y, model.predict(x, verbose=0)))
    assert np.isfinite(after) and after < before


# ---------------------------------------------------------------- the loss registry, purity

SETTINGS = dict(classifier_init="tflearn", margin_scale=16.0, margin_m=0.3, center_weight=0.05, triplet_margin=0.2,
                label_smoothing=0.0)
# What build_training_model built before the registry: history.csv columns depend on it.
EXPECTED = {  # outputs (None: a single tensor), needs_labels, model name, monitor, named layer -> class
    "softmax": (None, False, "trainer", "val_top1", {"classifier": SoftmaxHead}),
    "center": ({"scores", "center"}, True, "trainer", "val_scores_top1",
               {"classifier": SoftmaxHead, "center": CenterDistance}),
    "arcface": ({"logits", "scores"}, True, "trainer", "val_scores_top1",
                {"margin_head": CosineClassifier, "margin": ArcFaceMargin}),
    "cosface": ({"logits", "scores"}, True, "trainer", "val_scores_top1",
                {"margin_head": CosineClassifier, "margin": CosFaceMargin}),
    "triplet": (None, False, "triplet_trainer", "val_loss", {}),
    "distill": ({"teacher"}, False, "trainer", "val_loss", {"teacher": keras.layers.Activation}),
}


def _training_model(name, num_classes=5, dim=6, **overrides):
    """The registry's training model on a tiny backbone (Input(8) -> Dense), as the training stage builds it."""
    images, labels = keras.Input((8,), name="images"), keras.Input((), dtype="int32", name="labels")
    embedding = keras.layers.Dense(dim, name="embedding")(images)
    loss = make_loss(name, num_classes, **{**SETTINGS, **overrides})
    head = loss.attach(embedding, labels)
    if name == "distill":  # no term on the labels: a teacher's vectors (here `dim`-d) are the objective
        head = with_distillation(head, embedding, dim, 1.0)
    model = keras.Model([images, labels] if loss.needs_labels else images, head.outputs, name=loss.model_name)
    return model, loss, head


def _teacher_vectors(count: int, dim: int = 6) -> np.ndarray:
    return np.random.default_rng(3).normal(size=(count, dim)).astype(np.float32)


def test_registry_names_and_settings():
    assert set(LOSSES) == {"softmax", "center", "arcface", "cosface", "triplet", "distill"}
    assert set(CLASSIFIER_INITS) == {"tflearn", "glorot_uniform"}
    for name, cls in LOSSES.items():
        assert set(cls.settings) <= set(SETTINGS), name
        # The constructor takes exactly the declared settings, as keyword arguments.
        params = list(inspect.signature(cls).parameters.values())[1:]
        assert [p.name for p in params] == list(cls.settings), name
        assert all(p.kind is p.KEYWORD_ONLY for p in params), name
        assert cls.identity_batches == (name == "triplet")
        assert cls.needs_labels == EXPECTED[name][1]


def test_make_loss_takes_its_settings_and_ignores_the_rest():
    arc = make_loss("arcface", 5, **SETTINGS, unrelated=1)
    assert isinstance(arc.margin, ArcFaceMargin) and (arc.margin.scale, arc.margin.margin) == (16.0, 0.3)
    cosface = make_loss("cosface", 5, margin_scale=30.0, margin_m=0.2, label_smoothing=0.0)
    assert isinstance(cosface.margin, CosFaceMargin)
    assert make_loss("center", 5, **SETTINGS).center_weight == 0.05
    softmax = make_loss("softmax", 5, classifier_init="glorot_uniform", label_smoothing=0.0)
    assert softmax.classifier_init == "glorot_uniform"
    assert make_loss("triplet", 5, triplet_margin=0.4).triplet_margin == 0.4


def test_label_smoothing_is_cross_entropy_against_smoothed_targets():
    """(1 - e) on the true class and e / C on every class, checked against numpy; 0 is plain
    sparse cross-entropy, and the smoothed loss reaches every softmax-based loss."""
    rng = np.random.default_rng(0)
    logits, labels = rng.normal(size=(6, 5)).astype("float32") * 3, np.array([0, 4, 2, 2, 1, 3])
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    target = np.full((6, 5), 0.1 / 5) + 0.9 * np.eye(5)[labels]
    expected = -(target * log_p).sum(axis=1).mean()
    assert float(SmoothedCrossEntropy(0.1)(labels, logits)) == pytest.approx(expected, rel=1e-5)
    plain = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(labels, logits)
    assert float(SmoothedCrossEntropy(0.0)(labels, logits)) == pytest.approx(float(plain), rel=1e-5)
    for name in ("softmax", "center", "cosface", "arcface"):
        loss = make_loss(name, 5, **{**SETTINGS, "label_smoothing": 0.1})
        assert isinstance(loss.cross_entropy, SmoothedCrossEntropy) and loss.cross_entropy.smoothing == 0.1
    with pytest.raises(ValueError, match="label_smoothing"):
        make_loss("cosface", 5, **{**SETTINGS, "label_smoothing": 1.0})


def test_make_loss_rejects_bad_names_and_settings():
    with pytest.raises(ValueError, match="softmax, center, arcface, cosface, triplet"):
        make_loss("sphereface", 5, **SETTINGS)
    with pytest.raises(ValueError, match="margin_m"):
        make_loss("arcface", 5, margin_scale=64.0)
    with pytest.raises(ValueError, match="classifier_init"):
        make_loss("softmax", 5, classifier_init="he_normal", label_smoothing=0.0)
    with pytest.raises(ValueError, match="arcface margin"):
        make_loss("arcface", 5, margin_scale=64.0, margin_m=2.0, label_smoothing=0.0)  # an angle in [0, pi/2)
    with pytest.raises(ValueError):
        CosineClassifier(0)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_builds_a_training_model_that_trains(name):
    outputs, needs_labels, model_name, monitor, named_layers = EXPECTED[name]
    keras.utils.set_random_seed(0)
    model, loss, head = _training_model(name)
    assert isinstance(head, TrainingHead) and head.monitor == monitor
    assert model.name == model_name
    assert len(model.inputs) == (2 if needs_labels else 1)
    assert (set(model.output) if isinstance(model.output, dict) else None) == outputs
    for layer_name, cls in named_layers.items():
        layer = model.get_layer(layer_name)
        assert isinstance(layer, cls) and layer.dtype_policy.name == "float32"
    if name == "center":
        assert head.loss_weights == {"scores": 1.0, "center": 0.05}
    elif name == "distill":
        assert head.loss_weights == {"teacher": 1.0}
    else:
        assert head.loss_weights is None
    model.compile(keras.optimizers.SGD(0.01), loss=head.loss, loss_weights=head.loss_weights, metrics=head.metrics)
    y = np.repeat(np.arange(5), 2)
    x = np.random.default_rng(0).normal(size=(len(y), 8)).astype(np.float32)
    inputs = [x, y] if needs_labels else x
    _, targets = model_batch(model, x, y, _teacher_vectors(len(y)))  # as the training stage routes the labels
    history = model.fit(inputs, targets, batch_size=len(y), epochs=1, validation_data=(inputs, targets), verbose=0)
    assert monitor in history.history
    assert all(np.isfinite(v[0]) for v in history.history.values())


@pytest.mark.parametrize("kind", ["arcface", "cosface"])
def test_registry_margin_model_outputs_save_and_load(kind, tmp_path):
    keras.utils.set_random_seed(2)
    model, loss, _ = _training_model(kind, num_classes=7)
    x = np.random.default_rng(1).normal(size=(9, 8)).astype(np.float32)
    y = np.arange(9) % 7
    got = model.predict([x, y], verbose=0)
    # "logits" carry the margin on the target class, "scores" are the margin-free s * cos.
    cos = keras.ops.convert_to_numpy(model.get_layer("margin_head")(model.get_layer("embedding")(x)))
    np.testing.assert_allclose(got["scores"], 16.0 * cos, rtol=1e-6)
    np.testing.assert_allclose(got["logits"], keras.ops.convert_to_numpy(loss.margin(cos, y)), rtol=1e-6)
    off_target = np.ones_like(cos, bool)
    off_target[np.arange(9), y] = False
    np.testing.assert_allclose(got["logits"][off_target], got["scores"][off_target], rtol=1e-6)
    assert np.all(got["logits"][~off_target] < got["scores"][~off_target])
    model.save(tmp_path / "trainer.keras")
    loaded = keras.saving.load_model(tmp_path / "trainer.keras", safe_mode=True)
    again = loaded.predict([x, y], verbose=0)
    for key in ("logits", "scores"):
        np.testing.assert_allclose(again[key], got[key], rtol=1e-6)


@pytest.mark.parametrize("module", ["heads.py", "losses.py", "blocks.py"])
def test_loss_modules_use_keras_only(module):
    source = (MODELS_DIR / module).read_text()
    assert "tensorflow" not in source.lower()
    assert not re.search(r"\btf\.", source)
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            # Relative imports stay inside models/ (whose sibling modules this test covers).
            imported.add("." * node.level + (node.module or "").split(".")[0])
    assert imported <= {"__future__", "math", "typing", "keras", ".blocks", ".heads", ".names"}, imported


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


@pytest.fixture(params=["float16", "bfloat16"])
def mixed(request):
    """The reduced compute dtype of --mixed-precision (float16) or --bfloat16, set as its policy."""
    keras.mixed_precision.set_global_policy("mixed_" + request.param)
    yield request.param
    keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_trains_in_mixed_precision_with_its_head_in_float32(name, mixed):
    """--mixed-precision and --bfloat16 on CPU: the embedding computes in float16 (bfloat16), the
    head's logits and the loss in float32, and a few steps with scale 64 stay finite even where cos
    is +-1 (the embeddings are set equal to a class direction and to its opposite, where arccos and
    64 * cos in reduced precision break)."""
    keras.utils.set_random_seed(0)
    model, _, head = _training_model(name, margin_scale=64.0)
    model.compile(keras.optimizers.SGD(0.01), loss=head.loss, loss_weights=head.loss_weights, metrics=head.metrics)
    # Keras adds loss scaling for float16 only: bfloat16 has float32's exponent range.
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer) == (mixed == "float16")
    embedding = model.get_layer("embedding")
    assert embedding.compute_dtype == mixed
    for output in keras.tree.flatten(model.outputs):  # triplet's output is the embedding; its loss casts it
        assert keras.backend.standardize_dtype(output.dtype) == (mixed if name == "triplet" else "float32")
    y = np.repeat(np.arange(4), 2)  # 8 samples for 8 inputs: the kernel below solves exactly
    x = np.random.default_rng(0).normal(size=(len(y), 8)).astype(np.float32)
    if name in ("arcface", "cosface"):
        # embedding(x) = x @ K: make each sample's embedding its class direction (even) or the
        # opposite of it (odd), so cos is exactly +1 / -1 before the head's clipping.
        directions = keras.ops.convert_to_numpy(model.get_layer("margin_head").kernel)[:, y].T
        directions *= np.where(np.arange(len(y)) % 2 == 0, 1.0, -1.0)[:, None]
        kernel = np.linalg.lstsq(x, directions, rcond=None)[0].astype(np.float32)
        embedding.set_weights([kernel, np.zeros(kernel.shape[1], np.float32)])
        cos = keras.ops.convert_to_numpy(model.get_layer("margin_head")(embedding(x)))
        # Reduced-precision embeddings: 11 significant bits in float16, 8 in bfloat16.
        np.testing.assert_allclose(np.abs(cos[np.arange(len(y)), y]), 1.0, atol=2e-3 if mixed == "float16" else 2e-2)
    inputs, targets = model_batch(model, x, y, _teacher_vectors(len(y)))
    history = model.fit(inputs, targets, batch_size=len(y), epochs=3, verbose=0)
    assert all(np.isfinite(v).all() for v in history.history.values()), history.history
    assert all(np.isfinite(keras.ops.convert_to_numpy(w)).all() for w in model.weights)
