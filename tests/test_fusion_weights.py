"""Ensemble fusion weights: the tuning pairs, the weight grid, the choice, and weighted fusion."""
from math import comb

import numpy as np
import pytest

from utils.verify.fusion import fused_scores
from utils.verify.fusion_weights import best_weights, pair_accuracy, simplex_grid, tuning_pairs
from utils.verify.validation import ValidationError, _Member


def test_tuning_pairs_are_every_same_person_pair_and_as_many_others():
    people = np.array(["a"] * 4 + ["b"] * 2 + ["c"] + ["d"] * 3)
    rows_a, rows_b, same = tuning_pairs(people)
    genuine = comb(4, 2) + comb(2, 2) + comb(3, 2)
    assert same.sum() == genuine and len(same) == 2 * genuine
    assert (people[rows_a] == people[rows_b]).tolist() == same.tolist()
    assert (rows_a < rows_b).all() and len(set(zip(rows_a, rows_b))) == len(same)  # no pair twice, none with itself
    again = tuning_pairs(people)
    assert all(np.array_equal(x, y) for x, y in zip((rows_a, rows_b, same), again))  # a fixed draw
    with pytest.raises(ValidationError, match="nobody with two or more"):
        tuning_pairs(["a", "b", "c"])
    with pytest.raises(ValidationError, match="one person"):
        tuning_pairs(["a", "a", "a"])


def test_the_weight_grid_covers_the_simplex():
    grid = simplex_grid(3, 0.25)
    assert len(grid) == comb(4 + 2, 2)  # 4 steps of 0.25 shared by 3 members
    np.testing.assert_allclose(grid.sum(axis=1), 1.0)
    assert (grid >= 0).all() and [1.0, 0.0, 0.0] in grid.tolist() and [0.25, 0.5, 0.25] in grid.tolist()
    assert simplex_grid(1, 0.05).tolist() == [[1.0]]
    with pytest.raises(ValueError, match="step must divide 1"):
        simplex_grid(2, 0.3)


def test_the_choice_follows_the_informative_member_and_ties_go_to_equal_weights():
    rng = np.random.default_rng(0)
    same = np.arange(2000) < 1000
    informative = same + rng.normal(scale=0.8, size=2000)  # separates the pairs, with errors
    noise = rng.normal(size=2000)
    weights, accuracy = best_weights(np.array([noise, informative]), same, 0.1)
    assert weights[1] > 0.8 and accuracy >= pair_accuracy(informative, same) > 0.6 > pair_accuracy(noise, same)
    # Two members that are one and the same: every weighting ties, and equal weights are kept.
    weights, _ = best_weights(np.array([informative, informative]), same, 0.1)
    np.testing.assert_allclose(weights, [0.5, 0.5])


def _members(rng, *dims):
    from utils.verify.embeddings import l2_normalize

    return [_Member(None, {}, l2_normalize(rng.normal(size=(40, d))), l2_normalize(rng.normal(size=(40, d))),
                    np.zeros(40, bool), np.zeros(40, int), 80, None, None, {}) for d in dims]


def test_weighted_fusion_is_the_weighted_mean_of_cosines():
    members = _members(np.random.default_rng(1), 8, 16, 4)
    cosines = np.array([np.sum(m.emb_a * m.emb_b, 1) for m in members])
    for weights in ([2, 1, 1], [0.6, 0.0, 0.4], [1, 1, 1]):
        expected = np.asarray(weights, float) / sum(weights) @ cosines
        for fusion in ("concat", "mean-score"):
            np.testing.assert_allclose(fused_scores(members, "cosine", fusion, weights), expected, atol=1e-12)
    np.testing.assert_allclose(fused_scores(members, "cosine", "concat", [0, 1, 0]), cosines[1], atol=1e-12)
    for bad in ([1, 1], [1, -1, 1], [0, 0, 0]):
        with pytest.raises(ValidationError, match="one per --model"):
            fused_scores(members, "cosine", "concat", bad)


def test_a_tuning_tree_that_shares_people_with_a_member_is_refused_naming_them(tmp_path):
    from utils.verify.fusion_weights import choose_fusion_weights

    run, tree = tmp_path / "run", tmp_path / "tune"
    run.mkdir()
    (run / "classes.txt").write_text("0\t1001\n1\tJosé_Aznar\n2\t1003\n", encoding="utf-8")
    for person in ("1001", "jose aznar", "2002"):
        (tree / person).mkdir(parents=True)
    # Refused before any model loads (the run has none): names matched as LFW overlap is.
    shared = r"2 of its people are in the training data of .*run \(1001, jose aznar\)"
    with pytest.raises(ValidationError, match=shared):
        choose_fusion_weights([run], tree)
    (tree / "1001").rmdir()
    (tree / "jose aznar").rmdir()
    from utils.verify.embeddings import ModelError

    with pytest.raises(ModelError, match="has no model.json"):
        choose_fusion_weights([run], tree)  # no overlap: on to loading the (missing) model
