"""tf.data input pipeline for training on aligned crops.

Files are listed with the same discovery code preprocessing uses, filtered by images per
identity, split into a stratified seeded holdout, then streamed: parallel decode, optional
cache, shuffle, batch, prefetch. Images stay raw RGB in 0..255 (float32); the model
normalises them itself, so the exported model takes raw uint8 crops.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from utils.core.errors import IcyfaceError
from utils.core.recordio import RecordPack, is_pack
from utils.preprocess.datasets import scan_dataset


class InputError(IcyfaceError):
    """The crops folder cannot feed training as asked."""


@dataclass(frozen=True)
class FileList:
    classes: list[str]  # label -> identity folder (a pack: its identities.txt name, else the pack's label)
    paths: list  # absolute file paths; for a pack, image numbers in it
    labels: np.ndarray  # int32, one per path
    pack: RecordPack | None = None  # set when the images come from an insightface pack
    excluded: tuple[str, ...] = ()  # identities present but left out (list_* exclude=)


@dataclass(frozen=True)
class AugmentSettings:
    """Training-time augmentation; every field 0 / False is off (the seed's recipe)."""

    flip: bool = False
    crop_jitter: float = 0.0  # random crop keeping at least (1 - jitter) of each side, then resize back
    brightness: float = 0.0  # max delta, in pixel units (0..255)
    contrast: float = 0.0  # factor drawn from [1 - contrast, 1 + contrast]
    resized_crop: float = 0.0  # random box of [1 - resized_crop, 1] of the area, aspect 3/4..4/3, resized back
    saturation: float = 0.0  # factor drawn from [1 - saturation, 1 + saturation]
    greyscale: float = 0.0  # probability
    downscale: float = 0.0  # probability of shrinking to a factor in [downscale_min, 1] and back (blur)
    downscale_min: float = 0.35
    erasing: float = 0.0  # probability of one grey box of 2-25 % of the area (random erasing)

    def __post_init__(self):
        for name in ("crop_jitter", "contrast", "resized_crop", "saturation", "greyscale", "downscale", "erasing"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise InputError(f"--{name.replace('_', '-')} must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 < self.downscale_min <= 1.0:
            raise InputError(f"--downscale-min must be in (0, 1], got {self.downscale_min}")

    @property
    def any(self) -> bool:
        return any(getattr(self, f.name) for f in fields(self) if f.name != "downscale_min")


def _check_enough(kept: int, identities: int, img_morethan: int, where):
    if kept < 2:
        raise InputError(f"{kept} identities in {where} have more than {img_morethan} images "
                         f"(of {identities} identities); training needs at least 2: lower --img_morethan")


def list_training_images(folder: Path, img_morethan: int = 0, exclude=frozenset()) -> FileList:
    """A crops folder's images, or an insightface pack's (train.rec / train.idx / property)."""
    return list_pack(folder, img_morethan, exclude) if is_pack(folder) else list_crops(folder, img_morethan, exclude)


def list_pack(folder: Path, img_morethan: int = 0, exclude=frozenset()) -> FileList:
    """A pack's identities with more than img_morethan images, relabelled 0.. in label order.
    exclude: pack labels, or names from the pack's identities.txt (written by preprocess_data.py --pack)."""
    pack = RecordPack(folder)  # a PackError says what is wrong with it
    counts = np.bincount(pack.labels, minlength=pack.property.identities)
    names_file = Path(folder) / "identities.txt"
    names = names_file.read_text(encoding="utf-8").splitlines() if names_file.exists() else []

    def name_of(label: int) -> str:
        return names[label] if label < len(names) else str(label)

    excluded = []
    for label in range(len(counts)):
        if str(label) in exclude or name_of(label) in exclude:
            excluded.append(name_of(label))
            counts[label] = 0
    kept = np.flatnonzero(counts > img_morethan)
    _check_enough(len(kept), pack.property.identities, img_morethan, folder)
    new_label = np.full(len(counts), -1, np.int32)
    new_label[kept] = np.arange(len(kept), dtype=np.int32)
    labels = new_label[pack.labels]
    return FileList(classes=[name_of(label) for label in kept], paths=np.flatnonzero(labels >= 0),
                    labels=labels[labels >= 0], pack=pack, excluded=tuple(excluded))


def list_crops(crops_dir: Path, img_morethan: int = 0, exclude=frozenset()) -> FileList:
    """Identities with more than img_morethan crops and not in exclude, labelled in sorted folder order."""
    scan = scan_dataset(crops_dir)
    counts = scan.images_per_identity()
    classes = sorted(identity for identity, n in counts.items() if n > img_morethan and identity not in exclude)
    _check_enough(len(classes), len(counts), img_morethan, crops_dir)
    label_of = {c: i for i, c in enumerate(classes)}
    kept = [e for e in scan.entries if e.identity in label_of]
    return FileList(classes=classes, paths=[str(Path(crops_dir) / e.relpath) for e in kept],
                    excluded=tuple(sorted(identity for identity in counts if identity in exclude)),
                    labels=np.array([label_of[e.identity] for e in kept], dtype=np.int32))


def _check_fraction(val_fraction: float):
    if not 0.0 <= val_fraction < 1.0:
        raise InputError(f"--val_split must be in [0, 1), got {val_fraction}")


# The fewest images an identity needs to lend one to the holdout: 1-, 2- and 3-image people (most
# of celeba-aligned-2760) stay whole in training, where holding one out would take a third to a
# half of what the model learns them from and swell the holdout far past val_fraction.
MIN_IMAGES_TO_HOLD_OUT = 4


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, holdout): from each identity with MIN_IMAGES_TO_HOLD_OUT or more images,
    round(val_fraction * n) images held out (at least one when val_fraction > 0); identities with
    fewer are all training images."""
    _check_fraction(val_fraction)
    rng = np.random.default_rng(seed)
    train, held = [], []
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        rng.shuffle(idx)  # every identity draws, so one identity's size never changes another's split
        n_held = 0
        if val_fraction > 0 and len(idx) >= MIN_IMAGES_TO_HOLD_OUT:
            n_held = min(len(idx) - 1, max(1, int(round(val_fraction * len(idx)))))
        held.extend(idx[:n_held])
        train.extend(idx[n_held:])
    return np.sort(np.array(train, dtype=np.int64)), np.sort(np.array(held, dtype=np.int64))


def random_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, holdout): the seed's split, sklearn's train_test_split(test_size=val_fraction,
    random_state=seed) over all images, not per identity (ceil(val_fraction * n) held out)."""
    from sklearn.model_selection import train_test_split

    _check_fraction(val_fraction)
    indices = np.arange(len(labels), dtype=np.int64)
    if val_fraction == 0:
        return indices, indices[:0]
    train, held = train_test_split(indices, test_size=val_fraction, random_state=seed)
    return np.sort(train), np.sort(held)


def _augment(image, settings: AugmentSettings, input_size: int, seed):
    """Random augmentation drawn from `seed` (a [2] int tensor) alone: stateless ops, so the
    draws do not depend on which parallel call or in what order an element is augmented."""
    import tensorflow as tf

    keep_seed, crop_seed, flip_seed, brightness_seed, contrast_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 5))
    # The later levers draw from a second stream, so the first five keep their draws (older runs repeat).
    box_seed, saturation_seed, grey_seed, down_seed, erase_seed = tf.unstack(
        tf.random.experimental.stateless_split(tf.random.experimental.stateless_fold_in(seed, 1), 5))
    if settings.resized_crop:
        image = _random_resized_crop(image, settings.resized_crop, input_size, box_seed)
    if settings.crop_jitter:
        keep = tf.random.stateless_uniform([], keep_seed, 1.0 - settings.crop_jitter, 1.0)
        side = tf.cast(tf.round(keep * input_size), tf.int32)
        image = tf.image.stateless_random_crop(image, tf.stack([side, side, 3]), crop_seed)
        image = tf.image.resize(image, [input_size, input_size])
    if settings.flip:
        image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    if settings.downscale:
        image = _maybe(settings.downscale, down_seed,
                       lambda s: _down_and_up(image, settings.downscale_min, input_size, s), image)
    if settings.brightness:
        image = image + tf.random.stateless_uniform([], brightness_seed, -settings.brightness, settings.brightness)
    if settings.contrast:
        image = tf.image.stateless_random_contrast(image, 1.0 - settings.contrast, 1.0 + settings.contrast,
                                                   contrast_seed)
    if settings.saturation:
        image = tf.image.stateless_random_saturation(tf.clip_by_value(image, 0.0, 255.0), 1.0 - settings.saturation,
                                                     1.0 + settings.saturation, saturation_seed)
    if settings.greyscale:
        image = _maybe(settings.greyscale, grey_seed,
                       lambda _: tf.tile(tf.image.rgb_to_grayscale(image), [1, 1, 3]), image)
    if settings.erasing:
        image = _maybe(settings.erasing, erase_seed, lambda s: _erase_box(image, input_size, s), image)
    return tf.clip_by_value(image, 0.0, 255.0)


