"""Preprocessing at scale and under failure: shards + merge, kill -9 at random points, a full disk."""
import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import NO_TF_DETECTORS, requires_shared_data, run_cli
from utils.core.image_io import load_rgb
from utils.core.run_io import PROJECT_ROOT, TMP_PREFIX
from utils.preprocess.datasets import scan_dataset
from utils.preprocess.manifest import MANIFEST_NAME, read_manifest
from utils.preprocess.shards import Shard, bucket_count, identity_bucket, plan_chunks


def manifest_rows(path):
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
        return list(csv.DictReader(f))


def crop_files(root: Path) -> list[Path]:
    """Crops only (the per-shard manifests and settings live at the top level)."""
    return sorted(p.relative_to(root) for p in root.glob("*/*") if p.is_file())


def assert_same_crops(expected: Path, got: Path):
    assert manifest_rows(got / MANIFEST_NAME) == manifest_rows(expected / MANIFEST_NAME)
    files = crop_files(expected)
    assert crop_files(got) == files
    for rel in files:
        assert (load_rgb(expected / rel) == load_rgb(got / rel)).all(), rel
    assert not list(got.rglob(f"{TMP_PREFIX}*"))


def start_cli(*args) -> subprocess.Popen:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.Popen([sys.executable, str(PROJECT_ROOT / "preprocess_data.py"), *map(str, args)],
                            cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def test_shards_partition_identities_and_keep_the_unsharded_chunks(tmp_path):
    # 40 identities, 7 images each: a stand-in for a dataset listing (no images needed).
    for person in range(40):
        (tmp_path / f"person_{person:02d}").mkdir()
        for k in range(7):
            (tmp_path / f"person_{person:02d}" / f"{k}.jpg").touch()
    entries = scan_dataset(tmp_path).entries
    whole = plan_chunks(entries, 4)
    parts = [plan_chunks(entries, 4, Shard(k, 3)) for k in (1, 2, 3)]
    ids = [{e.identity for chunk in part for e in chunk} for part in parts]
    assert all(ids) and not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert set().union(*ids) == {e.identity for e in entries}
    # Every shard's chunks are chunks of the unsharded plan, so detectors see the same batches.
    as_paths = lambda chunks: sorted(tuple(e.relpath for e in c) for c in chunks)  # noqa: E731
    assert as_paths([c for part in parts for c in part]) == as_paths(whole)
    buckets = bucket_count(len(entries))
    assert all(len({identity_bucket(e.identity, buckets) for e in c}) == 1 for c in whole)
    assert Shard.parse("2/3") == Shard(2, 3)
    for bad in ("0/3", "4/3", "3", "a/b"):
        with pytest.raises(ValueError):
            Shard.parse(bad)


def test_shard_auto_reads_slurm_arrays_and_kubernetes_indexed_jobs():
    """--shard auto: sbatch --array=0-7 (task 0 is shard 1/8), arrays with another start or a
    step; --shard auto/N: an Indexed Job's 0-based JOB_COMPLETION_INDEX; otherwise a clear error."""
    slurm = {"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_MAX": "7",
             "SLURM_ARRAY_TASK_COUNT": "8"}
    assert Shard.parse("auto", slurm) == Shard(1, 8)
    assert Shard.parse("auto", {**slurm, "SLURM_ARRAY_TASK_ID": "7"}) == Shard(8, 8)
    assert Shard.parse("auto/8", slurm) == Shard(1, 8)
    # --array=1-16:3 -> tasks 1, 4, 7, 10, 13, 16 (older SLURM sets no COUNT)
    stepped = {"SLURM_ARRAY_TASK_ID": "10", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_MAX": "16",
               "SLURM_ARRAY_TASK_STEP": "3"}
    assert Shard.parse("auto", stepped) == Shard(4, 6)
    assert Shard.parse("auto/4", {"JOB_COMPLETION_INDEX": "3"}) == Shard(4, 4)
    for text, env, message in (("auto/9", slurm, "has 8 tasks"),
                               ("auto", {"JOB_COMPLETION_INDEX": "0"}, "auto/N"),
                               ("auto/4", {"JOB_COMPLETION_INDEX": "4"}, "need 1 <= K <= N"),
                               ("auto", {"SLURM_ARRAY_TASK_ID": "2"}, "SLURM_ARRAY_TASK_COUNT"),
                               ("auto", {"SLURM_ARRAY_TASK_ID": "x", "SLURM_ARRAY_TASK_COUNT": "2"}, "not a number"),
                               ("auto", {}, "neither a SLURM array job"),
                               ("auto/x", {}, "number of shards")):
        with pytest.raises(ValueError, match=message):
            Shard.parse(text, env)


@requires_shared_data
def test_three_concurrent_shards_merged_equal_the_unsharded_run(celeba_sample, celeba_crops, tmp_path):
    out = tmp_path / "sharded"
    common = ["--input-dir", celeba_sample, "--output-dir", out, "--workers", "1", "--no-progress"]
    # The three machines share one output tree and run at the same time.
    procs = [start_cli(*common, "--shard", f"{k}/3") for k in (1, 2, 3)]
    outputs = [p.communicate(timeout=900) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err[-2000:] for _, err in outputs]
    shard_rows = [manifest_rows(out / f"manifest-{k}-of-3.csv") for k in (1, 2, 3)]
    assert all(shard_rows)
    assert not (out / MANIFEST_NAME).exists()  # only --merge writes the final manifest

    merged = run_cli("preprocess_data.py", *common, "--merge", timeout=300)
    assert merged.returncode == 0, merged.stderr
    assert "merged      3 shards" in merged.stdout
    assert_same_crops(celeba_crops, out)
    record = json.loads((out / "preprocess.json").read_text())
    unsharded = json.loads((celeba_crops / "preprocess.json").read_text())
    assert record["settings"] == unsharded["settings"] and record["status"] == "complete"
    assert record["summary"]["counts"] == unsharded["summary"]["counts"]
    assert sum(s["images"] for s in record["shards"]) == record["summary"]["images"] == sum(map(len, shard_rows))


@requires_shared_data
def test_merge_refuses_incomplete_or_inconsistent_shards_and_writes_nothing(celeba_sample, tmp_path):
    photos = tmp_path / "photos"
    for person in sorted(celeba_sample.iterdir())[:12]:
        shutil.copytree(person, photos / person.name)
    out = tmp_path / "out"
    common = ["--input-dir", photos, "--output-dir", out, "--detectors", "center", "--no-progress"]
    assert run_cli("preprocess_data.py", *common, "--shard", "1/2").returncode == 0

    res = run_cli("preprocess_data.py", *common, "--merge")
    assert res.returncode == 2 and "shard(s) 2/2 have not run" in res.stderr
    assert run_cli("preprocess_data.py", *common, "--shard", "2/2").returncode == 0

    # A crop lost after its shard finished, and an image added to the input since.
    lost = manifest_rows(out / "manifest-2-of-2.csv")[0]
    (out / lost["output"]).unlink()
    added = photos / lost["path"].split("/")[0] / "added.jpg"
    shutil.copy(photos / lost["path"], added)
    res = run_cli("preprocess_data.py", *common, "--merge")
    assert res.returncode == 2, res.stdout
    assert "1 input images are in no shard manifest" in res.stderr and "added.jpg" in res.stderr
    assert "1 crops listed in shard manifests are missing" in res.stderr and "rerun shard(s) 2/2" in res.stderr
    assert "Nothing was written" in res.stderr and "Traceback" not in res.stderr
    assert not (out / MANIFEST_NAME).exists() and not (out / "preprocess.json").exists()

    # Rerunning the shard repairs both; the merge then goes through.
    added.unlink()
    assert run_cli("preprocess_data.py", *common, "--shard", "2/2").returncode == 0
    res = run_cli("preprocess_data.py", *common, "--merge")
    assert res.returncode == 0, res.stderr
    assert len(manifest_rows(out / MANIFEST_NAME)) == sum(1 for _ in photos.glob("*/*"))
    res = run_cli("preprocess_data.py", *common, "--shard", "1/3")
    assert res.returncode == 0
    res = run_cli("preprocess_data.py", *common, "--merge")
    assert res.returncode == 2 and "different splits" in res.stderr


@requires_shared_data
def test_kill_9_at_random_points_then_rerun_gives_the_uninterrupted_output(celeba_sample, celeba_hog_crops,
                                                                            tmp_path):
    """Several kills of the whole process group (a crash, an OOM kill, a pulled plug), each
    at a random moment: during start-up, mid-chunk, between chunks; then a SIGTERM to the whole
    group (a preempted job: the workers get it too), which stops within a second or so with
    exit 75 and the chunks finished so far journaled; then a SIGKILL to one worker alone (the OOM
    killer's way), an error naming it with the rest kept. Then one rerun. Detectors without
    TensorFlow, so the seven starts cost seconds; the journal and the workers are the same as
    MTCNN's (the sharded test compares MTCNN's chunks)."""
    rng = random.Random(int(os.environ.get("ICYFACE_KILL_SEED", "6")))
    out = tmp_path / "resumed"
    args = ["--input-dir", celeba_sample, "--output-dir", out, *NO_TF_DETECTORS, "--workers", "2", "--no-progress"]
    total = len(manifest_rows(celeba_hog_crops / MANIFEST_NAME))
    kills = []
    for target in [0] + sorted(rng.sample(range(10, total - 60), 3)):
        proc = start_cli(*args)
        deadline = time.time() + 300
        while proc.poll() is None and time.time() < deadline and len(read_manifest(out / MANIFEST_NAME)) < target:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.3))
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        kills.append(len(read_manifest(out / MANIFEST_NAME)))
    assert 0 < kills[-1] < total, f"the kills should land mid-run: rows journaled after each {kills}"

    proc = start_cli(*args)
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline and len(read_manifest(out / MANIFEST_NAME)) < kills[-1] + 20:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGTERM)
    sent = time.time()
    _, stderr = proc.communicate(timeout=120)
    journaled = len(read_manifest(out / MANIFEST_NAME))
    assert proc.returncode == 75, stderr[-3000:]
    assert time.time() - sent < 30, "a SIGTERM should not wait for more than the chunks in flight"
    assert "stopped by SIGTERM" in stderr and "rerun the same command to resume (exit 75)" in stderr, stderr[-2000:]
    assert "Traceback" not in stderr and kills[-1] + 20 <= journaled < total, (kills, journaled)

    # One worker killed alone (what the OOM killer does): an error that says so, not a hang.
    proc = start_cli(*args)
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline and len(read_manifest(out / MANIFEST_NAME)) < journaled + 10:
        time.sleep(0.05)
    os.kill(_detector_workers(proc.pid)[0], signal.SIGKILL)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2, stderr[-3000:]
    assert "a preprocessing worker died (killed by SIGKILL" in stderr and "rerun with --workers 1" in stderr, stderr
    assert "Traceback" not in stderr and not _detector_workers(proc.pid)
    assert journaled + 10 <= len(read_manifest(out / MANIFEST_NAME)) < total

    res = run_cli("preprocess_data.py", *args, timeout=900)
    assert res.returncode == 0, res.stderr
    assert_same_crops(celeba_hog_crops, out)
    record = json.loads((out / "preprocess.json").read_text())
    counts = record["summary"]["counts"]
    assert record["status"] == "complete" and sum(counts.values()) == record["summary"]["images"] == total
    assert sum(1 for r in manifest_rows(out / MANIFEST_NAME) if r["status"] != "error") == len(crop_files(out))


