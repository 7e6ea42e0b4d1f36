"""MobileFaceNet (Chen et al. 2018), Table 1 of the paper, for 112 px faces."""
from __future__ import annotations

from keras import layers

from .blocks import conv_bn, linear_embedding

# Inverted-residual bottlenecks: (expansion t, output channels c, repeats n, stride of the first s).
BOTTLENECKS = ((2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1))


def bottleneck(x, expansion: int, filters: int, strides: int, name: str, regularizer=None):
    """MobileNetV2 block: 1x1 expand -> 3x3 depthwise -> linear 1x1 project, residual when shapes match."""
    y = conv_bn(x, x.shape[-1] * expansion, 1, f"{name}_expand", activation="prelu", regularizer=regularizer)
    y = conv_bn(y, None, 3, f"{name}_depthwise", strides, activation="prelu", regularizer=regularizer,
                depthwise=True)
    y = conv_bn(y, filters, 1, f"{name}_project", activation=None, regularizer=regularizer)
    if strides == 1 and x.shape[-1] == filters:
        y = layers.Add(name=f"{name}_add")([x, y])
    return y


def mobilefacenet(x, embedding_size: int, regularizer=None):
    """x: normalised images -> ... -> linear global depthwise conv -> linear 1x1 -> BN "embedding"."""
    x = conv_bn(x, 64, 3, "stem", strides=2, activation="prelu", regularizer=regularizer)
    x = conv_bn(x, None, 3, "stem_depthwise", activation="prelu", regularizer=regularizer, depthwise=True)
    for group, (expansion, filters, repeats, strides) in enumerate(BOTTLENECKS, start=1):
        for index in range(repeats):
            x = bottleneck(x, expansion, filters, strides if index == 0 else 1, f"bottleneck{group}_{index + 1}",
                           regularizer)
    x = conv_bn(x, 512, 1, "expand", activation="prelu", regularizer=regularizer)
    # Global depthwise conv (GDConv): its kernel covers the whole final map (7x7 at 112 px), so unlike
    # average pooling it learns how much each face position counts.
    x = conv_bn(x, None, tuple(x.shape[1:3]), "gdconv", padding="valid", activation=None,
                regularizer=regularizer, depthwise=True)
    x = layers.Flatten(name="flatten")(x)
    # The paper's linear 1x1 conv on the 1x1 map is this dense layer.
    return linear_embedding(x, embedding_size, regularizer)