def _maybe(probability: float, seed, change, image):
    """change(seed') with the given probability, else the image unchanged (both drawn from seed)."""
    import tensorflow as tf

    coin_seed, change_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    apply = tf.random.stateless_uniform([], coin_seed) < probability
    return tf.cond(apply, lambda: change(change_seed), lambda: image)


def _box_sides(area, log_aspect, size: int):
    """Height and width (float, at most `size`) of a box of `area` (fraction) and aspect exp(log_aspect)."""
    import tensorflow as tf

    aspect = tf.exp(log_aspect)
    return tf.minimum(tf.sqrt(area * aspect), 1.0) * size, tf.minimum(tf.sqrt(area / aspect), 1.0) * size


def _random_resized_crop(image, scale: float, input_size: int, seed):
    """A box of [1 - scale, 1] of the area and aspect ratio 3/4..4/3 at a random place, resized to the input."""
    import tensorflow as tf

    area_seed, aspect_seed, place_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    area = tf.random.stateless_uniform([], area_seed, 1.0 - scale, 1.0)
    log_aspect = tf.random.stateless_uniform([], aspect_seed, np.log(3 / 4), np.log(4 / 3))
    height, width = _box_sides(area, log_aspect, 1)
    top, left = tf.unstack(tf.random.stateless_uniform([2], place_seed) * tf.stack([1.0 - height, 1.0 - width]))
    box = tf.reshape(tf.stack([top, left, top + height, left + width]), [1, 4])
    return tf.image.crop_and_resize(image[None], box, [0], [input_size, input_size])[0]


