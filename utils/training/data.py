"""What a run trains on: the crops folder checked and split, and the tf.data streams
(one part per host when several train together)."""
from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

from utils.core.recordio import is_pack
from utils.core.run_io import read_json
from utils.preprocess.face_alignment import AlignSettings
from utils.preprocess.input_pipeline import (
    AugmentSettings,
    FileList,
    SkipCount,
    list_training_images,
    make_dataset,
    random_split,
    stratified_split,
)
from utils.preprocess.settings import SETTINGS_NAME, PreprocessSettings
from utils.preprocess.shards import shard_settings_files
from utils.training.config import TrainConfig, TrainingError, expected_align
from utils.training.model import batch_structure, model_batch

SPLITS = {"seed": random_split, "stratified": stratified_split}


class Crops(NamedTuple):
    preprocess: dict  # the crops folder's preprocess.json
    files: FileList
    train_idx: np.ndarray
    val_idx: np.ndarray

    def stats(self, config: TrainConfig) -> dict:
        stats = {"identities": len(self.files.classes), "images": len(self.files.paths),
                 "train_images": int(len(self.train_idx)), "holdout_images": int(len(self.val_idx)),
                 "img_morethan": config.img_morethan}
        if config.exclude_identities:
            stats["excluded_identities"] = list(self.files.excluded)
        return stats


def preprocess_command(config: TrainConfig) -> str:
    """The preprocess_data.py command that makes the crops a recipe expects (its mode and size;
    --align parts writes all three part sets, so a part recipe names its crop size explicitly)."""
    mode = "parts" if config.align == "part" else config.align
    return f"python preprocess_data.py --align {mode} --crop-size {config.crop_size}"


def _read_preprocess(crops: Path, config: TrainConfig | None = None) -> dict:
    if not crops.is_dir():
        made_by = f"`{preprocess_command(config)}`" if config is not None else "preprocess_data.py"
        raise TrainingError(f"crops folder {crops} not found: make it with {made_by} (or pass --data-dir)")
    if not (crops / SETTINGS_NAME).exists():
        if shard_settings_files(crops):
            raise TrainingError(f"{crops} holds shards of a sharded preprocessing run: once every shard has "
                                f"finished, join them with preprocess_data.py --merge (same --input-dir and "
                                f"--output-dir)")
        raise TrainingError(f"{crops} has no {SETTINGS_NAME}, so it was not made by preprocess_data.py; "
                            f"training needs to know how the crops were aligned")
    preprocess = read_json(crops / SETTINGS_NAME)
    if preprocess.get("status") != "complete":
        raise TrainingError(f"preprocessing of {crops} has not finished (a run was interrupted?); rerun the "
                            f"same preprocess_data.py command to complete it")
    return preprocess


def _check_alignment(config: TrainConfig, found: AlignSettings, crops: Path):
    if config.input_size > found.crop_size:
        remake = (f"; the {config.preset} recipe's {config.crop_size} px crops come from "
                  f"`{preprocess_command(config)}`" if config.preset and found.crop_size < config.crop_size
                  else "")
        raise TrainingError(f"--input-size {config.input_size} is larger than the crops ({found.crop_size} px, "
                            f"{crops}); make crops at least that large or lower --input-size{remake}")
    # The mode, its geometry (old square margin crops are not the seed's) and, for part crops, the part.
    expected = expected_align(config)
    if (found.mode, found.geometry, found.part) != (expected.mode, expected.geometry, expected.part):
        def describe(align):
            part = f" {align.part}" if align.mode == "part" else ""
            return align.mode + part + (f" ({align.geometry} geometry)" if align.geometry else "")

        print(f"warning: the {config.preset} preset expects --align {describe(expected)} crops; {crops} holds "
              f"{describe(found)} crops", flush=True)


def _pack_preprocess(pack: Path) -> dict:
    """A pack packed here carries its crops' preprocess.json; one downloaded from insightface was
    aligned to the 112 px ArcFace (similarity) template, which validation then aligns LFW to."""
    if (pack / SETTINGS_NAME).exists():
        return _read_preprocess(pack)
    settings = PreprocessSettings(align=AlignSettings("similarity", 112))
    return {"status": "complete", "settings": settings.to_dict(),
            "source": "insightface pack: aligned to the 112 px similarity template (assumed, no preprocess.json)"}


