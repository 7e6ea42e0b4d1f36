"""Multi-host training: two worker processes on this machine form a TF_CONFIG cluster."""
import json
import os
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import TINY
from utils.core.run_io import PROJECT_ROOT


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_two_workers_train_one_run_and_only_the_chief_writes_it(tmp_path, pubfig_few):
    from utils.verify.embeddings import load_keras_model

    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    runs = tmp_path / "runs"
    args = [*TINY, "--epochs", "1", "--datadir", pubfig_few, "--runs-dir", runs, "--name", "shared"]
    procs, scratch_roots = [], []
    for index in range(2):
        scratch_roots.append(tmp_path / f"tmp-{index}")  # each host's own temporary folder
        scratch_roots[-1].mkdir()
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", TMPDIR=str(scratch_roots[-1]),
                   TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        procs.append(subprocess.Popen([sys.executable, str(PROJECT_ROOT / "train_classifier.py"), *map(str, args)],
                                      cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True, start_new_session=True))
    try:
        outputs = [p.communicate(timeout=600)[0] for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:  # a hung collective must fail the test, not stall CI
            os.killpg(p.pid, signal.SIGKILL)
        pytest.fail("the two workers did not finish in 10 minutes")
    assert [p.returncode for p in procs] == [0, 0], [out[-3000:] for out in outputs]
    assert "worker-1: done; the chief wrote the run directory" in outputs[1]

    run = runs / "shared"
    assert sorted(p.name for p in runs.iterdir()) == ["shared"]
    # The chief's outputs and nothing else: no worker files, no backup, no temporaries.
    assert sorted(p.name for p in run.iterdir()) == [".icyface-lock", "checkpoints", "classes.txt", "config.json",
                                                      "embedding.keras", "history.csv", "logs", "model.json",
                                                      "saved_model"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.keras", "last.keras"]
    config = json.loads((run / "config.json").read_text())
    assert config["strategy"]["workers"] == 2 and config["strategy"]["replicas"] == 2
    assert len((run / "history.csv").read_text().splitlines()) == 2  # header + one epoch, written once
    model = load_keras_model(run / "embedding.keras")
    crops = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3)).astype("float32")
    assert np.isfinite(np.asarray(model(crops, training=False))).all()
    for root in scratch_roots:  # the worker's scratch run directory is gone once it finished
        assert not [p for p in root.iterdir() if p.name.startswith("icyface-")], list(root.iterdir())


def test_a_malformed_cluster_description_is_a_clear_error(monkeypatch):
    from utils.training.distribute import ClusterError, cluster_task

    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["h1:2222"]}}')
    with pytest.raises(ClusterError, match="not a valid cluster description"):
        cluster_task()
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"ps": ["h:1"], "worker": ["h:2"]},
                                                "task": {"type": "ps", "index": 0}}))
    with pytest.raises(ClusterError, match="only 'chief' and 'worker'"):
        cluster_task()
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"chief": ["h:1"], "worker": ["h:2", "h:3"]},
                                                "task": {"type": "worker", "index": 0}}))
    task = cluster_task()
    assert task.workers == 3 and not task.is_chief and task.name == "worker-0"


FIRST_STEP_SCRIPT = r'''
import json, sys
import numpy as np
from utils.training.distribute import make_strategy
strategy = make_strategy(None)  # ICYFACE_CPU_REPLICAS=2: before TensorFlow starts
import keras, tensorflow as tf
from models.losses import make_loss
from utils.training.model import model_batch

def first_step(name, scope):
    # The registry's head on a BatchNorm-free stand-in backbone (BatchNorm statistics are per
    # replica under MirroredStrategy by design, so a backbone with it takes a different step).
    with scope:
        images, labels = keras.Input((8,), name="images"), keras.Input((), dtype="int32", name="labels")
        loss = make_loss(name, 6, classifier_init="glorot_uniform", margin_scale=64.0, margin_m=0.5,
                         center_weight=0.01, triplet_margin=0.2, label_smoothing=0.0)
        head = loss.attach(keras.layers.Dense(16, name="embedding")(images), labels)
        model = keras.Model([images, labels] if loss.needs_labels else images, head.outputs)
        model.compile(keras.optimizers.SGD(0.5, momentum=0.9), loss=head.loss, loss_weights=head.loss_weights,
                      metrics=head.metrics)
    rng = np.random.default_rng(0)
    start = [rng.normal(size=w.shape).astype("float32") * 0.3 for w in model.get_weights()]
    model.set_weights(start)
    y = np.arange(32) % 6
    x = rng.normal(size=(32, 8)).astype("float32")
    history = model.fit(tf.data.Dataset.from_tensors(model_batch(model, x, y)), epochs=1, verbose=0)
    return start, model.get_weights(), {k: float(v[0]) for k, v in history.history.items()}

out = {"replicas": strategy.num_replicas_in_sync}
for name in ("softmax", "arcface"):
    start, one, logs_one = first_step(name, tf.distribute.get_strategy().scope())
    _, two, logs_two = first_step(name, strategy.scope())
    out[name] = {"max_weight_diff": max(float(np.abs(a - b).max()) for a, b in zip(one, two)),
                 "step": max(float(np.abs(a - b).max()) for a, b in zip(one, start)),
                 "logs_one": logs_one, "logs_two": logs_two}
print(json.dumps(out))
'''


