"""Verification while training: the in-training model scored on LFW (and any other pair sets)
every few epochs, as insightface's CallBackVerification does."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, NamedTuple

import keras
import numpy as np

from utils.core.run_io import save_keras_atomically
from utils.verify.aligned_cache import aligned_pair_crops
from utils.verify.embeddings import embed_files
from utils.verify.pair_files import pair_rows
from utils.verify.pair_metrics import evaluate_pairs, score_pairs
from utils.verify.validation import embed_bin_pairs


class VerificationTarget(NamedTuple):
    name: str  # logged as <name>_accuracy
    embed: Callable  # (backbone, input_size) -> (emb_a, emb_b, same, fold)


def verification_targets(named_files, lfw_dir: Path | None, preprocess_settings: dict, workers: int = 1,
                         cache_root: Path = Path("data")) -> list[VerificationTarget]:
    """One target per (name, pairs file): an insightface .bin is embedded as it is; any other pair
    list (LFW's pairs.txt, CSV) is over the raw images of lfw_dir, aligned once, up front, like the crops."""
    targets = []
    for name, pairs_path in named_files:
        pairs_path = Path(pairs_path)
        if pairs_path.suffix == ".bin":
            def embed(backbone, size, path=pairs_path):
                return embed_bin_pairs(backbone, size, path, flip=True)
        else:
            if lfw_dir is None:
                raise ValueError(f"{pairs_path} lists raw images: give the folder they are in with --lfw-dir")
            pairs, crops = aligned_pair_crops(Path(lfw_dir), pairs_path, {"preprocess_settings": preprocess_settings},
                                              workers=workers, progress=False, cache_root=cache_root)
            rows_a, rows_b = pair_rows(pairs)

            def embed(backbone, size, pairs=pairs, crops=crops, rows_a=rows_a, rows_b=rows_b):
                emb = embed_files(backbone, crops, size, flip=True, progress=False)
                return emb[rows_a], emb[rows_b], pairs.same, pairs.fold
        targets.append(VerificationTarget(name, embed))
    return targets


class LFWMonitor(keras.callbacks.Callback):
    """Verifies the in-training embedding model on each target every `every` epochs.

    Adds `<name>_accuracy` per target to the epoch logs (NaN on epochs it skips, so CSV columns
    stay fixed), hence to history.csv and TensorBoard, and `lfw_seconds`, the time all targets
    took; saves the embedding model with the best accuracy on the first target to checkpoint_path.
    """

    def __init__(self, backbone, input_size: int, targets: list[VerificationTarget], every: int,
                 checkpoint_path: Path):
        super().__init__()
        self.backbone, self.input_size, self.targets = backbone, input_size, targets
        self.every, self.checkpoint_path = every, checkpoint_path
        self.best = -1.0

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        for target in self.targets:
            logs[f"{target.name}_accuracy"] = float("nan")
        logs["lfw_seconds"] = 0.0  # so training time can be told apart from verification time
        if (epoch + 1) % self.every:
            return
        started = time.time()
        for i, target in enumerate(self.targets):
            emb_a, emb_b, same, fold = target.embed(self.backbone, self.input_size)
            try:
                accuracy = evaluate_pairs(score_pairs(emb_a, emb_b, "cosine"), np.asarray(same),
                                          np.asarray(fold))["accuracy_mean"]
            except ValueError as err:  # e.g. non-finite scores from a diverging model: report, keep training
                print(f"epoch {epoch + 1} | {target.name} verification failed: {err}", flush=True)
                continue
            logs[f"{target.name}_accuracy"] = accuracy
            print(f"epoch {epoch + 1} | {target.name} accuracy {accuracy:.4f}", flush=True)
            if i == 0 and accuracy > self.best:
                self.best = accuracy
                save_keras_atomically(self.backbone, self.checkpoint_path)
        logs["lfw_seconds"] = round(time.time() - started, 1)
