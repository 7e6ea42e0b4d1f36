"""Every use of what Keras does not document as public, in one place, each behind one small
function. The rest of the project uses public Keras APIs only.

- --ema: Keras has no public accessor for an optimizer's moving averages of the weights. They
  are found among the public `optimizer.variables` by the name Keras gives them
  ("<variable path, / as _>_average"): an undocumented convention, not a private member.
- Multi-host training: Keras' fit() does not run under MultiWorkerMirroredStrategy as shipped
  (keras-team/keras#20585, tensorflow/tensorflow#72388): two private functions of its
  TensorFlow trainer reduce values in ways only single-host strategies support. They are
  replaced, only when a multi-worker strategy is in use, and only for the Keras versions in
  CHECKED_KERAS.

After a Keras upgrade, tests/test_keras_internals.py says which of these is gone; each
failure is a KerasInternalsError that names the installed Keras version.
"""
from __future__ import annotations

import keras

from utils.core.errors import IcyfaceError

# The Keras releases whose trainer internals the multi-worker fix below was checked against.
CHECKED_KERAS = ("3.15.",)

TF_TRAINER = "keras.src.backend.tensorflow.trainer"
PATCHED_MARK = "_icyface_multi_worker"  # set on the trainer module once patched
EMA_SUFFIX = "_average"  # an optimizer's moving average of variable v is named v.path, / as _, + this


class KerasInternalsError(IcyfaceError):
    """This Keras lacks something undocumented that the project relies on."""


def missing(what: str) -> KerasInternalsError:
    return KerasInternalsError(f"Keras {keras.__version__} has no {what}, which utils/training/keras_internals.py "
                               f"relies on (checked with Keras {', '.join(CHECKED_KERAS)}x); install one of those "
                               f"Keras versions or update keras_internals.py")


def member(owner, name: str, where: str):
    """owner.name, or a KerasInternalsError naming the Keras version when it is gone."""
    try:
        return getattr(owner, name)
    except AttributeError:
        raise missing(f"{where}.{name}") from None


# --ema: the optimizer's moving averages ---------------------------------------------------

def ema_pairs(model) -> list[tuple]:
    """(trainable variable, its moving average) for each trainable variable of `model`, compiled
    with an optimizer built with use_ema=True (under --mixed-precision, the LossScaleOptimizer's
    inner one)."""
    optimizer = getattr(model.optimizer, "inner_optimizer", model.optimizer)
    if not getattr(optimizer, "use_ema", False):
        raise ValueError("EMAWeights needs an optimizer built with use_ema=True")
    if not optimizer.built:
        raise ValueError("the optimizer has no moving averages before it is built (by fit(), or build())")
    by_name: dict[str, list] = {}
    for variable in optimizer.variables:
        by_name.setdefault(variable.name, []).append(variable)
    pairs = []
    for variable in model.trainable_variables:
        name = variable.path.replace("/", "_") + EMA_SUFFIX
        found = by_name.get(name, [])
        if len(found) != 1 or tuple(found[0].shape) != tuple(variable.shape):
            raise missing(f"single optimizer variable {name!r} (the moving average of {variable.path}) "
                          f"({len(found)} found)")
        pairs.append((variable, found[0]))
    return pairs


# Multi-host training: Keras' TensorFlow trainer -------------------------------------------

def tf_trainer_module():
    """Keras' TensorFlow trainer module (a private module path)."""
    import importlib

    try:
        return importlib.import_module(TF_TRAINER)
    except ImportError:
        raise missing(f"module {TF_TRAINER}") from None


def collective_all_reduce_multi_worker(strategy) -> bool:
    """Whether `strategy` all-reduces across several hosts (the trainer's private test)."""
    return member(tf_trainer_module(), "_collective_all_reduce_multi_worker", TF_TRAINER)(strategy)


def reduce_per_replica():
    """The trainer's reduce_per_replica (a public name in a private module)."""
    return member(tf_trainer_module(), "reduce_per_replica", TF_TRAINER)


def maybe_symbolic_build():
    """TensorFlowTrainer._maybe_symbolic_build: builds the model from a first batch in fit()."""
    return member(member(tf_trainer_module(), "TensorFlowTrainer", TF_TRAINER), "_maybe_symbolic_build",
                  "TensorFlowTrainer")


def model_strategy(model):
    """The strategy a model was created under, or None (not the default strategy, unlike the
    public `model.distribute_strategy`)."""
    return member(model, "_distribute_strategy", "TensorFlowTrainer")


def symbolic_build(model, data_batch):
    member(model, "_symbolic_build", "TensorFlowTrainer")(data_batch=data_batch)


def patch_fit_for_multi_worker():
    """Lets model.fit() run under MultiWorkerMirroredStrategy (keras-team/keras#20585): metrics
    are averaged across hosts as scalars, and the model is built from this host's first
    replica's batch. Idempotent; a KerasInternalsError on a Keras not in CHECKED_KERAS."""
    trainer = tf_trainer_module()
    if getattr(trainer, PATCHED_MARK, False):
        return
    if not keras.__version__.startswith(CHECKED_KERAS):
        raise KerasInternalsError(f"multi-host training was checked with Keras {', '.join(CHECKED_KERAS)}x only "
                                  f"(it works around keras-team/keras#20585 in Keras' trainer); this is Keras "
                                  f"{keras.__version__}")
    import tensorflow as tf

    original_reduce, original_build = reduce_per_replica(), maybe_symbolic_build()

    def reduce_metrics(values, strategy, reduction):
        # Keras averages multi-worker metrics with reduce(axis=0), which fails on scalars.
        if reduction in ("auto", "mean") and collective_all_reduce_multi_worker(strategy):
            return keras.tree.map_structure(
                lambda v: strategy.reduce("MEAN", v, axis=None if _rank(strategy, v) == 0 else 0), values)
        return original_reduce(values, strategy, reduction)

    def build(self, iterator=None, data_batch=None):
        # Keras builds from a batch "reduced" across replicas; a multi-worker strategy cannot
        # reduce a batch of images, and only its shapes matter: take this host's first replica's.
        if model_strategy(self) is not None and iterator is not None:
            for _, _, it in iterator:
                data_batch = keras.tree.map_structure(
                    lambda x: self.distribute_strategy.experimental_local_results(x)[0]
                    if isinstance(x, tf.distribute.DistributedValues) else x, next(it))
                break
            with self.distribute_strategy.scope():
                symbolic_build(self, data_batch)
            return
        return original_build(self, iterator=iterator, data_batch=data_batch)

    trainer.reduce_per_replica = reduce_metrics
    trainer.TensorFlowTrainer._maybe_symbolic_build = build
    setattr(trainer, PATCHED_MARK, True)


def _rank(strategy, value) -> int:
    return strategy.experimental_local_results(value)[0].shape.rank
