"""Training stage on real crops: run directory, export, resume, errors."""
import csv
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import TINY, TINY_RUN, run_cli, run_main
from utils.core.run_io import PROJECT_ROOT, TMP_PREFIX

ANSI = re.compile(r"\x1b\[[0-9;]*m")
PROGRESS = re.compile(r"(?<!Epoch )\b(\d+)/(\d+) ")  # Keras' progress bar: " 3/17 ━━━━..."


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


def test_seed_preset_runs_the_seeds_recipe(tmp_path, pubfig_few):
    """`train_classifier.py res-cp` with nothing else set trains the seed's recipe: batch 32,
    Momentum(0.01, 0.9) x0.1 every 10 epochs, L2 5e-5 (tflearn's 1e-4 * sum(w^2) / 2) on the
    residual convs, pixels / 255 inside the model, tflearn's softmax init, sklearn's split."""
    import keras

    from utils.training.schedule import StepOrCosineSchedule
    from utils.verify.embeddings import load_embedding_model

    res = run_main("train_classifier.py", "res-cp", "--image_size", "32", "--img_morethan", "5", "--epochs", "1",
                   "--datadir", pubfig_few, "--runs-dir", tmp_path, "--name", "seed")
    assert res.returncode == 0, res.stderr[-3000:]
    config = json.loads((tmp_path / "seed" / "config.json").read_text())
    recipe = config["recipe"]
    assert {k: recipe[k] for k in ("net_type", "batch_size", "lr", "momentum", "schedule", "decay_step", "weight_decay",
                                   "normalization", "split", "classifier_init", "loss", "img_morethan",
                                   "val_split", "flip", "crop_jitter", "brightness", "contrast")} == dict(
        net_type="res-cp", batch_size=32, lr=0.01, momentum=0.9, schedule="step", decay_step=10, weight_decay=5e-5,
        normalization="unit", split="seed", classifier_init="tflearn", loss="softmax", img_morethan=5,
        val_split=0.1, flip=False, crop_jitter=0.0, brightness=0.0, contrast=0.0)
    images = config["dataset"]["images"]
    assert config["dataset"]["holdout_images"] == -(-images // 10)  # sklearn: ceil(0.1 * n)
    model, info = load_embedding_model(tmp_path / "seed")
    assert info["normalization"] == "x / 255, inside the model"
    normalize = keras.Model(model.input, model.get_layer("normalize").output)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(normalize(np.full((1, 32, 32, 3), 255.0, "float32"))),
                               1.0, rtol=1e-6)
    # A fresh process (as validate_on_lfw.py) loads it too: res-cp's own layer must get registered.
    code = ("import sys; from utils.verify.embeddings import load_embedding_model; "
            "print(load_embedding_model(sys.argv[1])[0].name)")
    loaded = subprocess.run([sys.executable, "-c", code, str(tmp_path / "seed")], cwd=PROJECT_ROOT, text=True,
                            capture_output=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert loaded.returncode == 0 and loaded.stdout.strip() == "res_cp", loaded.stderr[-2000:]
    schedule = StepOrCosineSchedule(0.01, 100, 20, 0, "step", 10)
    rates = [float(schedule(step)) for step in (0, 999, 1000, 1999, 2000)]
    np.testing.assert_allclose(rates, [0.01, 0.01, 0.001, 0.001, 0.0001], rtol=1e-6)


def test_clear_errors_for_unusable_crops(tmp_path, pubfig_crops):
    res = run_main("train_classifier.py", *TINY, "--datadir", tmp_path / "missing", "--runs-dir", tmp_path)
    assert res.returncode == 2 and "not found" in res.stderr
    (tmp_path / "raw" / "a").mkdir(parents=True)
    res = run_main("train_classifier.py", *TINY, "--datadir", tmp_path / "raw", "--runs-dir", tmp_path)
    assert res.returncode == 2 and "preprocess.json" in res.stderr
    (tmp_path / "raw" / "preprocess-1-of-2.json").write_text("{}")
    res = run_main("train_classifier.py", *TINY, "--datadir", tmp_path / "raw", "--runs-dir", tmp_path)
    assert res.returncode == 2 and "preprocess_data.py --merge" in res.stderr
    (tmp_path / "raw" / "preprocess.json").write_text('{"status": "running", "settings": {}}')
    res = run_main("train_classifier.py", *TINY, "--datadir", tmp_path / "raw", "--runs-dir", tmp_path)
    assert res.returncode == 2 and "has not finished" in res.stderr
    res = run_main("train_classifier.py", *TINY, "--img_morethan", "1000", "--datadir", pubfig_crops,
                   "--runs-dir", tmp_path)
    assert res.returncode == 2 and "at least 2" in res.stderr
    res = run_main("train_classifier.py", *TINY, "--image_size", "256", "--datadir", pubfig_crops,
                   "--runs-dir", tmp_path)
    assert res.returncode == 2 and "larger than the crops" in res.stderr
    # Settings out of range are refused before a run folder exists (nothing to clean up).
    for flags, message in ((["--greyscale", "1.5"], "--greyscale must be in [0, 1]"),
                           (["--ema", "1"], "--ema must be in [0, 1)"),
                           (["--mixed-precision", "--bfloat16"], "two compute types: give one"),
                           (["--loss", "cosface", "--label-smoothing", "1"], "label_smoothing must be in [0, 1)")):
        res = run_main("train_classifier.py", *TINY, *flags, "--datadir", pubfig_crops, "--runs-dir",
                       tmp_path / "runs", "--name", "bad")
        assert res.returncode == 2 and message in res.stderr, res.stderr[-2000:]
        assert not (tmp_path / "runs" / "bad").exists()


def test_short_training_learns_and_exports_matching_models(tmp_path, pubfig_crops):
    """MobileFaceNet (the deployed family; TINY's ResNet-18 learns more slowly) for 8 epochs: its
    holdout accuracy stays at chance until BatchNorm's moving statistics catch up (epoch 6 here)."""
    import keras
    import tensorflow as tf

    args = ["mobilefacenet", *TINY[1:], "--epochs", "8", "--datadir", pubfig_crops, "--runs-dir", tmp_path,
            "--name", "tiny"]
    res = run_main("train_classifier.py", *args)
    assert res.returncode == 0, res.stderr[-3000:]
    run = tmp_path / "tiny"
    for name in ["config.json", "classes.txt", "history.csv", "model.json", "embedding.keras", "saved_model",
                 "checkpoints/best.keras", "checkpoints/last.keras", "logs"]:
        assert (run / name).exists(), name
    assert not (run / "backup").exists()
    rows = history(run)
    assert [int(r["epoch"]) for r in rows] == list(range(8))
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"]), rows
    classes = (run / "classes.txt").read_text().splitlines()
    assert len(classes) == 10
    assert float(rows[-1]["val_top1"]) > 1.5 / len(classes), rows  # well above chance (10 %)

    config = json.loads((run / "config.json").read_text())
    assert config["recipe"]["net_type"] == "mobilefacenet" and config["dataset"]["identities"] == 10
    assert config["preprocess"]["settings"]["align"]["mode"] == "margin"
    info = json.loads((run / "model.json").read_text())
    assert info["input_size"] == 32 and info["alignment"] == {"mode": "margin", "crop_size": 182, "margin": 0.5,
                                                               "geometry": "seed"}

    crops = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    model = keras.models.load_model(run / "embedding.keras", safe_mode=True)
    raw = np.asarray(model(crops.astype("float32"), training=False))
    expected = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    served = tf.saved_model.load(str(run / "saved_model")).signatures["serving_default"]
    out = served(tf.constant(crops))
    got = next(iter(out.values())).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    from utils.training.export import load_checkpoint

    last = load_checkpoint(run / "checkpoints" / "last.keras")
    backbone = last.get_layer("mobilefacenet")
    np.testing.assert_allclose(np.asarray(backbone(crops.astype("float32"), training=False)), raw, atol=1e-5)

    again = run_main("train_classifier.py", *args)
    assert again.returncode == 2 and "already complete" in again.stderr


@pytest.mark.parametrize("loss", ["center", "cosface", "arcface", "triplet"])
def test_every_loss_trains_an_epoch(tmp_path, pubfig_few, loss):
    extra = ["--margin-scale", "16", "--margin-m", "0.2"] if loss in ("arcface", "cosface") else []
    res = run_main("train_classifier.py", *TINY, "--loss", loss, *extra, "--epochs", "1", "--datadir", pubfig_few,
                   "--runs-dir", tmp_path, "--name", loss)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / loss / "model.json").exists()
    assert np.isfinite(float(history(tmp_path / loss)[0]["loss"]))


