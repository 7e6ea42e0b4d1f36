import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

# OpenBLAS' threads spin while they wait for a core: with three test workers on 2 cores, its default
# (a thread per core) took an SVD of LFW crops from 6.5 s to 75 s. Set before numpy loads OpenBLAS;
# the commands the tests start inherit it.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import pytest

from utils.core.run_io import PROJECT_ROOT, SHARED_DATA_DIR

requires_shared_data = pytest.mark.skipif(
    not (SHARED_DATA_DIR / "lfw").is_dir(),
    reason=f"real face data not found at {SHARED_DATA_DIR} (set ICYFACE_SHARED_DATA)")


def run_cli(script: str, *args, env_extra: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    """Run one of the top-level scripts as a user would, from the project root."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **(env_extra or {}))
    return subprocess.run([sys.executable, str(PROJECT_ROOT / script), *map(str, args)], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, env=env, **kwargs)


def run_main(script: str, *args) -> subprocess.CompletedProcess:
    """A top-level script's main() in this process: the same exit code and output as run_cli
    without the seconds a fresh interpreter spends importing TensorFlow."""
    import contextlib
    import importlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = importlib.import_module(Path(script).stem).main([str(a) for a in args])
        except SystemExit as exit_:  # argparse's usage errors, as the command line would see them
            code = exit_.code if isinstance(exit_.code, int) else 1
    return subprocess.CompletedProcess([script, *args], code, out.getvalue(), err.getvalue())


def made_once(tmp_path_factory, name: str, make) -> Path:
    """make(folder) -> path, called once per pytest run however many workers ask: under
    pytest-xdist (`-n 3`, as pytest.ini runs) the first worker to take the lock makes it and the
    others wait, then read the same files. So what it makes is read-only to the tests."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return make(tmp_path_factory.mktemp(name))
    shared = tmp_path_factory.getbasetemp().parent  # this run's basetemp, the workers' folders are inside
    done = shared / f"{name}.path"
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also when make() fails or skips
        if not done.exists():
            folder = shared / name
            shutil.rmtree(folder, ignore_errors=True)  # what another worker's failed or skipped make() left
            folder.mkdir()
            done.write_text(str(make(folder)))
    return Path(done.read_text())


@pytest.fixture(scope="session")
def celeba_sample(tmp_path_factory) -> Path:
    """A fixed sample of wild celeba-299 photos: 48 identities x up to 4 images."""
    from utils.preprocess.datasets import copy_sample

    if not (SHARED_DATA_DIR / "celeba-299").is_dir():
        pytest.skip(f"real face data not found at {SHARED_DATA_DIR}")

    def make(folder: Path) -> Path:
        copy_sample(SHARED_DATA_DIR / "celeba-299", folder / "photos", count=192, per_identity=4)
        return folder / "photos"

    return made_once(tmp_path_factory, "celeba", make)


@pytest.fixture(scope="session")
def celeba_crops(celeba_sample, tmp_path_factory) -> Path:
    """celeba_sample preprocessed with the default settings in one uninterrupted run."""
    def make(folder: Path) -> Path:
        res = run_cli("preprocess_data.py", "--input-dir", celeba_sample, "--output-dir", folder / "crops",
                      "--workers", "2", "--no-progress", timeout=900)
        assert res.returncode == 0, res.stderr
        return folder / "crops"

    return made_once(tmp_path_factory, "celeba-crops", make)


# Detectors without TensorFlow: a preprocessing process (and each worker) starts in a second, not ~5.
NO_TF_DETECTORS = ["--detectors", "hog,center"]


@pytest.fixture(scope="session")
def celeba_hog_crops(celeba_sample, tmp_path_factory) -> Path:
    """celeba_sample preprocessed with NO_TF_DETECTORS in one uninterrupted run: the reference for
    tests that start and kill preprocessing many times."""
    def make(folder: Path) -> Path:
        res = run_cli("preprocess_data.py", "--input-dir", celeba_sample, "--output-dir", folder / "crops",
                      *NO_TF_DETECTORS, "--workers", "2", "--no-progress", timeout=900)
        assert res.returncode == 0, res.stderr
        return folder / "crops"

    return made_once(tmp_path_factory, "celeba-hog-crops", make)


# A small, fast training recipe: ResNet-18 on 32 px crops, no weight decay (it dominates a short run's loss).
TINY = ["resnet18", "--image_size", "32", "--batch_size", "16", "--img_morethan", "5", "--lr", "0.01",
        "--L2", "0", "--val_split", "0.2"]


def pubfig_sample_crops(tmp: Path, identities: int, per_identity: int) -> Path:
    """tmp/crops: `identities` PubFig people x `per_identity` tight photos (kept in tmp/photos),
    cropped by the real preprocessing stage."""
    from utils.preprocess.datasets import copy_sample

    if not (SHARED_DATA_DIR / "pubfig-42").is_dir():
        pytest.skip(f"real face data not found at {SHARED_DATA_DIR}")
    copy_sample(SHARED_DATA_DIR / "pubfig-42", tmp / "photos", count=identities * per_identity,
                per_identity=per_identity, identities=identities)
    res = run_cli("preprocess_data.py", "--input-dir", tmp / "photos", "--output-dir", tmp / "crops",
                  "--detectors", "hog,center", "--workers", "2", "--no-progress", timeout=600)
    assert res.returncode == 0, res.stderr
    return tmp / "crops"


@pytest.fixture(scope="session")
def pubfig_crops(tmp_path_factory):
    """10 identities x 20 tight PubFig photos, cropped by the real preprocessing stage."""
    return made_once(tmp_path_factory, "pubfig", lambda folder: pubfig_sample_crops(folder, 10, 20))


@pytest.fixture(scope="session")
def pubfig_few(pubfig_crops, tmp_path_factory) -> Path:
    """pubfig_crops cut to its first 8 crops a person (an epoch of TINY is 4 steps): for the
    runs a test needs to go through, not to learn."""
    from utils.preprocess.datasets import copy_sample

    def make(folder: Path) -> Path:
        copy_sample(pubfig_crops, folder / "crops", count=10 * 8, per_identity=8)
        shutil.copy(pubfig_crops / "preprocess.json", folder / "crops" / "preprocess.json")
        return folder / "crops"

    return made_once(tmp_path_factory, "pubfig-few", make)


# tiny_run's command (with --datadir pubfig_crops): TINY for 2 epochs with augmentation and --ema on,
# so the resume test's interrupted runs can be compared with it.
TINY_RUN = [*TINY, "--epochs", "2", "--flip", "--crop-jitter", "0.1", "--brightness", "20", "--ema", "0.9"]


@pytest.fixture(scope="session")
def tiny_run(pubfig_crops, tmp_path_factory) -> Path:
    """A finished run of TINY_RUN on pubfig_crops (run directory)."""
    def make(runs: Path) -> Path:
        res = run_cli("train_classifier.py", *TINY_RUN, "--datadir", pubfig_crops, "--runs-dir", runs,
                      "--name", "tiny", timeout=900)
        assert res.returncode == 0, res.stderr[-3000:]
        return runs / "tiny"

    return made_once(tmp_path_factory, "runs", make)


@pytest.fixture(scope="session")
def lfw_subset(tmp_path_factory) -> Path:
    """The official LFW layout with a 10-fold pairs.txt of 10 + 10 pairs per fold, taken
    from the real View-2 list (the first 10 matched and 10 mismatched pairs of each fold)."""
    lfw = SHARED_DATA_DIR / "lfw"
    if not lfw.is_dir():
        pytest.skip(f"real face data not found at {SHARED_DATA_DIR}")
    dest = tmp_path_factory.mktemp("lfw") / "lfw"
    lines = (lfw / "pairs.txt").read_text().splitlines()
    folds, per = (int(v) for v in lines[0].split())
    kept = ["10\t10"]
    for f in range(folds):
        block = lines[1 + f * 2 * per: 1 + (f + 1) * 2 * per]
        kept += block[:10] + block[per:per + 10]
    for line in kept[1:]:
        parts = line.split()
        names = [(parts[0], parts[1]), (parts[0], parts[2])] if len(parts) == 3 else \
            [(parts[0], parts[1]), (parts[2], parts[3])]
        for name, number in names:
            rel = f"{name}/{name}_{int(number):04d}.jpg"
            (dest / name).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(lfw / rel, dest / rel)
    (dest / "pairs.txt").write_text("\n".join(kept) + "\n")
    return dest
