#!/usr/bin/env python3
"""Rebuild every results table and plot from benchmarks/results/*.json.

    python benchmarks/report.py              # rewrite the generated tables and docs/img/*.png
    python benchmarks/report.py --check      # exit 1 naming each table that differs from the JSON (writes nothing)
    python benchmarks/report.py --no-plots   # tables only

A generated table sits between two marker lines, `<!-- NAME:begin -->` and `<!-- NAME:end -->`,
in README.md, docs/benchmarks.md, docs/serving.md and configs/README.md (TABLES below says
which); everything outside the markers is left as it is. Edit the JSON (or add one), never
the table. The output depends on the JSON and the experiment files only (no dates, no
timestamps, PNGs saved with fixed metadata), so rerunning it on committed outputs changes
nothing. Nothing here imports TensorFlow; the plots need matplotlib (Agg).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results"
IMG = ROOT / "docs" / "img"
SMALL_SETS = ("celeba-299", "pubfig-42")  # the small-data benchmark's default training data
TEACHER_PREFIX = "teacher_lfw-"  # benchmarks/teacher_lfw.py's JSON: the distillation table's rows

# The README's table (at most 8 rows): the figures a newcomer needs, by run name ("lbp": the
# classical baseline stored in the small_data run's JSON; an ensemble by its name).
README_ROWS = ("lbp", "small-data-seed", "small-data", "small-data-80px-15", "small-data-80px",
               "five-within-budget-tuned", "small-data-distill-64px+more", "teacher:dlib")


# ---------------------------------------------------------------- the JSON

@dataclass
class Single:
    """One small_data_lfw.py result: one model trained and verified on LFW."""
    path: Path
    data: dict
    name: str = ""
    preset: str | None = None  # the experiment file whose recipe the run trained with exactly, if any
    recipe_args: str = ""      # the train_classifier.py arguments it ran

    @property
    def lfw(self) -> dict:
        return self.data["lfw"]


@dataclass
class Ensemble:
    path: Path
    data: dict
    members: list = field(default_factory=list)  # run names

    @property
    def name(self) -> str:
        return self.data["name"]


def run_name(command: str) -> str:
    """The run name small_data_lfw.py gave a run (its --name, else small-data[-<recipe>][+more]),
    which ensemble_lfw.py's members are named by."""
    args = shlex.split(command)
    if "--" in args:
        args = args[:args.index("--")]

    def value(flag):
        for i, a in enumerate(args):
            if a == flag and i + 1 < len(args):
                return args[i + 1]
            if a.startswith(flag + "="):
                return a.split("=", 1)[1]
        return None

    if value("--name"):
        return value("--name")
    recipe = value("--recipe") or "modern"
    return ("small-data" if recipe == "modern" else f"small-data-{recipe}") + ("+more" if "--more-data" in args else "")


def _recipe_settings(config) -> dict:
    from dataclasses import asdict

    from utils.training.config import TRANSIENT
    return {k: v for k, v in asdict(config).items() if k not in (*TRANSIENT, "name", "data_dir", "preset")}


def preset_recipes() -> dict:
    """Each experiment file's effective settings (what decides the model), by preset name."""
    from utils.training.config import load_config, preset_names
    return {p: _recipe_settings(load_config(p)) for p in preset_names()}


def matching_preset(train_command: str, presets: dict) -> str | None:
    """The experiment file a train_classifier.py command line amounts to (its flags may spell
    the same recipe out), or None: the run changed something, or its flags no longer parse."""
    from train_classifier import parse_config
    from utils.core.errors import IcyfaceError

    args = shlex.split(train_command)[2:]
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            settings = _recipe_settings(parse_config(args))
    except (SystemExit, IcyfaceError):  # an old command whose flags were since renamed: no claim
        return None
    return next((p for p, s in presets.items() if s == settings), None)


