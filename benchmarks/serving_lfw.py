#!/usr/bin/env python3
"""The exported formats against the Keras model: parity on LFW's aligned crops, LFW accuracy, speed.

    python benchmarks/serving_lfw.py --model RUN [--cache-dir /tmp/icyface-small-data/cache]

Exports what model.json does not list yet (every format, int8 included), aligns LFW the way the run
was trained (cached), decodes every crop once to the uint8 batch the online half would send, and
then, all in one run on this machine:
1. parity: each format's embedding of every LFW crop vs the Keras serving model's (max abs
   difference, lowest cosine), run by ONNX Runtime or the LiteRT interpreter, not TensorFlow;
2. LFW accuracy (6,000 pairs, 10 folds, flip-fused, cosine) of each format, of the Keras serving
   model on the same uint8 crops, and of validate_on_lfw.py's own path (float crops);
3. speed: images/s of each format and of the Keras model at batch 1 and 32 on in-memory crops, and
   validate_on_lfw.py's embedding (decode from the cached files + image and mirror) against the
   Keras model's raw throughput on the same work in memory.
Prints a table and writes benchmarks/results/serving_lfw-<run name>-<date>.json.
"""
from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.small_data_lfw import machine  # noqa: E402
from utils.core.run_io import SHARED_DATA_DIR, read_json, write_json  # noqa: E402


