"""Running an exported embedding model over aligned crops.

Crops go through the same decode-and-resize as training (utils.preprocess.input_pipeline), so a
model sees at validation exactly what it saw while learning.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from utils.core.errors import IcyfaceError
from utils.core.run_io import read_json

MODEL_INFO = "model.json"


class ModelError(IcyfaceError):
    """The run directory holds no usable exported model."""


def _listing(folder: Path, limit: int = 12) -> str:
    """A folder's sub-folders (what the user may have meant), in one line."""
    try:
        names = sorted(entry.name for entry in folder.iterdir() if entry.is_dir() and not entry.name.startswith("."))
    except OSError:
        return "cannot be listed"
    if not names:
        return "holds no folders"
    shown = ", ".join(names[:limit])
    return "holds: " + shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def check_run_dir(run_dir: Path) -> Path:
    """run_dir, or a ModelError naming it as missing (with what its parent runs folder holds) or
    as a file. Cheap, nothing loaded: each CLI calls it on --model before any model loads or any
    image is aligned."""
    run_dir = Path(run_dir)
    if run_dir.is_dir():
        return run_dir
    if run_dir.exists():
        raise ModelError(f"run folder {run_dir} is a file: pass the run directory train_classifier.py wrote "
                         f"(the folder holding model.json)")
    parent = run_dir.parent
    if not parent.is_dir():
        raise ModelError(f"run folder {run_dir} does not exist (nor does {parent}/)")
    raise ModelError(f"run folder {run_dir} does not exist; {parent}/ {_listing(parent)}")


def load_model_info(run_dir: Path) -> dict:
    check_run_dir(run_dir)
    path = Path(run_dir) / MODEL_INFO
    if not path.exists():
        raise ModelError(f"{run_dir} has no {MODEL_INFO}: train it to the end with train_classifier.py first")
    return read_json(path)


def load_keras_model(path: Path):
    """A .keras file loaded with safe_mode (no code stored in the file runs), or a ModelError
    that says why not. Keras reports a truncated archive as "file not found"; say what it is."""
    import zipfile

    import keras

    import models.blocks  # noqa: F401  (registers the project's own layers, e.g. res-cp's ChannelZeroPad)

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file {path} not found")
    if not zipfile.is_zipfile(path):
        raise ModelError(f"{path} is not a complete .keras archive ({path.stat().st_size} bytes): cut short by a "
                         f"crash or a full disk, or not a model file")
    try:
        return keras.models.load_model(path, safe_mode=True)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
        raise ModelError(f"cannot load {path}: {err}") from None


def load_embedding_model(run_dir: Path):
    """(keras model, model.json) of a finished run."""
    info = load_model_info(run_dir)
    return load_keras_model(Path(run_dir) / info["files"]["keras"]), info


def l2_normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def embed_arrays(model, images: np.ndarray, flip: bool = True) -> np.ndarray:
    """L2-normalised embeddings of a float batch of raw RGB crops at the model's input size.
    flip: add the embedding of the mirrored crop before normalising (test-time fusion); the
    crops and their mirrors go through the model as one batch. A Keras model runs its compiled
    predict step (3x faster than an eager call here); anything else (an exported file's
    runtime) is called."""
    images = np.asarray(images)
    batch = np.concatenate([images, images[:, :, ::-1, :]]) if flip else images
    run = getattr(model, "predict_on_batch", model)
    emb = np.asarray(run(batch), dtype=np.float64)
    if flip:
        emb = emb[:len(images)] + emb[len(images):]
    return l2_normalize(emb)


def embed_files(model, paths: list[str], input_size: int, flip: bool = True, batch_size: int = 128,
                progress: bool = True, memo: dict | None = None) -> np.ndarray:
    """Embeddings of crop files, in order, through the training pipeline's decoder.
    memo: {crop path: embedding} that this same model, input size and flip already made; only the
    other paths are embedded, and added to it (so validate_on_lfw.py --identification embeds LFW once)."""
    if memo is not None:
        todo = [path for path in dict.fromkeys(paths) if path not in memo]
        if todo:
            memo.update(zip(todo, embed_files(model, todo, input_size, flip, batch_size, progress)))
        return np.array([memo[path] for path in paths]) if paths else np.zeros((0, 0))
    from tqdm import tqdm

    from utils.preprocess.input_pipeline import make_dataset

    ds = make_dataset(paths, np.zeros(len(paths), np.int32), input_size, batch_size, training=False)
    out = []
    with tqdm(total=len(paths), unit="img", desc="embedding", disable=not progress) as bar:
        for images, _ in ds:
            images, count = np.asarray(images), len(images)
            if out and count < batch_size:  # the last batch, padded: one compiled shape for the whole pass
                images = np.concatenate([images, np.zeros((batch_size - count, *images.shape[1:]), images.dtype)])
            out.append(embed_arrays(model, images, flip)[:count])
            bar.update(count)
    return np.concatenate(out) if out else np.zeros((0, 0))