def _down_and_up(image, smallest: float, input_size: int, seed):
    """Shrunk to a side of [smallest, 1] x input_size (antialiased) and enlarged back: a softer, lower-resolution
    photo, as many LFW faces are."""
    import tensorflow as tf

    factor = tf.random.stateless_uniform([], seed, smallest, 1.0)
    side = tf.maximum(tf.cast(tf.round(factor * input_size), tf.int32), 2)
    small = tf.image.resize(image, tf.stack([side, side]), antialias=True)
    return tf.image.resize(small, [input_size, input_size])


def _erase_box(image, input_size: int, seed):
    """One box of 2-25 % of the area, aspect 0.3..3.3, filled with mid-grey (random erasing)."""
    import tensorflow as tf

    area_seed, aspect_seed, place_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    area = tf.random.stateless_uniform([], area_seed, 0.02, 0.25)
    log_aspect = tf.random.stateless_uniform([], aspect_seed, np.log(0.3), np.log(1 / 0.3))
    height, width = (tf.cast(tf.round(side), tf.int32) for side in _box_sides(area, log_aspect, input_size))
    place = tf.random.stateless_uniform([2], place_seed) * tf.cast(input_size - tf.stack([height, width]) + 1,
                                                                    tf.float32)
    top, left = tf.unstack(tf.cast(place, tf.int32))
    rows, cols = tf.range(input_size), tf.range(input_size)
    inside = (((rows >= top) & (rows < top + height))[:, None] & ((cols >= left) & (cols < left + width))[None, :])
    return tf.where(inside[:, :, None], 127.5, image)


def resize_like_training(image, input_size: int):
    """uint8/float [H, W, 3] (or a batch) -> float32 raw pixels at input_size, as training sees them."""
    import tensorflow as tf

    return tf.image.resize(tf.cast(image, tf.float32), [input_size, input_size], antialias=True)


