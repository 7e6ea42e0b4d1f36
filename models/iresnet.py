"""ArcFace's improved residual networks "IR" (Deng et al. 2019; insightface iresnet) for 112 px faces."""
from __future__ import annotations

from keras import layers

from .blocks import batch_norm, conv_bn, linear_embedding, shortcut

STAGE_FILTERS = (64, 128, 256, 512)
DEPTHS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 14, 3), 100: (3, 13, 30, 3)}


def ir_block(x, filters: int, strides: int, name: str, regularizer=None):
    """BN -> 3x3 conv -> BN -> PReLU -> 3x3 conv (strided) -> BN, plus the shortcut; no activation after the add."""
    residual = shortcut(x, filters, strides, f"{name}_shortcut", regularizer)
    x = batch_norm(f"{name}_bn_in")(x)
    x = conv_bn(x, filters, 3, f"{name}_1", activation="prelu", regularizer=regularizer)
    x = conv_bn(x, filters, 3, f"{name}_2", strides, activation=None, regularizer=regularizer)
    return layers.Add(name=f"{name}_add")([residual, x])


def iresnet(x, embedding_size: int, regularizer=None, *, depth: int, dropout_rate: float = 0.4):
    """x: normalised images -> stages -> BN -> dropout -> flatten -> Dense -> BN "embedding" (ArcFace's
    output "E"). The stem does not downsample and every stage halves, so 112 px ends at 7x7x512.
    dropout_rate 0.4 is the ArcFace paper's (insightface's PyTorch configs use 0 on their larger data sets)."""
    x = conv_bn(x, 64, 3, "stem", activation="prelu", regularizer=regularizer)
    for stage, (filters, blocks) in enumerate(zip(STAGE_FILTERS, DEPTHS[depth]), start=1):
        for index in range(blocks):
            x = ir_block(x, filters, 2 if index == 0 else 1, f"stage{stage}_block{index + 1}", regularizer)
    x = batch_norm("head_bn")(x)
    x = layers.Dropout(dropout_rate, name="head_dropout")(x)
    # Flatten, not pooling: the dense layer learns a weight per face position.
    x = layers.Flatten(name="head_flatten")(x)
    return linear_embedding(x, embedding_size, regularizer)
