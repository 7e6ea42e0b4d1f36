"""The run's deliverable: the embedding model as embedding.keras and a uint8-in SavedModel,
and loading a training checkpoint back."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import keras

from models import INPUT_NORMALIZATIONS
from utils.core.run_io import save_keras_atomically, temporary_name
from utils.preprocess.settings import normalised_settings
from utils.training.config import TrainConfig, TrainingError
from utils.verify.embeddings import ModelError, load_keras_model


def export_embedding_model(backbone, config: TrainConfig, preprocess: dict) -> dict:
    """embedding.keras (raw embeddings, float input) and, on TensorFlow, a SavedModel whose
    serving signature takes a uint8 batch of aligned crops and returns L2-normalised
    embeddings. Returns the description later stages read from model.json. Both are
    written under temporary names and renamed into place."""
    run = config.run_dir
    save_keras_atomically(backbone, run / "embedding.keras")
    files = {"keras": "embedding.keras"}
    size = config.input_size
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        archive = keras.export.ExportArchive()
        archive.track(backbone)

        def serve(images):
            embeddings = backbone(tf.cast(images, tf.float32), training=False)
            return tf.math.l2_normalize(tf.cast(embeddings, tf.float32), axis=-1)

        archive.add_endpoint("serve", serve, input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8)])
        tmp = temporary_name(run / "saved_model")
        try:
            archive.write_out(str(tmp), verbose=False)
            shutil.rmtree(run / "saved_model", ignore_errors=True)  # from an attempt killed before model.json
            os.replace(tmp, run / "saved_model")
        except BaseException as err:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(err, tf.errors.OpError):  # TensorFlow writes these files itself (a full disk...)
                raise OSError(f"cannot write the SavedModel: {err.message.split('; ')[-1]}") from None
            raise
        files["saved_model"] = "saved_model"
    settings = normalised_settings(preprocess["settings"])  # today's key names, also for older crop folders
    return {
        "net_type": config.net_type, "input_size": size, "embedding_size": int(backbone.output.shape[-1]),
        "loss": config.loss, "input": "RGB uint8 crops, resized from the aligned crop to input_size",
        "normalization": f"{INPUT_NORMALIZATIONS[config.normalization].text}, inside the model",
        "saved_model_output": "L2-normalised embeddings",
        "alignment": settings["align"], "preprocess_settings": settings,
        "files": files, "classes": config.run_dir.joinpath("classes.txt").name,
    }


def load_checkpoint(path: Path):
    """A training checkpoint (.keras) loaded with safe_mode; importing models.heads and the
    schedule first registers the custom head layers and the optimizer's learning-rate schedule
    its config names (a fresh process, e.g. a notebook, has imported neither)."""
    import models.heads  # noqa: F401  (registers the layers)
    import utils.training.schedule  # noqa: F401  (registers StepOrCosineSchedule)

    try:
        return load_keras_model(path)
    except ModelError as err:
        raise TrainingError(f"checkpoint unusable: {err}") from None
