"""The embedding model in the formats an online service runs without TensorFlow.

ONNX (for ONNX Runtime) and LiteRT (.tflite: float32, float16 weights, or int8 dynamic-range
weights), each made by Keras' own `model.export` from the run's embedding.keras, wrapped so that
every file takes what the online half has: a uint8 RGB batch of aligned crops at the model's
input size, and gives L2-normalised float32 embeddings. model.json's "exports" lists each file
with its checksum; its "serving" section says what goes in (size, dtype, alignment settings),
what comes out and the decision threshold of the last validation.

`RuntimeModel` runs an exported file with ONNX Runtime or the LiteRT interpreter: no TensorFlow.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from utils.core.errors import IcyfaceError
from utils.core.run_io import read_json, replaced_atomically, write_json
from utils.verify.embeddings import MODEL_INFO, load_embedding_model


class ExportError(IcyfaceError):
    """A format cannot be exported or run here; the message says what to install or fix."""


class ExportFormat(NamedTuple):
    file: str
    keras_format: str  # model.export's format
    weights: str
    export_modules: tuple[tuple[str, str], ...]  # (import name, pip name) needed to write it
    runtime: str  # what runs it
    min_cosine: float  # parity bound: the least cosine to the float32 Keras embedding of any sample crop


FORMATS = {
    "onnx": ExportFormat("embedding.onnx", "onnx", "float32", (("tf2onnx", "tf2onnx"), ("onnx", "onnx")),
                         "onnxruntime", 0.9999),
    "litert": ExportFormat("embedding.tflite", "litert", "float32", (), "ai-edge-litert", 0.9999),
    # Reduced precision moves embeddings a little (0.9999+ / 0.999 on the benchmark models); far
    # less means the weights overflowed or underflowed the smaller type, e.g. an untrained model.
    "litert-fp16": ExportFormat("embedding-fp16.tflite", "litert", "float16", (), "ai-edge-litert", 0.999),
    "litert-int8": ExportFormat("embedding-int8.tflite", "litert", "int8 (dynamic range)", (), "ai-edge-litert",
                                0.995),
}
PARITY_CROPS = 64  # sample crops every exported file is checked on
RUNTIME_MODULES = {"onnxruntime": "onnxruntime", "ai-edge-litert": "ai_edge_litert"}


def serving_model(backbone):
    """uint8 [N, S, S, 3] RGB crops -> L2-normalised float32 embeddings: the backbone normalises
    its input itself, so the wrapper only casts and normalises the output."""
    import keras

    size = backbone.input_shape[1]
    images = keras.Input((size, size, 3), dtype="uint8", name="crops")
    embeddings = keras.ops.cast(backbone(keras.ops.cast(images, "float32")), "float32")
    model = keras.Model(images, keras.ops.normalize(embeddings, axis=-1), name="serving")
    model(np.zeros((1, size, size, 3), np.uint8))  # export needs a model that has been called
    return model


def _converter_options(name: str) -> dict:
    """LiteRT converter settings of a reduced format (TFLiteConverter attributes)."""
    import tensorflow as tf

    if name == "litert-fp16":
        return {"optimizations": [tf.lite.Optimize.DEFAULT], "target_spec": {"supported_types": [tf.float16]}}
    if name == "litert-int8":  # weights stored as int8, activations float: no calibration data needed
        return {"optimizations": [tf.lite.Optimize.DEFAULT]}
    return {}


def _missing(modules) -> list[str]:
    return [pip for module, pip in modules if importlib.util.find_spec(module) is None]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tree_sha256(path: Path) -> str:
    """A file's sha256, or a folder's: over its files' relative paths and contents, in sorted order."""
    path = Path(path)
    if path.is_file():
        return file_sha256(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(path).as_posix()}\0{file_sha256(file)}\n".encode())
    return digest.hexdigest()


def last_threshold(run_dir: Path) -> dict | None:
    """The cosine threshold of the run's last validation (its report.json), with where it came
    from; None before any validation, or when that validation did not use cosine or LFW."""
    from utils.verify.validation import decision_threshold

    path = Path(run_dir) / "report.json"
    if not path.exists():
        return None
    report = read_json(path)
    chosen = decision_threshold(report)
    if report.get("metric", "cosine") != "cosine" or chosen is None:
        return None
    return {"cosine": chosen, "from": path.name, "flip": report.get("flip", True)}


