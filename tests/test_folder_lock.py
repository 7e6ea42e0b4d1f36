"""One writer per folder: a second training or preprocessing process on the same folder is refused
with the holder named and nothing written; a killed holder leaves no lock behind."""
import os
import signal
import socket
import subprocess
import sys
import time

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


def test_a_second_training_on_one_name_is_refused_and_the_first_is_untouched(tiny_run, pubfig_crops, tmp_path):
    """The fixture's command again, under another --name; while it trains, the same command on
    that name is refused. The first run then ends exactly like the fixture's run alone."""
    args = [*TINY_RUN, "--datadir", pubfig_crops, "--runs-dir", tmp_path, "--name", "conc"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    first = subprocess.Popen([sys.executable, str(PROJECT_ROOT / "train_classifier.py"), *map(str, args)],
                             cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run = tmp_path / "conc"
    deadline = time.time() + 300
    while not (run / "config.json").exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    listing = sorted(p.name for p in run.iterdir())
    second = run_cli("train_classifier.py", *args, timeout=300)
    out, err = first.communicate(timeout=900)
    assert first.returncode == 0, err[-3000:]
    assert second.returncode == 2 and "Traceback" not in second.stderr, second.stderr[-2000:]
    assert f"{run} is in use by PID {first.pid} on {socket.gethostname()}" in second.stderr, second.stderr
    assert listing  # the second process came while the first was writing
    assert (run / "history.csv").read_text() == (tiny_run / "history.csv").read_text()
    assert (run / "model.json").exists()


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
