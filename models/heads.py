"""Classification heads and losses for face-embedding training.

Pure Keras 3 (``keras``, ``keras.layers``, ``keras.ops`` only), so everything here runs
on the TF, JAX and torch backends alike. The backbone ends in an embedding layer; what
sits on top of it during training (the registry ``models.losses.LOSSES`` wires these):

| loss    | layers on the embedding                 | loss                                                    |
|---------|-----------------------------------------|---------------------------------------------------------|
| softmax | ``SoftmaxHead`` (Dense logits)          | softmax cross-entropy (the seed recipe)                 |
| center  | ``SoftmaxHead`` + ``CenterDistance``    | cross-entropy + lambda * center loss (Wen 2016)         |
| arcface | ``CosineClassifier``, ``ArcFaceMargin`` | cross-entropy on s*cos(theta + m) (Deng 2019)           |
| cosface | ``CosineClassifier``, ``CosFaceMargin`` | cross-entropy on s*(cos(theta) - m) (Wang 2018)         |
| triplet | none                                    | ``SemiHardTripletLoss`` on the embedding (Schroff 2015) |

As in insightface's arcface_torch, a margin is a small transform of the cosine logits,
separate from the layer holding the class centres. Margins need the labels at training
time, so the training model takes ``[images, labels]`` as inputs; the embedding model used
for verification is the backbone alone, and never needs the head. Triplet training needs
batches holding several images of each identity: see ``utils.training.sampling.identity_batches``.
"""
from __future__ import annotations

import math

import keras
from keras import layers, ops

from .blocks import tflearn_dense_init
from .names import CLASSIFIER_INIT_NAMES, checked_registry

# Initial weights of the softmax layer: tflearn's fully_connected default (truncated normal,
# stddev 0.02) or Keras' Glorot uniform; factories, so each model gets a freshly seeded one.
CLASSIFIER_INITS = checked_registry(CLASSIFIER_INIT_NAMES, {"tflearn": tflearn_dense_init,
                                                             "glorot_uniform": keras.initializers.GlorotUniform},
                                    "models.heads.CLASSIFIER_INITS")

# Cosines are clipped to [-1 + eps, 1 - eps], and arcface's sine floored at sqrt(eps).
COSINE_EPS = 1e-7


def _working_dtype(layer: layers.Layer) -> str:
    """Heads compute in float32 at least: clipping cos to 1 - 1e-7 is meaningless in float16."""
    dtype = keras.backend.standardize_dtype(layer.compute_dtype)
    return "float32" if dtype in ("float16", "bfloat16") else dtype


def _flat_int_labels(labels):
    """Class ids as int32 of shape [N]; accepts [N] and [N, 1], ints or integral floats."""
    return ops.reshape(ops.cast(labels, "int32"), (-1,))


def l2_normalize(x, axis, eps=1e-12):
    # Not ops.normalize: the floor keeps the gradient finite for an all-zero vector.
    return x * ops.rsqrt(ops.maximum(ops.sum(ops.square(x), axis=axis, keepdims=True), eps))


@keras.saving.register_keras_serializable(package="icyface")
class SoftmaxHead(layers.Layer):
    """Plain linear logits ``e @ kernel + bias``: the seed recipe's softmax classifier.

    ``call(embeddings, labels=None)``: labels are accepted and ignored, so every head is
    called the same way. Train with ``SparseCategoricalCrossentropy(from_logits=True)``.
    """

    def __init__(self, num_classes: int, use_bias: bool = True, kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = int(num_classes)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, embeddings_shape, labels_shape=None):
        dim = embeddings_shape[-1]
        if dim is None:
            raise ValueError("SoftmaxHead needs a known embedding size (last axis)")
        self.kernel = self.add_weight(name="kernel", shape=(dim, self.num_classes),
                                      initializer=self.kernel_initializer)
        self.bias = (self.add_weight(name="bias", shape=(self.num_classes,), initializer="zeros")
                     if self.use_bias else None)

    def call(self, embeddings, labels=None):
        logits = ops.matmul(embeddings, self.kernel)
        if self.bias is not None:
            logits = logits + self.bias
        return logits

    def compute_output_shape(self, embeddings_shape, labels_shape=None):
        return tuple(embeddings_shape[:-1]) + (self.num_classes,)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "use_bias": self.use_bias,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer)}


