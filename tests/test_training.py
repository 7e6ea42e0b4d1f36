"""Training stage on real crops: run directory, export, resume, errors."""
import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import TINY, run_cli
from utils.run_io import PROJECT_ROOT



def history(run_dir):
    with open(run_dir / "history.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_help_lists_the_seed_flags():
    res = run_cli("train_classifier.py", "--help")
    assert res.returncode == 0
    for flag in ["net_type", "--image_size", "--batch_size", "--hidden_size", "--decay_step", "--img_morethan",
                 "--name", "--L2", "--datadir", "--preset", "--loss", "--epochs", "--seed", "--mixed-precision",
                 "--jit", "--val_split"]:
        assert flag in res.stdout, flag


def test_clear_errors_for_unusable_crops(tmp_path, pubfig_crops):
    res = run_cli("train_classifier.py", *TINY, "--datadir", tmp_path / "missing", "--runs-dir", tmp_path)
    assert res.returncode == 2 and "not found" in res.stderr
    (tmp_path / "raw" / "a").mkdir(parents=True)
    res = run_cli("train_classifier.py", *TINY, "--datadir", tmp_path / "raw", "--runs-dir", tmp_path)
    assert res.returncode == 2 and "preprocess.json" in res.stderr
    res = run_cli("train_classifier.py", *TINY, "--img_morethan", "1000", "--datadir", pubfig_crops,
                  "--runs-dir", tmp_path)
    assert res.returncode == 2 and "at least 2" in res.stderr
    res = run_cli("train_classifier.py", *TINY, "--image_size", "256", "--datadir", pubfig_crops,
                  "--runs-dir", tmp_path)
    assert res.returncode == 2 and "larger than the crops" in res.stderr


def test_short_training_learns_and_exports_matching_models(tmp_path, pubfig_crops):
    import keras
    import tensorflow as tf

    res = run_cli("train_classifier.py", *TINY, "--epochs", "6", "--datadir", pubfig_crops, "--runs-dir", tmp_path,
                  "--name", "tiny", timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    run = tmp_path / "tiny"
    for name in ["config.json", "classes.txt", "history.csv", "model.json", "embedding.keras", "saved_model",
                 "checkpoints/best.keras", "checkpoints/last.keras", "logs"]:
        assert (run / name).exists(), name
    assert not (run / "backup").exists()
    rows = history(run)
    assert [int(r["epoch"]) for r in rows] == list(range(6))
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"]), rows
    classes = (run / "classes.txt").read_text().splitlines()
    assert len(classes) == 10
    assert float(rows[-1]["val_top1"]) > 1.5 / len(classes), rows  # well above chance (10 %)

    config = json.loads((run / "config.json").read_text())
    assert config["recipe"]["net_type"] == "resnet18" and config["dataset"]["identities"] == 10
    assert config["preprocess"]["settings"]["align"]["mode"] == "margin"
    info = json.loads((run / "model.json").read_text())
    assert info["input_size"] == 32 and info["alignment"] == {"mode": "margin", "image_size": 182, "margin": 0.5}

    crops = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    model = keras.models.load_model(run / "embedding.keras", safe_mode=True)
    raw = np.asarray(model(crops.astype("float32"), training=False))
    expected = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    served = tf.saved_model.load(str(run / "saved_model")).signatures["serving_default"]
    out = served(tf.constant(crops))
    got = next(iter(out.values())).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    from utils.training import load_checkpoint

    last = load_checkpoint(run / "checkpoints" / "last.keras")
    backbone = last.get_layer("resnet18")
    np.testing.assert_allclose(np.asarray(backbone(crops.astype("float32"), training=False)), raw, atol=1e-5)

    again = run_cli("train_classifier.py", *TINY, "--epochs", "6", "--datadir", pubfig_crops,
                    "--runs-dir", tmp_path, "--name", "tiny")
    assert again.returncode == 2 and "already complete" in again.stderr


@pytest.mark.parametrize("loss", ["center", "cosface", "arcface", "triplet"])
def test_every_loss_trains_an_epoch(tmp_path, pubfig_crops, loss):
    extra = ["--margin-scale", "16", "--margin-m", "0.2"] if loss in ("arcface", "cosface") else []
    res = run_cli("train_classifier.py", *TINY, "--loss", loss, *extra, "--epochs", "1", "--datadir", pubfig_crops,
                  "--runs-dir", tmp_path, "--name", loss, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / loss / "model.json").exists()
    assert np.isfinite(float(history(tmp_path / loss)[0]["loss"]))


def test_killed_training_resumes_at_the_next_epoch(tmp_path, pubfig_crops):
    args = [sys.executable, str(PROJECT_ROOT / "train_classifier.py"), *TINY, "--epochs", "3", "--datadir",
            str(pubfig_crops), "--runs-dir", str(tmp_path), "--name", "resume"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.Popen(args, cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    run = tmp_path / "resume"
    deadline = time.time() + 600
    while time.time() < deadline and not ((run / "history.csv").exists() and len(history(run)) >= 1):
        time.sleep(0.2)
    time.sleep(1.0)  # let the epoch-end backup finish writing
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(history(run)) == 1 and not (run / "model.json").exists()

    res = subprocess.run(args, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Epoch 1/3" not in res.stdout and "Epoch 2/3" in res.stdout
    assert [int(r["epoch"]) for r in history(run)] == [0, 1, 2]
    assert (run / "model.json").exists()


def test_one_train_step_on_the_torch_backend(tmp_path):
    pytest.importorskip("torch", reason="torch not installed: the torch-backend check needs it")
    code = ("import numpy as np, keras\n"
            "from models import build_backbone\n"
            "from models.heads import SoftmaxHead\n"
            "b = build_backbone('resnet18', 32)\n"
            "x = keras.Input((32, 32, 3)); m = keras.Model(x, SoftmaxHead(3)(b(x)))\n"
            "m.compile('sgd', keras.losses.SparseCategoricalCrossentropy(from_logits=True))\n"
            "h = m.fit(np.random.rand(8, 32, 32, 3) * 255, np.arange(8) % 3, epochs=1, verbose=0)\n"
            "assert keras.backend.backend() == 'torch' and np.isfinite(h.history['loss'][0])\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True,
                         env=dict(os.environ, KERAS_BACKEND="torch"), timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]


def test_truncated_model_files_give_a_clear_error(tiny_run, tmp_path):
    """A checkpoint or exported model cut short (crash, full disk) is named as such, not a deep traceback."""
    import shutil

    from utils.training import TrainingError, load_checkpoint

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    for name in ("checkpoints/last.keras", "embedding.keras"):
        data = (run / name).read_bytes()
        (run / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(TrainingError, match=r"last\.keras is not a complete \.keras archive"):
        load_checkpoint(run / "checkpoints" / "last.keras")
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("1\t1\n")
    res = run_cli("validate_on_lfw.py", "--model", run, "--lfw-dir", tmp_path, "--pairs", pairs, "--no-progress")
    assert res.returncode == 2 and "embedding.keras is not a complete .keras archive" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
