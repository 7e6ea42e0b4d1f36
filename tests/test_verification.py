"""Verification library: pair lists, the restricted .bin unpickler, metrics with known answers."""
import io
import os
import pickle
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from utils.core.run_io import SHARED_DATA_DIR
from utils.verify.pair_files import (
    MissingImagesError,
    PairsFormatError,
    contiguous_folds,
    read_bin_pairs,
    read_csv_pairs,
    read_lfw_pairs,
)
from utils.verify.pair_metrics import (
    best_accuracy_threshold,
    cosine_similarity,
    euclidean_distance,
    evaluate_pairs,
    plot_roc,
    threshold_at_far,
)

LFW_DIR = SHARED_DATA_DIR / "lfw"


def _identical_folds(impostor: np.ndarray, genuine: np.ndarray, n_folds: int = 10):
    """Every fold holds the same scores, so a threshold that is best on nine folds is best on
    the tenth too, and per-fold answers can be worked out on one fold by hand."""
    scores = np.tile(np.concatenate([genuine, impostor]), n_folds).astype(float)
    same = np.tile(np.r_[np.ones(len(genuine), bool), np.zeros(len(impostor), bool)], n_folds)
    fold = np.repeat(np.arange(n_folds), len(genuine) + len(impostor))
    return scores, same, fold


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------

def test_separable_scores_are_perfect():
    rng = np.random.default_rng(0)
    fold = np.repeat(np.arange(10), 600)
    same = np.tile(np.r_[np.ones(300, bool), np.zeros(300, bool)], 10)
    scores = np.where(same, rng.uniform(0.6, 1.0, 6000), rng.uniform(0.0, 0.4, 6000))
    m = evaluate_pairs(scores, same, fold)
    np.testing.assert_array_equal(m["fold_accuracies"], 1.0)
    assert m["accuracy_mean"] == 1.0 and m["accuracy_std"] == 0.0
    assert m["auc"] == 1.0 and m["eer"] == 0.0
    train = fold != 0  # the one zero-error gap on the training folds, at its middle
    assert m["fold_thresholds"][0] == (scores[train & ~same].max() + scores[train & same].min()) / 2
    assert m["threshold"] == pytest.approx(m["fold_thresholds"].mean())


@pytest.mark.parametrize("errors", [1, 7, 40])
def test_overlap_gives_the_exact_best_accuracy(errors):
    # Mismatched at 0..299, matched at 299.5-errors+k: below 300 the classes alternate
    # S D S ... D S (errors+1 matched, errors mismatched), so no threshold misclassifies
    # fewer than `errors` pairs of a fold.
    scores, same, fold = _identical_folds(np.arange(300.0), np.arange(300.0) + 299.5 - errors)
    m = evaluate_pairs(scores, same, fold)
    np.testing.assert_array_equal(m["fold_accuracies"], (600 - errors) / 600)
    assert m["accuracy_mean"] == pytest.approx((600 - errors) / 600)
    assert m["accuracy_std"] == pytest.approx(0.0)


def test_tied_thresholds_resolve_to_the_median_candidate():
    # Scores 0..5 alternate mismatched/matched: 0.5, 2.5 and 4.5 each misclassify two pairs.
    assert best_accuracy_threshold(np.arange(6.0), [0, 1, 0, 1, 0, 1]) == 2.5
    # Two tied candidates (0.5 and 2.5): the lower middle one.
    assert best_accuracy_threshold(np.arange(4.0), [0, 1, 0, 1]) == 0.5
    # All pairs matched: accepting everything (-inf) is the only perfect threshold.
    assert best_accuracy_threshold([1.0, 2.0], [1, 1]) == -np.inf


def test_auc_matches_sklearn_on_random_scores_with_ties():
    rng = np.random.default_rng(1)
    same = rng.random(3000) < 0.5
    scores = np.round(rng.normal(size=3000) + same, 1)  # rounding makes many ties
    m = evaluate_pairs(scores, same, contiguous_folds(3000))
    assert m["auc"] == pytest.approx(roc_auc_score(same, scores), abs=1e-12)
    assert 0.65 < m["accuracy_mean"] < 0.72  # a one-sigma shift: about Phi(0.5) = 0.69


def test_eer_of_a_symmetric_overlap():
    # Mismatched 0..99, matched 50..149: at threshold 74.5, 25 of each are wrong.
    scores, same, fold = _identical_folds(np.arange(100.0), np.arange(50.0, 150.0))
    assert evaluate_pairs(scores, same, fold)["eer"] == pytest.approx(0.25)


