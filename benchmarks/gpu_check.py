#!/usr/bin/env python3
"""The first thing to run on a machine with GPUs: training speed of the seed and ArcFace recipes,
float32 and mixed precision, on one and on all devices, from synthetic batches and real crops.

    python benchmarks/gpu_check.py [--crops CROPS_DIR] [--steps 50] [--out gpu_check.json]
    KERAS_BACKEND=jax python benchmarks/gpu_check.py   # a machine with JAX and Keras, no TensorFlow

Cases: each of --cases (model:input_size:preset; default res-cp @ 64 px with the seed recipe,
iresnet50 @ 112 px with the ArcFace recipe) x float32 and mixed_float16 x one device and all
devices (when there are several). Each case builds the preset's training model over
--identities classes (backbone, loss head, SGD with momentum, as train_classifier.py compiles
it; mixed_float16 as --mixed-precision sets it: float16 compute, float32 heads, loss scaling;
--precisions mixed_bfloat16 adds --bfloat16's),
then times --steps training steps after --warmup untimed ones (tracing, autotuning) on
  synthetic  one batch of random pixels, repeated: the model's own speed;
  crops      the training input pipeline over --crops (read, decode, resize, augment, batch),
             TensorFlow only (tf.data).
The batch is the preset's per device (--batch-size overrides), times the devices.
`ratio` = crops / synthetic: below ~0.95 the input pipeline, not the device, sets the speed.
`last_loss` is the last step's: finite, or the case failed (float16 overflow, say).

Prints one JSON object (and writes it to --out): machine, backend, devices, the cases, and
`not_measured`: each case or figure this machine could not give, with the reason. Several
devices are driven by TensorFlow's MirroredStrategy, what train_classifier.py uses; on JAX
only one device is measured. On a CPU it is a dry run (CI runs it so it cannot rot:
tests/test_gpu_check.py); ICYFACE_CPU_REPLICAS=2 splits the CPU into two stand-in devices.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PRECISIONS = ("float32", "mixed_float16")
OTHER_PRECISIONS = ("mixed_bfloat16",)  # --bfloat16's (no loss scaling); asked for by name
DEFAULT_CASES = "res-cp:64:seed,iresnet50:112:arcface"
CASIA_IDENTITIES = 10575  # the head's size in the recipes' real training


def parse_cases(text: str) -> list[tuple[str, int, str]]:
    """--cases as (model, input size, preset); a ValueError says which item is wrong and why."""
    from models import MODEL_NAMES
    from utils.training.config import TrainingError, load_config

    cases = []
    for item in text.split(","):
        parts = item.strip().split(":")
        if len(parts) != 3 or not parts[1].isdigit():
            raise ValueError(f"{item!r} is not model:input_size:preset (e.g. res-cp:64:seed)")
        model, size, preset = parts[0], int(parts[1]), parts[2]
        if model not in MODEL_NAMES:
            raise ValueError(f"{item!r}: no model {model!r}; choose one of {', '.join(MODEL_NAMES)}")
        try:
            load_config(preset)
        except TrainingError as err:
            raise ValueError(f"{item!r}: {err}") from None
        cases.append((model, size, preset))
    return cases


def step_timer():
    """A callback that records when each training step ended."""
    import keras

    class StepTimes(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.ends = []

        def on_train_batch_end(self, batch, logs=None):
            self.ends.append(time.perf_counter())

    return StepTimes()


def images_per_second(model, data, steps: int, warmup: int, batch: int) -> tuple[float, float]:
    """(images/s over `steps` steps after `warmup` untimed ones, the last step's loss)."""
    timer = step_timer()
    history = model.fit(data, epochs=1, steps_per_epoch=warmup + steps, callbacks=[timer], verbose=0, shuffle=False)
    timed = timer.ends[warmup - 1:]  # from the end of the last warm-up step
    return (len(timed) - 1) * batch / (timed[-1] - timed[0]), float(history.history["loss"][-1])


class Devices:
    """What this backend sees, and how to train on one device or on all of them."""

    def __init__(self):
        import keras

        self.backend = keras.backend.backend()
        self.strategy = None
        if self.backend == "tensorflow":
            import tensorflow as tf

            from utils.training.distribute import make_strategy

            # First: splitting the CPU into stand-in replicas must come before TensorFlow starts.
            self.strategy = make_strategy(None)
            gpus = tf.config.list_physical_devices("GPU")
            self.names = [tf.config.experimental.get_device_details(g).get("device_name", g.name) for g in gpus]
            if not gpus:
                self.names = [d.name for d in tf.config.list_logical_devices("CPU")]
            self.count = self.strategy.num_replicas_in_sync if self.strategy else 1
        elif self.backend == "jax":
            import jax

            self.names = [f"{d.platform}:{d.id} {d.device_kind}" for d in jax.devices()]
            self.count = 1  # several devices: only TensorFlow's MirroredStrategy path is measured
        else:
            self.names, self.count = [self.backend], 1
        self.accelerated = any("cpu" not in n.lower() for n in self.names)

    def placements(self):
        """(replicas, a function making the context to build the model in): one device, then all."""
        yield 1, contextlib.nullcontext
        if self.strategy is not None:
            yield self.count, self.strategy.scope


def synthetic_batches(model, images, labels, tensorflow: bool):
    """One batch, repeated: through tf.data under TensorFlow (as training feeds it), else a generator."""
    from utils.training.model import model_batch

    if tensorflow:
        import tensorflow as tf

        from utils.training.data import shape_batches

        return shape_batches(tf.data.Dataset.from_tensors((images, labels)).repeat(), model)

    def forever():
        while True:
            yield model_batch(model, images, labels)

    return forever()


def crop_batches(model, crops, input_size: int, batch: int):
    from utils.preprocess.input_pipeline import make_dataset
    from utils.training.data import shape_batches

    return shape_batches(make_dataset(crops.paths, crops.labels, input_size, batch, training=True), model).repeat()


def run_case(devices: Devices, scope, replicas: int, net_type: str, input_size: int, preset: str, precision: str,
             args, crops) -> dict:
    import keras
    import numpy as np

    from utils.training.config import load_config
    from utils.training.model import build_training_model

    config = load_config(preset, net_type=net_type, input_size=input_size, name="gpu-check",
                         mixed_precision=precision == "mixed_float16", bfloat16=precision == "mixed_bfloat16")
    batch = (args.batch_size or config.batch_size) * replicas
    identities = max(args.identities, len(crops.classes) if crops else 0)
    keras.utils.set_random_seed(0)
    keras.mixed_precision.set_global_policy(precision)
    try:
        with scope():
            model, _, head = build_training_model(config, identities)
            # As train_classifier.py compiles it (a constant rate: the schedule does not change the speed).
            model.compile(optimizer=keras.optimizers.SGD(config.lr, momentum=config.momentum), loss=head.loss,
                          loss_weights=head.loss_weights, metrics=head.metrics, jit_compile=args.jit)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (batch, input_size, input_size, 3)).astype("float32")
    labels = rng.integers(0, identities, batch).astype("int32")
    case = {"model": net_type, "input_size": input_size, "preset": preset, "loss_function": config.loss,
            "precision": precision, "replicas": replicas, "batch": batch, "identities": identities}
    tensorflow = devices.backend == "tensorflow"
    case["synthetic_img_s"], loss = images_per_second(
        model, synthetic_batches(model, images, labels, tensorflow), args.steps, args.warmup, batch)
    losses = [loss]
    if crops is not None and tensorflow:
        case["crops_img_s"], loss = images_per_second(
            model, crop_batches(model, crops, input_size, batch), args.steps, args.warmup, batch)
        losses.append(loss)
        case["ratio"] = round(case["crops_img_s"] / case["synthetic_img_s"], 3)
    for key in ("synthetic_img_s", "crops_img_s"):
        if key in case:
            case[key] = round(case[key], 2)
    case["last_loss"] = round(losses[-1], 4)
    case["finite"] = all(math.isfinite(v) for v in losses)
    keras.backend.clear_session()
    return case


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default=DEFAULT_CASES,
                   help=f"comma-separated model:input_size:preset (presets: configs/*.py; default {DEFAULT_CASES})")
    p.add_argument("--crops", type=Path, default=None,
                   help="a crops folder from preprocess_data.py, for the crops (input pipeline) figures; "
                        "without it only synthetic batches are timed")
    p.add_argument("--steps", type=int, default=50, help="timed training steps per figure (default 50)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps before them: tracing, autotuning (default 5)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="batch per device (default: each preset's, 32 seed and 128 arcface)")
    p.add_argument("--identities", type=int, default=CASIA_IDENTITIES,
                   help=f"classes in the loss head (default {CASIA_IDENTITIES}, CASIA-WebFace's)")
    p.add_argument("--precisions", default=",".join(PRECISIONS),
                   help="comma-separated, of " + ", ".join(PRECISIONS + OTHER_PRECISIONS))
    p.add_argument("--jit", action="store_true", help="compile with XLA, as train_classifier.py --jit")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    if args.steps < 2 or args.warmup < 1:
        p.error("--steps must be >= 2 and --warmup >= 1 (a rate needs two timed step ends after a warm-up)")
    precisions = [x.strip() for x in args.precisions.split(",")]
    if not set(precisions) <= set(PRECISIONS + OTHER_PRECISIONS):
        p.error(f"--precisions: give some of {', '.join(PRECISIONS + OTHER_PRECISIONS)}")
    try:
        cases = parse_cases(args.cases)
    except ValueError as err:
        p.error(f"--cases: {err}")
    if args.crops is not None and not args.crops.is_dir():
        p.error(f"--crops {args.crops}: no such folder")

    import keras

    from benchmarks.small_data_lfw import cpu_description

    devices = Devices()
    report = {"command": "python " + " ".join(sys.argv), "machine": f"{os.cpu_count()} CPU cores ({cpu_description()})",
              "backend": devices.backend, "keras": keras.__version__, "devices": devices.names,
              "accelerated": devices.accelerated, "cases": [], "not_measured": []}
    if devices.backend == "tensorflow":
        import tensorflow as tf

        report["tensorflow"] = tf.__version__
    crops = None
    if args.crops is None:
        report["not_measured"].append("crops figures: no --crops given")
    elif devices.backend != "tensorflow":
        report["not_measured"].append(f"crops figures: the input pipeline is tf.data, and the backend is "
                                      f"{devices.backend} (install tensorflow to measure it)")
    else:
        from utils.preprocess.datasets import DatasetError
        from utils.preprocess.input_pipeline import InputError, list_crops

        try:
            crops = list_crops(args.crops)
        except (DatasetError, InputError, OSError) as err:
            p.error(f"--crops {args.crops}: {err}")
    if devices.backend == "jax" and len(devices.names) > 1:
        report["not_measured"].append(f"all {len(devices.names)} devices: several devices are driven by "
                                      "TensorFlow's MirroredStrategy (train_classifier.py's path); run with "
                                      "TensorFlow for them")
    elif devices.count == 1:
        report["not_measured"].append("several devices: one device found")
    for replicas, scope in devices.placements():
        for net_type, input_size, preset in cases:
            for precision in precisions:
                print(f"{net_type} @ {input_size} px ({preset}), {precision}, {replicas} device(s)...",
                      file=sys.stderr, flush=True)
                report["cases"].append(run_case(devices, scope, replicas, net_type, input_size, preset, precision,
                                                args, crops))
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0 if all(c["finite"] for c in report["cases"]) else 1


if __name__ == "__main__":
    sys.exit(main())
