"""FaceNet's Inception-ResNet-v1 (Szegedy et al. 2017; Schroff et al. 2015, davidsandberg/facenet layout).

Every conv and pool uses padding="same" where FaceNet uses "valid" (stem, reductions; "valid" needs
>= 75 px input), so the net builds for any input size and only halves it, five times: 64 px gives a
2x2 final map, 160 px 5x5 (FaceNet: 3x3). Padding changes no parameter.
"""
from __future__ import annotations

from keras import layers

from .blocks import conv_bn, linear_embedding


def conv_chain(x, name: str, regularizer, *convs):
    """conv-BN-ReLU layers in a row, each given as (filters, kernel_size[, strides])."""
    for index, (filters, kernel_size, *strides) in enumerate(convs):
        x = conv_bn(x, filters, kernel_size, f"{name}_{index}", strides=strides[0] if strides else 1,
                    regularizer=regularizer)
    return x


def scaled_residual(x, branches, scale: float, name: str, regularizer, activation: str | None = "relu"):
    """x + scale * conv1x1(concat(branches)), then the activation."""
    mixed = layers.Concatenate(name=f"{name}_concat")(branches)
    # Linear, biased, un-normalised 1x1 back to the trunk width, as in FaceNet.
    up = layers.Conv2D(x.shape[-1], 1, kernel_regularizer=regularizer, name=f"{name}_up")(mixed)
    # The built-in Rescaling layer multiplies by the residual scale: no custom layer, so safe_mode loads it.
    up = layers.Rescaling(scale, name=f"{name}_scale")(up)
    x = layers.Add(name=f"{name}_add")([x, up])
    return x if activation is None else layers.Activation(activation, name=f"{name}_{activation}")(x)


def block35(x, scale: float, name: str, regularizer):
    """Inception-ResNet-A, 35x35 grid in the paper."""
    return scaled_residual(x, [
        conv_chain(x, f"{name}_b0", regularizer, (32, 1)),
        conv_chain(x, f"{name}_b1", regularizer, (32, 1), (32, 3)),
        conv_chain(x, f"{name}_b2", regularizer, (32, 1), (32, 3), (32, 3)),
    ], scale, name, regularizer)


def block17(x, scale: float, name: str, regularizer):
    """Inception-ResNet-B, 17x17 grid in the paper."""
    return scaled_residual(x, [
        conv_chain(x, f"{name}_b0", regularizer, (128, 1)),
        conv_chain(x, f"{name}_b1", regularizer, (128, 1), (128, (1, 7)), (128, (7, 1))),
    ], scale, name, regularizer)


def block8(x, scale: float, name: str, regularizer, activation: str | None = "relu"):
    """Inception-ResNet-C, 8x8 grid in the paper."""
    return scaled_residual(x, [
        conv_chain(x, f"{name}_b0", regularizer, (192, 1)),
        conv_chain(x, f"{name}_b1", regularizer, (192, 1), (192, (1, 3)), (192, (3, 1))),
    ], scale, name, regularizer, activation)


def reduction_a(x, regularizer):
    return layers.Concatenate(name="reduction_a")([
        conv_chain(x, "reduction_a_b0", regularizer, (384, 3, 2)),
        conv_chain(x, "reduction_a_b1", regularizer, (192, 1), (192, 3), (256, 3, 2)),
        layers.MaxPooling2D(3, strides=2, padding="same", name="reduction_a_pool")(x),
    ])


def reduction_b(x, regularizer):
    return layers.Concatenate(name="reduction_b")([
        conv_chain(x, "reduction_b_b0", regularizer, (256, 1), (384, 3, 2)),
        conv_chain(x, "reduction_b_b1", regularizer, (256, 1), (256, 3, 2)),
        conv_chain(x, "reduction_b_b2", regularizer, (256, 1), (256, 3), (256, 3, 2)),
        layers.MaxPooling2D(3, strides=2, padding="same", name="reduction_b_pool")(x),
    ])


def inception_resnet_v1(x, embedding_size: int, regularizer=None, *, dropout_rate: float = 0.2):
    """x: normalised images -> ... -> GAP -> dropout -> Dense (no bias) -> BN "embedding".
    dropout_rate 0.2 is FaceNet's default keep probability of 0.8."""
    x = conv_chain(x, "stem_a", regularizer, (32, 3, 2), (32, 3), (64, 3))
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
    x = conv_chain(x, "stem_b", regularizer, (80, 1), (192, 3), (256, 3, 2))
    for index in range(5):
        x = block35(x, 0.17, f"block35_{index + 1}", regularizer)
    x = reduction_a(x, regularizer)
    for index in range(10):
        x = block17(x, 0.10, f"block17_{index + 1}", regularizer)
    x = reduction_b(x, regularizer)
    for index in range(5):
        x = block8(x, 0.20, f"block8_{index + 1}", regularizer)
    # FaceNet ends the trunk with one more, unscaled and linear, block8.
    x = block8(x, 1.0, "block8_final", regularizer, activation=None)
    x = layers.GlobalAveragePooling2D(name="global_pool")(x)
    x = layers.Dropout(dropout_rate, name="dropout")(x)
    return linear_embedding(x, embedding_size, regularizer)
