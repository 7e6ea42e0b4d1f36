"""The training stage, top to bottom: crops -> run directory (config, checkpoints, logs,
exported model).

    config = load_config("seed", net_type="res-cp")   # utils/training/config.py
    info = run_training(config)                       # model.json's content

run_training and _train tell the whole story in order: where this process trains, the data,
the model and optimizer, the resume state, fit, export. The helpers below them each do one
of those steps.

Everything TensorFlow-specific (tf.data, tf.distribute, SavedModel export) lives in this
package and utils/; the models and losses themselves are backend-agnostic Keras 3.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import time
import warnings
from dataclasses import replace
from pathlib import Path

import keras
import numpy as np

from models.losses import LOSSES
from utils.core.folder_lock import FolderBusyError, hold_folder
from utils.core.run_io import write_json
from utils.core.stop_requests import stop_requests
from utils.preprocess.settings import PreprocessError
from utils.training.callbacks import (
    AtomicBackupAndRestore,
    Checkpoints,
    EMAWeights,
    EpochReport,
    SkippedCrops,
    StopAfterEpoch,
)
from utils.training.config import TrainConfig, TrainingError
from utils.training.data import (
    Crops,
    Streams,
    augment_settings,
    load_crops,
    make_streams,
    plan_epochs,
    teacher_vectors,
)
from utils.training.export import export_embedding_model
from utils.training.model import build_training_model, float32_copy, make_training_loss
from utils.training.run_dir import (
    best_so_far,
    check_run_name,
    create_run_dir,
    keep_history_before,
    last_logged,
    prepare_run_dir,
    record_start,
)
from utils.training.schedule import StepOrCosineSchedule


def run_training(config: TrainConfig) -> dict:
    """Train, checkpoint and export; resumes a run killed part-way. Returns model.json's content
    ({"worker": name} on a non-chief worker).

    With TF_CONFIG set, this process is one worker of a multi-host run: the chief writes
    config.run_dir; any other worker keeps its run directory in a scratch folder of its own
    (kept across restarts for its backup, removed at the end)."""
    config, strategy, task = _place(config)  # before TensorFlow runs anything
    _check_settings(config)  # settings out of range fail before any folder is made
    teacher = _open_teacher(config)  # a missing or unreadable teacher too
    crops = load_crops(config)
    # The teacher's vectors of every crop: computed once (progress bar), then read from beside the crops.
    vectors = teacher_vectors(config, crops, teacher) if teacher else None
    policy = keras.mixed_precision.global_policy()  # put back after: a caller's later models are its own
    with _run_dir(config) as resuming:  # one process per --name; a full disk says what to do
        try:
            info = _train(config, crops, resuming, strategy, task, teacher, vectors)
        finally:
            keras.mixed_precision.set_global_policy(policy)
    if task is not None and not task.is_chief:
        shutil.rmtree(task.scratch_dir(config.name), ignore_errors=True)
        return {"worker": task.name}
    return info


def _train(config: TrainConfig, crops: Crops, resuming: bool, strategy, task, teacher=None,
           vectors: np.ndarray | None = None) -> dict:
    run = config.run_dir
    keras.utils.set_random_seed(config.seed)
    keras.mixed_precision.set_global_policy(config.compute_policy)
    if not resuming:
        stats = {**crops.stats(config), **({"teacher": teacher.describe()} if teacher else {})}
        record_start(config, crops.files.classes, stats, crops.preprocess, {
            "type": type(strategy).__name__ if strategy else "default",
            "replicas": strategy.num_replicas_in_sync if strategy else 1, "workers": task.workers if task else 1})

    # Data: the steps of an epoch (identity-grouped batches for the losses that need them).
    plan = plan_epochs(config, crops, LOSSES[config.loss].identity_batches)

    # Model and optimizer: the backbone with the loss's head; SGD with momentum on the learning-rate
    # schedule, keeping a moving average of the weights with --ema.
    with strategy.scope() if strategy else contextlib.nullcontext():
        model, backbone, head = build_training_model(config, len(crops.files.classes),
                                                     teacher.dimension if teacher else 0)
        schedule = StepOrCosineSchedule(config.lr, plan.steps, config.epochs, config.warmup_epochs,
                                        config.schedule, config.decay_step)
        optimizer = keras.optimizers.SGD(schedule, momentum=config.momentum, use_ema=config.ema > 0,
                                         ema_momentum=config.ema or 0.99)
        model.compile(optimizer=optimizer, loss=head.loss,
                      loss_weights=head.loss_weights, metrics=head.metrics, jit_compile=config.jit)
    # After compile, as always: the augmentation's random ops are seeded in creation order.
    streams = make_streams(config, crops, model, plan, strategy, task, vectors)

    # Resume state: where the last backup stands (epoch, step; (0, 0) for a fresh run);
    # history.csv keeps the epochs before it.
    (run / "checkpoints").mkdir(exist_ok=True)
    backup = AtomicBackupAndRestore(run / "backup", plan.steps, config.backup_every_steps)
    epoch, step = backup.restored_position()
    keep_history_before(run / "history.csv", epoch)
    callbacks = _callbacks(config, streams, head, backbone, crops.preprocess, task, backup,
                           ema_in_model=epoch > 0 and step == 0)

    # Fit from there to the last epoch. SIGTERM/SIGINT: back up at the next step, then StopRequested.
    started = time.time()
    with stop_requests() as backup.stop, _cluster_failures(task), _holdout_of_unknown_length():
        history = fit_from_backup(model, streams.train_from, plan.steps, config.epochs, callbacks, backup,
                                  validation_data=streams.holdout, validation_steps=streams.holdout_steps,
                                  verbose=config.verbose)
    if model.stop_training and any(not np.isfinite(v) for v in history.history.get("loss", [0.0])):
        raise TrainingError("training stopped: the loss became NaN (lower --lr?); the last good backup is in "
                            f"{run / 'backup'}")

    # Export: the embedding model (in float32) and model.json; the backup has served its purpose.
    info = export_embedding_model(float32_copy(backbone, config), config, crops.preprocess)
    info["train_seconds_this_attempt"] = round(time.time() - started, 1)
    if teacher:
        info["teacher"] = teacher.describe()
    info["skipped_crops"] = int(float(last_logged(run / "history.csv").get("skipped_crops") or 0))
    write_json(run / "model.json", info)
    shutil.rmtree(run / "backup", ignore_errors=True)
    return info


def _place(config: TrainConfig):
    """(config, strategy, task): the tf.distribute strategy (None: one device) and, with
    TF_CONFIG, this process's task; a worker other than the chief gets a scratch run directory."""
    from utils.training.distribute import ClusterError, cluster_task, make_strategy

    try:
        task = cluster_task()
        strategy = make_strategy(task)  # before TensorFlow runs anything: MultiWorkerMirroredStrategy's rule
    except ClusterError as err:
        raise TrainingError(str(err)) from None
    if task is not None:
        if LOSSES[config.loss].identity_batches:
            raise TrainingError(f"--loss {config.loss} builds identity-grouped batches on one host; multi-host "
                                f"runs support the classification losses only")
        if config.teacher:
            raise TrainingError("--teacher: multi-host runs do not distil yet; train on one host")
        if not task.is_chief:
            check_run_name(config.name)
            config = replace(config, runs_dir=str(task.scratch_dir(config.name)))
    return config, strategy, task


