"""Teachers for distillation: a strong embedding model whose vectors a student learns to reproduce,
and its embeddings of a crops folder, computed once and cached beside the crops.

    teacher = open_teacher("dlib")                 # or a run directory, or an .onnx embedding model
    vectors = teacher_embeddings(Path("data/crops"), teacher)   # {crop path relative to the folder: vector}

* ``dlib``: dlib's ResNet (``dlib_face_recognition_resnet_model_v1.dat``, shipped in
  face_recognition_models; 128-d). It aligns with its own 5-point landmarks and 150 px chips,
  so it reads the original photo (preprocess.json's input_dir) and the face box preprocessing
  found (manifest.csv), not the crop.
* a run directory of this project, or an ONNX file taking this project's serving input (uint8
  RGB [N, S, S, 3] aligned crops; export_model.py writes such files): it embeds the crops.

The cache, ``<crops>/teachers/<teacher id>/``, holds the vectors in chunks of the manifest's rows,
each written atomically when done: a killed run keeps its finished chunks, and a changed teacher
(another file, another checksum) gets another folder.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from utils.core.errors import IcyfaceError
from utils.core.run_io import read_json, replaced_atomically, write_json

CACHE_DIR = "teachers"
CHUNK = 64  # manifest rows per cached chunk (a few seconds of dlib on one core)
DLIB_CHIP_SIZE, DLIB_CHIP_PADDING = 150, 0.25  # dlib's own alignment for its ResNet (its authors' values)


class TeacherError(IcyfaceError):
    """A teacher cannot be opened or cannot embed these crops."""


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


class Teacher:
    """What the cache needs of a teacher: a stable identity, a description, and embed(rows)."""

    kind = ""
    dimension = 0
    needs_photos = False  # embeds the original photos (dlib) rather than the crops

    def __init__(self, spec: str, identity: str, description: str):
        self.spec, self.identity, self.description = spec, identity, description

    def describe(self) -> dict:
        return {"teacher": self.spec, "kind": self.kind, "identity": self.identity, "dimension": self.dimension,
                "description": self.description}


class DlibTeacher(Teacher):
    kind = "dlib"
    dimension = 128
    needs_photos = True

    def __init__(self):
        from utils.preprocess.face_detection import ModelFileError, face_model_file

        try:
            self.model_file = face_model_file("dlib_face_recognition_resnet_model_v1.dat")
            self.landmarks_file = face_model_file("shape_predictor_5_face_landmarks.dat")
        except ModelFileError as err:
            raise TeacherError(str(err)) from None
        super().__init__("dlib", f"dlib-resnet-v1-{_file_digest(self.model_file)}",
                         "dlib_face_recognition_resnet_model_v1 (a 29-conv ResNet on dlib's 5-point 150 px chips, "
                         "padding 0.25); its author trained it on about 3 million faces from FaceScrub, the VGG "
                         "face dataset and web images, and reports 99.38 % on LFW (blog.dlib.net, 2017-02-12)")
        self._models = None

    def _load(self):
        if self._models is None:
            import dlib

            self._models = (dlib, dlib.shape_predictor(str(self.landmarks_file)),
                            dlib.face_recognition_model_v1(str(self.model_file)))
        return self._models

    def chip(self, image: np.ndarray, box) -> np.ndarray:
        """dlib's aligned 150 px chip of the face in box (x0, y0, x1, y1) of an RGB photo."""
        dlib, landmarks, _ = self._load()
        x0, y0, x1, y1 = (int(round(float(v))) for v in box)
        shape = landmarks(image, dlib.rectangle(x0, y0, x1, y1))
        return dlib.get_face_chip(image, shape, DLIB_CHIP_SIZE, DLIB_CHIP_PADDING)

    def embed_chips(self, chips: list[np.ndarray]) -> np.ndarray:
        _, _, network = self._load()
        return np.asarray(network.compute_face_descriptor(chips), np.float32).reshape(len(chips), self.dimension)

    def embed_photos(self, photos: list[np.ndarray], boxes: list) -> np.ndarray:
        return self.embed_chips([self.chip(p, b) for p, b in zip(photos, boxes)])


class ModelTeacher(Teacher):
    """A run directory's Keras embedding model or an ONNX file, embedding aligned crops."""

    kind = "model"

    def __init__(self, spec: str, path: Path):
        from utils.verify.embeddings import ModelError, check_run_dir, load_embedding_model

        self.path = path
        try:
            if path.is_dir():
                run = check_run_dir(path)
                self.model, info = load_embedding_model(run)
                self.input_size = int(info["input_size"])
                identity = f"run-{path.name}-{_file_digest(run / info['files']['keras'])}"
                what = f"run directory {path} ({info.get('net_type')}, {self.input_size} px)"
            else:
                from utils.verify.runtime_models import ExportError, RuntimeModel

                try:
                    self.model = RuntimeModel(path)
                except ExportError as err:
                    raise TeacherError(f"--teacher {spec}: {err}") from None
                self.input_size = int(self.model.input_size or 112)
                identity = f"onnx-{path.stem}-{_file_digest(path)}"
                what = f"ONNX model {path} ({self.input_size} px uint8 RGB crops in, embedding out)"
        except ModelError as err:
            raise TeacherError(f"--teacher {spec}: {err}") from None
        probe = np.asarray(self.model(np.zeros((1, self.input_size, self.input_size, 3), np.float32)))
        self.dimension = int(probe.shape[-1])
        super().__init__(spec, identity, what)

    def embed_crops(self, paths: list[str]) -> np.ndarray:
        from utils.verify.embeddings import embed_files

        return np.asarray(embed_files(self.model, paths, self.input_size, flip=False, progress=False), np.float32)


