"""Validation stage end to end on a tiny trained run and a 200-pair LFW subset."""
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import run_cli, run_main
from utils.core.run_io import PROJECT_ROOT, SHARED_DATA_DIR


@pytest.mark.parametrize("module", ["utils.verify.validation", "utils.verify.fusion_weights", "utils.verify.pair_files",
                                    "utils.verify.pair_metrics", "utils.verify.photo_inference"])
def test_validation_modules_import_without_the_training_stack(module):
    # A fresh interpreter, since this one may have imported training already.
    code = f"import sys, {module}; assert 'utils.training' not in sys.modules, sorted(sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]


def test_validation_writes_a_sane_report(tiny_run, lfw_subset, tmp_path, monkeypatch):
    out = tmp_path / "report"
    res = run_main("validate_on_lfw.py", "--model", tiny_run, "--lfw-dir", lfw_subset, "--pairs",
                   lfw_subset / "pairs.txt", "--cache-dir", tmp_path / "cache", "--out", out, "--no-progress")
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    m = report["metrics"]
    assert report["pairs_count"] == 200 and report["flip"] is True
    assert len(m["fold_accuracies"]) == 10
    assert 0.3 <= m["accuracy_mean"] <= 1.0 and 0.0 <= m["auc"] <= 1.0 and 0.0 <= m["eer"] <= 1.0
    assert report["alignment"] == json.loads((tiny_run / "model.json").read_text())["alignment"]
    assert (out / "roc.png").stat().st_size > 1000
    assert "accuracy" in res.stdout
    # How many cores' worth the embedding had: a slow run says whether it shared them.
    timings = report["timings"]
    assert timings["cpus_allowed"] == len(os.sched_getaffinity(0)) and timings["embed_s"] > 0
    assert 0 < timings["embed_cpu_per_wall"] <= timings["cpus_allowed"] + 0.5, timings
    assert re.search(r"embed_s [\d.]+ s, embed_cpu_per_wall [\d.]+, cpus_allowed \d+(,|\n)", res.stdout), res.stdout
    # The aligned set is cached by settings: a second run aligns nothing.
    # (and 1:N identification over the same aligned images, added to the report, each image embedded once)
    import utils.verify.embeddings

    embedded, embed_files = [], utils.verify.embeddings.embed_files

    def counted(model, paths, *args, **kwargs):
        if kwargs.get("memo", args[4] if len(args) > 4 else None) is None:  # a pass that runs the model
            embedded.extend(paths)
        return embed_files(model, paths, *args, **kwargs)

    monkeypatch.setattr(utils.verify.embeddings, "embed_files", counted)
    for user in ("utils.verify.validation", "utils.verify.aligned_cache", "utils.training.holdout"):
        monkeypatch.setattr(f"{user}.embed_files", counted)
    again = run_main("validate_on_lfw.py", "--model", tiny_run, "--lfw-dir", lfw_subset, "--pairs",
                     lfw_subset / "pairs.txt", "--cache-dir", tmp_path / "cache", "--out", out, "--no-progress",
                     "--identification")
    assert again.returncode == 0, again.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["metrics"]["accuracy_mean"] == m["accuracy_mean"]
    assert len(list((tmp_path / "cache").iterdir())) == 1
    counts = [len(list(person.glob("*.jpg"))) for person in lfw_subset.iterdir() if person.is_dir()]
    ident = report["identification"]["lfw"]
    assert ident["gallery"] == sum(c >= 2 for c in counts) and ident["non_mated_probes"] == counts.count(1)
    assert ident["gallery"] + ident["mated_probes"] + ident["non_mated_probes"] == sum(counts) == ident["images"]
    # The run's own people: each enrolled once, its holdout crops as probes (TINY holds out 20 %).
    holdout = report["identification"]["holdout"]
    config = json.loads((tiny_run / "config.json").read_text())
    assert holdout["gallery"] == config["dataset"]["identities"]
    assert holdout["mated_probes"] == config["dataset"]["holdout_images"]
    assert holdout["non_mated_probes"] == ident["non_mated_probes"]
    for result in (ident, holdout):
        assert 0 <= result["rank_1"] <= result["rank_5"] <= 1
        for row in result["open_set"]:
            assert row["fpir_achieved"] <= row["fpir"] and 0 <= row["dir"] <= result["rank_1"]
    assert "1:N identification on LFW" in again.stdout and "on the run's holdout" in again.stdout
    assert len(embedded) == len(set(embedded)) == sum(counts) + holdout["gallery"] + holdout["mated_probes"]


