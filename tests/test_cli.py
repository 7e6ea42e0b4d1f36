"""The six commands share one flag convention (utils.core.cli) and start for free: --help and a
mistyped flag are answered before TensorFlow, Keras or a model is loaded."""
import argparse
import importlib
import subprocess
import sys

import pytest

from utils.core import cli
from utils.core.errors import IcyfaceError
from utils.core.run_io import PROJECT_ROOT
from utils.core.stop_requests import StopRequested

CLIS = ["preprocess_data.py", "train_classifier.py", "validate_on_lfw.py", "verify_faces.py", "export_model.py",
        "demo.py"]
# A mistyped flag of each command, and the flag it should suggest.
MISTYPED = {
    "preprocess_data.py": (["--input-dri", "photos"], "--input-dir"),
    "train_classifier.py": (["--batch-sise", "8"], "--batch-size"),
    "validate_on_lfw.py": (["--modle", "runs/x"], "--model"),
    "verify_faces.py": (["--modle", "runs/x", "a.jpg", "b.jpg"], "--model"),
    "export_model.py": (["--modle", "runs/x"], "--model"),
    "demo.py": (["--epocs", "1"], "--epochs"),
}
# A mistyped value of a flag with choices, and the value it should suggest.
BAD_CHOICES = [
    ("preprocess_data.py", ["--select", "larges"], "'largest'"),
    ("train_classifier.py", ["--loss", "arcfce"], "'arcface'"),
    ("validate_on_lfw.py", ["--model", "runs/x", "--fusion", "concta"], "'concat'"),
]
HEAVY = ("tensorflow", "keras", "models.losses", "models.heads", "models.blocks")


def _run_timed_imports(script: str, *args) -> tuple[subprocess.CompletedProcess, set[str], list[str]]:
    """The command as a user runs it, under -X importtime: its result, the modules it imported,
    and its own stderr lines."""
    res = subprocess.run([sys.executable, "-X", "importtime", str(PROJECT_ROOT / script), *args], cwd=PROJECT_ROOT,
                         capture_output=True, text=True, timeout=300)
    lines = res.stderr.splitlines()
    imported = {line.rsplit("|", 1)[-1].strip() for line in lines if line.startswith("import time:")}
    return res, imported, [line for line in lines if not line.startswith("import time:")]


def _heavy(imported: set[str]) -> list[str]:
    return sorted(m for m in imported if any(m == h or m.startswith(h + ".") for h in HEAVY))


@pytest.mark.parametrize("script", CLIS)
def test_help_and_a_mistyped_flag_load_no_tensorflow(script):
    res, imported, _ = _run_timed_imports(script, "--help")
    assert res.returncode == 0 and res.stdout.startswith("usage:"), res.stderr[-2000:]
    assert not _heavy(imported), _heavy(imported)

    args, suggestion = MISTYPED[script]
    res, imported, messages = _run_timed_imports(script, *args)
    assert res.returncode == 2, messages
    assert not _heavy(imported), _heavy(imported)
    assert 1 <= len(messages) <= 3 and "usage:" not in res.stderr, messages
    assert f"unknown flag {args[0]}; did you mean {suggestion}?" in messages[0] and "--help" in messages[0], messages


@pytest.mark.parametrize("script, args, suggestion", BAD_CHOICES)
def test_a_mistyped_choice_names_the_closest_in_one_line(script, args, suggestion):
    res, imported, messages = _run_timed_imports(script, *args)
    assert res.returncode == 2 and len(messages) == 1, messages
    assert f"did you mean {suggestion}?" in messages[0] and "--help" in messages[0], messages
    assert not _heavy(imported), _heavy(imported)


@pytest.mark.parametrize("script", CLIS)
def test_every_long_flag_takes_both_spellings_and_shows_each_default_once(script):
    parser = importlib.import_module(script[:-3]).build_parser()
    flags = [s for a in parser._actions for s in a.option_strings if s.startswith("--") and s != "--help"]
    assert flags
    for flag in flags:
        for spelling in ("--" + flag[2:].replace("-", "_"), "--" + flag[2:].replace("_", "-")):
            assert parser._known_spelling(spelling) == flag, (flag, spelling)
    formatter = parser._get_formatter()
    for action in parser._actions:
        if action.help:
            shown = formatter._expand_help(action)
            assert shown.lower().count("default") <= 1, (action.option_strings, shown)
    assert "(default: None)" not in parser.format_help()