class SkipCount:
    """How many crops of one pass over a file list could not be read or decoded (truncated,
    empty, not an image): make_dataset(skipped=...) drops them instead of failing.

    Exact, not an estimate: the crops of a pass are numbered before decoding and decoded in
    order (deterministic); after the failures are dropped, a sequential step counts the
    numbers that went missing, a chunk of crops at a time (per crop it would cost ~5x more
    CPU). An extra, file-less element closes each pass, so failures among its last crops are
    counted too. The counts are tf.Variables on the host CPU (where tf.data runs), updated
    by the pipeline itself."""

    def __init__(self):
        import tensorflow as tf

        self.total = 0  # crops in a pass, set by make_dataset
        with tf.device("/cpu:0"):
            self._last = tf.Variable(-1, dtype=tf.int64, trainable=False)  # number of the last crop seen
            self._running = tf.Variable(0, dtype=tf.int64, trainable=False)  # skipped so far in this pass
            self._finished = tf.Variable(-1, dtype=tf.int64, trainable=False)  # in the last complete pass

    def read_some_in_last_pass(self, total: int):
        """In a tf.data function: whether the last complete pass over `total` crops (or none yet)
        gave any crop at all."""
        return self._finished < total

    def last_pass(self) -> int | None:
        """Crops skipped in the last complete pass; None before a pass has completed."""
        value = int(self._finished.numpy())
        return None if value < 0 else value

    def _count(self, numbers, total: int):
        """Variable updates for a chunk of crops that came through, numbered in increasing
        order; number `total` is the file-less element that ends a pass."""
        import tensorflow as tf

        # A new pass began before the previous one was read to the end (an abandoned iterator).
        restarted = numbers[0] <= self._last
        last = tf.where(restarted, tf.constant(-1, tf.int64), self._last.read_value())
        running = tf.where(restarted, tf.constant(0, tf.int64), self._running.read_value())
        running += numbers[-1] - last - tf.size(numbers, out_type=tf.int64)  # numbers that went missing
        done = tf.equal(numbers[-1], total)
        return [self._finished.assign(tf.where(done, running, self._finished.read_value())),
                self._running.assign(tf.where(done, tf.zeros_like(running), running)),
                self._last.assign(tf.where(done, tf.constant(-1, tf.int64), numbers[-1]))]


def _pack_records(pack: RecordPack, ds):
    """(image number, label) elements -> (encoded image, label): the records' bytes come from the
    memory-mapped .rec (no file per image to open), read 64 at a time so Python is entered once
    per 64 images; decoding stays in TensorFlow, in parallel. An unreadable record gives b"",
    which the decoder then fails on, like an unreadable crop file."""
    import tensorflow as tf

    def read(numbers, labels):
        data = tf.numpy_function(lambda n: np.array(pack.read_many(n), dtype=object), [numbers], tf.string,
                                 stateful=False)
        return tf.ensure_shape(data, numbers.shape), labels

    return ds.batch(64).map(read, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).unbatch()


def decode_crop(encoded):
    """An encoded crop (PNG, JPEG, ...) -> uint8 [H, W, 3]."""
    import tensorflow as tf

    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def _source_table(paths, labels, pack: RecordPack | None):
    """(sources, labels, read) as tensors: a crops folder's file names (read when decoded; a file
    that cannot be read is then skipped and counted with the undecodable ones) or a pack's
    image numbers (read in batches by _pack_records)."""
    import tensorflow as tf

    labels = tf.constant(np.asarray(labels, dtype=np.int32))
    if pack is not None:
        return tf.constant(np.asarray(paths, np.int64)), labels, tf.identity
    # Paths as bytes: a numpy str array would hold 4 bytes per character (UTF-32) beside TF's
    # copy, which for CASIA's 494k paths costs more than the list itself; fsencode keeps file
    # names that are not UTF-8.
    return tf.constant([os.fsencode(p) for p in paths], dtype=tf.string), labels, tf.io.read_file


def _sources_in_order(table, pack: RecordPack | None, order=None):
    """The dataset of (source, label) of a _source_table, all in file order or those of `order`;
    for a pack the source is then the encoded image already."""
    import tensorflow as tf

    sources, labels, _ = table
    if order is not None:
        sources, labels = tf.gather(sources, order), tf.gather(labels, order)
    ds = tf.data.Dataset.from_tensor_slices((sources, labels))
    return _pack_records(pack, ds) if pack is not None else ds


def image_sources(paths, labels, pack: RecordPack | None = None):
    """(dataset of (source, label), read): read(source) is the encoded image."""
    table = _source_table(paths, labels, pack)
    return _sources_in_order(table, pack), table[2]


def pass_order(n: int, seed: int, number: int) -> np.ndarray:
    """The order of training pass `number` over n crops: a permutation drawn from (seed, number)
    alone, so any pass, and any element of it, is found again without replaying the ones before."""
    return np.random.default_rng([seed, number]).permutation(n)


