#!/usr/bin/env python3
"""Single models vs their ensemble on LFW's 6,000 pairs (the seed's to-do: "crops of the face to
train several models and ensemble them").

    python benchmarks/ensemble_lfw.py --model RUN_A --model RUN_B [--model ...] --name a+b [--tune-weights-on TREE]

Each member aligns LFW its own way (its own preprocess settings) and is scored alone; the
L2-normalised embeddings are then fused by every fusion validation knows (with the cosine metric,
concatenation and the mean of scores are the same number), with equal weights or, with
--tune-weights-on, weights chosen on other people (utils.verify.fusion_weights). Prints a table and writes
benchmarks/results/ensemble_lfw-<name>-<date>.json: each member's recipe, crops, accuracy,
VAL@FAR=1e-3 and training minutes, the ensemble's figures and its total training time.
"""
from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.small_data_lfw import figures, machine, training_minutes  # noqa: E402
from utils.core.run_io import SHARED_DATA_DIR, read_json, write_json  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, action="append", required=True,
                   help="a finished run directory; give two or more")
    p.add_argument("--name", required=True, help="the ensemble's name: its report folder and JSON file")
    p.add_argument("--lfw-dir", type=Path, default=SHARED_DATA_DIR / "lfw", help="raw LFW images")
    p.add_argument("--pairs", type=Path, default=None, help="pairs file (default <lfw-dir>/pairs.txt)")
    p.add_argument("--cache-dir", type=Path, default=Path("/tmp/icyface-small-data/cache"),
                   help="where each member's aligned LFW copy is cached (reused across runs)")
    p.add_argument("--tune-weights-on", type=Path, default=None, metavar="TREE",
                   help="choose the members' weights on this folder-per-identity tree of people in neither LFW nor "
                        "the members' training data (e.g. ../shared/data/celeba-aligned-2760); default equal weights")
    p.add_argument("--out", type=Path, default=None, help="report folder (default <cache-dir>/../report-<name>)")
    p.add_argument("--results-dir", type=Path, default=ROOT / "benchmarks" / "results", help="where the JSON goes")
    args = p.parse_args()
    if len(args.model) < 2:
        p.error("an ensemble needs two or more --model runs")

    from utils.core.startup import quiet_tensorflow
    quiet_tensorflow()
    from utils.verify.validation import FIGURES, validate

    out = args.out or args.cache_dir.parent / f"report-{args.name}"
    fusion_weights = None
    if args.tune_weights_on:
        from utils.verify.fusion_weights import choose_fusion_weights
        fusion_weights = choose_fusion_weights(args.model, args.tune_weights_on, workers=2, progress=False,
                                               cache_root=args.cache_dir)
    report = validate(args.model, args.lfw_dir, args.pairs or args.lfw_dir / "pairs.txt", out_dir=out,
                      workers=2, progress=False, cache_root=args.cache_dir, fusion_weights=fusion_weights)
    members = []
    for run, member in zip(args.model, report["members"]):
        config = read_json(run / "config.json")
        members.append({"run": str(run), "preset": config["recipe"].get("preset"), "net_type": member["net_type"],
                        "alignment": member["alignment"], "input_size": read_json(run / "model.json")["input_size"],
                        "identities": config.get("dataset", {}).get("identities"),
                        "train_minutes": training_minutes(run),
                        **{k: member["metrics"][k] for k in FIGURES}})
    best = max(members, key=lambda m: m["accuracy_mean"])
    result = {"date": datetime.date.today().isoformat(), "name": args.name,
              "command": "python benchmarks/ensemble_lfw.py " + " ".join(sys.argv[1:]), "machine": machine(),
              "pairs": report["pairs_count"], "flip_fused": report["flip"], "metric": report["metric"],
              "members": members, "fusion_weights": fusion_weights, "ensemble": report["by_fusion"],
              "total_train_minutes": round(sum(m["train_minutes"] for m in members), 1),
              "gain_over_best_member_points": round(
                  100 * (report["metrics"]["accuracy_mean"] - best["accuracy_mean"]), 2)}
    args.results_dir.mkdir(parents=True, exist_ok=True)
    path = args.results_dir / f"ensemble_lfw-{args.name}-{result['date']}.json"
    write_json(path, result)

    print(f"LFW {report['pairs_count']} pairs, flip-fused, {report['metric']}:")
    for m in members:
        # image_size: runs from before it was renamed
        crop = m["alignment"].get("crop_size", m["alignment"].get("image_size"))
        print(f"  {m['run']} ({m['preset']}, {m['net_type']}, {m['alignment']['mode']} {crop} px, "
              f"{m['train_minutes']} min): {figures(m)}")
    if fusion_weights:
        print(f"  weights {fusion_weights['weights']}, chosen on {fusion_weights['chosen_on']} "
              f"({fusion_weights['pairs']} pairs; pair accuracy {fusion_weights['pair_accuracy']}, equal weights "
              f"{fusion_weights['equal_weights_pair_accuracy']})")
    for fusion, f in report["by_fusion"].items():
        print(f"  ensemble, {fusion}: {figures(f)}")
    print(f"  {result['gain_over_best_member_points']:+.2f} points over the best member; "
          f"{result['total_train_minutes']} min of training in all\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
