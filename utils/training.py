"""The training stage: crops -> run directory (config, checkpoints, logs, exported model).

Everything TensorFlow-specific (tf.data, tf.distribute, SavedModel export) lives here and
in utils/input_pipeline.py; the models themselves are backend-agnostic Keras 3.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import keras
import numpy as np
from keras import ops

from models.blocks import tflearn_dense_init
from utils.face_alignment import AlignSettings
from utils.input_pipeline import (AugmentSettings, InputError, SkipCount, list_crops, make_dataset,
                                  random_split, stratified_split)
from utils.preprocessing import SETTINGS_NAME, PreprocessError, default_output_dir, shard_settings_files
from utils.run_io import (TMP_PREFIX, atomic_write_bytes, git_revision, package_versions, read_json,
                          remove_stale_temporaries, replaced_atomically, save_keras_atomically, temporary_name,
                          write_json)

LOSSES = ("softmax", "center", "arcface", "cosface", "triplet")
SCHEDULES = ("step", "cosine")
TRAINING_PACKAGES = ("tensorflow", "keras", "numpy")
RAW_CASIA = Path("data/CASIA-WebFace")

# Seed: the 2017 tflearn recipe (its train_classifier.py res-cp), setting by setting: batch 32,
# Momentum(0.01, 0.9) x0.1 every 10 epochs, tflearn's L2 1e-4 * sum(w^2) / 2 (= 5e-5 here) on the
# residual convs only, pixels / 255, no augmentation, sklearn's random 10 % holdout, 20 epochs
# (its README: "approximately 20 epochs to train"; two learning rates of 10 epochs each).
# arcface: the modern margin-loss recipe on 112 px similarity-aligned crops.
# Any flag given on the command line overrides these.
PRESETS = {
    "seed": dict(net_type="res-cp", image_size=64, hidden_size=None, loss="softmax", lr=0.01, momentum=0.9,
                 schedule="step", decay_step=10, warmup_epochs=0, epochs=20, batch_size=32, L2=5e-5,
                 flip=False, crop_jitter=0.0, brightness=0.0, contrast=0.0, margin_scale=64.0, margin_m=0.5,
                 normalization="unit", split="seed", classifier_init="tflearn",
                 align=AlignSettings("margin", 182, 0.5)),
    "arcface": dict(net_type="iresnet50", image_size=112, hidden_size=512, loss="arcface", lr=0.1, momentum=0.9,
                    schedule="cosine", decay_step=8, warmup_epochs=1, epochs=20, batch_size=128, L2=5e-4,
                    flip=True, crop_jitter=0.0, brightness=0.0, contrast=0.0, margin_scale=64.0, margin_m=0.5,
                    normalization="centered", split="stratified", classifier_init="glorot_uniform",
                    align=AlignSettings("similarity", 112, 0.5)),
}
SPLITS = ("seed", "stratified")
# Initial weights of the softmax layer: tflearn's fully_connected default (truncated normal,
# stddev 0.02) or Keras' Glorot uniform; factories, so each model gets a freshly seeded one.
CLASSIFIER_INITS = {"tflearn": tflearn_dense_init, "glorot_uniform": keras.initializers.GlorotUniform}


class TrainingError(Exception):
    """The run cannot start or go on as asked (bad data, bad flags, a finished run, an
    unreadable backup, a run directory that cannot be written)."""


@dataclass
class TrainConfig:
    net_type: str
    datadir: str
    name: str
    preset: str = "seed"
    image_size: int = 64
    hidden_size: int | None = None
    loss: str = "softmax"
    lr: float = 0.01
    momentum: float = 0.9
    schedule: str = "step"
    decay_step: int = 10
    warmup_epochs: int = 0
    epochs: int = 20
    batch_size: int = 32
    L2: float = 5e-5
    normalization: str = "unit"
    split: str = "seed"
    classifier_init: str = "tflearn"
    img_morethan: int = 20
    val_split: float = 0.1
    seed: int = 0
    flip: bool = False
    crop_jitter: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    margin_scale: float = 64.0
    margin_m: float = 0.5
    center_weight: float = 0.01
    triplet_margin: float = 0.2
    images_per_identity: int = 4
    cache: str = ""
    mixed_precision: bool = False
    jit: bool = False
    runs_dir: str = "runs"
    verbose: int = 2
    lfw_dir: str = ""  # verify on LFW during training when set
    lfw_pairs: str = ""
    lfw_every: int = 1
    lfw_cache_dir: str = "data"

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name

    @property
    def augment(self) -> AugmentSettings:
        return AugmentSettings(self.flip, self.crop_jitter, self.brightness, self.contrast)

    def recipe(self) -> dict:
        """The settings that define the run; a resumed run must match them."""
        d = asdict(self)
        # Where runs live, how chatty they are and whether LFW is watched do not change the model.
        for transient in ("verbose", "runs_dir", "lfw_dir", "lfw_pairs", "lfw_every", "lfw_cache_dir"):
            d.pop(transient)
        return d


def default_datadir(preset: str) -> Path:
    """Where preprocess_data.py puts CASIA-WebFace crops made with the preset's alignment."""
    return default_output_dir(RAW_CASIA, PRESETS[preset]["align"])


