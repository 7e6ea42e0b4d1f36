"""Discovery of folder-per-identity datasets: <root>/<identity>/<image>.

Used by preprocessing (raw photos) and training (aligned crops) alike, so both agree on
what counts as an image and in which order images come.
"""
from __future__ import annotations

import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from utils.core.errors import IcyfaceError
from utils.core.run_io import is_inside

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff",
                              ".ppm", ".pgm", ".pbm"})
LAYOUT = "<dir>/<person>/<photo>.jpg"
LOOSE_FILE = "file outside any identity folder"  # DatasetScan.ignored's reason for a file in the root


class DatasetError(IcyfaceError):
    """The dataset folder is missing, empty or not in the expected layout."""


@dataclass(frozen=True)
class ImageEntry:
    identity: str
    relpath: str  # POSIX path relative to the dataset root: "<identity>/<file name>"
    problem: str = ""  # set when discovery already knows the entry cannot be read

    @property
    def name(self) -> str:
        return self.relpath.rsplit("/", 1)[1]


@dataclass
class DatasetScan:
    root: Path
    entries: list[ImageEntry] = field(default_factory=list)
    ignored: list[tuple[str, str]] = field(default_factory=list)  # (relative path, why)

    @property
    def identities(self) -> list[str]:
        return sorted({e.identity for e in self.entries})

    def images_per_identity(self) -> Counter:
        return Counter(e.identity for e in self.entries)


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def loose_photos(scan: DatasetScan) -> list[str]:
    """Image-named files lying directly in the scanned root, outside any per-person folder."""
    return [rel for rel, why in scan.ignored if why == LOOSE_FILE and is_image_name(rel)]


def no_images_message(scan: DatasetScan) -> str:
    """Why a scan found no images, in one line: photos lying directly in the root (no per-person
    sub-folders) are named as such; otherwise no images at all."""
    loose = loose_photos(scan)
    if loose:
        return (f"no per-person sub-folders in {scan.root}: put each person's photos in a folder of their own "
                f"({scan.root}/<person>/<photo>.jpg); found {len(loose)} photo{'s' if len(loose) > 1 else ''} "
                f"directly in it, e.g. {loose[0]}")
    return f"no images found in {scan.root}"


def scan_dataset(root: Path) -> DatasetScan:
    """List every image-named entry under root/<identity>/, sorted by identity then name.

    Entries named like images are returned even when they are not readable files
    (directories, broken links, links leaving the tree): the caller records them as
    errors instead of silently dropping user data. Hidden names are skipped.
    """
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise DatasetError(f"{root} is a file, not a dataset folder: pass the folder that holds one sub-folder "
                           f"of photos per person ({LAYOUT})")
    if not root.is_dir():
        raise DatasetError(f"dataset folder not found: {root}")
    scan = DatasetScan(root=root)
    with os.scandir(root) as top:
        top_entries = sorted(top, key=lambda e: e.name)
    for ident in top_entries:
        if ident.name.startswith("."):
            continue
        try:
            is_folder = ident.is_dir()
        except OSError as err:  # a link loop, for one
            scan.ignored.append((ident.name, f"cannot read entry: {err.strerror}"))
            continue
        if not is_folder:
            scan.ignored.append((ident.name, LOOSE_FILE))
            continue
        if ident.is_symlink() and not is_inside(ident.path, root):
            scan.ignored.append((ident.name, "identity folder is a link leaving the input tree"))
            continue
        try:
            with os.scandir(ident.path) as inner:
                files = sorted(inner, key=lambda e: e.name)
        except OSError as err:
            scan.ignored.append((ident.name, f"cannot list identity folder: {err.strerror}"))
            continue
        for entry in files:
            rel = f"{ident.name}/{entry.name}"
            if entry.name.startswith("."):
                continue
            if not is_image_name(entry.name):
                scan.ignored.append((rel, "not named like an image"))
                continue
            problem = ""
            if entry.is_symlink() and not is_inside(entry.path, root):
                problem = "link leaving the input tree (not followed)"
            scan.entries.append(ImageEntry(ident.name, rel, problem))
    return scan


def copy_sample(source: Path, dest: Path, count: int, per_identity: int | None = None,
                identities: int | None = None) -> list[ImageEntry]:
    """Copy a fixed sample of a dataset into dest (same tree): every k-th image of the
    sorted listing, optionally from the first `identities` people only and at most
    per_identity images per person. Deterministic, so tests and benchmarks see the same
    images on every run."""
    entries = scan_dataset(source).entries
    if identities is not None:
        keep = set(sorted({e.identity for e in entries})[:identities])
        entries = [e for e in entries if e.identity in keep]
    if per_identity is not None:
        seen = Counter()
        kept = []
        for e in entries:
            if seen[e.identity] < per_identity:
                seen[e.identity] += 1
                kept.append(e)
        entries = kept
    picked = entries[:: max(1, len(entries) // count)][:count]
    for e in picked:
        target = Path(dest) / e.relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(source) / e.relpath, target)
    return picked