@keras.saving.register_keras_serializable(package="icyface")
class CosineClassifier(layers.Layer):
    """Class centres for the margin losses: ``cos(theta)`` to each class, ``[N, num_classes]``.

    Holds ``kernel`` W of shape ``[embedding_dim, num_classes]``, one class direction per
    column. ``call(embeddings)``: embeddings and the columns of W are L2-normalised and
    ``cos = e . W`` is returned clipped to ``[-1 + eps, 1 - eps]`` (so a margin transform's
    ``sqrt(1 - cos^2)`` has a finite gradient), in float32 at least whatever the layer's
    compute dtype. A margin transform (``ArcFaceMargin``, ``CosFaceMargin``) makes logits of it.
    """

    def __init__(self, num_classes: int, eps: float = COSINE_EPS, kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = int(num_classes)
        self.eps = float(eps)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, embeddings_shape):
        dim = embeddings_shape[-1]
        if dim is None:
            raise ValueError("CosineClassifier needs a known embedding size (last axis)")
        self.kernel = self.add_weight(name="kernel", shape=(dim, self.num_classes),
                                      initializer=self.kernel_initializer)

    def call(self, embeddings):
        dtype = _working_dtype(self)
        e = l2_normalize(ops.cast(embeddings, dtype), axis=-1)
        w = l2_normalize(ops.cast(self.kernel, dtype), axis=0)
        return ops.clip(ops.matmul(e, w), -1.0 + self.eps, 1.0 - self.eps)

    def compute_output_shape(self, embeddings_shape):
        return tuple(embeddings_shape[:-1]) + (self.num_classes,)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "eps": self.eps,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer)}


class _TargetMargin(layers.Layer):
    """A margin transform: ``call(cos, labels=None)`` -> logits ``[N, C]`` from cosines ``[N, C]``.

    With labels (int class ids ``[N]`` or ``[N, 1]``) each row's target logit ``cos_y`` becomes
    ``target(cos_y)``; every logit is then multiplied by ``scale`` s. Feed these to
    ``SparseCategoricalCrossentropy(from_logits=True)``. Without labels: ``s * cos`` (no
    margin), e.g. for monitoring accuracy. Subclasses define ``target``.
    """

    def __init__(self, scale: float = 64.0, margin: float = 0.5, **kwargs):
        super().__init__(**kwargs)
        self.scale = float(scale)
        self.margin = float(margin)

    def target(self, cos):
        raise NotImplementedError

    def call(self, cos, labels=None):
        cos = ops.cast(cos, _working_dtype(self))
        if labels is None:
            return cos * self.scale
        one_hot = ops.one_hot(_flat_int_labels(labels), ops.shape(cos)[-1], dtype=cos.dtype)
        return (one_hot * self.target(cos) + (1.0 - one_hot) * cos) * self.scale

    def compute_output_shape(self, cos_shape, labels_shape=None):
        return tuple(cos_shape)

    def get_config(self):
        return {**super().get_config(), "scale": self.scale, "margin": self.margin}


@keras.saving.register_keras_serializable(package="icyface")
class ArcFaceMargin(_TargetMargin):
    """Additive angular margin (ArcFace): the target logit ``cos(theta_y)`` becomes ``cos(theta_y + m)``.

    ``margin`` m is an angle in radians, in ``[0, pi/2)``. ``cos(theta + m)`` is computed as
    ``cos*cos(m) - sin*sin(m)`` with ``sin = sqrt(max(1 - cos^2, eps))`` (no acos), so values
    and gradients stay finite at cos = +-1. Where ``theta + m > pi``, i.e. ``cos < cos(pi - m)``,
    ``cos(theta + m)`` would start *increasing* with theta; there the InsightFace rule
    ``cos - sin(pi - m) * m`` is used instead, which keeps the target logit decreasing in theta
    (the switch is a downward step: -1 just before, ``-cos m - m sin m`` just after).
    """

    def __init__(self, scale: float = 64.0, margin: float = 0.5, eps: float = COSINE_EPS, **kwargs):
        if not 0.0 <= margin < math.pi / 2:
            raise ValueError(f"arcface margin is an angle in [0, pi/2) radians, got {margin}")
        super().__init__(scale, margin, **kwargs)
        self.eps = float(eps)

    def target(self, cos):
        m = self.margin
        sin = ops.sqrt(ops.maximum(1.0 - ops.square(cos), self.eps))
        cos_theta_plus_m = cos * math.cos(m) - sin * math.sin(m)
        # theta + m > pi  <=>  cos < cos(pi - m): fall back to the monotonic surrogate.
        return ops.where(cos > math.cos(math.pi - m), cos_theta_plus_m, cos - math.sin(math.pi - m) * m)

    def get_config(self):
        return {**super().get_config(), "eps": self.eps}


@keras.saving.register_keras_serializable(package="icyface")
class CosFaceMargin(_TargetMargin):
    """Additive cosine margin (CosFace): the target logit ``cos(theta_y)`` becomes ``cos(theta_y) - m``."""

    def target(self, cos):
        return cos - self.margin


