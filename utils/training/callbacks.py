"""Keras callbacks of a training run: crash-safe checkpoints and backups, one readable
line per epoch, and the count of crops that could not be read."""
from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from utils.preprocess.input_pipeline import SkipCount
from utils.core.run_io import read_json, replaced_atomically, save_keras_atomically, write_json
from utils.core.stop_requests import StopRequested
from utils.training.config import TrainingError


class Checkpoints(keras.callbacks.Callback):
    """checkpoints/last.keras every epoch and best.keras when `monitor` improves, each
    replaced atomically. On resume, `best` comes from history.csv, so a resumed run does
    not overwrite best.keras with a worse epoch."""

    def __init__(self, folder: Path, monitor: str, best: float | None = None):
        super().__init__()
        self.folder, self.monitor, self.best = Path(folder), monitor, best
        self.lower_is_better = monitor.endswith("loss")

    def on_epoch_end(self, epoch, logs=None):
        save_keras_atomically(self.model, self.folder / "last.keras")
        value = (logs or {}).get(self.monitor)
        if value is None or not np.isfinite(value):
            return
        if self.best is None or (value < self.best if self.lower_is_better else value > self.best):
            self.best = float(value)
            save_keras_atomically(self.model, self.folder / "best.keras")


class EMAWeights(keras.callbacks.SwapEMAWeights):
    """With --ema: the averaged weights sit in the model from each epoch's end to the next
    epoch's start, so the holdout, checkpoints, the LFW check and the backup all see them (put it
    before those); training itself steps the raw weights. A backup therefore holds the average
    in the model and the raw weights in the optimizer's slots, and a run resumed from it starts so
    (`resumed_at_epoch_end`); a mid-epoch backup holds the raw weights in the model.

    epochs: the run's epoch count. Keras makes the average final at the last epoch of a fit
    call, but a run resumed mid-epoch finishes that epoch in a fit call of its own."""

    def __init__(self, resumed_at_epoch_end: bool, epochs: int | None = None):
        super().__init__(swap_on_epoch=True)
        self._ema_weights_in_model = resumed_at_epoch_end  # the state the backup was taken in
        self.epochs = epochs

    def on_epoch_end(self, epoch, logs=None):
        if not self._ema_weights_in_model:
            self._swap_variables()
            self._ema_weights_in_model = True
            if epoch == (self.epochs or self.params["epochs"]) - 1:
                self._finalize_ema_values()


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """Keras' BackupAndRestore, crash-safe, mid-epoch, and the place a stop request is honoured.

    Crash-safe: Keras rewrites latest.weights.h5 and training_metadata.json in place, so a
    kill or a full disk mid-write leaves a partial backup, or metadata that names an epoch the
    weights do not hold. Here each backup's weights go to their own file (renamed into place
    once complete), then training_metadata.json is replaced atomically to name that file and
    its position {"epoch": E, "step": s} (s training steps of epoch E done; s = 0 at an epoch's
    end): the metadata only ever points at complete weights of the same position. Older weight
    files are removed after the switch. An unreadable backup is a TrainingError that says what
    to do.

    Mid-epoch: every `every_steps` steps (0 = epoch ends only), and at the step where a
    SIGTERM/SIGINT (`stop`) is honoured, which then raises StopRequested. A stop that arrives
    in an epoch's last step or during its holdout/LFW pass is honoured after the epoch's backup.
    Steps are counted by the optimizer's iterations, so they stay right when a resumed fit
    runs the rest of an epoch as an epoch of its own."""

    def __init__(self, backup_dir, steps_per_epoch: int, every_steps: int = 0, stop=None):
        super().__init__(str(backup_dir), delete_checkpoint=False)  # removed once the export is written
        self.steps_per_epoch, self.every_steps, self.stop = steps_per_epoch, every_steps, stop
        self._epoch = 0
        self._position = (0, 0)

    def restored_position(self) -> tuple[int, int]:
        """(epoch, step) the backup resumes at ((0, 0) when there is none); reads only the metadata."""
        path = Path(self._training_metadata_path)
        try:
            if not path.exists():
                return 0, 0
            meta = read_json(path)
            return int(meta["epoch"]), int(meta.get("step", 0))  # backups before mid-epoch ones had no step
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise self._unreadable(path, err) from None

    def restored_epoch(self) -> int:
        return self.restored_position()[0]

    def _unreadable(self, path, err) -> TrainingError:
        return TrainingError(f"the training backup {path} is unreadable ({err}); delete {self.backup_dir} to "
                             f"restart this run from epoch 1 (checkpoints/ and history.csv are kept)")

    def _load_model(self):
        meta_path = Path(self._training_metadata_path)
        if not meta_path.exists():
            return  # a fresh run, or killed before its first backup
        try:
            weights = Path(self.backup_dir) / read_json(meta_path)["weights"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise self._unreadable(meta_path, err) from None
        if not weights.is_file():
            raise self._unreadable(weights, "file missing")
        self._weights_path = str(weights)
        try:
            super()._load_model()
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise self._unreadable(weights, str(err).splitlines()[0] if str(err) else type(err).__name__) from None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy()) - self._epoch * self.steps_per_epoch
        if step >= self.steps_per_epoch:
            return  # the epoch's end backs it up, after its holdout and LFW check
        if self.stop is not None and self.stop.requested:
            self._save_at(self._epoch, step)
            raise StopRequested(f"stopped by {self.stop.signal_name} at epoch {self._epoch + 1}, step {step} of "
                                f"{self.steps_per_epoch}, backed up in {self.backup_dir}")
        if self.every_steps and step % self.every_steps == 0:
            self._save_at(self._epoch, step)

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(loss):
            return  # keep the last good backup: TerminateOnNaN is about to stop training
        self._save_at(epoch + 1, 0)
        if self.stop is not None and self.stop.requested:
            raise StopRequested(f"stopped by {self.stop.signal_name} at the end of epoch {epoch + 1}, backed up "
                                f"in {self.backup_dir}")

    def _save_at(self, epoch: int, step: int):
        self._position = (epoch, step)
        self._save_model()

    def _save_model(self):
        backup = Path(self.backup_dir)
        backup.mkdir(parents=True, exist_ok=True)
        epoch, step = self._position
        name = f"epoch-{epoch:04d}-step-{step}.weights.h5"
        with replaced_atomically(backup / name) as tmp:
            self.model.save_weights(str(tmp), overwrite=True)
        write_json(Path(self._training_metadata_path), {"epoch": epoch, "step": step, "weights": name})
        for old in backup.glob("*.weights.h5"):
            if old.name != name:
                old.unlink()


