#!/usr/bin/env python3
"""1:N search time with plain numpy: one probe (and a batch of 100) against galleries of 10k, 100k
and 1M random 512-d unit vectors, as utils.verify.identification.identify scores them (a matrix product
and the best entry per probe). Says at what gallery size an index library (e.g. FAISS) is needed.

    python benchmarks/identification_search.py [--sizes 10000,100000,1000000] [--dim 512]

float32 throughout: a 1M x 512 gallery is 2 GiB. Times are medians of --repeats searches after one
warm-up, on all cores numpy's BLAS uses.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.small_data_lfw import machine  # noqa: E402
from utils.verify.identification import identify  # noqa: E402

ONLINE_BUDGET_MS = 50  # a search that should stay a small part of a face service's answer time


def unit_rows(rng, count: int, dim: int) -> np.ndarray:
    rows = rng.standard_normal((count, dim), dtype=np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return rows


def search_ms(gallery: np.ndarray, names, probes: np.ndarray, repeats: int) -> float:
    """Median milliseconds per probe of identify() over `probes` (one call)."""
    identify(gallery, names, probes, 0.5)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        identify(gallery, names, probes, 0.5)
        times.append((time.perf_counter() - started) * 1000 / len(probes))
    return statistics.median(times)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="10000,100000,1000000", help="gallery sizes, comma-separated")
    p.add_argument("--dim", type=int, default=512, help="embedding size")
    p.add_argument("--repeats", type=int, default=5, help="timed searches per figure")
    args = p.parse_args()
    rng = np.random.default_rng(0)
    print(f"{machine()}; numpy {np.__version__}, float32, {args.dim}-d, median of {args.repeats}:")
    print(f"{'gallery':>10} {'MiB':>7} {'1 probe ms':>11} {'batch of 100: ms/probe':>23}")
    for size in (int(s) for s in args.sizes.split(",")):
        gallery = unit_rows(rng, size, args.dim)
        names = [str(i) for i in range(size)]
        one = search_ms(gallery, names, unit_rows(rng, 1, args.dim), args.repeats)
        batch = search_ms(gallery, names, unit_rows(rng, 100, args.dim), args.repeats)
        verdict = "fine with numpy" if one <= ONLINE_BUDGET_MS else f"over {ONLINE_BUDGET_MS} ms: use an index"
        print(f"{size:>10,} {gallery.nbytes / 2**20:>7.0f} {one:>11.2f} {batch:>23.3f}   {verdict}")
        del gallery
    return 0


if __name__ == "__main__":
    sys.exit(main())
