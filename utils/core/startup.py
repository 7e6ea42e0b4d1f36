"""A quiet start for every entry point.

TensorFlow's C++ start-up lines (oneDNN notices, "Could not find cuda drivers", "failed call
to cuInit: ... CUDA error") read as failures to a new user on a machine without a GPU. Its
log level must be set before it is imported, and the lines printed while its library loads
ignore even that, so the import runs with the process's native stderr silenced. One line of
our own says what was found instead. `--tf-logs` (or ICYFACE_TF_LOGS=1) brings TF's logs back.
"""
from __future__ import annotations

import contextlib
import os
import sys

TF_LOGS_FLAG = "--tf-logs"
TF_LOGS_ENV = "ICYFACE_TF_LOGS"
TF_LOGS_HELP = f"show TensorFlow's own start-up and C++ logs (also: {TF_LOGS_ENV}=1)"


def tf_logs_wanted() -> bool:
    return os.environ.get(TF_LOGS_ENV, "") not in ("", "0")


def configure_tf_logging(argv=None) -> None:
    """Before TensorFlow is imported: its log level, unless --tf-logs (in argv) or
    ICYFACE_TF_LOGS asks for its logs (--tf_logs too, as for every flag). --tf-logs sets the
    variable, so worker processes follow."""
    if TF_LOGS_FLAG in (str(a).replace("_", "-") for a in (sys.argv[1:] if argv is None else argv)):
        os.environ[TF_LOGS_ENV] = "1"
    if not tf_logs_wanted():
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@contextlib.contextmanager
def quiet_native_stderr():
    """Silence file descriptor 2 itself (native libraries write there, bypassing sys.stderr),
    unless TensorFlow's logs were asked for."""
    if tf_logs_wanted():
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def quiet_tensorflow(argv=None) -> None:
    """What a TensorFlow-using entry point calls first, before anything imports TensorFlow or
    Keras: the log level, then the import itself with the load-time lines silenced."""
    configure_tf_logging(argv)
    if "tensorflow" not in sys.modules:
        with quiet_native_stderr(), contextlib.suppress(ImportError):  # other Keras backends may run without TF
            import tensorflow  # noqa: F401


def device_summary() -> str:
    """'devices: CPU only' or 'devices: N GPUs' (as the Keras backend sees them)."""
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        gpus = len(tf.config.list_physical_devices("GPU"))
    else:
        try:
            gpus = len(keras.distribution.list_devices("gpu"))
        except (RuntimeError, ValueError, AttributeError):  # no GPU runtime on this backend
            gpus = 0
    return "devices: CPU only" if not gpus else f"devices: {gpus} GPU{'s' if gpus > 1 else ''}"


def start(argv=None) -> None:
    """quiet_tensorflow, then one line on the devices found."""
    quiet_tensorflow(argv)
    print(device_summary(), flush=True)
