"""VGG-16 (Simonyan & Zisserman 2015) as the seed built it in tflearn (its models.py)."""
from __future__ import annotations

from keras import layers

from .blocks import tflearn_conv_init, tflearn_dense_init

# (filters, convs) per stage; each stage ends in a 2x2 max-pool.
VGG16_STAGES = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))
FC6_UNITS = 4096


def vgg16(x, embedding_size: int, regularizer=None):
    """x: normalised images -> 13 biased ReLU convs (no batch norm; the trunk of keras.applications.VGG16)
    -> flatten -> fc6 (4096, ReLU) -> dropout 0.5 -> fc7 (embedding_size, ReLU) -> dropout 0.5.

    The seed had no separate hidden layer: fc7 after its dropout is the embedding (the layer named
    "embedding"; dropout only acts in training). Flattening, as the seed did, ties fc6's size to
    the input size (2x2x512 at 64 px)."""
    for stage, (filters, convs) in enumerate(VGG16_STAGES, start=1):
        for index in range(convs):
            x = layers.Conv2D(filters, 3, padding="same", activation="relu", kernel_initializer=tflearn_conv_init(),
                              kernel_regularizer=regularizer, name=f"block{stage}_conv{index + 1}")(x)
        x = layers.MaxPooling2D(2, name=f"block{stage}_pool")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(FC6_UNITS, activation="relu", kernel_initializer=tflearn_dense_init(),
                     kernel_regularizer=regularizer, name="fc6")(x)
    x = layers.Dropout(0.5, name="fc6_dropout")(x)
    x = layers.Dense(embedding_size, activation="relu", kernel_initializer=tflearn_dense_init(),
                     kernel_regularizer=regularizer, name="fc7")(x)
    return layers.Dropout(0.5, name="embedding")(x)