def load_results(results: Path = RESULTS) -> tuple[list[Single], list[Ensemble], list[dict], list[dict]]:
    """The single models, ensembles, serving results and any other results, in file-name order."""
    presets = preset_recipes()
    singles, ensembles, serving, other = [], [], [], []
    for path in sorted(results.glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        if path.name.startswith("small_data_lfw-"):
            s = Single(path, data, run_name(data["command"]))
            s.recipe_args = " ".join(shlex.split(data["train_command"])[2:])
            s.preset = matching_preset(data["train_command"], presets)
            singles.append(s)
        elif path.name.startswith("ensemble_lfw-"):
            e = Ensemble(path, data, [os.path.basename(m["run"].rstrip("/")) for m in data["members"]])
            ensembles.append(e)
        elif path.name.startswith("serving_lfw-"):
            serving.append({"path": path, **data})
        else:
            other.append({"path": path, **data})
    return singles, ensembles, serving, other


# ---------------------------------------------------------------- formatting

def pct(x: float, digits: int = 2) -> str:
    return f"{100 * x:.{digits}f}"


def acc(m: dict) -> str:
    return f"{pct(m['accuracy_mean'])} ± {pct(m['accuracy_std'])} %"


def machine(text: str) -> str:
    """A short machine name: the JSON records lscpu's model name and widest vector extension."""
    if "Xeon" in text:
        return "Xeon"
    if "EPYC" in text:
        return "EPYC"
    return text.replace(" CPU cores", " cores, CPU not recorded").replace(", no GPU", "")


def link(path: Path, doc: Path) -> str:
    return f"[JSON]({Path(os.path.relpath(path, doc.parent)).as_posix()})"


def data_label(training_data: dict) -> str:
    sets = training_data["sets"]
    more = [s for s in sets if s not in SMALL_SETS]
    base = "small" if set(SMALL_SETS) <= set(sets) else " + ".join(sets)
    return base + "".join(f" + {s}" for s in more) + f" ({training_data['identities']:,} ids)"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def notes(data: dict) -> str:
    return data.get("notes", "")


def budget_minutes(s: Single) -> str:
    return f"{s.data['train_minutes']:.1f}"


# ---------------------------------------------------------------- the tables

def teacher_rows(other) -> dict:
    """{"teacher:<kind>": the newest teacher_lfw.py JSON of that teacher without a student}."""
    rows = {}
    for o in sorted(other, key=lambda o: o["path"].name):
        if o["path"].name.startswith(TEACHER_PREFIX) and "student" not in o:
            rows[f"teacher:{o['teacher']['kind']}"] = o
    return rows


def readme_results(singles, ensembles, other, doc: Path) -> str:
    by_name = {s.name: s for s in singles}
    by_ens = {e.name: e for e in ensembles}
    teachers = teacher_rows(other)
    rows = []
    for key in README_ROWS:
        if key in teachers:  # a distillation teacher, trained elsewhere: its own row, for scale
            o = teachers[key]
            m = o["lfw"]["cosine"]
            rows.append([f"teacher for distillation: `{o['teacher']['teacher']}` ({o['teacher']['dimension']}-d, "
                         f"{o['throughput']['batch_1']} img/s)", "its author's (~3 million faces)", "—", acc(m),
                         pct(m["val_at_far"], 1), machine(o["machine"]), link(o["path"], doc)])
        elif key == "lbp":
            s = by_name["small-data"]
            m = s.data["classical_baselines"]["lbp"]
            rows.append(["LBP histograms, no learning (classical baseline)", data_label(s.data["training_data"]),
                         "none", acc(m), pct(m["val_at_far"], 1), machine(s.data["machine"]), link(s.path, doc)])
        elif key in by_name:
            s = by_name[key]
            what = f"`{s.recipe_args}`" if not s.preset else f"`--preset {s.preset}`"
            model = f"{s.data['model']} {s.data['input_size']} px, {s.data['loss']}"
            rows.append([f"{model}: {what}", data_label(s.data["training_data"]), budget_minutes(s),
                         acc(s.lfw), pct(s.lfw["val_at_far"], 1), machine(s.data["machine"]), link(s.path, doc)])
        elif key in by_ens:
            e = by_ens[key]
            m = e.data["ensemble"]["concat"]
            tuned = " (weights chosen on other people)" if "fusion_weights" in e.data else ""
            rows.append([f"ensemble of {len(e.members)} models{tuned}", "small (341 ids)",
                         f"{e.data['total_train_minutes']:.1f}", acc(m), pct(m["val_at_far"], 1),
                         machine(e.data["machine"]), link(e.path, doc)])
        else:
            raise KeyError(f"README_ROWS names {key!r}, which no JSON in {RESULTS} holds")
    return table(["model and recipe", "training data", "training min", "LFW accuracy", "VAL@FAR=1e-3 %",
                  "machine", "result"], rows)


def single_models(singles, doc: Path) -> str:
    rows = []
    for s in sorted(singles, key=lambda s: (-s.lfw["accuracy_mean"], s.name)):
        d = s.data
        rows.append([f"`{s.name}`", s.preset and f"`{s.preset}`" or "—", f"`{s.recipe_args}`",
                     data_label(d["training_data"]), str(d["curve"][-1]["epoch"]), budget_minutes(s),
                     machine(d["machine"]), acc(s.lfw), pct(s.lfw["val_at_far"], 1), f"{s.lfw['auc']:.3f}",
                     pct(s.lfw["eer"], 1), link(s.path, doc)])
    return table(["run", "experiment file", "train_classifier.py arguments", "training data", "epochs",
                  "training min", "machine", "LFW accuracy", "VAL@FAR=1e-3 %", "AUC", "EER %", "result"], rows)


def single_provenance(singles, doc: Path) -> str:
    rows = []
    for s in sorted(singles, key=lambda s: (s.data["date"], s.name)):
        d = s.data
        rows.append([f"`{s.name}`", d["date"], d["machine"], f"`{d['command']}`", notes(d) or "—", link(s.path, doc)])
    return table(["run", "date", "machine (lscpu)", "command", "notes", "result"], rows)


def baselines(singles, doc: Path) -> str:
    """The classical baselines once per way of aligning LFW (they depend on the crops only)."""
    seen, rows = {}, []
    for s in sorted(singles, key=lambda s: (s.data["date"], s.name)):
        a = s.data["alignment"]
        key = (a["mode"], a.get("crop_size", a.get("image_size")), a.get("part"))
        if key in seen or not s.data.get("classical_baselines"):
            continue
        seen[key] = s
        crops = f"{a['mode']}{'' if a.get('part') is None else ' ' + str(a['part'])}, {key[1]} px"
        for method in sorted(s.data["classical_baselines"]):
            m = s.data["classical_baselines"][method]
            rows.append([crops, method, m["method"], acc(m), pct(m["val_at_far"], 1), f"{m['auc']:.3f}",
                         pct(m["eer"], 1), link(s.path, doc)])
    return table(["LFW crops", "baseline", "method", "LFW accuracy", "VAL@FAR=1e-3 %", "AUC", "EER %", "result"], rows)


def ensembles_table(ensembles, singles, doc: Path) -> str:
    acc_of = {s.name: s.lfw["accuracy_mean"] for s in singles}
    rows = []
    for e in sorted(ensembles, key=lambda e: (-e.data["ensemble"]["concat"]["accuracy_mean"], e.name)):
        d = e.data
        members = ", ".join(f"`{m}` ({pct(acc_of[m]) if m in acc_of else pct(x['accuracy_mean'])})"
                            for m, x in zip(e.members, d["members"]))
        fw = d.get("fusion_weights")
        equal = d["ensemble"].get("concat, equal weights", d["ensemble"]["concat"])
        weighted = d["ensemble"]["concat"]
        rows.append([f"`{e.name}`", members, ", ".join(f"{w:g}" for w in fw["weights"]) if fw else "equal",
                     f"{d['total_train_minutes']:.1f}", acc(equal), acc(weighted) if fw else "—",
                     pct(weighted["val_at_far"], 1), f"{weighted['auc']:.3f}", pct(weighted["eer"], 1),
                     f"{d['gain_over_best_member_points']:+.2f}", machine(d["machine"]), link(e.path, doc)])
    return table(["ensemble", "members (their LFW %)", "weights", "training min, all members", "LFW, equal weights",
                  "LFW, chosen weights", "VAL@FAR=1e-3 %", "AUC", "EER %", "over the best member (points)",
                  "machine", "result"], rows)


def ensemble_provenance(ensembles, doc: Path) -> str:
    rows = []
    for e in sorted(ensembles, key=lambda e: (e.data["date"], e.name)):
        d = e.data
        fw = d.get("fusion_weights")
        chosen = (f"on `{Path(fw['chosen_on']).name}`: {fw['pairs']:,} pairs, accuracy {pct(fw['pair_accuracy'])} % "
                  f"(equal weights {pct(fw['equal_weights_pair_accuracy'])} %)") if fw else "—"
        rows.append([f"`{e.name}`", d["date"], d["machine"], chosen, f"`{d['command']}`", notes(d) or "—",
                     link(e.path, doc)])
    return table(["ensemble", "date", "machine (lscpu)", "weights chosen", "command", "notes", "result"], rows)


def _speed(fmt: dict, key: str) -> str:
    return f"{fmt[key]:,.0f}" if key in fmt else ""


def serving_formats(serving, doc: Path) -> str:
    rows = []
    for s in serving:
        for f in s["formats"]:
            size = f"{f['bytes'] / 2 ** 20:.1f} MiB" if "bytes" in f else ""
            rows.append([f["format"], f.get("file", ""), f.get("weights", ""), size,
                         f"{f['max_abs_diff']:.1e}" if "max_abs_diff" in f else "",
                         f"{f['min_cosine']:.5f}" if "min_cosine" in f else "",
                         acc(f), pct(f["val_at_far"], 1), _speed(f, "batch1_images_s"), _speed(f, "batch32_images_s"),
                         f"`{Path(s['run']).name}`", machine(s["machine"]), link(s["path"], doc)])
    return table(["format", "file", "weights", "size", "max abs diff", "lowest cosine", "LFW accuracy",
                  "VAL@FAR=1e-3 %", "img/s, batch 1", "img/s, batch 32", "run", "machine", "result"], rows)


def _machine_text(value) -> str:
    """A JSON's machine: lscpu's line as recorded, or the model name and CPU count of a dict."""
    if isinstance(value, dict):
        cpus = value.get("cpus", value.get("cores"))
        return str(value.get("model_name", "")) + (f", {cpus} CPUs" if cpus else "")
    return str(value)


def threads(n: int) -> str:
    return f"{n} thread" + ("s" if n != 1 else "")


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f}"


