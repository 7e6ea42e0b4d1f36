"""Distillation: the teacher's vectors (dlib's ResNet, a run, an ONNX file), their cache beside the
crops, the distillation term, and train_classifier.py --teacher end to end on real photos."""
import csv
import json

import keras
import numpy as np
import pytest

from models.losses import NoLabels, SoftmaxLoss, cosine_distance, with_distillation
from tests.conftest import TINY, made_once, pubfig_sample_crops, requires_shared_data, run_cli, run_main
from utils.verify.teacher import CACHE_DIR, DlibTeacher, TeacherError, open_teacher, teacher_embeddings


def test_cosine_distance_is_one_minus_cosine():
    a = np.array([[1.0, 0.0], [1.0, 0.0], [2.0, 0.0]], np.float32)
    b = np.array([[3.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], np.float32)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(cosine_distance(a, b)), [0.0, 1.0, 2.0], atol=1e-6)


def _tiny_student(head_of, teacher_dimension: int, weight: float = 1.0):
    images = keras.Input((6,))
    embedding = keras.layers.Dense(4, name="embedding")(images)
    head = with_distillation(head_of(embedding), embedding, teacher_dimension, weight)
    return keras.Model(images, head.outputs), head


def test_distillation_alone_pulls_the_student_to_the_teacher():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 6)).astype(np.float32)
    teacher = x[:, :4] @ rng.normal(size=(4, 4)).astype(np.float32)  # a linear teacher the student can match
    model, head = _tiny_student(lambda e: NoLabels(3).attach(e, None), 4)
    assert list(model.output) == ["teacher"] and head.monitor == "val_loss"
    assert not any("projection" in layer.name for layer in model.layers)  # same size: matched directly
    model.compile(keras.optimizers.Adam(0.05), loss=head.loss, loss_weights=head.loss_weights, metrics=head.metrics)
    before = model.evaluate(x, {"teacher": teacher}, verbose=0, return_dict=True)
    model.fit(x, {"teacher": teacher}, epochs=30, batch_size=64, verbose=0)
    after = model.evaluate(x, {"teacher": teacher}, verbose=0, return_dict=True)
    assert after["loss"] < 0.1 * before["loss"]
    assert after["cosine"] > 0.95


def test_distillation_beside_a_classifier_keeps_its_head_and_projects_other_sizes():
    model, head = _tiny_student(lambda e: SoftmaxLoss(3, classifier_init="glorot_uniform", label_smoothing=0.0)
                                .attach(e, None), teacher_dimension=8, weight=5.0)
    assert set(model.output) == {"scores", "teacher"}
    assert model.output["teacher"].shape[-1] == 8 and model.get_layer("teacher_projection")
    assert head.loss_weights == {"scores": 1.0, "teacher": 5.0}
    assert head.monitor == "val_scores_top1"  # the softmax head's "val_top1", now one output of two
    with pytest.raises(ValueError, match="must be > 0"):
        _tiny_student(lambda e: NoLabels(3).attach(e, None), 4, weight=0.0)


def test_a_missing_or_wrong_teacher_is_one_clear_error(tmp_path):
    with pytest.raises(TeacherError, match="no such run directory or .onnx file"):
        open_teacher(str(tmp_path / "nope"))
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(TeacherError, match="not an .onnx embedding model"):
        open_teacher(str(tmp_path / "weights.bin"))


@pytest.fixture(scope="module")
def small_crops(tmp_path_factory):
    """6 PubFig people x 8 photos, cropped by the real preprocessing stage (their photos kept:
    dlib reads them)."""
    return made_once(tmp_path_factory, "distil", lambda folder: pubfig_sample_crops(folder, 6, 8))


@requires_shared_data
def test_dlib_vectors_tell_people_apart_and_are_cached(small_crops, monkeypatch):
    teacher = DlibTeacher()
    vectors = teacher_embeddings(small_crops, teacher, workers=2, progress=False)
    assert len(vectors) == 48
    names = sorted(vectors)
    v = np.stack([vectors[n] for n in names])
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    v -= v.mean(axis=0)  # as training centres them
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    people = np.array([n.split("/")[0] for n in names])
    same = people[:, None] == people[None, :]
    cos = v @ v.T
    off_diagonal = ~np.eye(len(v), dtype=bool)
    assert cos[same & off_diagonal].mean() > cos[~same].mean() + 0.3

    # Cached: a second pass embeds nothing; another teacher (another checksum) gets its own folder.
    monkeypatch.setattr(DlibTeacher, "embed_photos", lambda *a: pytest.fail("recomputed a cached vector"))
    again = teacher_embeddings(small_crops, teacher, workers=1, progress=False)
    assert all(np.array_equal(again[n], vectors[n]) for n in names)
    assert [p.name for p in (small_crops / CACHE_DIR).iterdir()] == [teacher.identity]
    other = DlibTeacher()
    other.identity = "dlib-resnet-v1-other"
    with pytest.raises(pytest.fail.Exception, match="recomputed"):
        teacher_embeddings(small_crops, other, workers=1, progress=False)


@requires_shared_data
def test_a_run_directory_teaches_with_its_own_embedding(small_crops, tiny_run):
    teacher = open_teacher(str(tiny_run))
    info = json.loads((tiny_run / "model.json").read_text())
    assert teacher.dimension == info["embedding_size"] and teacher.identity.startswith("run-tiny-")
    vectors = teacher_embeddings(small_crops, teacher, progress=False)
    assert len(vectors) == 48 and next(iter(vectors.values())).shape == (teacher.dimension,)


@requires_shared_data
def test_train_with_a_teacher_end_to_end(small_crops, tmp_path):
    runs = tmp_path / "runs"
    res = run_cli("train_classifier.py", *TINY, "--img_morethan", "0", "--epochs", "3", "--datadir", small_crops,
                  "--runs-dir", runs, "--name", "student", "--teacher", "dlib", "--loss", "distill", timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    run = runs / "student"
    model = json.loads((run / "model.json").read_text())
    config = json.loads((run / "config.json").read_text())
    assert model["teacher"]["identity"].startswith("dlib-resnet-v1-")
    assert config["dataset"]["teacher"]["kind"] == "dlib" and config["recipe"]["teacher"] == "dlib"
    with open(run / "history.csv", newline="") as f:
        history = list(csv.DictReader(f))
    losses = [float(r["loss"]) for r in history]
    assert losses[-1] < losses[0]  # the student moves toward the teacher
    assert "val_cosine" in history[0]


@requires_shared_data
def test_teacher_mistakes_fail_before_any_run_directory(small_crops, tmp_path):
    runs = tmp_path / "runs"
    res = run_main("train_classifier.py", "--datadir", small_crops, "--runs-dir", runs, "--loss", "distill")
    assert res.returncode == 2 and "give --teacher" in res.stderr
    res = run_main("train_classifier.py", "--datadir", small_crops, "--runs-dir", runs, "--teacher", tmp_path / "x")
    assert res.returncode == 2 and "no such run directory or .onnx file" in res.stderr
    assert not runs.exists()
