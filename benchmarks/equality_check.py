#!/usr/bin/env python3
"""Behaviour unchanged by a refactor: the old revision's CLIs against this working tree's.

    python benchmarks/equality_check.py --old-rev be73e97 [--keep] [--repeat] [--jobs N]

1. materialises --old-rev with `git archive` into a temp dir (the OLD tree; nothing is written
   to the repository); the NEW tree is this working tree as it is now, uncommitted changes
   included. Both run with this python, each from its own root.
2. copies --identities x --images photos of pubfig-42 (shared data, read-only) into the temp
   dir and crops them ONCE with the OLD tree's preprocess_data.py (hog,center detectors);
3. trains the same tiny recipe (tests/conftest.py's TINY: ResNet-18, 32 px, batch 16, --seed 0,
   --epochs 2) in each tree, unaugmented and augmented (small_data_augmented's levers):
   history.csv must be byte-identical, old vs new; so must the embedding weights
   (model.weights.h5 inside embedding.keras), and the run's description (classes.txt,
   config.json, model.json, the model config) must be equal less code revision and timings.
   The OLD tree trains a second time (the run-to-run control) with --repeat, and by itself
   whenever old and new differ, so that a refactor's change is told from noise;
4. old run directories in the NEW tree: the NEW validate_on_lfw.py on a copy of the OLD
   unaugmented run over a tiny LFW (10 folds x 1 + 1 pairs of the real View-2 list, copied),
   whose scores.csv and metrics must equal the OLD validate_on_lfw.py's on another copy; the
   NEW export_model.py --formats onnx (the cheapest format) on it; and resume: the OLD tree
   trains a --epochs 3 run and is sent SIGTERM once its epoch-1 backup exists (exit 75); the
   NEW tree reruns the same command, which must resume (not restart) and finish, and its
   history.csv and weights must equal the OLD tree's resume of a copy of the same backup;
5. prints a PASS/FAIL table (INFO rows do not count), exits 1 on any FAIL, and writes
   benchmarks/results/equality_check-<date>.json (command, date, old and new revision, CPU,
   the checks and seconds per step).

Every subprocess runs with CUDA_VISIBLE_DEVICES="" (CPU), TF_CPP_MIN_LOG_LEVEL=3 and
PYTHONHASHSEED=0; --deterministic-ops adds TF_DETERMINISTIC_OPS=1 (not needed on the 2-core
CPU machine: the OLD tree repeats itself byte for byte without it, also with two trainings
side by side under load). The script imports nothing of the project: a NEW tree that is
broken is a FAIL row, not a crash of this script. The temp dir is removed at the end unless
--keep.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import io
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SHARED = Path(os.environ.get("ICYFACE_SHARED_DATA", ROOT.parent / "shared" / "data"))

# tests/conftest.py's TINY recipe: seconds per epoch on a CPU.
TINY = ["resnet18", "--image_size", "32", "--batch_size", "16", "--img_morethan", "5", "--lr", "0.01",
        "--L2", "0", "--val_split", "0.2", "--seed", "0"]
# configs/small_data_augmented.py's levers on top of TINY (with small_data's flip and crop jitter).
AUGMENT = ["--flip", "--crop-jitter", "0.1", "--downscale", "0.3", "--greyscale", "0.1", "--brightness", "20",
           "--contrast", "0.2", "--saturation", "0.3", "--erasing", "0.25"]
STOPPED_EXIT_CODE = 75  # train_classifier.py's exit after a SIGTERM was honoured
# model.json / config.json entries that legitimately differ between two identical trainings.
VOLATILE_MODEL_KEYS = ("train_seconds_this_attempt",)
VOLATILE_CONFIG_KEYS = ("code_revision",)


# --------------------------------------------------------------------------------------------
# small helpers (no project imports)
# --------------------------------------------------------------------------------------------

def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


def new_revision(repo: Path) -> tuple[str, list[str]]:
    """`git rev-parse HEAD`, plus "+dirty" when the working tree has changes (untracked files
    included: new modules are part of the refactor); also the changed paths."""
    head = git(repo, "rev-parse", "HEAD")
    status = subprocess.run(["git", "-C", str(repo), "status", "--porcelain"], check=True, capture_output=True,
                            text=True).stdout  # not stripped: each line is "XY path"
    changed = [line[3:] for line in status.splitlines() if line.strip()]
    return head + ("+dirty" if changed else ""), changed


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], check=False, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        out = ""
    for line in out.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Model name":
            return value.strip()
    return platform.processor() or "unknown"


def materialise(repo: Path, rev: str, dest: Path) -> str:
    """`git archive <rev>` unpacked into dest (touches nothing in the repository); the full hash."""
    full = git(repo, "rev-parse", "--verify", f"{rev}^{{commit}}")
    data = subprocess.run(["git", "-C", str(repo), "archive", "--format=tar", full], check=True,
                          capture_output=True).stdout
    dest.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(dest, filter="data")
    return full


def sample_photos(src: Path, dest: Path, identities: int, images: int) -> list[str]:
    """The first `identities` folders (sorted) holding >= `images` images, their first `images`
    files (sorted), copied: a fixed sample, the same on every run."""
    chosen = []
    for person in sorted(p for p in src.iterdir() if p.is_dir()):
        files = sorted(f for f in person.iterdir() if f.is_file() and f.suffix.lower() in (".jpg", ".jpeg", ".png"))
        if len(files) < images:
            continue
        (dest / person.name).mkdir(parents=True)
        for f in files[:images]:
            shutil.copyfile(f, dest / person.name / f.name)
        chosen.append(person.name)
        if len(chosen) == identities:
            break
    if len(chosen) < identities:
        raise SystemExit(f"only {len(chosen)} identities of {src} hold {images}+ images")
    return chosen


def tiny_lfw(src: Path, dest: Path, per_fold: int = 1) -> int:
    """An LFW folder with a View-2 pairs.txt of `per_fold` matched + `per_fold` mismatched pairs
    per fold, the first of each fold of the real list; images copied (validate_on_lfw.py refuses
    pair images that resolve outside --lfw-dir, so no symlinks). Returns the number of pairs."""
    lines = (src / "pairs.txt").read_text().splitlines()
    folds, per = (int(v) for v in lines[0].split())
    kept = [f"{folds}\t{per_fold}"]
    for f in range(folds):
        block = lines[1 + f * 2 * per: 1 + (f + 1) * 2 * per]
        kept += block[:per_fold] + block[per:per + per_fold]
    for line in kept[1:]:
        parts = line.split()
        names = [(parts[0], parts[1]), (parts[0], parts[2])] if len(parts) == 3 else \
            [(parts[0], parts[1]), (parts[2], parts[3])]
        for name, number in names:
            rel = f"{name}/{name}_{int(number):04d}.jpg"
            (dest / name).mkdir(parents=True, exist_ok=True)
            if not (dest / rel).exists():
                shutil.copyfile(src / rel, dest / rel)
    (dest / "pairs.txt").write_text("\n".join(kept) + "\n")
    return len(kept) - 1


def read_history(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def keras_weights(path: Path) -> bytes:
    with zipfile.ZipFile(path) as z:
        return z.read("model.weights.h5")


def _drop_object_ids(node):
    """Keras' saved config names shared objects by id() (a memory address): not behaviour."""
    if isinstance(node, dict):
        return {k: _drop_object_ids(v) for k, v in node.items() if k != "shared_object_id"}
    if isinstance(node, list):
        return [_drop_object_ids(v) for v in node]
    return node