@pytest.mark.parametrize("far_target, threshold, far, val", [
    (0.01, 297.0, 3 / 300, 293 / 300),  # FAR 3/300 is measured exactly at the 3rd highest impostor
    (0.005, 298.5, 1 / 300, 292 / 300),  # halfway between the 1/300 and 2/300 points
])
def test_val_at_far_on_a_computable_case(far_target, threshold, far, val):
    # Impostors 0..299 and genuines 290.5..589.5 in every fold.
    scores, same, fold = _identical_folds(np.arange(300.0), np.arange(300.0) + 290.5)
    m = evaluate_pairs(scores, same, fold, far_target=far_target)
    np.testing.assert_allclose(m["fold_val_thresholds"], threshold)
    assert m["far_achieved"] == pytest.approx(far)
    assert m["val_at_far"] == pytest.approx(val) and m["val_at_far_std"] == pytest.approx(0.0)


def test_far_target_below_what_training_can_measure_rejects_every_impostor():
    threshold = threshold_at_far(np.arange(100.0), 1e-6)
    assert threshold > 99.0 and threshold == np.nextafter(99.0, np.inf)


def test_evaluate_refuses_a_fold_with_one_class():
    same = np.r_[np.ones(50, bool), np.zeros(50, bool)]  # contiguous folds 0-4 only matched
    with pytest.raises(ValueError, match="fold 0 holds only matched"):
        evaluate_pairs(np.arange(100.0), same, contiguous_folds(100))


def test_row_wise_similarity_and_distance():
    a = np.array([[1.0, 0.0], [3.0, 4.0], [1.0, 1.0]])
    b = np.array([[0.0, 2.0], [3.0, 4.0], [-2.0, -2.0]])
    np.testing.assert_allclose(cosine_similarity(a, b), [0.0, 1.0, -1.0], atol=1e-12)
    np.testing.assert_allclose(euclidean_distance(a, b), [np.sqrt(5), 0.0, np.sqrt(18)])
    # An all-zero (dead ReLU) embedding scores 0 instead of stopping the validation.
    np.testing.assert_array_equal(cosine_similarity([[0.0, 0.0], [0.0, 0.0]], [[1.0, 0.0], [0.0, 0.0]]), [0.0, 0.0])


def test_plot_roc_writes_a_png(tmp_path):
    rng = np.random.default_rng(2)
    same = rng.random(600) < 0.5
    m = evaluate_pairs(rng.normal(size=600) + 2 * same, same, contiguous_folds(600))
    path = plot_roc(m, tmp_path / "plots" / "roc.png", title="random")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


# ---------------------------------------------------------------------------------------------
# LFW pairs.txt
# ---------------------------------------------------------------------------------------------

@pytest.mark.skipif(not (LFW_DIR / "pairs.txt").is_file(), reason=f"LFW pairs.txt not found in {LFW_DIR}")
def test_real_lfw_pairs():
    pairs = read_lfw_pairs(LFW_DIR / "pairs.txt", LFW_DIR)  # raises if any image is missing
    assert len(pairs) == 6000 and len(pairs.path_b) == 6000
    assert pairs.same.dtype == bool and pairs.fold.tolist() == np.repeat(np.arange(10), 600).tolist()
    for k in range(10):
        np.testing.assert_array_equal(pairs.same[pairs.fold == k], np.r_[np.ones(300, bool), np.zeros(300, bool)])
    assert pairs.path_a[0] == str(LFW_DIR / "Abel_Pacheco" / "Abel_Pacheco_0001.jpg")
    assert pairs.path_b[0] == str(LFW_DIR / "Abel_Pacheco" / "Abel_Pacheco_0004.jpg")
    assert os.path.isfile(pairs.path_a[0]) and os.path.isfile(pairs.path_b[0])
    assert pairs.images == sorted(set(pairs.images)) and len(pairs.images) < 12000


# Header "1 2": one fold of two matched then two mismatched pairs.
GOOD_PAIRS = ["1\t2", "Alice\t1\t2", "Bob 1 3", "Alice\t1\tBob\t2", "Carol  1  Alice  3"]


def _lfw_tree(root: Path, lines: list[str], skip_images=()) -> Path:
    for name, numbers in {"Alice": (1, 2, 3), "Bob": (1, 2, 3), "Carol": (1,)}.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for n in numbers:
            if f"{name}_{n:04d}" not in skip_images:
                (root / name / f"{name}_{n:04d}.jpg").write_bytes(b"")
    path = root / "pairs.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_small_pairs_file_with_mixed_whitespace(tmp_path):
    pairs = read_lfw_pairs(_lfw_tree(tmp_path, GOOD_PAIRS), tmp_path)
    assert pairs.same.tolist() == [True, True, False, False] and pairs.fold.tolist() == [0, 0, 0, 0]
    assert pairs.path_a[3] == str(tmp_path / "Carol" / "Carol_0001.jpg")
    assert pairs.path_b[3] == str(tmp_path / "Alice" / "Alice_0003.jpg")
    assert len(pairs.images) == 7


