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

Importing this package costs nothing: the names and sizes are plain data (models/names.py,
which --help lists), and Keras and a family's module load when a backbone is first built.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .names import BACKBONES, INPUT_NORMALIZATIONS, MODEL_NAMES, Backbone

if TYPE_CHECKING:
    import keras

__all__ = ["INPUT_NORMALIZATIONS", "MODEL_NAMES", "build_backbone", "default_embedding_size", "default_input_size"]


def _spec(name: str) -> Backbone:
    try:
        return BACKBONES[name]
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
    import keras
    from keras import layers

    from .blocks import l2_regularizer

    spec = _spec(name)
    if normalization not in INPUT_NORMALIZATIONS:
        raise ValueError(f"unknown input normalization {normalization!r}; choose from "
                         f"{', '.join(INPUT_NORMALIZATIONS)}")
    norm = INPUT_NORMALIZATIONS[normalization]
    images = keras.Input((input_size, input_size, 3), dtype="float32", name="image")
    normalized = layers.Rescaling(scale=norm.scale, offset=norm.offset, name="normalize")(images)
    build = getattr(importlib.import_module(f".{spec.module}", __name__), spec.builder)
    embedding = build(normalized, embedding_size or spec.embedding_size, l2_regularizer(weight_decay),
                      **{**dict(spec.options), **options})
    return keras.Model(images, embedding, name=name.replace("-", "_"))
