"""Raw images aligned the way a model's training crops were: the settings come from its
model.json, the aligned copy is made by the preprocessing driver and cached under data/."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from utils.core.errors import IcyfaceError
from utils.core.run_io import read_json
from utils.preprocess.driver import run_preprocess
from utils.preprocess.manifest import MANIFEST_NAME, read_manifest
from utils.preprocess.settings import SETTINGS_NAME, PreprocessSettings, default_output_dir, normalised_settings
from utils.verify.embeddings import embed_files
from utils.verify.pair_files import read_pairs


class ValidationError(IcyfaceError):
    """Validation cannot run as asked; the message says why and what to do."""


def aligned_cache_dir(raw_dir: Path, settings: PreprocessSettings, data_root: Path = Path("data")) -> Path:
    """data/<raw name>-<align tag>-<hash>: one cache per raw folder and way of aligning."""
    key = {"raw_dir": str(Path(raw_dir).resolve()), "settings": settings.to_dict()}
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:8]
    base = default_output_dir(raw_dir, settings.align, data_root)
    return base.with_name(f"{base.name}-{digest}")


def align_like_training(raw_dir: Path, info: dict, aligned_dir: Path | None = None, workers: int = 1,
                        progress: bool = True, cache_root: Path = Path("data")) -> tuple[Path, dict]:
    """Aligned copy of raw_dir made with the model's preprocessing settings, and its manifest
    rows. A given aligned_dir must have been made with those same settings."""
    settings = PreprocessSettings.from_dict(info["preprocess_settings"])
    if aligned_dir is not None:
        path = Path(aligned_dir) / SETTINGS_NAME
        if not path.exists():
            raise ValidationError(f"{aligned_dir} has no {SETTINGS_NAME}; pass the raw images with --lfw-dir instead")
        theirs = read_json(path)["settings"]
        if normalised_settings(theirs) != settings.to_dict():
            raise ValidationError(
                f"{aligned_dir} was aligned differently from the model's training crops:\n"
                f"  aligned set: {theirs}\n  training:    {settings.to_dict()}\n"
                f"Pass the raw images with --lfw-dir and they will be aligned the training way.")
    else:
        aligned_dir = aligned_cache_dir(raw_dir, settings, cache_root)
        run_preprocess(raw_dir, aligned_dir, settings, workers=workers, progress=progress)
    return Path(aligned_dir), read_manifest(Path(aligned_dir) / MANIFEST_NAME)


def crops_for(images: list[str], raw_dir: Path, aligned_dir: Path, manifest: dict) -> list[str]:
    """The crop of every raw image, in order; all images without one are named in the error."""
    raw_dir = Path(raw_dir).resolve()
    crops, missing = [], []
    for image in images:
        try:
            rel = Path(image).resolve().relative_to(raw_dir).as_posix()
        except ValueError:
            raise ValidationError(f"pair image {image} is not inside {raw_dir}") from None
        row = manifest.get(rel)
        if row is None or row["status"] == "error":
            missing.append(f"{rel} ({row['error'] if row else 'not aligned'})")
        else:
            crops.append(str(Path(aligned_dir) / row["output"]))
    if missing:
        raise ValidationError(f"{len(missing)} pair images have no aligned crop: " + "; ".join(missing[:20])
                              + (" ..." if len(missing) > 20 else ""))
    return crops


def aligned_pair_crops(lfw_dir: Path, pairs_path: Path, info: dict, aligned_dir: Path | None = None,
                       workers: int = 1, progress: bool = True, cache_root: Path = Path("data")):
    """(pairs, crops): a pair list over raw images, and the aligned crop of every image in
    pairs.images, aligned the way info's model was trained (see align_like_training)."""
    pairs = read_pairs(Path(pairs_path), Path(lfw_dir))
    aligned_dir, manifest = align_like_training(Path(lfw_dir), info, aligned_dir, workers, progress, cache_root)
    return pairs, crops_for(pairs.images, Path(lfw_dir), aligned_dir, manifest)


def tree_embeddings(model, info: dict, tree: Path, flip: bool = True, aligned_dir: Path | None = None,
                    workers: int = 1, batch_size: int = 128, progress: bool = True,
                    cache_root: Path = Path("data"), memo: dict | None = None) -> tuple[list[str], np.ndarray]:
    """(raw paths relative to tree, in sorted order; their L2-normalised embeddings) of every image
    of a folder-per-identity tree in which the alignment of the run (model, its model.json) found
    a face, aligned (and cached) the way the run was trained."""
    aligned_dir, manifest = align_like_training(Path(tree), info, aligned_dir, workers, progress, cache_root)
    rows = sorted((rel, row) for rel, row in manifest.items() if row["status"] != "error")
    if not rows:
        raise ValidationError(f"no face was found in any image of {tree}")
    emb = embed_files(model, [str(Path(aligned_dir) / row["output"]) for _, row in rows], info["input_size"], flip,
                      batch_size, progress, memo)
    return [rel for rel, _ in rows], emb


def identity_of(relative_path: str) -> str:
    """The person of an image in a folder-per-identity tree: its first folder."""
    return relative_path.split("/", 1)[0]