@pytest.mark.parametrize("flag, compute", [("--mixed-precision", "float16"), ("--bfloat16", "bfloat16")])
def test_mixed_precision_trains_a_margin_loss_and_exports_float32(tmp_path, pubfig_few, flag, compute):
    """--mixed-precision (float16 compute, what a GPU run uses) and --bfloat16 (for AMX CPUs) on
    the CPU: ArcFace at scale 64 trains an epoch (4 steps) with finite losses; the exported embedding
    model computes in float32 with the trained weights (within cosine 0.999 of the checkpoint's
    reduced-precision backbone, not equal); the caller's dtype policy is float32 again after."""
    import keras

    # 8 crops of each of the 10 people: reduced-precision convolutions may be emulated (slow) on a CPU.
    res = run_main("train_classifier.py", *TINY, "--epochs", "1", "--loss", "arcface", "--margin-scale", "64",
                   flag, "--datadir", pubfig_few, "--runs-dir", tmp_path, "--name", "mp")
    assert res.returncode == 0, res.stderr[-3000:]
    assert keras.mixed_precision.global_policy().name == "float32"
    run = tmp_path / "mp"
    assert json.loads((run / "config.json").read_text())["recipe"][flag.lstrip("-").replace("-", "_")] is True
    assert all(np.isfinite(float(r["loss"])) for r in history(run))
    pixels = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3)).astype("float32")
    exported = keras.models.load_model(run / "embedding.keras", safe_mode=True)
    assert exported.compute_dtype == "float32"
    got = keras.ops.convert_to_numpy(exported(pixels, training=False))
    assert got.dtype == np.float32 and np.isfinite(got).all()
    from utils.training.export import load_checkpoint

    trained = load_checkpoint(run / "checkpoints" / "last.keras").get_layer("resnet18")
    assert {layer.compute_dtype for layer in trained.layers if isinstance(layer, keras.layers.Conv2D)} == {compute}
    half = keras.ops.convert_to_numpy(trained(pixels, training=False)).astype(np.float32)
    cosine = np.sum(got * half, axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(half, axis=1)
    assert cosine.min() > 0.999 and not np.array_equal(got, half), cosine  # same weights, float32 arithmetic


def _start(args):
    """The training CLI in its own process group, its output (progress bar included) collected."""
    proc = subprocess.Popen([sys.executable, str(PROJECT_ROOT / "train_classifier.py"), *map(str, args)],
                            cwd=PROJECT_ROOT, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    chunks = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: proc.stdout.read1(4096), b"")), daemon=True)
    reader.start()
    return proc, chunks