def _exclusions(config: TrainConfig) -> frozenset:
    if not config.exclude_identities:
        return frozenset()
    from utils.preprocess.identity_overlap import read_exclusions

    try:
        return frozenset(read_exclusions(Path(config.exclude_identities)))
    except (OSError, UnicodeDecodeError) as err:
        raise TrainingError(f"cannot read --exclude-identities {config.exclude_identities}: {err}") from None


def load_crops(config: TrainConfig) -> Crops:
    """The crops folder's (or insightface pack's) settings and files, split into training and holdout."""
    crops = Path(config.data_dir)
    preprocess = _pack_preprocess(crops) if is_pack(crops) else _read_preprocess(crops, config)
    _check_alignment(config, AlignSettings.from_dict(preprocess["settings"]["align"]), crops)
    exclusions = _exclusions(config)
    files = list_training_images(crops, config.img_morethan, exclusions)  # InputError: too few identities...
    train_idx, val_idx = SPLITS[config.split](files.labels, config.val_split, config.seed)
    if exclusions and not files.excluded:
        print(f"warning: none of the {len(exclusions)} identities in {config.exclude_identities} is in {crops} "
              f"(folder names, or pack labels / identities.txt names, expected)", flush=True)
    if len(train_idx) < config.batch_size:
        raise TrainingError(f"{len(train_idx)} training images, fewer than one batch of {config.batch_size}")
    return Crops(preprocess, files, train_idx, val_idx)


class EpochPlan(NamedTuple):
    steps: int  # training steps per epoch
    batch_size: int
    order: np.ndarray | None  # identity batches: the training files' fixed order over every epoch


