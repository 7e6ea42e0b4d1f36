"""The backbone registry: shapes, pinned parameter counts, cross-checks against independent
references, input normalisation, forward passes, save/load, and freedom from TensorFlow."""
import re
from pathlib import Path

import keras
import numpy as np
import pytest

import models
from models import MODEL_NAMES, build_backbone, default_embedding_size, default_input_size

# model.count_params() at the default input and embedding sizes; it includes BatchNorm moving
# statistics. Parameter counts do not depend on the input size.
PARAM_COUNTS = {
    "res-cp": 21_383_776,
    "resnet18": 11_448_768,
    "resnet34": 21_564_352,
    "resnet50": 24_610_240,
    "resnet101": 43_654_592,
    "resnet152": 59_344_320,
    "vgg16": 14_977_344,
    "inception-resnet-v1": 22_822_432,
    "iresnet18": 24_039_296,
    "iresnet34": 34_164_160,
    "iresnet50": 43_627_968,
    "iresnet100": 65_224_768,
    "mobilefacenet": 1_022_592,
}
TOO_BIG_TO_RUN = {"resnet152", "iresnet100"}


def build_default(name: str) -> keras.Model:
    return build_backbone(name, default_input_size(name))


def trainable_count(model: keras.Model) -> int:
    """Parameters as PyTorch and the papers count them: without BatchNorm moving statistics."""
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def run(model: keras.Model, images: np.ndarray) -> np.ndarray:
    """Inference without predict(), whose graph tracing costs seconds per model."""
    return keras.ops.convert_to_numpy(model(images, training=False))


def trunk(model: keras.Model) -> keras.Model:
    """Everything before the global pooling."""
    return keras.Model(model.input, model.get_layer("global_pool").input)


def test_registry_lists_every_family():
    assert MODEL_NAMES == ("res-cp", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "vgg16",
                           "inception-resnet-v1", "iresnet18", "iresnet34", "iresnet50", "iresnet100",
                           "mobilefacenet")
    assert set(PARAM_COUNTS) == set(MODEL_NAMES)
    assert default_embedding_size("res-cp") == 160 and default_input_size("res-cp") == 64
    assert default_embedding_size("inception-resnet-v1") == 128
    assert default_embedding_size("mobilefacenet") == 128 and default_input_size("mobilefacenet") == 112
    assert all(default_embedding_size(f"iresnet{d}") == 512 and default_input_size(f"iresnet{d}") == 112
               for d in (18, 34, 50, 100))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_backbone_shape_and_pinned_parameter_count(name):
    model = build_default(name)
    assert model.name == name.replace("-", "_")
    assert tuple(model.output.shape) == (None, default_embedding_size(name))
    assert model.get_layer("embedding").output is model.output
    assert model.layers[1].name == "normalize"  # right after the input
    assert model.count_params() == PARAM_COUNTS[name]


# torchvision's published parameter counts (its model docs) minus the 1000-way fc layer. Its ResNets
# are ours: bias-free convs, stride on the 3x3 conv of bottlenecks, projection shortcuts.
TORCHVISION_RESNETS = {"resnet18": (11_689_512, 512), "resnet34": (21_797_672, 512), "resnet50": (25_557_032, 2048),
                       "resnet101": (44_549_160, 2048), "resnet152": (60_192_808, 2048)}


@pytest.mark.parametrize("name", TORCHVISION_RESNETS)
def test_resnet_trunk_matches_torchvision(name):
    published, trunk_channels = TORCHVISION_RESNETS[name]
    assert trainable_count(trunk(build_default(name))) == published - (trunk_channels * 1000 + 1000)


def test_res_cp_is_resnet34_with_a_160_unit_embedding():
    res_cp, resnet34 = build_default("res-cp"), build_default("resnet34")
    assert trunk(res_cp).count_params() == trunk(resnet34).count_params()
    assert res_cp.get_layer("embedding").get_config()["activation"] == "relu"


def test_resnet50_trunk_matches_keras_applications():
    reference = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(64, 64, 3))
    assert reference.count_params() == 23_587_712
    # keras.applications gives every conv a bias (redundant before BN; ours have none) and strides
    # the first 1x1 conv of a bottleneck instead of the 3x3 (same parameters); otherwise the same net.
    conv_biases = sum(int(np.prod(layer.bias.shape)) for layer in reference.layers
                      if isinstance(layer, keras.layers.Conv2D) and layer.use_bias)
    assert conv_biases == 26_560
    assert trunk(build_default("resnet50")).count_params() == reference.count_params() - conv_biases


