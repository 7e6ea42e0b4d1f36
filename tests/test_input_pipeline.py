"""File listing, holdout split and the tf.data pipeline on a small generated crops tree."""
import numpy as np
import pytest
from PIL import Image

from tests.conftest import requires_shared_data
from utils.core.run_io import SHARED_DATA_DIR
from utils.preprocess.input_pipeline import (
    AugmentSettings,
    InputError,
    SkipCount,
    list_crops,
    make_dataset,
    random_split,
    stratified_split,
)


@pytest.fixture()
def crops(tmp_path):
    """identity i has 3 + i crops; each crop's left half is bright, right half dark."""
    for i in range(5):
        for j in range(3 + i):
            img = np.zeros((40, 40, 3), np.uint8)
            img[:, :20] = 200 + j
            (tmp_path / f"id{i}").mkdir(exist_ok=True)
            Image.fromarray(img).save(tmp_path / f"id{i}" / f"{j}.png")
    return tmp_path


def test_list_crops_keeps_identities_with_more_than_n_images(crops):
    files = list_crops(crops, img_morethan=5)
    assert files.classes == ["id3", "id4"]
    assert len(files.paths) == 6 + 7 and sorted(set(files.labels.tolist())) == [0, 1]
    with pytest.raises(InputError, match="at least 2"):
        list_crops(crops, img_morethan=6)


def test_seed_split_is_sklearns_train_test_split_over_images(crops):
    """The seed: train_test_split(labels, files, test_size=0.1, random_state=0) over every image."""
    from sklearn.model_selection import train_test_split

    files = list_crops(crops, img_morethan=2)
    train, held = random_split(files.labels, 0.1, seed=0)
    _, _, _, seed_test_files = train_test_split(list(files.labels), files.paths, test_size=0.1, random_state=0)
    assert sorted(files.paths[i] for i in held) == sorted(seed_test_files)
    assert len(held) == 3 and len(train) == len(files.paths) - 3  # ceil(0.1 * 25)
    assert not set(train) & set(held)
    assert (random_split(files.labels, 0.1, seed=1)[1] != held).any()
    assert len(random_split(files.labels, 0.0, seed=0)[1]) == 0
    with pytest.raises(InputError, match="val_split"):
        random_split(files.labels, 1.0, seed=0)


def test_stratified_split_holds_out_every_identity_with_four_or_more_and_is_seeded():
    labels = np.repeat(np.arange(7), [1, 2, 3, 4, 5, 10, 20])
    train, held = stratified_split(labels, 0.1, seed=0)
    assert sorted(np.concatenate([train, held]).tolist()) == list(range(len(labels)))
    # 1-, 2- and 3-image identities stay whole in training; from 4 on, round(0.1 n) and at least one.
    assert np.bincount(labels[held], minlength=7).tolist() == [0, 0, 0, 1, 1, 1, 2]
    assert (stratified_split(labels, 0.1, seed=0)[1] == held).all()
    assert not (stratified_split(labels, 0.1, seed=1)[1] == held).all()


def _images(ds):
    return np.concatenate([np.asarray(x) for x, _ in ds])


def test_pipeline_resizes_and_augments_only_when_asked(crops):
    files = list_crops(crops, 0)
    plain = _images(make_dataset(files.paths, files.labels, 32, 4, training=False))
    assert plain.shape == (len(files.paths), 32, 32, 3) and plain.dtype == np.float32
    assert (plain[:, :, :14].mean() > 190) and (plain[:, :, 18:].mean() < 10)  # raw pixels, not normalised

    flipped = _images(make_dataset(files.paths, files.labels, 32, 5, training=True, augment=AugmentSettings(flip=True)))
    bright_left = flipped[:, :, :14].mean(axis=(1, 2, 3)) > 150
    assert 0 < bright_left.sum() < len(bright_left)  # some mirrored, some not

    shifted = _images(make_dataset(files.paths, files.labels, 32, 5, training=True,
                                   augment=AugmentSettings(brightness=40.0, contrast=0.3, crop_jitter=0.2)))
    assert shifted.shape[1:] == (32, 32, 3) and shifted.min() >= 0 and shifted.max() <= 255
    assert np.std(shifted[:, 4:28, 22:].mean(axis=(1, 2, 3))) > 1.0  # dark halves moved by random amounts


def test_augmentation_repeats_under_the_same_seed_and_differs_under_another(crops):
    """Stateless draws per element: the same seed gives the same augmented stream (parallel
    decoding and augmentation included), another seed another one."""
    import keras

    files = list_crops(crops, 0)
    augment = AugmentSettings(flip=True, crop_jitter=0.2, brightness=30.0, contrast=0.3)

    def stream(seed):
        keras.utils.set_random_seed(seed)  # as training does
        ds = make_dataset(files.paths, files.labels, 32, 5, training=True, augment=augment, seed=seed, repeat=True)
        return np.concatenate([np.asarray(x) for x, _ in ds.take(12)])  # over two passes

    first = stream(3)
    np.testing.assert_array_equal(first, stream(3))
    assert not np.array_equal(first, stream(4))