def distillation_table(singles, other, doc: Path) -> str:
    """Each teacher's own row (LFW on the same folds, speed, size), then each distilled student's:
    its LFW from its small_data_lfw.py JSON, its speed per runtime beside the teacher's."""
    by_name = {s.name: s for s in singles}
    rows = []
    for o in sorted((o for o in other if o["path"].name.startswith(TEACHER_PREFIX)), key=lambda o: o["path"].name):
        t, speed = o["teacher"], o.get("throughput", {})
        if "student" not in o:
            m = o["lfw"]["cosine"]
            rows.append([f"teacher `{t['teacher']}` ({t['dimension']}-d)", "its author's data (see provenance)",
                         acc(m), pct(m["val_at_far"], 1), f"{m['auc']:.4f}",
                         f"{speed['batch_1']} / {speed['batch_32']} ({t['kind']}, {threads(speed['threads'])})", "1",
                         _mb(sum(o["file_bytes"].values())), machine(o["machine"]), link(o["path"], doc)])
            continue
        st = o["student"]
        s = by_name.get(Path(st["run"]).name)
        figures = [acc(s.lfw), pct(s.lfw["val_at_far"], 1), f"{s.lfw['auc']:.4f}"] if s else ["not validated"] * 3
        trained = f"{data_label(s.data['training_data'])}, {budget_minutes(s)} min" if s else "—"
        ratio = st["throughput_over_teacher"]
        for runtime, v in st["throughput"].items():
            rows.append([f"student `{Path(st['run']).name}` ({st['net_type']} {st['input_size']} px), {runtime}",
                         trained, *figures, f"{v['batch_1']} / {v['batch_32']} ({threads(v['threads'])})",
                         f"{ratio[runtime + '_batch_1']} / {ratio[runtime + '_batch_32']}",
                         _mb(st["file_bytes"][runtime]), machine(o["machine"]), link(o["path"], doc)])
    return table(["model", "trained on", "LFW accuracy", "VAL@FAR=1e-3 %", "AUC", "img/s, batch 1 / 32",
                  "x teacher (1 / 32)", "file MB", "machine", "result"], rows)


