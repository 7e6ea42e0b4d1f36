#!/usr/bin/env python3
"""Dataset discovery at scale: time and memory of listing huge folder-per-identity trees.

    python benchmarks/discovery_scale.py [--tmp /tmp] [--identities 100000] [--casia-images 494414]

(a) 100,000 identity folders of one image each: scan_dataset (what preprocessing lists);
(b) a CASIA-WebFace-sized tree, 494,414 images in 10,575 identity folders: list_crops with
    --img_morethan 20 (the file list training keeps in memory for the whole run);
(c) the same list as training holds it: TensorFlow imported first, then list_crops, the
    stratified holdout split and the training tf.data pipeline built over the list.
Files are empty (discovery never opens them); each measurement runs in a fresh process so
its peak RSS is its own. Prints seconds, entries/s, the process's RSS before listing and
its peak after.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CASIA_IDENTITIES = 10_575

_MEASURE = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
from utils.preprocess.datasets import scan_dataset
from utils.preprocess.input_pipeline import list_crops, make_dataset, stratified_split
if sys.argv[2] == "train":
    import tensorflow  # its own footprint counts as "before"
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter()
if sys.argv[2] == "scan":
    count = len(scan_dataset(sys.argv[3]).entries)
else:
    files = list_crops(sys.argv[3], int(sys.argv[4]))
    count = len(files.paths)
    if sys.argv[2] == "train":
        train, _ = stratified_split(files.labels, 0.1, 0)
        make_dataset([files.paths[i] for i in train], files.labels[train], 112, 128, training=True)
seconds = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"entries": count, "seconds": seconds, "rss_before_mb": before / 1024, "peak_rss_mb": peak / 1024}))
"""


def make_tree(root: Path, identities: int, images: int) -> float:
    """identities folders sharing `images` empty .jpg files as evenly as possible; seconds taken."""
    started = time.perf_counter()
    base, extra = divmod(images, identities)
    for i in range(identities):
        folder = root / f"{i:07d}"
        folder.mkdir(parents=True)
        for j in range(base + (i < extra)):
            (folder / f"{j:03d}.jpg").touch()
    return time.perf_counter() - started


def measure(*args) -> dict:
    out = subprocess.run([sys.executable, "-c", _MEASURE, str(ROOT), *map(str, args)], capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tmp", type=Path, default=Path(tempfile.gettempdir()), help="where the synthetic trees go")
    p.add_argument("--identities", type=int, default=100_000, help="identity folders for (a)")
    p.add_argument("--casia-images", type=int, default=494_414, help="images for (b), over 10,575 identities")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        wide = Path(tmp) / "wide"
        made = make_tree(wide, args.identities, args.identities)
        a = measure("scan", wide)
        shutil.rmtree(wide)
        casia = Path(tmp) / "casia"
        made_casia = make_tree(casia, CASIA_IDENTITIES, args.casia_images)
        b = measure("crops", casia, 20)
        c = measure("train", casia, 20)
    print(f"{os.cpu_count()} CPUs; trees made in {made:.0f} s and {made_casia:.0f} s (page cache warm)")
    print(f"(a) scan_dataset, {args.identities:,} identities x 1 image: {a['seconds']:.2f} s, "
          f"{a['entries'] / a['seconds']:,.0f} entries/s, RSS {a['rss_before_mb']:.0f} -> {a['peak_rss_mb']:.0f} MB")
    print(f"(b) list_crops --img_morethan 20, {args.casia_images:,} images / {CASIA_IDENTITIES:,} identities: "
          f"{b['entries']:,} kept in {b['seconds']:.2f} s, RSS {b['rss_before_mb']:.0f} -> {b['peak_rss_mb']:.0f} MB")
    print(f"(c) the same + holdout split + training tf.data pipeline, TensorFlow loaded: {c['seconds']:.2f} s, "
          f"RSS {c['rss_before_mb']:.0f} -> {c['peak_rss_mb']:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
