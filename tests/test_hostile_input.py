"""Hostile and odd input trees: link loops, links out of the tree, names that look like paths,
empty identities, a link planted in the output. Nothing may be written outside the output
directory and nothing outside the input may be read."""
import json
import os
import shutil

import pytest

from tests.bad_inputs import snapshot_tree
from tests.conftest import requires_shared_data, run_cli
from utils.core.run_io import SHARED_DATA_DIR, is_inside, safe_name_component
from utils.preprocess.input_pipeline import list_crops
from utils.preprocess.manifest import read_manifest

# Identity folder names, as the file system returns them, and the output folder each must get.
ODD_NAMES = {
    "back\\slash": "back%5Cslash",            # a separator on Windows
    "\uff0e\uff0e": "%EF%BC%8E%EF%BC%8E",     # fullwidth '..': NFKC turns it into a real '..'
    "x\uff0fy": "x%EF%BC%8Fy",                # fullwidth solidus: NFKC '/'
    "a\u2024b": "a%E2%80%A4b",                # one-dot leader: NFKC '.'
    "new\nline": "new%0Aline",
    "caf" + os.fsdecode(b"\xe9"): "caf%E9",    # a Latin-1 byte, not UTF-8
    "100%": "100%25",
    "-rf": "-rf",
    "Jos\u00e9 Mar\u00eda": "Jos\u00e9 Mar\u00eda",
}


def test_safe_names_stay_one_distinct_component():
    for raw, safe in ODD_NAMES.items():
        assert safe_name_component(raw) == safe
        assert "/" not in safe and "\\" not in safe and safe not in (".", "..")
    assert len({safe_name_component(n) for n in [*ODD_NAMES, "back%5Cslash"]}) == len(ODD_NAMES) + 1
    for bad in ("", ".", ".."):
        with pytest.raises(ValueError):
            safe_name_component(bad)


@requires_shared_data
def test_hostile_tree_writes_only_inside_the_output_and_reads_only_inside_the_input(tmp_path):
    face = next((SHARED_DATA_DIR / "lfw" / "Aaron_Peirsol").iterdir())
    photos, outside = tmp_path / "photos", tmp_path / "outside"
    (outside / "stranger").mkdir(parents=True)
    shutil.copy(face, outside / "stranger" / "secret.jpg")
    shutil.copy(face, outside / "secret.jpg")

    for k in range(2):
        (photos / "plain").mkdir(parents=True, exist_ok=True)
        shutil.copy(face, photos / "plain" / f"{k}.jpg")
    for raw in ODD_NAMES:
        folder = os.path.join(os.fsencode(photos), os.fsencode(raw))
        os.mkdir(folder)
        shutil.copy(face, os.path.join(folder, b"face.jpg"))
    (photos / "empty_person").mkdir()                      # a 0-image identity
    (photos / "notes_only").mkdir()
    (photos / "notes_only" / "readme.txt").write_text("no images here")
    os.symlink("loop_self", photos / "loop_self")          # link loops, at both levels
    os.symlink("loop_b", photos / "loop_a")
    os.symlink("loop_a", photos / "loop_b")
    os.symlink(".", photos / "plain" / "dot_link.jpg")
    os.symlink("self.jpg", photos / "plain" / "self.jpg")
    os.symlink(photos, photos / "back_to_root")            # a folder link back into the tree
    os.symlink(outside / "stranger", photos / "stranger")  # links leaving the tree
    os.symlink(outside / "secret.jpg", photos / "plain" / "secret.jpg")
    # A link planted in the output tree: crops for "planted" must not follow it.
    (photos / "planted").mkdir()
    shutil.copy(face, photos / "planted" / "face.jpg")
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(outside, out / "planted")
    before_outside, before_photos = snapshot_tree(outside), snapshot_tree(photos)

    res = run_cli("preprocess_data.py", "--input-dir", photos, "--output-dir", out, "--detectors", "center",
                  "--workers", "1", "--no-progress", timeout=300)
    assert res.returncode == 0, res.stderr
    assert snapshot_tree(outside) == before_outside and snapshot_tree(photos) == before_photos
    for dirpath, dirnames, filenames in os.walk(out):  # os.walk does not follow the planted link
        for name in filenames:
            assert is_inside(os.path.join(dirpath, name), out)

    rows = read_manifest(out / "manifest.csv")
    for raw, safe in ODD_NAMES.items():
        row = rows[f"{raw}/face.jpg"]
        assert row["status"] == "fallback" and row["output"] == f"{safe}/face.png", row
        assert (out / safe / "face.png").is_file()
    assert rows["planted/face.jpg"]["status"] == "error"
    assert "leaving the output directory" in rows["planted/face.jpg"]["error"]
    assert "not followed" in rows["plain/secret.jpg"]["error"]
    assert rows["plain/self.jpg"]["status"] == "error" and rows["plain/dot_link.jpg"]["status"] == "error"
    assert rows["plain/0.jpg"]["status"] == "fallback" and rows["plain/1.jpg"]["status"] == "fallback"
    assert not any(p.startswith(("empty_person/", "notes_only/", "stranger/", "loop_")) for p in rows)
    assert not (out / "empty_person").exists() and not (out / "stranger").exists()
    # The folder link back to the root is one more identity of folders, not a recursion.
    assert not any(p.startswith("back_to_root/") for p in rows)
    ignored = dict(json.loads((out / "preprocess.json").read_text())["ignored_entries"])
    assert all("Too many levels of symbolic links" in ignored[n] for n in ("loop_self", "loop_a", "loop_b"))
    assert "link leaving the input tree" in ignored["stranger"]

    # Training's listing of the crops takes the escaped names as they are.
    files = list_crops(out, img_morethan=0)
    assert set(ODD_NAMES.values()) | {"plain"} <= set(files.classes)
    assert "empty_person" not in files.classes
