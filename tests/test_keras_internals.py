"""What the project relies on that Keras does not document, all in
utils/training/keras_internals.py: one test per private member (or naming convention), so a
Keras upgrade that drops one fails here with a message naming the installed Keras version; and
a scan that keeps every such use in that one module."""
import re

import keras
import numpy as np
import pytest

from utils.core.run_io import PROJECT_ROOT
from utils.training import keras_internals as ki

tensorflow_only = pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                                     reason="Keras' TensorFlow trainer: the TensorFlow backend only")


def _model(use_ema=False):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, name="a"), keras.layers.Dense(2, name="b")])
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9, use_ema=use_ema), "mse")
    return model


def test_ema_averages_are_found_by_their_names():
    """--ema: each trainable variable's moving average is the optimizer variable named
    "<path, / as _>_average"; the public finalize_variable_values (which copies the averages
    into the model) confirms the pairing."""
    model = _model(use_ema=True)
    model.optimizer.build(model.trainable_variables)
    pairs = ki.ema_pairs(model)
    assert [v.path for v, _ in pairs] == [v.path for v in model.trainable_variables]
    for i, (_, average) in enumerate(pairs):
        average.assign(np.full(tuple(average.shape), i + 1.0, "float32"))
    model.optimizer.finalize_variable_values(model.trainable_variables)
    for i, variable in enumerate(model.trainable_variables):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(variable), i + 1.0)


@tensorflow_only
def test_tf_trainer_module():
    ki.tf_trainer_module()


@tensorflow_only
def test_tf_trainer_collective_all_reduce_multi_worker():
    import tensorflow as tf

    assert ki.collective_all_reduce_multi_worker(tf.distribute.get_strategy()) is False


@tensorflow_only
def test_tf_trainer_reduce_per_replica():
    assert callable(ki.reduce_per_replica())


@tensorflow_only
def test_tf_trainer_maybe_symbolic_build():
    assert callable(ki.maybe_symbolic_build())


@tensorflow_only
def test_model_distribute_strategy_attribute():
    assert ki.model_strategy(_model()) is None  # created outside any strategy's scope


@tensorflow_only
def test_model_symbolic_build():
    model = _model()
    ki.symbolic_build(model, (np.zeros((4, 3), "float32"), np.zeros((4, 2), "float32"), None))
    assert model.optimizer.built


def test_multi_worker_fix_was_checked_against_this_keras():
    assert keras.__version__.startswith(ki.CHECKED_KERAS), (
        f"Keras {keras.__version__}: check keras_internals.patch_fit_for_multi_worker against it (and whether "
        f"keras-team/keras#20585 is fixed), then add it to CHECKED_KERAS")


@tensorflow_only
def test_a_missing_member_is_an_error_naming_the_keras_version(monkeypatch):
    monkeypatch.delattr(ki.tf_trainer_module(), "_collective_all_reduce_multi_worker")
    with pytest.raises(ki.KerasInternalsError, match=re.escape(f"Keras {keras.__version__} has no ")):
        ki.collective_all_reduce_multi_worker(None)
    model = _model(use_ema=True)
    model.optimizer.build(model.trainable_variables)
    monkeypatch.setattr(ki, "EMA_SUFFIX", "_moving_average")  # as if Keras renamed its averages
    with pytest.raises(ki.KerasInternalsError, match=re.escape(f"Keras {keras.__version__} has no ")):
        ki.ema_pairs(model)


# Private members of Keras this project used or might reach for; only keras_internals.py may.
KERAS_PRIVATE = ("_load_model", "_save_model", "_swap_variables", "_finalize_ema_values", "_training_metadata_path",
                 "_weights_path", "_processes", "_collective_all_reduce_multi_worker", "_maybe_symbolic_build",
                 "_symbolic_build", "_distribute_strategy", "_distribution_strategy",
                 "_model_variables_moving_average", "_trainable_variables", "_initial_epoch")


def test_keras_internals_are_used_in_that_module_only():
    """No Keras private member or keras.src import in utils/ or models/ outside keras_internals.py;
    in utils/training, no private attribute access at all (`._name`), so `grep -rnE "\\._[a-z]"
    utils/training` lists keras_internals.py only."""
    internals = PROJECT_ROOT / "utils" / "training" / "keras_internals.py"
    training = PROJECT_ROOT / "utils" / "training"
    keras_private = re.compile(r"\.(" + "|".join(KERAS_PRIVATE) + r")\b|\bkeras\.src\b|\bkeras import src\b")
    any_private = re.compile(r"\._[a-z]")
    found = []
    for path in sorted([*(PROJECT_ROOT / "utils").rglob("*.py"), *(PROJECT_ROOT / "models").rglob("*.py")]):
        if path == internals:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if keras_private.search(line) or (path.is_relative_to(training) and any_private.search(line)):
                found.append(f"{path.relative_to(PROJECT_ROOT)}:{number}: {line.strip()}")
    assert not found, "Keras internals outside utils/training/keras_internals.py:\n" + "\n".join(found)
