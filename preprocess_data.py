#!/usr/bin/env python3
"""Stage 1: detect the largest face in every image and write aligned crops.

    python preprocess_data.py                      # seed recipe: margin crops, 182 px
    python preprocess_data.py --align margin,affine,parts   # all the seed's crop sets, one detection each
    python preprocess_data.py --align similarity --crop-size 112    # ArcFace-style crops
    python preprocess_data.py --shard 2/8          # machine 2 of 8, same output tree on shared storage
    python preprocess_data.py --merge              # once all 8 finished: check and join their manifests
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path

from utils.core import cli
from utils.core.image_io import DEFAULT_MAX_PIXELS, OUTPUT_FORMATS
from utils.core.startup import TF_LOGS_FLAG, TF_LOGS_HELP, configure_tf_logging
from utils.preprocess.driver import pack_crops, run_preprocess_sets
from utils.preprocess.face_alignment import (
    DEFAULT_AFFINE_SCALE,
    DEFAULT_CROP_SIZE,
    DEFAULT_MARGIN,
    DEFAULT_PART_MARGIN,
    AlignSettings,
    seed_part_settings,
)
from utils.preprocess.face_detection import (
    DEFAULT_CASCADE,
    DEFAULT_DETECT_MAX_SIDE,
    DEFAULT_HOG_UPSAMPLE,
    DETECTOR_NAMES,
    SELECT_RULES,
    parse_detector_list,
)
from utils.preprocess.settings import DEFAULT_BATCH_SIZE, DEFAULT_INPUT_DIR, PreprocessSettings, default_output_dir
from utils.preprocess.shards import Shard, merge_shards

# --align values; 'parts' is the seed's three face-part crop sets (AlignSettings mode 'part').
ALIGN_CHOICES = ("margin", "similarity", "affine", "parts", "none")


def align_sets(names: str, sizes: str | None, margin: float, part_margin: float,
               affine_scale: float) -> list[AlignSettings]:
    """The crop sets --align asks for, in order; sizes: one per name, or one for a single name."""
    modes = cli.parse_choices(names, ALIGN_CHOICES, "--align mode(s)")
    given = [int(v) for v in sizes.split(",")] if sizes else [None] * len(modes)
    if len(given) != len(modes):
        raise ValueError(f"--crop-size takes one size per --align mode ({len(modes)}), got {sizes!r}")
    out = []
    for mode, size in zip(modes, given):
        if mode == "parts":
            out += seed_part_settings(size or DEFAULT_CROP_SIZE["part"], part_margin)
        else:
            out.append(AlignSettings(mode, size or DEFAULT_CROP_SIZE[mode], margin, scale=affine_scale))
    return out


def build_parser() -> argparse.ArgumentParser:
    p = cli.Parser(
        prog=__file__,
        description="Detect the face in every image of a folder-per-identity dataset "
                    "(<input-dir>/<identity>/<image>), align it and write crops in the same tree, with "
                    "manifest.csv (one row per image) and preprocess.json (settings and counts). "
                    "Rerunning the same command resumes an interrupted run.")
    p.add_argument("--input-dir", type=Path, default=DEFAULT_INPUT_DIR,
                   help="dataset root: one sub-folder of images per identity")
    p.add_argument("--output-dir", type=Path, default=None,
                   help="where crops go; default data/<input name>-<align>-<size>[-m<margin>][-s<scale>]. When the "
                        "run writes several crop sets (--align parts, or several modes) this is their parent: each "
                        "set goes to <output-dir>/<input name>-<its tag>")
    p.add_argument("--align", default="margin", metavar="MODE[,MODE...]",
                   help="margin: the seed's crop, detection box grown by --margin and stretched to a square; "
                        "affine: the seed's 2-D align, dlib 68-point landmarks 36, 45, 33 (outer eye corners, nose "
                        "tip) onto OpenFace's template scaled by --affine-scale; parts: the seed's three face-part "
                        "crop sets (squares of --part-margin x r around each of those landmarks; sets part0, part1, "
                        "part2); similarity: 5-point similarity transform onto the 112 px ArcFace template; none: "
                        "the square box itself, resized. Several, comma-separated (e.g. margin,affine,parts), "
                        "detect each image once and write each crop set to its own folder")
    p.add_argument("--crop-size", dest="crop_size", default=None, metavar="PX[,PX...]",
                   help="crop side in px, one per --align mode; default 182 for margin/none, 110 for affine, 50 "
                        "for parts (the seed's; the small_data_part recipe trains on --crop-size 64), 112 for "
                        "similarity")
    # --image-size is the network's input in training; here it was the crop's side.
    p.add_argument("--image-size", dest="crop_size", action=cli.DeprecatedAlias, replacement="--crop-size")
    p.add_argument("--margin", type=float, default=DEFAULT_MARGIN,
                   help="with --align margin: each side of the box moves out by margin x r / 2, r = half the "
                        "longer box side (the seed's ExpandMarginSegmenter), clipped to the image")
    p.add_argument("--part-margin", type=float, default=DEFAULT_PART_MARGIN,
                   help="with --align parts: side of each part's square = int(part-margin x r)")
    p.add_argument("--affine-scale", type=float, default=DEFAULT_AFFINE_SCALE,
                   help="with --align affine: the template's share of the crop side")
    p.add_argument("--detectors", default=",".join(DEFAULT_CASCADE),
                   help=f"comma-separated cascade, tried in order; the first that finds a face wins. "
                        f"Available: {', '.join(DETECTOR_NAMES)} (cnn is dlib's slow MMOD detector; center "
                        f"is the centre-box fallback)")
    p.add_argument("--select", choices=SELECT_RULES, default="largest",
                   help="which face to keep when a detector finds several: the largest, or the largest "
                        "discounted by distance from the image centre (group photos)")
    p.add_argument("--hog-upsample", type=int, default=DEFAULT_HOG_UPSAMPLE,
                   help="times dlib's HOG detector upsamples the image (finds smaller faces, slower)")
    p.add_argument("--detect-max-side", type=int, default=DEFAULT_DETECT_MAX_SIDE,
                   help="detect on a copy downscaled to at most this many px (crops come from the original)")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help="refuse images declaring more pixels than this (decompression bombs)")
    p.add_argument("--format", dest="output_format", choices=sorted(OUTPUT_FORMATS), default="png",
                   help="crop file format")
    p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)),
                   help="worker processes (each loads the detectors once)")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                   help="images per work unit and per MTCNN batch")
    split = p.add_mutually_exclusive_group()
    split.add_argument("--shard", default=None, metavar="K/N",
                       help="process only part K of N (1-based) of the identities, so N machines or cluster jobs "
                            "can share one output tree; writes manifest-K-of-N.csv and preprocess-K-of-N.json. "
                            "Every shard must be given the same other flags. 'auto': K and N from a SLURM array "
                            "job's environment; 'auto/N': K from a Kubernetes Indexed Job's JOB_COMPLETION_INDEX "
                            "(N = its completions)")
    split.add_argument("--merge", action="store_true",
                       help="after all N shards finished: check every input image is in exactly one shard "
                            "manifest and its crop exists, then write manifest.csv and preprocess.json (give the "
                            "same --input-dir and --output-dir, or the same flags, as the shards)")
    p.add_argument("--pack", type=Path, default=None, metavar="DIR",
                   help="once the crops are complete, also pack them into DIR as an insightface pack (train.rec, "
                        "train.idx, property, with preprocess.json and identities.txt): train_classifier.py "
                        "--data-dir DIR then reads one file instead of a file per crop (one alignment only)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")
    p.add_argument(TF_LOGS_FLAG, action="store_true", help=TF_LOGS_HELP)
    return p


@cli.entry_point
def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_tf_logging(argv)  # the detector workers load TensorFlow (MTCNN)
    try:
        aligns = align_sets(args.align, args.crop_size, args.margin, args.part_margin, args.affine_scale)
        settings = PreprocessSettings(align=aligns[0], detectors=parse_detector_list(args.detectors),
                                      hog_upsample=args.hog_upsample, select=args.select,
                                      detect_max_side=args.detect_max_side, max_pixels=args.max_pixels,
                                      output_format=args.output_format, batch_size=args.batch_size)
        shard = Shard.parse(args.shard) if args.shard else None
    except ValueError as err:
        parser.error(str(err))
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if args.pack and (len(aligns) > 1 or shard):
        parser.error("--pack packs one complete crops folder: give one --align / --crop-size, and pack after "
                     "--merge rather than per --shard")
    if len(aligns) == 1:
        targets = [(args.output_dir or default_output_dir(args.input_dir, aligns[0]), settings)]
    else:
        root = args.output_dir or Path("data")
        targets = [(default_output_dir(args.input_dir, a, root), replace(settings, align=a)) for a in aligns]
    output_dir = ", ".join(str(d) for d, _ in targets)
    # The project's errors go to cli.run_cli; a SIGTERM or Ctrl-C stop exits 75 with the finished chunks journaled.
    try:
        if args.merge:
            summaries = [merge_shards(args.input_dir, d) for d, _ in targets]
        else:
            summaries = run_preprocess_sets(args.input_dir, targets, workers=args.workers,
                                            progress=not args.no_progress, shard=shard)
        if args.pack:
            prop, images = pack_crops(targets[0][0], args.pack, progress=not args.no_progress)
    except OSError as err:
        where = f"crops to {output_dir}" + (f" or the pack to {args.pack}" if args.pack else "")
        print(f"error: cannot write {where}: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # a second Ctrl-C, or one outside the chunk loop
        print("\ninterrupted: rerun the same command to resume", file=sys.stderr)
        return 130
    print("\n\n".join(s.report() for s in summaries))
    if args.pack:
        print(f"\npacked {images} crops of {prop.identities} identities into {args.pack}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
