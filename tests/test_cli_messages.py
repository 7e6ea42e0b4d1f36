"""Wrong paths on the command line are named for what they are, in one line, before TensorFlow or
any model loads: a missing run folder (with what its runs folder holds), a missing pairs file
under --lfw-dir, a missing photo, a file given as a dataset folder, a flat folder of photos."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import run_main
from utils.core.run_io import PROJECT_ROOT

HEAVY = ("tensorflow", "keras")


def run_light(script: str, *args, cwd: Path) -> tuple[subprocess.CompletedProcess, list[str], list[str]]:
    """The command as a user runs it from cwd, under -X importtime: its result, its own stderr
    lines, and the heavy modules (TensorFlow, Keras) it imported."""
    res = subprocess.run([sys.executable, "-X", "importtime", str(PROJECT_ROOT / script), *map(str, args)],
                         cwd=cwd, capture_output=True, text=True, timeout=300)
    lines = res.stderr.splitlines()
    imported = {line.rsplit("|", 1)[-1].strip() for line in lines if line.startswith("import time:")}
    heavy = sorted(m for m in imported if any(m == h or m.startswith(h + ".") for h in HEAVY))
    return res, [line for line in lines if not line.startswith("import time:")], heavy


@pytest.fixture
def runs_folder(tmp_path) -> Path:
    """tmp_path/runs holding two (unfinished) runs, a and b; tests run from tmp_path."""
    for name in ("b", "a"):
        (tmp_path / "runs" / name).mkdir(parents=True)
    (tmp_path / "runs" / "notes.txt").write_text("not a run")
    return tmp_path


MISSING_RUN = [
    ("validate_on_lfw.py", ["--model", "runs/nope", "--lfw-dir", "L"]),
    ("export_model.py", ["--model", "runs/nope"]),
    ("verify_faces.py", ["--model", "runs/nope", "a.jpg", "b.jpg"]),
    ("verify_faces.py", ["--model", "runs/a", "--model", "runs/nope", "a.jpg", "b.jpg", "--threshold", "0.5"]),
]


@pytest.mark.parametrize("script,args", MISSING_RUN)
def test_a_missing_run_folder_is_named_with_what_runs_holds(runs_folder, script, args):
    (runs_folder / "L").mkdir()
    for photo in ("a.jpg", "b.jpg"):
        (runs_folder / photo).write_bytes(b"\xff\xd8")
    res, messages, heavy = run_light(script, *args, cwd=runs_folder)
    assert res.returncode == 2, messages
    assert messages == ["error: run folder runs/nope does not exist; runs/ holds: a, b"], messages
    assert not heavy, heavy  # named before TensorFlow, a model or an aligned image


def test_a_run_folder_whose_parent_is_missing_says_so(tmp_path):
    res, messages, heavy = run_light("export_model.py", "--model", "nowhere/run", cwd=tmp_path)
    assert res.returncode == 2 and messages == ["error: run folder nowhere/run does not exist (nor does nowhere/)"]
    assert not heavy, heavy


def test_validate_looks_for_pairs_txt_in_the_lfw_dir_given(runs_folder):
    (runs_folder / "my-lfw").mkdir()
    res, messages, heavy = run_light("validate_on_lfw.py", "--model", "runs/a", "--lfw-dir", "my-lfw",
                                     cwd=runs_folder)
    assert res.returncode == 2, messages
    assert len(messages) == 1 and messages[0].startswith("error: pairs file my-lfw/pairs.txt not found"), messages
    assert not heavy, heavy


def test_validate_help_states_the_pairs_default_under_lfw_dir():
    import validate_on_lfw

    pairs = next(a for a in validate_on_lfw.build_parser()._actions if "--pairs" in a.option_strings)
    assert "default <lfw-dir>/pairs.txt" in pairs.help and "default lfw/pairs.txt" not in pairs.help


@pytest.mark.parametrize("photo,why", [("missing.jpg", "photo missing.jpg not found"),
                                       ("folder", "photo folder is not a file")])
def test_verify_faces_checks_the_photos_before_any_model_loads(runs_folder, photo, why):
    (runs_folder / "folder").mkdir()
    (runs_folder / "ok.jpg").write_bytes(b"\xff\xd8")
    # runs/a has no model.json: were the model loaded first, that would be the error.
    res, messages, heavy = run_light("verify_faces.py", "--model", "runs/a", "ok.jpg", photo, "--threshold", "0.5",
                                     cwd=runs_folder)
    assert res.returncode == 2, messages
    assert len(messages) == 1 and messages[0].startswith(f"error: {why}"), messages
    assert not heavy, heavy


def test_preprocess_names_a_file_given_as_the_dataset_folder(tmp_path):
    (tmp_path / "README.md").write_text("# not a dataset")
    res = run_main("preprocess_data.py", "--input-dir", tmp_path / "README.md", "--output-dir", tmp_path / "out")
    assert res.returncode == 2, res.stderr
    assert "README.md is a file, not a dataset folder" in res.stderr, res.stderr
    assert "<dir>/<person>/<photo>.jpg" in res.stderr and "not found" not in res.stderr, res.stderr
    assert not (tmp_path / "out").exists()


def test_preprocess_says_a_flat_folder_of_photos_needs_per_person_folders(tmp_path):
    flat = tmp_path / "photos"
    flat.mkdir()
    for name in ("ann.jpg", "bob.png"):
        (flat / name).write_bytes(b"\xff\xd8")
    res = run_main("preprocess_data.py", "--input-dir", flat, "--output-dir", tmp_path / "out")
    assert res.returncode == 2, res.stderr
    assert (f"no per-person sub-folders in {flat}: put each person's photos in a folder of their own "
            f"({flat}/<person>/<photo>.jpg)") in res.stderr, res.stderr
    assert "no images found" not in res.stderr, res.stderr


def test_demo_checks_lfw_dir_before_tensorflow_starts(tmp_path):
    res, messages, heavy = run_light("demo.py", "--lfw-dir", "x", cwd=tmp_path)
    assert res.returncode == 2, messages
    assert len(messages) == 1 and messages[0].startswith("error: --lfw-dir x not found"), messages
    assert not heavy, heavy
    (tmp_path / "lfw").mkdir()
    res, messages, heavy = run_light("demo.py", "--lfw-dir", "lfw", cwd=tmp_path)
    assert res.returncode == 2 and messages == [
        "error: lfw/pairs.txt not found: LFW's View 2 pairs.txt must sit beside the images in --lfw-dir"], messages
    assert not heavy, heavy


def test_small_data_part_names_the_64_px_crops_it_needs(tmp_path):
    """preprocess_data.py --align parts writes 50 px crops by default; the recipe trains on 64 px
    ones. Its docstring, the missing-crops error and the too-small-crops error give the command."""
    from utils.training.config import TrainingError, experiment_path, load_config
    from utils.training.data import load_crops

    command = "python preprocess_data.py --align parts --crop-size 64"
    assert command in experiment_path("small_data_part").read_text()
    with pytest.raises(TrainingError, match=f"not found: make it with `{command}`"):
        load_crops(load_config("small_data_part", data_dir=str(tmp_path / "nowhere")))
    # The default --align parts crops (50 px), passed as --data-dir.
    crops = tmp_path / "CASIA-WebFace-part2-50-m1.2"
    crops.mkdir()
    (crops / "preprocess.json").write_text(json.dumps({"status": "complete", "settings": {
        "align": {"mode": "part", "crop_size": 50, "margin": 1.2, "part": 2}}}))
    with pytest.raises(TrainingError, match=r"larger than the crops \(50 px.*small_data_part recipe's 64 px crops "
                                            f"come from `{command}`"):
        load_crops(load_config("small_data_part", data_dir=str(crops)))


def test_preset_help_lists_each_experiment_files_purpose():
    import train_classifier
    from utils.training.config import CONFIGS_DIR, preset_names

    preset = next(a for a in train_classifier.build_parser()._actions if "--preset" in a.option_strings)
    for name in preset_names():
        purpose = (CONFIGS_DIR / f"{name}.py").read_text().split('"""')[1].strip().splitlines()[0].rstrip(".")
        assert f"{name}: {purpose}" in preset.help, (name, preset.help)


