"""The training losses by name: ``make_loss("arcface", num_classes, **settings).attach(embedding, labels)``.

The one place that knows what each loss puts on the embedding during training, so the
training stage never branches on the loss name. Pure Keras 3, like the rest of models/.

A loss class declares:

* ``settings``: the training-config fields its constructor takes as keyword arguments
  (``classifier_init``, ``margin_scale``, ``margin_m``, ``center_weight``, ``triplet_margin``,
  ``label_smoothing``);
* ``needs_labels``: the training model takes ``[images, labels]`` (margins and centres use the
  label in the forward pass), else ``images`` alone;
* ``identity_batches``: batches must hold k images of each identity (triplet mining);
* ``model_name``: the name of the training model.

``attach`` returns a ``TrainingHead`` ready for ``keras.Model(inputs, head.outputs)`` and
``model.compile(loss=head.loss, loss_weights=head.loss_weights, metrics=head.metrics)``;
``head.monitor`` is the logged value the best checkpoint follows. Holdout top-1 / top-5 are
always measured on plain (margin-free) class scores. Adding a loss: one class, one line in
``LOSSES`` and its name in ``models.names.LOSS_NAMES`` (what the command line offers, without Keras).
"""
from __future__ import annotations

from typing import Any, NamedTuple

import keras
from keras import ops

from .heads import (
    CLASSIFIER_INITS,
    ArcFaceMargin,
    CenterDistance,
    CosFaceMargin,
    CosineClassifier,
    SemiHardTripletLoss,
    SoftmaxHead,
    l2_normalize,
    mean_prediction_loss,
)
from .names import LOSS_NAMES, checked_registry


class TrainingHead(NamedTuple):
    outputs: Any  # a tensor, or a dict of named tensors (the Keras output names)
    loss: Any
    loss_weights: dict | None
    metrics: Any
    monitor: str


def _cross_entropy(label_smoothing: float = 0.0):
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    if label_smoothing:
        return SmoothedCrossEntropy(label_smoothing)
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


