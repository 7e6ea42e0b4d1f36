#!/usr/bin/env python3
"""A distillation teacher's own row: LFW accuracy on this project's copy (same 10 folds and
figures as validate_on_lfw.py), its throughput on this CPU and its file size; with --student, the
student's throughput beside it (Keras and LiteRT, batch 1 and 32) and how closely it agrees with
the teacher on the LFW photos (which neither trained on).

    python benchmarks/teacher_lfw.py [--teacher dlib] [--student RUN_DIR] [--cache-dir DIR]

LFW is aligned once with the default detector cascade (cached under --cache-dir, shared with
small_data_lfw.py's validation); dlib then takes its own 5-point 150 px chip from each original
photo in the face box found. Writes benchmarks/results/teacher_lfw-<teacher>[-<student>]-<date>.json.
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.small_data_lfw import machine  # noqa: E402
from utils.core.run_io import SHARED_DATA_DIR, write_json  # noqa: E402

SPEED_IMAGES = 64  # images timed per throughput figure (after a warm-up pass)


def images_per_second(run, batches: list) -> float:
    run(batches[0])  # warm-up: first-call compilation and memory planning are not throughput
    started = time.perf_counter()
    for batch in batches:
        run(batch)
    return round(sum(len(b) for b in batches) / (time.perf_counter() - started), 2)


def in_batches(items, size: int) -> list:
    return [items[i:i + size] for i in range(0, len(items), size)]


def dlib_speed(teacher, photos: list, boxes: list) -> dict:
    """Photo + face box -> descriptor (landmarks, chip, network), one process, batch 1 and 32."""
    pairs = list(zip(photos, boxes))

    def run(batch):
        return teacher.embed_photos([p for p, _ in batch], [b for _, b in batch])

    return {"batch_1": images_per_second(run, in_batches(pairs, 1)),
            "batch_32": images_per_second(run, in_batches(pairs, 32)), "threads": 1,
            "what": "landmarks + 150 px chip + ResNet descriptor from the photo and its face box, one process"}


def student_speed(run_dir: Path, crops: np.ndarray) -> dict:
    """The student's exported files on the same number of crops at its input size."""
    import keras

    from utils.verify.embeddings import load_embedding_model
    from utils.verify.runtime_models import RuntimeModel

    model, info = load_embedding_model(run_dir)
    size = int(info["input_size"])
    images = np.stack([keras.ops.convert_to_numpy(keras.ops.image.resize(c, (size, size))) for c in crops])
    out = {"keras": {"batch_1": images_per_second(model.predict_on_batch, in_batches(images, 1)),
                     "batch_32": images_per_second(model.predict_on_batch, in_batches(images, 32)),
                     "threads": len(os.sched_getaffinity(0))}}
    files = {"keras": run_dir / info["files"]["keras"]}
    for name, entry in info.get("exports", {}).items():
        path = run_dir / entry["file"]
        files[name] = path
        if path.suffix == ".tflite":
            runtime = RuntimeModel(path, threads=1)
            uint8 = images.round().clip(0, 255).astype(np.uint8)
            out[name] = {"batch_1": images_per_second(runtime, in_batches(uint8, 1)),
                         "batch_32": images_per_second(runtime, in_batches(uint8, 32)), "threads": 1}
    return {"throughput": out, "file_bytes": {k: p.stat().st_size for k, p in files.items() if p.is_file()}}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default="dlib", help="dlib, a run directory or an .onnx file (default: dlib)")
    p.add_argument("--student", type=Path, default=None, help="a distilled run directory: its speed and agreement")
    p.add_argument("--lfw-dir", type=Path, default=SHARED_DATA_DIR / "lfw", help="raw LFW with pairs.txt")
    p.add_argument("--cache-dir", type=Path, default=Path("/tmp/icyface-small-data/cache"),
                   help="where the aligned LFW copy (and the teacher's vectors beside it) are cached")
    p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)), help="processes for alignment "
                                                                                     "and dlib")
    p.add_argument("--results-dir", type=Path, default=ROOT / "benchmarks" / "results", help="where the JSON goes")
    args = p.parse_args()
    if not (args.lfw_dir / "pairs.txt").is_file():
        print(f"error: {args.lfw_dir / 'pairs.txt'} not found (see ../shared/data/README.md)", file=sys.stderr)
        return 2

    from utils.core.startup import quiet_tensorflow
    quiet_tensorflow()  # before anything below imports TensorFlow: no load-time log lines
    from utils.core.image_io import load_rgb
    from utils.preprocess.face_alignment import AlignSettings
    from utils.preprocess.settings import PreprocessSettings
    from utils.verify.aligned_cache import align_like_training, crops_for
    from utils.verify.pair_files import pair_rows, read_pairs
    from utils.verify.pair_metrics import evaluate_pairs, score_pairs
    from utils.verify.teacher import open_teacher, teacher_embeddings
    from utils.verify.validation import FIGURES

    teacher = open_teacher(args.teacher)
    # The alignment only decides the aligned copy's name and crops; the face boxes dlib uses are the
    # cascade's, whatever the alignment. Similarity 112 px: the small-data recipes', so validation reuses it.
    settings = PreprocessSettings(align=AlignSettings("similarity", 112))
    info = {"preprocess_settings": settings.to_dict()}
    aligned, manifest = align_like_training(args.lfw_dir, info, None, args.workers, True, args.cache_dir)
    pairs = read_pairs(args.lfw_dir / "pairs.txt", args.lfw_dir)
    crops = crops_for(pairs.images, args.lfw_dir, aligned, manifest)
    started = time.time()
    vectors = teacher_embeddings(aligned, teacher, args.workers)
    embed_seconds = time.time() - started
    keys = [os.path.relpath(c, aligned) for c in crops]
    emb = np.stack([vectors[k] for k in keys])
    rows_a, rows_b = pair_rows(pairs)
    # Cosine only: on the L2-normalised vectors Euclidean distance ranks pairs the same way.
    m = evaluate_pairs(score_pairs(emb[rows_a], emb[rows_b], "cosine"), pairs.same, pairs.fold)
    lfw = {"cosine": {k: m[k] for k in FIGURES}}

    sample = sorted(set(keys))[:SPEED_IMAGES]
    rows = {r["output"]: r for r in manifest.values() if r["status"] != "error"}
    photos = [load_rgb(args.lfw_dir / rows[k]["path"]) for k in sample]
    boxes = [tuple(float(rows[k][c]) for c in ("x0", "y0", "x1", "y1")) for k in sample]
    result = {
        "date": datetime.date.today().isoformat(), "machine": machine(),
        "command": "python benchmarks/teacher_lfw.py " + " ".join(sys.argv[1:]),
        "teacher": teacher.describe(), "pairs": len(pairs.same), "lfw": lfw,
        "provenance": "LFW is only a test set here, but a teacher's LFW figure, and every student's, inherits "
                      "what the teacher was trained on: " + teacher.description,
        "embedding_minutes_this_invocation": round(embed_seconds / 60, 1),
    }
    if teacher.kind == "dlib":
        result["throughput"] = dlib_speed(teacher, photos, boxes)
        result["file_bytes"] = {"dlib": teacher.model_file.stat().st_size + teacher.landmarks_file.stat().st_size}
    if args.student:
        from utils.verify.embeddings import embed_files, load_embedding_model

        student, student_info = load_embedding_model(args.student)
        sample_crops = np.stack([load_rgb(aligned / k) for k in sample]).astype(np.float32)
        result["student"] = {"run": str(args.student), "net_type": student_info.get("net_type"),
                             "input_size": student_info.get("input_size"), **student_speed(args.student, sample_crops)}
        # Agreement: the student's embedding against the teacher's vector centred on the LFW photos' mean
        # (training centred the targets on its own crops' mean; LFW's is close to it).
        s = embed_files(student, crops, int(student_info["input_size"]), flip=False, progress=False)
        t = emb - emb.mean(axis=0)
        t /= np.linalg.norm(t, axis=1, keepdims=True)
        result["student"]["lfw_agreement_cosine_mean"] = round(float(np.mean(np.sum(s * t, axis=1))), 4)
        ratio = {f"{name}_{b}": round(v[b] / result["throughput"][b], 1)
                 for name, v in result["student"]["throughput"].items() for b in ("batch_1", "batch_32")}
        result["student"]["throughput_over_teacher"] = ratio
    tag = teacher.kind if teacher.kind == "dlib" else Path(args.teacher).stem
    name = f"teacher_lfw-{tag}{'-' + args.student.name if args.student else ''}-{result['date']}.json"
    args.results_dir.mkdir(parents=True, exist_ok=True)
    write_json(args.results_dir / name, result)
    c = lfw["cosine"]
    print(f"{teacher.spec}: LFW {100 * c['accuracy_mean']:.2f} ± {100 * c['accuracy_std']:.2f} % (cosine), "
          f"VAL@FAR=1e-3 {100 * c['val_at_far']:.1f} %, AUC {c['auc']:.4f}")
    print(f"results: {args.results_dir / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
