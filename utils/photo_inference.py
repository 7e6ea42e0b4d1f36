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


def _threshold(report_dir: Path, threshold: float | None, models: list[Path]) -> float:
    """--threshold, else the one validate_on_lfw.py chose for these same models."""
    if threshold is not None:
        return threshold
    report = Path(report_dir) / "report.json"
    if not report.exists():
        raise ValidationError(f"{report_dir} has not been validated yet (no report.json): run validate_on_lfw.py "
                              f"or pass --threshold")
    data = read_json(report)
    if data.get("metric", "cosine") != "cosine":
        raise ValidationError(f"{report} was made with --metric {data['metric']}; pass a cosine --threshold")
    scored = data["model"] if isinstance(data["model"], list) else [data["model"]]
    if [Path(m).resolve() for m in scored] != [Path(m).resolve() for m in models]:
        raise ValidationError(f"{report} scored {', '.join(map(str, scored))}, not these models; pass the ensemble's "
                              f"validate_on_lfw.py --out folder as --report, or a --threshold")
    if "targets" in data:  # several pair sets were scored: LFW's threshold, the one this is documented with
        rows = {row["name"]: row for row in data["targets"]}
        if "lfw" not in rows:
            raise ValidationError(f"{report} scored {', '.join(rows)}, not LFW; pass --report {report_dir}/<name> "
                                  f"for the set whose threshold to use, or a --threshold")
        return float(rows["lfw"]["threshold"])
    return float(data["metrics"]["threshold"])


def _photo_embeddings(run_dir: Path, photos, flip: bool) -> np.ndarray:
    """L2-normalised embeddings of the face in each photo, aligned with the run's own settings."""
    model, info = load_embedding_model(run_dir)
    settings = PreprocessSettings.from_dict(info["preprocess_settings"])
    images = [load_rgb(p, settings.max_pixels) for p in photos]
    crops = []
    for path, image, det in zip(photos, images, settings.make_cascade().detect(images)):
        if det is None:
            raise ValidationError(f"no face found in {path} (aligned as {run_dir} was trained)")
        crops.append(align_face(image, det.face.box, det.face.landmarks, settings.align, det.face.seed_points))
    batch = np.asarray(resize_like_training(np.stack(crops), info["input_size"]))
    return embed_arrays(model, batch, flip)


def compare_photos(run_dirs, photo_a: Path, photo_b: Path, threshold: float | None = None, flip: bool = True,
                   report_dir: Path | None = None) -> tuple[float, float]:
    """Cosine similarity of the faces in two photos and the decision threshold. Several runs
    are an ensemble: the mean of their cosines (= the cosine of their concatenated
    embeddings, validate_on_lfw.py's fusion), judged at the threshold of the ensemble's
    report (report_dir; one run: its own directory)."""
    runs = [Path(run_dirs)] if isinstance(run_dirs, (str, Path)) else [Path(r) for r in run_dirs]
    if len(runs) > 1 and report_dir is None and threshold is None:
        raise ValidationError("several --model runs are judged at their ensemble's threshold: pass --report "
                              "<validate_on_lfw.py --out folder of the same models> or --threshold")
    decision = _threshold(report_dir or runs[0], threshold, runs)
    similarity = np.mean([float(e[0] @ e[1]) for e in (_photo_embeddings(r, (photo_a, photo_b), flip) for r in runs)])
    return float(similarity), decision


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