def test_an_aligned_set_made_differently_is_refused(tiny_run, lfw_subset, tmp_path):
    other = tmp_path / "other"
    assert run_cli("preprocess_data.py", "--input-dir", lfw_subset, "--output-dir", other, "--detectors", "center",
                   "--align", "none", "--no-progress").returncode == 0
    res = run_main("validate_on_lfw.py", "--model", tiny_run, "--lfw-dir", lfw_subset, "--pairs",
                   lfw_subset / "pairs.txt", "--aligned-dir", other, "--out", tmp_path)
    assert res.returncode == 2
    assert "'mode': 'none'" in res.stderr and "'mode': 'margin'" in res.stderr
    assert "'detectors': ['center']" in res.stderr and "'detectors': ['hog', 'center']" in res.stderr


def test_verify_faces_compares_two_photos_and_embeds_a_tree(tiny_run, lfw_subset, tmp_path):
    a, b = sorted(lfw_subset.glob("*/*.jpg"))[:2]
    res = run_main("verify_faces.py", "--model", tiny_run, a, b)
    assert res.returncode == 2 and "not been validated" in res.stderr
    res = run_main("verify_faces.py", "--model", tiny_run, a, a, "--threshold", "0.5")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "similarity 1.0000" in res.stdout and "same person" in res.stdout
    out = tmp_path / "emb.npz"
    res = run_main("verify_faces.py", "--model", tiny_run, "--embed", lfw_subset, "--out", out,
                   "--cache-dir", tmp_path / "cache")
    assert res.returncode == 0, res.stderr[-2000:]
    data = np.load(out)
    assert len(data["paths"]) == len(data["embeddings"]) == len(list(lfw_subset.glob("*/*.jpg")))
    np.testing.assert_allclose(np.linalg.norm(data["embeddings"], axis=1), 1.0, atol=1e-5)


def test_verify_faces_names_photos_from_a_gallery_or_says_unknown(tiny_run, lfw_subset, tmp_path):
    """Four people enrolled with one photo each; their photos come back as themselves, a stranger
    as unknown at a threshold no one reaches, and the threshold's source is said."""
    people = sorted(p for p in lfw_subset.iterdir() if p.is_dir() and len(list(p.glob("*.jpg"))) >= 2)[:4]
    gallery = tmp_path / "gallery"
    for person in people:
        (gallery / person.name).mkdir(parents=True)
        photo = sorted(person.glob("*.jpg"))[0]
        (gallery / person.name / photo.name).write_bytes(photo.read_bytes())
    enrolled = [sorted(p.glob("*.jpg"))[0] for p in people]
    res = run_main("verify_faces.py", "--model", tiny_run, "--gallery", gallery, *enrolled, "--threshold", "0.99",
                   "--cache-dir", tmp_path / "cache")
    assert res.returncode == 0, res.stderr[-2000:]
    lines = [line for line in res.stdout.splitlines() if line.startswith(str(lfw_subset))]
    assert [line.split(": ")[1].split(" (")[0] for line in lines] == [p.name for p in people]
    assert "threshold 0.9900 (--threshold)" in res.stdout
    res = run_main("verify_faces.py", "--model", tiny_run, "--gallery", gallery, enrolled[0], "--threshold", "1.01",
                   "--cache-dir", tmp_path / "cache")
    assert res.returncode == 0 and ": unknown (best score 1.0000)" in res.stdout, res.stdout
    # Without --threshold and without a validation, the error says what to run.
    res = run_main("verify_faces.py", "--model", tiny_run, "--gallery", gallery, enrolled[0],
                   "--cache-dir", tmp_path / "cache")
    assert res.returncode == 2 and "not been validated" in res.stderr, res.stderr
    # After validate_on_lfw.py --identification, its open-set threshold at FPIR 1 % decides.
    run = tmp_path / "validated"
    shutil.copytree(tiny_run, run)
    (run / "report.json").write_text(json.dumps({
        "model": str(run), "metric": "cosine", "metrics": {"threshold": -1.0},
        "identification": {"lfw": {"open_set": [{"fpir": 0.01, "threshold": 1.01}, {"fpir": 0.1, "threshold": -1}]}}}))
    res = run_main("verify_faces.py", "--model", run, "--gallery", gallery, enrolled[1],
                   "--cache-dir", tmp_path / "cache")
    assert res.returncode == 0 and "(1:N at FPIR 1 % on LFW" in res.stdout and ": unknown" in res.stdout, res.stdout
    res = run_main("verify_faces.py", "--model", tiny_run, "--gallery", gallery)
    assert res.returncode == 2 and "one or more photos" in res.stderr