def images_per_second(model, images: np.ndarray, batch_size: int, seconds: float = 5.0) -> float:
    """Images/s of model over in-memory batches, after one warm-up batch, for about `seconds`
    (a Keras model through its compiled predict step, as embed_arrays runs it)."""
    model = getattr(model, "predict_on_batch", model)
    model(images[:batch_size])
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        start = done % (len(images) - batch_size + 1)
        np.asarray(model(images[start:start + batch_size]))
        done += batch_size
    return done / (time.perf_counter() - started)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="a finished run directory")
    p.add_argument("--lfw-dir", type=Path, default=SHARED_DATA_DIR / "lfw", help="raw LFW images")
    p.add_argument("--pairs", type=Path, default=None, help="pairs file (default <lfw-dir>/pairs.txt)")
    p.add_argument("--cache-dir", type=Path, default=Path("/tmp/icyface-small-data/cache"),
                   help="where the aligned LFW copy is cached")
    p.add_argument("--seconds", type=float, default=5.0, help="timing per speed figure")
    p.add_argument("--results-dir", type=Path, default=ROOT / "benchmarks" / "results", help="where the JSON goes")
    args = p.parse_args()

    from utils.core.startup import quiet_tensorflow
    quiet_tensorflow()
    from utils.preprocess.input_pipeline import make_dataset
    from utils.verify.aligned_cache import aligned_pair_crops
    from utils.verify.embeddings import embed_arrays, embed_files, load_embedding_model
    from utils.verify.pair_files import pair_rows
    from utils.verify.pair_metrics import evaluate_pairs, score_pairs
    from utils.verify.runtime_models import FORMATS, RuntimeModel, export_formats, serving_model
    from utils.verify.validation import FIGURES

    run = args.model
    info = read_json(run / "model.json")
    formats = list(FORMATS)  # int8 too: whether it keeps accuracy is one of the questions
    if missing := [f for f in formats if f not in info.get("exports", {})]:
        export_formats(run, missing)
        info = read_json(run / "model.json")
    backbone, info = load_embedding_model(run)
    size = info["input_size"]
    pairs, crops = aligned_pair_crops(args.lfw_dir, args.pairs or args.lfw_dir / "pairs.txt", info, workers=2,
                                      progress=False, cache_root=args.cache_dir)
    rows_a, rows_b = pair_rows(pairs)
    same, fold = np.asarray(pairs.same), np.asarray(pairs.fold)
    floats = np.concatenate([np.asarray(b) for b, _ in make_dataset(crops, np.zeros(len(crops), np.int32), size, 256,
                                                                      training=False)])
    crops_uint8 = np.clip(np.rint(floats), 0, 255).astype(np.uint8)  # what a service sends

    def lfw(model, images):
        emb = np.concatenate([embed_arrays(model, images[i:i + 256]) for i in range(0, len(images), 256)])
        m = evaluate_pairs(score_pairs(emb[rows_a], emb[rows_b], "cosine"), same, fold)
        return {k: m[k] for k in FIGURES}

    def embed_all(model):
        run = getattr(model, "predict_on_batch", model)
        return np.concatenate([np.asarray(run(crops_uint8[i:i + 256])) for i in range(0, len(crops_uint8), 256)])

    serving = serving_model(backbone)
    reference = embed_all(serving)
    rows = [{"format": "keras (validate_on_lfw.py: float crops)", **lfw(backbone, floats)},
            {"format": "keras serving model (uint8 crops)", **lfw(serving, crops_uint8),
             "batch1_images_s": images_per_second(serving, crops_uint8, 1, args.seconds),
             "batch32_images_s": images_per_second(serving, crops_uint8, 32, args.seconds)}]
    for name in formats:
        entry = info["exports"][name]
        runtime = RuntimeModel(run / entry["file"])
        emb = embed_all(runtime)
        rows.append({"format": name, "file": entry["file"], "bytes": entry["bytes"], "weights": entry["weights"],
                     "runtime": entry["runtime"], "max_abs_diff": float(np.abs(emb - reference).max()),
                     "min_cosine": float((emb * reference).sum(axis=1).min()), **lfw(runtime, crops_uint8),
                     "batch1_images_s": images_per_second(runtime, crops_uint8, 1, args.seconds),
                     "batch32_images_s": images_per_second(runtime, crops_uint8, 32, args.seconds)})

    # validate_on_lfw.py's embedding, from the cached crop files, against the same work in memory.
    sample = crops[:2048]
    embed_files(backbone, sample[:256], size, progress=False)  # trace the pipeline
    started = time.perf_counter()
    embed_files(backbone, sample, size, flip=True, batch_size=128, progress=False)
    pipeline = len(sample) / (time.perf_counter() - started)
    started = time.perf_counter()
    for i in range(0, len(sample), 128):
        embed_arrays(backbone, floats[i:i + 128], flip=True)
    raw = len(sample) / (time.perf_counter() - started)

    result = {"date": datetime.date.today().isoformat(), "run": str(run), "machine": machine(),
              "command": "python benchmarks/serving_lfw.py " + " ".join(sys.argv[1:]),
              "net_type": info["net_type"], "input_size": size, "embedding_size": info["embedding_size"],
              "lfw_images": len(crops), "pairs": int(len(same)), "formats": rows,
              "embedding_speed": {"images": len(sample), "validate_on_lfw_images_s": pipeline,
                                  "raw_in_memory_images_s": raw, "ratio": pipeline / raw,
                                  "what": "image + mirror embedded, batch 128"}}
    args.results_dir.mkdir(parents=True, exist_ok=True)
    out = args.results_dir / f"serving_lfw-{run.name}-{result['date']}.json"
    write_json(out, result)
    print(f"{machine()}; {run} ({info['net_type']} @ {size} px), {len(crops)} LFW crops, {len(same)} pairs")
    print(f"{'format':<42} {'max |diff|':>10} {'min cos':>8} {'LFW acc':>8} {'VAL@1e-3':>8} {'b=1 img/s':>10} "
          f"{'b=32 img/s':>10} {'MiB':>6}")
    for r in rows:
        diff, cosine = r.get('max_abs_diff', float('nan')), r.get('min_cosine', float('nan'))
        print(f"{r['format']:<42} {diff:>10.2e} {cosine:>8.5f} "
              f"{100 * r['accuracy_mean']:>7.2f}% {100 * r['val_at_far']:>7.1f}% "
              f"{r.get('batch1_images_s', float('nan')):>10.0f} {r.get('batch32_images_s', float('nan')):>10.0f} "
              f"{r.get('bytes', float('nan')) / 2**20:>6.1f}")
    s = result["embedding_speed"]
    print(f"validate_on_lfw.py's embedding: {s['validate_on_lfw_images_s']:.0f} img/s vs "
          f"{s['raw_in_memory_images_s']:.0f} "
          f"in memory (image + mirror): {s['ratio']:.2f}x")
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