def test_image_size_keeps_its_training_meaning_and_is_deprecated_elsewhere(capsys):
    """One meaning per flag name: --crop-size is the crop, --input-size the network's input; the
    seed's --image_size stays training's alias of the input, and elsewhere works with one warning."""
    import demo
    import preprocess_data
    import train_classifier

    assert train_classifier.parse_config(["--image_size", "48"]).input_size == 48
    assert capsys.readouterr().err == ""
    for module, flag, dest, value in ((preprocess_data, "--image-size", "crop_size", "64"),
                                      (preprocess_data, "--image_size", "crop_size", "64"),
                                      (demo, "--image-size", "input_size", 48)):
        args = module.build_parser().parse_args([flag, str(value)])
        assert getattr(args, dest) == value
        err = capsys.readouterr().err.strip().splitlines()
        replacement = "--crop-size" if dest == "crop_size" else "--input-size"
        assert len(err) == 1 and "deprecated here; use " + replacement in err[0], err
    assert "--image-size" not in preprocess_data.build_parser().format_help()


def test_align_parts_means_the_part_crops_in_training_as_in_preprocessing():
    import train_classifier

    assert train_classifier.parse_config(["--align", "parts"]).align == "part"
    assert train_classifier.parse_config(["--align", "part"]).align == "part"
