"""Every command starts quietly: one line of ours instead of TensorFlow's C++ start-up logs."""
import os
import re
import subprocess
import sys

import pytest

from utils.core.run_io import PROJECT_ROOT

TF_NATIVE_LOG = re.compile(r"^[IWE]\d{4} |All log messages before absl", re.MULTILINE)


def _run(script: str, *args, **env):
    clean = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "ICYFACE_TF_LOGS")}
    return subprocess.run([sys.executable, str(PROJECT_ROOT / script), *args], cwd=PROJECT_ROOT, text=True,
                          capture_output=True, env={**clean, **env}, timeout=300)


def _validate_args(tmp_path) -> list[str]:
    """validate_on_lfw.py flags that pass its checks before TensorFlow starts (the run folder and
    pairs file exist) and fail after it (the run has no model)."""
    (tmp_path / "run").mkdir(exist_ok=True)
    (tmp_path / "pairs.txt").write_text("1\t1\n")
    return ["--model", str(tmp_path / "run"), "--lfw-dir", str(tmp_path), "--pairs", str(tmp_path / "pairs.txt")]


@pytest.mark.parametrize("script", ["validate_on_lfw.py", "train_classifier.py"])
def test_commands_print_their_devices_not_tensorflows_logs(tmp_path, script):
    args = (_validate_args(tmp_path)
            if script == "validate_on_lfw.py" else ["--data-dir", str(tmp_path / "none"), "--runs-dir", str(tmp_path)])
    res = _run(script, *args)
    assert res.returncode == 2 and "error:" in res.stderr, res.stderr[-2000:]
    assert re.search(r"^devices: (CPU only|\d+ GPUs?)$", res.stdout, re.MULTILINE), res.stdout
    assert not TF_NATIVE_LOG.search(res.stderr), res.stderr[-2000:]


def test_tf_logs_come_back_when_asked_for(tmp_path):
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("the native start-up lines asserted here are the ones a machine without a GPU prints")
    args = _validate_args(tmp_path)
    assert TF_NATIVE_LOG.search(_run("validate_on_lfw.py", *args, "--tf-logs").stderr)
    assert TF_NATIVE_LOG.search(_run("validate_on_lfw.py", *args, ICYFACE_TF_LOGS="1").stderr)