def _detector_workers(parent: int) -> list[int]:
    """The pids of a preprocess_data.py's spawned workers (not its resource tracker)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if ppid == parent and b"spawn_main" in cmdline:
            pids.append(int(stat.parent.name))
    return sorted(pids)


@pytest.fixture
def tiny_disk(tmp_path):
    """A 400 KB file system (room for a few dozen crops), or skip where it cannot be mounted."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(mount_point)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


@requires_shared_data
def test_full_disk_stops_with_a_clear_error_and_no_partial_file(celeba_sample, tiny_disk, tmp_path):
    out = tiny_disk / "crops"
    args = ["--input-dir", celeba_sample, "--detectors", "center", "--workers", "2", "--no-progress"]
    res = run_cli("preprocess_data.py", *args, "--output-dir", out, timeout=600)
    assert res.returncode == 1, res.stdout
    assert "error: cannot write crops to" in res.stderr and "No space left on device" in res.stderr
    assert "Traceback" not in res.stderr
    assert not list(out.rglob(f"{TMP_PREFIX}*"))
    rows = read_manifest(out / MANIFEST_NAME)
    crops = crop_files(out)
    assert 0 < len(crops) < sum(1 for _ in celeba_sample.glob("*/*"))
    for rel in crops:  # every file under a real name is whole
        assert load_rgb(out / rel).shape == (182, 182, 3), rel
    assert all((out / r["output"]).is_file() for r in rows.values() if r["status"] != "error")

    # Once there is room, the same command finishes the job (here: moved to a bigger disk).
    roomy = tmp_path / "roomy"
    shutil.copytree(out, roomy)
    res = run_cli("preprocess_data.py", *args, "--output-dir", roomy, timeout=600)
    assert res.returncode == 0, res.stderr
    assert len(manifest_rows(roomy / MANIFEST_NAME)) == sum(1 for _ in celeba_sample.glob("*/*"))
    assert not list(roomy.rglob(f"{TMP_PREFIX}*"))


def test_unwritable_output_is_a_clear_error(tmp_path):
    photos = tmp_path / "photos" / "someone"
    photos.mkdir(parents=True)
    (photos / "a.jpg").write_bytes(b"not really a jpeg")
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    res = run_cli("preprocess_data.py", "--input-dir", tmp_path / "photos", "--output-dir", blocker / "crops",
                  "--detectors", "center", "--no-progress")
    assert res.returncode == 1 and "error: cannot write crops to" in res.stderr and "Traceback" not in res.stderr
