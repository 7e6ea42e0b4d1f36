"""insightface's training packs (train.rec + train.idx + property), read and written without MXNet.

The format is dmlc-core's RecordIO: each record is the magic word 0xced7230a, a length word
(upper 3 bits: part flag, lower 29: length), the payload, and zero padding to 4 bytes. A payload
that holds the magic at a 4-byte boundary is split there into parts (flag 1 first, 2 middle, 3
last; the magic itself is dropped and restored on reading). train.idx maps a record number to its
byte offset ("number<TAB>offset" lines); property is "identities,height,width".

Each image record's payload is an IRHeader (flag, label, id, id2: uint32, float32, uint64,
uint64), then `flag` more float32 labels when flag > 0, then the encoded image. insightface's
record 0 has flag 2 and labels (first identity record, end of identity records); images are
records 1 .. first-1, and identity record k's labels are (first image, end image) of identity
k - first. Everything here is checked when a pack is opened, so a bad pack is one clear error
before training starts, never a crash or a silent mislabel mid-epoch.
"""
from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from utils.core.errors import IcyfaceError
from utils.core.run_io import replaced_atomically

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_LENGTH_BITS = 29
_HEADER = struct.Struct("<IfQQ")  # flag, label, id, id2
PACK_FILES = ("train.rec", "train.idx", "property")


class PackError(IcyfaceError):
    """The folder is not a readable insightface pack; the message names the file and what is wrong."""


def is_pack(folder: Path) -> bool:
    return (Path(folder) / "train.rec").is_file() or (Path(folder) / "train.idx").is_file()


def encode_record(payload: bytes) -> bytes:
    """One RecordIO record (split into parts wherever the payload holds the magic at a 4-byte boundary)."""
    parts, start = [], 0
    for at in range(0, len(payload) - len(payload) % 4, 4):
        if payload[at:at + 4] == _MAGIC_BYTES:
            parts.append(payload[start:at])
            start = at + 4
    parts.append(payload[start:])
    out = bytearray()
    for i, part in enumerate(parts):
        flag = 0 if len(parts) == 1 else 1 if i == 0 else 3 if i == len(parts) - 1 else 2
        out += _MAGIC_BYTES + struct.pack("<I", (flag << _LENGTH_BITS) | len(part)) + part
    out += bytes(-len(out) % 4)
    return bytes(out)


def decode_record(data, offset: int) -> bytes:
    """The payload of the record at `offset` of `data` (bytes or mmap), parts joined."""
    payload, expected = bytearray(), (0, 1)
    while True:
        if offset + 8 > len(data):
            raise PackError(f"a record at byte {offset} runs past the end of the file (truncated?)")
        magic, word = struct.unpack_from("<II", data, offset)
        if magic != MAGIC:
            raise PackError(f"no record starts at byte {offset} (magic {magic:#010x}, not {MAGIC:#010x})")
        flag, length = word >> _LENGTH_BITS, word & ((1 << _LENGTH_BITS) - 1)
        if flag not in expected:
            raise PackError(f"a record part at byte {offset} has flag {flag}, expected one of {expected}")
        end = offset + 8 + length
        if end > len(data):
            raise PackError(f"the record at byte {offset} needs {length} bytes, the file ends first (truncated?)")
        if flag == 0:  # one part, nearly every record: its bytes as they are
            return bytes(data[offset + 8:end])
        if flag in (2, 3):  # a later part: the magic it was split at comes back first
            payload += _MAGIC_BYTES
        payload += data[offset + 8:end]
        if flag == 3:
            return bytes(payload)
        offset, expected = end + (-length % 4), (2, 3)


def pack_header(label, number: int = 0) -> bytes:
    """An IRHeader: one float label in the header, or several after it (flag = their count)."""
    labels = np.atleast_1d(np.asarray(label, np.float32))
    if np.ndim(label) == 0:
        return _HEADER.pack(0, float(labels[0]), number, 0)
    return _HEADER.pack(len(labels), 0.0, number, 0) + labels.astype("<f4").tobytes()


def unpack_header(payload: bytes) -> tuple[np.ndarray, bytes]:
    """(labels as a float array, the bytes after the header: the encoded image)."""
    if len(payload) < _HEADER.size:
        raise PackError(f"a record of {len(payload)} bytes is shorter than its {_HEADER.size}-byte header")
    flag, label, _, _ = _HEADER.unpack_from(payload)
    if flag == 0:
        return np.array([label], np.float32), payload[_HEADER.size:]
    end = _HEADER.size + 4 * flag
    if end > len(payload):
        raise PackError(f"a record's header declares {flag} labels but holds fewer")
    return np.frombuffer(payload[_HEADER.size:end], "<f4").astype(np.float32), payload[end:]