def _backup_position(run) -> tuple[int, int]:
    meta = run / "backup" / "training_metadata.json"
    if not meta.exists():
        return 0, 0
    position = json.loads(meta.read_text())
    return position["epoch"], position["step"]


def _output(chunks) -> str:
    return ANSI.sub("", b"".join(chunks[:]).decode(errors="replace"))  # a copy: the reader appends


def _steps_shown(text: str, epoch_header: str) -> list[tuple[int, int]]:
    """(step, of) pairs of the progress bar after `epoch_header` (e.g. "Epoch 2/3")."""
    return [(int(a), int(b)) for a, b in PROGRESS.findall(text.partition(epoch_header)[2])]


def _wait_until(proc, chunks, condition, what: str) -> str:
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        text = _output(chunks)
        if condition(text):
            return text
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail(f"training ended (or took 10 min) before {what}:\n{_output(chunks)[-3000:]}")


def test_stopped_or_killed_mid_epoch_resumes_at_its_step(tmp_path, pubfig_crops, tiny_run):
    """tiny_run's command under another name, backing up every 4 steps: a SIGTERM part-way
    through epoch 1 backs up that step, says how to resume and exits 75; the same command runs only
    the rest of epoch 1, then is kill -9ed in epoch 2 after the backup at step 4; the next rerun
    runs only the rest of epoch 2, with the optimizer state of the step it resumed at (iterations
    end at epochs x steps), each epoch once in history.csv, and sweeps what the killed attempt
    left, while the same command started meanwhile is refused with the first one named (one writer
    per run). A truncated backup is refused with a clear message. The run is exact: with augmentation
    and --ema on, its history.csv equals the unbroken tiny_run's (same batches, same draws, each
    epoch's means over all its steps)."""
    epochs = 2
    common = [*TINY_RUN, "--datadir", pubfig_crops, "--name", "resume", "--backup-every-steps", 4]
    args = [*common, "--runs-dir", tmp_path, "--verbose", "1"]
    run = tmp_path / "resume"

    proc, chunks = _start(args)
    _wait_until(proc, chunks, lambda t: any(2 <= s <= 8 for s, _ in _steps_shown(t, "Epoch 1/2")),
                "a few steps of epoch 1")
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=300) == 75, _output(chunks)[-3000:]
    text = _output(chunks)
    steps_per_epoch = _steps_shown(text, "Epoch 1/2")[-1][1]
    epoch, stopped_at = _backup_position(run)
    assert epoch == 0 and 2 <= stopped_at < steps_per_epoch, (epoch, stopped_at)
    assert f"stopped by SIGTERM at epoch 1, step {stopped_at} of {steps_per_epoch}" in text, text[-2000:]
    assert "rerun the same command to resume (exit 75)" in text and "Traceback" not in text
    assert not (run / "history.csv").exists() or history(run) == []
    assert not (run / "model.json").exists()

    proc, chunks = _start(args)
    text = _wait_until(proc, chunks, lambda t: _backup_position(run) == (1, 4), "the backup at epoch 2, step 4")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert {n for _, n in _steps_shown(text.partition("Epoch 2/2")[0], "Epoch 1/2")} \
        == {steps_per_epoch - stopped_at}  # only the rest of epoch 1
    assert [int(r["epoch"]) for r in history(run)] == [0]

    # A backup cut short (bad disk, a copy interrupted) is named, with what to do.
    broken = tmp_path / "broken"
    shutil.copytree(run, broken / "resume")
    weights = next((broken / "resume" / "backup").glob("*.weights.h5"))
    weights.write_bytes(weights.read_bytes()[:5000])
    res = run_main("train_classifier.py", *common, "--runs-dir", broken)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "Traceback" not in res.stderr and f"delete {broken / 'resume' / 'backup'}" in res.stderr, res.stderr
    assert weights.name in res.stderr

    # What a kill can leave mid-write: temporary files and a temporary SavedModel folder.
    (run / "checkpoints" / f"{TMP_PREFIX}x.keras").write_bytes(b"partial")
    (run / f"{TMP_PREFIX}y").mkdir()
    proc, chunks = _start(args)
    _wait_until(proc, chunks, lambda t: _steps_shown(t, "Epoch 2/2"), "a step of epoch 2")
    # One writer per run: the same command while this one trains (or exports) is refused, naming it.
    second = run_main("train_classifier.py", *args)
    assert second.returncode == 2 and "Traceback" not in second.stderr, second.stderr[-2000:]
    assert f"{run} is in use by PID {proc.pid} on {socket.gethostname()}" in second.stderr, second.stderr
    assert proc.wait(timeout=900) == 0, _output(chunks)[-3000:]
    out = _output(chunks)
    assert "Epoch 1/2" not in out and {n for _, n in _steps_shown(out, "Epoch 2/2")} == {steps_per_epoch - 4}
    assert [int(r["epoch"]) for r in history(run)] == list(range(epochs))
    from utils.training.export import load_checkpoint

    last = load_checkpoint(run / "checkpoints" / "last.keras")
    assert int(last.optimizer.iterations.numpy()) == epochs * steps_per_epoch
    for name in ["config.json", "classes.txt", "model.json", "embedding.keras", "saved_model/saved_model.pb",
                 "checkpoints/last.keras", "checkpoints/best.keras"]:
        assert (run / name).exists(), name
    assert not (run / "backup").exists() and not list(run.rglob(f"{TMP_PREFIX}*"))
    unbroken, resumed = history(tiny_run), history(run)
    assert [row.keys() for row in unbroken] == [row.keys() for row in resumed]
    for a, b in zip(unbroken, resumed):
        np.testing.assert_allclose([float(v) for v in b.values()], [float(v) for v in a.values()], rtol=1e-5,
                                   err_msg=f"{list(a)}")


