"""One writer per folder: a second training or preprocessing process on the same folder is refused
with the holder named and nothing written; a killed holder leaves no lock behind."""
import os
import signal
import socket
import subprocess
import sys

import pytest

from tests.conftest import TINY_RUN, run_cli, run_main
from utils.core.folder_lock import LOCK_NAME, FolderBusyError, hold_folder
from utils.core.run_io import PROJECT_ROOT


def _holder(folder):
    """A separate process that holds folder until killed; returns once it holds it."""
    code = (f"import sys, time; sys.path.insert(0, {str(PROJECT_ROOT)!r})\n"
            f"from utils.core.folder_lock import hold_folder\n"
            f"with hold_folder({str(folder)!r}):\n    print('held', flush=True)\n    time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_killed_holder_leaves_no_lock_behind(tmp_path):
    proc = _holder(tmp_path)
    with pytest.raises(FolderBusyError, match=f"PID {proc.pid} on {socket.gethostname()}"):
        with hold_folder(tmp_path):
            pass
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with hold_folder(tmp_path):  # free at once: the kernel dropped the lock with the process
        assert (tmp_path / LOCK_NAME).read_text().startswith(f"PID {os.getpid()} ")


def test_a_training_on_a_held_run_folder_is_refused_and_writes_nothing(pubfig_few, tmp_path):
    """A run folder another process holds: training on that name is refused, the holder named, nothing
    written. (A real training holding its run against a second one: test_training's resume test.)"""
    run = tmp_path / "held"
    run.mkdir()
    holder = _holder(run)
    try:
        res = run_main("train_classifier.py", *TINY_RUN, "--datadir", pubfig_few, "--runs-dir", tmp_path,
                       "--name", "held")
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
        assert f"{run} is in use by PID {holder.pid} on {socket.gethostname()}" in res.stderr, res.stderr
        assert sorted(p.name for p in run.iterdir()) == [LOCK_NAME]  # nothing written
    finally:
        holder.kill()
        holder.wait()


def test_a_second_preprocessing_into_one_folder_is_refused_and_writes_nothing(celeba_sample, tmp_path):
    out = tmp_path / "crops"
    out.mkdir()
    holder = _holder(out)
    try:
        res = run_main("preprocess_data.py", "--input-dir", celeba_sample, "--output-dir", out, "--no-progress")
        assert res.returncode == 2 and f"in use by PID {holder.pid}" in res.stderr, res.stderr
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # nothing written
        # Shards hold their own locks: shard 1/2 runs while the unsharded lock is held.
        res = run_cli("preprocess_data.py", "--input-dir", celeba_sample, "--output-dir", out, "--shard", "1/8",
                      "--no-progress", "--workers", "1", timeout=900)
        assert res.returncode == 0, res.stderr[-2000:]
        res = run_main("preprocess_data.py", "--input-dir", celeba_sample, "--output-dir", out, "--merge")
        assert res.returncode == 2 and "in use by PID" in res.stderr, res.stderr
    finally:
        holder.kill()
        holder.wait()
