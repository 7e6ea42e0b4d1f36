"""The training model of a config: its backbone with the loss's head on top, and what a batch
looks like to it. Keras only (no TensorFlow), so a check can build and train it on any backend."""
from __future__ import annotations

import keras

from models import build_backbone
from models.losses import LOSSES, make_loss, with_distillation
from utils.training.config import TrainConfig


def make_training_loss(config: TrainConfig, num_classes: int):
    return make_loss(config.loss, num_classes, **config.settings_for(LOSSES[config.loss].settings))


def build_config_backbone(config: TrainConfig):
    return build_backbone(config.net_type, config.input_size, config.embedding_size,
                          weight_decay=config.weight_decay, normalization=config.normalization)


def float32_copy(backbone, config: TrainConfig):
    """What a --mixed-precision run exports: the same network built under the float32 policy with
    the trained weights (float32 variables already), so the embedding model takes and returns
    float32 as the later stages expect. A float32 backbone is returned as it is."""
    if keras.backend.standardize_dtype(backbone.compute_dtype) == "float32":
        return backbone
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        copy = build_config_backbone(config)
    finally:
        keras.mixed_precision.set_global_policy(policy)
    copy.set_weights(backbone.get_weights())
    return copy


def build_training_model(config: TrainConfig, num_classes: int, teacher_dimension: int = 0):
    """(training model, embedding model, TrainingHead): the backbone with the loss's head on
    its embedding, and with a teacher (teacher_dimension > 0) the distillation term too. Losses
    that need the label in the forward pass take (images, labels)."""
    loss = make_training_loss(config, num_classes)
    backbone = build_config_backbone(config)
    images = keras.Input((config.input_size, config.input_size, 3), name="images")
    labels = keras.Input((), dtype="int32", name="labels")
    embedding = backbone(images)
    head = loss.attach(embedding, labels)
    if teacher_dimension:
        head = with_distillation(head, embedding, teacher_dimension, config.distill_weight)
    model = keras.Model([images, labels] if loss.needs_labels else images, head.outputs, name=loss.model_name)
    return model, backbone, head


def batch_structure(model) -> tuple[bool, list | None]:
    """(whether the model takes the labels as an input too, the names of its outputs that each
    take the labels as a target, or None for a single output)."""
    return (isinstance(model.input, (list, tuple)),
            list(model.output.keys()) if isinstance(model.output, dict) else None)


def model_batch(model, images, labels, teacher=None):
    """(inputs, targets) of one batch in the structure the training model expects: margin and
    center heads take the labels as an input too, multi-output heads a target per output (the
    "teacher" output: the teacher's vectors)."""
    labels_in, names = batch_structure(model)
    targets = {n: teacher if n == "teacher" else labels for n in names} if names else labels
    return (images, labels) if labels_in else images, targets