def other_results(other, doc: Path) -> str:
    """Every other JSON (checks and measurements without a table of their own): what it says in one line."""
    rows = []
    for o in other:
        if o["path"].name.startswith(TEACHER_PREFIX):
            continue  # in the distillation table
        outcome = ""
        if "passed" in o:
            outcome = "passed" if o["passed"] else "failed"
        elif "within_target" in o:
            outcome = "within its target" if o["within_target"] else "not within its target"
        checks = o.get("checks")
        if isinstance(checks, list) and checks and isinstance(checks[0], dict) and "outcome" in checks[0]:
            counts = {}
            for c in checks:
                counts[c["outcome"]] = counts.get(c["outcome"], 0) + 1
            outcome += " (" + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) + ")"
        rows.append([f"`{o['path'].stem}`", str(o.get("date", "")), _machine_text(o.get("machine", o.get("cpu", ""))),
                     f"`{o['command']}`" if "command" in o else "", outcome.strip() or "—",
                     o.get("notes", "") or "—", link(o["path"], doc)])
    return table(["result", "date", "machine", "command", "outcome", "notes", "result file"], rows)


def preprocess_command(config) -> str:
    align = "parts" if config.align == "part" else config.align
    return f"python preprocess_data.py --align {align} --crop-size {config.crop_size}"