def metadata_differences(old: Path, new: Path) -> list[str]:
    """What differs between two run directories' descriptions beyond code revision and timings."""
    diffs = []
    if (old / "classes.txt").read_bytes() != (new / "classes.txt").read_bytes():
        diffs.append("classes.txt")
    a, b = (json.loads((run / "config.json").read_text()) for run in (old, new))
    for key in sorted(set(a) | set(b)):
        if key not in VOLATILE_CONFIG_KEYS and a.get(key) != b.get(key):
            diffs.append(f"config.json:{key}")
    a, b = (json.loads((run / "model.json").read_text()) for run in (old, new))
    for key in sorted(set(a) | set(b)):
        if key not in VOLATILE_MODEL_KEYS and a.get(key) != b.get(key):
            diffs.append(f"model.json:{key}")
    with zipfile.ZipFile(old / "embedding.keras") as za, zipfile.ZipFile(new / "embedding.keras") as zb:
        ca, cb = (_drop_object_ids(json.loads(z.read("config.json"))) for z in (za, zb))
    if ca != cb:
        diffs.append("embedding.keras:config.json")
    return diffs


def first_difference(a: bytes, b: bytes) -> str:
    la, lb = a.decode(errors="replace").splitlines(), b.decode(errors="replace").splitlines()
    for i, (x, y) in enumerate(zip(la, lb)):
        if x != y:
            return f"line {i + 1}: old {x!r} / new {y!r}"
    return f"old {len(la)} lines / new {len(lb)} lines"