def test_backup_moves_to_a_new_epoch_only_once_its_weights_are_complete(tmp_path, monkeypatch):
    """A write that fails (kill, full disk) while backing up an epoch, in the weights or in the
    metadata switch, leaves the previous epoch's backup whole and in charge."""
    import errno

    import keras

    from utils.training import callbacks

    def model():
        m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        m.compile(keras.optimizers.SGD(0.1, momentum=0.9), "mse")
        return m

    x, y = np.ones((8, 3), "float32"), np.zeros((8, 2), "float32")
    trained = model()
    backup = callbacks.AtomicBackupAndRestore(tmp_path / "backup", steps_per_epoch=2)
    trained.fit(x, y, epochs=1, batch_size=4, callbacks=[backup], verbose=0)

    def full_disk_while_writing(path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    for obj, name, failure in ((trained, "save_weights", full_disk_while_writing),
                               (callbacks, "write_json", full_disk)):
        with monkeypatch.context() as patch:
            patch.setattr(obj, name, failure)
            with pytest.raises(OSError):  # a fit resuming from the backup begins at its epoch
                trained.fit(x, y, epochs=2, initial_epoch=backup.restored_epoch(), batch_size=4, callbacks=[backup],
                            verbose=0)
        assert backup.restored_epoch() == 1 and not list(tmp_path.rglob(f"{TMP_PREFIX}*"))
        restored = model()
        callback = callbacks.AtomicBackupAndRestore(tmp_path / "backup", steps_per_epoch=2)
        callback.set_model(restored)
        callback.on_train_begin()
        assert int(restored.optimizer.iterations.numpy()) == 2  # epoch 1's two steps

    trained.fit(x, y, epochs=2, initial_epoch=backup.restored_epoch(), batch_size=4, callbacks=[backup], verbose=0)
    assert backup.restored_epoch() == 2 and len(list((tmp_path / "backup").glob("*.weights.h5"))) == 1


def test_a_fit_that_does_not_begin_at_the_backups_epoch_is_refused(tmp_path):
    """The backup restores the weights and the optimizer, not fit()'s epoch: a fit resuming from
    it begins at the backup's epoch (initial_epoch, as fit_from_backup passes it) or is refused,
    instead of training the finished epochs again."""
    import keras

    from utils.training.callbacks import AtomicBackupAndRestore
    from utils.training.config import TrainingError

    x, y = np.ones((8, 3), "float32"), np.zeros((8, 2), "float32")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(keras.optimizers.SGD(0.1), "mse")
    model.fit(x, y, epochs=1, batch_size=4, callbacks=[AtomicBackupAndRestore(tmp_path, 2)], verbose=0)
    with pytest.raises(TrainingError, match=r"fit\(\) began at epoch 1 but the backup in .* resumes at epoch 2"):
        model.fit(x, y, epochs=2, batch_size=4, callbacks=[AtomicBackupAndRestore(tmp_path, 2)], verbose=0)
    history = model.fit(x, y, epochs=2, initial_epoch=1, batch_size=4, callbacks=[AtomicBackupAndRestore(tmp_path, 2)],
                        verbose=0)
    assert len(history.history["loss"]) == 1 and AtomicBackupAndRestore(tmp_path, 2).restored_position() == (2, 0)


def test_ema_weights_are_what_an_epoch_end_sees_and_survive_a_resume(tmp_path):
    """--ema: from each epoch's end the model holds the moving average of the raw weights the
    steps produced (checked against numpy), and a run stopped after epoch 1 and resumed from
    its backup ends with exactly the weights of an uninterrupted run."""
    import keras

    from utils.training.callbacks import AtomicBackupAndRestore, EMAWeights

    x = np.random.default_rng(0).normal(size=(8, 3)).astype("float32")
    y = np.random.default_rng(1).normal(size=(8, 2)).astype("float32")
    momentum = 0.6

    def fit(backup_dir, epochs, resumed=False, stop_after=None, record=None):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        model.compile(keras.optimizers.SGD(0.1, momentum=0.9, use_ema=True, ema_momentum=momentum), "mse")
        seen = []

        class Watch(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                seen.append([w.copy() for w in self.model.get_weights()])  # the raw weights, mid-epoch

            def on_epoch_end(self, epoch, logs=None):
                if record is not None:
                    record.append([w.copy() for w in self.model.get_weights()])
                if stop_after == epoch + 1:
                    self.model.stop_training = True

        backup = AtomicBackupAndRestore(backup_dir, steps_per_epoch=2)
        model.fit(x, y, epochs=epochs, initial_epoch=backup.restored_epoch(), batch_size=4, shuffle=False,
                  verbose=0, callbacks=[EMAWeights(resumed_at_epoch_end=resumed), Watch(), backup])
        return model, seen

    at_epoch_end = []
    whole, steps = fit(tmp_path / "a", 2, record=at_epoch_end)
    average = [np.zeros_like(w) for w in steps[0]]
    for i, raw in enumerate(steps):  # Keras' EMA: the first step's weights, then momentum per step
        average = [w if i == 0 else momentum * a + (1 - momentum) * w for a, w in zip(average, raw)]
        if i == 1:  # epoch 1 ends after two steps
            for seen, expected in zip(at_epoch_end[0], average):
                np.testing.assert_allclose(seen, expected, rtol=1e-5)
    for final, expected, raw in zip(whole.get_weights(), average, steps[-1]):
        np.testing.assert_allclose(final, expected, rtol=1e-5)
        assert not np.allclose(final, raw)

    fit(tmp_path / "b", 2, stop_after=1)
    resumed, _ = fit(tmp_path / "b", 2, resumed=True)
    for a, b in zip(whole.get_weights(), resumed.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_a_run_stopped_or_killed_mid_epoch_resumes_at_its_step_with_the_same_weights(tmp_path):
    """fit_from_backup on a stream addressed by step: a SIGTERM honoured at epoch 2, step 2 (the
    backup written at that step, StopRequested raised) and a kill after the mid-epoch backup of
    --backup-every-steps 3 both resume at their step, not at the epoch's start: the optimizer's
    iterations continue, each epoch ends once, and (with momentum and --ema) the weights end
    exactly as an unbroken run's, and so do the interrupted epoch's logged means (loss, mae): the
    backup carries the running metrics over."""
    import keras
    import tensorflow as tf

    from utils.core.stop_requests import StopFlag, StopRequested
    from utils.training.callbacks import AtomicBackupAndRestore, EMAWeights
    from utils.training.train import fit_from_backup

    steps, epochs, batch = 4, 3, 2
    x = np.random.default_rng(0).normal(size=(16, 3)).astype("float32")
    y = np.random.default_rng(1).normal(size=(16, 2)).astype("float32")

    def train_from(step):  # element k of the run's stream is sample k % 16, whatever the start
        return tf.data.Dataset.range(step * batch, 10**6).map(lambda k: (tf.gather(x, k % 16),
                                                                          tf.gather(y, k % 16))).batch(batch)

    class Events(keras.callbacks.Callback):
        def __init__(self, stop=None, stop_at=None, kill_at=None):
            super().__init__()
            self.stop, self.stop_at, self.kill_at, self.ended, self.logs = stop, stop_at, kill_at, [], []

        def on_train_batch_end(self, batch, logs=None):
            done = int(self.model.optimizer.iterations.numpy())
            if done == self.stop_at:
                self.stop.signal_name = "SIGTERM"  # what the handler does
            if done == self.kill_at:
                raise RuntimeError("killed")

        def on_epoch_end(self, epoch, logs=None):
            self.ended.append(epoch)
            self.logs.append((logs["loss"], logs["mae"]))

    def attempt(backup_dir, every=0, stop_at=None, kill_at=None):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        model.compile(keras.optimizers.SGD(0.05, momentum=0.9, use_ema=True, ema_momentum=0.5), "mse",
                      metrics=["mae"])
        stop = StopFlag()
        backup = AtomicBackupAndRestore(backup_dir, steps, every, stop)
        epoch, step = backup.restored_position()
        events = Events(stop, stop_at, kill_at)
        fit_from_backup(model, train_from, steps, epochs,
                        [EMAWeights(epoch > 0 and step == 0, epochs), events, backup], backup, verbose=0)
        return model, events.ended, events.logs

    whole, ended, logged = attempt(tmp_path / "whole")
    assert ended == [0, 1, 2] and int(whole.optimizer.iterations.numpy()) == epochs * steps

    with pytest.raises(StopRequested, match="epoch 2, step 2 of 4"):
        attempt(tmp_path / "stopped", stop_at=steps + 2)
    assert AtomicBackupAndRestore(tmp_path / "stopped", steps).restored_position() == (1, 2)
    with pytest.raises(RuntimeError, match="killed"):
        attempt(tmp_path / "killed", every=3, kill_at=steps + 4)  # after the backup at epoch 2, step 3
    assert AtomicBackupAndRestore(tmp_path / "killed", steps).restored_position() == (1, 3)

    for name in ("stopped", "killed"):
        resumed, ended, resumed_logs = attempt(tmp_path / name, every=3)
        assert ended == [1, 2], name
        np.testing.assert_allclose(resumed_logs, logged[1:], rtol=1e-6, err_msg=name)
        assert int(resumed.optimizer.iterations.numpy()) == epochs * steps, name
        for a, b in zip(whole.get_weights(), resumed.get_weights()):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        assert AtomicBackupAndRestore(tmp_path / name, steps).restored_position() == (epochs, 0)


def _limited_file_size(limit):
    """For a child process: files larger than `limit` bytes cannot be written (EFBIG, as on a
    full disk) instead of killing the process with SIGXFSZ."""
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_full_disk_and_unwritable_runs_dir_fail_cleanly(tmp_path, pubfig_crops):
    """A write that fails part-way (here: 2 MB per file, far below a checkpoint) is one
    'error:' line and leaves no partial file under a real name; so is a runs dir that is a file."""
    args = [*TINY, "--epochs", "1", "--datadir", pubfig_crops, "--runs-dir", tmp_path, "--name", "full"]
    res = subprocess.run([sys.executable, str(PROJECT_ROOT / "train_classifier.py"), *map(str, args)],
                         cwd=PROJECT_ROOT, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), capture_output=True,
                         text=True, timeout=600, preexec_fn=_limited_file_size(2_000_000))
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-3000:]
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "File too large" in errors[0] and "rerun the same command" in errors[0], res.stderr
    run = tmp_path / "full"
    assert not list(run.rglob(f"{TMP_PREFIX}*")) and not (run / "model.json").exists()
    for path in run.rglob("*"):  # whatever was written is complete: the limit was never reached
        assert not path.is_file() or path.stat().st_size < 2_000_000, path
    assert not list(run.rglob("*.keras")) and not list(run.rglob("*.h5"))

    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    res = run_main("train_classifier.py", *TINY, "--datadir", pubfig_crops, "--runs-dir", not_a_dir, "--name", "x")
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert "error: cannot create the run directory" in res.stderr and "Not a directory" in res.stderr
    res = run_main("train_classifier.py", *TINY, "--datadir", pubfig_crops, "--runs-dir", tmp_path, "--name", "")
    assert res.returncode == 2 and "must be a single folder name" in res.stderr, res.stderr


@pytest.mark.parametrize("name", ["", ".", "..", "../outside", "a/b", "a\\b", "nul\0"])
def test_run_name_must_be_one_folder_name(tmp_path, name):
    from utils.training.config import TrainConfig, TrainingError
    from utils.training.run_dir import create_run_dir

    with pytest.raises(TrainingError, match="must be a single folder name"):
        create_run_dir(TrainConfig(net_type="resnet18", data_dir=str(tmp_path), name=name,
                                    runs_dir=str(tmp_path / "runs")))
    assert not (tmp_path / "runs").exists() and not (tmp_path / "outside").exists()


def test_unreadable_crops_are_skipped_and_counted(tmp_path, pubfig_few):
    """Truncated, garbage and empty crop files, in training and holdout: the run trains,
    says how many it skipped (exactly) and records it in history.csv and model.json."""
    from utils.preprocess.input_pipeline import list_crops, random_split

    crops = tmp_path / "crops"
    shutil.copytree(pubfig_few, crops)
    files = list_crops(crops, 5)
    train_idx, held_idx = random_split(files.labels, 0.2, seed=0)  # TINY's --val_split, the seed preset's split
    train = [Path(files.paths[i]) for i in train_idx[[0, 7, -1]]]
    held = [Path(files.paths[i]) for i in held_idx[[0, -1]]]
    for path, damage in zip(train + held, ["truncate", "garbage", "empty", "garbage", "truncate"]):
        data = path.read_bytes()
        path.write_bytes({"truncate": data[: len(data) // 2], "garbage": os.urandom(len(data)), "empty": b""}[damage])

    res = run_main("train_classifier.py", *TINY, "--epochs", "1", "--datadir", crops, "--runs-dir", tmp_path,
                   "--name", "skips")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "epoch 1 | skipped 5 unreadable crops (3 training, 2 holdout)" in res.stdout, res.stdout
    run = tmp_path / "skips"
    assert [int(float(r["skipped_crops"])) for r in history(run)] == [5]
    assert json.loads((run / "model.json").read_text())["skipped_crops"] == 5

    for path in files.paths:  # nothing left to learn from: an error, not a model trained on nothing
        Path(path).write_bytes(b"not an image")
    res = run_main("train_classifier.py", *TINY, "--epochs", "1", "--datadir", crops, "--runs-dir", tmp_path,
                   "--name", "nothing")
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert f"error: too few crops in {crops} can be read: {len(train_idx)} of {len(train_idx)} training" in res.stderr
    assert not (tmp_path / "nothing" / "model.json").exists()


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

    from utils.training.config import TrainingError
    from utils.training.export import load_checkpoint

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    for name in ("checkpoints/last.keras", "embedding.keras"):
        data = (run / name).read_bytes()
        (run / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(TrainingError, match=r"last\.keras is not a complete \.keras archive"):
        load_checkpoint(run / "checkpoints" / "last.keras")
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("1\t1\n")
    res = run_main("validate_on_lfw.py", "--model", run, "--lfw-dir", tmp_path, "--pairs", pairs, "--no-progress")
    assert res.returncode == 2 and "embedding.keras is not a complete .keras archive" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr


def test_crops_of_another_geometry_than_the_preset_are_flagged(tmp_path, capsys):
    """Square 'margin' crops made before the seed geometry are not the seed's margin crops."""
    from PIL import Image

    from utils.training.config import TrainConfig
    from utils.training.data import load_crops

    for identity in ("a", "b"):
        (tmp_path / identity).mkdir()
        for k in range(3):
            Image.new("RGB", (182, 182)).save(tmp_path / identity / f"{k}.png")
    settings = {"mode": "margin", "image_size": 182, "margin": 0.5}
    for align, warned in ((settings, True), ({**settings, "geometry": "seed"}, False)):
        (tmp_path / "preprocess.json").write_text(json.dumps({"status": "complete", "settings": {"align": align}}))
        load_crops(TrainConfig(net_type="res-cp", data_dir=str(tmp_path), name="x", img_morethan=0, batch_size=2))
        out = capsys.readouterr().out
        assert ("expects --align margin (seed geometry) crops" in out and "holds margin (legacy geometry)" in out) \
            == warned, out
    # Part crops: the part matters too (the eye on the left is not the nose tip).
    part = {"mode": "part", "crop_size": 182, "margin": 1.2}
    for k, warned in ((0, True), (2, False)):
        (tmp_path / "preprocess.json").write_text(json.dumps({"status": "complete",
                                                               "settings": {"align": {**part, "part": k}}}))
        load_crops(TrainConfig(net_type="res-cp", data_dir=str(tmp_path), name="x", img_morethan=0, batch_size=2,
                               align="part", crop_size=182, part=2))
        out = capsys.readouterr().out
        assert ("expects --align part 2 crops" in out and "holds part 0 crops" in out) == warned, out


def test_best_checkpoint_holds_the_best_epochs_weights_and_last_the_latest(tmp_path):
    """best.keras is replaced only when the monitored value improves (a copy of that epoch's
    last.keras); last.keras follows every epoch."""
    import keras

    from utils.training.callbacks import Checkpoints

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    checkpoints = Checkpoints(tmp_path, "val_loss")
    checkpoints.set_model(model)
    kernels = {}
    for epoch, val_loss in enumerate([1.0, 2.0, 0.5, float("nan"), 0.7]):
        model.layers[0].kernel.assign(np.full((3, 2), epoch, np.float32))
        kernels[epoch] = np.asarray(model.layers[0].kernel)
        checkpoints.on_epoch_end(epoch, {"val_loss": val_loss})

    def kernel(name):
        return np.asarray(keras.models.load_model(tmp_path / name).layers[0].kernel)

    np.testing.assert_array_equal(kernel("best.keras"), kernels[2])
    np.testing.assert_array_equal(kernel("last.keras"), kernels[4])
    assert checkpoints.best == 0.5 and sorted(p.name for p in tmp_path.iterdir()) == ["best.keras", "last.keras"]
