#!/usr/bin/env python3
"""Small-data LFW accuracy: the three stages on real data, and a classical baseline.

    python benchmarks/small_data_lfw.py [--work-dir /tmp/icyface-small-data] [--epochs N]

1. copies ../shared/data/celeba-299 + pubfig-42 (341 identities, 9,125 images, no one in LFW)
   into <work-dir>/raw (the shared folder stays read-only); --more-data adds celeba-aligned-2760
   (3,101 identities, 16,305 images in all);
2. preprocess_data.py: the crops the experiment file names (similarity 112 px; --recipe seed / margin: margin 182 px;
   --recipe part: the seed's three 64 px face-part sets, one trained on);
3. train_classifier.py --preset <the --recipe's experiment file> (LFW verified every --lfw-every epochs for the curve);
4. validate_on_lfw.py on the 6,000 pairs of ../shared/data/lfw;
5. classical baselines (LBP histograms, eigenfaces) on the same aligned LFW crops, same 10 folds;
and writes benchmarks/results/small_data_lfw-[<recipe>-][more-]<backend>-<date>.json (--name NAME:
   small_data_lfw-NAME-<backend>-<date>.json). Every stage resumes:
rerun the same command after a crash and finished work is kept.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from train_classifier import parse_config  # noqa: E402
from utils.core.run_io import SHARED_DATA_DIR, read_json, write_json  # noqa: E402
from utils.preprocess.settings import default_output_dir  # noqa: E402
from utils.training.config import expected_align  # noqa: E402

TRAINING_SETS = ("celeba-299", "pubfig-42")
# --more-data: 2,760 more CelebA identities (89x109 px, aligned by CelebA), LFW-disjoint
# (the seed's "a bigger dataset").
MORE_DATA = "celeba-aligned-2760"
# --recipe -> (experiment file in configs/, crops folder). modern: the recipe chosen for 60 minutes of
# training on the 2-core CPU (see docs/benchmarks.md); seed: the seed's own recipe, unchanged.
RECIPES = {"modern": ("small_data", "crops"), "augmented": ("small_data_augmented", "crops"),
           "80px": ("small_data_80", "crops"), "margin": ("small_data_margin", "crops-margin"),
           "part": ("small_data_part", "crops-parts"), "seed": ("seed", "crops-margin"),
           "distill-80px": ("distill_80", "crops"), "distill-80px-alone": ("distill_80_alone", "crops"),
           "distill-64px": ("distill_64", "crops")}


def run(cmd: list[str], log: Path, env: dict | None = None) -> float:
    """Run a stage's CLI, echoing and logging its output; seconds taken. Fails loudly."""
    print("$", " ".join(cmd), flush=True)
    started = time.time()
    with open(log, "a", encoding="utf-8") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, **(env or {})})
        for line in proc.stdout:
            out.write(line)
            print("  " + line, end="", flush=True)
    if proc.wait():
        raise SystemExit(f"stage failed (exit {proc.returncode}): {' '.join(cmd)}; log: {log}")
    return time.time() - started


def gather_training_images(shared: Path, raw: Path, sets: tuple[str, ...]):
    """One folder-per-identity tree of the sets (identity names do not collide: PubFig names, and
    CelebA identity numbers that no two sets share)."""
    done = raw.with_name(raw.name + ".complete")
    if done.exists():
        return
    shutil.rmtree(raw, ignore_errors=True)  # a copy cut short last time
    for name in sets:
        for identity in sorted(p for p in (shared / name).iterdir() if p.is_dir()):
            shutil.copytree(identity, raw / identity.name)
    done.touch()


def cpu_description() -> str:
    """lscpu's model name and widest vector extension: absolute times differ ~1.5-3x between them here."""
    model, flags = "unknown CPU", set()
    with open("/proc/cpuinfo") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    return f"{model}, {'AVX-512' if 'avx512f' in flags else 'AVX2' if 'avx2' in flags else 'no AVX2'}"


def history_rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "history.csv", newline="") as f:
        return list(csv.DictReader(f))


def lfw_check_seconds(history: list[dict]) -> float:
    return sum(float(r.get("lfw_seconds") or 0) for r in history)


def training_minutes(run_dir: Path) -> float:
    """Minutes of training in the run's last attempt, less the LFW checks made during it."""
    lfw_seconds = lfw_check_seconds(history_rows(run_dir))
    return round((read_json(run_dir / "model.json")["train_seconds_this_attempt"] - lfw_seconds) / 60, 1)


