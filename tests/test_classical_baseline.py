"""The classical LFW baselines (LBP histograms, eigenfaces) on real crops."""
import cv2
import numpy as np
import pytest

from benchmarks.classical_baseline import _LOOKUP, UNIFORM_BINS, PixelPCA, grey_crops, lbp_features
from tests.conftest import requires_shared_data
from utils.core.run_io import SHARED_DATA_DIR
from utils.verify.pair_files import read_lfw_pairs
from utils.verify.pair_metrics import cosine_similarity, evaluate_pairs


def test_uniform_patterns_get_their_own_bins():
    # 58 codes have at most two 0/1 transitions around the circle (Ojala et al.); the rest share one bin.
    assert np.bincount(_LOOKUP, minlength=UNIFORM_BINS)[:58].tolist() == [1] * 58
    assert _LOOKUP[0] != _LOOKUP[255] and _LOOKUP[0b01010101] == 58


def test_lbp_of_a_flat_and_a_striped_image():
    flat = np.full((1, 18, 18), 7.0, np.float32)
    f = lbp_features(flat, grid=2).reshape(2, 2, UNIFORM_BINS) ** 2  # undo the square root
    # Every neighbour >= the centre: code 255 everywhere, one full bin per cell.
    assert np.allclose(f[..., _LOOKUP[255]], 1.0) and np.allclose(f.sum(-1), 1.0)
    stripes = np.tile(np.array([0.0, 9.0], np.float32), (18, 9))[None]
    g = lbp_features(stripes, grid=2) ** 2
    assert g[0, _LOOKUP[255]] < 1.0  # dark columns see brighter neighbours, bright ones do not


@requires_shared_data
def test_both_baselines_verify_lfw_pairs_above_chance():
    """Two LFW folds (1,200 pairs), on the centre of the deep-funneled images (roughly aligned faces)."""
    pairs = read_lfw_pairs(SHARED_DATA_DIR / "lfw" / "pairs.txt", SHARED_DATA_DIR / "lfw")
    keep = pairs.fold < 2
    path_a, path_b = np.array(pairs.path_a)[keep], np.array(pairs.path_b)[keep]
    images = sorted(set(path_a) | set(path_b))
    row = {p: i for i, p in enumerate(images)}
    grey = np.stack([cv2.resize(cv2.imread(p, cv2.IMREAD_GRAYSCALE)[68:182, 68:182], (64, 64),
                                interpolation=cv2.INTER_AREA) for p in images]).astype(np.float32)
    rows_a, rows_b = [row[p] for p in path_a], [row[p] for p in path_b]
    # Eigenfaces fitted on the test images themselves: unsupervised, enough to show the method works.
    for name, features in (("lbp", lbp_features(grey)), ("eigenfaces", PixelPCA(64).fit(grey).transform(grey))):
        features = np.asarray(features, np.float64)
        metrics = evaluate_pairs(cosine_similarity(features[rows_a], features[rows_b]), pairs.same[keep],
                                 pairs.fold[keep])
        assert metrics["auc"] > 0.65 and metrics["accuracy_mean"] > 0.6, (name, metrics["auc"])


def test_grey_crops_refuses_an_undecodable_file(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot decode crop"):
        grey_crops([bad])
