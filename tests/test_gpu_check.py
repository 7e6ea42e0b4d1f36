"""benchmarks/gpu_check.py dry-run on the CPU, so the script a GPU machine runs first cannot rot."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import PROJECT_ROOT

# Tiny step counts at 32 px: the same code paths, small enough for a CPU, where float16 is emulated
# and slow. The ArcFace case (labels as an input) in mixed precision on 1 and 2 replicas; the seed's
# in float32 and bfloat16 on one device. A case costs mostly its build and trace, so each runs as few as cover it.
TINY = ("--steps", "2", "--warmup", "1", "--batch-size", "4", "--identities", "20")


def _check(*args, env_extra: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, str(PROJECT_ROOT / "benchmarks" / "gpu_check.py"), *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=timeout)


def test_gpu_check_runs_mixed_precision_on_one_and_two_cpu_replicas_from_synthetic_batches_and_crops(
        tmp_path, pubfig_crops):
    """float16 under MirroredStrategy is the GPU run's riskiest path; float32 on one device is the seed case below
    (and 2 float32 replicas are test_distributed's)."""
    out = tmp_path / "check.json"
    res = _check("--cases", "resnet18:32:arcface", *TINY, "--batch-size", "2", "--precisions", "mixed_float16",
                 "--crops", pubfig_crops, "--out", out, env_extra={"ICYFACE_CPU_REPLICAS": "2"})
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(out.read_text())
    assert json.loads(res.stdout) == report
    assert report["backend"] == "tensorflow" and report["accelerated"] is False
    assert len(report["devices"]) == 2 and report["not_measured"] == []
    got = {(c["model"], c["loss_function"], c["precision"], c["replicas"]) for c in report["cases"]}
    assert got == {("resnet18", "arcface", "mixed_float16", r) for r in (1, 2)}
    for case in report["cases"]:
        assert case["batch"] == 2 * case["replicas"]  # --batch-size is per device
        assert case["finite"] and case["synthetic_img_s"] > 0 and case["crops_img_s"] > 0
        assert case["ratio"] == pytest.approx(case["crops_img_s"] / case["synthetic_img_s"], rel=0.02)


def test_gpu_check_says_what_it_did_not_measure(tmp_path):
    res = _check("--cases", "res-cp:32:seed", *TINY, "--precisions", "float32,mixed_bfloat16",
                 "--out", tmp_path / "c.json")
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(res.stdout)
    assert [(c["model"], c["loss_function"], c["precision"], c["replicas"], c["finite"]) for c in report["cases"]] == [
        ("res-cp", "softmax", "float32", 1, True), ("res-cp", "softmax", "mixed_bfloat16", 1, True)]
    assert all("crops_img_s" not in c for c in report["cases"])
    assert report["not_measured"] == ["crops figures: no --crops given", "several devices: one device found"]


@pytest.mark.parametrize("args, message", [
    (["--cases", "res-cp:64"], "not model:input_size:preset"),
    (["--cases", "res-cp:64:nosuchpreset"], "no experiment 'nosuchpreset'"),
    (["--precisions", "float64"], "--precisions"),
    (["--crops", "missing"], "--crops"),
])
def test_gpu_check_rejects_bad_arguments_before_building_anything(args, message, tmp_path, capsys):
    """Checked in this process (main(argv)): a usage error exits 2 before TensorFlow or a model starts."""
    from benchmarks.gpu_check import main

    args = [str(tmp_path / a) if a == "missing" else a for a in args]
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.skipif(importlib.util.find_spec("jax") is None,
                    reason="jax is not installed (the GPU machine's image has it; CI's does not)")
def test_gpu_check_on_jax_without_tensorflow_measures_synthetic_batches_and_says_so(tmp_path):
    """The GPU machine has JAX and no TensorFlow: TensorFlow is made unimportable here too."""
    blocker = tmp_path / "blocker"
    (blocker / "tensorflow").mkdir(parents=True)
    (blocker / "tensorflow" / "__init__.py").write_text("raise ImportError('no TensorFlow on this machine')\n")
    path = os.pathsep.join([str(blocker), os.environ.get("PYTHONPATH", "")])
    res = _check("--cases", "res-cp:32:seed", *TINY, "--crops", tmp_path,
                 env_extra={"KERAS_BACKEND": "jax", "PYTHONPATH": path})
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(res.stdout)
    assert report["backend"] == "jax" and "tensorflow" not in report
    assert [(c["precision"], c["replicas"], c["finite"]) for c in report["cases"]] == [
        ("float32", 1, True), ("mixed_float16", 1, True)]
    assert all(c["synthetic_img_s"] > 0 and "crops_img_s" not in c for c in report["cases"])
    assert any("tf.data" in reason for reason in report["not_measured"])