def configs_table(singles, doc: Path) -> str:
    """Each experiment file: what it trains, the crops it expects, and its measured LFW where a
    small_data_lfw.py run trained exactly that recipe on the small sets (the latest such run)."""
    import runpy

    from utils.training.config import CONFIGS_DIR, load_config, preset_names

    rows = []
    for p in preset_names():
        c = load_config(p)
        doc_line = (runpy.run_path(str(CONFIGS_DIR / f"{p}.py")).get("__doc__") or "").strip().splitlines()
        # The latest run of exactly this recipe, on the small sets where there is one (a recipe written for
        # more data says which).
        measured = [s for s in singles if s.preset == p]
        measured.sort(key=lambda s: (set(s.data["training_data"]["sets"]) == set(SMALL_SETS), s.data["date"], s.name))
        if measured:
            s = measured[-1]
            on = "" if set(s.data["training_data"]["sets"]) == set(SMALL_SETS) else \
                f" on {data_label(s.data['training_data'])}"
            lfw, minutes = acc(s.lfw) + on, f"{budget_minutes(s)} ({machine(s.data['machine'])})"
            result = link(s.path, doc)
        else:
            lfw, minutes, result = "not measured", "", ""
        part = f" (part {c.part})" if c.align == "part" else ""
        what = re.sub(r"\s*\(issue \d+\)", "", doc_line[0]).rstrip(".") if doc_line else ""
        rows.append([f"[`{p}`]({p}.py)", what,
                     f"{c.net_type}, {c.input_size} px, {c.loss}, {c.epochs} epochs",
                     f"`{preprocess_command(c)}`{part} → `{c.data_dir}`", lfw, minutes, result])
    return table(["experiment file", "what it is for", "trains", "crops it expects", "LFW (small data unless stated)",
                  "training min (machine)", "result"], rows)


