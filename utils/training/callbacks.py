"""Keras callbacks of a training run: crash-safe checkpoints and backups, one readable
line per epoch, and the count of crops that could not be read."""
from __future__ import annotations

import shutil
from pathlib import Path

import keras
import numpy as np

from utils.core.run_io import read_json, replaced_atomically, save_keras_atomically, write_json
from utils.core.stop_requests import StopRequested
from utils.preprocess.input_pipeline import SkipCount
from utils.training.config import TrainingError
from utils.training.keras_internals import ema_pairs


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
            # The same model state as last.keras: a copy of its file, not a second serialisation.
            with replaced_atomically(self.folder / "best.keras") as tmp:
                shutil.copyfile(self.folder / "last.keras", tmp)


class EMAWeights(keras.callbacks.Callback):
    """With --ema: the averaged weights sit in the model from each epoch's end to the next
    epoch's start, so the holdout, checkpoints, the LFW check and the backup all see them (put it
    before those); training itself steps the raw weights. A backup therefore holds the average
    in the model and the raw weights in the optimizer's slots, and a run resumed from it starts so
    (`resumed_at_epoch_end`); a mid-epoch backup holds the raw weights in the model.

    epochs: the run's epoch count. At the end of fit() Keras copies the optimizer's average
    slots into the model, so at the run's last epoch those slots get the average back (they hold
    the raw weights after the swap); a run resumed mid-epoch finishes that epoch in a fit call of
    its own, which is not the last.

    What keras.callbacks.SwapEMAWeights(swap_on_epoch=True) did for the holdout and at epoch
    ends, on public APIs, with its arithmetic: weights and averages trade places in place by
    additions, so a run's numbers are those of the runs before it."""

    def __init__(self, resumed_at_epoch_end: bool, epochs: int | None = None):
        super().__init__()
        self.average_in_model = resumed_at_epoch_end  # the state the backup was taken in
        self.epochs = epochs

    def on_epoch_begin(self, epoch, logs=None):
        self.hold_average(False)

    def on_test_begin(self, logs=None):  # the holdout pass, before on_epoch_end
        self.hold_average(True)

    def on_test_end(self, logs=None):
        self.hold_average(False)

    def on_epoch_end(self, epoch, logs=None):
        if self.hold_average(True) and epoch == (self.epochs or self.params["epochs"]) - 1:
            for variable, average in ema_pairs(self.model):  # the average slots get the average back
                _update(self.model, average, lambda a, b: a.assign(b), variable)

    def hold_average(self, average: bool) -> bool:
        """Puts the average (or the raw weights) in the model; whether they had to move."""
        if self.average_in_model == average:
            return False
        for variable, slot in ema_pairs(self.model):
            if keras.backend.backend() == "tensorflow":  # a, b = b, a by additions, as Keras does
                _update(self.model, variable, lambda a, b: a.assign_add(b), slot)
                _update(self.model, variable, lambda a, b: b.assign(a - b), slot)
                _update(self.model, variable, lambda a, b: a.assign(a - b), slot)
            else:
                raw = keras.ops.convert_to_numpy(variable)
                variable.assign(slot)
                slot.assign(raw)
        self.average_in_model = average
        return True


def _first_line(err: Exception) -> str:
    """An error's first line, or its type's name when it has no message."""
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def _update(model, variable, assign, other):
    """assign(variable, other) on each replica's copy (under tf.distribute, on each device)."""
    if keras.backend.backend() != "tensorflow":
        assign(variable, other)
        return
    model.distribute_strategy.extended.update(variable.value, assign, args=(other.value,))


