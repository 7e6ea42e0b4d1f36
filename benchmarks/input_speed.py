#!/usr/bin/env python3
"""Training input speed per core: the same crops read + decoded + augmented from a crops folder
(a file per image) and from an insightface pack (one .rec file), side by side in one run.

    python benchmarks/input_speed.py --crops CROPS_DIR [--pack PACK_DIR] [--images 8000] [--rounds 3]

The pack is made from the crops first when --pack does not hold one (preprocess_data.py --pack
does the same). tf.data runs on one thread (private thread pool of 1, one intra-op thread), so
the figures are images/s per core; rounds alternate folder and pack so both see the same machine
state, and the page cache is warm for both (the files are read once before timing). Prints the
median of the rounds and what a GPU taking 3,000 images/s would need in cores.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GPU_IMAGES_PER_SECOND = 3000  # a mid-range GPU training a ResNet-50-sized face model on 112 px crops


def one_pass(files, input_size: int, augment) -> float:
    """Images/s of one pass over files on one thread: read, decode, resize, augment, batch."""
    import tensorflow as tf

    from utils.input_pipeline import make_dataset

    ds = make_dataset(files.paths, files.labels, input_size, 128, training=True, augment=augment, pack=files.pack)
    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    options.threading.max_intra_op_parallelism = 1
    ds = ds.with_options(options)
    started, count = time.time(), 0
    for images, _ in ds:
        count += int(images.shape[0])
    return count / (time.time() - started)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--crops", type=Path, required=True, help="a finished crops folder (preprocess_data.py output)")
    p.add_argument("--pack", type=Path, default=None, help="its pack (made here when missing; default <crops>-pack)")
    p.add_argument("--images", type=int, default=8000, help="images per pass (the first N, the same in both)")
    p.add_argument("--input-size", type=int, default=112, help="network input px")
    p.add_argument("--rounds", type=int, default=3, help="timed passes of each, alternating")
    args = p.parse_args()

    from utils.startup import quiet_tensorflow
    quiet_tensorflow()
    import tensorflow as tf

    from benchmarks.small_data_lfw import machine
    from utils.input_pipeline import AugmentSettings, FileList, list_crops, list_training_images
    from utils.preprocessing import pack_crops
    from utils.recordio import is_pack

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    pack_dir = args.pack or args.crops.with_name(args.crops.name + "-pack")
    if not is_pack(pack_dir):
        pack_crops(args.crops, pack_dir)
    folder, pack = list_crops(args.crops), list_training_images(pack_dir)
    n = min(args.images, len(folder.paths))
    assert list(folder.labels[:n]) == list(pack.labels[:n])  # the same images, in the same order
    folder = FileList(folder.classes, folder.paths[:n], folder.labels[:n])
    pack = FileList(pack.classes, pack.paths[:n], pack.labels[:n], pack.pack)
    augment = AugmentSettings(flip=True, crop_jitter=0.1)
    for files in (folder, pack):  # warm the page cache and trace the pipelines
        one_pass(files, args.input_size, augment)
    rates = {"folder": [], "pack": []}
    for _ in range(args.rounds):
        rates["folder"].append(one_pass(folder, args.input_size, augment))
        rates["pack"].append(one_pass(pack, args.input_size, augment))
    median = {k: statistics.median(v) for k, v in rates.items()}
    print(f"{machine()}; {n} crops of {args.crops}, {args.input_size} px input, flips + crop jitter, 1 thread:")
    for name, rate in median.items():
        print(f"  {name:<6} {rate:7.0f} images/s per core (rounds: {', '.join(f'{r:.0f}' for r in rates[name])}); "
              f"a {GPU_IMAGES_PER_SECOND:,} images/s GPU needs {GPU_IMAGES_PER_SECOND / rate:.1f} cores")
    print(f"  pack / folder: {median['pack'] / median['folder']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
