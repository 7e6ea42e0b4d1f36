"""VGG-16 (Simonyan & Zisserman 2015) with a ReLU dense embedding."""
from __future__ import annotations

from keras import layers

from .blocks import relu_embedding_head

# (filters, convs) per stage; each stage ends in a 2x2 max-pool.
VGG16_STAGES = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))


def vgg16(x, embedding_size: int, regularizer=None):
    """x: normalised images -> 13 convs -> GAP (not flatten, so any input size works) -> Dense "embedding".
    The convs are the original ones (biased, no batch norm), so the trunk matches keras.applications.VGG16."""
    for stage, (filters, convs) in enumerate(VGG16_STAGES, start=1):
        for index in range(convs):
            x = layers.Conv2D(filters, 3, padding="same", activation="relu", kernel_regularizer=regularizer,
                              name=f"block{stage}_conv{index + 1}")(x)
        x = layers.MaxPooling2D(2, name=f"block{stage}_pool")(x)
    return relu_embedding_head(x, embedding_size, regularizer)
