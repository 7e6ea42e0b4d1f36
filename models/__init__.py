"""Backbones registered by name: build_backbone("res-cp", 64) -> keras.Model.

Pure Keras 3 (keras.layers / keras.ops only), so every model runs on any Keras backend.

Every backbone takes a float32 batch [N, size, size, 3] of raw RGB values in 0..255 and
normalises it itself (first layer "normalize": (x - 127.5) / 128, or x / 255 as the seed's
tflearn image_preloader did), so callers always feed raw pixels. Its output is the face
embedding [N, embedding_size], made by the layer "embedding";
classification heads (softmax over identities, margins) are added elsewhere.

Default input sizes follow what each family was designed and trained at:
  res-cp, resnet*, vgg16   64 px  (the seed trained at 64 px; all downsample by 32; vgg16 flattens, as the seed's did)
  inception-resnet-v1     160 px  (FaceNet's random 160 px crop of the 182 px aligned face)
  iresnet*, mobilefacenet 112 px  (ArcFace-template crops; the heads expect a 7x7 final map)
Every model also builds at other sizes, from 32 px up (the flattening heads of iresnet* then change size).
"""
from __future__ import annotations

from functools import partial
from typing import Callable, NamedTuple

import keras
from keras import layers

from .inception_resnet import inception_resnet_v1
from .iresnet import iresnet
from .blocks import l2_regularizer
from .mobilefacenet import mobilefacenet
from .resnet import resnet
from .seed_resnet import seed_resnet
from .vgg import vgg16


class _Spec(NamedTuple):
    build: Callable  # (normalised images, embedding_size, regularizer, **options) -> embedding tensor
    embedding_size: int
    input_size: int


_REGISTRY = {
    # The seed's tflearn ResNet-34 (pre-activation, zero-padded identities), whose 160-unit ReLU
    # hidden layer is the embedding; "seed-resnet34" is the seed's "resnet34": the same net with
    # L2 on the stem conv too.
    "res-cp": _Spec(seed_resnet, 160, 64),
    "seed-resnet34": _Spec(partial(seed_resnet, seed_stem_l2=True), 160, 64),
    # Post-activation ResNets (He et al. 2016, torchvision's layout), not the seed's.
    **{f"resnet{depth}": _Spec(partial(resnet, depth=depth), 512, 64) for depth in (18, 34, 50, 101, 152)},
    # The same nets with a linear embedding, as margin losses expect (ArcFace, FaceNet).
    **{f"resnet{depth}-linear": _Spec(partial(resnet, depth=depth, embedding="linear"), 512, 64)
       for depth in (18, 34, 50, 101, 152)},
    # The seed's VGG-16: fc6 and fc7 (4096, ReLU, dropout 0.5); fc7 is the embedding.
    "vgg16": _Spec(vgg16, 4096, 64),
    "inception-resnet-v1": _Spec(inception_resnet_v1, 128, 160),
    **{f"iresnet{depth}": _Spec(partial(iresnet, depth=depth), 512, 112) for depth in (18, 34, 50, 100)},
    "mobilefacenet": _Spec(mobilefacenet, 128, 112),
}
MODEL_NAMES = tuple(_REGISTRY)


class _Normalization(NamedTuple):
    scale: float
    offset: float
    text: str  # as model.json states it


# How the first layer "normalize" maps raw 0..255 pixels.
INPUT_NORMALIZATIONS = {"centered": _Normalization(1 / 128, -127.5 / 128, "(x - 127.5) / 128"),
                        "unit": _Normalization(1 / 255, 0.0, "x / 255")}


def _spec(name: str) -> _Spec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(MODEL_NAMES)}") from None


def default_embedding_size(name: str) -> int:
    return _spec(name).embedding_size


def default_input_size(name: str) -> int:
    return _spec(name).input_size


def build_backbone(name: str, input_size: int, embedding_size: int | None = None, weight_decay: float = 0.0,
                   normalization: str = "centered", **options) -> keras.Model:
    """The backbone `name` for square RGB inputs of input_size px: raw 0..255 pixels in, embedding out.

    weight_decay > 0 puts an L2 penalty (weight_decay * sum(w^2)) on every conv and dense kernel,
    except in the seed's res-cp / seed-resnet34, which put it where tflearn did (module
    seed_resnet). normalization: "centered" or "unit" (INPUT_NORMALIZATIONS). options go to the
    family builder (e.g. dropout_rate for inception-resnet-v1 and iresnet*).
    """
    spec = _spec(name)
    if normalization not in INPUT_NORMALIZATIONS:
        raise ValueError(f"unknown input normalization {normalization!r}; choose from "
                         f"{', '.join(INPUT_NORMALIZATIONS)}")
    norm = INPUT_NORMALIZATIONS[normalization]
    images = keras.Input((input_size, input_size, 3), dtype="float32", name="image")
    normalized = layers.Rescaling(scale=norm.scale, offset=norm.offset, name="normalize")(images)
    embedding = spec.build(normalized, embedding_size or spec.embedding_size, l2_regularizer(weight_decay), **options)
    return keras.Model(images, embedding, name=name.replace("-", "_"))