def open_teacher(spec: str) -> Teacher:
    """--teacher's value -> a Teacher; one that is missing or unreadable is a TeacherError naming the fix."""
    if spec == "dlib":
        return DlibTeacher()
    path = Path(spec)
    if not path.exists():
        raise TeacherError(f"--teacher {spec}: no such run directory or .onnx file (or use 'dlib', the ResNet "
                           f"shipped in face_recognition_models)")
    if path.is_file() and path.suffix != ".onnx":
        raise TeacherError(f"--teacher {spec}: not an .onnx embedding model; give 'dlib', a run directory or an "
                           f".onnx file")
    return ModelTeacher(spec, path)


# ------------------------------------------------------------------ the cache

def _manifest_rows(crops: Path) -> tuple[list[dict], dict]:
    from utils.preprocess.manifest import MANIFEST_NAME, read_manifest
    from utils.preprocess.settings import SETTINGS_NAME

    if not (crops / MANIFEST_NAME).is_file() or not (crops / SETTINGS_NAME).is_file():
        raise TeacherError(f"{crops}: distillation needs a crops folder made by preprocess_data.py (manifest.csv "
                           f"and preprocess.json), not a pack")
    rows = [r for r in read_manifest(crops / MANIFEST_NAME).values() if r["status"] != "error" and r["output"]]
    return sorted(rows, key=lambda r: r["output"]), read_json(crops / SETTINGS_NAME)


def _chunk_name(chunk: list[dict]) -> str:
    # Keyed by what the chunk holds, so a manifest that grew reuses every chunk it did not change.
    key = "\n".join(f"{r['path']}\t{r['output']}\t{r['x0']},{r['y0']},{r['x1']},{r['y1']}" for r in chunk)
    return f"chunk-{hashlib.sha256(key.encode('utf-8', 'surrogateescape')).hexdigest()[:16]}.npy"


_worker: dict = {}


def _start_worker(input_dir: str, max_pixels: int):
    _worker.update(teacher=DlibTeacher(), input_dir=Path(input_dir), max_pixels=max_pixels)


def _dlib_chunk(job: tuple[Path, list[tuple[str, tuple]]]) -> tuple[Path, int]:
    from utils.core.image_io import load_rgb

    path, items = job
    photos = [load_rgb(_worker["input_dir"] / rel, _worker["max_pixels"]) for rel, _ in items]
    vectors = _worker["teacher"].embed_photos(photos, [box for _, box in items])
    _save_chunk(path, vectors)
    return path, len(items)


def _save_chunk(path: Path, vectors: np.ndarray):
    with replaced_atomically(path) as tmp, open(tmp, "xb") as f:
        np.save(f, np.asarray(vectors, np.float32))


def teacher_embeddings(crops: Path, teacher: Teacher, workers: int | None = None,
                       progress: bool = True) -> dict[str, np.ndarray]:
    """{crop path relative to crops: the teacher's L2-normalised vector} for every crop the manifest
    lists, from the cache where it holds them; the rest are computed (workers processes for dlib)."""
    from tqdm import tqdm

    crops = Path(crops)
    rows, preprocess = _manifest_rows(crops)
    folder = crops / CACHE_DIR / teacher.identity
    try:
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / "teacher.json", {**teacher.describe(), "crops": len(rows)})
    except OSError as err:
        raise TeacherError(f"cannot write the teacher's cache {folder}: {err.strerror or err}; make the crops "
                           f"folder writable (or free some disk space)") from None
    chunks = [rows[i:i + CHUNK] for i in range(0, len(rows), CHUNK)]
    todo = [(folder / _chunk_name(c), c) for c in chunks if not (folder / _chunk_name(c)).is_file()]
    with tqdm(total=sum(len(c) for _, c in todo), unit="img", desc=f"teacher {teacher.spec}",
              disable=not progress or not todo) as bar:
        if todo and teacher.needs_photos:
            jobs = [(path, [(r["path"], (r["x0"], r["y0"], r["x1"], r["y1"])) for r in c]) for path, c in todo]
            _run_dlib(jobs, preprocess, workers or len(os.sched_getaffinity(0)), bar)
        for path, chunk in todo if not teacher.needs_photos else ():
            _save_chunk(path, teacher.embed_crops([str(crops / r["output"]) for r in chunk]))
            bar.update(len(chunk))
    vectors = {}
    for chunk in chunks:
        values = np.load(folder / _chunk_name(chunk))
        values /= np.maximum(np.linalg.norm(values, axis=1, keepdims=True), 1e-12)
        vectors.update(zip((r["output"] for r in chunk), values))
    return vectors


def _run_dlib(jobs: list, preprocess: dict, workers: int, bar):
    from utils.core.image_io import ImageReadError
    from utils.preprocess.settings import PreprocessSettings

    input_dir = preprocess.get("input_dir")
    if not input_dir or not Path(input_dir).is_dir():
        raise TeacherError(f"--teacher dlib reads the original photos, but the crops' input folder {input_dir} is "
                           f"gone; restore it there, or distil a teacher that embeds crops (a run or .onnx file)")
    max_pixels = PreprocessSettings.from_dict(preprocess["settings"]).max_pixels
    try:
        if workers <= 1:
            _start_worker(input_dir, max_pixels)
            for job in jobs:
                bar.update(_dlib_chunk(job)[1])
            return
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(workers, _start_worker, (input_dir, max_pixels)) as pool:
            for _, count in pool.imap_unordered(_dlib_chunk, jobs):
                bar.update(count)
    except ImageReadError as err:
        raise TeacherError(f"--teacher dlib: a photo in {input_dir} cannot be read any more ({err}); rerun "
                           f"preprocess_data.py on it first") from None