def _check_settings(config: TrainConfig):
    augment_settings(config)
    try:
        make_training_loss(config, 2)
    except ValueError as err:
        raise TrainingError(f"--loss {config.loss}: {err}") from None
    if config.backup_every_steps < 0:
        raise TrainingError(f"--backup-every-steps must be >= 0 (0 = back up at epoch ends only), got "
                            f"{config.backup_every_steps}")
    if config.loss == "distill" and not config.teacher:
        raise TrainingError("--loss distill trains on a teacher's embeddings alone: give --teacher (e.g. dlib)")
    if config.teacher and LOSSES[config.loss].identity_batches:
        raise TrainingError(f"--teacher does not combine with --loss {config.loss} (identity-grouped batches)")
    if config.teacher and config.distill_weight <= 0:
        raise TrainingError(f"--distill-weight must be > 0, got {config.distill_weight}")
    if config.mixed_precision and config.bfloat16:
        raise TrainingError("--mixed-precision (float16) and --bfloat16 are two compute types: give one")
    if not 0.0 <= config.ema < 1.0:
        raise TrainingError(f"--ema must be in [0, 1) (a momentum per step, e.g. 0.999), got {config.ema}")


def _open_teacher(config: TrainConfig):
    """--teacher's model (None without one); a missing or unreadable one is a TrainingError."""
    if not config.teacher:
        return None
    from utils.verify.teacher import TeacherError, open_teacher

    try:
        return open_teacher(config.teacher)
    except TeacherError as err:
        raise TrainingError(str(err)) from None


@contextlib.contextmanager
def _run_dir(config: TrainConfig):
    """Holds config.run_dir (made if new) for this process; yields whether the run resumes."""
    try:
        with hold_folder(create_run_dir(config)):  # a second process on this --name is refused, nothing written
            yield prepare_run_dir(config)
    except FolderBusyError as err:
        raise TrainingError(f"run {err}") from None
    except OSError as err:  # a full disk, or a run directory that became unwritable
        reason = os.strerror(err.errno) if err.errno else str(err).splitlines()[0]
        where = f" ({err.filename})" if err.filename else ""
        raise TrainingError(f"writing the run {config.run_dir} failed: {reason}{where}; free some disk space (or "
                            f"make the folder writable) and rerun the same command to resume from the last "
                            f"finished epoch") from None