def _tiny_bin(lfw_subset, path, skip=0):
    """An insightface-style .bin of 20 pairs: 40 LFW photos resized to 112 px, same / different alternating."""
    import io
    import pickle

    from PIL import Image

    encoded = []
    for photo in sorted(lfw_subset.glob("*/*.jpg"))[skip:skip + 40]:
        buf = io.BytesIO()
        Image.open(photo).convert("RGB").resize((112, 112)).save(buf, "PNG")
        encoded.append(buf.getvalue())
    issame = [i % 2 == 0 for i in range(20)]  # every fold of 2 pairs holds one of each
    with open(path, "wb") as f:
        pickle.dump((encoded, issame), f, protocol=4)
    return path


def test_lfw_verification_during_training(pubfig_few, lfw_subset, tmp_path):
    """--lfw-dir's pairs and each --val-targets set, every epoch: a history.csv column each."""
    from tests.conftest import TINY

    extra = _tiny_bin(lfw_subset, tmp_path / "cfp_fp.bin")
    res = run_main("train_classifier.py", *TINY, "--epochs", "1", "--datadir", pubfig_few, "--runs-dir", tmp_path,
                   "--name", "watched", "--lfw-dir", lfw_subset, "--lfw-cache-dir", tmp_path / "cache",
                   "--val-targets", f"{extra},{_tiny_bin(lfw_subset, tmp_path / 'lfw.bin', skip=40)}")
    assert res.returncode == 0, res.stderr[-3000:]
    run = tmp_path / "watched"
    header, row = (run / "history.csv").read_text().splitlines()[:2]
    logged = dict(zip(header.split(","), row.split(",")))
    for column in ("lfw_accuracy", "cfp_fp_accuracy", "lfw_2_accuracy"):  # lfw.bin: a name of its own
        assert 0.3 <= float(logged[column]) <= 1.0, column
    assert "lfw accuracy" in res.stdout and "cfp_fp accuracy" in res.stdout
    assert (run / "checkpoints" / "best_lfw.keras").exists()
    bad = run_main("train_classifier.py", *TINY, "--epochs", "1", "--datadir", pubfig_few, "--runs-dir", tmp_path,
                  "--name", "badpairs", "--lfw-dir", lfw_subset, "--lfw-pairs", tmp_path / "nope.txt",
                  "--lfw-cache-dir", tmp_path / "cache")
    assert bad.returncode == 2 and "cannot verify on" in bad.stderr and "nope.txt" in bad.stderr


def test_insightface_bin_pairs_are_scored_without_realignment(tiny_run, lfw_subset, tmp_path):
    """A .bin alone, then several sets in one call: a report per set and a row each."""
    out = tmp_path / "bin_report"
    res = run_main("validate_on_lfw.py", "--model", tiny_run, "--pairs", _tiny_bin(lfw_subset, tmp_path / "tiny.bin"),
                   "--out", out, "--no-progress")
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["pairs_count"] == 20 and report["images"] == 40 and "align_s" not in report["timings"]

    out = tmp_path / "several"
    res = run_main("validate_on_lfw.py", "--model", tiny_run, "--pairs", lfw_subset / "pairs.txt", "--pairs",
                   tmp_path / "tiny.bin", "--pairs", _tiny_bin(lfw_subset, tmp_path / "agedb_30.bin", skip=40),
                   "--lfw-dir", lfw_subset, "--cache-dir", tmp_path / "cache", "--out", out, "--no-progress")
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((out / "report.json").read_text())
    assert [t["name"] for t in summary["targets"]] == ["lfw", "tiny", "agedb_30"]
    for row in summary["targets"]:
        own = json.loads((out / row["name"] / "report.json").read_text())
        assert row["accuracy_mean"] == own["metrics"]["accuracy_mean"] and row["pairs_count"] == own["pairs_count"]
        assert (out / row["name"] / "roc.png").exists()
    assert summary["targets"][1]["accuracy_mean"] == report["metrics"]["accuracy_mean"]  # the same set, same figure
    table = res.stdout.split("\ntarget ", 1)[1].splitlines()  # after the start-up line: the header, a row per set
    assert [line.split()[0] for line in table[1:4]] == ["lfw", "tiny", "agedb_30"]
    # verify_faces.py decides at LFW's threshold from such a report.
    photo = sorted(lfw_subset.glob("*/*.jpg"))[0]
    res = run_main("verify_faces.py", "--model", tiny_run, photo, photo, "--report", out)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"(threshold {summary['targets'][0]['threshold']:.4f})" in res.stdout


