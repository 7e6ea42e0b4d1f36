"""benchmarks/gpu_check.py dry-run on the CPU, so the script a GPU machine runs first cannot rot."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import PROJECT_ROOT

# Tiny step counts at 32 px: the same code paths, small enough for a CPU, where float16 is
# emulated and slow. The ArcFace case (labels as an input) on 2 replicas; the seed's on one device.
TINY = ("--steps", "2", "--warmup", "1", "--batch-size", "4", "--identities", "20")


def _check(*args, env_extra: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, str(PROJECT_ROOT / "benchmarks" / "gpu_check.py"), *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=timeout)


def test_gpu_check_runs_every_case_on_two_cpu_replicas_from_synthetic_batches_and_crops(tmp_path, pubfig_crops):
    out = tmp_path / "check.json"
    res = _check("--cases", "iresnet18:32:arcface", *TINY, "--batch-size", "2", "--crops", pubfig_crops, "--out", out,
                 env_extra={"ICYFACE_CPU_REPLICAS": "2"})
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(out.read_text())
    assert json.loads(res.stdout) == report
    assert report["backend"] == "tensorflow" and report["accelerated"] is False
    assert len(report["devices"]) == 2 and report["not_measured"] == []
    got = {(c["model"], c["loss_function"], c["precision"], c["replicas"]) for c in report["cases"]}
    assert got == {("iresnet18", "arcface", p, r) for p in ("float32", "mixed_float16") for r in (1, 2)}
    for case in report["cases"]:
        assert case["batch"] == 2 * case["replicas"]  # --batch-size is per device
        assert case["finite"] and case["synthetic_img_s"] > 0 and case["crops_img_s"] > 0
        assert case["ratio"] == pytest.approx(case["crops_img_s"] / case["synthetic_img_s"], rel=0.02)


def test_gpu_check_says_what_it_did_not_measure_and_rejects_bad_cases(tmp_path):
    res = _check("--cases", "res-cp:32:seed", *TINY, "--out", tmp_path / "c.json")
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(res.stdout)
    assert [(c["model"], c["loss_function"], c["precision"], c["replicas"], c["finite"]) for c in report["cases"]] == [
        ("res-cp", "softmax", "float32", 1, True), ("res-cp", "softmax", "mixed_float16", 1, True)]
    assert all("crops_img_s" not in c for c in report["cases"])
    assert report["not_measured"] == ["crops figures: no --crops given", "several devices: one device found"]

    res = _check("--cases", "res-cp:64")
    assert res.returncode == 2 and "not model:input_size:preset" in res.stderr
    res = _check("--cases", "res-cp:64:nosuchpreset")
    assert res.returncode == 2 and "no experiment 'nosuchpreset'" in res.stderr
    res = _check("--precisions", "float64")
    assert res.returncode == 2 and "--precisions" in res.stderr
    res = _check("--crops", tmp_path / "missing")
    assert res.returncode == 2 and "--crops" in res.stderr


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
