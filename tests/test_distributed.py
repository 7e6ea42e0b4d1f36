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
from utils.run_io import PROJECT_ROOT


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_two_workers_train_one_run_and_only_the_chief_writes_it(tmp_path, pubfig_crops):
    from utils.embeddings import load_keras_model

    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    runs = tmp_path / "runs"
    args = [*TINY, "--epochs", "1", "--datadir", pubfig_crops, "--runs-dir", runs, "--name", "shared"]
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
    from utils.distribute import ClusterError, cluster_task

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