def test_dash_and_underscore_spellings_parse_the_same():
    import preprocess_data
    import train_classifier

    parser = preprocess_data.build_parser()
    dashed = parser.parse_args(["--input-dir", "x", "--crop-size=96", "--no-progress"])
    underscored = parser.parse_args(["--input_dir", "x", "--crop_size=96", "--no_progress"])
    assert vars(dashed) == vars(underscored) and dashed.crop_size == "96"
    args = train_classifier.build_parser().parse_args(["--batch_size", "8", "--no_flip", "--image_size", "48",
                                                       "--L2", "0.001", "--mixed_precision"])
    assert (args.batch_size, args.flip, args.input_size, args.weight_decay, args.mixed_precision) == \
        (8, False, 48, 0.001, True)


def test_add_field_flags_takes_help_choices_types_and_old_names_from_the_fields():
    from dataclasses import dataclass, field, fields

    @dataclass
    class Settings:
        loss: str = field(default="softmax", metadata={"help": "the loss", "choices": ("softmax", "arcface")})
        input_size: int = field(default=64, metadata={"help": "input px"})
        flip: bool = field(default=False, metadata={"help": "flips"})
        hidden: str = field(default="", metadata={"help": "not a flag"})

    parser = cli.Parser(prog="x.py")
    cli.add_field_flags(parser, fields(Settings), skip=("hidden",), renamed={"image_size": "input_size"},
                        default_label="seed")
    assert vars(parser.parse_args([])) == {}  # flags not given stay out of the namespace
    assert vars(parser.parse_args(["--loss", "arcface", "--image_size", "32", "--flip"])) == \
        {"loss": "arcface", "input_size": 32, "flip": True}
    text = parser.format_help()
    assert "the loss (seed: softmax)" in text and "--image-size" in text and "--hidden" not in text


def test_run_cli_prints_one_line_and_returns_the_errors_exit_code(capsys):
    class Broken(IcyfaceError):
        pass

    def failing(argv):
        raise Broken(f"bad input {argv}")

    def stopped(argv):
        raise StopRequested("SIGTERM received at step 7")

    assert cli.run_cli(failing, ["x"]) == 2
    assert capsys.readouterr().err == "error: bad input ['x']\n"
    assert cli.entry_point(stopped)() == 75
    assert capsys.readouterr().err.startswith("SIGTERM received at step 7; rerun the same command to resume")
    assert cli.entry_point(lambda argv: 0)() == 0
    with pytest.raises(ValueError):  # not one of the project's errors: a bug, with its traceback
        cli.run_cli(lambda argv: int("x"))


def test_the_parsers_names_are_the_keras_registries_keys():
    from models import names
    from models.heads import CLASSIFIER_INITS
    from models.losses import LOSSES
    from utils.training.config import SCHEDULES, allowed_values
    from utils.training.schedule import StepOrCosineSchedule  # noqa: F401  (the module loads with its kinds)

    assert tuple(LOSSES) == names.LOSS_NAMES == allowed_values("loss")
    assert tuple(CLASSIFIER_INITS) == names.CLASSIFIER_INIT_NAMES == allowed_values("classifier_init")
    assert names.MODEL_NAMES == allowed_values("net_type") == tuple(names.BACKBONES)
    assert names.NORMALIZATION_NAMES == allowed_values("normalization")
    assert SCHEDULES == allowed_values("schedule")
    for name, spec in names.BACKBONES.items():  # every backbone's builder exists where the table says
        assert callable(getattr(importlib.import_module(f"models.{spec.module}"), spec.builder)), name
    with pytest.raises(ImportError, match="change both together"):
        names.checked_registry(("a", "b"), {"b": 1, "a": 2}, "test")


def test_parser_error_is_one_line(capsys):
    parser = cli.Parser(prog="/somewhere/tool.py")
    parser.add_argument("--model", required=True)
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args([])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and "usage" not in err
    assert err == "error: the following arguments are required: --model (see tool.py --help)\n"
    assert isinstance(parser, argparse.ArgumentParser)
