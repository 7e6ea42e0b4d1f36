"""The preprocessing stage end to end: CLI, manifest, bad input (kills, shards: test_scale_out.py)."""
import csv
import json
import shutil

import pytest

from tests.bad_inputs import make_bad_input_zoo, snapshot_tree
from tests.conftest import requires_shared_data, run_cli
from utils.core.image_io import load_rgb
from utils.core.run_io import SHARED_DATA_DIR
from utils.preprocess.manifest import MANIFEST_NAME, ManifestJournal, read_manifest


def manifest_rows(out_dir):
    with open(out_dir / MANIFEST_NAME, encoding="utf-8", errors="surrogateescape", newline="") as f:
        return list(csv.DictReader(f))


def test_help_explains_every_flag():
    res = run_cli("preprocess_data.py", "--help")
    assert res.returncode == 0
    for flag in ["--input-dir", "--output-dir", "--align", "--crop-size", "--margin", "--part-margin",
                 "--affine-scale", "--detectors", "--select", "--hog-upsample", "--detect-max-side", "--max-pixels",
                 "--format", "--workers", "--batch-size", "--no-progress"]:
        assert flag in res.stdout, flag
    assert "margin,affine,parts" in " ".join(res.stdout.split())


def test_missing_or_empty_input_says_where_to_get_casia(tmp_path):
    res = run_cli("preprocess_data.py", "--input-dir", tmp_path / "nowhere", "--output-dir", tmp_path / "out")
    assert res.returncode == 2
    assert "not found" in res.stderr and "CASIA-WebFace" in res.stderr and "<identity>" in res.stderr
    (tmp_path / "empty" / "someone").mkdir(parents=True)
    res = run_cli("preprocess_data.py", "--input-dir", tmp_path / "empty", "--output-dir", tmp_path / "out")
    assert res.returncode == 2 and "no images found" in res.stderr


def test_unknown_detector_is_refused(tmp_path):
    res = run_cli("preprocess_data.py", "--input-dir", tmp_path, "--detectors", "mtcnn,retina")
    assert res.returncode == 2 and "retina" in res.stderr


def test_manifest_journal_ignores_a_line_cut_by_a_kill(tmp_path):
    journal = ManifestJournal(tmp_path / MANIFEST_NAME)
    row = {"path": "a/1.jpg", "status": "error", "error": "empty file (0 bytes)"}
    journal.append([row])
    journal.close()
    with open(tmp_path / MANIFEST_NAME, "a") as f:
        f.write("a/2.jpg,ok,mtcnn,1,3")  # what a kill -9 mid-write could leave
    assert list(read_manifest(tmp_path / MANIFEST_NAME)) == ["a/1.jpg"]
    journal = ManifestJournal(tmp_path / MANIFEST_NAME)
    journal.append([{"path": "a/3.jpg", "status": "error", "error": "x"}])
    journal.finalize(["a/1.jpg", "a/2.jpg", "a/3.jpg"])
    assert [r["path"] for r in manifest_rows(tmp_path)] == ["a/1.jpg", "a/3.jpg"]


@requires_shared_data
def test_bad_input_zoo_never_stops_the_run_nor_touches_the_input(tmp_path):
    face_path = next((SHARED_DATA_DIR / "lfw" / "Aaron_Peirsol").iterdir())
    photos = tmp_path / "photos"
    expect = make_bad_input_zoo(photos / "zoo_person", face_path.read_bytes())
    shutil.copy(face_path, photos / "zoo_person" / "good.jpg")
    (photos / "notes.txt").write_text("a file outside any identity folder")
    before = snapshot_tree(photos)

    res = run_cli("preprocess_data.py", "--input-dir", photos, "--output-dir", tmp_path / "out", "--workers", "2",
                  "--no-progress", timeout=600)
    assert res.returncode == 0, res.stderr
    assert snapshot_tree(photos) == before
    rows = {r["path"].split("/", 1)[1]: r for r in manifest_rows(tmp_path / "out")}
    assert set(rows) == set(expect) | {"good.jpg"}
    for name, (kind, reason) in expect.items():
        if kind == "error":
            assert rows[name]["status"] == "error" and reason in rows[name]["error"], (name, rows[name])
        else:
            assert rows[name]["status"] in ("ok", "fallback"), (name, rows[name])
            crop = load_rgb(tmp_path / "out" / rows[name]["output"])
            assert crop.shape == (182, 182, 3)
    assert rows["good.jpg"]["status"] == "ok"
    assert f"errors      {sum(k == 'error' for k, _ in expect.values())}" in res.stdout


