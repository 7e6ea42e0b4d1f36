#!/usr/bin/env python3
"""Preprocessing throughput (images/s) with 1 and 2 workers, default cascade.

    python benchmarks/preprocess_speed.py [--celeba-images 1920] [--lfw-images 960]

Takes a fixed, evenly spaced sample of ../shared/data/celeba-299 and ../shared/data/lfw,
copies it to a temporary folder and preprocesses it from scratch with each worker
count. Each configuration runs from a cold start, so the figures include worker start-up
(loading TensorFlow and the detectors); the start-up seconds are printed too.
"1 worker" is timed both with TensorFlow using every core (the default for one worker)
and with one thread, the share each of 2 workers gets.
Target on the 2-core dev machine: >= 25 images/s with 2 workers on celeba-299, and
2 workers >= 1.8x one worker.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from utils.core.run_io import SHARED_DATA_DIR  # noqa: E402
from utils.preprocess.datasets import copy_sample  # noqa: E402
from utils.preprocess.driver import run_preprocess  # noqa: E402
from utils.preprocess.settings import PreprocessSettings  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=SHARED_DATA_DIR, help="folder holding celeba-299/ and lfw/")
    p.add_argument("--celeba-images", type=int, default=1920, help="sample size from celeba-299")
    p.add_argument("--lfw-images", type=int, default=960, help="sample size from lfw")
    args = p.parse_args()
    if not (args.data / "celeba-299").is_dir():
        print(f"no data at {args.data}", file=sys.stderr)
        return 2
    configs = [(1, None), (1, 1), (2, None)]  # (workers, TF threads per worker; None = cores / workers)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, count in (("celeba-299", args.celeba_images), ("lfw", args.lfw_images)):
            n = len(copy_sample(args.data / name, tmp / name, count))
            for workers, threads in configs:
                out = tmp / f"out-{name}-{workers}-{threads}"
                t0 = time.time()
                s = run_preprocess(tmp / name, out, PreprocessSettings(), workers=workers, progress=False,
                                   threads_per_worker=threads)
                wall = time.time() - t0
                results.append({"dataset": name, "images": n, "workers": workers,
                                "tf_threads_per_worker": threads or max(1, os.cpu_count() // workers),
                                "seconds": round(wall, 1), "images_per_s": round(n / wall, 1),
                                "worker_startup_s": s.worker_startup_s,
                                "fallback_rate": round(s.fallback_rate, 4), "errors": s.counts["error"],
                                "peak_rss_mb_per_worker": s.peak_rss_mb_per_worker})
                shutil.rmtree(out)
    print(f"machine: {platform.machine()}, {len(os.sched_getaffinity(0))} cores; seconds and img/s include worker "
          f"start-up (loading TensorFlow and the detectors), shown on its own as 'start s'")
    print(f"{'dataset':11} {'images':>6} {'workers':>7} {'threads':>7} {'seconds':>7} {'img/s':>6} {'start s':>7} "
          f"{'fallback':>8} {'RSS/worker MB':>13}")
    for r in results:
        print(f"{r['dataset']:11} {r['images']:>6} {r['workers']:>7} {r['tf_threads_per_worker']:>7} {r['seconds']:>7} "
              f"{r['images_per_s']:>6} {r['worker_startup_s']:>7} {r['fallback_rate']:>8.1%} "
              f"{r['peak_rss_mb_per_worker']:>13}")
    for name in ("celeba-299", "lfw"):
        rs = [r for r in results if r["dataset"] == name]
        two = rs[2]
        for one in rs[:2]:
            print(f"{name}: 2 workers / 1 worker with {one['tf_threads_per_worker']} TF thread(s) = "
                  f"{two['images_per_s'] / one['images_per_s']:.2f}x")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