@dataclass(frozen=True)
class PackProperty:
    identities: int
    height: int
    width: int

    @classmethod
    def read(cls, path: Path) -> PackProperty:
        text = Path(path).read_text().strip()
        try:
            identities, height, width = (int(v) for v in text.split(","))
        except ValueError:
            raise PackError(f"{path} should read 'identities,height,width' (e.g. 10572,112,112), "
                            f"not {text[:60]!r}") from None
        return cls(identities, height, width)

    def text(self) -> str:
        return f"{self.identities},{self.height},{self.width}"


def read_index(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(record numbers, byte offsets) of train.idx, in file order."""
    numbers, offsets = [], []
    with open(path, encoding="ascii", errors="replace") as f:
        for line_number, line in enumerate(f, 1):
            if not line.strip():
                continue
            fields = line.split()
            try:
                number, offset = int(fields[0]), int(fields[1])
            except (ValueError, IndexError):
                raise PackError(f"{path}:{line_number}: expected 'number<TAB>offset', got {line.strip()[:60]!r}") \
                    from None
            numbers.append(number)
            offsets.append(offset)
    return np.array(numbers, np.int64), np.array(offsets, np.int64)


class RecordPack:
    """An opened pack: `labels` (int32, one per image, 0..identities-1), `read(i)` -> the
    encoded bytes of image i (i counts images from 0, in the pack's order)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        missing = [name for name in PACK_FILES if not (self.folder / name).is_file()]
        if missing:
            raise PackError(f"{self.folder} is not an insightface pack: {', '.join(missing)} missing "
                            f"(a pack holds {', '.join(PACK_FILES)})")
        self.property = PackProperty.read(self.folder / "property")
        numbers, offsets = read_index(self.folder / "train.idx")
        self._offset_of = dict(zip(numbers.tolist(), offsets.tolist()))
        with open(self.folder / "train.rec", "rb") as f:
            size = f.seek(0, 2)
            if size == 0:
                raise PackError(f"{self.folder / 'train.rec'} is empty")
            self._data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self._check_offsets(numbers, offsets)
        self.image_numbers, self.labels = self._images()

    def __len__(self) -> int:
        return len(self.image_numbers)

    def payload(self, number: int) -> bytes:
        try:
            return decode_record(self._data, self._offset_of[number])
        except KeyError:
            raise PackError(f"record {number} is not in {self.folder / 'train.idx'}") from None
        except PackError as err:
            raise PackError(f"{self.folder / 'train.rec'}, record {number}: {err}") from None

    def read(self, image: int) -> bytes:
        """The encoded image of image `image` (0-based, pack order)."""
        return unpack_header(self.payload(int(self.image_numbers[image])))[1]

    def read_many(self, images) -> list[bytes]:
        """read() of each; b"" for a record that cannot be read, so the decoder drops and counts it."""
        out = []
        for image in images:
            try:
                out.append(self.read(int(image)))
            except (PackError, IndexError):
                out.append(b"")
        return out

    def _check_offsets(self, numbers, offsets):
        """Every offset inside the file, 4-byte aligned, at a magic word, its first part inside the file."""
        where = self.folder / "train.idx"
        size = len(self._data)
        if len(np.unique(numbers)) != len(numbers):
            raise PackError(f"{where} lists a record number twice")
        bad = (offsets < 0) | (offsets + 8 > size) | (offsets % 4 != 0)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise PackError(f"{where}: record {numbers[i]} points at byte {offsets[i]}, outside "
                            f"{self.folder / 'train.rec'} ({size} bytes) or not on a record boundary: the .idx "
                            f"does not belong to this .rec, or the .rec is truncated")
        words = np.frombuffer(self._data, "<u4", count=size // 4)
        magic, length_words = words[offsets // 4], words[offsets // 4 + 1]
        bad = magic != MAGIC
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise PackError(f"{where}: record {numbers[i]} points at byte {offsets[i]} where no record starts: "
                            f"the .idx does not belong to this .rec")
        ends = offsets + 8 + (length_words & ((1 << _LENGTH_BITS) - 1))
        bad = ends > size
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise PackError(f"{self.folder / 'train.rec'} is truncated: record {numbers[i]} needs bytes up to "
                            f"{ends[i]}, the file has {size}")

    def _images(self) -> tuple[np.ndarray, np.ndarray]:
        """(record numbers of the images, their labels), checked against record 0's identity table
        and the property file."""
        known = self.property.identities
        if 0 in self._offset_of:
            first = unpack_header(self.payload(0))[0]
            if len(first) >= 2:
                return self._images_by_identity(int(first[0]), int(first[1]), known)
        numbers = np.array(sorted(self._offset_of), np.int64)  # no identity table: every record is an image
        labels = np.array([self._label(n) for n in numbers], np.int64)
        return numbers, self._checked(labels, numbers, known)

    def _images_by_identity(self, first_identity: int, end_identity: int, identities: int):
        where = self.folder / "train.rec"
        if end_identity - first_identity != identities:
            raise PackError(f"{self.folder / 'property'} declares {identities} identities, record 0 of {where} "
                            f"{end_identity - first_identity}: the files come from different packs")
        numbers = np.arange(1, first_identity, dtype=np.int64)
        labels = np.full(len(numbers), -1, np.int64)
        for identity, record in enumerate(range(first_identity, end_identity)):
            span = unpack_header(self.payload(record))[0]
            start, end = (int(span[0]), int(span[1])) if len(span) >= 2 else (0, -1)
            if not 1 <= start <= end <= first_identity:
                raise PackError(f"{where}: identity record {record} spans images {start}..{end}, outside 1.."
                                f"{first_identity - 1}")
            labels[start - 1:end - 1] = identity
        return numbers, self._checked(labels, numbers, identities, spans=True)

    def _label(self, number: int) -> int:
        labels = unpack_header(self.payload(number))[0]
        return int(labels[0])

    def _checked(self, labels, numbers, identities: int, spans: bool = False) -> np.ndarray:
        where = self.folder / "train.rec"
        unlabelled = labels < 0
        if unlabelled.any():
            raise PackError(f"{where}: image record {numbers[np.flatnonzero(unlabelled)[0]]} is in no identity's "
                            f"span")
        outside = labels >= identities
        if outside.any():
            i = int(np.flatnonzero(outside)[0])
            raise PackError(f"{where}: image record {numbers[i]} has label {labels[i]}, outside the {identities} "
                            f"identities {self.folder / 'property'} declares")
        if spans:  # the identity table and the images' own labels must agree (a sample: every one is 5.8M reads)
            for i in np.linspace(0, len(numbers) - 1, min(len(numbers), 64)).astype(int):
                own = self._label(int(numbers[i]))
                if own != labels[i]:
                    raise PackError(f"{where}: image record {numbers[i]} is labelled {own}, but the identity table "
                                    f"puts it in identity {labels[i]}")
        return labels.astype(np.int32)


def write_pack(paths, labels, identities: int, out_dir: Path, size: tuple[int, int],
               progress: bool = False) -> PackProperty:
    """Pack encoded image files (their bytes as they are) with integer labels, sorted by label, in
    insightface's layout; train.rec, train.idx and property are each replaced atomically."""
    order = np.argsort(np.asarray(labels), kind="stable")
    labels = np.asarray(labels)[order]
    paths = [paths[i] for i in order]
    first_identity = len(paths) + 1
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    prop = PackProperty(identities, *size)
    with replaced_atomically(out_dir / "train.rec") as rec_tmp, replaced_atomically(out_dir / "train.idx") as idx_tmp:
        with open(rec_tmp, "wb") as rec, open(idx_tmp, "w", encoding="ascii") as idx:
            def put(number: int, payload: bytes):
                idx.write(f"{number}\t{rec.tell()}\n")
                rec.write(encode_record(payload))

            put(0, pack_header([first_identity, first_identity + identities]))
            images = zip(paths, labels)
            if progress:
                from tqdm import tqdm
                images = tqdm(images, total=len(paths), desc="packing", unit="img")
            for number, (path, label) in enumerate(images, 1):
                put(number, pack_header(float(label), number) + Path(path).read_bytes())
            bounds = np.searchsorted(labels, np.arange(identities + 1)) + 1
            for identity in range(identities):
                put(first_identity + identity, pack_header([bounds[identity], bounds[identity + 1]]))
    with replaced_atomically(out_dir / "property") as tmp:
        Path(tmp).write_text(prop.text() + "\n")
    return prop