def _callbacks(config: TrainConfig, streams: Streams, head, backbone, preprocess: dict, task,
               backup: AtomicBackupAndRestore, ema_in_model: bool) -> list:
    """In order: what logs an epoch comes before what records it; the backup comes last."""
    run = config.run_dir
    monitor = head.monitor if streams.holdout is not None else "loss"
    callbacks = [
        keras.callbacks.TerminateOnNaN(),
        SkippedCrops(streams.train_skips, streams.holdout_skips, config.batch_size, config.data_dir),
        keras.callbacks.CSVLogger(str(run / "history.csv"), append=True),
        keras.callbacks.TensorBoard(str(run / "logs")),
        Checkpoints(run / "checkpoints", monitor, best=best_so_far(run / "history.csv", monitor)),
        EpochReport(),
        # Last, so an epoch is backed up only once everything above has logged and saved it.
        backup,
    ]
    if (config.lfw_dir or config.val_targets) and (task is None or task.is_chief):
        # Before CSVLogger and TensorBoard, so they record lfw_accuracy and the other targets'.
        callbacks.insert(2, _lfw_monitor(config, backbone, preprocess))
    if config.ema:
        # First: the holdout and everything after it see the averaged weights.
        callbacks.insert(0, EMAWeights(resumed_at_epoch_end=ema_in_model, epochs=config.epochs))
    return callbacks


def _lfw_monitor(config: TrainConfig, backbone, preprocess: dict):
    """--lfw-dir's pairs (logged as lfw_accuracy), then each of --val-targets (<name>_accuracy)."""
    from utils.training.lfw_monitor import LFWMonitor, verification_targets
    from utils.verify.validation import ValidationError, target_names

    lfw = Path(config.lfw_dir) if config.lfw_dir else None
    named = [("lfw", Path(config.lfw_pairs or lfw / "pairs.txt"))] if lfw else []
    extra = [Path(p.strip()) for p in config.val_targets.split(",") if p.strip()]
    named += list(zip(target_names(extra, taken=[n for n, _ in named]), extra))
    try:
        targets = verification_targets(named, lfw, preprocess["settings"], workers=len(os.sched_getaffinity(0)),
                                       cache_root=Path(config.lfw_cache_dir))
    except (OSError, ValueError, ValidationError, PreprocessError) as err:  # bad pairs, images, alignment
        raise TrainingError(f"cannot verify on {', '.join(str(p) for _, p in named)} during training: {err}") \
            from None
    return LFWMonitor(backbone, config.input_size, targets, config.lfw_every,
                      config.run_dir / "checkpoints" / "best_lfw.keras")


@contextlib.contextmanager
def _cluster_failures(task):
    """On a multi-host run, a collective that fails (another host died or became unreachable)
    is a TrainingError that says how to resume."""
    try:
        yield
    except Exception as err:
        if task is None or type(err).__module__ != "tensorflow.python.framework.errors_impl":
            raise
        raise TrainingError(f"{task.name}: the cluster lost a worker ({type(err).__name__}: "
                            f"{str(err).strip().splitlines()[0]}); restart every worker with the same "
                            f"command and TF_CONFIG: each resumes from its last backup") from None


@contextlib.contextmanager
def _holdout_of_unknown_length():
    # The holdout's length is unknown once unreadable crops may be dropped, so Keras warns
    # "ran out of data" at the end of its first pass; the training stream is endless.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Your input ran out of data")
        yield


def fit_from_backup(model, train_from, steps: int, epochs: int, callbacks: list, backup: AtomicBackupAndRestore,
                    **fit_args):
    """model.fit to `epochs` from where `backup` stands. A backup taken mid-epoch (epoch E, s of
    `steps` steps done) first runs the rest of epoch E as a fit of its own (steps - s steps), then
    the epochs after it; train_from(n) is the training stream from the run's step n. Returns the
    last fit's History."""
    epoch, step = backup.restored_position()
    if step:
        # epochs=epochs, stopped after this one: the progress bar says "Epoch E/epochs" as usual.
        history = model.fit(train_from(epoch * steps + step), epochs=epochs, initial_epoch=epoch,
                            steps_per_epoch=steps - step, callbacks=[*callbacks, StopAfterEpoch(epoch)],
                            shuffle=False, **fit_args)
        if epoch + 1 >= epochs or not np.all(np.isfinite(history.history.get("loss", [0.0]))):
            return history  # done, or stopped by TerminateOnNaN
        epoch += 1
    # The backup callback reloads its epoch-end backup here (on_train_begin), which also undoes what
    # the first fit's end did to --ema's weights (Keras copies the average slots into the model).
    return model.fit(train_from(epoch * steps), epochs=epochs, initial_epoch=epoch, steps_per_epoch=steps,
                     callbacks=callbacks, shuffle=False, **fit_args)