def test_vgg16_trunk_matches_keras_applications():
    reference = keras.applications.VGG16(include_top=False, weights=None)
    assert reference.count_params() == 14_714_688
    assert trunk(build_default("vgg16")).count_params() == reference.count_params()


# Published sizes at 112 px: MobileFaceNet 0.99M (Chen et al. 2018, 128-d), insightface's
# iresnet50 43.6M and iresnet100 65.2M (512-d). Not exact: their BN-embedding keeps a (frozen) scale
# and the iresnet fc a bias, ours drop both; the MobileFaceNet paper does not say what it counted.
LITERATURE_PARAMS = {"mobilefacenet": (0.99e6, 0.02), "iresnet50": (43.6e6, 0.002), "iresnet100": (65.2e6, 0.002)}


@pytest.mark.parametrize("name", LITERATURE_PARAMS)
def test_size_matches_the_literature(name):
    published, tolerance = LITERATURE_PARAMS[name]
    assert trainable_count(build_default(name)) == pytest.approx(published, rel=tolerance)


def test_final_feature_maps_at_112_px():
    assert tuple(build_default("iresnet18").get_layer("head_bn").output.shape) == (None, 7, 7, 512)
    gdconv = build_default("mobilefacenet").get_layer("gdconv_dwconv")
    assert gdconv.get_config()["kernel_size"] == (7, 7) and tuple(gdconv.output.shape) == (None, 1, 1, 512)


def test_inception_resnet_v1_layout_builds_at_64_px():
    model = build_backbone("inception-resnet-v1", 64)
    assert model.count_params() == PARAM_COUNTS["inception-resnet-v1"]
    assert tuple(model.get_layer("global_pool").input.shape) == (None, 2, 2, 1792)
    scales = [layer.get_config()["scale"] for layer in model.layers if layer.name.endswith("_scale")]
    assert scales == [0.17] * 5 + [0.10] * 10 + [0.20] * 5 + [1.0]  # + FaceNet's final linear block8


@pytest.mark.parametrize("name, size", [("res-cp", 64), ("mobilefacenet", 112)])
def test_forward_pass_on_raw_pixels(name, size):
    model = build_backbone(name, size)
    images = np.random.default_rng(0).uniform(0, 255, (2, size, size, 3)).astype("float32")
    embeddings = run(model, images)
    assert embeddings.shape == (2, default_embedding_size(name)) and np.isfinite(embeddings).all()
    normalize = keras.Model(model.input, model.get_layer("normalize").output)
    mid_grey = np.full((1, size, size, 3), 127.5, "float32")
    np.testing.assert_array_equal(run(normalize, mid_grey), 0.0)
    np.testing.assert_allclose(run(normalize, np.full_like(mid_grey, 255.0)), 127.5 / 128)


@pytest.mark.parametrize("name", ["res-cp", "iresnet18", "mobilefacenet"])
def test_save_and_safe_load_round_trip(name, tmp_path):
    model = build_default(name)
    size = default_input_size(name)
    images = np.random.default_rng(1).uniform(0, 255, (2, size, size, 3)).astype("float32")
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras", safe_mode=True)
    assert loaded.name == model.name
    np.testing.assert_allclose(run(loaded, images), run(model, images), atol=1e-5)


def test_unknown_name_lists_the_available_models():
    with pytest.raises(ValueError, match="nope") as error:
        build_backbone("nope", 64)
    assert all(name in str(error.value) for name in MODEL_NAMES)
    with pytest.raises(ValueError, match="res-cp"):
        default_input_size("nope")


def test_options_embedding_size_and_weight_decay():
    assert not build_backbone("resnet18", 64).losses
    model = build_backbone("resnet18", 64, embedding_size=32, weight_decay=5e-4)
    assert tuple(model.output.shape) == (None, 32)
    kernels = [layer for layer in model.layers if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))]
    assert len(model.losses) == len(kernels) == 1 + 16 + 3 + 1  # stem, blocks, shortcuts, embedding
    assert build_backbone("iresnet18", 112, dropout_rate=0.0).get_layer("head_dropout").rate == 0.0


def test_models_source_is_free_of_tensorflow():
    """The backbones must run on any Keras backend (JAX, torch), so nothing TensorFlow-specific."""
    forbidden = re.compile(r"\bimport\s+tensorflow|\bfrom\s+tensorflow|[\"']tensorflow|\btf\.")
    sources = sorted(Path(models.__file__).parent.glob("*.py"))
    assert len(sources) >= 6
    offenders = [f"{path.name}:{number}: {line.strip()}" for path in sources
                 for number, line in enumerate(path.read_text().splitlines(), start=1) if forbidden.search(line)]
    assert not offenders, offenders
