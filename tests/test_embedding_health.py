"""benchmarks/embedding_health.py's figures on embeddings whose answer is known."""
import numpy as np

from benchmarks.embedding_health import health


def test_dead_units_sparsity_and_effective_dimension():
    rng = np.random.default_rng(0)
    emb = np.zeros((1000, 8))
    emb[:, :4] = np.abs(rng.normal(size=(1000, 4)))  # 4 live units of equal variance, 4 dead ones
    emb[:10] = 0.0  # 10 faces that switch every unit off
    figures = health(emb)
    assert figures["dead_units"] == 4 and figures["all_zero_embeddings"] == 10
    assert figures["active_units_per_image_median"] == 4
    assert figures["zero_fraction"] == round(1 - 990 * 4 / 8000, 4)
    assert 3.7 < figures["participation_ratio"] <= 4.0  # ~4 equal directions
    one_direction = np.outer(np.abs(rng.normal(size=500)), np.ones(6))
    assert health(one_direction)["participation_ratio"] == 1.0
