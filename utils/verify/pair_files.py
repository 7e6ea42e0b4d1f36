"""Pair lists: the files that say which two images to compare and whether they show one person.

Three formats: LFW View 2 ``pairs.txt``, a CSV of ``path_a,path_b,same[,fold]``, and insightface
verification ``.bin`` pickles (pre-aligned images, loaded by a restricted unpickler). Each pair
belongs to a fold; utils.verify.pair_metrics chooses every threshold on the other folds.

No TensorFlow import, so reading a pair list stays cheap.
"""
from __future__ import annotations

import csv
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from utils.core.errors import IcyfaceError

try:  # numpy >= 2 moved its internals to numpy._core; 1.26 only has numpy.core
    from numpy._core import multiarray as _np_multiarray
    from numpy._core import numeric as _np_numeric
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _np_multiarray
    from numpy.core import numeric as _np_numeric

STANDARD_FOLDS = 10
MISSING_SHOWN = 20  # how many missing paths the error message spells out


class PairsFormatError(IcyfaceError, ValueError):
    """A pairs file (pairs.txt, CSV or .bin) is not in the expected format."""


class MissingImagesError(IcyfaceError, FileNotFoundError):
    """Images named by a pairs file are absent; ``missing`` lists every one of them."""

    def __init__(self, missing: list[str]):
        self.missing = list(missing)
        shown = "\n  ".join(self.missing[:MISSING_SHOWN])
        more = len(self.missing) - MISSING_SHOWN
        tail = f"\n  ... and {more} more" if more > 0 else ""
        super().__init__(f"{len(self.missing)} image(s) named by the pairs file are missing:\n  {shown}{tail}")


class PairsNotFoundError(IcyfaceError, FileNotFoundError):
    """A pairs file, or the LFW images it names, is not where the command line says."""


def check_pair_sets(lfw_dir: Path, pair_sets) -> None:
    """Each pairs file exists, and --lfw-dir is a folder for those that name its images (all but
    .bin sets, which hold their own crops). Cheap: a CLI calls it before any model loads."""
    for pairs in map(Path, pair_sets):
        if not pairs.is_file():
            raise PairsNotFoundError(f"pairs file {pairs} not found: LFW's View 2 pairs.txt goes in the --lfw-dir "
                                     f"folder ({lfw_dir}), or pass --pairs")
        if pairs.suffix != ".bin" and not Path(lfw_dir).is_dir():
            raise PairsNotFoundError(f"LFW images not found in {lfw_dir}: put the official "
                                     f"lfw/<Name>/<Name>_NNNN.jpg tree there or pass --lfw-dir")


@dataclass
class PairList:
    path_a: list[str]
    path_b: list[str]
    same: np.ndarray  # bool, one per pair
    fold: np.ndarray  # int, 0..n_folds-1, in file order

    def __len__(self) -> int:
        return len(self.path_a)

    @property
    def images(self) -> list[str]:
        """Every image the pairs use, once each, sorted: embed these, then look pairs up."""
        return sorted(set(self.path_a) | set(self.path_b))


# ---------------------------------------------------------------------------------------------
# LFW pairs.txt and CSV
# ---------------------------------------------------------------------------------------------

