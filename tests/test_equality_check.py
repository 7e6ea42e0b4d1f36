"""benchmarks/equality_check.py's helpers (the trainings themselves are the script's job, not CI's)."""
import json
import subprocess
import zipfile

import numpy as np
import pytest

from benchmarks.equality_check import (
    materialise,
    metadata_differences,
    new_revision,
    sample_photos,
    tiny_lfw,
)
from tests.conftest import requires_shared_data
from utils.core.run_io import SHARED_DATA_DIR


def _git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    _git(repo, "config", "user.email", "t@example.invalid")
    _git(repo, "config", "user.name", "t")
    (repo / "a.py").write_text("old\n")
    _git(repo, "add", "a.py")
    _git(repo, "commit", "-q", "-m", "old")
    return repo


def test_old_tree_is_the_revision_and_the_repository_is_untouched(repo, tmp_path):
    old = _git(repo, "rev-parse", "HEAD")
    (repo / "a.py").write_text("new\n")
    _git(repo, "commit", "-q", "-am", "new")
    assert materialise(repo, old[:7], tmp_path / "old") == old
    assert (tmp_path / "old" / "a.py").read_text() == "old\n"
    assert (repo / "a.py").read_text() == "new\n" and _git(repo, "worktree", "list").count("\n") == 0


def test_new_revision_is_dirty_with_changes_or_new_files(repo):
    head = _git(repo, "rev-parse", "HEAD")
    assert new_revision(repo) == (head, [])
    (repo / "b.py").write_text("untracked\n")
    assert new_revision(repo) == (head + "+dirty", ["b.py"])


def test_photo_sample_is_fixed(tmp_path):
    src = tmp_path / "src"
    for person, count in (("c", 3), ("a", 2), ("b", 4), ("d", 5)):
        (src / person).mkdir(parents=True)
        for i in range(count):
            (src / person / f"{i}.jpg").write_bytes(b"x")
    assert sample_photos(src, tmp_path / "out", identities=2, images=3) == ["b", "c"]  # a has too few
    assert sorted(p.name for p in (tmp_path / "out" / "b").iterdir()) == ["0.jpg", "1.jpg", "2.jpg"]
    with pytest.raises(SystemExit):
        sample_photos(src, tmp_path / "out2", identities=4, images=3)


def _run_dir(path, revision, seconds, object_id, classes="0\ta\n"):
    path.mkdir(parents=True)
    (path / "classes.txt").write_text(classes)
    (path / "config.json").write_text(json.dumps({"recipe": {"lr": 0.01}, "code_revision": revision}))
    (path / "model.json").write_text(json.dumps({"input_size": 32, "train_seconds_this_attempt": seconds}))
    with zipfile.ZipFile(path / "embedding.keras", "w") as z:
        z.writestr("config.json", json.dumps({"layers": [{"shared_object_id": object_id, "units": 4}]}))
        z.writestr("model.weights.h5", b"w")
    return path


def test_metadata_ignores_revision_timings_and_object_ids_only(tmp_path):
    old = _run_dir(tmp_path / "old", None, 30.0, 1)
    assert metadata_differences(old, _run_dir(tmp_path / "new", "abc+dirty", 60.0, 2)) == []
    other = _run_dir(tmp_path / "other", None, 30.0, 1, classes="0\tb\n")
    (other / "config.json").write_text(json.dumps({"recipe": {"lr": 0.1}, "code_revision": None}))
    assert metadata_differences(old, other) == ["classes.txt", "config.json:recipe"]


@requires_shared_data
def test_tiny_lfw_is_a_ten_fold_pairs_file_of_copied_images(tmp_path):
    from utils.verify.pair_files import read_pairs

    assert tiny_lfw(SHARED_DATA_DIR / "lfw", tmp_path / "lfw", per_fold=1) == 20
    pairs = read_pairs(tmp_path / "lfw" / "pairs.txt", tmp_path / "lfw")
    assert len(pairs) == 20 and sorted(set(pairs.fold.tolist())) == list(range(10))
    assert np.array_equal(pairs.same, np.tile([True, False], 10))
    assert not any(p.is_symlink() for p in (tmp_path / "lfw").rglob("*"))
