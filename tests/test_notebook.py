"""data_analysis.ipynb executes end to end on a tiny validated run."""
import nbformat
from nbclient import NotebookClient

from tests.conftest import run_cli
from utils.run_io import PROJECT_ROOT


def test_notebook_is_committed_without_outputs():
    nb = nbformat.read(PROJECT_ROOT / "data_analysis.ipynb", as_version=4)
    assert all(not c.get("outputs") and not c.get("execution_count") for c in nb.cells if c.cell_type == "code")


def test_notebook_runs_on_a_tiny_run(tiny_run, pubfig_crops, lfw_subset, tmp_path, monkeypatch):
    report_dir = tmp_path / "report"
    res = run_cli("validate_on_lfw.py", "--model", tiny_run, "--lfw-dir", lfw_subset, "--pairs",
                  lfw_subset / "pairs.txt", "--cache-dir", tmp_path / "cache", "--out", report_dir, "--no-progress",
                  timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    for name, value in {"ICYFACE_CROPS": pubfig_crops, "ICYFACE_RUN": tiny_run, "ICYFACE_REPORT": report_dir,
                        "ICYFACE_IMG_MORETHAN": "5", "MPLBACKEND": "Agg"}.items():
        monkeypatch.setenv(name, str(value))
    nb = nbformat.read(PROJECT_ROOT / "data_analysis.ipynb", as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(PROJECT_ROOT)}}).execute()
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "10 identities" in text and "accuracy" in text and "fold  accuracy" in text
    images = sum(1 for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {}))
    assert images >= 6  # histogram, detector bars, crop grid, curves, ROC, hardest pairs
    assert "Traceback" not in text