def describe_serving(run_dir: Path, info: dict) -> dict:
    """model.json's "serving" section: the contract every exported file keeps."""
    size = info["input_size"]
    return {"input": {"shape": [None, size, size, 3], "dtype": "uint8", "channels": "RGB",
                      "crops": "aligned as preprocess_settings says, resized to input_size",
                      "preprocess_settings": info["preprocess_settings"]},
            "output": {"shape": [None, info["embedding_size"]], "dtype": "float32",
                       "meaning": "L2-normalised embedding; cosine similarity = dot product"},
            "threshold": last_threshold(run_dir)}


def export_formats(run_dir: Path, names, progress=print) -> dict:
    """Writes each format's file into the run directory (under a temporary name, renamed into
    place) and records them in model.json. Returns model.json's new "exports" section."""
    import keras

    run_dir = Path(run_dir)
    unknown = [n for n in names if n not in FORMATS]
    if unknown:
        raise ExportError(f"unknown format {', '.join(unknown)}; choose from {', '.join(FORMATS)}")
    missing = sorted({pip for n in names for pip in _missing(FORMATS[n].export_modules)})
    if missing:
        raise ExportError(f"exporting {', '.join(names)} needs {', '.join(missing)}: pip install {' '.join(missing)}")
    if any(FORMATS[n].keras_format == "litert" for n in names) and keras.backend.backend() != "tensorflow":
        raise ExportError("LiteRT export needs the TensorFlow backend (KERAS_BACKEND=tensorflow)")
    backbone, info = load_embedding_model(run_dir)
    serving = serving_model(backbone)
    crops, sample = parity_sample(run_dir, info)
    reference = None if crops is None else np.asarray(serving(crops))
    if crops is None:
        progress(f"warning: exported files are not checked against the Keras model: {sample}")
    exports = dict(info.get("exports", {}))
    for name in names:
        fmt = FORMATS[name]
        progress(f"exporting {fmt.file} ({name}, {fmt.weights} weights)")
        try:
            with replaced_atomically(run_dir / fmt.file) as tmp:
                serving.export(str(tmp), format=fmt.keras_format, verbose=False, **_converter_options(name))
                # Before the rename: a file that does not give the model's embeddings never takes the name.
                parity = {"checked": False, "why": sample} if crops is None else \
                    checked_parity(tmp, name, crops, reference, sample)
        except (ValueError, TypeError, RuntimeError) as err:  # the converters' own failures, e.g. an unsupported op
            raise ExportError(f"Keras could not export {run_dir} as {name}: {str(err).strip()[-500:]}") from None
        exports[name] = {"file": fmt.file, "weights": fmt.weights, "runtime": fmt.runtime,
                         "bytes": (run_dir / fmt.file).stat().st_size, "sha256": file_sha256(run_dir / fmt.file),
                         "parity": parity}
    info = read_json(run_dir / MODEL_INFO)  # as it is now, so nothing written meanwhile is lost
    info["exports"] = exports
    info["serving"] = describe_serving(run_dir, info)
    info["checksums"] = {key: tree_sha256(run_dir / file) for key, file in info["files"].items()
                         if (run_dir / file).exists()}
    write_json(run_dir / MODEL_INFO, info)
    return exports