def _check_image_size(config: TrainConfig, preprocess: dict):
    crop = int(preprocess["settings"]["align"]["image_size"])
    if config.image_size > crop:
        raise TrainingError(f"--image_size {config.image_size} is larger than the crops ({crop} px, "
                            f"{config.datadir}); make crops at least that large or lower --image_size")


def _check_run_name(name: str):
    """--name is one folder under --runs-dir: nothing that could climb out of it or nest."""
    if name in ("", ".", "..") or any(c in name for c in ("/", "\\", "\0")) or (os.altsep and os.altsep in name):
        raise TrainingError(f"--name {name!r} must be a single folder name (no '/', '\\', NUL, '.' or '..'): "
                            f"the run goes to <runs-dir>/<name>")


def _prepare_run_dir(config: TrainConfig) -> bool:
    """Create the run directory, or check it belongs to this same command. Returns True
    when a previous attempt left state to resume from."""
    _check_run_name(config.name)
    run = config.run_dir
    cfg_path = run / "config.json"
    if (run / "model.json").exists():
        raise TrainingError(f"run {run} is already complete; choose another --name")
    if cfg_path.exists():
        previous = read_json(cfg_path)["recipe"]
        if previous != json.loads(json.dumps(config.recipe())):
            changed = sorted(k for k in set(previous) | set(config.recipe())
                             if previous.get(k) != config.recipe().get(k))
            raise TrainingError(f"run {run} was started with other settings ({', '.join(changed)} differ); "
                                f"rerun the same command to resume, or choose another --name")
        _remove_stale_outputs(run)
        return True
    try:
        run.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise TrainingError(f"cannot create the run directory {run}: {err.strerror or err}") from None
    _remove_stale_outputs(run)
    return False


def _remove_stale_outputs(run: Path):
    """What a killed attempt was still writing: temporary files, and the temporary
    SavedModel folder of an export cut short."""
    remove_stale_temporaries(run)
    for entry in run.iterdir():
        if entry.name.startswith(TMP_PREFIX) and entry.is_dir():
            shutil.rmtree(entry)


# ---------------------------------------------------------------- crash-safe outputs

