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
    "res-cp": 21_213_728,
    "seed-resnet34": 21_213_728,
    "resnet18": 11_448_768,
    "resnet34": 21_564_352,
    "resnet50": 24_610_240,
    "resnet101": 43_654_592,
    "resnet152": 59_344_320,
    # The ReLU nets' Dense bias (512) traded for the BatchNorm's beta, moving mean and variance (3 x 512).
    "resnet18-linear": 11_449_792,
    "resnet34-linear": 21_565_376,
    "resnet50-linear": 24_611_264,
    "resnet101-linear": 43_655_616,
    "resnet152-linear": 59_345_344,
    "vgg16": 39_888_704,
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
    assert MODEL_NAMES == ("res-cp", "seed-resnet34", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
                           "resnet18-linear", "resnet34-linear", "resnet50-linear", "resnet101-linear",
                           "resnet152-linear", "vgg16",
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


def test_linear_resnet_shares_the_trunk_and_its_embedding_takes_either_sign():
    relu, linear = build_default("resnet18"), build_default("resnet18-linear")
    assert [w.shape for w in trunk(linear).weights] == [w.shape for w in trunk(relu).weights]
    assert linear.get_layer("embedding_dense").units == 512 and not linear.get_layer("embedding_dense").use_bias
    assert isinstance(linear.get_layer("embedding"), keras.layers.BatchNormalization)
    images = np.random.default_rng(2).uniform(0, 255, (4, 64, 64, 3)).astype("float32")
    assert (run(relu, images) >= 0).all()
    embeddings = run(linear, images)
    assert (embeddings < 0).any() and (embeddings > 0).any()


def seed_res_cp_parameters(hidden: int = 160) -> int:
    """res-cp's parameters counted by hand from the seed's tflearn code (BatchNorm moving
    statistics included, as count_params() does): every conv has a bias, no projection convs."""
    def conv(k, c_in, c_out):
        return k * k * c_in * c_out + c_out

    def bn(c):
        return 4 * c  # gamma, beta, moving mean, moving variance

    def block(c_in, c_out):  # BN(in) -> ReLU -> conv3x3 -> BN -> ReLU -> conv3x3, + identity
        return bn(c_in) + conv(3, c_in, c_out) + bn(c_out) + conv(3, c_out, c_out)

    total = conv(7, 3, 64)  # stem: linear conv with a bias, no BN
    channels = 64
    for blocks, out in ((3, 64), (1, 128), (3, 128), (1, 256), (5, 256), (1, 512), (2, 512)):
        for _ in range(blocks):
            total += block(channels, out)
            channels = out
    return total + 512 * hidden + hidden  # GAP -> dense 160 ReLU


def test_res_cp_parameter_count_by_hand():
    assert seed_res_cp_parameters() == 21_213_728 == build_default("res-cp").count_params()
    assert build_backbone("res-cp", 64, embedding_size=100).count_params() == seed_res_cp_parameters(100)


def test_res_cp_layer_sequence_is_tflearns():
    model = build_default("res-cp")
    kinds = [type(layer).__name__ for layer in model.layers]
    names = [layer.name for layer in model.layers]
    # Stem: linear 7x7/2 conv with a bias, then the max-pool: no BN or ReLU between them.
    stem = model.get_layer("stem_conv")
    assert stem.kernel_size == (7, 7) and stem.strides == (2, 2) and stem.use_bias
    assert stem.get_config()["activation"] == "linear"
    assert kinds[names.index("stem_conv") + 1] == "MaxPooling2D"
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert all(c.use_bias for c in convs) and len(convs) == 1 + 2 * 16
    assert all(c.kernel_size == (3, 3) for c in convs[1:])  # no 1x1 projection shortcut anywhere
    # Full pre-activation: BN -> ReLU -> conv, twice, then the addition.
    first = names.index("stage1_block1_bn1")
    assert kinds[first:first + 7] == ["BatchNormalization", "Activation", "Conv2D", "BatchNormalization",
                                      "Activation", "Conv2D", "Add"]
    # Nothing between the last addition and the global pool (no final BN-ReLU).
    assert kinds[names.index("global_pool") - 1] == "Add"
    assert model.get_layer("embedding").get_config()["activation"] == "relu"
    downsampling = sorted(n.removesuffix("_subsample") for n in names if n.endswith("_subsample"))
    assert downsampling == ["stage2_block1", "stage4_block1", "stage6_block1"]
    assert sorted(n.removesuffix("_pad") for n in names if n.endswith("_pad")) == downsampling
    assert tuple(model.get_layer("global_pool").input.shape) == (None, 2, 2, 512)


def test_res_cp_downsampling_identity_is_subsampled_and_zero_padded():
    """With the residual branch's convs zeroed, a downsampling block outputs its input
    subsampled (every other pixel) with (out - in) / 2 zero channels on each side."""
    from models.seed_resnet import preact_block

    inputs = keras.Input((6, 6, 4))
    block = keras.Model(inputs, preact_block(inputs, 8, 2, "b"))
    for layer in block.layers:
        if isinstance(layer, keras.layers.Conv2D):
            layer.set_weights([np.zeros_like(w) for w in layer.get_weights()])
    x = np.random.default_rng(0).normal(size=(2, 6, 6, 4)).astype("float32")
    expected = np.pad(x[:, ::2, ::2, :], [(0, 0), (0, 0), (0, 0), (2, 2)])
    np.testing.assert_allclose(run(block, x), expected, atol=1e-6)
    assert block.count_params() == 4 * 4 + (9 * 4 * 8 + 8) + 4 * 8 + (9 * 8 * 8 + 8)


@pytest.mark.parametrize("name, stem_decayed", [("res-cp", False), ("seed-resnet34", True)])
def test_seed_weight_decay_is_on_residual_convs_only(name, stem_decayed):
    """tflearn's L2 is weight_decay * sum(w^2) / 2 with weight_decay 1e-4 on residual_block's
    convs; here L2(5e-5) on exactly those kernels (and the stem's in the seed's resnet34)."""
    model = build_backbone(name, 64, weight_decay=5e-5)
    decayed = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)
               and (layer.name != "stem_conv" or stem_decayed)]
    assert len(model.losses) == len(decayed) == 32 + stem_decayed
    by_hand = sum(1e-4 * float(np.sum(keras.ops.convert_to_numpy(layer.kernel) ** 2)) / 2 for layer in decayed)
    total = float(sum(keras.ops.convert_to_numpy(loss) for loss in model.losses))
    assert total == pytest.approx(by_hand, rel=1e-5)
    for undecayed in ["embedding"] + ([] if stem_decayed else ["stem_conv"]):
        assert model.get_layer(undecayed).kernel_regularizer is None