def figures(m: dict) -> str:
    """accuracy ± std, VAL@FAR=1e-3, AUC and EER of a metrics dict, in percent where the docs use it."""
    return (f"{100 * m['accuracy_mean']:.2f} ± {100 * m['accuracy_std']:.2f} %  "
            f"VAL@FAR=1e-3 {100 * m['val_at_far']:.1f} %"
            f"  AUC {m['auc']:.4f}  EER {100 * m['eer']:.2f} %")


def machine() -> str:
    return f"{len(os.sched_getaffinity(0))} CPU cores ({cpu_description()}), no GPU"


def curve(history: list[dict]) -> list[dict]:
    """Per epoch (from 1): loss, training and holdout top-1, agreement with a teacher (distillation),
    LFW accuracy where it was checked."""
    keep = ("loss", "scores_top1", "val_scores_top1", "top1", "val_top1", "teacher_cosine", "val_teacher_cosine",
            "cosine", "val_cosine", "lfw_accuracy")
    rows = []
    for r in history:
        row = {"epoch": int(r["epoch"]) + 1}  # Keras' CSV counts from 0
        row.update({k: round(float(r[k]), 4) for k in keep if r.get(k) not in (None, "", "nan")})
        rows.append(row)
    return rows


def classical_baselines(lfw: Path, pairs_file: Path, crops: Path, cache: Path) -> dict:
    """LBP and eigenface verification on the aligned LFW crops validation made."""
    import numpy as np

    from benchmarks.classical_baseline import PixelPCA, grey_crops, lbp_features
    from utils.preprocess.input_pipeline import list_crops
    from utils.preprocess.settings import SETTINGS_NAME
    from utils.verify.aligned_cache import aligned_pair_crops
    from utils.verify.pair_files import pair_rows
    from utils.verify.pair_metrics import evaluate_pairs, score_pairs
    from utils.verify.validation import FIGURES

    # The aligned copy validation made (found in the cache, not redone).
    info = {"preprocess_settings": read_json(crops / SETTINGS_NAME)["settings"]}
    pairs, lfw_crops = aligned_pair_crops(lfw, pairs_file, info, progress=False, cache_root=cache)
    rows_a, rows_b = pair_rows(pairs)
    lfw_grey = grey_crops(lfw_crops)
    train_grey = grey_crops(list_crops(crops).paths)
    results = {}
    for name, features in (("lbp", lambda: lbp_features(lfw_grey)),
                           ("eigenfaces", lambda: PixelPCA().fit(train_grey).transform(lfw_grey))):
        started = time.time()
        f = np.asarray(features(), np.float64)
        metrics = evaluate_pairs(score_pairs(f[rows_a], f[rows_b], "cosine"), pairs.same, pairs.fold)
        results[name] = {k: metrics[k] for k in FIGURES}
        results[name]["seconds"] = round(time.time() - started, 1)
    results["lbp"]["method"] = "uniform LBP (r=1, 8 neighbours), 8x8 cells on 64 px grey crops, sqrt, cosine"
    results["eigenfaces"]["method"] = ("128 whitened PCA components of 64 px grey pixels, fitted on the "
                                       "training crops, cosine")
    return results


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/icyface-small-data"),
                   help="raw copy, crops, run, LFW cache and report go here")
    p.add_argument("--shared-data", type=Path, default=SHARED_DATA_DIR, help="the read-only real data")
    p.add_argument("--recipe", choices=sorted(RECIPES), default="modern",
                   help="modern: MobileFaceNet/CosFace on 112 px similarity crops (configs/small_data.py); "
                        "augmented: the same with more augmentation (configs/small_data_augmented.py); 80px: the "
                        "same at an 80 px input for 15 epochs (configs/small_data_80.py); margin: the same "
                        "on the seed's 182 px margin crops (configs/small_data_margin.py); part: the same on the "
                        "seed's nose-tip face-part crops at 64 px (configs/small_data_part.py; `-- --part 0` or 1 for "
                        "an eye; all three are preprocessed at once); seed: "
                        "`train_classifier.py res-cp` on margin crops, the seed's recipe unchanged; distill-80px: "
                        "80px distilled from dlib's ResNet, for --more-data (configs/distill_80.py); "
                        "distill-80px-alone: the same with dlib's embedding as the only target "
                        "(configs/distill_80_alone.py); distill-64px: the 64 px student, 14 epochs "
                        "(configs/distill_64.py)")
    p.add_argument("--more-data", action="store_true",
                   help=f"also train on {MORE_DATA} (2,760 more identities, 7,180 images; raw copy, crops and "
                        f"run name get a '+more' suffix)")
    p.add_argument("--name", default=None,
                   help="run name under <work-dir>/runs (default small-data[-<recipe>][+more]); it also names the JSON")
    p.add_argument("--lfw-every", type=int, default=6, help="epochs between LFW checks during training (curve)")
    p.add_argument("--results-dir", type=Path, default=ROOT / "benchmarks" / "results", help="where the JSON goes")
    p.add_argument("recipe_overrides", nargs="*", help="extra train_classifier.py flags after --, e.g. -- --epochs 2")
    args = p.parse_args()
    sets = (*TRAINING_SETS, MORE_DATA) if args.more_data else TRAINING_SETS
    for name in (*sets, "lfw"):
        if not (args.shared_data / name).is_dir():
            print(f"error: {args.shared_data / name} not found (see ../shared/data/README.md)", file=sys.stderr)
            return 2
    preset, crops_name = RECIPES[args.recipe]
    recipe = ["--preset", preset, *args.recipe_overrides]
    expected = parse_config(recipe)  # the overrides may name other crops (--crop-size, --part)
    # --align parts writes the seed's three part sets under one parent folder, named by their settings.
    align = ["--align", "parts" if expected.align == "part" else expected.align, "--crop-size", str(expected.crop_size)]
    more = "+more" if args.more_data else ""
    name = args.name or ("small-data" if args.recipe == "modern" else f"small-data-{args.recipe}") + more
    work = args.work_dir.resolve()
    raw, crops_out, runs, cache = (work / d for d in ("raw" + more, crops_name + more, "runs", "cache"))
    crops = default_output_dir(raw, expected_align(expected), crops_out) if expected.align == "part" else crops_out
    report_dir = work / f"report-{name}"
    for d in (runs, cache, report_dir):
        d.mkdir(parents=True, exist_ok=True)
    lfw = (args.shared_data / "lfw").resolve()
    pairs = lfw / "pairs.txt"
    python = sys.executable
    log = work / "benchmark.log"

    gather_training_images(args.shared_data, raw, sets)
    preprocess_s = run([python, "preprocess_data.py", "--input-dir", str(raw), "--output-dir", str(crops_out), *align,
                        "--no-progress"], log)
    run_dir = runs / name
    if not (run_dir / "model.json").exists():
        run([python, "train_classifier.py", *recipe, "--data-dir", str(crops), "--runs-dir", str(runs),
             "--name", name, "--lfw-dir", str(lfw), "--lfw-every", str(args.lfw_every),
             "--lfw-cache-dir", str(cache)], log)
    run([python, "validate_on_lfw.py", "--model", str(run_dir), "--lfw-dir", str(lfw), "--pairs", str(pairs),
         "--cache-dir", str(cache), "--out", str(report_dir), "--no-progress"], log)
    report = read_json(report_dir / "report.json")
    model = read_json(run_dir / "model.json")
    config = read_json(run_dir / "config.json")
    history = history_rows(run_dir)
    lfw_seconds = lfw_check_seconds(history)
    baselines = classical_baselines(lfw, pairs, crops, cache)

    m = report["metrics"]
    result = {
        "date": datetime.date.today().isoformat(), "recipe": args.recipe,
        "command": "python benchmarks/small_data_lfw.py " + " ".join(sys.argv[1:]),
        "train_command": "python train_classifier.py " + " ".join(recipe),
        "keras_backend": config["keras_backend"], "machine": machine(),
        "training_data": {**config["dataset"], "sets": list(sets)},
        "model": model["net_type"], "input_size": model["input_size"], "embedding_size": model["embedding_size"],
        "loss": model["loss"], "alignment": model["alignment"],
        "lfw": {"pairs": report["pairs_count"], "accuracy_mean": m["accuracy_mean"],
                "accuracy_std": m["accuracy_std"], "val_at_far": m["val_at_far"], "far_target": m["far_target"],
                "auc": m["auc"], "eer": m["eer"], "flip_fused": report["flip"]},
        "train_minutes": training_minutes(run_dir),
        "lfw_checks_minutes": round(lfw_seconds / 60, 1),
        "preprocess_minutes_this_invocation": round(preprocess_s / 60, 1),
        "curve": curve(history),
        "classical_baselines": baselines,
    }
    args.results_dir.mkdir(parents=True, exist_ok=True)
    tag = (f"{args.name}-" if args.name else
           ("" if args.recipe == "modern" else f"{args.recipe}-") + ("more-" if args.more_data else ""))
    out = args.results_dir / f"small_data_lfw-{tag}{config['keras_backend']}-{result['date']}.json"
    write_json(out, result)
    print(f"\nLFW 6,000 pairs, trained on {config['dataset']['identities']} identities / "
          f"{config['dataset']['train_images']} images ({config['keras_backend']} backend, "
          f"{result['train_minutes']} min of training):")
    print(f"  {model['net_type']} + {model['loss']}: {figures(m)}")
    for name, b in baselines.items():
        print(f"  {name}: {figures(b)}")
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
