"""Training settings have one source (TrainConfig); experiment files and flags override it."""
from dataclasses import asdict
from pathlib import Path

import pytest

from train_classifier import build_parser, parse_config
from utils.training.config import (
    CONFIGS_DIR,
    FIELDS,
    TrainConfig,
    TrainingError,
    load_config,
    preset_names,
    read_experiment,
)
from utils.training.run_dir import _changed_settings


def test_every_experiment_file_loads_and_names_its_crops():
    assert {"seed", "arcface", "demo", "small_data"} <= set(preset_names())
    for name in preset_names():
        config = load_config(name)
        assert config.preset == name and config.name == f"{config.net_type}-{name}"
        assert config.input_size <= config.crop_size, name
        assert f"-{config.align}" in config.data_dir and f"-{config.crop_size}" in config.data_dir, name


def test_an_experiment_file_can_build_on_another(tmp_path):
    """`from configs.small_data import *`, then only what differs: small_data_augmented is
    small_data with its augmentation levers, small_data_margin the same on the seed's margin crops,
    small_data_80 at an 80 px input, and a user's file outside configs/ works the same."""
    base, augmented = asdict(load_config("small_data")), asdict(load_config("small_data_augmented"))
    changed = {k for k in base if base[k] != augmented[k]}
    assert changed == {"preset", "name", "downscale", "greyscale", "brightness", "contrast", "saturation", "erasing"}
    margin = asdict(load_config("small_data_margin"))
    assert {k for k in base if base[k] != margin[k]} == {"preset", "name", "align", "crop_size", "data_dir"}
    assert (margin["align"], margin["crop_size"]) == ("margin", 182)
    larger_input = asdict(load_config("small_data_80"))
    assert {k for k in base if base[k] != larger_input[k]} == {"preset", "name", "input_size", "epochs"}
    assert (larger_input["input_size"], larger_input["epochs"]) == (80, 15)
    part = asdict(load_config("small_data_part"))
    assert {k for k in base if base[k] != part[k]} == {"preset", "name", "align", "crop_size", "part", "data_dir"}
    assert (part["align"], part["crop_size"], part["part"]) == ("part", 64, 2)
    mine = tmp_path / "mine.py"
    mine.write_text("from configs.small_data_augmented import *\nerasing = 0.5\n")
    config = load_config(config_file=mine)
    assert (config.erasing, config.downscale, config.net_type, config.preset) == (0.5, 0.3, "mobilefacenet", "mine")


def test_a_part_recipe_reads_the_folder_preprocess_writes_for_its_part():
    """preprocess_data.py --align parts writes three folders; a part recipe (and --part) picks one of them."""
    from utils.preprocess.face_alignment import seed_part_settings
    from utils.preprocess.settings import DEFAULT_INPUT_DIR, default_output_dir
    from utils.training.config import expected_align

    written = [default_output_dir(DEFAULT_INPUT_DIR, a) for a in seed_part_settings(64)]
    for k in range(3):
        config = parse_config(["--preset", "small_data_part", "--part", str(k)])
        assert Path(config.data_dir) == written[k] and expected_align(config) == seed_part_settings(64)[k]


def test_the_seed_experiment_is_the_defaults():
    assert read_experiment(CONFIGS_DIR / "seed.py") == {}
    seed = load_config("seed")
    assert {k: v for k, v in asdict(seed).items() if k not in ("name", "data_dir")} == \
        {k: v for k, v in asdict(TrainConfig()).items() if k not in ("name", "data_dir")}
    assert (seed.net_type, seed.batch_size, seed.lr, seed.weight_decay, seed.normalization) == \
        ("res-cp", 32, 0.01, 5e-5, "unit")


def test_a_mistyped_key_names_the_closest_valid_one(tmp_path):
    experiment = tmp_path / "mine.py"
    experiment.write_text("net_type = 'resnet18'\nbatch_sise = 64\n")
    with pytest.raises(TrainingError, match=r"mine\.py: unknown setting 'batch_sise'; did you mean 'batch_size'\?"):
        load_config(config_file=experiment)
    experiment.write_text("loss = 'arcfce'\n")
    with pytest.raises(TrainingError, match=r"loss = 'arcfce' is not one of .*did you mean 'arcface'\?"):
        load_config(config_file=experiment)
    experiment.write_text("lr = '0.1'\n")
    with pytest.raises(TrainingError, match=r"lr = '0.1' should be float"):
        load_config(config_file=experiment)
    with pytest.raises(TrainingError, match=r"no experiment 'arcfase'.*did you mean 'arcface'"):
        load_config("arcfase")


def test_flags_override_the_file_which_overrides_the_defaults(tmp_path):
    experiment = tmp_path / "mine.py"
    experiment.write_text("net_type = 'resnet18'\nlr = 0.5\nepochs = 3\n")
    config = parse_config(["--config", str(experiment), "--lr", "0.2"])
    assert (config.net_type, config.lr, config.epochs, config.batch_size, config.preset) == \
        ("resnet18", 0.2, 3, 32, "mine")
    arcface = parse_config(["--preset", "arcface", "--no-flip"])
    assert (arcface.net_type, arcface.loss, arcface.flip, arcface.name) == ("iresnet50", "arcface", False,
                                                                            "iresnet50-arcface")


def test_the_seeds_flag_names_still_work():
    config = parse_config(["res-cp", "--image_size", "48", "--batch_size", "8", "--hidden_size", "96",
                           "--decay_step", "5", "--img_morethan", "3", "--name", "x", "--L2", "0.001",
                           "--datadir", "crops"])
    assert (config.input_size, config.batch_size, config.embedding_size, config.decay_step, config.img_morethan,
            config.name, config.weight_decay, config.data_dir) == (48, 8, 96, 5, 3, "x", 0.001, "crops")


def test_every_setting_has_a_flag_and_a_mistyped_flag_is_named(capsys):
    help_text = build_parser().format_help()
    for name in FIELDS:
        if name not in ("net_type", "preset"):
            assert f"--{name.replace('_', '-')}" in help_text, name
    with pytest.raises(SystemExit) as exit_info:
        parse_config(["--batch-sise", "8"])
    assert exit_info.value.code == 2
    assert "unknown flag --batch-sise; did you mean --batch-size?" in capsys.readouterr().err


def test_runs_recorded_with_the_old_setting_names_still_resume():
    config = load_config("seed", name="old")
    old = {("L2" if k == "weight_decay" else "image_size" if k == "input_size" else
            "hidden_size" if k == "embedding_size" else "datadir" if k == "data_dir" else k): v
           for k, v in config.recipe().items() if k not in ("align", "crop_size")}  # added since
    assert _changed_settings(old, config.recipe()) == []
    assert _changed_settings({**old, "L2": 1e-3}, config.recipe()) == ["weight_decay"]
