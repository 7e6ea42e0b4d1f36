#!/usr/bin/env python3
"""Stage 2: train a face classifier on aligned crops; its hidden layer is the embedding.

    python train_classifier.py res-cp                       # the seed recipe (ResNet-34, 64 px, softmax)
    python train_classifier.py iresnet50 --preset arcface   # 112 px similarity crops, ArcFace
"""
from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    from models import INPUT_NORMALIZATIONS, MODEL_NAMES
    from utils.training import CLASSIFIER_INITS, LOSSES, PRESETS, SCHEDULES, SPLITS, default_datadir

    p = argparse.ArgumentParser(
        description="Train a softmax/margin-loss classifier over the identities of a crops folder made by "
                    "preprocess_data.py, and export its embedding model. Rerunning the same command after a "
                    "crash resumes from the last finished epoch. Flags left out take the --preset's value. Several GPUs "
                    "are used together; with TF_CONFIG set, several hosts train one run (README: 'Several machines').",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="presets:\n" + "\n".join(
            f"  {name}: " + ", ".join(f"{k}={v}" for k, v in values.items() if k != "align")
            + f"; crops {default_datadir(name)}" for name, values in PRESETS.items()))
    p.add_argument("net_type", nargs="?", choices=MODEL_NAMES, default=None,
                   help="backbone (default: res-cp for --preset seed, iresnet50 for arcface)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="seed", help="recipe the other defaults come from")
    p.add_argument("--datadir", "--data-dir", default=None,
                   help="crops folder from preprocess_data.py (default: the CASIA-WebFace crops of the preset)")
    p.add_argument("--name", default=None, help="run name, one folder name: runs/<name>/ (default <net_type>-<preset>)")
    p.add_argument("--runs-dir", default="runs", help="parent folder of run directories")
    p.add_argument("--image_size", "--image-size", type=int, help="input px (crops are resized to it)")
    p.add_argument("--batch_size", "--batch-size", type=int, help="global batch size (split over GPUs)")
    p.add_argument("--hidden_size", "--hidden-size", type=int,
                   help="embedding size (default: the model's: 160 for res-cp)")
    p.add_argument("--loss", choices=LOSSES, help="softmax, center (softmax + center loss), arcface, cosface, "
                   "triplet (semi-hard, k images per identity per batch)")
    p.add_argument("--epochs", type=int, help="epochs to train")
    p.add_argument("--lr", type=float, help="base learning rate (SGD with momentum)")
    p.add_argument("--momentum", type=float, help="SGD momentum")
    p.add_argument("--schedule", choices=SCHEDULES, help="step: x0.1 every --decay_step epochs; cosine: to zero")
    p.add_argument("--decay_step", "--decay-step", type=int, help="epochs between x0.1 steps (step schedule)")
    p.add_argument("--warmup-epochs", type=int, help="linear learning-rate warm-up epochs")
    p.add_argument("--L2", "--weight-decay", dest="L2", type=float,
                   help="L2 penalty L2 * sum(w^2) on conv/dense kernels (res-cp: on its residual convs only, "
                        "as the seed; tflearn's weight_decay w is L2 = w / 2: the seed's 1e-4 is 5e-5 here)")
    p.add_argument("--normalization", choices=sorted(INPUT_NORMALIZATIONS),
                   help="how the model scales raw pixels: unit = x / 255 (the seed), centered = (x - 127.5) / 128")
    p.add_argument("--split", choices=SPLITS, help="holdout: seed = sklearn train_test_split over all images "
                   "(random_state = --seed), stratified = the same fraction of every identity")
    p.add_argument("--classifier-init", choices=sorted(CLASSIFIER_INITS),
                   help="softmax layer's initial weights: tflearn = truncated normal, stddev 0.02 (the seed)")
    p.add_argument("--img_morethan", "--img-morethan", type=int, default=20,
                   help="keep identities with strictly more than this many images (the seed's rule)")
    p.add_argument("--val_split", "--val-split", type=float, default=0.1,
                   help="holdout fraction for top-1/top-5 accuracy (see --split)")
    p.add_argument("--seed", type=int, default=0, help="seed for split, data order and initialisation")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None, help="random horizontal flips")
    p.add_argument("--crop-jitter", type=float, help="random crop keeping >= (1 - jitter) of the side, resized back")
    p.add_argument("--brightness", type=float, help="random brightness shift, max in pixel units")
    p.add_argument("--contrast", type=float, help="random contrast factor in [1 - c, 1 + c]")
    p.add_argument("--margin-scale", type=float, help="ArcFace/CosFace scale s")
    p.add_argument("--margin-m", type=float, help="ArcFace angular margin (radians) / CosFace cosine margin")
    p.add_argument("--center-weight", type=float, default=0.01, help="center-loss weight (--loss center)")
    p.add_argument("--triplet-margin", type=float, default=0.2, help="triplet loss margin (--loss triplet)")
    p.add_argument("--images-per-identity", type=int, default=4, help="k images per identity per triplet batch")
    p.add_argument("--cache", default="", help="cache decoded images: 'ram' or a file prefix (default: none)")
    p.add_argument("--mixed-precision", action="store_true", help="float16 compute (GPU)")
    p.add_argument("--jit", action="store_true", help="XLA-compile the train step (2x slower on CPU here)")
    p.add_argument("--lfw-dir", default="", help="raw LFW images: verify on LFW during training (default: off)")
    p.add_argument("--lfw-pairs", default="", help="pairs file for --lfw-dir (default <lfw-dir>/pairs.txt)")
    p.add_argument("--lfw-every", type=int, default=1, help="epochs between LFW verifications")
    p.add_argument("--lfw-cache-dir", default="data", help="where the aligned LFW copy is cached")
    p.add_argument("--verbose", type=int, default=2, choices=(0, 1, 2),
                   help="Keras progress: 1 = progress bar, 2 = one line per epoch")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from utils.training import PRESETS, TrainConfig, TrainingError, default_datadir, run_training

    preset = PRESETS[args.preset]
    chosen = {k: v for k, v in vars(args).items() if v is not None}
    values = {k: chosen.get(k, v) for k, v in preset.items() if k != "align"}
    net_type = values["net_type"]
    config = TrainConfig(
        **values, preset=args.preset, datadir=str(args.datadir or default_datadir(args.preset)),
        name=f"{net_type}-{args.preset}" if args.name is None else args.name, runs_dir=args.runs_dir,
        img_morethan=args.img_morethan, val_split=args.val_split, seed=args.seed, center_weight=args.center_weight,
        triplet_margin=args.triplet_margin, images_per_identity=args.images_per_identity, cache=args.cache,
        mixed_precision=args.mixed_precision, jit=args.jit, verbose=args.verbose, lfw_dir=args.lfw_dir,
        lfw_pairs=args.lfw_pairs, lfw_every=args.lfw_every, lfw_cache_dir=args.lfw_cache_dir)
    try:
        info = run_training(config)
    except TrainingError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if "worker" in info:
        print(f"{info['worker']}: done; the chief wrote the run directory {config.run_dir}")
    else:
        print(f"run directory {config.run_dir}: embedding model {info['files']}, model.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