def test_two_cpu_replicas_take_the_same_first_step_as_one_device():
    """MirroredStrategy over 2 logical CPU devices (ICYFACE_CPU_REPLICAS=2), the several-GPU code
    path: a global batch of 32 split 16 + 16 takes the same first SGD step as one device on the
    32 (loss and gradient scaled by the global batch, gradients summed over the replicas), and
    reports the same loss and accuracy (metrics reduced over the replicas), for softmax and ArcFace."""
    res = subprocess.run([sys.executable, "-c", FIRST_STEP_SCRIPT], cwd=PROJECT_ROOT, capture_output=True, text=True,
                         env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", ICYFACE_CPU_REPLICAS="2"), timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["replicas"] == 2
    for name in ("softmax", "arcface"):
        step = out[name]
        # A step that moved a weight by > 0.1 (a gradient scaled by 2 or 1/2 would show); two replicas
        # land within 1e-4 of that step of one device's weights.
        assert step["step"] > 0.1 and step["max_weight_diff"] < 1e-4 * step["step"], (name, step)
        for key, value in step["logs_one"].items():
            assert step["logs_two"][key] == pytest.approx(value, rel=1e-5, abs=1e-6), (name, key, step)


def test_training_on_two_cpu_replicas_stops_resumes_and_exports(tmp_path, pubfig_crops):
    """The CLI under ICYFACE_CPU_REPLICAS=2: config.json records MirroredStrategy with 2 replicas; a
    SIGTERM in epoch 2 backs up that step and exits 75; the rerun finishes (iterations = 2 epochs of
    steps) and exports a model whose SavedModel agrees with embedding.keras."""
    import keras
    import tensorflow as tf

    from tests.test_training import ANSI, _start, _steps_shown, _wait_until, history

    args = [*TINY, "--epochs", "2", "--loss", "cosface", "--datadir", pubfig_crops, "--runs-dir", tmp_path,
            "--name", "replicas", "--verbose", "1"]
    run = tmp_path / "replicas"
    os.environ["ICYFACE_CPU_REPLICAS"] = "2"  # _start passes this process's environment on
    try:
        proc, chunks = _start(args)
        text = _wait_until(proc, chunks, lambda t: any(2 <= s <= 8 for s, _ in _steps_shown(t, "Epoch 2/2")),
                           "a few steps of epoch 2")
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=300) == 75
        steps = _steps_shown(text, "Epoch 1/2")[-1][1]
        res = subprocess.run([sys.executable, str(PROJECT_ROOT / "train_classifier.py"), *map(str, args)],
                             cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=900,
                             env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    finally:
        del os.environ["ICYFACE_CPU_REPLICAS"]
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Epoch 1/2" not in ANSI.sub("", res.stdout)
    config = json.loads((run / "config.json").read_text())
    assert config["strategy"] == {"type": "MirroredStrategy", "replicas": 2, "workers": 1}
    assert [int(r["epoch"]) for r in history(run)] == [0, 1]
    from utils.training.export import load_checkpoint

    assert int(load_checkpoint(run / "checkpoints" / "last.keras").optimizer.iterations.numpy()) == 2 * steps
    crops = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    raw = keras.ops.convert_to_numpy(keras.models.load_model(run / "embedding.keras", safe_mode=True)(
        crops.astype("float32"), training=False))
    served = tf.saved_model.load(str(run / "saved_model")).signatures["serving_default"]
    got = next(iter(served(tf.constant(crops)).values())).numpy()
    np.testing.assert_allclose(got, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-5)