def plan_epochs(config: TrainConfig, crops: Crops, identity_batches: bool) -> EpochPlan:
    """Steps per epoch (the schedule needs them before the streams exist). Identity batches
    hold k images of p identities, reshuffled per epoch, so their order is fixed here."""
    if not identity_batches:
        return EpochPlan(len(crops.train_idx) // config.batch_size, config.batch_size, None)
    from utils.training.sampling import identity_batches as batches_of

    p = max(2, config.batch_size // config.images_per_identity)
    labels = crops.files.labels[crops.train_idx]
    epochs = [list(batches_of(labels, p, config.images_per_identity, config.seed, epoch))
              for epoch in range(config.epochs)]
    steps = min(len(e) for e in epochs)
    if steps == 0:
        raise TrainingError(f"not enough identities with {config.images_per_identity} images for triplet batches")
    return EpochPlan(steps, p * config.images_per_identity, np.concatenate([np.concatenate(e[:steps]) for e in epochs]))


def shape_batches(ds, model, teacher=None):
    """Route (images, labels) batches into the structure the training model expects. With
    teacher = (labels, vectors), the stream carries row numbers instead of labels, and each
    row's label and teacher vector are looked up here."""
    if teacher is not None:
        import tensorflow as tf

        labels, vectors = (tf.constant(table) for table in teacher)
        return ds.map(lambda images, rows: model_batch(model, images, tf.gather(labels, rows),
                                                       tf.gather(vectors, rows)))
    if batch_structure(model) == (False, None):  # images in, one output: no map stage needed
        return ds
    return ds.map(lambda images, labels: model_batch(model, images, labels))


def teacher_vectors(config: TrainConfig, crops: Crops, teacher) -> np.ndarray:
    """The teacher's vector of every crop (float32 [images, dimension], in crops.files' order),
    from the cache beside the crops, computed where it lacks them."""
    import os

    from utils.verify.teacher import TeacherError, teacher_embeddings

    if crops.files.pack is not None:
        raise TrainingError("--teacher needs a crops folder made by preprocess_data.py, not a pack")
    folder = Path(config.data_dir).resolve()
    try:
        cached = teacher_embeddings(folder, teacher)
    except TeacherError as err:
        raise TrainingError(str(err)) from None
    keys = [os.path.relpath(Path(p).resolve(), folder) for p in crops.files.paths]
    missing = [k for k in keys if k not in cached]
    if missing:
        raise TrainingError(f"{len(missing)} crops of {folder} are not in its manifest.csv (e.g. {missing[0]}); "
                            f"rerun preprocess_data.py on that folder")
    # Centred on the training crops' mean: a face model's vectors share a common direction (dlib's
    # cosine between two faces averages ~0.84), so raw targets would reward that direction more than
    # what tells people apart. Cosines of the centred vectors average ~0.
    vectors = np.stack([cached[k] for k in keys]).astype(np.float32)
    vectors -= vectors[crops.train_idx].mean(axis=0)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


class Streams(NamedTuple):
    # first step -> the training stream from that step of the run on (a tf.data.Dataset, or a
    # distributed one): a resumed run continues where its backup stopped, mid-epoch included.
    train_from: Callable[[int], object]
    holdout: object | None
    holdout_steps: int | None  # fixed when several hosts must run the same number of holdout steps
    train_skips: SkipCount
    holdout_skips: SkipCount | None


def augment_settings(config: TrainConfig) -> AugmentSettings:
    """The augmentation the config asks for; a value out of range is an InputError naming the flag."""
    return AugmentSettings(**config.settings_for(f.name for f in fields(AugmentSettings)))


def make_streams(config: TrainConfig, crops: Crops, model, plan: EpochPlan, strategy, task,
                 teacher: np.ndarray | None = None) -> Streams:
    """The endless training stream and the holdout stream. Unreadable crops are dropped and
    counted (SkipCount), not fatal; the training stream repeats, so fit's fixed steps per epoch
    never run out when some are dropped.

    From step n, both continue exactly where an unbroken run would be: identity batches in
    the planned order, shuffled passes at element n * batch with the same order and
    augmentation draws (make_dataset's first_element)."""
    from utils.training.distribute import distribute

    paths = np.asarray(crops.files.paths, dtype=object)  # not a fixed-width UTF-32 array: 494k paths
    labels, train_idx, val_idx = crops.files.labels, crops.train_idx, crops.val_idx
    lookup = None
    if teacher is not None:  # the streams carry row numbers; shape_batches looks up labels and teacher vectors
        lookup, labels = (labels, teacher), np.arange(len(paths), dtype=np.int32)
    train_skips = SkipCount()
    if plan.order is not None:  # identity batches, in the planned order (not shuffled)
        def train_from(first_step: int):
            mine = train_idx[plan.order[first_step * plan.batch_size:]]
            return shape_batches(make_dataset(paths[mine], labels[mine], config.input_size, plan.batch_size,
                                              training=False, seed=config.seed, skipped=train_skips,
                                              pack=crops.files.pack).repeat(), model, lookup)
    else:
        augment = augment_settings(config)

        def train_from(first_step: int):
            def training_part(part, parts, batch_size):
                # Several hosts: each decodes only every parts-th training file, from its own cache.
                mine = train_idx[part::parts]
                cache = (config.cache if parts == 1 or config.cache in ("", "ram")
                         else f"{config.cache}.{part}-of-{parts}")
                return shape_batches(make_dataset(paths[mine], labels[mine], config.input_size, batch_size,
                                                  training=True, augment=augment, cache=cache, seed=config.seed,
                                                  skipped=train_skips, repeat=True, pack=crops.files.pack,
                                                  first_element=first_step * batch_size), model, lookup)

            return distribute(strategy, training_part, config.batch_size)
    if not len(val_idx):
        return Streams(train_from, None, None, train_skips, None)
    holdout_skips = SkipCount()

    def holdout_part(part, parts, batch_size):
        # Several hosts must run the same number of holdout steps (their collectives pair
        # up), so their parts repeat and validation_steps is fixed below.
        mine = val_idx[part::parts]
        return shape_batches(make_dataset(paths[mine], labels[mine], config.input_size, batch_size,
                                          training=False, skipped=holdout_skips, repeat=task is not None,
                                          pack=crops.files.pack), model, lookup)

    holdout = distribute(strategy, holdout_part, config.batch_size)
    holdout_steps = max(1, len(val_idx) // config.batch_size) if task is not None else None
    return Streams(train_from, holdout, holdout_steps, train_skips, holdout_skips)
