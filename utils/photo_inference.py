"""A trained model on the user's own photos: compare two, or embed a folder tree.

Faces are detected and aligned with the model's own preprocessing settings (model.json), as
validation does, and compared at the threshold validation chose on LFW (report.json).
Failures raise utils.validation.ValidationError, which verify_faces.py reports.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from utils.embeddings import embed_arrays, embed_files, load_embedding_model
from utils.face_alignment import align_face
from utils.image_io import load_rgb
from utils.input_pipeline import resize_like_training
from utils.preprocess_settings import PreprocessSettings
from utils.run_io import read_json
from utils.validation import ValidationError, align_like_training


def _threshold(run_dir: Path, threshold: float | None) -> float:
    if threshold is not None:
        return threshold
    report = Path(run_dir) / "report.json"
    if not report.exists():
        raise ValidationError(f"{run_dir} has not been validated yet (no report.json): run validate_on_lfw.py "
                              f"or pass --threshold")
    data = read_json(report)
    if data.get("metric", "cosine") != "cosine":
        raise ValidationError(f"{report} was made with --metric {data['metric']}; pass a cosine --threshold")
    return float(data["metrics"]["threshold"])


def compare_photos(run_dir: Path, photo_a: Path, photo_b: Path, threshold: float | None = None,
                   flip: bool = True) -> tuple[float, float]:
    """Cosine similarity of the faces in two photos and the decision threshold."""
    decision = _threshold(run_dir, threshold)
    model, info = load_embedding_model(run_dir)
    settings = PreprocessSettings.from_dict(info["preprocess_settings"])
    images = [load_rgb(p, settings.max_pixels) for p in (photo_a, photo_b)]
    cascade = settings.make_cascade()
    crops = []
    for path, image, det in zip((photo_a, photo_b), images, cascade.detect(images)):
        if det is None:
            raise ValidationError(f"no face found in {path}")
        crops.append(align_face(image, det.face.box, det.face.landmarks, settings.align, det.face.seed_points))
    batch = np.asarray(resize_like_training(np.stack(crops), info["input_size"]))
    emb = embed_arrays(model, batch, flip)
    return float(emb[0] @ emb[1]), decision


def embed_tree(run_dir: Path, tree: Path, out: Path, flip: bool = True, workers: int = 1,
               cache_root: Path = Path("data")) -> int:
    """Align a folder-per-identity tree like the training crops and save its embeddings
    (npz: paths, identities, embeddings; images without a face are left out)."""
    model, info = load_embedding_model(run_dir)
    aligned_dir, manifest = align_like_training(Path(tree), info, workers=workers, cache_root=cache_root)
    rows = [r for r in manifest.values() if r["status"] != "error"]
    emb = embed_files(model, [str(aligned_dir / r["output"]) for r in rows], info["input_size"], flip)
    np.savez(out, paths=np.array([r["path"] for r in rows]),
             identities=np.array([r["path"].split("/", 1)[0] for r in rows]), embeddings=emb.astype(np.float32))
    return len(rows)
