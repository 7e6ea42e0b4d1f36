"""LFW for the newcomer demo: fetched with scikit-learn's downloader, split into people to
train on and pairs of people never trained on.

scikit-learn caches LFW as <data_home>/lfw_home/{lfw_funneled/<Name>/<Name>_NNNN.jpg, pairs.txt,
pairsDevTrain.txt, pairsDevTest.txt}; where all of it is already there, nothing is downloaded.
"""
from __future__ import annotations

import csv
import shutil
from dataclasses import dataclass
from pathlib import Path

from utils.core.errors import IcyfaceError
from utils.preprocess.datasets import scan_dataset
from utils.verify.pair_files import PairList, read_lfw_pairs

SKLEARN_HOME = "lfw_home"
SKLEARN_IMAGES = "lfw_funneled"


class LFWDataError(IcyfaceError):
    """LFW cannot be found or fetched, or has too few people for the split asked for."""


@dataclass(frozen=True)
class LFWSource:
    images: Path  # <Name>/<Name>_NNNN.jpg
    pairs: Path  # View 2 pairs.txt


def fetch_with_sklearn(data_home: Path | None, min_faces_per_person: int,
                       download: bool = True) -> tuple[LFWSource, list[str]]:
    """LFW through sklearn.datasets.fetch_lfw_people (downloading into data_home when
    missing and allowed), and the people with at least min_faces_per_person images."""
    from sklearn.datasets import fetch_lfw_people, get_data_home

    data_home = None if data_home is None else str(data_home)
    home = Path(get_data_home(data_home)) / SKLEARN_HOME
    try:
        # Small resize: the arrays are not used, only the selection of people; the raw
        # images are aligned by this project's own preprocessing.
        people = fetch_lfw_people(data_home=data_home, min_faces_per_person=min_faces_per_person, resize=0.1,
                                  download_if_missing=download)
    except OSError as err:
        how = "downloading is off (--offline)" if not download else "the download failed"
        raise LFWDataError(f"LFW is not in {home} and {how}: {err}. Point --data-home at a scikit-learn "
                           f"cache or --lfw-dir at an lfw/ tree with pairs.txt") from None
    except ValueError as err:  # sklearn: no person has that many images
        raise LFWDataError(f"LFW in {home}: {err}") from None
    # sklearn turns the folder name's underscores into spaces.
    names = sorted({name.replace(" ", "_") for name in people.target_names})
    return LFWSource(home / SKLEARN_IMAGES, home / "pairs.txt"), names


def people_with(images: Path, min_faces_per_person: int) -> list[str]:
    """Identity folders of an lfw/ tree holding at least min_faces_per_person images."""
    counts = scan_dataset(images).images_per_identity()
    return sorted(name for name, n in counts.items() if n >= min_faces_per_person)


def unseen_pairs(pairs: PairList, trained: set[str]) -> tuple[PairList, int]:
    """The pairs in which neither person is in `trained` (folds kept), and how many were dropped."""
    keep = [i for i, (a, b) in enumerate(zip(pairs.path_a, pairs.path_b))
            if Path(a).parent.name not in trained and Path(b).parent.name not in trained]
    subset = PairList([pairs.path_a[i] for i in keep], [pairs.path_b[i] for i in keep], pairs.same[keep],
                      pairs.fold[keep])
    return subset, len(pairs) - len(keep)


def copy_people(images: Path, people: list[str], dest: Path):
    """Copy the folders of these people (the raw training tree)."""
    for name in people:
        shutil.copytree(images / name, dest / name, dirs_exist_ok=True)


def write_pairs_tree(pairs: PairList, images: Path, dest: Path, csv_path: Path):
    """Copy every image the pairs use into dest (same layout) and write csv_path:
    path_a,path_b,same,fold relative to dest, LFW's own folds kept."""
    for image in pairs.images:
        target = dest / Path(image).relative_to(images)
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            shutil.copyfile(image, target)
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(["path_a", "path_b", "same", "fold"])
        for a, b, same, fold in zip(pairs.path_a, pairs.path_b, pairs.same, pairs.fold):
            out.writerow([Path(a).relative_to(images).as_posix(), Path(b).relative_to(images).as_posix(),
                          int(same), int(fold)])


def claim_split(record: Path, split: dict):
    """Write the split to record, or check a work folder's earlier split is this same one."""
    from utils.core.run_io import read_json, write_json

    if record.exists():
        earlier = read_json(record)
        if earlier != split:
            raise LFWDataError(f"{record.parent} was made for another split ({len(earlier['trained_people'])} "
                               f"people trained on, from {earlier['lfw']}); choose another --work-dir or "
                               f"delete it")
        return
    record.parent.mkdir(parents=True, exist_ok=True)
    write_json(record, split)


def demo_split(source: LFWSource, trained_people: list[str]) -> tuple[PairList, int]:
    """Read the source's pairs and keep those of people not trained on."""
    if not source.pairs.exists():
        raise LFWDataError(f"{source.pairs} not found: LFW's View 2 pairs.txt must sit beside the images")
    pairs = read_lfw_pairs(source.pairs, source.images)
    held_out, dropped = unseen_pairs(pairs, set(trained_people))
    if not held_out.same.any() or held_out.same.all():
        raise LFWDataError(f"only {len(held_out)} pairs of untrained people are left, not both kinds: "
                           f"raise --min-faces-per-person")
    return held_out, dropped
