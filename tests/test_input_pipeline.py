"""File listing, holdout split and the tf.data pipeline on a small generated crops tree."""
import numpy as np
import pytest
from PIL import Image

from utils.input_pipeline import (AugmentSettings, InputError, list_crops, make_dataset, random_split,
                                  stratified_split)


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


def test_stratified_split_holds_out_every_identity_and_is_seeded():
    labels = np.repeat(np.arange(4), [2, 5, 10, 20])
    train, held = stratified_split(labels, 0.1, seed=0)
    assert sorted(np.concatenate([train, held]).tolist()) == list(range(len(labels)))
    assert np.bincount(labels[held]).tolist() == [1, 1, 1, 2]
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