@requires_shared_data
def test_celeba_wild_photos_counts_add_up_and_group_photos_keep_the_largest_face(celeba_sample, celeba_crops):
    out = celeba_crops
    rows = manifest_rows(out)
    n_inputs = sum(1 for _ in celeba_sample.glob("*/*"))
    counts = {s: sum(r["status"] == s for r in rows) for s in ("ok", "fallback", "error")}
    assert len(rows) == n_inputs == sum(counts.values())
    assert counts["ok"] >= 0.95 * n_inputs
    for r in rows:
        if r["status"] != "error":
            assert load_rgb(out / r["output"]).shape == (182, 182, 3)
    group = [r for r in rows if r["status"] == "ok" and int(r["faces"]) >= 2]
    assert group, "the sample should hold photos with several faces"
    # The cascade keeps the largest face: replay the group photos as one batch through the
    # cascade and through its first detector alone (same batch, so the same raw detections).
    from utils.preprocess.face_detection import FaceCascade

    photos = [load_rgb(celeba_sample / r["path"]) for r in group if r["detector"] == "mtcnn"][:12]
    cascade = FaceCascade()
    raw = cascade.detectors[0].detect_batch(photos)
    for det, faces in zip(cascade.detect(photos), raw):
        assert det.n_faces == len(faces) >= 2
        assert det.face.box == max(faces, key=lambda f: f.area).box
    record = json.loads((out / "preprocess.json").read_text())
    assert record["status"] == "complete" and record["summary"]["counts"] == counts
    assert record["settings"]["align"] == {"mode": "margin", "crop_size": 182, "margin": 0.5, "geometry": "seed"}


@requires_shared_data
def test_rerun_with_other_settings_is_refused_naming_both(celeba_sample, tmp_path):
    small = tmp_path / "small"
    shutil.copytree(sorted(celeba_sample.iterdir())[0], small / "one")
    out = tmp_path / "out"
    assert run_cli("preprocess_data.py", "--input-dir", small, "--output-dir", out, "--detectors", "center",
                   "--no-progress").returncode == 0
    res = run_cli("preprocess_data.py", "--input-dir", small, "--output-dir", out, "--detectors", "center",
                  "--align", "none", "--no-progress")
    assert res.returncode == 2
    assert "'mode': 'margin'" in res.stderr and "'mode': 'none'" in res.stderr


@requires_shared_data
def test_seed_crop_sets_in_one_run_equal_single_mode_runs_and_resume_per_folder(celeba_sample, tmp_path):
    """margin,affine,parts in one run == each mode alone, to the bit; validation re-aligning for
    a part-1 model reproduces part 1. dlib HOG keeps it fast (no TensorFlow in the workers);
    with MTCNN the sets are made from the same chunks, hence the same batches, as single runs
    (test_scale_out checks chunk-identical MTCNN runs are equal)."""
    from dataclasses import replace

    from tests.test_scale_out import assert_same_crops
    from utils.preprocess.driver import run_preprocess, run_preprocess_sets
    from utils.preprocess.face_alignment import AlignSettings, seed_part_settings
    from utils.preprocess.settings import PreprocessSettings, default_output_dir
    from utils.verify.aligned_cache import align_like_training

    photos = tmp_path / "photos"
    for person in sorted(celeba_sample.iterdir())[:3]:  # 3 identities, up to 12 wild photos
        shutil.copytree(person, photos / person.name)
    base = PreprocessSettings(detectors=("hog", "center"), batch_size=4)
    aligns = [AlignSettings("margin", 182, 0.5), AlignSettings("affine", 110), *seed_part_settings()]
    targets = [(default_output_dir(photos, a, tmp_path / "multi"), replace(base, align=a)) for a in aligns]
    summaries = run_preprocess_sets(photos, targets, workers=1, progress=False)
    n = len(list(photos.glob("*/*")))
    assert [s.processed for s in summaries] == [n] * 5
    assert [d.name for d, _ in targets] == ["photos-margin-182-m0.5", "photos-affine-110-s0.78",
                                            "photos-part0-50-m1.2", "photos-part1-50-m1.2", "photos-part2-50-m1.2"]
    for (folder, settings), size in zip(targets, [182, 110, 50, 50, 50]):
        record = json.loads((folder / "preprocess.json").read_text())
        assert record["status"] == "complete" and record["settings"] == settings.to_dict()
        assert {load_rgb(folder / r["output"]).shape for r in manifest_rows(folder) if r["output"]} == {(size, size, 3)}

    single = tmp_path / "single-affine"
    run_preprocess(photos, single, targets[1][1], workers=1, progress=False)
    assert_same_crops(single, targets[1][0])
    part1 = json.loads((targets[3][0] / "preprocess.json").read_text())["settings"]
    aligned, _ = align_like_training(photos, {"preprocess_settings": part1}, progress=False, cache_root=tmp_path)
    assert_same_crops(aligned, targets[3][0])

    # Nothing is redone when every folder is complete; a crop lost in one folder redoes its
    # chunk in all of them, with the same result.
    assert [s.processed for s in run_preprocess_sets(photos, targets, progress=False)] == [0] * 5
    lost = next(r["output"] for r in manifest_rows(targets[4][0]) if r["output"])
    (targets[4][0] / lost).unlink()
    redone = run_preprocess_sets(photos, targets, workers=1, progress=False)
    assert 0 < redone[0].processed == redone[4].processed <= 4
    assert_same_crops(single, targets[1][0])
    assert (targets[4][0] / lost).is_file()