def test_cosine_fusions_agree_and_one_member_is_itself():
    from utils.verify.embeddings import l2_normalize
    from utils.verify.fusion import fused_scores
    from utils.verify.validation import _Member

    rng = np.random.default_rng(0)

    def member(dim):
        a, b = (l2_normalize(rng.normal(size=(50, dim))) for _ in range(2))
        return _Member(None, {}, a, b, np.zeros(50, bool), np.zeros(50, int), 100, None, None, {})

    members = [member(8), member(16), member(4)]
    concat, mean = (fused_scores(members, "cosine", f) for f in ("concat", "mean-score"))
    np.testing.assert_allclose(concat, mean, atol=1e-12)  # cos of concatenated unit vectors = mean of cosines
    np.testing.assert_allclose(mean, np.mean([np.sum(m.emb_a * m.emb_b, 1) for m in members], 0), atol=1e-12)
    assert not np.allclose(fused_scores(members, "euclidean", "concat"), fused_scores(members, "euclidean",
                                                                                       "mean-score"))
    for fusion in ("concat", "mean-score"):
        np.testing.assert_allclose(fused_scores(members[:1], "cosine", fusion), np.sum(
            members[0].emb_a * members[0].emb_b, 1), atol=1e-12)


def test_an_ensemble_scores_members_aligned_their_own_way(tiny_run, lfw_subset, tmp_path):
    """Two runs, one trained on 182 px margin crops and one (here a re-initialised network) on 160 px
    ones: each aligns LFW its own way, the report lists both with their own accuracy, and the
    members' accuracies are what each scores alone."""
    import keras

    from models import build_backbone
    from utils.core.run_io import read_json, write_json

    other = tmp_path / "other"
    shutil.copytree(tiny_run, other)
    info = read_json(other / "model.json")
    info["preprocess_settings"]["align"]["crop_size"] = 160
    info["alignment"] = info["preprocess_settings"]["align"]
    write_json(other / "model.json", info)
    keras.utils.set_random_seed(1)
    build_backbone("resnet18", info["input_size"], weight_decay=0.0).save(other / "embedding.keras")
    common = ["--lfw-dir", lfw_subset, "--pairs", lfw_subset / "pairs.txt", "--cache-dir", tmp_path / "cache",
              "--workers", "2", "--no-progress"]

    def models_of(*runs):
        return [arg for run in runs for arg in ("--model", run)]

    res = run_main("validate_on_lfw.py", "--model", tiny_run, "--model", other, *common)
    assert res.returncode == 2 and "needs --out" in res.stderr
    reports = {}
    # (--fusion mean-score gives the same scores with cosine: test_cosine_fusions_agree_and_one_member_is_itself.)
    for name, args in (("ensemble", ["--model", tiny_run, "--model", other]), ("alone", ["--model", other])):
        res = run_main("validate_on_lfw.py", *args, *common, "--out", tmp_path / name)
        assert res.returncode == 0, res.stderr[-3000:]
        reports[name] = read_json(tmp_path / name / "report.json")
    ensemble = reports["ensemble"]
    assert ensemble["model"] == [str(tiny_run), str(other)] and ensemble["fusion"] == "concat"
    assert set(ensemble["by_fusion"]) == {"concat", "mean-score"}  # cosine: the same figures
    assert ensemble["by_fusion"]["concat"]["accuracy_mean"] == ensemble["metrics"]["accuracy_mean"] == \
        pytest.approx(ensemble["by_fusion"]["mean-score"]["accuracy_mean"], abs=1e-12)
    assert [m["alignment"]["crop_size"] for m in ensemble["members"]] == [182, 160]
    assert len(list((tmp_path / "cache").iterdir())) == 2  # LFW aligned once per way of aligning
    member, alone = ensemble["members"][1]["metrics"], reports["alone"]["metrics"]
    assert {k: pytest.approx(member[k], abs=1e-9) for k in ("accuracy_mean", "auc", "eer", "val_at_far")} == \
        {k: alone[k] for k in ("accuracy_mean", "auc", "eer", "val_at_far")}
    with open(tmp_path / "ensemble" / "scores.csv") as f:
        assert f.readline().strip() == "image_a,image_b,same,fold,score"

    # Weights: a member weighted 0 drops out; equal weights stay reported beside the chosen ones.
    res = run_main("validate_on_lfw.py", *models_of(tiny_run, other), *common, "--out", tmp_path / "w",
                   "--fusion-weights", "0,3")
    assert res.returncode == 0, res.stderr[-3000:]
    weighted = read_json(tmp_path / "w" / "report.json")
    assert weighted["fusion_weights"] == {"weights": [0.0, 3.0]}
    assert {k: pytest.approx(weighted["metrics"][k], abs=1e-9) for k in ("accuracy_mean", "auc", "eer")} == \
        {k: alone[k] for k in ("accuracy_mean", "auc", "eer")}
    assert weighted["by_fusion"]["concat, equal weights"] == ensemble["by_fusion"]["concat"]
    res = run_main("validate_on_lfw.py", *models_of(tiny_run, other), *common, "--out", tmp_path / "w",
                   "--fusion-weights", "1,1,1")
    assert res.returncode == 2 and "one per --model (2)" in res.stderr, res.stderr
    # Chosen on other people (a few CelebA identities, in neither LFW nor the members' training data).
    if (SHARED_DATA_DIR / "celeba-aligned-2760").is_dir():
        from utils.preprocess.datasets import copy_sample

        copy_sample(SHARED_DATA_DIR / "celeba-aligned-2760", tmp_path / "tune", count=36, per_identity=3,
                    identities=12)
        res = run_main("validate_on_lfw.py", *models_of(tiny_run, other), *common, "--out", tmp_path / "t",
                       "--tune-weights-on", tmp_path / "tune")
        assert res.returncode == 0, res.stderr[-3000:]
        tuned = read_json(tmp_path / "t" / "report.json")["fusion_weights"]
        assert tuned["chosen_on"] == str(tmp_path / "tune") and sum(tuned["weights"]) == pytest.approx(1.0)
        photos = [len(list(person.iterdir())) for person in (tmp_path / "tune").iterdir()]
        same_pairs = sum(n * (n - 1) // 2 for n in photos)  # the centre-box fallback crops every photo
        assert tuned["images"] == sum(photos) and (tuned["same_pairs"], tuned["pairs"]) == (same_pairs, 2 * same_pairs)
        assert tuned["pair_accuracy"] >= max(tuned["member_pair_accuracy"] + [tuned["equal_weights_pair_accuracy"]])
        assert "weights chosen on" in res.stdout and "weight 0." in res.stdout

    # verify_faces.py: the ensemble decides at its own report's threshold, and only at that one.
    a, b = sorted(lfw_subset.glob("*/*.jpg"))[:2]
    models = ["--model", tiny_run, "--model", other]
    res = run_main("verify_faces.py", *models, a, b)
    assert res.returncode == 2 and "ensemble's threshold" in res.stderr, res.stderr
    res = run_main("verify_faces.py", *models, a, b, "--report", tmp_path / "alone")
    assert res.returncode == 2 and "not these models" in res.stderr, res.stderr
    res = run_main("verify_faces.py", *models, a, a, "--report", tmp_path / "ensemble")
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"(threshold {ensemble['metrics']['threshold']:.4f}): same person" in res.stdout
    similarity = float(re.search(r"^similarity (\S+)", res.stdout, re.MULTILINE).group(1))
    assert similarity == pytest.approx(1.0, abs=1e-4)  # a photo against itself, printed to 4 places
    # ... weighted as that report weighted the members: weights 0,3 leave the second model's similarity alone.
    def printed_similarity(*args):
        res = run_main("verify_faces.py", *args, a, b, "--threshold", "0.5")
        assert res.returncode == 0, res.stderr[-2000:]
        return float(re.search(r"^similarity (\S+)", res.stdout, re.MULTILINE).group(1))

    alone_similarity = printed_similarity("--model", other)
    assert printed_similarity(*models, "--report", tmp_path / "w") == alone_similarity
    assert printed_similarity(*models, "--report", tmp_path / "ensemble") != alone_similarity
