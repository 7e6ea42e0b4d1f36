"""Training over several devices and hosts with TensorFlow's own strategies.

One device: no strategy. Several GPUs: MirroredStrategy. TF_CONFIG set (several hosts):
MultiWorkerMirroredStrategy, where the chief writes the run directory and every other
worker writes only to a temporary folder of its own.

Keras 3.15's fit() does not run under MultiWorkerMirroredStrategy as shipped
(keras-team/keras#20585, tensorflow/tensorflow#72388): two small private functions of its
TensorFlow trainer reduce values in ways only single-host strategies support. They are
replaced (keras_internals.patch_fit_for_multi_worker), only when a multi-worker strategy is in
use, and only for the Keras versions they were checked against.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from utils.core.errors import IcyfaceError

# MirroredStrategy over this many logical CPU devices when no GPU is visible: the several-GPU
# code path (batch split, gradient all-reduce, metric reduction) exercised on a CPU.
CPU_REPLICAS_ENV = "ICYFACE_CPU_REPLICAS"


class ClusterError(IcyfaceError):
    """TF_CONFIG is malformed, or multi-host training cannot run with this Keras."""


@dataclass(frozen=True)
class ClusterTask:
    """This process's place in a TF_CONFIG cluster."""

    task_type: str
    index: int
    workers: int  # chief + workers
    is_chief: bool

    @property
    def name(self) -> str:
        return f"{self.task_type}-{self.index}"

    def scratch_dir(self, run_name: str) -> Path:
        """Where a non-chief worker keeps its run directory: stable across restarts, so a
        restarted worker finds its backup and rejoins."""
        return Path(tempfile.gettempdir()) / f"icyface-{run_name}-{self.name}"


def cluster_task() -> ClusterTask | None:
    """This process's task from TF_CONFIG, or None when it is not set."""
    raw = os.environ.get("TF_CONFIG", "").strip()
    if not raw:
        return None
    try:
        config = json.loads(raw)
        cluster, task = config["cluster"], config["task"]
        task_type, index = str(task["type"]), int(task["index"])
        workers = len(cluster.get("chief", [])) + len(cluster.get("worker", []))
    except (ValueError, KeyError, TypeError) as err:
        raise ClusterError(f"TF_CONFIG is not a valid cluster description ({err!r}); see README, "
                           f"'Several machines'") from None
    if task_type not in ("chief", "worker"):
        raise ClusterError(f"TF_CONFIG task type {task_type!r}: only 'chief' and 'worker' tasks train here")
    is_chief = task_type == "chief" or ("chief" not in cluster and index == 0)
    return ClusterTask(task_type, index, workers, is_chief)


def make_strategy(task: ClusterTask | None):
    """The tf.distribute strategy for this process, or None for the default (one device).
    Must run before TensorFlow executes anything (MultiWorkerMirroredStrategy's rule)."""
    import keras

    if keras.backend.backend() != "tensorflow":
        if task is not None:
            raise ClusterError("multi-host training (TF_CONFIG) needs the TensorFlow Keras backend")
        return None
    import tensorflow as tf

    if task is not None:
        _allow_multi_worker_fit()
        return tf.distribute.MultiWorkerMirroredStrategy()
    replicas = _cpu_replicas()
    if replicas > 1 and not tf.config.list_physical_devices("GPU"):  # physical: starts nothing yet
        # Several GPUs' code path on a CPU (tests, a check without GPUs): no faster, same arithmetic.
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)
        return tf.distribute.MirroredStrategy([d.name for d in tf.config.list_logical_devices("CPU")])
    gpus = tf.config.list_logical_devices("GPU")
    return tf.distribute.MirroredStrategy() if len(gpus) > 1 else None


def _cpu_replicas() -> int:
    raw = os.environ.get(CPU_REPLICAS_ENV, "").strip()
    try:
        replicas = int(raw or 1)
    except ValueError:
        replicas = 0
    if replicas < 1:
        raise ClusterError(f"{CPU_REPLICAS_ENV}={raw!r}: give a number of CPU replicas, e.g. 2")
    return replicas


def distribute(strategy, make_worker_dataset, global_batch: int):
    """A dataset for fit(): under a multi-worker strategy, each worker reads only its own
    part of the files (make_worker_dataset(part, parts, per_replica_batch)), so no host
    decodes images another host trains on; otherwise the plain dataset."""
    import tensorflow as tf

    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return make_worker_dataset(0, 1, global_batch)

    def per_worker(context):
        return make_worker_dataset(context.input_pipeline_id, context.num_input_pipelines,
                                   context.get_per_replica_batch_size(global_batch))

    return strategy.distribute_datasets_from_function(per_worker)


def _allow_multi_worker_fit():
    from utils.training.keras_internals import KerasInternalsError, patch_fit_for_multi_worker

    try:
        patch_fit_for_multi_worker()
    except KerasInternalsError as err:
        raise ClusterError(str(err)) from None
