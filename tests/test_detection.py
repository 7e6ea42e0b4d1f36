"""Detectors and landmarks on real photos (../shared/data)."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import made_once, requires_shared_data, run_cli
from utils.core.image_io import load_rgb
from utils.core.run_io import PROJECT_ROOT, SHARED_DATA_DIR
from utils.preprocess.driver import run_preprocess
from utils.preprocess.face_alignment import AlignSettings, template_landmarks
from utils.preprocess.face_detection import Face, face_model_file, parse_detector_list, select_face
from utils.preprocess.manifest import read_manifest
from utils.preprocess.settings import PreprocessSettings

LFW_SAMPLE = 550


def test_model_files_are_found_even_where_pkg_resources_is_gone():
    # setuptools >= 82 has no pkg_resources, which face_recognition_models' __init__ imports.
    code = ("import sys; sys.modules['pkg_resources'] = None\n"
            "from utils.preprocess.face_detection import face_model_file\n"
            "for n in ['shape_predictor_68_face_landmarks.dat', 'mmod_human_face_detector.dat']:\n"
            "    assert face_model_file(n).stat().st_size > 100000, n\n"
            "assert 'face_recognition_models' not in sys.modules\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    with pytest.raises(Exception, match="not found"):
        face_model_file("no_such_model.dat")


def test_detector_list_parsing():
    assert parse_detector_list("HOG, center") == ("hog", "center")
    for bad in ["", "hog,hog", "retina"]:
        with pytest.raises(ValueError):
            parse_detector_list(bad)


def test_face_selection_rules():
    big_corner = Face((0, 0, 60, 60), 1.0)
    middle = Face((70, 70, 120, 120), 1.0)
    assert select_face([middle, big_corner], (200, 200), "largest") is big_corner
    assert select_face([middle, big_corner], (200, 200), "center") is middle


@pytest.fixture(scope="module")
def lfw_similarity_crops(tmp_path_factory):
    from utils.preprocess.datasets import copy_sample

    if not (SHARED_DATA_DIR / "lfw").is_dir():
        pytest.skip(f"real face data not found at {SHARED_DATA_DIR}")

    def make(folder: Path) -> Path:
        copy_sample(SHARED_DATA_DIR / "lfw", folder / "photos", LFW_SAMPLE)
        settings = PreprocessSettings(align=AlignSettings("similarity", 112))
        run_preprocess(folder / "photos", folder / "crops", settings, workers=2, progress=False)
        return folder / "crops"

    crops = made_once(tmp_path_factory, "lfw-similarity", make)
    return crops, read_manifest(crops / "manifest.csv")


@requires_shared_data
def test_a_real_detector_finds_the_face_in_99_percent_of_lfw(lfw_similarity_crops):
    _, rows = lfw_similarity_crops
    assert len(rows) == LFW_SAMPLE
    found = sum(r["status"] == "ok" for r in rows.values())
    assert found >= 0.99 * LFW_SAMPLE, f"{found}/{LFW_SAMPLE}"
    assert not [r for r in rows.values() if r["status"] == "error"]


@requires_shared_data
def test_similarity_crops_put_the_eyes_on_the_template(lfw_similarity_crops):
    # Detect the eyes again in the aligned crops, independently of the recorded landmarks.
    from utils.preprocess.face_detection import MTCNNDetector

    crops_dir, rows = lfw_similarity_crops
    outputs = [r["output"] for r in rows.values() if r["status"] == "ok"][:200]
    detector = MTCNNDetector()
    errors = []
    for i in range(0, len(outputs), 16):
        crops = [load_rgb(crops_dir / o) for o in outputs[i:i + 16]]
        for crop, faces in zip(crops, detector.detect_batch(crops)):
            assert crop.shape == (112, 112, 3)
            if faces:
                face = max(faces, key=lambda f: f.area)
                errors.append(np.linalg.norm(face.landmarks[:2] - template_landmarks(112)[:2], axis=1))
    errors = np.concatenate(errors)
    assert len(errors) >= 0.95 * 2 * len(outputs)
    assert np.median(errors) < 2.0 and np.percentile(errors, 95) < 4.0, (np.median(errors), np.percentile(errors, 95))


@requires_shared_data
def test_detectors_flag_sets_the_order(tmp_path):
    from utils.preprocess.datasets import copy_sample

    copy_sample(SHARED_DATA_DIR / "lfw", tmp_path / "photos", 24)
    used = {}
    for order in ["hog,mtcnn,center", "mtcnn,hog,center", "center"]:
        out = tmp_path / order.replace(",", "_")
        res = run_cli("preprocess_data.py", "--input-dir", tmp_path / "photos", "--output-dir", out,
                      "--detectors", order, "--workers", "1", "--no-progress", timeout=600)
        assert res.returncode == 0, res.stderr
        used[order] = [r["detector"] for r in read_manifest(out / "manifest.csv").values()]
    assert used["hog,mtcnn,center"].count("hog") >= 22
    assert used["mtcnn,hog,center"].count("mtcnn") >= 22
    assert used["center"] == ["center"] * 24


@requires_shared_data
@pytest.mark.parametrize("name", ["mtcnn", "hog", "cnn", "haar"])
def test_each_detector_finds_a_frontal_face_and_the_landmarks_sit_inside_it(name):
    from utils.preprocess.face_detection import FaceLandmarker, make_detector

    image = load_rgb(SHARED_DATA_DIR / "lfw" / "Aaron_Peirsol" / "Aaron_Peirsol_0001.jpg")
    faces = make_detector(name).detect_batch([image])[0]
    assert faces, name
    face = max(faces, key=lambda f: f.area)
    # LFW centres the face in its 250 px frame.
    cx, cy = (face.box[0] + face.box[2]) / 2, (face.box[1] + face.box[3]) / 2
    assert abs(cx - 125) < 20 and abs(cy - 125) < 25, face.box
    landmarks = face.landmarks if face.landmarks is not None else FaceLandmarker()(image, face.box)
    x0, y0, x1, y1 = face.box
    assert ((landmarks[:, 0] > x0) & (landmarks[:, 0] < x1) & (landmarks[:, 1] > y0) & (landmarks[:, 1] < y1)).all()
    assert landmarks[0, 0] < landmarks[1, 0] and landmarks[:2, 1].max() < landmarks[2, 1] < landmarks[3:, 1].min()
