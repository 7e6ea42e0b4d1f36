#!/usr/bin/env python3
"""Stage 3: 10-fold LFW verification of a trained run.

    python validate_on_lfw.py --model runs/res-cp-seed
    python validate_on_lfw.py --model runs/iresnet50-arcface --pairs data/agedb_30.bin
    python validate_on_lfw.py --model runs/a --model runs/b --out reports/a+b   # an ensemble
    python validate_on_lfw.py --model runs/a --model runs/b --out reports/a+b --tune-weights-on OTHER_PEOPLE
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from utils.core import cli
from utils.core.startup import TF_LOGS_FLAG, TF_LOGS_HELP, start
from utils.verify.names import FUSIONS, METRICS


def weight_list(text: str) -> list[float]:
    try:
        return [float(w) for w in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, e.g. 0.6,0.4; got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = cli.Parser(
        prog=__file__,
        description="Align the LFW images exactly as the model's training crops were aligned (cached under "
                    "data/), embed them with the exported model and report 10-fold verification accuracy "
                    "(threshold chosen on the other 9 folds), VAL@FAR=1e-3, AUC and EER. Writes report.json and "
                    "roc.png.")
    p.add_argument("--model", type=Path, action="append", required=True,
                   help="run directory of a finished train_classifier.py run; several (--model A --model B) are "
                        "scored as one ensemble, each aligning LFW the way its own crops were (needs --out)")
    p.add_argument("--fusion", choices=FUSIONS, default="concat",
                   help="how an ensemble's members are combined: concat = cosine of the concatenated L2-normalised "
                        "embeddings, mean-score = mean of the members' pair scores (equal to concat with --metric "
                        "cosine)")
    weights = p.add_mutually_exclusive_group()
    weights.add_argument("--fusion-weights", type=weight_list, default=None, metavar="W,W,...",
                         help="an ensemble's member weights, one per --model in order (scaled to sum to 1; default "
                              "equal)")
    weights.add_argument("--tune-weights-on", type=Path, default=None, metavar="TREE",
                         help="choose an ensemble's member weights on a folder-per-identity tree of people in neither "
                              "the pairs nor any member's training data (e.g. celeba-aligned-2760): each member aligns "
                              "it the way its crops were, and the weights (multiples of 0.05) that classify the most "
                              "of "
                              "its same-person pairs and as many different-person pairs win; never LFW")
    p.add_argument("--lfw-dir", type=Path, default=Path("lfw"), help="raw LFW images: <Name>/<Name>_NNNN.jpg")
    p.add_argument("--pairs", type=Path, action="append", default=None,
                   help="LFW View-2 pairs.txt, an insightface .bin set (CFP-FP, AgeDB-30, ...; pre-aligned), "
                        "or a CSV of path_a,path_b,same[,fold] relative to --lfw-dir (default <lfw-dir>/pairs.txt); "
                        "several (--pairs A --pairs B): a report per set in <out>/<name>/ and a row per set in "
                        "<out>/report.json")
    p.add_argument("--aligned-dir", type=Path, default=None,
                   help="use this already-aligned copy (refused unless made with the model's settings)")
    p.add_argument("--cache-dir", type=Path, default=Path("data"), help="where aligned copies are cached")
    p.add_argument("--out", type=Path, default=None,
                   help="where report.json, roc.png and scores.csv go (default: the --model run directory)")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True,
                   help="fuse each image's embedding with its mirror image's")
    p.add_argument("--metric", choices=METRICS, default="cosine", help="pair score")
    p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)), help="alignment worker processes")
    p.add_argument("--batch-size", type=int, default=128, help="embedding batch size")
    p.add_argument("--identification", action="store_true",
                   help="also 1:N identification over every image in --lfw-dir: people with 2+ images enrol one and "
                        "probe with the rest, people with one image must be rejected; closed-set rank-1/5, open-set "
                        "DIR at FPIR 1 %% and 10 %% with their thresholds; the same for the run's own holdout "
                        "(one training crop per person enrolled, LFW's one-image people as strangers); added to "
                        "report.json (one --model)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(TF_LOGS_FLAG, action="store_true", help=TF_LOGS_HELP)
    return p


@cli.entry_point
def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.identification and len(args.model) > 1:
        parser.error("--identification takes one --model")
    if (args.fusion_weights or args.tune_weights_on) and len(args.model) < 2:
        parser.error("--fusion-weights and --tune-weights-on weigh an ensemble's members: give two or more --model")
    # A mistyped run is named before TensorFlow loads or any image is aligned.
    from utils.verify.embeddings import check_run_dir
    from utils.verify.pair_files import check_pair_sets
    for run in args.model:
        check_run_dir(run)
    pairs = args.pairs or [args.lfw_dir / "pairs.txt"]
    check_pair_sets(args.lfw_dir, pairs)
    start(argv)
    from utils.core.run_io import read_json, write_json
    from utils.training.holdout import holdout_identification
    from utils.verify.identification import format_identification
    from utils.verify.lfw_identification import identification_report
    from utils.verify.validation import format_report, validate_targets

    # A stop while aligning LFW (exit 75): the aligned copy resumes.
    fusion_weights = {"weights": args.fusion_weights} if args.fusion_weights else None
    memo = {} if args.identification else None  # LFW's crops, embedded once for both
    if args.tune_weights_on:
        from utils.verify.fusion_weights import choose_fusion_weights

        fusion_weights = choose_fusion_weights(args.model, args.tune_weights_on, args.metric, args.flip,
                                               args.workers, args.batch_size, not args.no_progress, args.cache_dir)
    report = validate_targets(args.model, args.lfw_dir, pairs, args.out,
                              flip=args.flip, metric=args.metric, aligned_dir=args.aligned_dir,
                              workers=args.workers, batch_size=args.batch_size, progress=not args.no_progress,
                              cache_root=args.cache_dir, fusion=args.fusion, fusion_weights=fusion_weights,
                              memo=memo)
    if args.identification:
        identification = identification_report(args.model[0], args.lfw_dir, args.flip, args.aligned_dir,
                                               args.workers, args.batch_size, not args.no_progress, args.cache_dir,
                                               memo, holdout=holdout_identification)
        report_path = (args.out or args.model[0]) / "report.json"
        report = {**read_json(report_path), "identification": identification}
        write_json(report_path, report)
    if len(args.model) == 1 and (args.out or args.model[0]).resolve() == args.model[0].resolve():
        # the run's own report: its exported files' threshold follows it
        from utils.verify.runtime_models import refresh_threshold
        if refresh_threshold(args.model[0]):
            print(f"threshold in {args.model[0] / 'model.json'} (\"serving\") updated for the exported files")
    print(format_report(report))
    if args.identification:
        print(format_identification(report["identification"]))
    out = args.out or args.model[0]
    plots = "ROC: " + (f"{out / 'roc.png'}" if "targets" not in report else f"{out}/<target>/roc.png")
    print(f"report: {out / 'report.json'}, {plots}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
