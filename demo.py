#!/usr/bin/env python3
"""The whole pipeline in one command, on LFW, with no preparation.

    python demo.py                                  # fetch LFW with scikit-learn (~200 MB, once)
    python demo.py --data-home /data/sklearn --offline
    python demo.py --lfw-dir lfw                    # an lfw/<Name>/<Name>_NNNN.jpg tree with pairs.txt

LFW people with at least --min-faces-per-person images are the training set; the model is
then verified on the LFW View-2 pairs in which neither person was trained on (LFW's own
folds kept). Stages resume: rerun the same command and finished work is reused.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

from utils.core import cli
from utils.core.startup import TF_LOGS_FLAG, TF_LOGS_HELP, start
from utils.training.config import TrainConfig, experiment_path, load_config, read_experiment

# configs/demo.py: small and quick on a 2-core CPU (MobileFaceNet on 64 px similarity-aligned faces, CosFace).
DEMO_PRESET = "demo"


def build_parser() -> argparse.ArgumentParser:
    # The recipe's values, without deriving its crops folder (that loads the preprocessing stage: cv2, numpy).
    recipe = replace(TrainConfig(), **read_experiment(experiment_path(DEMO_PRESET)))
    # The docstring's layout kept; every flag's default shown once.
    p = cli.Parser(prog=__file__, description=__doc__, formatter_class=cli.RawDescriptionHelpFormatter)
    source = p.add_mutually_exclusive_group()
    source.add_argument("--data-home", type=Path, default=None,
                        help="scikit-learn data folder LFW is fetched into or found in (default: scikit-learn's "
                             "own: ~/scikit_learn_data or $SCIKIT_LEARN_DATA)")
    source.add_argument("--lfw-dir", type=Path, default=None,
                        help="use this lfw/<Name>/<Name>_NNNN.jpg tree (with pairs.txt in it) instead")
    p.add_argument("--offline", action="store_true", help="never download; fail if LFW is not in --data-home")
    p.add_argument("--work-dir", type=Path, default=Path("data/demo"),
                   help="raw copies, crops and the aligned test set go here")
    p.add_argument("--runs-dir", type=Path, default=Path("runs"), help="parent of the run directory")
    p.add_argument("--name", default="demo", help="run directory name")
    p.add_argument("--min-faces-per-person", type=int, default=20,
                   help="train on LFW people with at least this many images")
    p.add_argument("--epochs", type=int, default=recipe.epochs, help="training epochs")
    p.add_argument("--input-size", dest="input_size", type=int, default=recipe.input_size,
                   help=f"network input px (at most the {recipe.crop_size} px crops)")
    p.add_argument("--image-size", dest="input_size", type=int, action=cli.DeprecatedAlias, replacement="--input-size")
    p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)), help="alignment processes")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(TF_LOGS_FLAG, action="store_true", help=TF_LOGS_HELP)
    return p


def check_lfw_dir(lfw_dir: Path) -> None:
    """--lfw-dir is a folder with LFW's pairs.txt in it; checked before TensorFlow loads."""
    from utils.verify.lfw_data import LFWDataError

    if not lfw_dir.is_dir():
        kind = "is a file, not a folder" if lfw_dir.exists() else "not found"
        raise LFWDataError(f"--lfw-dir {lfw_dir} {kind}: give an lfw/<Name>/<Name>_NNNN.jpg tree with pairs.txt "
                           f"in it, or leave --lfw-dir out to fetch LFW with scikit-learn")
    if not (lfw_dir / "pairs.txt").is_file():
        raise LFWDataError(f"{lfw_dir / 'pairs.txt'} not found: LFW's View 2 pairs.txt must sit beside the images "
                           f"in --lfw-dir")


def _people_and_test_pairs(args):
    """LFW's source, the people trained on, and the View-2 pairs of people not trained on."""
    from utils.verify.lfw_data import LFWDataError, LFWSource, demo_split, fetch_with_sklearn, people_with

    if args.lfw_dir is not None:
        source = LFWSource(args.lfw_dir, args.lfw_dir / "pairs.txt")
        check_lfw_dir(args.lfw_dir)
        people = people_with(source.images, args.min_faces_per_person)
    else:
        print("LFW: scikit-learn's fetch_lfw_people (downloads once into --data-home if missing)", flush=True)
        source, people = fetch_with_sklearn(args.data_home, args.min_faces_per_person, download=not args.offline)
    if len(people) < 2:
        raise LFWDataError(f"{len(people)} people in {source.images} have {args.min_faces_per_person} or more "
                           f"images; lower --min-faces-per-person")
    test_pairs, dropped = demo_split(source, people)
    print(f"LFW in {source.images}: training on {len(people)} people with >= {args.min_faces_per_person} "
          f"images; verifying on the {len(test_pairs)} View-2 pairs of people NOT trained on "
          f"({dropped} pairs with a trained person left out)", flush=True)
    return source, people, test_pairs, dropped


