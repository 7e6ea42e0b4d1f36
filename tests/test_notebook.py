"""data_analysis.ipynb executes end to end on a tiny run, scoring LFW itself when there is no report."""
import json

import nbformat
from nbclient import NotebookClient

from utils.core.run_io import PROJECT_ROOT

NOTEBOOK = PROJECT_ROOT / "data_analysis.ipynb"
REPORT_FILES = ("report.json", "scores.csv", "roc.png")


def _text(cells) -> str:
    return "\n".join(o.get("text", "") for c in cells if c.cell_type == "code" for o in c.outputs)


def test_notebook_is_committed_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") and not c.get("execution_count") for c in nb.cells if c.cell_type == "code")


def test_notebook_runs_on_a_tiny_run(tiny_run, pubfig_crops, lfw_subset, tmp_path, monkeypatch):
    report_dir, cache = tmp_path / "report", tmp_path / "cache"  # no validate_on_lfw.py run: no report yet
    for name, value in {"ICYFACE_CROPS": pubfig_crops, "ICYFACE_RUN": tiny_run, "ICYFACE_REPORT": report_dir,
                        "ICYFACE_IMG_MORETHAN": "5", "ICYFACE_LFW": lfw_subset, "ICYFACE_LFW_CACHE": cache,
                        "MPLBACKEND": "Agg"}.items():
        monkeypatch.setenv(name, str(value))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    lfw_cell = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code" and "validate(" in c.source)
    client = NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(PROJECT_ROOT)}})
    # One kernel for the whole notebook and the LFW cell's reruns below (a second kernel would cost a TF import)
    with client.setup_kernel():
        for index, cell in enumerate(nb.cells):
            client.execute_cell(cell, index)
        text = _text(nb.cells)
        images = sum(1 for c in nb.cells if c.cell_type == "code" for o in c.outputs
                     if "image/png" in o.get("data", {}))
        written = {name: (report_dir / name).stat().st_mtime_ns for name in REPORT_FILES}

        # Run again, the LFW cell reads the report it wrote instead of scoring again
        client.execute_cell(nbformat.from_dict(nb.cells[lfw_cell]), lfw_cell)
        rerun = _text([nb.cells[lfw_cell]])
        assert {name: (report_dir / name).stat().st_mtime_ns for name in REPORT_FILES} == written
        assert f"reading {report_dir / 'report.json'}" in rerun and "fold  accuracy" in rerun

        # Neither a report nor LFW images: the cell says what to set
        nb.cells += [nbformat.v4.new_code_cell(f"REPORT_DIR = LFW_DIR = Path({str(tmp_path / 'nothing')!r})"),
                     nbformat.from_dict(nb.cells[lfw_cell])]
        for index in (len(nb.cells) - 2, len(nb.cells) - 1):
            client.execute_cell(nb.cells[index], index)
        missing = _text(nb.cells[-1:])
        assert "ICYFACE_LFW" in missing and "ICYFACE_REPORT" in missing and "fold  accuracy" not in missing

    n_pairs = len((lfw_subset / "pairs.txt").read_text().splitlines()) - 1
    report = json.loads((report_dir / "report.json").read_text())
    assert report["pairs_count"] == n_pairs and report["pairs"] == str(lfw_subset / "pairs.txt")
    assert len((report_dir / "scores.csv").read_text().splitlines()) == n_pairs + 1
    assert any(cache.iterdir())  # LFW was aligned into ICYFACE_LFW_CACHE, not the project's data/
    assert "10 identities" in text and f"on {n_pairs} pairs of" in text and "accuracy" in text
    assert "fold  accuracy" in text and "\n  10  " in text  # the fold table, all 10 folds
    assert images >= 6  # histogram, detector bars, crop grid, curves, ROC, hardest pairs
    assert "Traceback" not in text and "Traceback" not in rerun