@pytest.mark.parametrize("cache", ["", "ram"])
def test_a_stream_resumed_at_any_element_goes_on_as_the_unbroken_stream(crops, cache):
    """first_element=k (a resumed run): the same crops in the same order with the same augmentation
    draws as the unbroken stream from element k, inside the first pass and inside the second;
    passes are reshuffled, and with a cache too."""
    import keras

    files = list_crops(crops, 0)  # 25 crops: 5 batches of 5 a pass
    augment = AugmentSettings(flip=True, crop_jitter=0.2, brightness=30.0)

    def stream(first_element, batches):
        keras.utils.set_random_seed(3)  # as training does
        ds = make_dataset(files.paths, files.labels, 32, 5, training=True, augment=augment, seed=3,
                          skipped=SkipCount(), repeat=True, cache=cache, first_element=first_element)
        return [(np.asarray(x), np.asarray(y)) for x, y in ds.take(batches)]

    whole = stream(0, 12)
    labels = np.concatenate([y for _, y in whole])
    assert sorted(labels[:25]) == sorted(files.labels) and not np.array_equal(labels[:25], labels[25:50])
    for step in (2, 7):
        for (image, label), (expected_image, expected_label) in zip(stream(5 * step, 12 - step), whole[step:],
                                                                    strict=True):
            np.testing.assert_array_equal(label, expected_label)
            np.testing.assert_array_equal(image, expected_image)


@pytest.fixture()
def noisy_crops(tmp_path):
    """Two identities of colourful noise: every lever changes such crops visibly."""
    rng = np.random.default_rng(0)
    for i in range(2):
        (tmp_path / f"id{i}").mkdir()
        for j in range(4):
            Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(tmp_path / f"id{i}" / f"{j}.png")
    return list_crops(tmp_path, 0)


def _augmented(files, seed=0, **levers):
    return _images(make_dataset(files.paths, files.labels, 32, 8, training=True, augment=AugmentSettings(**levers),
                                seed=seed))


def _roughness(images):
    """Mean absolute difference between horizontal neighbours: high for sharp noise, low once blurred."""
    return np.abs(np.diff(images, axis=2)).mean(axis=(1, 2, 3))


def test_each_new_lever_does_what_it_says(noisy_crops):
    plain = _augmented(noisy_crops)
    grey = _augmented(noisy_crops, greyscale=1.0)
    assert np.allclose(grey[..., 0], grey[..., 1]) and np.allclose(grey[..., 1], grey[..., 2])
    assert not np.allclose(plain[..., 0], plain[..., 1])

    erased = _augmented(noisy_crops, erasing=1.0)
    for image in erased:  # one mid-grey box of 2-25 % of the 32 x 32 pixels, in every image
        box = np.all(image == 127.5, axis=-1)
        rows, cols = np.flatnonzero(box.any(axis=1)), np.flatnonzero(box.any(axis=0))
        assert box[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()  # a filled rectangle
        assert 0.015 * 32 * 32 <= box.sum() <= 0.27 * 32 * 32

    softened = _augmented(noisy_crops, downscale=1.0, downscale_min=0.3)
    assert (_roughness(softened) < 0.8 * _roughness(plain)).all()
    assert np.ptp(_roughness(softened)) > 1.0  # shrunk by random factors

    cropped = _augmented(noisy_crops, resized_crop=0.5)
    assert cropped.shape == plain.shape and not np.allclose(cropped, plain)
    washed = _augmented(noisy_crops, saturation=0.9)
    assert washed.shape == plain.shape and not np.allclose(washed, plain)
    assert washed.min() >= 0 and washed.max() <= 255


def test_levers_apply_with_their_probability_and_repeat_under_a_seed(noisy_crops):
    files = noisy_crops
    twice = [_augmented(files, seed=5, greyscale=0.5, erasing=0.5, downscale=0.5, resized_crop=0.3, saturation=0.3)
             for _ in range(2)]
    np.testing.assert_array_equal(*twice)
    grey = [np.allclose(im[..., 0], im[..., 2]) for im in _augmented(files, seed=1, greyscale=0.5)]
    assert 0 < sum(grey) < len(grey)  # some greyscale, some in colour


def test_new_levers_leave_the_older_levers_draws_alone(noisy_crops):
    """The new levers draw from their own stream: turning one on changes only the images it
    touches, so an older flip / crop-jitter recipe keeps its exact draws."""
    old = dict(flip=True, crop_jitter=0.2, brightness=20.0, contrast=0.2)
    before = _augmented(noisy_crops, seed=2, **old)
    after = _augmented(noisy_crops, seed=2, **old, erasing=0.5)
    erased = np.array([np.any(np.all(im == 127.5, axis=-1)) for im in after])
    assert 0 < erased.sum() < len(erased)
    np.testing.assert_array_equal(before[~erased], after[~erased])


@pytest.mark.parametrize("levers, flag", [({"greyscale": 1.5}, "--greyscale"), ({"erasing": -0.1}, "--erasing"),
                                          ({"downscale_min": 0.0}, "--downscale-min")])
def test_out_of_range_lever_is_an_input_error_naming_the_flag(levers, flag):
    with pytest.raises(InputError, match=flag):
        AugmentSettings(**levers)


@requires_shared_data
def test_stratified_split_on_celeba_aligned_2760s_real_counts():
    """1,629 of its 2,760 people have two photos: they all train, and the holdout stays near 10 %
    of the people it can be drawn from instead of swelling with one photo of each small identity."""
    from utils.preprocess.datasets import scan_dataset

    counts = scan_dataset(SHARED_DATA_DIR / "celeba-aligned-2760").images_per_identity()
    labels = np.repeat(np.arange(len(counts)), sorted(counts.values()))
    train, held = stratified_split(labels, 0.1, seed=0)
    per_identity = np.bincount(labels, minlength=len(counts))
    held_per_identity = np.bincount(labels[held], minlength=len(counts))
    assert (held_per_identity[per_identity < 4] == 0).all() and (held_per_identity[per_identity >= 4] >= 1).all()
    # An identity that lends one keeps three or more to train on.
    assert (per_identity - held_per_identity)[held_per_identity > 0].min() >= 3
    assert held_per_identity.sum() == (per_identity >= 4).sum() and len(held) < 0.15 * len(labels)
