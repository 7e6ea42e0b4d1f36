"""demo.py end to end on a scikit-learn-layout LFW cache built from ../shared/data/lfw (no network)."""
import csv
import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import requires_shared_data, run_cli, run_main
from utils.core.run_io import SHARED_DATA_DIR
from utils.verify.pair_files import read_lfw_pairs

LFW = SHARED_DATA_DIR / "lfw"
MIN_FACES = 12  # in the 7,701-image LFW subset: 9 people, 111 images


def _images_of(name: str) -> list[int]:
    return sorted(int(p.stem.rsplit("_", 1)[1]) for p in (LFW / name).glob("*.jpg"))


def _tiny_pairs(trained: set[str]) -> list[str]:
    """2 folds x (4 matched + 4 mismatched): per fold 3 + 3 of untrained people from LFW's own list,
    1 + 1 with a trained person (the demo must drop those 4)."""
    lines = (LFW / "pairs.txt").read_text().splitlines()[1:]
    matched = [ln for ln in lines if len(ln.split()) == 3 and ln.split()[0] not in trained]
    mismatched = [ln for ln in lines if len(ln.split()) == 4 and not {ln.split()[0], ln.split()[2]} & trained]
    blair, chretien = _images_of("Tony_Blair"), _images_of("Jean_Chretien")
    out = ["2\t4"]
    for fold in range(2):
        out += matched[3 * fold:3 * fold + 3] + [f"Tony_Blair\t{blair[fold]}\t{blair[fold + 2]}"]
        out += mismatched[3 * fold:3 * fold + 3] + [f"Jean_Chretien\t{chretien[fold]}\t{mismatched[0].split()[0]}\t"
                                                    f"{mismatched[0].split()[1]}"]
    return out


@pytest.fixture(scope="module")
def sklearn_home(tmp_path_factory) -> Path:
    """<data_home>/lfw_home laid out as sklearn.datasets.fetch_lfw_people leaves it."""
    if not LFW.is_dir():
        pytest.skip(f"real face data not found at {SHARED_DATA_DIR}")
    data_home = tmp_path_factory.mktemp("sklearn")
    images = data_home / "lfw_home" / "lfw_funneled"
    counts = {p.name: len(list(p.glob("*.jpg"))) for p in LFW.iterdir() if p.is_dir()}
    trained = {name for name, n in counts.items() if n >= MIN_FACES}
    pairs = _tiny_pairs(trained)
    (data_home / "lfw_home" / "pairs.txt").parent.mkdir(parents=True)
    (data_home / "lfw_home" / "pairs.txt").write_text("\n".join(pairs) + "\n")
    for dev in ("pairsDevTrain.txt", "pairsDevTest.txt"):
        (data_home / "lfw_home" / dev).write_text("1\n")
    for name in trained:
        shutil.copytree(LFW / name, images / name)
    for path in read_lfw_pairs(data_home / "lfw_home" / "pairs.txt", LFW).images:
        target = images / Path(path).relative_to(LFW)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    return data_home


@requires_shared_data
def test_demo_trains_and_verifies_only_on_untrained_people(sklearn_home, tmp_path):
    work, runs = tmp_path / "work", tmp_path / "runs"
    # A proxy nobody listens on: any attempt to download fails at once instead of reaching the network.
    res = run_cli("demo.py", "--data-home", sklearn_home, "--work-dir", work, "--runs-dir", runs,
                  "--min-faces-per-person", MIN_FACES, "--epochs", "1", "--image-size", "32", "--workers", "2",
                  "--no-progress", timeout=900,
                  env_extra={"http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"})
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    out = res.stdout
    trained = sorted(p.name for p in (work / "train-raw").iterdir())
    assert len(trained) == 9 and "Tony_Blair" in trained
    assert "training on 9 people" in out and "verifying on the 12 View-2 pairs of people NOT trained on" in out
    assert "(4 pairs with a trained person left out)" in out

    with open(work / "test-pairs.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12 and {r["fold"] for r in rows} == {"0", "1"}
    people_tested = {Path(r[k]).parent.name for r in rows for k in ("path_a", "path_b")}
    assert not people_tested & set(trained)

    run = runs / "demo"
    report = json.loads((run / "report.json").read_text())
    assert report["pairs_count"] == 12 and 0.0 <= report["metrics"]["accuracy_mean"] <= 1.0
    assert (work / "train-similarity-112" / "manifest.csv").exists()
    for artifact in (work / "train-similarity-112", run / "embedding.keras", run / "report.json", run / "roc.png",
                     run / "scores.csv"):
        assert artifact.exists(), artifact
        assert str(artifact) in out  # every artifact's place is printed
    assert "LFW accuracy on 12 pairs of people the model never saw" in out

    # Rerun: finished stages are reused, not redone.
    again = run_main("demo.py", "--data-home", sklearn_home, "--work-dir", work, "--runs-dir", runs,
                     "--min-faces-per-person", MIN_FACES, "--epochs", "1", "--image-size", "32", "--workers", "2",
                     "--no-progress")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already trained; reusing it" in again.stdout

    # Another split on the same work folder would mix people: refused before anything is touched.
    other = run_main("demo.py", "--data-home", sklearn_home, "--work-dir", work, "--runs-dir", runs,
                     "--min-faces-per-person", MIN_FACES + 1, "--no-progress")
    assert other.returncode == 2 and "made for another split" in other.stderr
    assert sorted(p.name for p in (work / "train-raw").iterdir()) == trained


def test_demo_offline_without_lfw_says_what_to_do(tmp_path):
    res = run_main("demo.py", "--data-home", tmp_path / "empty", "--offline", "--work-dir", tmp_path / "w",
                   "--runs-dir", tmp_path / "r")
    assert res.returncode == 2
    assert "LFW is not in" in res.stderr and "--offline" in res.stderr and "--lfw-dir" in res.stderr
    assert not (tmp_path / "r").exists()


@requires_shared_data
def test_unseen_pairs_keep_folds_and_drop_every_trained_person():
    from utils.verify.lfw_data import people_with, unseen_pairs

    pairs = read_lfw_pairs(LFW / "pairs.txt", LFW)
    trained = set(people_with(LFW, 10))
    assert "Tony_Blair" in trained and all(len(list((LFW / p).glob("*.jpg"))) >= 10 for p in trained)
    held, dropped = unseen_pairs(pairs, trained)
    assert len(held) + dropped == 6000 and dropped > 0
    for a, b in zip(held.path_a, held.path_b):
        assert Path(a).parent.name not in trained and Path(b).parent.name not in trained
    kept_index = [i for i in range(6000) if Path(pairs.path_a[i]).parent.name not in trained
                  and Path(pairs.path_b[i]).parent.name not in trained]
    assert held.fold.tolist() == pairs.fold[kept_index].tolist()
