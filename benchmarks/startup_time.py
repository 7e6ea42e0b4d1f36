#!/usr/bin/env python3
"""What a command costs before it does any work: `python X.py --help` of each of the six
commands against `python -c "import tensorflow"`, side by side, the median of a few runs each.

    python benchmarks/startup_time.py [--runs 3] [--results-dir benchmarks/results]

Runs alternate between the commands (one round runs each once), so all of them see the same
machine state. Every command parses and checks its flags before it loads TensorFlow, Keras or
a model, so its --help should cost a small fraction of the TensorFlow import (the aim: at most
0.3 of it). Writes benchmarks/results/startup_time-<date>.json with the commands, the CPU
(lscpu's model name and flags) and each command's median seconds and ratio to the import.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLIS = ["preprocess_data.py", "train_classifier.py", "validate_on_lfw.py", "verify_faces.py", "export_model.py",
        "demo.py"]
TARGET_RATIO = 0.3
REFERENCE = "import tensorflow"


def cpu() -> dict:
    """lscpu's model name and flags (from /proc/cpuinfo where lscpu is missing)."""
    fields = {}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True,
                             env={**os.environ, "LC_ALL": "C"}).stdout
        for line in out.splitlines():
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    except (OSError, subprocess.CalledProcessError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault({"model name": "Model name", "flags": "Flags"}.get(key.strip(), key.strip()),
                                  value.strip())
    return {"model_name": fields.get("Model name", "unknown"), "flags": fields.get("Flags", ""),
            "cpus": os.cpu_count(), "affinity": len(os.sched_getaffinity(0))}


def seconds(command: list[str]) -> float:
    """Wall seconds of one run (stdout and stderr discarded); a failing command is an error."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, check=True)
    return time.perf_counter() - started


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3, help="runs of each command; the median is reported")
    p.add_argument("--results-dir", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args(argv)

    commands = {"import tensorflow": [sys.executable, "-c", REFERENCE]}
    commands.update({f"{script} --help": [sys.executable, script, "--help"] for script in CLIS})
    times: dict[str, list[float]] = {name: [] for name in commands}
    load_before = os.getloadavg()  # a busy machine slows every command, the ratios much less
    for _ in range(args.runs):
        for name, command in commands.items():
            times[name].append(seconds(command))
    medians = {name: statistics.median(t) for name, t in times.items()}
    reference = medians["import tensorflow"]

    print(f"{'command':<32} {'median s':>9} {'ratio':>7}")
    for name, median in medians.items():
        print(f"{name:<32} {median:9.3f} {median / reference:7.3f}")
    worst = max(medians[n] / reference for n in medians if n != "import tensorflow")
    print(f"worst --help / import tensorflow: {worst:.3f} (target <= {TARGET_RATIO})")

    date = datetime.date.today().isoformat()
    result = {
        "benchmark": "startup_time", "date": date,
        "command": " ".join([Path(sys.executable).name, "benchmarks/startup_time.py",
                             *(argv if argv is not None else sys.argv[1:])]),
        "python": sys.version.split()[0], "cpu": cpu(), "runs": args.runs,
        "load_average_1_5_15": {"before": [round(v, 2) for v in load_before],
                                "after": [round(v, 2) for v in os.getloadavg()]},
        "reference": {"command": f"python -c \"{REFERENCE}\"", "median_s": round(reference, 4),
                      "runs_s": [round(t, 4) for t in times["import tensorflow"]]},
        "commands": {name: {"command": f"python {name}", "median_s": round(medians[name], 4),
                            "ratio_to_tensorflow_import": round(medians[name] / reference, 4),
                            "runs_s": [round(t, 4) for t in times[name]]}
                     for name in commands if name != "import tensorflow"},
        "worst_ratio": round(worst, 4), "target_ratio": TARGET_RATIO, "within_target": worst <= TARGET_RATIO,
    }
    args.results_dir.mkdir(parents=True, exist_ok=True)
    out = args.results_dir / f"startup_time-{date}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