@keras.saving.register_keras_serializable(package="icyface")
class CenterDistance(layers.Layer):
    """Per-sample center-loss term ``0.5 * ||e - c_y||^2`` (Wen et al., ECCV 2016).

    Holds trainable class centres ``centers`` of shape ``[num_classes, embedding_dim]``,
    initialised to zeros. ``call(embeddings, labels)`` returns ``[N]``.

    Intended wiring: a two-output training model whose second output is this layer and
    whose loss is ``mean_prediction_loss``, weighted by lambda::

        emb = backbone(images)                       # inputs: [images, labels]
        model = keras.Model([images, labels],
                            {"logits": SoftmaxHead(n, name="logits")(emb),
                             "center": CenterDistance(n, name="center")(emb, labels)})
        model.compile(optimizer,
                      loss={"logits": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                            "center": mean_prediction_loss},
                      loss_weights={"logits": 1.0, "center": lam})       # lam ~ 0.003-0.01
        model.fit([x, y], {"logits": y, "center": np.zeros(len(y))}, ...)  # dummy center target

    The centres are learned by the optimizer from this loss (gradient ``-lam * (e - c_y) / N``
    per sample) rather than by the paper's separate ``alpha`` update rule; the centre
    learning rate is thus the optimizer's, scaled by lambda.
    """

    def __init__(self, num_classes: int, **kwargs):
        super().__init__(**kwargs)
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = int(num_classes)

    def build(self, embeddings_shape, labels_shape=None):
        dim = embeddings_shape[-1]
        if dim is None:
            raise ValueError("CenterDistance needs a known embedding size (last axis)")
        self.centers = self.add_weight(name="centers", shape=(self.num_classes, dim), initializer="zeros")

    def call(self, embeddings, labels):
        dtype = _working_dtype(self)
        centers = ops.take(ops.cast(self.centers, dtype), _flat_int_labels(labels), axis=0)
        return 0.5 * ops.sum(ops.square(ops.cast(embeddings, dtype) - centers), axis=-1)

    def compute_output_shape(self, embeddings_shape, labels_shape=None):
        return tuple(embeddings_shape[:-1])

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes}


@keras.saving.register_keras_serializable(package="icyface")
def mean_prediction_loss(y_true, y_pred):
    """The mean of ``y_pred``; ``y_true`` is ignored (pass zeros).

    The loss of an output that already *is* a per-sample loss, such as ``CenterDistance``;
    scale it with ``loss_weights`` (see ``CenterDistance`` for the wiring).
    """
    return ops.mean(y_pred)


def semi_hard_triplet_loss(labels, embeddings, margin: float = 0.2):
    """Triplet loss with in-batch semi-hard negative mining (Schroff et al., FaceNet 2015).

    Embeddings ``[N, D]`` are L2-normalised and ``d`` is the squared Euclidean distance.
    For every anchor-positive pair (same label, different index) the negative is the
    closest one farther than the positive (``d_an > d_ap``); if there is none, the
    farthest negative. Returns the mean over anchor-positive pairs of
    ``max(d_ap - d_an + margin, 0)``. Pairs whose anchor has no negative in the batch are
    left out; with no pair left the loss is 0.

    Memory is O(N^3) (an ``[N, N, N]`` mask), fine for the usual p x k batches (N <= ~256).
    """
    emb = ops.convert_to_tensor(embeddings)
    if keras.backend.standardize_dtype(emb.dtype) in ("float16", "bfloat16"):
        emb = ops.cast(emb, "float32")
    emb = l2_normalize(emb, axis=-1)
    labels = ops.reshape(labels, (-1,))
    n = ops.shape(emb)[0]

    sq = ops.sum(ops.square(emb), axis=-1)
    dist = ops.maximum(sq[:, None] + sq[None, :] - 2.0 * ops.matmul(emb, ops.transpose(emb)), 0.0)
    same = ops.equal(labels[:, None], labels[None, :])
    not_self = ops.logical_not(ops.cast(ops.eye(n), "bool"))
    positive = ops.logical_and(same, not_self)  # [a, p]
    negative = ops.logical_not(same)  # [a, n]

    # d_ap[a, p] against d_an[a, n]: axes [a, p, n].
    d_ap = dist[:, :, None]
    d_an = dist[:, None, :]
    semi_hard = ops.logical_and(negative[:, None, :], ops.greater(d_an, d_ap))
    big = ops.cast(1e9, dist.dtype)
    closest_farther = ops.min(ops.where(semi_hard, d_an, big), axis=-1)  # [a, p]
    farthest = ops.max(ops.where(negative, dist, -big), axis=-1)  # [a]
    chosen = ops.where(ops.any(semi_hard, axis=-1), closest_farther, farthest[:, None])

    valid = ops.cast(ops.logical_and(positive, ops.any(negative, axis=-1)[:, None]), dist.dtype)
    losses = ops.maximum(dist - chosen + margin, 0.0) * valid
    return ops.sum(losses) / ops.maximum(ops.sum(valid), 1.0)


@keras.saving.register_keras_serializable(package="icyface")
class SemiHardTripletLoss(keras.losses.Loss):
    """Keras loss wrapper: ``y_true`` = int labels ``[N]`` (or ``[N, 1]``), ``y_pred`` = embeddings ``[N, D]``.

    The loss is a batch statistic (a scalar per batch), so sample weights are not meaningful.
    """

    def __init__(self, margin: float = 0.2, name: str = "semi_hard_triplet_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.margin = float(margin)

    def call(self, y_true, y_pred):
        return semi_hard_triplet_loss(y_true, y_pred, self.margin)

    def get_config(self):
        return {**super().get_config(), "margin": self.margin}
