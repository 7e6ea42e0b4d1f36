"""1:N identification metrics on embeddings whose answers are known."""
import numpy as np
import pytest

from utils.verify.identification import identification_metrics, identify, open_set_threshold, split_gallery


def unit(*rows):
    rows = np.asarray(rows, np.float64)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_split_enrols_the_first_image_of_each_person_with_several():
    split = split_gallery(["ann", "bob", "ann", "cy", "ann", "bob", "dee"])
    assert split.gallery.tolist() == [0, 1] and split.mated.tolist() == [2, 4, 5]
    assert split.non_mated.tolist() == [3, 6]


def test_rank_and_open_set_figures_match_a_hand_count():
    gallery = unit([1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0])
    mated = unit([1, 0.1, 0, 0], [0.2, 1, 0.1, 0], [0, 1, 0.8, 0])  # ann, bob right; cy second best (bob wins)
    # Ten strangers whose best gallery scores are known: cosine `top` with ann, the rest off every axis.
    tops = np.array([0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1])
    strangers = np.stack([tops, 0 * tops, 0 * tops, np.sqrt(1 - tops ** 2)], axis=1)
    result = identification_metrics(gallery, ["ann", "bob", "cy"], mated, ["ann", "bob", "cy"], strangers,
                                     fpir_targets=(0.1, 0.3))
    assert result["rank_1"] == pytest.approx(2 / 3) and result["rank_5"] == 1.0
    at_10, at_30 = result["open_set"]
    assert at_10["fpir_achieved"] == pytest.approx(0.1) and 0.9 < at_10["threshold"] <= 0.95
    assert at_30["fpir_achieved"] == pytest.approx(0.3) and 0.7 < at_30["threshold"] <= 0.8
    # ann's best score is 0.995 and bob's 0.976: both pass either threshold, cy is wrong anyway.
    assert at_10["dir"] == at_30["dir"] == pytest.approx(2 / 3)
    stricter = identification_metrics(gallery, ["ann", "bob", "cy"], mated, ["ann", "bob", "cy"], strangers[:1] * 0
                                      + unit([0.99, 0, 0, 0.141]), fpir_targets=(0.0,))
    assert stricter["open_set"][0]["dir"] == pytest.approx(1 / 3)  # only ann's 0.995 beats a 0.99 stranger


def test_no_false_positive_allowed_means_above_every_stranger():
    assert open_set_threshold([0.2, 0.7, 0.5], 0.0) > 0.7
    assert open_set_threshold([0.2, 0.7, 0.5], 0.34) == pytest.approx(0.5, abs=1e-9)


def test_bad_galleries_are_refused():
    g = unit([1, 0], [0, 1])
    with pytest.raises(ValueError, match="one entry per person"):
        identification_metrics(g, ["ann", "ann"], g, ["ann", "ann"])
    with pytest.raises(ValueError, match="nobody in the gallery"):
        identification_metrics(g, ["ann", "bob"], g, ["ann", "cy"])


def test_identify_says_unknown_below_the_threshold():
    gallery = unit([1, 0], [0, 1])
    probes = unit([1, 0.1], [1, 1])
    assert [name for name, _ in identify(gallery, ["ann", "bob"], probes, 0.9)] == ["ann", None]
