#!/usr/bin/env python3
"""Export a trained run's embedding model for serving without TensorFlow: ONNX and LiteRT.

    python export_model.py --model runs/small-data                       # ONNX, LiteRT float32 and float16
    python export_model.py --model runs/small-data --formats onnx,litert,litert-fp16,litert-int8
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from utils.core import cli
from utils.core.startup import TF_LOGS_FLAG, TF_LOGS_HELP, start

# int8 weights are opt-in: a quarter of the size, but they move embeddings more than float16 (docs/serving.md).
DEFAULT_FORMATS = "onnx,litert,litert-fp16"


def build_parser() -> argparse.ArgumentParser:
    p = cli.Parser(
        prog=__file__,
        description="Write the run's embedding model as embedding.onnx (ONNX Runtime) and embedding*.tflite "
                    "(LiteRT: float32, float16 weights, int8 dynamic-range weights) with Keras' model.export. Each "
                    "takes a uint8 RGB batch [N, S, S, 3] of crops aligned as the run's preprocess settings say and "
                    "returns L2-normalised embeddings. model.json then lists every file with its sha256, the input "
                    "and output, and the threshold of the run's last validate_on_lfw.py (rerun this after "
                    "validating, or validate first).")
    p.add_argument("--model", type=Path, required=True, help="run directory of a finished train_classifier.py run")
    p.add_argument("--formats", default=DEFAULT_FORMATS,
                   help="comma-separated: onnx (needs tf2onnx, onnx), litert (float32), litert-fp16 (float16 "
                        "weights, half the size), litert-int8 (int8 weights, a quarter)")
    p.add_argument(TF_LOGS_FLAG, action="store_true", help=TF_LOGS_HELP)
    return p


@cli.entry_point
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from utils.verify.embeddings import check_run_dir

    check_run_dir(args.model)  # named before TensorFlow loads
    start(argv)
    from utils.verify.runtime_models import export_formats

    exports = export_formats(args.model, [f.strip() for f in args.formats.split(",") if f.strip()])
    for name, entry in exports.items():
        print(f"{name:<12} {args.model / entry['file']}  {entry['bytes'] / 2**20:6.1f} MiB  {entry['weights']} weights "
              f" sha256 {entry['sha256'][:16]}…")
    print(f"described in {args.model / 'model.json'} (\"exports\", \"serving\")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