class AtomicBackupAndRestore(keras.callbacks.Callback):
    """Backs up the training state (the model's weights and the optimizer's variables: its step
    count, momentum and --ema's averages) and restores it when training begins; crash-safe,
    mid-epoch, and the place a stop request is honoured.

    On disk, backup_dir holds one weights file (model.save_weights: the model's weights and the
    optimizer's variables) and training_metadata.json, {"epoch": E, "step": s, "weights": name}:
    s training steps of epoch E done (s = 0 at an epoch's end; backups older than mid-epoch ones
    have no "step"). A fit that resumes from it must start at epoch E (fit_from_backup does).
    A mid-epoch backup also holds the epoch's running metrics ("metrics": a .npz of
    model.metrics_variables, the loss's and accuracies' totals and counts so far), added to the
    resumed epoch's own after its first step (Keras builds the compiled metrics in that step), so
    the epoch's row in history.csv averages all its steps, as an unbroken run's does.

    Crash-safe: each backup's weights go to their own file (renamed into place once complete),
    then training_metadata.json is replaced atomically to name that file and its position: the
    metadata only ever points at complete weights of the same position. Older weight files are
    removed after the switch. An unreadable backup is a TrainingError that says what to do.

    Mid-epoch: every `every_steps` steps (0 = epoch ends only), and at the step where a
    SIGTERM/SIGINT (`stop`) is honoured, which then raises StopRequested. A stop that arrives
    in an epoch's last step or during its holdout/LFW pass is honoured after the epoch's backup.
    Steps are counted by the optimizer's iterations, so they stay right when a resumed fit
    runs the rest of an epoch as an epoch of its own."""

    METADATA = "training_metadata.json"

    def __init__(self, backup_dir, steps_per_epoch: int, every_steps: int = 0, stop=None):
        super().__init__()
        self.backup_dir, self.metadata = Path(backup_dir), Path(backup_dir) / self.METADATA
        self.steps_per_epoch, self.every_steps, self.stop = steps_per_epoch, every_steps, stop
        self.epoch = 0
        self.restored_epoch_to_begin = None  # the epoch a fit resuming from the backup must begin at
        self.restored_metrics = None  # a mid-epoch backup's running metrics, for that epoch's rest

    def restored_position(self) -> tuple[int, int]:
        """(epoch, step) the backup resumes at ((0, 0) when there is none); reads only the metadata."""
        try:
            if not self.metadata.exists():
                return 0, 0
            meta = read_json(self.metadata)
            return int(meta["epoch"]), int(meta.get("step", 0))  # backups before mid-epoch ones had no step
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise self.unreadable(self.metadata, err) from None

    def restored_epoch(self) -> int:
        return self.restored_position()[0]

    def unreadable(self, path, err) -> TrainingError:
        return TrainingError(f"the training backup {path} is unreadable ({err}); delete {self.backup_dir} to "
                             f"restart this run from epoch 1 (checkpoints/ and history.csv are kept)")

    def on_train_begin(self, logs=None):
        if not self.metadata.exists():
            return  # a fresh run, or killed before its first backup
        try:
            meta = read_json(self.metadata)
            weights = self.backup_dir / meta["weights"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise self.unreadable(self.metadata, err) from None
        if not weights.is_file():
            raise self.unreadable(weights, "file missing")
        try:
            optimizer = self.model.optimizer
            if optimizer is not None and not optimizer.built:
                optimizer.build(self.model.trainable_variables)  # its variables exist before they load
            self.model.load_weights(str(weights))
            self.restored_epoch_to_begin = int(meta["epoch"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise self.unreadable(weights, _first_line(err)) from None
        if meta.get("metrics"):  # backups before running metrics were kept have none
            metrics = self.backup_dir / meta["metrics"]
            try:
                with np.load(metrics) as saved:
                    self.restored_metrics = [saved[f"arr_{i}"] for i in range(len(saved.files))]
            except (OSError, ValueError, KeyError) as err:
                raise self.unreadable(metrics, _first_line(err)) from None

    def on_epoch_begin(self, epoch, logs=None):
        if self.restored_epoch_to_begin not in (None, epoch):
            raise TrainingError(f"fit() began at epoch {epoch + 1} but the backup in {self.backup_dir} resumes at "
                                f"epoch {self.restored_epoch_to_begin + 1}: pass initial_epoch (fit_from_backup "
                                f"does)")
        self.restored_epoch_to_begin = None
        self.epoch = epoch

    def add_restored_metrics(self):
        """The backed-up running totals added to this epoch's first step's: means (totals and
        counts) add up, and x + T is the T + x an unbroken run computes."""
        variables = self.model.metrics_variables
        if len(variables) != len(self.restored_metrics):
            raise TrainingError(f"the training backup in {self.backup_dir} holds {len(self.restored_metrics)} "
                                f"running metric values, the model has {len(variables)}: was the command changed? "
                                f"delete {self.backup_dir} to restart this run from epoch 1")
        for variable, value in zip(variables, self.restored_metrics):
            variable.assign_add(value)
        self.restored_metrics = None

    def on_train_batch_end(self, batch, logs=None):
        if self.restored_metrics is not None:
            self.add_restored_metrics()
        step = int(self.model.optimizer.iterations.numpy()) - self.epoch * self.steps_per_epoch
        if step >= self.steps_per_epoch:
            return  # the epoch's end backs it up, after its holdout and LFW check
        if self.stop is not None and self.stop.requested:
            self.save(self.epoch, step)
            raise StopRequested(f"stopped by {self.stop.signal_name} at epoch {self.epoch + 1}, step {step} of "
                                f"{self.steps_per_epoch}, backed up in {self.backup_dir}")
        if self.every_steps and step % self.every_steps == 0:
            self.save(self.epoch, step)

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(loss):
            return  # keep the last good backup: TerminateOnNaN is about to stop training
        self.save(epoch + 1, 0)
        if self.stop is not None and self.stop.requested:
            raise StopRequested(f"stopped by {self.stop.signal_name} at the end of epoch {epoch + 1}, backed up "
                                f"in {self.backup_dir}")

    def save(self, epoch: int, step: int):
        self.backup_dir.mkdir(parents=True, exist_ok=True)
        stem = f"epoch-{epoch:04d}-step-{step}"
        meta = {"epoch": epoch, "step": step, "weights": f"{stem}.weights.h5"}
        with replaced_atomically(self.backup_dir / meta["weights"]) as tmp:
            self.model.save_weights(str(tmp), overwrite=True)
        if step:
            meta["metrics"] = f"{stem}.metrics.npz"
            with replaced_atomically(self.backup_dir / meta["metrics"]) as tmp, open(tmp, "xb") as f:
                np.savez(f, *(keras.ops.convert_to_numpy(v) for v in self.model.metrics_variables))
        write_json(self.metadata, meta)
        for old in [*self.backup_dir.glob("*.weights.h5"), *self.backup_dir.glob("*.metrics.npz")]:
            if old.name not in meta.values():
                old.unlink()


class StopAfterEpoch(keras.callbacks.Callback):
    """Ends fit() after `epoch`: a resumed run finishes a backed-up epoch's remaining steps as a
    fit of its own (fit_from_backup)."""

    def __init__(self, epoch: int):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            self.model.stop_training = True


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
