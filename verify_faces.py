#!/usr/bin/env python3
"""Compare two face photos with a trained model, say who photos show, or embed a folder tree.

    python verify_faces.py --model runs/res-cp-seed A.jpg B.jpg
    python verify_faces.py --model runs/res-cp-seed --gallery people/ X.jpg Y.jpg     # who is it?
    python verify_faces.py --model runs/res-cp-seed --embed photos/ --out embeddings.npz
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from utils.core import cli
from utils.core.errors import IcyfaceError
from utils.core.startup import TF_LOGS_FLAG, TF_LOGS_HELP, start


class PhotoError(IcyfaceError):
    """A photo or folder given on the command line is missing or of the wrong kind."""


def check_inputs(photos, folders: dict) -> None:
    """Every photo is an existing file and every folder flag given names a folder; checked
    before any model loads, so a mistyped path is named at once."""
    for photo in photos:
        if not photo.exists():
            raise PhotoError(f"photo {photo} not found")
        if not photo.is_file():
            raise PhotoError(f"photo {photo} is not a file: give image files (a <person>/<photo> folder goes "
                             f"to --embed or --gallery)")
    for flag, folder in folders.items():
        if folder is not None and not folder.is_dir():
            kind = "is a file, not a folder" if folder.exists() else "not found"
            raise PhotoError(f"{flag} {folder} {kind}: give a folder of <person>/<photo> images")


def build_parser() -> argparse.ArgumentParser:
    p = cli.Parser(
        prog=__file__,
        description="Detect and align faces with the model's own preprocessing settings, then either compare two "
                    "photos (similarity and same/different at the threshold chosen on LFW, from the run's "
                    "report.json), name the person each photo shows from an enrolled --gallery (or say unknown), "
                    "or write embeddings of every image of a <identity>/<image> tree.")
    p.add_argument("--model", type=Path, action="append", required=True,
                   help="run directory of a finished training run; several (--model A --model B) compare as one "
                        "ensemble, each aligning the photos its own way (two photos only)")
    p.add_argument("--report", type=Path, default=None,
                   help="folder with the report.json whose threshold decides (default: the run directory; for an "
                        "ensemble, validate_on_lfw.py's --out of the same models)")
    p.add_argument("photos", nargs="*", type=Path, help="two photos to compare, or photos to identify (--gallery)")
    p.add_argument("--gallery", type=Path, default=None,
                   help="folder per enrolled person (<name>/<photo>); each photo given is named as its best-matching "
                        "person, or unknown below the threshold (default: the 1:N one at FPIR 1 %% from "
                        "validate_on_lfw.py --identification, else LFW's 1:1 one)")
    p.add_argument("--threshold", type=float, default=None,
                   help="cosine-similarity threshold (default: the one validate_on_lfw.py chose)")
    p.add_argument("--embed", type=Path, default=None, help="folder-per-identity tree to embed instead")
    p.add_argument("--out", type=Path, default=Path("embeddings.npz"), help="output of --embed")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True, help="mirror-image fusion")
    p.add_argument("--cache-dir", type=Path, default=Path("data"),
                   help="where aligned copies are cached (--embed, --gallery)")
    p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)),
                   help="alignment workers (--embed, --gallery)")
    p.add_argument(TF_LOGS_FLAG, action="store_true", help=TF_LOGS_HELP)
    return p


@cli.entry_point
def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.gallery is not None:
        if args.embed is not None or not args.photos or len(args.model) > 1:
            parser.error("--gallery takes one --model and one or more photos (no --embed)")
    elif (args.embed is None) == (len(args.photos) != 2):
        parser.error("give either two photos, --gallery DIR and photos, or --embed DIR")
    if args.embed is not None and len(args.model) > 1:
        parser.error("--embed takes one --model")
    # Mistyped runs and photos are named before TensorFlow or any model loads.
    from utils.verify.embeddings import check_run_dir
    for run in args.model:
        check_run_dir(run)
    check_inputs(args.photos, {"--gallery": args.gallery, "--embed": args.embed})
    start(argv)
    from utils.verify.photo_inference import compare_photos, embed_tree, identify_photos

    # A stop while aligning a tree (exit 75): its aligned copy resumes.
    if args.embed is not None:
        count = embed_tree(args.model[0], args.embed, args.out, flip=args.flip, workers=args.workers,
                           cache_root=args.cache_dir)
        print(f"{count} embeddings written to {args.out}")
        return 0
    if args.gallery is not None:
        answers, threshold, source = identify_photos(args.model[0], args.gallery, args.photos, args.threshold,
                                                     args.flip, args.workers, args.cache_dir)
        print(f"threshold {threshold:.4f} ({source})")
        for photo, (name, score) in zip(args.photos, answers):
            print(f"{photo}: {name or 'unknown'} (best score {score:.4f})")
        return 0
    similarity, threshold = compare_photos(args.model, *args.photos, threshold=args.threshold, flip=args.flip,
                                           report_dir=args.report)
    verdict = "same person" if similarity >= threshold else "different people"
    print(f"similarity {similarity:.4f} (threshold {threshold:.4f}): {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
