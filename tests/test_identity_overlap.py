"""Exclusion lists: training identities that are also LFW people, matched by name."""
import pytest

from utils.core.run_io import SHARED_DATA_DIR
from utils.preprocess.identity_overlap import main, name_key, overlapping_identities, read_exclusions, read_names
from utils.preprocess.input_pipeline import list_crops

requires_data = pytest.mark.skipif(not (SHARED_DATA_DIR / "lfw").is_dir(), reason=f"no real data at {SHARED_DATA_DIR}")


def test_names_match_whatever_their_case_accents_and_punctuation():
    assert name_key("José_María  Aznar") == name_key("jose maria aznar") == "jose maria aznar"
    assert name_key("Jean-Claude Van Damme") == name_key("JEAN_CLAUDE_VAN_DAMME")
    assert name_key("Ana Ivanović") == name_key("Ana_Ivanovic")
    assert name_key("Bob Smith") != name_key("Bob Smithers")


@requires_data
def test_a_name_list_of_pubfig_people_and_respelled_lfw_people(tmp_path, capsys):
    """pubfig-42 shares no one with LFW; the LFW names written another way are all found, and
    CASIA's names.txt lines give back their folder ids."""
    pubfig = sorted(p.name for p in (SHARED_DATA_DIR / "pubfig-42").iterdir() if p.is_dir())
    lfw_people = [name for _, name in read_names(SHARED_DATA_DIR / "lfw")]
    respelled = {"0000101": "aaron eckhart", "0000102": "GEORGE W BUSH", "0000103": "José-María Aznar",
                 "0000104": "Gerhard Schröder", "0000105": "Tony  Blair"}
    assert {"Aaron_Eckhart", "George_W_Bush", "Jose_Maria_Aznar", "Gerhard_Schroeder", "Tony_Blair"} <= \
        set(lfw_people)
    # Accents are dropped, not transliterated: "Schröder" is "schroder", LFW's "Schroeder" is not matched.
    lines = [f"{1000 + i:07d} {name}" for i, name in enumerate(pubfig)] + [f"{k} {v}" for k, v in respelled.items()]
    (tmp_path / "names.txt").write_text("\n".join(lines) + "\n")
    found = overlapping_identities(read_names(tmp_path / "names.txt"), lfw_people)
    assert found == [k for k, v in respelled.items() if "Schr" not in v]
    assert overlapping_identities(read_names(SHARED_DATA_DIR / "pubfig-42"), lfw_people) == []

    assert main(["--names", str(tmp_path / "names.txt"), "--lfw-dir", str(SHARED_DATA_DIR / "lfw"),
                 "--out", str(tmp_path / "exclude.txt")]) == 0
    assert read_exclusions(tmp_path / "exclude.txt") == set(found)
    assert f"4 of {len(lines)} identities" in capsys.readouterr().out


def test_excluded_identities_leave_the_training_list(tmp_path):
    from PIL import Image

    for person in ("Ann", "Bob", "Cy"):
        (tmp_path / "crops" / person).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8)).save(tmp_path / "crops" / person / f"{i}.png")
    (tmp_path / "exclude.txt").write_text("# also in LFW\nBob\n\nNobody  # not in this set\n")
    files = list_crops(tmp_path / "crops", 0, read_exclusions(tmp_path / "exclude.txt"))
    assert files.classes == ["Ann", "Cy"] and files.excluded == ("Bob",)
    assert len(files.paths) == 6 and not any("/Bob/" in p for p in files.paths)
