"""insightface packs (MXNet RecordIO) written and read without MXNet: byte layout, round trip on
real face images, and a clear error for every way a pack can be broken."""
import struct

import numpy as np
import pytest

from utils.input_pipeline import list_crops
from utils.recordio import (MAGIC, PackError, RecordPack, decode_record, encode_record, pack_header,
                            unpack_header, write_pack)
from utils.run_io import SHARED_DATA_DIR

MAGIC_BYTES = struct.pack("<I", MAGIC)


def test_a_record_is_magic_length_payload_padding():
    assert encode_record(b"abcd") == MAGIC_BYTES + struct.pack("<I", 4) + b"abcd"
    assert encode_record(b"abcde") == MAGIC_BYTES + struct.pack("<I", 5) + b"abcde" + b"\0\0\0"
    assert encode_record(b"") == MAGIC_BYTES + struct.pack("<I", 0)


def test_a_payload_holding_the_magic_is_split_into_parts_and_joined_back():
    payload = b"head" + MAGIC_BYTES + b"mid." + MAGIC_BYTES + b"tail!"
    record = encode_record(payload)
    # Three parts, flags 1, 2, 3 in the length word's top 3 bits; the magic words themselves dropped.
    words = [struct.unpack_from("<I", record, at)[0] for at in (4, 16, 28)]
    assert [w >> 29 for w in words] == [1, 2, 3] and [w & 0x1FFFFFFF for w in words] == [4, 4, 5]
    for case in (payload, MAGIC_BYTES, MAGIC_BYTES * 3, b"ab" + MAGIC_BYTES + b"cd", b"x" * 7 + MAGIC_BYTES):
        assert decode_record(encode_record(case) + encode_record(b"next"), 0) == case


def test_headers_carry_one_label_or_several():
    labels, body = unpack_header(pack_header(7.0, 3) + b"JPEG")
    assert labels.tolist() == [7.0] and body == b"JPEG"
    labels, body = unpack_header(pack_header([10, 25]) + b"rest")
    assert labels.tolist() == [10.0, 25.0] and body == b"rest"
    with pytest.raises(PackError, match="shorter"):
        unpack_header(b"tiny")


@pytest.fixture()
def real_pack(tmp_path):
    """A pack of 5 pubfig-42 identities' photos (real JPEGs), as the writer lays it out."""
    if not (SHARED_DATA_DIR / "pubfig-42").is_dir():
        pytest.skip(f"real face data not found at {SHARED_DATA_DIR}")
    files = list_crops(SHARED_DATA_DIR / "pubfig-42")
    keep = files.labels < 5
    paths = [p for p, k in zip(files.paths, keep) if k]
    write_pack(paths, files.labels[keep], 5, tmp_path / "pack", (112, 112))
    return tmp_path / "pack", paths, files.labels[keep]


def test_real_images_and_labels_read_back_identical(real_pack):
    folder, paths, labels = real_pack
    pack = RecordPack(folder)
    assert len(pack) == len(paths) and pack.property.identities == 5
    assert (folder / "property").read_text().strip() == "5,112,112"
    read_back = sorted((int(label), pack.read(i)) for i, label in enumerate(pack.labels))
    written = sorted((int(label), open(path, "rb").read()) for path, label in zip(paths, labels))
    assert read_back == written
    # insightface's table: record 0 -> (first identity record, end); identity k -> its images' span.
    head = unpack_header(pack.payload(0))[0]
    assert head.tolist() == [len(paths) + 1, len(paths) + 6]
    spans = [unpack_header(pack.payload(len(paths) + 1 + k))[0].astype(int).tolist() for k in range(5)]
    assert spans[0][0] == 1 and spans[-1][1] == len(paths) + 1
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    assert np.bincount(pack.labels).tolist() == [b - a for a, b in spans]


def _index_lines(folder):
    return (folder / "train.idx").read_text().splitlines()


def test_every_broken_pack_is_one_clear_error(real_pack, tmp_path):
    import shutil

    folder = real_pack[0]

    def broken(name, change):
        copy = tmp_path / name
        shutil.copytree(folder, copy)
        change(copy)
        with pytest.raises(PackError) as err:
            RecordPack(copy)
        return str(err.value)

    def truncate(copy):
        data = (copy / "train.rec").read_bytes()
        (copy / "train.rec").write_bytes(data[:len(data) // 2])

    assert "truncated" in broken("truncated", truncate)

    def past_end(copy):
        lines = _index_lines(copy)
        lines[3] = lines[3].split("\t")[0] + "\t99999999"
        (copy / "train.idx").write_text("\n".join(lines) + "\n")

    assert "outside" in broken("past-end", past_end)

    def off_boundary(copy):
        lines = _index_lines(copy)
        number, offset = lines[3].split("\t")
        lines[3] = f"{number}\t{int(offset) + 8}"  # 4-aligned, inside the payload: no magic there
        (copy / "train.idx").write_text("\n".join(lines) + "\n")

    assert "no record starts" in broken("off-boundary", off_boundary)

    message = broken("bad-line", lambda c: (c / "train.idx").write_text("0\tzero\n"))
    assert "train.idx:1" in message and "number<TAB>offset" in message
    message = broken("property", lambda c: (c / "property").write_text("6,112,112\n"))
    assert "declares 6 identities" in message and "different packs" in message
    assert "identities,height,width" in broken("property-text", lambda c: (c / "property").write_text("lots\n"))
    assert "property missing" in broken("no-property", lambda c: (c / "property").unlink())


def test_a_label_outside_the_declared_identities_is_refused(tmp_path):
    """A pack without an identity table (every record an image): labels must fit the property."""
    from PIL import Image

    image = tmp_path / "face.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    write_pack([image, image], [0, 1], 2, tmp_path / "ok", (8, 8))
    folder = tmp_path / "no-table"
    folder.mkdir()
    with open(folder / "train.rec", "wb") as rec, open(folder / "train.idx", "w") as idx:
        for number, label in enumerate([0, 1, 2], 1):
            idx.write(f"{number}\t{rec.tell()}\n")
            rec.write(encode_record(pack_header(float(label), number) + image.read_bytes()))
    (folder / "property").write_text("3,8,8\n")
    assert RecordPack(folder).labels.tolist() == [0, 1, 2]
    (folder / "property").write_text("2,8,8\n")
    with pytest.raises(PackError, match="label 2, outside the 2 identities"):
        RecordPack(folder)