# (file, marker name) -> the function making that table's body.
TABLES = {
    ("README.md", "results"): lambda r, doc: readme_results(r[0], r[1], r[3], doc),
    ("docs/benchmarks.md", "single-models"): lambda r, doc: single_models(r[0], doc),
    ("docs/benchmarks.md", "single-provenance"): lambda r, doc: single_provenance(r[0], doc),
    ("docs/benchmarks.md", "baselines"): lambda r, doc: baselines(r[0], doc),
    ("docs/benchmarks.md", "ensembles"): lambda r, doc: ensembles_table(r[1], r[0], doc),
    ("docs/benchmarks.md", "ensemble-provenance"): lambda r, doc: ensemble_provenance(r[1], doc),
    ("docs/benchmarks.md", "other-results"): lambda r, doc: other_results(r[3], doc),
    ("docs/benchmarks.md", "distillation"): lambda r, doc: distillation_table(r[0], r[3], doc),
    ("docs/serving.md", "serving-formats"): lambda r, doc: serving_formats(r[2], doc),
    ("configs/README.md", "configs"): lambda r, doc: configs_table(r[0], doc),
}


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def section(text: str, name: str) -> str:
    """What a file holds between NAME's markers (without the marker lines)."""
    begin, end = markers(name)
    match = re.search(re.escape(begin) + r"\n(.*?)" + re.escape(end), text, re.DOTALL)
    if match is None:
        raise ValueError(f"no {begin} ... {end} in the file")
    return match.group(1).rstrip("\n")


def replace_section(text: str, name: str, body: str) -> str:
    begin, end = markers(name)
    section(text, name)  # raises when the markers are missing
    return re.sub(re.escape(begin) + r"\n.*?" + re.escape(end), lambda _: f"{begin}\n{body}\n{end}", text,
                  count=1, flags=re.DOTALL)


def generated_tables(root: Path = ROOT, results: Path = RESULTS) -> dict:
    """{(file, marker name): table body} for every table, from the JSON in results."""
    loaded = load_results(results)
    return {(f, n): make(loaded, root / f) for (f, n), make in TABLES.items()}


def stale_tables(root: Path = ROOT, results: Path = RESULTS) -> list[str]:
    """'file: name' of each committed table that differs from what the JSON gives."""
    stale = []
    for (f, name), body in generated_tables(root, results).items():
        text = (root / f).read_text(encoding="utf-8")
        try:
            if section(text, name) != body:
                stale.append(f"{f}: {name}")
        except ValueError:
            stale.append(f"{f}: {name} (markers missing)")
    return stale


def write_tables(root: Path = ROOT, results: Path = RESULTS) -> list[str]:
    """Rewrite every stale table; the files changed."""
    texts, changed = {}, []
    for (f, name), body in generated_tables(root, results).items():
        texts.setdefault(f, (root / f).read_text(encoding="utf-8"))
        texts[f] = replace_section(texts[f], name, body)
    for f, text in texts.items():
        if (root / f).read_text(encoding="utf-8") != text:
            (root / f).write_text(text, encoding="utf-8")
            changed.append(f)
    return changed


# ---------------------------------------------------------------- the plots

def _figure():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    plt.rcParams.update({"svg.hashsalt": "icyface", "font.size": 9})
    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None}, bbox_inches="tight")
    return buf.getvalue()


