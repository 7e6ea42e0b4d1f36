#!/usr/bin/env python3
"""Training speed of the float32 step against XLA compilation (jit_compile) and mixed bfloat16,
side by side in one run, with each one's loss curve over the same short, fixed budget.

    python benchmarks/precision_speed.py [--models mobilefacenet:80,res-cp:64] [--steps 40] [--tag CPU]

Every mode trains the same model from the same initial weights on the same real crops
(pubfig-42, cropped by the preprocessing stage) in the same order, so the curves differ only
by the arithmetic. bfloat16 runs only where lscpu lists avx512_bf16 or amx_bf16 (elsewhere it is
emulated, and the row says so instead of timing it); --force-bf16 times it anyway. Writes
benchmarks/results/precision_speed[-<tag>]-<date>.json with lscpu's model and flags.
"""
from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from benchmarks import tagged_result_path  # noqa: E402
from benchmarks.small_data_lfw import machine  # noqa: E402
from benchmarks.train_speed import make_crops  # noqa: E402
from utils.core.run_io import write_json  # noqa: E402

BF16_FLAGS = ("avx512_bf16", "amx_bf16")
WARMUP = 3  # steps before the clock starts: tracing, and XLA's compilation


def cpu_flags() -> set:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def real_batches(crops: Path, size: int, batch_size: int, steps: int):
    """(images, labels) batches of real crops resized to size, fixed order: every mode sees the same."""
    from utils.preprocess.input_pipeline import list_crops, make_dataset

    files = list_crops(crops, 0)
    order = np.random.default_rng(0).permutation(len(files.paths))
    paths = [files.paths[i] for i in order]
    labels = files.labels[order]
    ds = make_dataset(paths, labels, size, batch_size, training=False).repeat()
    batches = [(np.asarray(x), np.asarray(y)) for x, y in ds.take(steps + WARMUP)]
    return batches, len(files.classes)


def train_curve(name: str, size: int, mode: str, batches, classes: int) -> dict:
    """Train `mode` over `batches` from seed 0: images/s after the warm-up, and the loss of every step."""
    import keras

    from utils.training.config import load_config
    from utils.training.model import build_training_model, model_batch

    keras.mixed_precision.set_global_policy("mixed_bfloat16" if mode == "bfloat16" else "float32")
    keras.utils.set_random_seed(0)
    config = load_config("small_data", net_type=name, input_size=size, name="bench", data_dir="unused")
    model, _, head = build_training_model(config, classes)
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss=head.loss,
                  loss_weights=head.loss_weights, jit_compile=mode == "xla")
    losses, started = [], None
    for step, (images, labels) in enumerate(batches):
        if step == WARMUP:
            started = time.perf_counter()
        inputs, targets = model_batch(model, images, labels)
        out = model.train_on_batch(inputs, targets, return_dict=True)
        losses.append(round(float(out["loss"]), 4))
    seconds = time.perf_counter() - started
    keras.mixed_precision.set_global_policy("float32")
    timed = len(batches) - WARMUP
    return {"images_per_second": round(timed * len(batches[0][0]) / seconds, 1), "loss_curve": losses}


def summary(result: dict) -> str:
    """One line for the benchmark docs: each mode's speed against float32, and its last loss."""
    parts = []
    for row in result["rows"]:
        modes = [f"{mode} {row[mode]['speed_over_float32']}x (last loss {row[mode]['last_loss_minus_float32']:+.2f})"
                 for mode in ("xla", "bfloat16") if mode in row]
        parts.append(f"{row['model']}@{row['input_size']}: float32 {row['float32']['images_per_second']} img/s, "
                     + ", ".join(modes))
    bf16 = "" if result["bfloat16"] == "timed" else "; bfloat16 " + result["bfloat16"]
    return "; ".join(parts) + bf16


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="mobilefacenet:80,res-cp:64", help="comma-separated name:input_size pairs")
    p.add_argument("--steps", type=int, default=40, help="timed train steps per mode (the fixed budget)")
    p.add_argument("--batch-size", type=int, default=32, help="batch size")
    p.add_argument("--force-bf16", action="store_true", help="time mixed bfloat16 even without CPU support")
    p.add_argument("--results-dir", type=Path, default=ROOT / "benchmarks" / "results", help="where the JSON goes")
    p.add_argument("--tag", default="", help="put in the JSON's name (precision_speed-TAG-DATE.json), e.g. the CPU, "
                   "so that runs on two machines on one day both keep their file")
    args = p.parse_args()
    flags = cpu_flags()
    native_bf16 = sorted(f for f in BF16_FLAGS if f in flags)
    modes = ["float32", "xla"] + (["bfloat16"] if native_bf16 or args.force_bf16 else [])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        crops = make_crops(Path(tmp), identities=20, per_identity=40)
        for name, size in (m.split(":") for m in args.models.split(",")):
            batches, classes = real_batches(crops, int(size), args.batch_size, args.steps)
            row = {"model": name, "input_size": int(size), "batch": args.batch_size}
            for mode in modes:
                row[mode] = train_curve(name, int(size), mode, batches, classes)
                print(f"{name}@{size} {mode}: {row[mode]['images_per_second']} img/s, "
                      f"loss {row[mode]['loss_curve'][0]} -> {row[mode]['loss_curve'][-1]}", flush=True)
            base = row["float32"]
            for mode in modes[1:]:
                row[mode]["speed_over_float32"] = round(row[mode]["images_per_second"] / base["images_per_second"], 2)
                row[mode]["last_loss_minus_float32"] = round(row[mode]["loss_curve"][-1] - base["loss_curve"][-1], 4)
            rows.append(row)
    model_name = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if "model name" in line), "")
    result = {"date": datetime.date.today().isoformat(), "machine": machine(),
              "command": "python benchmarks/precision_speed.py " + " ".join(sys.argv[1:]),
              "lscpu": {"model_name": model_name, "bf16_flags": native_bf16,
                        "vector_flags": sorted(f for f in flags if f.startswith(("avx", "amx")))},
              "bfloat16": "timed" if "bfloat16" in modes else
              "not timed: lscpu lists neither avx512_bf16 nor amx_bf16, so bfloat16 would be emulated here",
              "steps": args.steps, "warmup_steps": WARMUP, "rows": rows}
    result["notes"] = summary(result)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    out = tagged_result_path(args.results_dir, "precision_speed", args.tag, result["date"])
    write_json(out, result)
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