def contiguous_folds(n_pairs: int, n_folds: int = STANDARD_FOLDS) -> np.ndarray:
    """Fold index per pair: n_folds consecutive blocks in file order.

    Block sizes differ by at most one, the first ``n_pairs % n_folds`` blocks being the larger,
    which is what the insightface evaluation (sklearn KFold without shuffling) uses.
    """
    if n_pairs < n_folds:
        raise ValueError(f"{n_pairs} pairs cannot be split into {n_folds} folds")
    sizes = np.full(n_folds, n_pairs // n_folds)
    sizes[: n_pairs % n_folds] += 1
    return np.repeat(np.arange(n_folds), sizes)


def _line_error(path, lineno: int, line: str, problem: str) -> PairsFormatError:
    return PairsFormatError(f"{path}, line {lineno}: {problem}: {line!r}")


def _positive_int(text: str) -> int | None:
    return int(text) if text.isascii() and text.isdigit() and int(text) > 0 else None


def _require_images(pairs: PairList) -> PairList:
    missing = [p for p in pairs.images if not os.path.isfile(p)]
    if missing:
        raise MissingImagesError(missing)
    return pairs


def read_lfw_pairs(pairs_path, image_root, ext: str = ".jpg") -> PairList:
    """Read an LFW View 2 ``pairs.txt`` and check that every image it names exists.

    The first line holds the fold count and the pairs per class per fold (``10 300``); each fold
    is then that many matched lines ``name n1 n2`` followed by as many mismatched lines
    ``name1 n1 name2 n2``. Image n of a person is ``<image_root>/<name>/<name>_<nnnn><ext>``.
    Blank lines are ignored. Raises PairsFormatError naming the offending line, or
    MissingImagesError listing every absent image.
    """
    lines = [(no, line) for no, line in enumerate(Path(pairs_path).read_text().splitlines(), 1) if line.strip()]
    if not lines:
        raise PairsFormatError(f"{pairs_path}: the file is empty")
    header_no, header = lines[0]
    fields = header.split()
    counts = [_positive_int(f) for f in fields]
    if len(counts) != 2 or None in counts:
        raise _line_error(pairs_path, header_no, header, "the header must be two positive integers 'folds pairs'")
    n_folds, per_class = counts
    body = lines[1:]
    expected = n_folds * 2 * per_class

    def image(no, line, name, number_text):
        number = _positive_int(number_text)
        if number is None:
            raise _line_error(pairs_path, no, line, f"image number {number_text!r} is not a positive integer")
        return str(Path(image_root) / name / f"{name}_{number:04d}{ext}")

    path_a, path_b, same = [], [], []
    for index, (no, line) in enumerate(body):
        if index >= expected:
            raise _line_error(pairs_path, no, line, f"more pairs than the header's {n_folds} folds x 2 x {per_class}")
        position = index % (2 * per_class)  # within the fold: matched pairs first, then mismatched
        matched = position < per_class
        fields = line.split()
        if (matched and len(fields) == 4) or (not matched and len(fields) == 3):
            wanted, found = ("matched", "mismatched") if matched else ("mismatched", "matched")
            raise _line_error(pairs_path, no, line, f"expected a {wanted} pair here (pair {position + 1} of its fold),"
                                                    f" found a {found} one")
        if len(fields) not in (3, 4):
            raise _line_error(pairs_path, no, line, f"expected {3 if matched else 4} fields, found {len(fields)}")
        name_a, number_a, name_b, number_b = fields if not matched else (fields[0], fields[1], fields[0], fields[2])
        path_a.append(image(no, line, name_a, number_a))
        path_b.append(image(no, line, name_b, number_b))
        same.append(matched)
    if len(body) < expected:
        no, line = lines[-1]
        raise _line_error(pairs_path, no, line,
                          f"the file ends after {len(body)} pairs; the header promises {expected}")
    fold = np.repeat(np.arange(n_folds), 2 * per_class)
    return _require_images(PairList(path_a, path_b, np.array(same, dtype=bool), fold))


_SAME_TOKENS = {"1": True, "true": True, "0": False, "false": False}


def read_csv_pairs(csv_path, image_root=None) -> PairList:
    """Read a CSV of ``path_a,path_b,same[,fold]`` rows and check that every image exists.

    ``same`` is 1/0/true/false (any case). The first row is taken as a header when its third
    field is not such a value. Relative paths are resolved against ``image_root``, or the CSV's
    own folder when none is given. ``fold`` (an integer, on every row or none) keeps a given
    split, e.g. LFW's folds for a subset of its pairs; without it, folds are STANDARD_FOLDS
    contiguous blocks in file order (see contiguous_folds), so list pairs interleaved or
    shuffled, not all matched pairs first: otherwise a fold holds one class only and
    utils.verify.pair_metrics.evaluate_pairs refuses it.
    """
    base = Path(image_root) if image_root is not None else Path(csv_path).parent
    path_a, path_b, same, folds = [], [], [], []
    # utf-8-sig: spreadsheet exports often start with a byte-order mark
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        first_row = True
        for row in reader:
            if not any(field.strip() for field in row):
                continue
            line = ",".join(row)
            if len(row) not in (3, 4):
                raise _line_error(csv_path, reader.line_num, line,
                                  f"expected 3 or 4 fields (path_a,path_b,same[,fold]), found {len(row)}")
            token = row[2].strip().lower()
            is_header = first_row and token not in _SAME_TOKENS
            first_row = False
            if is_header:
                continue
            if token not in _SAME_TOKENS:
                raise _line_error(csv_path, reader.line_num, line,
                                  f"'same' must be 1, 0, true or false, not {row[2]!r}")
            if same and (len(row) == 4) != bool(folds):
                raise _line_error(csv_path, reader.line_num, line, "give a fold on every row or on none")
            if len(row) == 4:
                fold = row[3].strip()
                if not (fold.isascii() and fold.isdigit()):
                    raise _line_error(csv_path, reader.line_num, line, f"fold {row[3]!r} is not an integer >= 0")
                folds.append(int(fold))
            path_a.append(str(base / row[0].strip()))
            path_b.append(str(base / row[1].strip()))
            same.append(_SAME_TOKENS[token])
    if not same:
        raise PairsFormatError(f"{csv_path}: no pairs")
    fold = np.array(folds) if folds else contiguous_folds(len(same))
    return _require_images(PairList(path_a, path_b, np.array(same, dtype=bool), fold))


# ---------------------------------------------------------------------------------------------
# insightface .bin verification sets
# ---------------------------------------------------------------------------------------------

def _latin1_encode(text: str, encoding: str) -> bytes:
    # Protocols 0-2 store bytes as _codecs.encode(text, "latin1"); no other codec is needed.
    if encoding != "latin1":
        raise pickle.UnpicklingError(f"refused _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


# Every global that pickles of (list of image bytes, bools or a numpy bool array) need, across
# protocols 0-5, both numpy 1 (numpy.core) and numpy 2 (numpy._core) module names, as found by
# pickling such tuples and logging find_class. Python 2 pickles say __builtin__ for builtins.
_ALLOWED_GLOBALS = {
    ("_codecs", "encode"): _latin1_encode,  # bytes, protocols 0-2
    ("builtins", "bytes"): bytes,  # empty bytes, protocols 0-2
    ("builtins", "bytearray"): bytearray,  # bytearray, protocols 0-4
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    **{(f"numpy.{core}.multiarray", "_reconstruct"): _np_multiarray._reconstruct for core in ("core", "_core")},
    **{(f"numpy.{core}.multiarray", "scalar"): _np_multiarray.scalar for core in ("core", "_core")},  # np.bool_
    **{(f"numpy.{core}.numeric", "_frombuffer"): _np_numeric._frombuffer for core in ("core", "_core")},  # proto 5
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that only builds bytes, lists, tuples, bools and numpy arrays.

    A pickle can call any importable function while loading; a downloaded .bin must not be
    able to. Anything outside _ALLOWED_GLOBALS raises UnpicklingError naming the global, before
    it is imported. This prevents code execution, not resource exhaustion: a pickle can always
    ask for a lot of memory.
    """

    def find_class(self, module, name):
        module = "builtins" if module == "__builtin__" else module
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused to load global {module}.{name}: not needed by a "
                                         "verification .bin, and it could run code") from None


def as_bool_array(values, what: str) -> np.ndarray:
    """bool, or integers that are all 0/1, as a 1-D bool array; anything else is an error."""
    array = np.asarray(values)
    if array.ndim != 1 or not (array.dtype == bool or array.dtype.kind in "iu" and np.isin(array, (0, 1)).all()):
        raise ValueError(f"{what} must be a 1-D sequence of booleans (or 0/1), got dtype {array.dtype}, "
                         f"shape {array.shape}")
    return array.astype(bool)


def _encoded_image(item, index: int, bin_path) -> bytes:
    if isinstance(item, (bytes, bytearray)):
        return bytes(item)
    # some converters store cv2.imencode output: a 1-D uint8 array
    if isinstance(item, np.ndarray) and item.dtype == np.uint8 and item.ndim == 1:
        return item.tobytes()
    raise PairsFormatError(f"{bin_path}: image {index} is {type(item).__name__}, not encoded image bytes")


def read_bin_pairs(bin_path) -> tuple[list[bytes], np.ndarray]:
    """Load an insightface verification .bin (LFW, CFP-FP, AgeDB-30, CALFW, CPLFW...).

    The file is a pickle of ``(encoded_images, issame)``; pair i is images 2i and 2i+1. Returns the
    encoded bytes (decoding is the caller's business) and issame as a bool array. Loaded with
    RestrictedUnpickler, so a hostile file raises UnpicklingError instead of running code. The
    standard protocol splits the pairs into contiguous_folds(len(issame)).
    """
    with open(bin_path, "rb") as f:
        # encoding="bytes": sets written by Python 2 hold images as str, which must stay bytes
        loaded = RestrictedUnpickler(f, encoding="bytes").load()
    if not isinstance(loaded, (tuple, list)) or len(loaded) != 2:
        raise PairsFormatError(f"{bin_path}: expected a pickled (images, issame) pair, got {type(loaded).__name__}")
    images, issame = loaded
    try:
        same = as_bool_array(issame, "issame")
    except ValueError as e:
        raise PairsFormatError(f"{bin_path}: {e}") from None
    if not isinstance(images, (list, tuple)) or len(images) != 2 * len(same):
        count = len(images) if isinstance(images, (list, tuple)) else type(images).__name__
        raise PairsFormatError(f"{bin_path}: {len(same)} pairs need {2 * len(same)} images, found {count}")
    return [_encoded_image(item, i, bin_path) for i, item in enumerate(images)], same


# ---------------------------------------------------------------------------------------------
# Any pairs file
# ---------------------------------------------------------------------------------------------

def read_pairs(pairs_path, image_root) -> PairList:
    """A CSV (by its .csv suffix) or an LFW pairs.txt (anything else) over images under image_root."""
    if Path(pairs_path).suffix == ".csv":
        return read_csv_pairs(pairs_path, image_root)
    return read_lfw_pairs(pairs_path, image_root)


def pair_rows(pairs: PairList) -> tuple[list[int], list[int]]:
    """Rows of pairs.path_a / pairs.path_b in the per-image list pairs.images."""
    index = {image: i for i, image in enumerate(pairs.images)}
    return [index[p] for p in pairs.path_a], [index[p] for p in pairs.path_b]