def plot_lfw_vs_epoch(singles) -> bytes:
    """LFW accuracy at each epoch where training checked it (--lfw-every), one line per run."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(9, 5.2))
    runs = [s for s in sorted(singles, key=lambda s: (-s.lfw["accuracy_mean"], s.name))
            if sum("lfw_accuracy" in r for r in s.data["curve"]) >= 2]
    cmap = plt.get_cmap("tab20")
    for i, s in enumerate(runs):
        pts = [(r["epoch"], 100 * r["lfw_accuracy"]) for r in s.data["curve"] if "lfw_accuracy" in r]
        ax.plot(*zip(*pts), marker="o", markersize=3, color=cmap(i % 20),
                label=f"{s.name} ({pct(s.lfw['accuracy_mean'])} %)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("LFW accuracy during training, % (6,000 pairs, flip-fused)")
    ax.set_title("Small-data benchmark: LFW accuracy by epoch (final figure in brackets)")
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    data = _png(fig)
    plt.close(fig)
    return data


def plot_lfw_vs_minutes(singles, ensembles) -> bytes:
    """Final LFW accuracy against training minutes: single models by machine, ensembles."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for label, marker in (("Xeon", "o"), ("EPYC", "s")):
        pts = [(s.data["train_minutes"], 100 * s.lfw["accuracy_mean"]) for s in singles
               if machine(s.data["machine"]) == label]
        if pts:
            ax.scatter(*zip(*pts), marker=marker, label=f"one model, {label}")
    other = [(s.data["train_minutes"], 100 * s.lfw["accuracy_mean"]) for s in singles
             if machine(s.data["machine"]) not in ("Xeon", "EPYC")]
    if other:
        ax.scatter(*zip(*other), marker="D", label="one model, other machine")
    pts = [(e.data["total_train_minutes"], 100 * e.data["ensemble"]["concat"]["accuracy_mean"]) for e in ensembles]
    if pts:
        ax.scatter(*zip(*pts), marker="^", label="ensemble (minutes of all members)")
    ax.set_xlabel("training minutes (2-core CPU; the EPYC ran ~1.7x faster than the Xeon)")
    ax.set_ylabel("LFW accuracy, %")
    ax.set_title("Small-data benchmark: accuracy against training time")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    data = _png(fig)
    plt.close(fig)
    return data


def plot_serving_speed(serving) -> bytes:
    """Images per second of each exported format, batch 1 and batch 32."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    formats = [f for s in serving for f in s["formats"] if "batch1_images_s" in f]
    names = [f["format"] for f in formats]
    xs = range(len(formats))
    ax.bar([x - 0.2 for x in xs], [f["batch1_images_s"] for f in formats], width=0.4, label="batch 1")
    ax.bar([x + 0.2 for x in xs], [f["batch32_images_s"] for f in formats], width=0.4, label="batch 32")
    ax.set_xticks(list(xs), names, rotation=15, ha="right")
    ax.set_ylabel("images / s (2 threads)")
    where = f" ({machine(serving[0]['machine'])})" if serving else ""
    ax.set_title("Embedding speed of each exported format" + where)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    data = _png(fig)
    plt.close(fig)
    return data


def plots(results: Path = RESULTS) -> dict:
    """{file name under docs/img: PNG bytes}."""
    singles, ensembles, serving, _ = load_results(results)
    return {"lfw_vs_epoch.png": plot_lfw_vs_epoch(singles),
            "lfw_vs_minutes.png": plot_lfw_vs_minutes(singles, ensembles),
            "serving_speed.png": plot_serving_speed(serving)}


def write_plots(img: Path = IMG, results: Path = RESULTS) -> list[str]:
    img.mkdir(parents=True, exist_ok=True)
    changed = []
    for name, data in plots(results).items():
        path = img / name
        if not path.exists() or path.read_bytes() != data:
            path.write_bytes(data)
            changed.append(str(path.relative_to(ROOT)))
    return changed


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 if a table differs from the JSON")
    p.add_argument("--no-plots", action="store_true", help="tables only")
    args = p.parse_args(argv)
    if args.check:
        stale = stale_tables()
        for s in stale:
            print(f"stale: {s} (run python benchmarks/report.py)")
        return 1 if stale else 0
    changed = write_tables() + ([] if args.no_plots else write_plots())
    print("\n".join(f"wrote {c}" for c in changed) or "everything was up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