def test_crops_of_the_old_square_margin_geometry_are_not_resumed_as_seed_crops(tmp_path):
    from utils.preprocess.driver import run_preprocess
    from utils.preprocess.settings import PreprocessError, PreprocessSettings

    (tmp_path / "photos" / "someone").mkdir(parents=True)
    (tmp_path / "photos" / "someone" / "a.jpg").write_bytes(b"not decoded: refused before any work")
    out = tmp_path / "old-crops"
    out.mkdir()
    old = PreprocessSettings().to_dict()
    old["align"] = {"mode": "margin", "image_size": 182, "margin": 0.5}  # written before the seed geometry
    (out / "preprocess.json").write_text(json.dumps({"settings": old, "status": "complete"}))
    with pytest.raises(PreprocessError, match="'geometry': 'seed'"):
        run_preprocess(tmp_path / "photos", out, PreprocessSettings(), progress=False)


def test_image_size_is_still_accepted_as_the_old_name_of_crop_size():
    import preprocess_data

    parser = preprocess_data.build_parser()
    for flag in ("--crop-size", "--image-size"):
        args = parser.parse_args(["--align", "similarity,parts", flag, "112,48"])
        assert args.crop_size == "112,48", flag
        aligns = preprocess_data.align_sets(args.align, args.crop_size, args.margin, args.part_margin,
                                            args.affine_scale)
        assert [a.crop_size for a in aligns] == [112, 48, 48, 48], flag


def _plain_photos(root, identities=("someone",), per_identity=3):
    """Faceless photos: the 'center' fallback crops them without loading any detector model."""
    from PIL import Image

    for i, identity in enumerate(identities):
        (root / identity).mkdir(parents=True)
        for k in range(per_identity):
            Image.new("RGB", (120, 150), (40 * k, 20 * i, 120)).save(root / identity / f"{k}.jpg")
    return root


def _with_old_crop_key(settings: dict) -> dict:
    """settings as preprocess.json recorded them before align.image_size became align.crop_size."""
    align = {("image_size" if k == "crop_size" else k): v for k, v in settings["align"].items()}
    return {**settings, "align": align}


def test_crop_folders_recorded_with_the_old_image_size_key_load_and_resume(tmp_path):
    from utils.preprocess.driver import run_preprocess
    from utils.preprocess.settings import PreprocessSettings, normalised_settings

    settings = PreprocessSettings(detectors=("center",))
    old = _with_old_crop_key(settings.to_dict())
    assert old["align"] == {"mode": "margin", "image_size": 182, "margin": 0.5, "geometry": "seed"}
    assert PreprocessSettings.from_dict(old) == settings
    assert normalised_settings(old) == settings.to_dict()
    assert normalised_settings({**old, "align": {**old["align"], "image_size": 160}}) != settings.to_dict()

    photos = _plain_photos(tmp_path / "photos")
    out = tmp_path / "crops"
    first = run_preprocess(photos, out, settings, progress=False)
    record = json.loads((out / "preprocess.json").read_text())
    (out / "preprocess.json").write_text(json.dumps({**record, "settings": old}))
    again = run_preprocess(photos, out, settings, progress=False)  # same settings, older spelling: resumed
    assert (first.processed, again.processed, again.skipped) == (3, 0, 3)
    assert json.loads((out / "preprocess.json").read_text())["settings"] == settings.to_dict()


def test_shards_recorded_before_the_crop_size_rename_merge_with_newer_ones(tmp_path):
    from utils.preprocess.driver import run_preprocess
    from utils.preprocess.settings import PreprocessSettings
    from utils.preprocess.shards import Shard, merge_shards, settings_name

    photos = _plain_photos(tmp_path / "photos", identities=[f"person{i}" for i in range(6)], per_identity=1)
    out = tmp_path / "crops"
    settings = PreprocessSettings(detectors=("center",))
    for k in (1, 2):
        run_preprocess(photos, out, settings, progress=False, shard=Shard(k, 2))
    path = out / settings_name(Shard(1, 2))
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "settings": _with_old_crop_key(record["settings"])}))
    summary = merge_shards(photos, out)
    assert (summary.shards, summary.images) == (2, 6)
    assert json.loads((out / "preprocess.json").read_text())["settings"] == settings.to_dict()