def test_seed_vgg16_embedding_is_fc7_after_dropout():
    model = build_default("vgg16")
    assert isinstance(model.get_layer("embedding"), keras.layers.Dropout)
    assert model.get_layer("embedding").rate == 0.5 and model.get_layer("fc6_dropout").rate == 0.5
    assert model.get_layer("fc6").units == model.get_layer("fc7").units == 4096
    assert tuple(model.get_layer("flatten").output.shape) == (None, 2 * 2 * 512)


def test_unit_normalization_divides_by_255():
    model = build_backbone("res-cp", 64, normalization="unit")
    normalize = keras.Model(model.input, model.get_layer("normalize").output)
    np.testing.assert_allclose(run(normalize, np.full((1, 64, 64, 3), 255.0, "float32")), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(run(normalize, np.zeros((1, 64, 64, 3), "float32")), 0.0)
    with pytest.raises(ValueError, match="centered"):
        build_backbone("res-cp", 64, normalization="nope")


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
    model = build_default("vgg16")
    assert keras.Model(model.input, model.get_layer("flatten").input).count_params() == reference.count_params()


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


@pytest.mark.parametrize("name", ["res-cp", "vgg16", "iresnet18", "mobilefacenet"])
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


@pytest.mark.parametrize("name", ["res-cp", "vgg16"])
def test_same_shape_layers_start_from_different_weights(name):
    """Each layer draws its own initial weights (a seedless Keras initializer shared across
    layers would give every layer of one shape the same ones)."""
    model = build_default(name)
    by_shape: dict = {}
    for weight in model.weights:
        if weight.path.endswith(("kernel", "gamma")):
            by_shape.setdefault((weight.path.rsplit("/", 1)[-1], tuple(weight.shape)), []).append(
                keras.ops.convert_to_numpy(weight))
    groups = [values for values in by_shape.values() if len(values) > 1]
    assert groups  # res-cp: 3x3 convs and BN gammas of one width; vgg16: block3-5 convs
    for values in groups:
        for i in range(len(values)):
            for j in range(i + 1, len(values)):
                assert not np.array_equal(values[i], values[j])