class _Checkpoints(keras.callbacks.Callback):
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


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """Keras' BackupAndRestore, crash-safe: Keras rewrites latest.weights.h5 and
    training_metadata.json in place, so a kill or a full disk mid-write leaves a partial
    backup, or metadata that names an epoch the weights do not hold.

    Here each epoch's weights go to their own file (epoch-NNNN.weights.h5, renamed into
    place once complete), then training_metadata.json is replaced atomically to name that
    file and its epoch: the metadata only ever points at complete weights of the same epoch.
    Older weight files are removed after the switch. An unreadable backup is a
    TrainingError that says what to do."""

    def __init__(self, backup_dir):
        super().__init__(str(backup_dir), delete_checkpoint=False)  # removed once the export is written

    def restored_epoch(self) -> int:
        """The epoch the backup resumes at (0 when there is none); reads only the metadata."""
        path = Path(self._training_metadata_path)
        try:
            return int(read_json(path)["epoch"]) if path.exists() else 0
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise self._unreadable(path, err) from None

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

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(loss):
            self._current_epoch = epoch + 1
            return  # keep the last good backup: TerminateOnNaN is about to stop training
        super().on_epoch_end(epoch, logs)

    def _save_model(self):
        backup = Path(self.backup_dir)
        backup.mkdir(parents=True, exist_ok=True)
        name = f"epoch-{self._current_epoch:04d}-batch-{self._last_batch_seen}.weights.h5"
        with replaced_atomically(backup / name) as tmp:
            self.model.save_weights(str(tmp), overwrite=True)
        write_json(Path(self._training_metadata_path),
                   {"epoch": self._current_epoch, "batch": self._last_batch_seen, "weights": name})
        for old in backup.glob("*.weights.h5"):
            if old.name != name:
                old.unlink()


def _keep_history_before(path: Path, epoch: int):
    """history.csv rows of epochs the backup does not hold are dropped: an attempt killed
    after logging an epoch but before backing it up redoes that epoch (logged again)."""
    if not path.exists():
        return
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    kept = [r for r in rows if int(r["epoch"]) < epoch]
    if len(kept) != len(rows):
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=reader.fieldnames)  # Keras' CSVLogger dialect
        writer.writeheader()
        writer.writerows(kept)
        atomic_write_bytes(path, out.getvalue().encode())


def _best_so_far(path: Path, monitor: str) -> float | None:
    """The best `monitor` value logged in history.csv (for best.keras on resume)."""
    if not path.exists():
        return None
    with open(path, newline="") as f:
        values = [float(r[monitor]) for r in csv.DictReader(f) if r.get(monitor) not in (None, "", "nan")]
    values = [v for v in values if np.isfinite(v)]
    if not values:
        return None
    return min(values) if monitor.endswith("loss") else max(values)


