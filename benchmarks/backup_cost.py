#!/usr/bin/env python3
"""What one training backup costs: the figure behind --backup-every-steps' default.

    python benchmarks/backup_cost.py [--models res-cp:seed,iresnet50:arcface] [--identities 10575] [--repeats 5]

For each model:preset pair, builds the training model the preset trains (backbone, head over
--identities classes, SGD with its momentum slots, as train_classifier.py does), takes one
training step on random pixels so every optimizer slot exists, then writes the backup
--repeats times through the callback training uses (weights + optimizer state to a new file,
renamed into place, metadata switched) and prints seconds per backup, its size, and the step
time on this machine, so the share of time spent backing up every N steps can be read off.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def measure(net_type: str, preset: str, identities: int, repeats: int, every: int) -> dict:
    import keras
    import numpy as np

    from utils.training.callbacks import AtomicBackupAndRestore
    from utils.training.config import load_config
    from utils.training.model import build_training_model, model_batch

    config = load_config(preset, net_type=net_type, name="bench")
    model, _, head = build_training_model(config, identities)
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), loss=head.loss, metrics=head.metrics)
    rng = np.random.default_rng(0)
    batch = config.batch_size
    images = rng.uniform(0, 255, (batch, config.input_size, config.input_size, 3)).astype("float32")
    labels = rng.integers(0, identities, batch).astype("int32")
    inputs, targets = model_batch(model, images, labels)
    model.train_on_batch(inputs, targets)  # builds the optimizer's slots
    started = time.perf_counter()
    for _ in range(3):
        model.train_on_batch(inputs, targets)
    step_s = (time.perf_counter() - started) / 3
    with tempfile.TemporaryDirectory() as tmp:
        backup = AtomicBackupAndRestore(Path(tmp) / "backup", steps_per_epoch=10**9)
        backup.set_model(model)
        times = []
        for i in range(repeats):
            started = time.perf_counter()
            backup.save(0, i + 1)
            times.append(time.perf_counter() - started)
        size = sum(f.stat().st_size for f in (Path(tmp) / "backup").iterdir())
    backup_s = float(np.median(times))
    return {"model": net_type, "preset": preset, "input": config.input_size, "batch": batch,
            "identities": identities, "params_m": round(model.count_params() / 1e6, 1),
            "backup_mb": round(size / 2**20, 1), "backup_s": round(backup_s, 2), "step_s_cpu": round(step_s, 3),
            "share_cpu": backup_s / (every * step_s)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="res-cp:seed,iresnet50:arcface",
                   help="comma-separated backbone:preset pairs (the preset sets input size, head and batch)")
    p.add_argument("--identities", type=int, default=10_575, help="classes of the head (CASIA-WebFace: 10,575)")
    p.add_argument("--repeats", type=int, default=5, help="backups written per model (the median is printed)")
    p.add_argument("--every", type=int, default=1000, help="steps between backups, for the share of time printed")
    args = p.parse_args()
    from utils.core.startup import quiet_tensorflow

    quiet_tensorflow([])
    import keras

    rows = [measure(n, pre, args.identities, args.repeats, args.every)
            for n, pre in (m.split(":") for m in args.models.split(","))]
    print(f"Keras {keras.__version__} on {keras.backend.backend()}, {len(os.sched_getaffinity(0))} CPU cores, "
          f"{args.identities} identities, median of {args.repeats} backups")
    print(f"{'model':12} {'preset':8} {'px':>4} {'batch':>5} {'params':>8} {'backup':>9} {'s/backup':>9} "
          f"{'s/step CPU':>10} {'share @' + str(args.every):>11}")
    for r in rows:
        print(f"{r['model']:12} {r['preset']:8} {r['input']:>4} {r['batch']:>5} {r['params_m']:>7}M "
              f"{r['backup_mb']:>7}MB {r['backup_s']:>9} {r['step_s_cpu']:>10} {r['share_cpu']:>10.2%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
