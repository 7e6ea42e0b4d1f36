"""A trained model on the user's own photos: compare two, embed a folder tree, or say who each
photo shows from an enrolled gallery (1:N).

Faces are detected and aligned with the model's own preprocessing settings (model.json), as
validation does, and compared at the threshold validation chose on LFW (report.json).
Failures raise utils.verify.aligned_cache.ValidationError, which verify_faces.py reports.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from utils.core.image_io import load_rgb
from utils.core.run_io import read_json
from utils.preprocess.face_alignment import align_face
from utils.preprocess.input_pipeline import resize_like_training
from utils.preprocess.settings import PreprocessSettings
from utils.verify.aligned_cache import ValidationError, identity_of, tree_embeddings
from utils.verify.embeddings import embed_arrays, l2_normalize, load_embedding_model
from utils.verify.identification import identify
from utils.verify.validation import decision_threshold


def _checked_report(report_dir: Path, models: list[Path]) -> tuple[Path, dict]:
    """The report.json validate_on_lfw.py wrote for these same models, with cosine scores."""
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
    return report, data


def _threshold(report_dir: Path, threshold: float | None, models: list[Path],
               checked: tuple[Path, dict] | None = None) -> float:
    """--threshold, else the one validate_on_lfw.py chose for these same models (`checked`: their
    report as _checked_report read it, when the caller already has)."""
    if threshold is not None:
        return threshold
    report, data = checked or _checked_report(report_dir, models)
    chosen = decision_threshold(data)
    if chosen is None:
        raise ValidationError(f"{report} scored {', '.join(row['name'] for row in data['targets'])}, not LFW; pass "
                              f"--report {report_dir}/<name> for the set whose threshold to use, or a --threshold")
    return chosen


def _photo_embeddings(run_dir: Path, model, info: dict, photos, flip: bool) -> np.ndarray:
    """L2-normalised embeddings of the face in each photo, aligned with the run's own settings
    (its loaded model and model.json)."""
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
    embeddings, validate_on_lfw.py's fusion), weighted as the ensemble's report weighted them,
    judged at that report's threshold (report_dir; one run: its own directory)."""
    runs = [Path(run_dirs)] if isinstance(run_dirs, (str, Path)) else [Path(r) for r in run_dirs]
    if len(runs) > 1 and report_dir is None and threshold is None:
        raise ValidationError("several --model runs are judged at their ensemble's threshold: pass --report "
                              "<validate_on_lfw.py --out folder of the same models> or --threshold")
    # An ensemble's report, read once: its threshold and how it weighted the members (none: equal).
    checked = _checked_report(report_dir, runs) if len(runs) > 1 and report_dir is not None else None
    decision = _threshold(report_dir or runs[0], threshold, runs, checked)
    weights = checked[1].get("fusion_weights", {}).get("weights") if checked else None
    cosines = [float(e[0] @ e[1]) for e in (_photo_embeddings(r, *load_embedding_model(r), (photo_a, photo_b), flip)
                                            for r in runs)]
    similarity = np.average(cosines, weights=weights)
    return float(similarity), decision


def embed_tree(run_dir: Path, tree: Path, out: Path, flip: bool = True, workers: int = 1,
               cache_root: Path = Path("data")) -> int:
    """Align a folder-per-identity tree like the training crops and save its embeddings
    (npz: paths, identities, embeddings; images without a face are left out)."""
    paths, emb = tree_embeddings(*load_embedding_model(run_dir), tree, flip, workers=workers, cache_root=cache_root)
    np.savez(out, paths=np.array(paths), identities=np.array([identity_of(p) for p in paths]),
             embeddings=emb.astype(np.float32))
    return len(paths)


def enrol_gallery(model, info: dict, tree: Path, flip: bool = True, workers: int = 1,
                  cache_root: Path = Path("data")) -> tuple[list[str], np.ndarray]:
    """(people, one L2-normalised template each: the mean of their photos' embeddings) of a
    folder-per-person tree, by a run's model and its model.json."""
    paths, emb = tree_embeddings(model, info, tree, flip, workers=workers, progress=False, cache_root=cache_root)
    people = np.array([identity_of(p) for p in paths])
    names = sorted(set(people.tolist()))
    return names, l2_normalize(np.stack([emb[people == name].mean(axis=0) for name in names]))


def _identification_threshold(run_dir: Path, threshold: float | None) -> tuple[float, str]:
    """--threshold; else the open-set threshold at FPIR 1 % of the run's last validate_on_lfw.py
    --identification; else its 1:1 verification threshold, which admits more strangers as the
    gallery grows (said in the returned note)."""
    if threshold is not None:
        return threshold, "--threshold"
    report = Path(run_dir) / "report.json"
    rows = read_json(report).get("identification", {}).get("lfw", {}).get("open_set", []) if report.exists() else []
    for row in rows:
        if row["fpir"] == 0.01:
            return float(row["threshold"]), f"1:N at FPIR 1 % on LFW ({report})"
    return _threshold(run_dir, None, [Path(run_dir)]), (
        f"LFW's 1:1 verification threshold ({report}); run validate_on_lfw.py --identification for a 1:N one")


def identify_photos(run_dir: Path, gallery: Path, photos, threshold: float | None = None, flip: bool = True,
                    workers: int = 1, cache_root: Path = Path("data")):
    """((name or None, best score) per photo, threshold, where the threshold came from)."""
    decision, source = _identification_threshold(run_dir, threshold)
    model, info = load_embedding_model(run_dir)  # once, for the gallery and the photos
    names, templates = enrol_gallery(model, info, gallery, flip, workers, cache_root)
    answers = identify(templates, names, _photo_embeddings(run_dir, model, info, photos, flip), decision)
    return answers, decision, source
