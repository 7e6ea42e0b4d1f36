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


def test_layer_features_rebuild_the_embedding(tmp_path):
    """The pre-ReLU embedding computed from the pooled features gives the model's own output once ReLU'd."""
    import keras
    from PIL import Image

    from benchmarks.embedding_health import layer_features
    from models import build_backbone

    model = build_backbone("res-cp", 32, normalization="unit")
    rng = np.random.default_rng(1)
    paths = []
    for i in range(3):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(paths[-1])
    features = layer_features(model, paths, 32)
    assert features["global_pool"].shape == (3, 512) and features["embedding before ReLU"].shape == (3, 160)
    from utils.preprocess.input_pipeline import resize_like_training

    images = np.stack([np.asarray(resize_like_training(np.asarray(Image.open(p)), 32)) for p in paths])
    expected = keras.ops.convert_to_numpy(model(images, training=False))
    np.testing.assert_allclose(features["embedding (after ReLU)"], expected, atol=1e-4)
