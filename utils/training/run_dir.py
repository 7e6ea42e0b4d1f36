"""The run directory's lifecycle: create it or resume it, record what started it, and
sweep what a killed attempt left half-written."""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np

from utils.core.run_io import (
    TMP_PREFIX,
    atomic_write_bytes,
    git_revision,
    package_versions,
    read_json,
    remove_stale_temporaries,
    write_json,
)
from utils.training.config import TrainConfig, TrainingError, recipe_from_json

TRAINING_PACKAGES = ("tensorflow", "keras", "numpy")


def check_run_name(name: str):
    """--name is one folder under --runs-dir: nothing that could climb out of it or nest."""
    if name in ("", ".", "..") or any(c in name for c in ("/", "\\", "\0")) or (os.altsep and os.altsep in name):
        raise TrainingError(f"--name {name!r} must be a single folder name (no '/', '\\', NUL, '.' or '..'): "
                            f"the run goes to <runs-dir>/<name>")


def _changed_settings(previous: dict, current: dict) -> list[str]:
    """Settings that differ from the recipe a run was started with. Older runs name some keys
    differently and lack settings added since; only the settings both record are compared."""
    previous = recipe_from_json(previous)
    current = json.loads(json.dumps(current))
    return sorted(k for k in set(previous) & set(current) if previous[k] != current[k])


def create_run_dir(config: TrainConfig) -> Path:
    """The run directory, created if new (and nothing in it yet)."""
    check_run_name(config.name)
    try:
        config.run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise TrainingError(f"cannot create the run directory {config.run_dir}: {err.strerror or err}") from None
    return config.run_dir


def prepare_run_dir(config: TrainConfig) -> bool:
    """Check the (created, held) run directory belongs to this same command. Returns True
    when a previous attempt left state to resume from."""
    run = config.run_dir
    cfg_path = run / "config.json"
    if (run / "model.json").exists():
        raise TrainingError(f"run {run} is already complete; choose another --name")
    if cfg_path.exists():
        changed = _changed_settings(read_json(cfg_path)["recipe"], config.recipe())
        if changed:
            raise TrainingError(f"run {run} was started with other settings ({', '.join(changed)} differ); "
                                f"rerun the same command to resume, or choose another --name")
        remove_stale_outputs(run)
        return True
    remove_stale_outputs(run)
    return False


def remove_stale_outputs(run: Path):
    """What a killed attempt was still writing: temporary files, and the temporary
    SavedModel folder of an export cut short."""
    remove_stale_temporaries(run)
    for entry in run.iterdir():
        if entry.name.startswith(TMP_PREFIX) and entry.is_dir():
            shutil.rmtree(entry)


def record_start(config: TrainConfig, classes: list[str], dataset: dict, preprocess: dict, strategy: dict):
    """classes.txt, then config.json: config.json marks a started run, whose classes.txt must exist."""
    import keras

    atomic_write_bytes(config.run_dir / "classes.txt",
                       "".join(f"{i}\t{c}\n" for i, c in enumerate(classes)).encode("utf-8"))
    write_json(config.run_dir / "config.json", {
        "recipe": config.recipe(), "dataset": dataset, "preprocess": preprocess,
        "versions": package_versions(TRAINING_PACKAGES), "keras_backend": keras.backend.backend(),
        "code_revision": git_revision(), "strategy": strategy})


def keep_history_before(path: Path, epoch: int):
    """history.csv rows of epochs the backup does not hold are dropped: an attempt killed
    after logging an epoch but before backing it up redoes that epoch (logged again)."""
    if not path.exists():
        return
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    kept = [r for r in rows if int(r["epoch"]) < epoch]
    if len(kept) != len(rows):
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=reader.fieldnames)  # Keras' CSVLogger dialect
        writer.writeheader()
        writer.writerows(kept)
        atomic_write_bytes(path, out.getvalue().encode())


def best_so_far(path: Path, monitor: str) -> float | None:
    """The best `monitor` value logged in history.csv (for best.keras on resume)."""
    if not path.exists():
        return None
    with open(path, newline="") as f:
        values = [float(r[monitor]) for r in csv.DictReader(f) if r.get(monitor) not in (None, "", "nan")]
    values = [v for v in values if np.isfinite(v)]
    if not values:
        return None
    return min(values) if monitor.endswith("loss") else max(values)


def last_logged(path: Path) -> dict:
    """The last epoch's row of history.csv."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))[-1]
