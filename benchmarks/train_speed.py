#!/usr/bin/env python3
"""Training throughput (images/s): synthetic in-memory tensors vs the real tf.data pipeline.

    python benchmarks/train_speed.py [--models res-cp:64,mobilefacenet:112] [--steps 12] [--batch-size 32]

(a) feeds the training model one batch of random pixels held in memory, repeated;
(b) feeds it the real pipeline (decode PNG crops from disk, resize, shuffle, batch,
prefetch) over crops of ../shared/data/pubfig-42 made by the preprocessing stage.
The ratio (b)/(a) shows whether the input pipeline keeps up (target >= 0.95).
Each figure times `--steps` train steps after 3 warm-up steps (graph tracing), with the
seed recipe (softmax head, SGD momentum). Runs on the Keras backend in KERAS_BACKEND.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from utils.core.run_io import SHARED_DATA_DIR  # noqa: E402


def make_crops(dest: Path, identities: int, per_identity: int) -> Path:
    from utils.preprocess.datasets import copy_sample
    from utils.preprocess.driver import run_preprocess
    from utils.preprocess.face_alignment import AlignSettings
    from utils.preprocess.settings import PreprocessSettings

    copy_sample(SHARED_DATA_DIR / "pubfig-42", dest / "photos", identities * per_identity, per_identity, identities)
    # HOG + centre box is enough to make realistic crops quickly; detection quality is not measured here.
    settings = PreprocessSettings(align=AlignSettings("margin", 182, 0.5), detectors=("hog", "center"))
    run_preprocess(dest / "photos", dest / "crops", settings, workers=len(os.sched_getaffinity(0)), progress=False)
    return dest / "crops"


def time_model(name: str, size: int, crops: Path, steps: int, batch_size: int) -> dict:
    import keras

    from benchmarks.gpu_check import crop_batches, images_per_second, synthetic_batches
    from utils.preprocess.input_pipeline import list_crops
    from utils.training.config import load_config
    from utils.training.model import build_training_model

    files = list_crops(crops, 0)
    config = load_config("seed", net_type=name, data_dir=str(crops), name="bench", input_size=size,
                         weight_decay=5e-4)
    model, _, head = build_training_model(config, len(files.classes))
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), loss=head.loss, metrics=head.metrics,
                  jit_compile=False)
    warmup = 3
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (batch_size, size, size, 3)).astype("float32")
    labels = rng.integers(0, len(files.classes), batch_size).astype("int32")
    synthetic = synthetic_batches(model, images, labels, tensorflow=True)
    real = crop_batches(model, files, size, batch_size)
    result = {"model": name, "size": size, "batch": batch_size}
    for label, ds in (("synthetic", synthetic), ("pipeline", real)):
        result[label] = round(images_per_second(model, ds, steps, warmup, batch_size)[0], 1)
    result["ratio"] = round(result["pipeline"] / result["synthetic"], 3)
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="res-cp:64,mobilefacenet:112,iresnet18:112",
                   help="comma-separated name:input_size pairs")
    p.add_argument("--steps", type=int, default=12, help="timed train steps per figure")
    p.add_argument("--batch-size", type=int, default=32, help="batch size")
    p.add_argument("--crops", type=Path, default=None, help="existing crops folder (default: make one from pubfig-42)")
    args = p.parse_args()
    import keras

    with tempfile.TemporaryDirectory() as tmp:
        crops = args.crops or make_crops(Path(tmp), identities=20, per_identity=40)
        rows = [time_model(n, int(s), crops, args.steps, args.batch_size)
                for n, s in (m.split(":") for m in args.models.split(","))]
    print(f"Keras {keras.__version__} on {keras.backend.backend()}, {len(os.sched_getaffinity(0))} CPU cores, "
          f"batch {args.batch_size}, {args.steps} timed steps")
    print(f"{'model':16} {'px':>4} {'synthetic img/s':>16} {'pipeline img/s':>15} {'ratio':>6}")
    for r in rows:
        print(f"{r['model']:16} {r['size']:>4} {r['synthetic']:>16} {r['pipeline']:>15} {r['ratio']:>6}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
