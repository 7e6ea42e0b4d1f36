"""The learning-rate schedule: warm-up, then the seed's x0.1 staircase or cosine decay."""
from __future__ import annotations

import keras
import numpy as np
from keras import ops

from utils.training.config import SCHEDULES  # noqa: F401  (the kinds, listed there without Keras)


@keras.saving.register_keras_serializable(package="icyface")
class StepOrCosineSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Learning rate per step: linear warm-up, then x0.1 staircase every decay_step
    epochs (seed) or cosine decay to zero (modern recipe)."""

    def __init__(self, base_lr, steps_per_epoch, epochs, warmup_epochs=0, kind="step", decay_step=10):
        self.base_lr, self.steps_per_epoch, self.epochs = float(base_lr), int(steps_per_epoch), int(epochs)
        self.warmup_epochs, self.kind, self.decay_step = int(warmup_epochs), kind, int(decay_step)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        epoch = step / self.steps_per_epoch
        warm = float(self.warmup_epochs)
        if self.kind == "step":
            lr = self.base_lr * ops.power(0.1, ops.floor(epoch / max(self.decay_step, 1)))
        else:
            progress = ops.clip((epoch - warm) / max(self.epochs - warm, 1e-6), 0.0, 1.0)
            lr = self.base_lr * 0.5 * (1.0 + ops.cos(np.pi * progress))
        if self.warmup_epochs:
            lr = ops.where(epoch < warm, self.base_lr * (step + 1.0) / (warm * self.steps_per_epoch), lr)
        return lr

    def get_config(self):
        return dict(base_lr=self.base_lr, steps_per_epoch=self.steps_per_epoch, epochs=self.epochs,
                    warmup_epochs=self.warmup_epochs, kind=self.kind, decay_step=self.decay_step)
