#!/usr/bin/env python3
"""Memory of a classifier head over many identities, and a few real training steps with one.

    python benchmarks/head_memory.py [--identities 100000] [--steps 5] [--batch-size 128]

Prints, for CASIA-WebFace (10,572 identities), MS1MV2 (85,742) and Glint360K (360,232) at a
512-d embedding, the head's weights, SGD-momentum state and gradient in float32 (what one
training step holds at once). Then builds the ArcFace head of models/losses.py over
--identities classes on a synthetic 512-d embedding input (the backbone's cost does not depend
on the identity count), trains --steps steps and prints the measured parameter count, peak
resident memory added and seconds per step.
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DATASETS = {"CASIA-WebFace": 10_572, "MS1MV2": 85_742, "Glint360K": 360_232}
FLOAT32 = 4


def head_bytes(identities: int, dim: int) -> dict:
    """Weights (one class centre per identity), SGD momentum (one slot each), the gradient."""
    weights = identities * dim * FLOAT32
    return {"weights": weights, "momentum": weights, "gradient": weights, "total": 3 * weights}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def train_steps(identities: int, dim: int, steps: int, batch_size: int) -> dict:
    import keras
    import numpy as np

    from models.losses import make_loss

    before = peak_rss_mb()
    loss = make_loss("arcface", identities, margin_scale=64.0, margin_m=0.5, label_smoothing=0.0)
    embedding, labels = keras.Input((dim,), name="embedding"), keras.Input((), dtype="int32", name="labels")
    head = loss.attach(embedding, labels)
    model = keras.Model([embedding, labels], head.outputs)
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9), loss=head.loss, loss_weights=head.loss_weights)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch_size * steps, dim)).astype("float32")
    y = rng.integers(0, identities, batch_size * steps).astype("int32")
    targets = {name: y for name in model.output}  # a margin head's outputs: "logits" (trained), "scores"
    model.train_on_batch([x[:batch_size], y[:batch_size]], {k: v[:batch_size] for k, v in targets.items()})
    started = time.time()  # after the first step, which builds and traces
    history = model.fit([x, y], targets, batch_size=batch_size, epochs=1, verbose=0)
    seconds = (time.time() - started) / steps
    return {"identities": identities, "dim": dim, "parameters": int(model.count_params()),
            "peak_rss_added_mb": round(peak_rss_mb() - before, 1), "seconds_per_step": round(seconds, 3),
            "loss": round(float(history.history["loss"][-1]), 3), "batch_size": batch_size}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dim", type=int, default=512, help="embedding size")
    p.add_argument("--identities", type=int, default=100_000, help="classes of the head trained for real")
    p.add_argument("--steps", type=int, default=5, help="training steps measured")
    p.add_argument("--batch-size", type=int, default=128, help="batch size of those steps")
    args = p.parse_args()

    print(f"classifier head at {args.dim}-d, float32 (weights + SGD momentum + gradient):")
    for name, identities in DATASETS.items():
        b = head_bytes(identities, args.dim)
        print(f"  {name:<14} {identities:>8,} identities: weights {b['weights'] / 2**20:7.0f} MiB, momentum "
              f"{b['momentum'] / 2**20:7.0f} MiB, gradient {b['gradient'] / 2**20:7.0f} MiB, in all "
              f"{b['total'] / 2**30:5.2f} GiB ({b['total'] // identities:,} bytes per identity)")

    from utils.core.startup import quiet_tensorflow
    quiet_tensorflow()
    measured = train_steps(args.identities, args.dim, args.steps, args.batch_size)
    expected = head_bytes(args.identities, args.dim)["total"] / 2**20
    print(f"trained {args.steps} steps of an ArcFace head over {measured['identities']:,} identities "
          f"({measured['parameters']:,} parameters, batch {measured['batch_size']}): "
          f"{measured['seconds_per_step']} s/step, peak RSS +{measured['peak_rss_added_mb']} MiB "
          f"(weights + momentum + gradient: {expected:.0f} MiB), loss {measured['loss']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