def parity_sample(run_dir: Path, info: dict, count: int = PARITY_CROPS) -> tuple[np.ndarray | None, str]:
    """(up to `count` of the run's own training crops as the uint8 batch a service sends, where they
    come from), or (None, why there are none): the crops folder named in config.json is read here."""
    from utils.preprocess.input_pipeline import InputError, list_crops, make_dataset

    try:
        crops_dir = Path(read_json(Path(run_dir) / "config.json")["recipe"]["data_dir"])
        files = list_crops(crops_dir)
    except (OSError, ValueError, KeyError, InputError) as err:
        return None, f"the run's training crops are not readable here ({str(err).splitlines()[0]})"
    step = max(1, len(files.paths) // count)  # spread over the identities (the list is sorted by person)
    paths = files.paths[::step][:count]
    batches = make_dataset(paths, np.zeros(len(paths), np.int32), info["input_size"], count, training=False)
    crops = np.concatenate([np.asarray(images) for images, _ in batches])
    return np.clip(np.rint(crops), 0, 255).astype(np.uint8), f"{len(paths)} crops of {crops_dir}"


def checked_parity(path: Path, name: str, crops: np.ndarray, reference: np.ndarray, sample: str) -> dict:
    """The exported file's embeddings of the sample crops against the Keras model's (`reference`);
    an ExportError when any falls below the format's bound."""
    fmt = FORMATS[name]
    cosine = float((RuntimeModel(path)(crops) * reference).sum(axis=1).min())
    if not cosine >= fmt.min_cosine:  # NaN too
        raise ExportError(f"{name}: the exported file's embeddings differ from the Keras model's (least cosine "
                          f"{cosine:.4f} < {fmt.min_cosine} on {sample}); its {fmt.weights} weights do not hold "
                          f"this model (overflow, or an untrained model): nothing written, export another format")
    return {"checked": True, "min_cosine": round(cosine, 6), "bound": fmt.min_cosine, "crops": len(crops)}


def refresh_threshold(run_dir: Path) -> bool:
    """After a new validation: model.json's "serving" threshold follows the run's report.json (a
    run with no exports yet has no "serving" section and is left alone). True when it changed."""
    path = Path(run_dir) / MODEL_INFO
    info = read_json(path)
    if "serving" not in info or info["serving"].get("threshold") == (chosen := last_threshold(run_dir)):
        return False
    info["serving"]["threshold"] = chosen
    write_json(path, info)
    return True


class RuntimeModel:
    """An exported file run by its own runtime; call it like the Keras model (embed_arrays does):
    a float or uint8 batch of 0..255 RGB crops -> L2-normalised embeddings. Floats are rounded to
    uint8, as the online half would have them."""

    def __init__(self, path: Path, threads: int | None = None):
        self.path = Path(path)
        threads = threads or len(os.sched_getaffinity(0))
        suffix = self.path.suffix
        runtime = {".onnx": "onnxruntime", ".tflite": "ai-edge-litert"}.get(suffix)
        if runtime is None:
            raise ExportError(f"{self.path}: not an exported model (.onnx or .tflite)")
        if importlib.util.find_spec(RUNTIME_MODULES[runtime]) is None:
            raise ExportError(f"running {self.path.name} needs {runtime}: pip install {runtime}")
        if not self.path.is_file():
            raise ExportError(f"{self.path} not found: run export_model.py first")
        if suffix == ".onnx":
            import onnxruntime

            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = threads
            self._session = onnxruntime.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
            self._input = self._session.get_inputs()[0].name
            self._run = self._run_onnx
        else:
            from ai_edge_litert.interpreter import Interpreter

            self._interpreter = Interpreter(model_path=str(self.path), num_threads=threads)
            self._input = self._interpreter.get_input_details()[0]["index"]
            self._output = self._interpreter.get_output_details()[0]["index"]
            self._shape = None
            self._run = self._run_litert

    @property
    def input_size(self) -> int | None:
        """The side of the square crops the file takes (None when its input shape leaves it open)."""
        if hasattr(self, "_session"):
            shape = self._session.get_inputs()[0].shape
        else:
            shape = list(self._interpreter.get_input_details()[0]["shape_signature"])
        return shape[1] if isinstance(shape[1], int) and shape[1] > 0 else None

    def _run_onnx(self, images: np.ndarray) -> np.ndarray:
        return self._session.run(None, {self._input: images})[0]

    def _run_litert(self, images: np.ndarray) -> np.ndarray:
        if self._shape != images.shape:  # LiteRT plans its memory per input shape
            self._interpreter.resize_tensor_input(self._input, images.shape)
            self._interpreter.allocate_tensors()
            self._shape = images.shape
        self._interpreter.set_tensor(self._input, images)
        self._interpreter.invoke()
        return self._interpreter.get_tensor(self._output).copy()

    def __call__(self, images, training: bool = False) -> np.ndarray:
        images = np.asarray(images)
        if images.dtype != np.uint8:
            images = np.clip(np.rint(images), 0, 255).astype(np.uint8)
        return self._run(np.ascontiguousarray(images))