def _train_once(config, people: list[str]):
    """Train, or reuse a finished run of this same split."""
    from utils.preprocess.identity_overlap import trained_identities
    from utils.training.train import run_training
    from utils.verify.lfw_data import LFWDataError

    print(f"2/3 training {config.net_type} ({config.loss}) at {config.input_size} px for {config.epochs} epochs",
          flush=True)
    if (config.run_dir / "model.json").exists():
        print(f"    {config.run_dir} is already trained; reusing it (--name another to train anew)", flush=True)
    else:
        run_training(config)
    trained_on = set(trained_identities(config.run_dir))
    if trained_on - set(people):
        raise LFWDataError(f"{config.run_dir} was trained on people outside this split "
                           f"({len(trained_on - set(people))}, e.g. {sorted(trained_on - set(people))[0]}); "
                           f"choose another --name")


def _print_results(report: dict, artifacts: dict, started: float):
    from utils.verify.validation import format_report

    print(format_report(report))
    print(f"\nLFW accuracy on {report['pairs_count']} pairs of people the model never saw: "
          f"{100 * report['metrics']['accuracy_mean']:.1f} % "
          f"(± {100 * report['metrics']['accuracy_std']:.1f} over LFW's folds)")
    print("artifacts:")
    for label, path in artifacts.items():
        print(f"  {label:26} {path}")
    print(f"done in {(time.time() - started) / 60:.1f} min")


@cli.entry_point
def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.min_faces_per_person < 2 or args.epochs < 1 or args.input_size < 32:
        parser.error("--min-faces-per-person >= 2, --epochs >= 1 and --input-size >= 32 required")
    work = args.work_dir
    config = load_config(DEMO_PRESET, epochs=args.epochs, input_size=args.input_size, name=args.name,
                         runs_dir=str(args.runs_dir))
    # The crops the recipe expects, made in the work dir.
    config = replace(config, data_dir=str(work / f"train-{config.align}-{config.crop_size}"))
    if args.input_size > config.crop_size:
        parser.error(f"--input-size must be at most the {config.crop_size} px crops")
    if args.lfw_dir is not None:
        check_lfw_dir(args.lfw_dir)  # before TensorFlow's start-up lines
    start(argv)
    from utils.preprocess.driver import run_preprocess
    from utils.preprocess.settings import PreprocessSettings
    from utils.training.config import expected_align
    from utils.verify.lfw_data import claim_split, copy_people, write_pairs_tree
    from utils.verify.validation import validate

    started = time.time()
    train_raw, test_raw, test_csv = work / "train-raw", work / "test-raw", work / "test-pairs.csv"
    crops, run = Path(config.data_dir), config.run_dir
    source, people, test_pairs, dropped = _people_and_test_pairs(args)
    # Reusing a work dir or run made for other people would leak test people into training.
    claim_split(work / "split.json", {"lfw": str(source.images.resolve()), "trained_people": people,
                                      "test_pairs": len(test_pairs), "left_out_pairs": dropped})
    copy_people(source.images, people, train_raw)
    write_pairs_tree(test_pairs, source.images, test_raw, test_csv)

    print("1/3 detecting and aligning the training faces", flush=True)
    summary = run_preprocess(train_raw, crops, PreprocessSettings(align=expected_align(config)),
                             workers=args.workers, progress=not args.no_progress)
    print(f"    {summary.counts.get('ok', 0)} faces found, {summary.counts.get('fallback', 0)} centre-box "
          f"fallbacks, {summary.counts.get('error', 0)} errors", flush=True)
    _train_once(config, people)
    print("3/3 verifying on the held-out LFW pairs", flush=True)
    report = validate(run, test_raw, test_csv, workers=args.workers, progress=not args.no_progress,
                      cache_root=work / "cache")
    _print_results(report, {
        "training photos (copied)": train_raw, "aligned training crops": crops, "run directory": run,
        "embedding model": run / "embedding.keras", "test pairs": test_csv, "report": run / "report.json",
        "ROC curve": run / "roc.png", "per-pair scores": run / "scores.csv"}, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
