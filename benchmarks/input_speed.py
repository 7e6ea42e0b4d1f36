#!/usr/bin/env python3
"""Training input speed per core: the same crops read + decoded + augmented from a crops folder
(a file per image) and from an insightface pack (one .rec file), side by side in one run.

    python benchmarks/input_speed.py --crops CROPS_DIR [--pack PACK_DIR] [--images 8000] [--rounds 5] [--cold]

The pack is made from the crops first when --pack does not hold one (preprocess_data.py --pack
does the same). tf.data runs on one thread (private thread pool of 1, one intra-op thread), so
the figures are images/s per core. Three stages of training's pipeline are timed: `read` (the
encoded bytes only: where a folder pays for opening a file per image), `decode` (read + PNG/JPEG
decode) and `train` (the whole training stream: decode, resize, flips and crop jitter, batches).
Rounds alternate folder and pack so both see the same machine state; the page cache is warm
(every file read once before timing) unless --cold drops it before each pass (root only): the
case of a dataset bigger than RAM or on network storage. Prints each stage's median and what a
GPU taking 3,000 images/s would need in cores.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GPU_IMAGES_PER_SECOND = 3000  # a mid-range GPU training a ResNet-50-sized face model on 112 px crops


def one_pass(files, stage: str, input_size: int, augment) -> float:
    """Images/s of one pass over files on one thread, up to `stage` of the training pipeline."""
    import tensorflow as tf

    from utils.preprocess.input_pipeline import decode_crop, image_sources, make_dataset

    if stage == "train":
        ds = make_dataset(files.paths, files.labels, input_size, 128, training=True, augment=augment, pack=files.pack)
    else:
        ds, read = image_sources(files.paths, files.labels, files.pack)
        # Batches of equal-size tensors: the byte strings, or their decoded pixels' sizes.
        ds = ds.map((lambda s, _: tf.strings.length(read(s))) if stage == "read" else
                    (lambda s, _: tf.size(decode_crop(read(s)))), num_parallel_calls=tf.data.AUTOTUNE).batch(128)
    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    options.threading.max_intra_op_parallelism = 1
    ds = ds.with_options(options)
    started, count = time.time(), 0
    for batch in ds:
        count += int((batch[0] if stage == "train" else batch).shape[0])
    return count / (time.time() - started)


def drop_page_cache():
    """Empties the kernel's page cache, so the next pass reads from the disk (needs root)."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError as error:
        raise SystemExit(f"--cold needs root to write /proc/sys/vm/drop_caches ({error}); run without --cold") from None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--crops", type=Path, required=True, help="a finished crops folder (preprocess_data.py output)")
    p.add_argument("--pack", type=Path, default=None, help="its pack (made here when missing; default <crops>-pack)")
    p.add_argument("--images", type=int, default=8000, help="images per pass (the first N, the same in both)")
    p.add_argument("--input-size", type=int, default=112, help="network input px")
    p.add_argument("--rounds", type=int, default=5, help="timed passes of each source and stage, alternating")
    p.add_argument("--stages", default="read,decode,train", help="comma-separated: read, decode, train")
    p.add_argument("--cold", action="store_true", help="drop the page cache before every pass (root only)")
    args = p.parse_args()
    if unknown := set(args.stages.split(",")) - {"read", "decode", "train"}:
        p.error(f"--stages: unknown {', '.join(sorted(unknown))} (read, decode, train)")

    from utils.core.startup import quiet_tensorflow
    quiet_tensorflow()
    import tensorflow as tf

    from benchmarks.small_data_lfw import machine
    from utils.core.recordio import is_pack
    from utils.preprocess.driver import pack_crops
    from utils.preprocess.input_pipeline import AugmentSettings, FileList, list_crops, list_training_images

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
    stages = args.stages.split(",")
    cache = "cold page cache (dropped before every pass)" if args.cold else "warm page cache"
    print(f"{machine()}; {n} crops of {args.crops}, {args.input_size} px input, 1 thread, {cache}:")
    for stage in stages:
        for files in (folder, pack):  # trace the pipelines; warm the page cache
            one_pass(files, stage, args.input_size, augment)
        rates = {"folder": [], "pack": []}
        for _ in range(args.rounds):
            for name, files in (("folder", folder), ("pack", pack)):
                if args.cold:
                    drop_page_cache()
                rates[name].append(one_pass(files, stage, args.input_size, augment))
        median = {k: statistics.median(v) for k, v in rates.items()}
        print(f"  {stage}:")
        for name, rate in median.items():
            rounds = ', '.join(f'{r:.0f}' for r in rates[name])
            print(f"    {name:<6} {rate:7.0f} images/s per core (rounds: {rounds}); "
                  f"a {GPU_IMAGES_PER_SECOND:,} images/s GPU needs {GPU_IMAGES_PER_SECOND / rate:.1f} cores")
        print(f"    pack / folder: {median['pack'] / median['folder']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