# --------------------------------------------------------------------------------------------
# the checker
# --------------------------------------------------------------------------------------------

class Checker:
    def __init__(self, args, work: Path, old_tree: Path, new_tree: Path):
        self.args, self.work, self.old, self.new = args, work, old_tree, new_tree
        self.checks: list[dict] = []
        self.env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONHASHSEED": "0"}
        self.env.pop("TF_CONFIG", None)  # never a multi-host run
        if args.deterministic_ops:
            self.env["TF_DETERMINISTIC_OPS"] = "1"
        self.logs = work / "logs"
        self.logs.mkdir()
        self.seconds: dict[str, float] = {}

    def tree(self, which: str) -> Path:
        return self.old if which == "old" else self.new

    def stage(self, name: str, fn, *args):
        """Run one stage; an exception in it (a NEW tree that writes something unexpected) is a
        FAIL row, and the other stages still run."""
        try:
            return fn(*args)
        except Exception as err:  # noqa: BLE001 - reported, never hidden
            self.record(name, "FAIL", f"{type(err).__name__}: {err}"[:400])
            return None

    def record(self, name: str, outcome: str, detail: str = ""):
        self.checks.append({"check": name, "outcome": outcome, "detail": detail})
        print(f"  [{outcome}] {name}" + (f": {detail}" if detail else ""), flush=True)

    def cli(self, which: str, script: str, *args, tag: str) -> tuple[int, str]:
        """Run one tree's script from that tree's root; (exit code, combined output)."""
        cmd = [sys.executable, str(self.tree(which) / script), *map(str, args)]
        log = self.logs / f"{tag}.log"
        print(f"$ [{which}] {script} {' '.join(map(str, args))}", flush=True)
        started = time.time()
        try:
            res = subprocess.run(cmd, check=False, cwd=self.tree(which), env=self.env, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True, timeout=self.args.timeout)
            code, out = res.returncode, res.stdout
        except subprocess.TimeoutExpired as err:
            partial = err.stdout.decode(errors="replace") if isinstance(err.stdout, bytes) else (err.stdout or "")
            code, out = -9, partial + f"\n[equality_check] timed out after {self.args.timeout} s"
        self.seconds[tag] = round(time.time() - started, 1)
        log.write_text(out)
        return code, out

    @staticmethod
    def tail(out: str, n: int = 3) -> str:
        lines = [line for line in out.strip().splitlines() if line.strip()]
        return " | ".join(lines[-n:])[-400:]

    # -- stages -----------------------------------------------------------------------------

    def make_crops(self) -> Path | None:
        photos, crops = self.work / "photos", self.work / "crops"
        people = sample_photos(self.args.shared_data / "pubfig-42", photos, self.args.identities, self.args.images)
        code, out = self.cli("old", "preprocess_data.py", "--input-dir", photos, "--output-dir", crops,
                             "--detectors", "hog,center", "--workers", "2", "--no-progress", tag="preprocess-old")
        ok = code == 0 and (crops / "preprocess.json").exists()
        self.record("crops made once (OLD preprocess_data.py)", "PASS" if ok else "FAIL",
                    f"{len(people)} identities x {self.args.images} pubfig-42 photos" if ok
                    else f"exit {code}: {self.tail(out)}")
        return crops if ok else None

    def train(self, which: str, crops: Path, extra: list[str], runs: Path, name: str, tag: str) -> Path | None:
        code, out = self.cli(which, "train_classifier.py", *TINY, *extra, "--epochs", self.args.epochs,
                             "--datadir", crops, "--runs-dir", runs, "--name", name, tag=tag)
        run = runs / name
        if code != 0 or not (run / "history.csv").exists():
            self.record(f"train {tag}", "FAIL", f"exit {code}: {self.tail(out)}")
            return None
        return run

    def parallel(self, *calls):
        """Run (fn, *args) calls side by side (--jobs at a time): old and new trees' runs are
        independent, and much of each is single-threaded (imports, tracing, export)."""
        with ThreadPoolExecutor(max_workers=max(1, self.args.jobs)) as pool:
            return [f.result() for f in [pool.submit(fn, *args) for fn, *args in calls]]

    def same_training(self, old: Path, new: Path) -> tuple[bool, str]:
        a, b = (old / "history.csv").read_bytes(), (new / "history.csv").read_bytes()
        if a != b:
            return False, f"history.csv {first_difference(a, b)}"
        if keras_weights(old / "embedding.keras") != keras_weights(new / "embedding.keras"):
            return False, "history.csv equal, embedding weights differ"
        return True, ""

    def compare_training(self, crops: Path, label: str, extra: list[str]) -> Path | None:
        """The OLD and the NEW tree train one recipe; the OLD run dir. The OLD tree trains again
        (the run-to-run control) with --repeat, or by itself when old and new differ, so that a
        difference is told from noise."""
        runs = self.work / "runs"
        old, new = self.parallel(
            (self.train, "old", crops, extra, runs / f"old-{label}", "tiny", f"old-{label}"),
            (self.train, "new", crops, extra, runs / f"new-{label}", "tiny", f"new-{label}"))
        same = old is not None and new is not None and self.same_training(old, new)[0]
        if old is not None and (self.args.repeat or not same):
            again = self.train("old", crops, extra, runs / f"old-{label}-repeat", "tiny", f"old-{label}-repeat")
            if again is not None:
                repeats, noise = self.same_training(old, again)
                self.record(f"OLD tree repeats itself ({label})", "PASS" if repeats else "FAIL",
                            "history.csv and weights byte-identical" if repeats else
                            f"run-to-run noise in the OLD tree itself ({noise}): try --deterministic-ops")
        if old is None or new is None:
            which = "OLD" if old is None else "NEW"
            self.record(f"history.csv old == new ({label})", "FAIL", f"the {which} tree did not train")
            return old
        a, b = (old / "history.csv").read_bytes(), (new / "history.csv").read_bytes()
        self.record(f"history.csv old == new ({label})", "PASS" if a == b else "FAIL",
                    f"byte-identical, {len(read_history(old / 'history.csv'))} epochs" if a == b
                    else first_difference(a, b))
        weights = keras_weights(old / "embedding.keras") == keras_weights(new / "embedding.keras")
        self.record(f"embedding weights old == new ({label})", "PASS" if weights else "FAIL",
                    "model.weights.h5 byte-identical" if weights else "model.weights.h5 differs")
        diffs = metadata_differences(old, new)
        self.record(f"run metadata old == new ({label})", "FAIL" if diffs else "PASS",
                    ", ".join(diffs) if diffs else "classes.txt, config.json, model.json, model config")
        return old

    def validate(self, which: str, old_run: Path, lfw: Path) -> tuple[Path, dict | None, str]:
        """`which` tree's validate_on_lfw.py on its own copy of the OLD run (the OLD run dir itself
        stays as trained), own alignment cache; (run copy, report or None, failure detail)."""
        run = self.work / f"validated-by-{which}" / old_run.name
        shutil.copytree(old_run, run)
        code, out = self.cli(which, "validate_on_lfw.py", "--model", run, "--lfw-dir", lfw, "--pairs",
                             lfw / "pairs.txt", "--cache-dir", self.work / f"lfw-cache-{which}", "--workers", "2",
                             "--no-progress", tag=f"{which}-validate-old-run")
        try:
            report = json.loads((run / "report.json").read_text()) if code == 0 else None
        except (OSError, ValueError) as err:
            return run, None, f"exit 0 but report.json unreadable: {err}"
        return run, report, "" if report is not None else f"exit {code}: {self.tail(out)}"

    def validate_and_export(self, old_run: Path | None):
        names = ("NEW validate_on_lfw.py on an OLD run", "validate scores old == new (same OLD run)",
                 "NEW export_model.py on an OLD run")
        if old_run is None:
            for name in names:
                self.record(name, "FAIL", "no OLD run (its training failed)")
            return
        lfw = self.work / "lfw"
        pairs = tiny_lfw(self.args.shared_data / "lfw", lfw, per_fold=1)
        (run, report, failure), (old_copy, old_report, old_failure) = self.parallel(
            (self.validate, "new", old_run, lfw), (self.validate, "old", old_run, lfw))
        accuracy = (report or {}).get("metrics", {}).get("accuracy_mean")
        ok = isinstance(accuracy, (int, float)) and math.isfinite(accuracy)
        self.record(names[0], "PASS" if ok else "FAIL",
                    f"{pairs} pairs, accuracy {accuracy:.3f} (a 2-epoch net: only that it runs)" if ok
                    else failure or f"no finite metrics.accuracy_mean in {run / 'report.json'}")

        if report is None or old_report is None:
            self.record(names[1], "FAIL",
                        f"OLD validate: {old_failure}" if old_report is None else "NEW validate failed")
        else:
            # scores.csv names the aligned images by path: each tree aligned into its own cache.
            a, b = ((copy / "scores.csv").read_bytes().replace(str(self.work / f"lfw-cache-{which}").encode(),
                                                               b"<cache>")
                    for copy, which in ((old_copy, "old"), (run, "new")))
            diffs = ([] if a == b else ["scores.csv"]) + [
                key for key in ("metrics", "pairs_count", "images", "alignment", "flip", "metric")
                if old_report.get(key) != report.get(key)]
            self.record(names[1], "FAIL" if diffs else "PASS",
                        "differ: " + ", ".join(diffs) + ("" if a == b else f" ({first_difference(a, b)})") if diffs
                        else "scores.csv byte-identical, report.json metrics equal")

        code, out = self.cli("new", "export_model.py", "--model", run, "--formats", "onnx", tag="new-export-old-run")
        listed = False
        if code == 0 and (run / "embedding.onnx").exists():
            try:
                listed = "onnx" in json.dumps(json.loads((run / "model.json").read_text()).get("exports", {}))
            except ValueError:
                pass
        self.record(names[2], "PASS" if listed else "FAIL",
                    "embedding.onnx written and listed in model.json" if listed else f"exit {code}: {self.tail(out)}")

    def stop_part_way(self, args: list, run: Path) -> tuple[bool, dict, str]:
        """The OLD tree trains `args`, SIGTERMed once its epoch-1 backup exists; (stopped as it
        should: exit 75, a backup, no model.json, epochs left), backup position, detail."""
        meta = run / "backup" / "training_metadata.json"
        cmd = [sys.executable, str(self.old / "train_classifier.py"), *map(str, args)]
        print(f"$ [old] train_classifier.py {' '.join(map(str, args))}  (SIGTERM once epoch 1 is backed up)",
              flush=True)
        started, sent = time.time(), False
        with open(self.logs / "old-resume-stopped.log", "w") as log:
            proc = subprocess.Popen(cmd, cwd=self.old, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            while proc.poll() is None and time.time() - started < self.args.timeout:
                try:
                    if int(json.loads(meta.read_text())["epoch"]) >= 1:
                        os.killpg(proc.pid, signal.SIGTERM)  # its own session: only that training
                        sent = True
                        break
                except (OSError, ValueError, KeyError, TypeError):
                    pass
                time.sleep(0.05)
            try:
                code = proc.wait(timeout=self.args.timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                code = proc.wait()
        self.seconds["old-resume-stopped"] = round(time.time() - started, 1)
        out = (self.logs / "old-resume-stopped.log").read_text(errors="replace")
        done = [int(r["epoch"]) for r in read_history(run / "history.csv")] if (run / "history.csv").exists() else []
        try:
            position = json.loads(meta.read_text())
        except (OSError, ValueError):
            position = {}
        stopped = sent and code == STOPPED_EXIT_CODE and bool(position) and not (run / "model.json").exists() \
            and len(done) < self.args.epochs + 1
        return stopped, position, "" if stopped else f"signal sent {sent}, exit {code}: {self.tail(out)}"

    def finish(self, which: str, args: list, run: Path, tag: str) -> tuple[bool, list[int], str]:
        """`which` tree reruns the stopped run's command: it must resume (no epoch 1 again),
        finish every epoch once, export and drop the backup."""
        code, out = self.cli(which, "train_classifier.py", *args, "--runs-dir", run.parent, tag=tag)
        rows = [int(r["epoch"]) for r in read_history(run / "history.csv")] if (run / "history.csv").exists() else []
        restarted = "Epoch 1/" in out
        ok = code == 0 and rows == list(range(self.args.epochs + 1)) and (run / "model.json").exists() \
            and not (run / "backup").exists() and not restarted
        return ok, rows, "" if ok else f"exit {code}, history epochs {rows}, restarted from epoch 1: {restarted}; " \
                                       f"{self.tail(out)}"

    def resume(self, crops: Path, reference: Path | None):
        """OLD tree stopped by SIGTERM part-way; the NEW tree resumes it with the same command,
        and the OLD tree resumes a copy of it (the control the NEW one must equal)."""
        epochs = self.args.epochs + 1  # an epoch to spare: the stop lands inside training, not after it
        args = [*TINY, "--epochs", epochs, "--datadir", crops, "--name", "tiny"]
        run = self.work / "runs" / "resume-by-new" / "tiny"
        stopped, position, detail = self.stop_part_way([*args, "--runs-dir", run.parent], run)
        self.record("OLD run stopped part-way by SIGTERM", "PASS" if stopped else "FAIL",
                    f"exit 75, backup at epoch {position.get('epoch')}, step {position.get('step')} of a "
                    f"{epochs}-epoch run" if stopped else detail)
        names = ("NEW tree resumes the OLD run and finishes", "resumed run old == new (same OLD backup)")
        if not stopped:
            for name in names:
                self.record(name, "FAIL", "no stopped OLD run to resume")
            return
        control = self.work / "runs" / "resume-by-old" / "tiny"
        shutil.copytree(run, control)
        (ok, rows, detail), (old_ok, _, old_detail) = self.parallel(
            (self.finish, "new", args, run, "new-resume"), (self.finish, "old", args, control, "old-resume"))
        self.record(names[0], "PASS" if ok else "FAIL",
                    f"resumed at epoch {int(position['epoch']) + 1}, step {position['step']}; history epochs {rows}"
                    if ok else detail)
        if not (ok and old_ok):
            self.record(names[1], "FAIL", "NEW resume failed" if not ok else f"OLD resume: {old_detail}")
        else:
            same, why = self.same_training(control, run)
            self.record(names[1], "PASS" if same else "FAIL",
                        "history.csv and weights byte-identical" if same else why)
        # Informational: a resumed run against an uninterrupted one (epoch 1 was never interrupted).
        if ok and reference is not None:
            ref, got = read_history(reference / "history.csv"), read_history(run / "history.csv")
            common = range(min(len(ref), len(got)))
            vals = all(ref[i].get(k) == got[i].get(k) for i in common for k in ref[0] if k.startswith("val_"))
            self.record("resumed run vs uninterrupted OLD run", "INFO",
                        f"epoch 1 row {'identical' if ref[0] == got[0] else 'differs'}; holdout (val_*) of "
                        f"epochs 1-{len(common)} {'identical' if vals else 'differ'}")


def print_table(checks: list[dict]):
    width = max(len(c["check"]) for c in checks)
    print("\n" + "check".ljust(width) + "  result  detail")
    print("-" * (width + 2) + "  ------  " + "-" * 40)
    for c in checks:
        print(f"{c['check'].ljust(width)}  {c['outcome']:<6}  {c['detail']}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--old-rev", required=True, help="the revision before the refactor (e.g. be73e97)")
    p.add_argument("--new-tree", type=Path, default=ROOT, help="the working tree to check (as it is now)")
    p.add_argument("--shared-data", type=Path, default=DEFAULT_SHARED, help="read-only real data (pubfig-42, lfw)")
    p.add_argument("--identities", type=int, default=8, help="pubfig-42 identities cropped")
    p.add_argument("--images", type=int, default=10, help="photos per identity")
    p.add_argument("--epochs", type=int, default=2, help="epochs of each compared training")
    p.add_argument("--repeat", action="store_true",
                   help="always train the OLD tree twice per recipe (the run-to-run control; without it the "
                        "control only runs when old and new differ)")
    p.add_argument("--jobs", type=int, default=1,
                   help="trainings/validations run side by side (2: old with new; worth it on an idle machine)")
    p.add_argument("--deterministic-ops", action="store_true", help="also set TF_DETERMINISTIC_OPS=1")
    p.add_argument("--timeout", type=int, default=900, help="seconds allowed per subprocess")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (old tree, crops, runs, logs)")
    p.add_argument("--results-dir", type=Path, default=ROOT / "benchmarks" / "results", help="where the JSON goes")
    args = p.parse_args(argv)
    new_tree = args.new_tree.resolve()
    for needed in ("pubfig-42", "lfw"):
        if not (args.shared_data / needed).is_dir():
            p.error(f"{args.shared_data / needed} not found (--shared-data)")

    started = time.time()
    work = Path(tempfile.mkdtemp(prefix="icyface-equality-"))
    old_tree = work / "old-tree"
    print(f"temp dir {work}", flush=True)
    try:
        try:
            old_rev = materialise(new_tree, args.old_rev, old_tree)
            new_rev, changed = new_revision(new_tree)
        except subprocess.CalledProcessError as err:
            raise SystemExit(f"error: {' '.join(err.cmd)}: {(err.stderr or b'').strip()}") from None
        print(f"OLD {old_rev} (git archive into {old_tree})\nNEW {new_tree} at {new_rev}", flush=True)
        checker = Checker(args, work, old_tree, new_tree)
        crops = checker.stage("crops made once (OLD preprocess_data.py)", checker.make_crops)
        old_plain = None
        if crops is not None:
            old_plain = checker.stage("training (unaugmented)", checker.compare_training, crops, "unaugmented", [])
            checker.stage("training (augmented)", checker.compare_training, crops, "augmented", AUGMENT)
        checker.stage("old run in the NEW tree", checker.validate_and_export, old_plain)
        if crops is not None:
            checker.stage("resume", checker.resume, crops, old_plain)
        checks = checker.checks
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    print_table(checks)
    failed = [c["check"] for c in checks if c["outcome"] == "FAIL"]
    elapsed = round(time.time() - started, 1)
    print(f"\n{'FAIL' if failed else 'PASS'}: {len(failed)} of {sum(c['outcome'] != 'INFO' for c in checks)} "
          f"checks failed, {elapsed} s")
    end_rev, end_changed = new_revision(new_tree)
    if end_rev != new_rev or end_changed != changed:
        print(f"note: the NEW tree changed during the check (now {end_rev}); its trainings ran on what was there "
              f"when each started")
    now = datetime.datetime.now()
    result = {
        "command": " ".join(["python", *(sys.argv if argv is None else ["benchmarks/equality_check.py", *argv])]),
        "date": now.isoformat(timespec="seconds"),
        "old_rev": old_rev, "new_rev": new_rev, "new_tree": str(new_tree), "new_changed_paths": changed,
        "new_rev_at_end": end_rev,
        "cpu": cpu_model(), "python": platform.python_version(),
        "env": {k: checker.env[k] for k in ("CUDA_VISIBLE_DEVICES", "TF_CPP_MIN_LOG_LEVEL", "PYTHONHASHSEED",
                                           "TF_DETERMINISTIC_OPS") if k in checker.env},
        "recipe": {"train_flags": TINY, "augment_flags": AUGMENT, "epochs": args.epochs,
                   "photos": f"pubfig-42, {args.identities} identities x {args.images}",
                   "repeat_old": args.repeat},
        "passed": not failed, "checks": checks, "seconds": {**checker.seconds, "total": elapsed},
        "kept": str(work) if args.keep else None,
    }
    args.results_dir.mkdir(parents=True, exist_ok=True)
    out = args.results_dir / f"equality_check-{now:%Y-%m-%d}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
