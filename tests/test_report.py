"""benchmarks/report.py: every committed results table is what the JSON gives.

The tables in README.md, docs/benchmarks.md, docs/serving.md and configs/README.md are generated
between marker comments; a table edited by hand, a JSON added or changed without rerunning
`python benchmarks/report.py`, or an experiment file changed without it, fails here. The plots
are not regenerated (matplotlib is slow to load); their determinism is checked once on a tiny
input.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import report


@pytest.fixture(scope="module")
def generated():
    return report.generated_tables()


def test_every_committed_table_matches_the_json(generated):
    stale = []
    for (doc, name), body in generated.items():
        committed = report.section((ROOT / doc).read_text(encoding="utf-8"), name)
        if committed != body:
            stale.append(f"{doc} <!-- {name} -->")
    assert not stale, ("tables differ from benchmarks/results/*.json (run python benchmarks/report.py and commit "
                       f"the result): {stale}")


def test_report_check_agrees():
    assert report.stale_tables() == []


def test_every_result_is_in_a_table(generated):
    text = "\n".join(generated.values())
    for path in sorted(report.RESULTS.glob("*.json")):
        assert path.name in text, f"{path.name} is in no generated table"


def test_readme_table_is_short_and_names_its_best_figures(generated):
    body = generated[("README.md", "results")]
    rows = body.splitlines()[2:]
    assert 1 <= len(rows) <= 8
    assert "89.95 ± 1.33 %" in body      # the five-member ensemble
    assert "88.77 ± 1.33 %" in body      # the best single model measured


def test_the_tables_carry_the_json_numbers(generated):
    """Spot checks against the JSON themselves, so a formatting bug cannot hide a number."""
    by_file = {p.name: json.loads(p.read_text()) for p in report.RESULTS.glob("*.json")}
    for name, data in by_file.items():
        if name.startswith("small_data_lfw-"):
            lfw = data["lfw"]
            figure = f"{100 * lfw['accuracy_mean']:.2f} ± {100 * lfw['accuracy_std']:.2f} %"
            assert figure in generated[("docs/benchmarks.md", "single-models")], (name, figure)
        elif name.startswith("ensemble_lfw-"):
            m = data["ensemble"]["concat"]
            assert f"{100 * m['accuracy_mean']:.2f} ± " in generated[("docs/benchmarks.md", "ensembles")], name
        elif name.startswith(report.TEACHER_PREFIX):
            body = generated[("docs/benchmarks.md", "distillation")]
            if "student" in data:  # its speed beside the teacher's; its LFW comes from its own JSON
                ratios = data["student"]["throughput_over_teacher"]
                assert all(f"{ratios[k]}" in body for k in ratios), name
            else:
                m = data["lfw"]["cosine"]
                assert f"{100 * m['accuracy_mean']:.2f} ± {100 * m['accuracy_std']:.2f} %" in body, name


def test_a_changed_number_makes_a_table_stale(tmp_path):
    results = tmp_path / "results"
    shutil.copytree(report.RESULTS, results)
    path = results / "small_data_lfw-small-data-80px-tensorflow-2026-12-01.json"
    data = json.loads(path.read_text())
    data["lfw"]["accuracy_mean"] = 0.5
    path.write_text(json.dumps(data))
    stale = report.stale_tables(ROOT, results)
    assert "README.md: results" in stale and "docs/benchmarks.md: single-models" in stale


def test_the_experiment_file_a_run_amounts_to():
    presets = report.preset_recipes()
    # The first small-data run spelt small_data out as flags, before experiment files existed.
    first = json.loads((report.RESULTS / "small_data_lfw-tensorflow-2026-11-28.json").read_text())
    assert report.matching_preset(first["train_command"], presets) == "small_data"
    assert report.matching_preset("python train_classifier.py res-cp", presets) == "seed"
    assert report.matching_preset("python train_classifier.py --preset small_data --ema 0.999", presets) is None
    assert report.matching_preset("python train_classifier.py --no-such-flag", presets) is None


def test_run_names_follow_small_data_lfw():
    assert report.run_name("python benchmarks/small_data_lfw.py --work-dir /tmp/x") == "small-data"
    assert report.run_name("python benchmarks/small_data_lfw.py --recipe seed --more-data") == "small-data-seed+more"
    assert report.run_name("python benchmarks/small_data_lfw.py --name a -- --name b") == "a"


def test_sections_are_replaced_and_nothing_else():
    text = "before\n<!-- t:begin -->\nold\n<!-- t:end -->\nafter\n"
    new = report.replace_section(text, "t", "| a |\n|---|")
    assert new == "before\n<!-- t:begin -->\n| a |\n|---|\n<!-- t:end -->\nafter\n"
    assert report.section(new, "t") == "| a |\n|---|"
    assert report.replace_section(new, "t", "| a |\n|---|") == new
    with pytest.raises(ValueError):
        report.section(text, "missing")


def test_plots_exist_and_are_referenced():
    docs = (ROOT / "docs" / "benchmarks.md").read_text() + (ROOT / "docs" / "serving.md").read_text()
    for name in ("lfw_vs_epoch.png", "lfw_vs_minutes.png", "serving_speed.png"):
        assert (report.IMG / name).is_file(), f"docs/img/{name} missing: run python benchmarks/report.py"
        assert f"img/{name}" in docs


def test_a_plot_is_the_same_bytes_twice(tmp_path):
    pytest.importorskip("matplotlib")
    results = tmp_path / "results"
    results.mkdir()
    shutil.copy(report.RESULTS / "serving_lfw-exp-aug-2026-11-30.json", results)
    serving = report.load_results(results)[2]
    first, second = report.plot_serving_speed(serving), report.plot_serving_speed(serving)
    assert first == second and first.startswith(b"\x89PNG")
    assert b"Software" not in first and b"Creation" not in first
