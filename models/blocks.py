"""Blocks shared by several backbone families: conv-BN-activation, residual shortcuts, embedding heads."""
from __future__ import annotations

import keras
from keras import layers, ops


def l2_regularizer(weight_decay: float):
    """The L2 kernel penalty of the training recipe, or None when weight decay is off."""
    return keras.regularizers.L2(weight_decay) if weight_decay > 0 else None


# Moving statistics follow the batches faster than Keras' 0.99 default (ArcFace uses 0.9 too),
# so holdout accuracy is meaningful after a few hundred steps, not thousands.
BN_MOMENTUM = 0.9


# The seed's tflearn initialisers. Functions, not shared instances: a Keras 3 initializer
# created without a seed fixes one at construction, so an instance reused across layers gives
# every layer of the same shape the same initial weights.
def tflearn_conv_init():
    """conv_2d's default 'uniform_scaling': uniform, variance 1 / fan_in."""
    return keras.initializers.VarianceScaling(1.0, "fan_in", "uniform")


def tflearn_residual_init():
    """residual_block's 'variance_scaling': truncated normal, variance 2 / fan_in (He)."""
    return keras.initializers.VarianceScaling(2.0, "fan_in", "truncated_normal")


def tflearn_dense_init():
    """fully_connected's default 'truncated_normal', stddev 0.02."""
    return keras.initializers.TruncatedNormal(stddev=0.02)


def tflearn_batch_norm(name: str) -> layers.Layer:
    """tflearn's batch_normalization: decay 0.9, epsilon 1e-5, gamma drawn from N(1, 0.002)."""
    return batch_norm(name, epsilon=1e-5, gamma_initializer=keras.initializers.RandomNormal(1.0, 0.002))


def batch_norm(name: str, **kwargs) -> layers.Layer:
    return layers.BatchNormalization(momentum=BN_MOMENTUM, name=name, **kwargs)


def activation_layer(kind: str, name: str) -> layers.Layer:
    if kind == "prelu":
        # One slope per channel, as in the papers, shared over space so any input size works.
        # 0.25 is the PReLU paper's (and PyTorch's) initial slope; Keras would start at 0, i.e. ReLU.
        return layers.PReLU(alpha_initializer=keras.initializers.Constant(0.25), shared_axes=[1, 2], name=name)
    return layers.Activation(kind, name=name)


def conv_bn(x, filters: int | None, kernel_size, name: str, strides=1, activation: str | None = "relu",
            padding: str = "same", regularizer=None, depthwise: bool = False):
    """Conv -> BatchNorm -> activation (None: linear). The conv has no bias: BN's shift replaces it.
    depthwise=True makes a depthwise conv (filters is then ignored and may be None)."""
    if depthwise:
        x = layers.DepthwiseConv2D(kernel_size, strides, padding, use_bias=False, depthwise_regularizer=regularizer,
                                   name=f"{name}_dwconv")(x)
    else:
        x = layers.Conv2D(filters, kernel_size, strides, padding, use_bias=False, kernel_regularizer=regularizer,
                          name=f"{name}_conv")(x)
    x = batch_norm(f"{name}_bn")(x)
    return x if activation is None else activation_layer(activation, f"{name}_{activation}")(x)


def shortcut(x, filters: int, strides: int, name: str, regularizer=None):
    """Identity when the residual branch keeps the shape, else a 1x1 conv + BN projection to it."""
    if strides == 1 and x.shape[-1] == filters:
        return x
    return conv_bn(x, filters, 1, name, strides, activation=None, regularizer=regularizer)


def relu_embedding_head(x, embedding_size: int, regularizer=None):
    """Global average pool -> ReLU dense layer "embedding" (the seed's hidden layer; a softmax goes on top)."""
    x = layers.GlobalAveragePooling2D(name="global_pool")(x)
    return layers.Dense(embedding_size, activation="relu", kernel_regularizer=regularizer, name="embedding")(x)


def linear_embedding(x, embedding_size: int, regularizer=None):
    """Dense (no bias: the BN shifts) -> BatchNorm "embedding", the FaceNet/ArcFace style linear embedding.
    The BN has no scale (gamma), as in FaceNet (slim's default) and ArcFace (which freezes it at 1)."""
    x = layers.Dense(embedding_size, use_bias=False, kernel_regularizer=regularizer, name="embedding_dense")(x)
    return batch_norm("embedding", scale=False)(x)


@keras.saving.register_keras_serializable(package="icyface")
class ChannelZeroPad(layers.Layer):
    """Zero channels added on both sides of the last axis: tflearn's parameter-free way to
    widen a residual identity (a registered layer, not a Lambda, so safe-mode loading works)."""

    def __init__(self, pad: int, **kwargs):
        super().__init__(**kwargs)
        self.pad = int(pad)

    def call(self, x):
        return ops.pad(x, [[0, 0]] * (len(x.shape) - 1) + [[self.pad, self.pad]])

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], input_shape[-1] + 2 * self.pad)

    def get_config(self):
        return {**super().get_config(), "pad": self.pad}