@keras.saving.register_keras_serializable(package="icyface")
class SmoothedCrossEntropy(keras.losses.Loss):
    """Softmax cross-entropy on logits against integer labels smoothed by ``smoothing``: the target
    puts 1 - smoothing on the true class and spreads smoothing evenly over all classes."""

    def __init__(self, smoothing: float, name: str = "smoothed_cross_entropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.smoothing = float(smoothing)

    def call(self, y_true, y_pred):
        log_p = ops.log_softmax(ops.cast(y_pred, "float32"), axis=-1)
        labels = ops.reshape(ops.cast(y_true, "int32"), (-1, 1))
        true_class = ops.take_along_axis(log_p, labels, axis=-1)[:, 0]
        return -(1.0 - self.smoothing) * true_class - self.smoothing * ops.mean(log_p, axis=-1)

    def get_config(self):
        return {**super().get_config(), "smoothing": self.smoothing}


def _top1_top5():
    # New metric objects for every model: Keras metrics hold their running state.
    return [keras.metrics.SparseCategoricalAccuracy(name="top1"),
            keras.metrics.SparseTopKCategoricalAccuracy(k=5, name="top5")]


class TrainingLoss:
    """What a loss puts on the embedding during training; subclasses set the class attributes."""

    settings: tuple[str, ...] = ()
    needs_labels = False
    identity_batches = False
    model_name = "trainer"

    def __init__(self, num_classes: int):
        self.num_classes = int(num_classes)

    def attach(self, embedding, labels) -> TrainingHead:
        """The head on ``embedding`` (symbolic ``[N, D]``); ``labels`` (symbolic int ``[N]``) is
        wired in only when ``needs_labels``."""
        raise NotImplementedError


class SoftmaxLoss(TrainingLoss):
    """Softmax cross-entropy on ``SoftmaxHead`` logits (the seed recipe); output: the scores."""

    settings = ("classifier_init", "label_smoothing")

    def __init__(self, num_classes: int, *, classifier_init: str, label_smoothing: float):
        super().__init__(num_classes)
        self.cross_entropy = _cross_entropy(label_smoothing)  # checked before any backbone is built
        if classifier_init not in CLASSIFIER_INITS:
            raise ValueError(f"unknown classifier_init {classifier_init!r}; choose from {', '.join(CLASSIFIER_INITS)}")
        self.classifier_init = classifier_init

    def scores(self, embedding):
        return SoftmaxHead(self.num_classes, kernel_initializer=CLASSIFIER_INITS[self.classifier_init](),
                           dtype="float32", name="classifier")(embedding)

    def attach(self, embedding, labels) -> TrainingHead:
        return TrainingHead(self.scores(embedding), self.cross_entropy, None, _top1_top5(), "val_top1")


class CenterLoss(SoftmaxLoss):
    """Softmax cross-entropy plus ``center_weight`` times the center loss; outputs "scores", "center"."""

    settings = ("classifier_init", "center_weight", "label_smoothing")
    needs_labels = True

    def __init__(self, num_classes: int, *, classifier_init: str, center_weight: float, label_smoothing: float):
        super().__init__(num_classes, classifier_init=classifier_init, label_smoothing=label_smoothing)
        self.center_weight = float(center_weight)

    def attach(self, embedding, labels) -> TrainingHead:
        outputs = {"scores": self.scores(embedding),
                   "center": CenterDistance(self.num_classes, dtype="float32", name="center")(embedding, labels)}
        return TrainingHead(outputs, {"scores": self.cross_entropy, "center": mean_prediction_loss},
                            {"scores": 1.0, "center": self.center_weight}, {"scores": _top1_top5()},
                            "val_scores_top1")


class MarginLoss(TrainingLoss):
    """Cross-entropy on margin logits from ``CosineClassifier`` cosines; outputs "logits" (the
    trained ones, margin applied) and "scores" (``scale * cos``, no margin, for accuracy)."""

    settings = ("margin_scale", "margin_m", "label_smoothing")
    needs_labels = True
    margin_layer: type  # the margin transform, set by each subclass

    def __init__(self, num_classes: int, *, margin_scale: float, margin_m: float, label_smoothing: float):
        super().__init__(num_classes)
        self.cross_entropy = _cross_entropy(label_smoothing)
        # Made here, not in attach, so a bad margin fails before any backbone is built; it holds no weights.
        self.margin = self.margin_layer(margin_scale, margin_m, dtype="float32", name="margin")

    def attach(self, embedding, labels) -> TrainingHead:
        cos = CosineClassifier(self.num_classes, dtype="float32", name="margin_head")(embedding)
        outputs = {"logits": self.margin(cos, labels), "scores": self.margin(cos)}
        return TrainingHead(outputs, {"logits": self.cross_entropy, "scores": None}, None, {"scores": _top1_top5()},
                            "val_scores_top1")


class ArcFaceLoss(MarginLoss):
    margin_layer = ArcFaceMargin


class CosFaceLoss(MarginLoss):
    margin_layer = CosFaceMargin


class TripletLoss(TrainingLoss):
    """Semi-hard triplet loss on the embedding itself (no classifier); batches of k images per identity."""

    settings = ("triplet_margin",)
    identity_batches = True
    model_name = "triplet_trainer"

    def __init__(self, num_classes: int, *, triplet_margin: float):
        super().__init__(num_classes)
        self.triplet_margin = float(triplet_margin)

    def attach(self, embedding, labels) -> TrainingHead:
        return TrainingHead(embedding, SemiHardTripletLoss(self.triplet_margin), None, None, "val_loss")


class NoLabels(TrainingLoss):
    """No term on the labels: the distillation term (with_distillation) is the whole objective."""

    def attach(self, embedding, labels) -> TrainingHead:
        return TrainingHead({}, {}, {}, {}, "val_loss")


@keras.saving.register_keras_serializable(package="icyface")
def cosine_distance(y_true, y_pred):
    """1 - cos between each target and prediction row (neither needs to be normalised)."""
    y_true, y_pred = ops.cast(y_true, "float32"), ops.cast(y_pred, "float32")
    return 1.0 - ops.sum(l2_normalize(y_true, axis=-1) * l2_normalize(y_pred, axis=-1), axis=-1)


def with_distillation(head: TrainingHead, embedding, teacher_dimension: int, weight: float) -> TrainingHead:
    """head plus the distillation term: ``weight`` times 1 - cos(student, teacher) per image, on an
    output named "teacher" whose target is the teacher's vector. The student's embedding is matched
    as it is when it has the teacher's size (so it lives in the teacher's space, cosines included),
    else through a learned linear projection."""
    if weight <= 0:
        raise ValueError(f"the distillation weight must be > 0, got {weight}")
    student = embedding
    if embedding.shape[-1] != teacher_dimension:
        student = keras.layers.Dense(teacher_dimension, use_bias=False, name="teacher_projection")(embedding)
    student = keras.layers.Activation("linear", dtype="float32", name="teacher")(student)
    outputs = head.outputs if isinstance(head.outputs, dict) else {"scores": head.outputs}

    def per_output(value, default):
        return value if isinstance(value, dict) else {name: default if value is None else value
                                                       for name in outputs}

    metrics = per_output(head.metrics, None)
    # A single-output head's logged names gain its output's name once it is one output of several.
    monitor = head.monitor if isinstance(head.outputs, dict) or head.monitor == "val_loss" else \
        head.monitor.replace("val_", "val_scores_", 1)
    return TrainingHead({**outputs, "teacher": student}, {**per_output(head.loss, None), "teacher": cosine_distance},
                        {**{n: 1.0 for n in outputs}, **(head.loss_weights or {}), "teacher": float(weight)},
                        {**{n: m for n, m in metrics.items() if m},
                         "teacher": [keras.metrics.CosineSimilarity(name="cosine")]}, monitor)


LOSSES: dict[str, type[TrainingLoss]] = checked_registry(LOSS_NAMES, {
    "softmax": SoftmaxLoss,
    "center": CenterLoss,
    "arcface": ArcFaceLoss,
    "cosface": CosFaceLoss,
    "triplet": TripletLoss,
    "distill": NoLabels,
}, "models.losses.LOSSES")


def make_loss(name: str, num_classes: int, **settings) -> TrainingLoss:
    """The loss ``name`` for ``num_classes`` identities, given the settings it declares (others are ignored)."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose from {', '.join(LOSSES)}")
    cls = LOSSES[name]
    missing = [key for key in cls.settings if key not in settings]
    if missing:
        raise ValueError(f"loss {name!r} needs the settings {', '.join(missing)}")
    return cls(num_classes, **{key: settings[key] for key in cls.settings})
