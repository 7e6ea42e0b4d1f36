"""LFW verification while training: the in-training model scored on LFW every few epochs."""
from __future__ import annotations

import time
from pathlib import Path

import keras

from utils.embeddings import embed_files
from utils.pair_files import pair_rows
from utils.pair_metrics import evaluate_pairs, score_pairs
from utils.run_io import save_keras_atomically
from utils.validation import aligned_pair_crops


class LFWMonitor(keras.callbacks.Callback):
    """Verifies the in-training embedding model on LFW every `every` epochs.

    Adds `lfw_accuracy` to the epoch logs (NaN on epochs it skips, so CSV columns stay
    fixed), hence to history.csv and TensorBoard, and saves the embedding model with the
    best LFW accuracy to checkpoint_path. LFW is aligned once, up front, like the crops.
    """

    def __init__(self, backbone, input_size: int, preprocess_settings: dict, lfw_dir: Path, pairs_path: Path,
                 every: int, checkpoint_path: Path, workers: int = 1, cache_root: Path = Path("data")):
        super().__init__()
        self.pairs, self.crops = aligned_pair_crops(Path(lfw_dir), Path(pairs_path),
                                                    {"preprocess_settings": preprocess_settings}, workers=workers,
                                                    progress=False, cache_root=cache_root)
        self.rows_a, self.rows_b = pair_rows(self.pairs)
        self.backbone, self.input_size, self.every, self.checkpoint_path = backbone, input_size, every, checkpoint_path
        self.best = -1.0

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        logs["lfw_accuracy"] = float("nan")
        logs["lfw_seconds"] = 0.0  # so training time can be told apart from verification time
        if (epoch + 1) % self.every:
            return
        started = time.time()
        emb = embed_files(self.backbone, self.crops, self.input_size, flip=True, progress=False)
        try:
            accuracy = evaluate_pairs(score_pairs(emb[self.rows_a], emb[self.rows_b], "cosine"), self.pairs.same,
                                      self.pairs.fold)["accuracy_mean"]
        except ValueError as err:  # e.g. non-finite scores from a diverging model: report, keep training
            print(f"epoch {epoch + 1} | LFW verification failed: {err}", flush=True)
            return
        logs["lfw_accuracy"] = accuracy
        logs["lfw_seconds"] = round(time.time() - started, 1)
        print(f"epoch {epoch + 1} | LFW accuracy {accuracy:.4f}", flush=True)
        if accuracy > self.best:
            self.best = accuracy
            save_keras_atomically(self.backbone, self.checkpoint_path)