@keras.saving.register_keras_serializable(package="icyface")
class StepOrCosineSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Learning rate per step: linear warm-up, then x0.1 staircase every decay_step
    epochs (seed) or cosine decay to zero (modern recipe)."""

    def __init__(self, base_lr, steps_per_epoch, epochs, warmup_epochs=0, kind="step", decay_step=10):
        self.base_lr, self.steps_per_epoch, self.epochs = float(base_lr), int(steps_per_epoch), int(epochs)
        self.warmup_epochs, self.kind, self.decay_step = int(warmup_epochs), kind, int(decay_step)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        epoch = step / self.steps_per_epoch
        warm = float(self.warmup_epochs)
        if self.kind == "step":
            lr = self.base_lr * ops.power(0.1, ops.floor(epoch / max(self.decay_step, 1)))
        else:
            progress = ops.clip((epoch - warm) / max(self.epochs - warm, 1e-6), 0.0, 1.0)
            lr = self.base_lr * 0.5 * (1.0 + ops.cos(np.pi * progress))
        if self.warmup_epochs:
            lr = ops.where(epoch < warm, self.base_lr * (step + 1.0) / (warm * self.steps_per_epoch), lr)
        return lr

    def get_config(self):
        return dict(base_lr=self.base_lr, steps_per_epoch=self.steps_per_epoch, epochs=self.epochs,
                    warmup_epochs=self.warmup_epochs, kind=self.kind, decay_step=self.decay_step)


# ---------------------------------------------------------------- model assembly

def build_training_model(config: TrainConfig, num_classes: int):
    """(training model, embedding model, loss, metrics, monitor) for config.loss.

    Margin and center losses need the label in the forward pass, so their training model
    takes (images, labels). Holdout top-1/top-5 are always measured on plain
    (margin-free) class scores.
    """
    from models import build_backbone
    from models.heads import (CenterDistance, MarginHead, SemiHardTripletLoss, SoftmaxHead,
                              mean_prediction_loss)

    backbone = build_backbone(config.net_type, config.image_size, config.hidden_size, weight_decay=config.L2,
                              normalization=config.normalization)
    images = keras.Input((config.image_size, config.image_size, 3), name="images")
    labels = keras.Input((), dtype="int32", name="labels")
    embedding = backbone(images)
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    top = [keras.metrics.SparseCategoricalAccuracy(name="top1"),
           keras.metrics.SparseTopKCategoricalAccuracy(k=5, name="top5")]
    if config.loss == "triplet":
        model = keras.Model(images, embedding, name="triplet_trainer")
        return model, backbone, SemiHardTripletLoss(config.triplet_margin), None, "val_loss"
    if config.loss in ("softmax", "center"):
        scores = SoftmaxHead(num_classes, kernel_initializer=CLASSIFIER_INITS[config.classifier_init](),
                             dtype="float32", name="classifier")(embedding)
        if config.loss == "softmax":
            return keras.Model(images, scores, name="trainer"), backbone, ce, top, "val_top1"
        distance = CenterDistance(num_classes, dtype="float32", name="center")(embedding, labels)
        model = keras.Model([images, labels], {"scores": scores, "center": distance}, name="trainer")
        return (model, backbone, {"scores": ce, "center": mean_prediction_loss}, {"scores": top},
                "val_scores_top1")
    head = MarginHead(num_classes, kind=config.loss, scale=config.margin_scale, margin=config.margin_m,
                      dtype="float32", name="margin_head")
    margin_logits = head(embedding, labels)
    scores = head(embedding)
    model = keras.Model([images, labels], {"logits": margin_logits, "scores": scores}, name="trainer")
    return model, backbone, {"logits": ce, "scores": None}, {"scores": top}, "val_scores_top1"


def _shape_batches(ds, model):
    """Route (images, labels) batches into the structure the training model expects."""
    multi_input = isinstance(model.input, (list, tuple))
    names = list(model.output.keys()) if isinstance(model.output, dict) else None
    if not multi_input and names is None:
        return ds
    return ds.map(lambda x, y: ((x, y) if multi_input else x, {n: y for n in names} if names else y))


def _metric(logs: dict, name: str, holdout: bool):
    """A metric from Keras' logs whatever output prefix Keras gave it (top1, scores_top1...)."""
    for key, value in logs.items():
        if key.startswith("val_") == holdout and (key.removeprefix("val_") == name or key.endswith("_" + name)):
            return value
    return None


class _EpochReport(keras.callbacks.Callback):
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


# ---------------------------------------------------------------- the run

def _load_crops(config: TrainConfig):
    crops = Path(config.datadir)
    if not crops.is_dir():
        raise TrainingError(f"crops folder {crops} not found: make it with preprocess_data.py "
                            f"(or pass --datadir)")
    if not (crops / SETTINGS_NAME).exists():
        if shard_settings_files(crops):
            raise TrainingError(f"{crops} holds shards of a sharded preprocessing run: once every shard has "
                                f"finished, join them with preprocess_data.py --merge (same --input-dir and "
                                f"--output-dir)")
        raise TrainingError(f"{crops} has no {SETTINGS_NAME}, so it was not made by preprocess_data.py; "
                            f"training needs to know how the crops were aligned")
    preprocess = read_json(crops / SETTINGS_NAME)
    if preprocess.get("status") != "complete":
        raise TrainingError(f"preprocessing of {crops} has not finished (a run was interrupted?); rerun the "
                            f"same preprocess_data.py command to complete it")
    _check_image_size(config, preprocess)
    # The mode and its geometry: old square 'margin' crops are not the seed's margin crops.
    found, expected = AlignSettings.from_dict(preprocess["settings"]["align"]), PRESETS[config.preset]["align"]
    if (found.mode, found.geometry) != (expected.mode, expected.geometry):
        def describe(align):
            return align.mode + (f" ({align.geometry} geometry)" if align.geometry else "")

        print(f"warning: the {config.preset} preset expects --align {describe(expected)} crops; {crops} holds "
              f"{describe(found)} crops", flush=True)
    try:
        files = list_crops(crops, config.img_morethan)
        split = random_split if config.split == "seed" else stratified_split
        train_idx, val_idx = split(files.labels, config.val_split, config.seed)
    except InputError as err:
        raise TrainingError(str(err)) from None
    return preprocess, files, train_idx, val_idx


