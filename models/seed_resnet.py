"""The seed's tflearn ResNet ("res-cp"), layer by layer: full pre-activation residual blocks.

tflearn's `residual_block` (0.3.x, what the seed ran on TensorFlow 1.2) is BN -> ReLU ->
conv3x3 -> BN -> ReLU -> conv3x3, plus the identity. Its convs carry a bias; a block that
downsamples subsamples the identity (avg-pool with a 1x1 window, stride 2) and a block that
widens zero-pads the identity's channels ((out - in) / 2 on each side): no projection conv.
The stem is a plain linear 7x7/2 conv with a bias (no BN), there is no BN-ReLU after the last
block, and a 160-unit ReLU dense layer on the global average pool is the embedding.

Weight decay sits where the seed put it: on the residual blocks' conv kernels only (tflearn's
default regularizer for residual_block); the stem conv and the dense layers are unregularised,
except in the seed's "resnet34", whose stem conv also had L2 (seed_stem_l2=True).
"""
from __future__ import annotations

from keras import layers

from .blocks import ChannelZeroPad, tflearn_batch_norm, tflearn_conv_init, tflearn_dense_init, tflearn_residual_init

# The seed's stages: (blocks, channels, downsample), in the order it called residual_block.
SEED_STAGES = ((3, 64, False), (1, 128, True), (3, 128, False), (1, 256, True), (5, 256, False),
               (1, 512, True), (2, 512, False))


def preact_block(x, filters: int, strides: int, name: str, regularizer=None):
    """One tflearn residual block (full pre-activation, identity shortcut)."""
    identity = x
    for index, stride in ((1, strides), (2, 1)):
        x = tflearn_batch_norm(f"{name}_bn{index}")(x)
        x = layers.Activation("relu", name=f"{name}_relu{index}")(x)
        x = layers.Conv2D(filters, 3, stride, "same", kernel_initializer=tflearn_residual_init(),
                          kernel_regularizer=regularizer, name=f"{name}_conv{index}")(x)
    if strides > 1:
        identity = layers.AveragePooling2D(1, strides, "same", name=f"{name}_subsample")(identity)
    if identity.shape[-1] != filters:
        identity = ChannelZeroPad((filters - identity.shape[-1]) // 2, name=f"{name}_pad")(identity)
    return layers.Add(name=f"{name}_add")([x, identity])


def seed_resnet(x, embedding_size: int, regularizer=None, *, seed_stem_l2: bool = False):
    """x: normalised images -> the seed's res-cp trunk -> GAP -> Dense(embedding_size, ReLU) "embedding"."""
    x = layers.Conv2D(64, 7, 2, "same", kernel_initializer=tflearn_conv_init(),
                      kernel_regularizer=regularizer if seed_stem_l2 else None, name="stem_conv")(x)
    x = layers.MaxPooling2D(3, 2, "same", name="stem_pool")(x)
    for stage, (blocks, filters, downsample) in enumerate(SEED_STAGES, start=1):
        for index in range(blocks):
            x = preact_block(x, filters, 2 if downsample else 1, f"stage{stage}_block{index + 1}", regularizer)
    x = layers.GlobalAveragePooling2D(name="global_pool")(x)
    return layers.Dense(embedding_size, activation="relu", kernel_initializer=tflearn_dense_init(),
                        name="embedding")(x)