def _metric(logs: dict, name: str, holdout: bool):
    """A metric from Keras' logs whatever output prefix Keras gave it (top1, scores_top1...)."""
    for key, value in logs.items():
        if key.startswith("val_") == holdout and (key.removeprefix("val_") == name or key.endswith("_" + name)):
            return value
    return None


class EpochReport(keras.callbacks.Callback):
    """One readable line per epoch: loss, training accuracy, holdout top-1 / top-5."""

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        parts = [f"epoch {epoch + 1}", f"loss {logs.get('loss', float('nan')):.4f}"]
        for label, name, holdout in (("train acc", "top1", False), ("holdout top-1", "top1", True),
                                     ("holdout top-5", "top5", True)):
            value = _metric(logs, name, holdout)
            if value is not None:
                parts.append(f"{label} {value:.3f}")
        print(" | ".join(parts), flush=True)


class SkippedCrops(keras.callbacks.Callback):
    """Adds `skipped_crops` to the epoch logs (so history.csv and TensorBoard have it):
    crops that could not be read or decoded in the last full pass over the training files
    plus this epoch's holdout pass. The pipeline drops them instead of failing; this says
    so, and stops the run when too few are left to train (or hold out) at all."""

    def __init__(self, training: SkipCount, holdout: SkipCount | None, batch_size: int, data_dir: str):
        super().__init__()
        self.training, self.holdout, self.batch_size, self.data_dir = training, holdout, batch_size, data_dir

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        train = self.training.last_pass() or 0
        held = (self.holdout.last_pass() or 0) if self.holdout else 0
        logs["skipped_crops"] = train + held
        if not train + held:
            return
        print(f"epoch {epoch + 1} | skipped {train + held} unreadable crops ({train} training, {held} holdout): "
              f"truncated or not images; remake them with preprocess_data.py", flush=True)
        if self.training.total - train < self.batch_size or (self.holdout and held == self.holdout.total):
            raise TrainingError(f"too few crops in {self.data_dir} can be read: {train} of {self.training.total} "
                                f"training and {held} of {self.holdout.total if self.holdout else 0} holdout crops "
                                f"are truncated or not images; remake them with preprocess_data.py")