def _triplet_order(labels: np.ndarray, config: TrainConfig) -> tuple[np.ndarray, int, int]:
    """File order for every epoch: p identities x k images per batch, reshuffled per epoch."""
    from utils.sampling import identity_batches

    p = max(2, config.batch_size // config.images_per_identity)
    epochs = [list(identity_batches(labels, p, config.images_per_identity, config.seed, epoch))
              for epoch in range(config.epochs)]
    steps = min(len(e) for e in epochs)
    if steps == 0:
        raise TrainingError(f"not enough identities with {config.images_per_identity} images for triplet batches")
    order = np.concatenate([np.concatenate(e[:steps]) for e in epochs])
    return order, steps, p * config.images_per_identity


class _SkippedCrops(keras.callbacks.Callback):
    """Adds `skipped_crops` to the epoch logs (so history.csv and TensorBoard have it):
    crops that could not be read or decoded in the last full pass over the training files
    plus this epoch's holdout pass. The pipeline drops them instead of failing; this says
    so, and stops the run when too few are left to train (or hold out) at all."""

    def __init__(self, training: SkipCount, holdout: SkipCount | None, batch_size: int, datadir: str):
        super().__init__()
        self.training, self.holdout, self.batch_size, self.datadir = training, holdout, batch_size, datadir

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
            raise TrainingError(f"too few crops in {self.datadir} can be read: {train} of {self.training.total} "
                                f"training and {held} of {self.holdout.total if self.holdout else 0} holdout crops "
                                f"are truncated or not images; remake them with preprocess_data.py")


def run_training(config: TrainConfig) -> dict:
    """Train, checkpoint and export; resumes a run killed part-way. Returns model.json's content
    ({"worker": name} on a non-chief worker).

    With TF_CONFIG set, this process is one worker of a multi-host run: the chief writes
    config.run_dir; any other worker keeps its run directory in a scratch folder of its own
    (kept across restarts for its backup, removed at the end)."""
    from utils.distribute import ClusterError, cluster_task, make_strategy

    try:
        task = cluster_task()
        strategy = make_strategy(task)  # before TensorFlow runs anything: MultiWorkerMirroredStrategy's rule
    except ClusterError as err:
        raise TrainingError(str(err)) from None
    scratch = None
    if task is not None:
        if config.loss == "triplet":
            raise TrainingError("--loss triplet builds identity-grouped batches on one host; multi-host runs "
                                "support the classification losses only")
        if not task.is_chief:
            _check_run_name(config.name)
            scratch = task.scratch_dir(config.name)
            config = replace(config, runs_dir=str(scratch))
    preprocess, files, train_idx, val_idx = _load_crops(config)
    if len(train_idx) < config.batch_size:
        raise TrainingError(f"{len(train_idx)} training images, fewer than one batch of {config.batch_size}")
    resuming = _prepare_run_dir(config)
    try:
        info = _train(config, preprocess, files, train_idx, val_idx, resuming, strategy, task)
    except OSError as err:  # a full disk, or a run directory that became unwritable
        reason = os.strerror(err.errno) if err.errno else str(err).splitlines()[0]
        where = f" ({err.filename})" if err.filename else ""
        raise TrainingError(f"writing the run {config.run_dir} failed: {reason}{where}; free some disk space (or "
                            f"make the folder writable) and rerun the same command to resume from the last "
                            f"finished epoch") from None
    if scratch is not None:
        shutil.rmtree(scratch, ignore_errors=True)
        return {"worker": task.name}
    return info


def _train(config: TrainConfig, preprocess: dict, files, train_idx, val_idx, resuming: bool, strategy,
           task) -> dict:
    from utils.distribute import distribute

    run = config.run_dir
    keras.utils.set_random_seed(config.seed)
    if config.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    paths = np.asarray(files.paths, dtype=object)  # not a fixed-width UTF-32 array: 494k paths
    dataset_stats = {"identities": len(files.classes), "images": len(paths), "train_images": int(len(train_idx)),
                     "holdout_images": int(len(val_idx)), "img_morethan": config.img_morethan}
    if not resuming:
        # classes.txt first: config.json marks a started run, whose classes.txt must exist.
        atomic_write_bytes(run / "classes.txt",
                           "".join(f"{i}\t{c}\n" for i, c in enumerate(files.classes)).encode("utf-8"))
        write_json(run / "config.json", {
            "recipe": config.recipe(), "dataset": dataset_stats, "preprocess": preprocess,
            "versions": package_versions(TRAINING_PACKAGES), "keras_backend": keras.backend.backend(),
            "code_revision": git_revision(),
            "strategy": {"type": type(strategy).__name__ if strategy else "default",
                         "replicas": strategy.num_replicas_in_sync if strategy else 1,
                         "workers": task.workers if task else 1}})

    # Unreadable crops are dropped and counted, not fatal; the training stream repeats, so
    # fit's fixed steps per epoch never run out when some are dropped.
    train_skips = SkipCount()
    if config.loss == "triplet":
        # Batches must hold k images of each identity: the order is fixed here, not shuffled.
        order, steps, batch = _triplet_order(files.labels[train_idx], config)
    else:
        steps = len(train_idx) // config.batch_size
    with strategy.scope() if strategy else contextlib.nullcontext():
        model, backbone, loss, metrics, monitor = build_training_model(config, len(files.classes))
        schedule = StepOrCosineSchedule(config.lr, steps, config.epochs, config.warmup_epochs, config.schedule,
                                        config.decay_step)
        loss_weights = {"scores": 1.0, "center": config.center_weight} if config.loss == "center" else None
        model.compile(optimizer=keras.optimizers.SGD(schedule, momentum=config.momentum), loss=loss,
                      loss_weights=loss_weights, metrics=metrics, jit_compile=config.jit)
    if config.loss == "triplet":
        train_ds = _shape_batches(make_dataset(paths[train_idx][order], files.labels[train_idx][order],
                                               config.image_size, batch, training=False, seed=config.seed,
                                               skipped=train_skips).repeat(), model)
    else:
        def training_part(part, parts, batch_size):
            # Several hosts: each decodes only every parts-th training file, from its own cache.
            mine = train_idx[part::parts]
            cache = config.cache if parts == 1 or config.cache in ("", "ram") else f"{config.cache}.{part}-of-{parts}"
            return _shape_batches(make_dataset(paths[mine], files.labels[mine], config.image_size, batch_size,
                                               training=True, augment=config.augment, cache=cache, seed=config.seed,
                                               skipped=train_skips, repeat=True), model)

        train_ds = distribute(strategy, training_part, config.batch_size)
    val_ds, val_skips, val_steps = None, None, None
    if len(val_idx):
        val_skips = SkipCount()

        def holdout_part(part, parts, batch_size):
            # Several hosts must run the same number of holdout steps (their collectives pair
            # up), so their parts repeat and validation_steps is fixed below.
            mine = val_idx[part::parts]
            return _shape_batches(make_dataset(paths[mine], files.labels[mine], config.image_size, batch_size,
                                               training=False, skipped=val_skips, repeat=task is not None), model)

        val_ds = distribute(strategy, holdout_part, config.batch_size)
        if task is not None:
            val_steps = max(1, len(val_idx) // config.batch_size)
    else:
        monitor = "loss"
    (run / "checkpoints").mkdir(exist_ok=True)
    backup = AtomicBackupAndRestore(run / "backup")
    history_csv = run / "history.csv"
    _keep_history_before(history_csv, backup.restored_epoch())
    callbacks = [
        keras.callbacks.TerminateOnNaN(),
        _SkippedCrops(train_skips, val_skips, config.batch_size, config.datadir),
        keras.callbacks.CSVLogger(str(history_csv), append=True),
        keras.callbacks.TensorBoard(str(run / "logs")),
        _Checkpoints(run / "checkpoints", monitor, best=_best_so_far(history_csv, monitor)),
        _EpochReport(),
        # Last, so an epoch is backed up only once everything above has logged and saved it.
        backup,
    ]
    if config.lfw_dir and (task is None or task.is_chief):
        from utils.validation import ValidationError, lfw_callback

        try:
            # Before CSVLogger and TensorBoard, so they record lfw_accuracy.
            callbacks.insert(2, lfw_callback(backbone, config.image_size, preprocess["settings"],
                                             Path(config.lfw_dir),
                                             Path(config.lfw_pairs or Path(config.lfw_dir) / "pairs.txt"),
                                             config.lfw_every, run / "checkpoints" / "best_lfw.keras",
                                             workers=len(os.sched_getaffinity(0)),
                                             cache_root=Path(config.lfw_cache_dir)))
        except (OSError, ValueError, ValidationError, PreprocessError) as err:  # bad pairs, images, alignment
            raise TrainingError(f"cannot verify on LFW during training: {err}") from None
    started = time.time()
    with warnings.catch_warnings():
        # The holdout's length is unknown once unreadable crops may be dropped, so Keras warns
        # "ran out of data" at the end of its first pass; the training stream is endless.
        warnings.filterwarnings("ignore", message="Your input ran out of data")
        try:
            history = model.fit(train_ds, validation_data=val_ds, epochs=config.epochs, steps_per_epoch=steps,
                                validation_steps=val_steps, callbacks=callbacks, verbose=config.verbose,
                                shuffle=False)
        except Exception as err:
            if task is None or type(err).__module__ != "tensorflow.python.framework.errors_impl":
                raise
            # A collective failed: another host died or became unreachable.
            raise TrainingError(f"{task.name}: the cluster lost a worker ({type(err).__name__}: "
                                f"{str(err).strip().splitlines()[0]}); restart every worker with the same "
                                f"command and TF_CONFIG: each resumes from its last backup") from None
    if model.stop_training and any(not np.isfinite(v) for v in history.history.get("loss", [0.0])):
        raise TrainingError("training stopped: the loss became NaN (lower --lr?); the last good backup is in "
                            f"{run / 'backup'}")
    info = export_embedding_model(backbone, config, preprocess)
    info["train_seconds_this_attempt"] = round(time.time() - started, 1)
    with open(history_csv, newline="") as f:
        last = list(csv.DictReader(f))[-1]
    info["skipped_crops"] = int(float(last.get("skipped_crops") or 0))
    write_json(run / "model.json", info)
    shutil.rmtree(run / "backup", ignore_errors=True)
    return info


def export_embedding_model(backbone, config: TrainConfig, preprocess: dict) -> dict:
    """embedding.keras (raw embeddings, float input) and, on TensorFlow, a SavedModel whose
    serving signature takes a uint8 batch of aligned crops and returns L2-normalised
    embeddings. Returns the description later stages read from model.json. Both are
    written under temporary names and renamed into place."""
    from models import INPUT_NORMALIZATIONS

    run = config.run_dir
    save_keras_atomically(backbone, run / "embedding.keras")
    files = {"keras": "embedding.keras"}
    size = config.image_size
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
    return {
        "net_type": config.net_type, "input_size": size, "embedding_size": int(backbone.output.shape[-1]),
        "loss": config.loss, "input": "RGB uint8 crops, resized from the aligned crop to input_size",
        "normalization": f"{INPUT_NORMALIZATIONS[config.normalization].text}, inside the model",
        "saved_model_output": "L2-normalised embeddings",
        "alignment": preprocess["settings"]["align"], "preprocess_settings": preprocess["settings"],
        "files": files, "classes": config.run_dir.joinpath("classes.txt").name,
    }


def load_checkpoint(path: Path):
    """A training checkpoint (.keras) loaded with safe_mode; importing models.heads first
    registers the custom head layers its config names."""
    import models.heads  # noqa: F401  (registers the layers)
    from utils.embeddings import ModelError, load_keras_model

    try:
        return load_keras_model(path)
    except ModelError as err:
        raise TrainingError(f"checkpoint unusable: {err}") from None