def make_dataset(paths, labels, input_size: int, batch_size: int, training: bool,
                 augment: AugmentSettings = AugmentSettings(), cache: str = "", seed: int = 0,
                 skipped: SkipCount | None = None, repeat: bool = False, pack: RecordPack | None = None,
                 first_element: int = 0):
    """A tf.data.Dataset of (images float32 [B, S, S, 3] in 0..255, labels int32 [B]).

    pack: read the images from this insightface pack (paths are then image numbers in it).

    cache: "" (none), "ram", or a file path prefix. Training data is reshuffled every
    epoch from the seed; its last partial batch is dropped. skipped: drop crops that cannot
    be read or decoded and count them there (without it such a crop is an error, and every
    path gives exactly one image, in order). repeat: an endless stream of reshuffled passes.
    first_element: where a resumed run's training stream starts. The stream from there is the
    one an unbroken run sees from that element on: the same crops in the same order (each pass
    a permutation drawn from the seed and the pass's number; with a cache, tf.data's seeded
    reshuffles replayed from the cache) and the same augmentation draws (drawn per element).
    """
    import tensorflow as tf

    autotune = tf.data.AUTOTUNE
    table = _source_table(paths, labels, pack)
    read, n = table[2], len(paths)
    if skipped is not None:
        skipped.total = n

    def load(source, label):
        return resize_like_training(decode_crop(read(source)), input_size), label

    def decoded(sources, total):
        """Decoded crops of one pass of `total` sources, in their order."""
        if skipped is None:
            return sources.map(load, num_parallel_calls=autotune, deterministic=True)
        numbered = sources.enumerate().map(lambda number, sample: (number, *load(*sample)),
                                           num_parallel_calls=autotune, deterministic=True).ignore_errors()
        end = tf.data.Dataset.from_tensors((tf.constant(total, tf.int64), tf.zeros([input_size, input_size, 3]),
                                            tf.constant(0, tf.int32)))

        def count(numbers, images, labels):
            with tf.control_dependencies(skipped._count(numbers, total)):
                crops = numbers < total
                return tf.boolean_mask(images, crops), tf.boolean_mask(labels, crops)

        # A sequential map (no num_parallel_calls): the chunks are counted in order.
        return numbered.concatenate(end).batch(128).map(count).unbatch()

    if training and not cache:
        # Pass p visits the crops in pass_order(n, seed, p), so a run resumed at element k
        # starts its pass at k % n and sees exactly the batches an unbroken run would (when
        # every crop decodes: a crop skipped as unreadable shifts the passes after it).
        def one_pass(number, start=0):
            order = tf.numpy_function(lambda p: pass_order(n, seed, int(p))[start:], [number], tf.int64,
                                      stateful=False)
            return decoded(_sources_in_order(table, pack, tf.ensure_shape(order, [n - start])), n - start)

        first_pass, start = divmod(first_element, n)
        ds = one_pass(tf.constant(first_pass, tf.int64), start)
        if repeat:
            later = tf.data.Dataset.range(first_pass + 1, 2**62)
            if skipped is not None:  # as repeat() does, end after a pass that gave nothing (every crop unreadable)
                later = later.take_while(lambda _: skipped.read_some_in_last_pass(n))
            ds = ds.concatenate(later.flat_map(one_pass))
    else:
        ds = decoded(_sources_in_order(table, pack), n)
        if cache:
            ds = ds.cache("" if cache == "ram" else cache)
        if training:
            # A cached stream can only be read in order: tf.data's seeded reshuffles, replayed
            # from the cache up to a resumed run's first element (no decoding after the first pass).
            ds = ds.shuffle(min(n, 20_000), seed=seed, reshuffle_each_iteration=True)
        if repeat:
            ds = ds.repeat()
        if training and first_element:
            ds = ds.skip(first_element)
    if training and augment.any:
        # Element k of the stream (over every epoch) is augmented from (seed, k): a run repeats
        # exactly under the same --seed, however the parallel calls are scheduled.
        ds = ds.enumerate(start=first_element).map(
            lambda k, sample: (_augment(sample[0], augment, input_size, tf.stack([tf.cast(seed, tf.int64), k])),
                               sample[1]), num_parallel_calls=autotune, deterministic=True)
    return ds.batch(batch_size, drop_remainder=training).prefetch(autotune)