@pytest.mark.parametrize("line_no, replacement, problem", [
    (1, "10\tthree", "header"),
    (3, "Bob\t1", "expected 3 fields"),
    (2, "Alice\t1\ttwo", "not a positive integer"),
    (2, "Alice\t0\t2", "not a positive integer"),
    (3, "Bob\t1\tAlice\t2", "expected a matched pair"),
    (4, "Alice\t1\t2", "expected a mismatched pair"),
    (5, None, "ends after 3 pairs"),  # too few lines: the error points at the last one
    (6, "Bob\t1\t2", "more pairs"),
])
def test_malformed_pairs_name_the_line(tmp_path, line_no, replacement, problem):
    lines = list(GOOD_PAIRS) + [""]  # a spare slot for the one-line-too-many case
    if replacement is None:
        del lines[line_no - 1]
        line_no -= 1
    else:
        lines[line_no - 1] = replacement
    with pytest.raises(PairsFormatError, match=problem) as info:
        read_lfw_pairs(_lfw_tree(tmp_path, lines), tmp_path)
    assert f"line {line_no}:" in str(info.value) and repr(lines[line_no - 1]) in str(info.value)


def test_missing_images_are_all_listed(tmp_path):
    gone = ["Alice_0002", "Bob_0003", "Carol_0001"]
    with pytest.raises(MissingImagesError, match="^3 image") as info:
        read_lfw_pairs(_lfw_tree(tmp_path, GOOD_PAIRS, skip_images=gone), tmp_path)
    expected = sorted(str(tmp_path / g.split("_")[0] / f"{g}.jpg") for g in gone)
    assert info.value.missing == expected
    assert all(path in str(info.value) for path in expected)


def test_missing_image_message_is_capped():
    message = str(MissingImagesError([f"/x/{i}.jpg" for i in range(25)]))
    assert message.startswith("25 image") and "/x/19.jpg" in message and "/x/20.jpg" not in message
    assert "and 5 more" in message


# ---------------------------------------------------------------------------------------------
# CSV pairs
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("header", [True, False])
def test_csv_pairs(tmp_path, header):
    (tmp_path / "img").mkdir()
    for name in "abcd":
        (tmp_path / "img" / f"{name}.png").write_bytes(b"")
    absolute = tmp_path / "img" / "d.png"
    rows = [f"img/a.png,img/{'b' if i % 2 else 'c'}.png,{['1', 'FALSE', 'true', '0'][i % 4]}" for i in range(19)]
    rows.append(f"{absolute},img/a.png,1")
    csv_path = tmp_path / "pairs.csv"
    csv_path.write_text("\n".join((["path_a,path_b,same"] if header else []) + rows) + "\n")

    pairs = read_csv_pairs(csv_path)
    assert len(pairs) == 20 and pairs.same[:4].tolist() == [True, False, True, False]
    assert pairs.path_a[0] == str(tmp_path / "img" / "a.png") and pairs.path_a[19] == str(absolute)
    assert pairs.fold.tolist() == np.repeat(np.arange(10), 2).tolist()

    elsewhere = read_csv_pairs(csv_path, image_root=tmp_path)
    assert elsewhere.path_b == pairs.path_b


def test_csv_errors_name_the_line(tmp_path):
    csv_path = tmp_path / "pairs.csv"
    csv_path.write_text("path_a,path_b,same\na.png,b.png,1\na.png,b.png,maybe\n")
    with pytest.raises(PairsFormatError, match="line 3: 'same' must be"):
        read_csv_pairs(csv_path)
    csv_path.write_text("a.png,b.png,1\na.png,b.png\n")
    with pytest.raises(PairsFormatError, match="line 2: expected 3 or 4 fields"):
        read_csv_pairs(csv_path)
    csv_path.write_text("a.png,b.png,1,0\na.png,b.png,0\n")
    with pytest.raises(PairsFormatError, match="line 2: give a fold on every row or on none"):
        read_csv_pairs(csv_path)
    csv_path.write_text("a.png,b.png,1,-1\n")
    with pytest.raises(PairsFormatError, match="line 1: fold '-1'"):
        read_csv_pairs(csv_path)


