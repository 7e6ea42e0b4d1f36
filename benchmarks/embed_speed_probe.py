#!/usr/bin/env python3
"""Why some processes embed LFW at half speed: the same embedding job in fresh processes,
each started another way, with what each process saw.

    python benchmarks/embed_speed_probe.py [--runs 3] [--images 1024] [--input-size 64] [--tag CPU]

Each run is a fresh process that imports TensorFlow, builds MobileFaceNet with fixed random
weights, and embeds the same random crops with validation's embed_arrays (image + mirror),
after one warm-up batch. It reports img/s and what it saw: its CPU affinity, TensorFlow's
thread settings, the threads it had, and CPU seconds per wall second while embedding
(about 2 on these 2 cores when both work for it, about 1 when one does). The ways it starts:

  plain           as validate_on_lfw.py is started
  one-cpu         with an affinity of one CPU (what a parent pinned with taskset passes on)
  intra-op-1      TensorFlow's intra-op pool set to one thread
  busy-neighbour  while another process keeps one core busy
  tf-neighbour    while a second TensorFlow process runs the same embedding job (longer)
  tf-neighbour-intra-op-1
                  the same, both with an intra-op pool of one thread (each sized to its share)

Runs alternate between the ways (one round runs each once), so all see the same machine.
Writes benchmarks/results/embed_speed_probe[-<tag>]-<date>.json with the CPU (lscpu's model and
flags), every run, the median img/s per way and its ratio to plain.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import tagged_result_path  # noqa: E402
from benchmarks.startup_time import cpu  # noqa: E402
from utils.core.run_io import write_json  # noqa: E402

WAYS = ("plain", "one-cpu", "intra-op-1", "busy-neighbour", "tf-neighbour", "tf-neighbour-intra-op-1")


def child(images: int, input_size: int, intra_op: int) -> dict:
    """The embedding job itself, in this process; what it measured and saw."""
    import numpy as np
    import tensorflow as tf

    if intra_op:
        tf.config.threading.set_intra_op_parallelism_threads(intra_op)
    import keras

    from models import build_backbone
    from utils.verify.embeddings import embed_arrays

    keras.utils.set_random_seed(0)
    model = build_backbone("mobilefacenet", input_size, 128)
    crops = np.random.default_rng(0).integers(0, 256, (images, input_size, input_size, 3), dtype=np.uint8)
    embed_arrays(model, crops[:128])  # traces and warms up
    wall, cpu_seconds = time.perf_counter(), time.process_time()
    embed_arrays(model, crops)
    wall, cpu_seconds = time.perf_counter() - wall, time.process_time() - cpu_seconds
    with open("/proc/self/status") as f:
        threads = next(int(line.split()[1]) for line in f if line.startswith("Threads:"))
    return {"img_per_s": round(images / wall, 1), "cpu_per_wall": round(cpu_seconds / wall, 2),
            "affinity": sorted(os.sched_getaffinity(0)), "os_threads": threads,
            "tf_intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
            "tf_inter_op": tf.config.threading.get_inter_op_parallelism_threads()}


def run(way: str, images: int, input_size: int) -> dict:
    """One fresh child process started `way`."""
    def job(count: int) -> list[str]:
        return [sys.executable, __file__, "--child", "--images", str(count), "--input-size", str(input_size),
                *(["--intra-op", "1"] if way.endswith("intra-op-1") else [])]

    command = job(images)
    first_cpu = min(os.sched_getaffinity(0))
    neighbour = None
    if way == "busy-neighbour":
        neighbour = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    elif way.startswith("tf-neighbour"):  # starts with the measured one, and embeds for longer
        neighbour = subprocess.Popen(job(images * 20), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    try:
        out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True,
                             env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
                             preexec_fn=(lambda: os.sched_setaffinity(0, {first_cpu})) if way == "one-cpu" else None)
    finally:
        if neighbour is not None:
            neighbour.kill()
            neighbour.wait()
    return {"way": way, **json.loads(out.stdout.strip().splitlines()[-1])}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3, help="fresh processes per way")
    p.add_argument("--images", type=int, default=1024, help="crops each process embeds (each with its mirror)")
    p.add_argument("--input-size", type=int, default=64, help="crop side in pixels")
    p.add_argument("--results-dir", type=Path, default=ROOT / "benchmarks" / "results", help="where the JSON goes")
    p.add_argument("--notes", default="", help="what else ran on the machine meanwhile, kept beside the figures")
    p.add_argument("--tag", default="", help="put in the JSON's name (embed_speed_probe-TAG-DATE.json), e.g. the CPU")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--intra-op", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.images, args.input_size, args.intra_op)))
        return 0

    runs = []
    for round_number in range(args.runs):
        for way in WAYS:
            runs.append(run(way, args.images, args.input_size))
            print(f"round {round_number + 1}: {way:15s} {runs[-1]['img_per_s']:7.1f} img/s, "
                  f"{runs[-1]['cpu_per_wall']:.2f} CPU s per s, affinity {runs[-1]['affinity']}", flush=True)
    medians = {way: statistics.median(r["img_per_s"] for r in runs if r["way"] == way) for way in WAYS}
    result = {"benchmark": "embed_speed_probe", "date": datetime.date.today().isoformat(),
              "command": "python benchmarks/embed_speed_probe.py " + " ".join(argv or sys.argv[1:]),
              "cpu": cpu(), "images": args.images, "input_size": args.input_size, "model": "mobilefacenet",
              "median_img_per_s": medians,
              "ratio_to_plain": {way: round(v / medians["plain"], 2) for way, v in medians.items()},
              "notes": args.notes, "runs": runs}
    out = tagged_result_path(args.results_dir, "embed_speed_probe", args.tag, result["date"])
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, result)  # atomic: an interrupted run leaves the last complete result
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
