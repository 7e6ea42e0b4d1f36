"""ResNets (He et al. 2016): resnet18..152 with a ReLU dense embedding, resnet18-linear..152-linear with a
linear (Dense -> BatchNorm) one."""
from __future__ import annotations

from keras import layers

from .blocks import conv_bn, linear_embedding, relu_embedding_head, shortcut

STAGE_FILTERS = (64, 128, 256, 512)
# depth -> (residual block kind, blocks per stage)
DEPTHS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
BOTTLENECK_EXPANSION = 4


def basic_block(x, filters: int, strides: int, name: str, regularizer=None):
    residual = shortcut(x, filters, strides, f"{name}_shortcut", regularizer)
    x = conv_bn(x, filters, 3, f"{name}_1", strides, regularizer=regularizer)
    x = conv_bn(x, filters, 3, f"{name}_2", activation=None, regularizer=regularizer)
    return layers.Activation("relu", name=f"{name}_out")(layers.Add(name=f"{name}_add")([residual, x]))


def bottleneck_block(x, filters: int, strides: int, name: str, regularizer=None):
    residual = shortcut(x, BOTTLENECK_EXPANSION * filters, strides, f"{name}_shortcut", regularizer)
    x = conv_bn(x, filters, 1, f"{name}_1", regularizer=regularizer)
    # Stride on the 3x3 conv (torchvision's "v1.5"; keras.applications strides the first 1x1 instead:
    # same parameters, but the 1x1 would then skip three quarters of the input).
    x = conv_bn(x, filters, 3, f"{name}_2", strides, regularizer=regularizer)
    x = conv_bn(x, BOTTLENECK_EXPANSION * filters, 1, f"{name}_3", activation=None, regularizer=regularizer)
    return layers.Activation("relu", name=f"{name}_out")(layers.Add(name=f"{name}_add")([residual, x]))


def resnet(x, embedding_size: int, regularizer=None, *, depth: int, embedding: str = "relu"):
    """x: normalised images -> GAP -> "embedding": Dense(embedding_size, ReLU) (embedding="relu"), or
    Dense -> BatchNorm (embedding="linear"; a ReLU embedding lies in the positive orthant, where no two
    faces are more than 90 degrees apart, which narrows the room a cosine margin loss has to separate people)."""
    if embedding not in ("relu", "linear"):
        raise ValueError(f"unknown embedding {embedding!r}; choose 'relu' or 'linear'")
    kind, blocks_per_stage = DEPTHS[depth]
    block = basic_block if kind == "basic" else bottleneck_block
    x = conv_bn(x, 64, 7, "stem", strides=2, regularizer=regularizer)
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
    for stage, (filters, blocks) in enumerate(zip(STAGE_FILTERS, blocks_per_stage), start=1):
        for index in range(blocks):
            # The stem already halved twice, so the first stage keeps its resolution.
            strides = 2 if stage > 1 and index == 0 else 1
            x = block(x, filters, strides, f"stage{stage}_block{index + 1}", regularizer)
    if embedding == "relu":
        return relu_embedding_head(x, embedding_size, regularizer)
    return linear_embedding(layers.GlobalAveragePooling2D(name="global_pool")(x), embedding_size, regularizer)
