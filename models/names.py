"""The names the command lines offer, as plain data: no Keras, so a parser (and --help) lists
them without loading TensorFlow.

This is the one source of these names. The backbone table below is the backbone registry
itself (models/__init__.py imports a family's builder only when it builds one); the Keras
registries keyed by the other names (models/losses.py's LOSSES, models/heads.py's
CLASSIFIER_INITS) are checked against them when they are imported (checked_registry).
"""
from __future__ import annotations

from typing import NamedTuple


class Backbone(NamedTuple):
    module: str          # the family's module in models/
    builder: str         # its function: (normalised images, embedding_size, regularizer, **options) -> embedding
    embedding_size: int  # the default embedding size
    input_size: int      # the default input side in px
    options: tuple = ()  # (keyword, value) pairs the builder is called with


RESNET_DEPTHS = (18, 34, 50, 101, 152)
IRESNET_DEPTHS = (18, 34, 50, 100)

BACKBONES = {
    # The seed's tflearn ResNet-34 (pre-activation, zero-padded identities), whose 160-unit ReLU
    # hidden layer is the embedding; "seed-resnet34" is the seed's "resnet34": the same net with
    # L2 on the stem conv too.
    "res-cp": Backbone("seed_resnet", "seed_resnet", 160, 64),
    "seed-resnet34": Backbone("seed_resnet", "seed_resnet", 160, 64, (("seed_stem_l2", True),)),
    # Post-activation ResNets (He et al. 2016, torchvision's layout), not the seed's.
    **{f"resnet{depth}": Backbone("resnet", "resnet", 512, 64, (("depth", depth),)) for depth in RESNET_DEPTHS},
    # The same nets with a linear embedding, as margin losses expect (ArcFace, FaceNet).
    **{f"resnet{depth}-linear": Backbone("resnet", "resnet", 512, 64, (("depth", depth), ("embedding", "linear")))
       for depth in RESNET_DEPTHS},
    # The seed's VGG-16: fc6 and fc7 (4096, ReLU, dropout 0.5); fc7 is the embedding.
    "vgg16": Backbone("vgg", "vgg16", 4096, 64),
    "inception-resnet-v1": Backbone("inception_resnet", "inception_resnet_v1", 128, 160),
    **{f"iresnet{depth}": Backbone("iresnet", "iresnet", 512, 112, (("depth", depth),)) for depth in IRESNET_DEPTHS},
    "mobilefacenet": Backbone("mobilefacenet", "mobilefacenet", 128, 112),
}
MODEL_NAMES = tuple(BACKBONES)


class Normalization(NamedTuple):
    scale: float
    offset: float
    text: str  # as model.json states it


# How a backbone's first layer "normalize" maps raw 0..255 pixels.
INPUT_NORMALIZATIONS = {"centered": Normalization(1 / 128, -127.5 / 128, "(x - 127.5) / 128"),
                        "unit": Normalization(1 / 255, 0.0, "x / 255")}
NORMALIZATION_NAMES = tuple(INPUT_NORMALIZATIONS)

# The keys of models.losses.LOSSES and models.heads.CLASSIFIER_INITS, in their order.
LOSS_NAMES = ("softmax", "center", "arcface", "cosface", "triplet", "distill")
CLASSIFIER_INIT_NAMES = ("tflearn", "glorot_uniform")


def checked_registry(names: tuple, registry: dict, where: str) -> dict:
    """registry, once its keys are `names` in the same order (a Keras registry keyed by one of
    the lists above); a registry that drifted from its list fails at import, not in a parser."""
    if tuple(registry) != tuple(names):
        raise ImportError(f"{where} has {tuple(registry)}, but models/names.py lists {tuple(names)}: "
                          f"change both together")
    return registry
