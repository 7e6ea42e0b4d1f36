#!/usr/bin/env python3
"""Stage 2: train a face classifier on aligned crops; its hidden layer is the embedding.

    python train_classifier.py res-cp                            # the seed recipe (ResNet-34, 64 px, softmax)
    python train_classifier.py --preset arcface                  # IResNet-50, ArcFace, 112 px similarity crops
    python train_classifier.py --config my_experiment.py --lr 0.05   # your own experiment file, one change

Every setting has one source, TrainConfig in utils/training/config.py (its defaults are the
seed's recipe). An experiment file (configs/<preset>.py, or --config FILE) lists what differs
from it; every flag given overrides the file. The run directory's config.json records the result.
"""
from __future__ import annotations

import argparse
import sys

from utils.core import cli

FLAGLESS = ("net_type", "preset")  # net_type is the positional; preset is --preset / --config
SEED_SPELLINGS = ("--image_size, --batch_size, --hidden_size, --decay_step, --img_morethan, --val_split, --L2, "
                  "--datadir")  # listed in --help, so the seed's commands find their flags


def describe_presets() -> str:
    """Each experiment file's settings, for --help."""
    from utils.training.config import CONFIGS_DIR, preset_names, read_experiment

    lines = []
    for name in preset_names():
        settings = read_experiment(CONFIGS_DIR / f"{name}.py")
        lines.append(f"  {name}: " + (", ".join(f"{k}={v}" for k, v in settings.items()) or "the defaults"))
    return "\n".join(lines)


def preset_help() -> str:
    """--preset's help: each experiment file with its one-line purpose (its docstring's first line)."""
    from utils.training.config import CONFIGS_DIR, experiment_purpose, preset_names

    listed = "; ".join(f"{name}: {experiment_purpose(CONFIGS_DIR / f'{name}.py') or '(no docstring)'}".rstrip(".")
                       for name in preset_names())
    return ("experiment file configs/<PRESET>.py (default: seed): " + listed).replace("%", "%%")


def build_parser() -> argparse.ArgumentParser:
    from models.names import MODEL_NAMES
    from utils.core.startup import TF_LOGS_FLAG, TF_LOGS_HELP
    from utils.training.config import FIELDS, RENAMED

    p = cli.Parser(
        prog=__file__,
        description="Train a softmax/margin-loss classifier over the identities of a crops folder made by "
                    "preprocess_data.py, and export its embedding model. Rerunning the same command after a "
                    "crash resumes from the last backup (every --backup-every-steps steps and each epoch's end); "
                    "SIGTERM or Ctrl-C backs up the current step and exits 75. Several GPUs are used together; with "
                    "TF_CONFIG "
                    "set, several hosts train one run (docs/scaling.md). Every flag takes either "
                    "spelling: --kebab-case, or --snake_case as the seed's commands wrote them ("
                    + SEED_SPELLINGS + ").",
        formatter_class=cli.RawDescriptionHelpFormatter,
        epilog="presets (configs/*.py; what each changes from the defaults):\n" + describe_presets())
    # Checked by the config loader, not argparse, so a mistyped flag's value is not taken for a backbone.
    p.add_argument("net_type", nargs="?", default=None,
                   help=f"backbone, one of {', '.join(MODEL_NAMES)} (default: the preset's; res-cp for seed)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--preset", default=None, help=preset_help())
    source.add_argument("--config", default=None, metavar="FILE", help="experiment file to read instead of a preset")
    cli.add_field_flags(p, FIELDS.values(), skip=FLAGLESS, renamed=RENAMED, default_label="seed")
    p.add_argument(TF_LOGS_FLAG, action="store_true", help=TF_LOGS_HELP)
    return p


def parse_config(argv=None):
    """The effective TrainConfig of a command line: defaults < experiment file < flags."""
    from utils.training.config import load_config

    args = build_parser().parse_args(argv)
    # Only what was given: every other setting comes from the experiment file.
    overrides = {k: v for k, v in vars(args).items() if k not in ("preset", "config", "tf_logs") and v is not None}
    return load_config(args.preset, args.config, **overrides)


@cli.entry_point
def main(argv=None) -> int:
    config = parse_config(argv)  # flags and the experiment file checked before TensorFlow loads
    from utils.core.startup import start

    start(argv)
    from utils.training.train import run_training

    info = run_training(config)
    if "worker" in info:
        print(f"{info['worker']}: done; the chief wrote the run directory {config.run_dir}")
    else:
        print(f"run directory {config.run_dir}: embedding model {info['files']}, model.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
