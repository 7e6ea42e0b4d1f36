"""ONNX and LiteRT exports (export_model.py): files, model.json, and parity with the Keras model on
real aligned LFW crops, run by ONNX Runtime and the LiteRT interpreter without TensorFlow."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import made_once, run_main
from utils.core.run_io import PROJECT_ROOT

FLOAT32_FORMATS = ("onnx", "litert")
REDUCED_FORMATS = ("litert-fp16", "litert-int8")


@pytest.fixture(scope="module")
def exported_run(tiny_run, tmp_path_factory):
    """A copy of the tiny run (the fixture's own folder stays as other tests expect it), validated
    on LFW pairs first so that its threshold travels into model.json, then exported to every format."""
    def make(folder: Path) -> Path:
        run = folder / "tiny"
        shutil.copytree(tiny_run, run)
        (run / "report.json").write_text(json.dumps({"model": str(run), "pairs": "lfw/pairs.txt", "flip": True,
                                                     "metric": "cosine", "metrics": {"threshold": 0.4321}}))
        res = run_main("export_model.py", "--model", run, "--formats", "onnx,litert,litert-fp16,litert-int8")
        assert res.returncode == 0, res.stderr
        return run

    return made_once(tmp_path_factory, "exported", make)


@pytest.fixture(scope="module")
def lfw_crops(exported_run, lfw_subset, tmp_path_factory) -> np.ndarray:
    """48 real LFW photos aligned the way the run was trained, as the uint8 batch a service sends."""
    from utils.preprocess.input_pipeline import make_dataset
    from utils.verify.aligned_cache import align_like_training
    from utils.verify.embeddings import load_model_info

    raw = tmp_path_factory.mktemp("lfw48") / "lfw"
    for photo in sorted(lfw_subset.rglob("*.jpg"))[:48]:
        (raw / photo.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(photo, raw / photo.parent.name / photo.name)
    info = load_model_info(exported_run)
    aligned, manifest = align_like_training(raw, info, workers=2, progress=False, cache_root=raw.parent / "cache")
    paths = [str(aligned / row["output"]) for row in manifest.values() if row["status"] != "error"]
    assert len(paths) >= 40
    batches = make_dataset(paths, np.zeros(len(paths), np.int32), info["input_size"], 64, training=False)
    return np.clip(np.rint(np.concatenate([np.asarray(b) for b, _ in batches])), 0, 255).astype(np.uint8)


def test_export_writes_every_format_and_describes_it_in_model_json(exported_run):
    from export_model import DEFAULT_FORMATS
    from utils.verify.runtime_models import FORMATS, file_sha256

    info = json.loads((exported_run / "model.json").read_text())
    assert sorted(info["exports"]) == sorted(FORMATS)
    assert DEFAULT_FORMATS == "onnx,litert,litert-fp16"  # int8 is opt-in: it moves embeddings more (below)
    for name, entry in info["exports"].items():
        path = exported_run / entry["file"]
        assert path.stat().st_size == entry["bytes"] and file_sha256(path) == entry["sha256"], name
        # Checked against the Keras model on the run's own training crops before it took its name.
        parity = entry["parity"]
        assert parity["checked"] and parity["crops"] >= 16 and parity["min_cosine"] >= FORMATS[name].min_cosine, name
    sizes = {name: entry["bytes"] for name, entry in info["exports"].items()}
    assert sizes["litert-int8"] < sizes["litert-fp16"] < sizes["litert"]  # what the reduced formats are for
    serving = info["serving"]
    size = info["input_size"]
    assert serving["input"]["shape"] == [None, size, size, 3] and serving["input"]["dtype"] == "uint8"
    assert serving["input"]["preprocess_settings"] == info["preprocess_settings"]
    assert serving["output"]["shape"] == [None, info["embedding_size"]]
    assert serving["threshold"]["cosine"] == pytest.approx(0.4321)  # from the run's report.json
    assert info["checksums"]["keras"] == file_sha256(exported_run / "embedding.keras")
    assert not list(exported_run.glob(".icyface-tmp-*"))


def _runtime_embeddings(run, crops, tmp_path) -> dict:
    """Each exported file's embeddings of crops, computed in a fresh interpreter where importing
    TensorFlow fails: the runtimes must stand on their own."""
    np.save(tmp_path / "crops.npy", crops)
    script = f"""
import sys
sys.modules["tensorflow"] = None  # any import of TensorFlow now raises ImportError
sys.path.insert(0, {str(PROJECT_ROOT)!r})
import json, numpy as np
from utils.verify.runtime_models import RuntimeModel
crops = np.load({str(tmp_path / "crops.npy")!r})
exports = json.load(open({str(run / "model.json")!r}))["exports"]
np.savez({str(tmp_path / "out.npz")!r}, **{{name: RuntimeModel({str(run)!r} + "/" + e["file"])(crops)
                                            for name, e in exports.items()}})
"""
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return dict(np.load(tmp_path / "out.npz"))


def test_exported_formats_match_the_keras_model_on_real_lfw_crops(exported_run, lfw_crops, tmp_path):
    from utils.verify.embeddings import load_embedding_model
    from utils.verify.runtime_models import serving_model

    backbone, _ = load_embedding_model(exported_run)
    reference = np.asarray(serving_model(backbone)(lfw_crops))
    assert np.allclose(np.linalg.norm(reference, axis=1), 1, atol=1e-5)
    embeddings = _runtime_embeddings(exported_run, lfw_crops, tmp_path)
    for name in FLOAT32_FORMATS:
        assert np.abs(embeddings[name] - reference).max() <= 1e-4, name
    cosine = {name: (embeddings[name] * reference).sum(axis=1).min() for name in REDUCED_FORMATS}
    assert cosine["litert-fp16"] >= 0.999, cosine  # the default smaller file keeps the embedding
    # int8 weights (opt-in) move it more: 0.9989 on this tiny model, 0.9994 on the benchmark's (docs/serving.md).
    assert cosine["litert-int8"] >= 0.995, cosine
    # Different photos stay different: parity is not a constant output.
    assert (reference @ reference.T)[np.triu_indices(len(reference), 1)].min() < 0.99


def test_a_runtime_model_batches_of_any_size_and_float_input(exported_run, lfw_crops):
    from utils.verify.runtime_models import RuntimeModel

    for name in ("onnx", "litert"):
        exports = json.loads((exported_run / "model.json").read_text())["exports"]
        model = RuntimeModel(exported_run / exports[name]["file"])
        whole = model(lfw_crops)
        one = np.concatenate([model(lfw_crops[i:i + 1]) for i in range(5)])
        assert np.abs(one - whole[:5]).max() <= 1e-5, name
        assert np.abs(model(lfw_crops.astype(np.float32) + 0.2) - whole).max() <= 1e-6, name  # rounded to uint8


def test_bad_requests_fail_with_one_line(exported_run, tmp_path, monkeypatch):
    import utils.verify.runtime_models as exports

    res = run_main("export_model.py", "--model", exported_run, "--formats", "onnx,coreml")
    assert res.returncode == 2 and "unknown format coreml" in res.stderr, res.stderr
    res = run_main("export_model.py", "--model", tmp_path)
    assert res.returncode == 2 and "no model.json" in res.stderr, res.stderr
    with pytest.raises(exports.ExportError, match="not found: run export_model.py"):
        exports.RuntimeModel(tmp_path / "embedding.onnx")
    with pytest.raises(exports.ExportError, match="not an exported model"):
        exports.RuntimeModel(tmp_path / "embedding.keras")
    real = exports.importlib.util.find_spec
    monkeypatch.setattr(exports.importlib.util, "find_spec", lambda name: None if name == "tf2onnx" else real(name))
    before = (exported_run / "model.json").read_text()
    res = run_main("export_model.py", "--model", exported_run, "--formats", "onnx")
    assert res.returncode == 2 and "pip install tf2onnx" in res.stderr, res.stderr
    assert (exported_run / "model.json").read_text() == before  # nothing touched


def test_the_exports_threshold_follows_the_runs_next_validation(exported_run):
    from utils.verify.runtime_models import refresh_threshold

    report = {"model": str(exported_run), "flip": True, "metric": "cosine",
              "targets": [{"name": "cfp_fp", "threshold": 0.2}, {"name": "lfw", "threshold": 0.3579}]}
    (exported_run / "report.json").write_text(json.dumps(report))
    assert refresh_threshold(exported_run)
    assert json.loads((exported_run / "model.json").read_text())["serving"]["threshold"]["cosine"] == 0.3579
    assert not refresh_threshold(exported_run)  # nothing new: model.json is not rewritten


def test_a_file_below_its_parity_bound_is_refused_and_not_written(tiny_run, tmp_path, monkeypatch):
    """The check computes the real file's embeddings of the run's crops; a bound no float16 file
    can meet (a real collapse, cosine 0.02 once, was not reproducible on this CPU: even stem weights
    x1e9 kept 0.9995) stands in for a model whose float16 weights lose it."""
    from utils.verify.runtime_models import FORMATS

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    monkeypatch.setitem(FORMATS, "litert-fp16", FORMATS["litert-fp16"]._replace(min_cosine=1.01))
    res = run_main("export_model.py", "--model", run, "--formats", "litert,litert-fp16")
    assert res.returncode == 2, res.stderr
    assert "litert-fp16: the exported file's embeddings differ from the Keras model's (least cosine" in res.stderr
    assert "< 1.01 on 64 crops of" in res.stderr, res.stderr
    assert not (run / FORMATS["litert-fp16"].file).exists()
    assert not list(run.glob(".icyface-tmp*")) and not list(run.glob("*tmp*.tflite"))