def test_csv_fold_column_keeps_the_given_split(tmp_path):
    for name in "ab":
        (tmp_path / f"{name}.png").write_bytes(b"")
    # A subset of LFW-like folds: fold 3 then fold 7, each with both classes.
    csv_path = tmp_path / "pairs.csv"
    csv_path.write_text("path_a,path_b,same,fold\na.png,b.png,1,3\na.png,b.png,0,3\na.png,b.png,1,7\n"
                        "a.png,b.png,0,7\n")
    pairs = read_csv_pairs(csv_path)
    assert pairs.fold.tolist() == [3, 3, 7, 7] and pairs.same.tolist() == [True, False, True, False]


def test_contiguous_folds_match_kfold_sizes():
    assert np.bincount(contiguous_folds(6000)).tolist() == [600] * 10
    assert np.bincount(contiguous_folds(23)).tolist() == [3, 3, 3] + [2] * 7
    assert (np.diff(contiguous_folds(23)) >= 0).all()


# ---------------------------------------------------------------------------------------------
# insightface .bin and the restricted unpickler
# ---------------------------------------------------------------------------------------------

def _encoded_faces(count: int) -> list[bytes]:
    images = []
    for i in range(count):
        buf = io.BytesIO()
        Image.fromarray(np.full((8, 8, 3), i * 30, np.uint8)).save(buf, "PNG" if i % 2 else "JPEG")
        images.append(buf.getvalue())
    return images


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
@pytest.mark.parametrize("issame_kind", ["list", "numpy array", "numpy scalars"])
def test_valid_bin_loads(tmp_path, protocol, issame_kind):
    images, issame = _encoded_faces(6), [True, False, True]
    stored = {"list": issame, "numpy array": np.array(issame), "numpy scalars": [np.bool_(s) for s in issame]}
    path = tmp_path / "set.bin"
    with open(path, "wb") as f:
        pickle.dump((images, stored[issame_kind]), f, protocol=protocol)
    loaded, same = read_bin_pairs(path)
    assert loaded == images and same.dtype == bool and same.tolist() == issame


def test_python2_bin_and_array_images_load(tmp_path):
    # What a Python 2 pickle.dump((["ab", "cd"], [True]), f, 2) writes: str as SHORT_BINSTRING.
    python2 = b"\x80\x02]q\x00(U\x02abq\x01U\x02cdq\x02e]q\x03\x88a\x86q\x04."
    (tmp_path / "py2.bin").write_bytes(python2)
    assert read_bin_pairs(tmp_path / "py2.bin")[0] == [b"ab", b"cd"]
    # The same with issame as a Python 2 numpy bool array (numpy.core names, str dtype state).
    python2_array = (b"\x80\x02(]q\x00(U\x02abU\x02cde"
                     b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R"
                     b"(K\x01K\x01\x85cnumpy\ndtype\nU\x02b1K\x00K\x01\x87R"
                     b"(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89U\x01\x01tbt.")
    (tmp_path / "py2_array.bin").write_bytes(python2_array)
    images, same = read_bin_pairs(tmp_path / "py2_array.bin")
    assert images == [b"ab", b"cd"] and same.tolist() == [True]
    # Some converters keep cv2.imencode's uint8 arrays instead of bytes.
    with open(tmp_path / "arrays.bin", "wb") as f:
        pickle.dump(([np.frombuffer(b"ab", np.uint8), bytearray(b"cd")], [False]), f)
    images, same = read_bin_pairs(tmp_path / "arrays.bin")
    assert images == [b"ab", b"cd"] and same.tolist() == [False]


def test_bin_with_wrong_image_count_is_refused(tmp_path):
    with open(tmp_path / "odd.bin", "wb") as f:
        pickle.dump((_encoded_faces(3), [True, False]), f)
    with pytest.raises(PairsFormatError, match="2 pairs need 4 images, found 3"):
        read_bin_pairs(tmp_path / "odd.bin")


class _Payload:
    def __init__(self, call, args):
        self.call, self.args = call, args

    def __reduce__(self):
        return self.call, self.args


@pytest.mark.parametrize("call, args, refused", [
    (os.system, ("touch {marker}",), "system"),
    (eval, ("__import__('os').system('touch {marker}')",), "builtins.eval"),
    (subprocess.Popen, (["touch", "{marker}"],), "subprocess.Popen"),
])
def test_hostile_bin_runs_no_code(tmp_path, call, args, refused):
    marker = tmp_path / "pwned"
    payload = _Payload(call, tuple(a.format(marker=marker) if isinstance(a, str) else [s.format(marker=marker)
                                                                                         for s in a] for a in args))
    path = tmp_path / "hostile.bin"
    with open(path, "wb") as f:
        pickle.dump(([payload, b"x"], [True]), f)
    with pytest.raises(pickle.UnpicklingError, match=f"refused to load global .*{refused}"):
        read_bin_pairs(path)
    assert not marker.exists()
