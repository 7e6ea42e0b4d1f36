"""insightface packs (MXNet RecordIO) written and read without MXNet: byte layout, round trip on
real face images, and a clear error for every way a pack can be broken."""
import struct

import numpy as np
import pytest

from utils.core.recordio import (
    MAGIC,
    PackError,
    RecordPack,
    decode_record,
    encode_record,
    pack_header,
    unpack_header,
    write_pack,
)
from utils.core.run_io import SHARED_DATA_DIR
from utils.preprocess.input_pipeline import list_crops

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


def test_a_pack_streams_the_same_images_and_labels_as_its_crops_folder(pubfig_crops, tmp_path):
    """preprocess_data.py's packer, then the training pipeline: the pack feeds tf.data exactly
    what the crops folder does (same order, pixels, labels); identities.txt names the labels."""
    from utils.preprocess.driver import pack_crops
    from utils.preprocess.input_pipeline import list_training_images, make_dataset

    prop, count = pack_crops(pubfig_crops, tmp_path / "pack", progress=False)
    folder, pack = list_crops(pubfig_crops, 15), list_training_images(tmp_path / "pack", 15)
    assert pack.pack is not None and folder.pack is None and count == len(list_crops(pubfig_crops).paths)
    assert pack.classes == folder.classes  # named from identities.txt; --img_morethan filters the same people
    assert (pack.labels == folder.labels).all()

    def stream(files):
        ds = make_dataset(files.paths, files.labels, 48, 16, training=False, pack=files.pack)
        return [(np.asarray(x), np.asarray(y)) for x, y in ds]

    for (x_pack, y_pack), (x_folder, y_folder) in zip(stream(pack), stream(folder), strict=True):
        np.testing.assert_array_equal(x_pack, x_folder)
        np.testing.assert_array_equal(y_pack, y_folder)


def test_training_reads_a_pack_and_refuses_a_broken_one(pubfig_crops, tmp_path):
    from tests.conftest import TINY, run_main
    from utils.core.run_io import read_json
    from utils.preprocess.driver import pack_crops

    pack_crops(pubfig_crops, tmp_path / "pack", progress=False)
    left_out = (tmp_path / "pack" / "identities.txt").read_text().split()[0]  # by name, as the folder was called
    (tmp_path / "exclude.txt").write_text(left_out + "\n")
    res = run_main("train_classifier.py", *TINY, "--epochs", "1", "--datadir", tmp_path / "pack",
                   "--runs-dir", tmp_path / "runs", "--name", "packed", "--exclude-identities",
                   tmp_path / "exclude.txt")
    assert res.returncode == 0, res.stderr[-3000:]
    config = read_json(tmp_path / "runs" / "packed" / "config.json")
    folder = list_crops(pubfig_crops, 5, {left_out})
    assert config["dataset"]["images"] == len(folder.paths) and config["dataset"]["excluded_identities"] == [left_out]
    assert config["dataset"]["identities"] == len(folder.classes) == len(list_crops(pubfig_crops, 5).classes) - 1
    assert read_json(tmp_path / "runs" / "packed" / "model.json")["alignment"] == \
        read_json(pubfig_crops / "preprocess.json")["settings"]["align"]

    rec = tmp_path / "pack" / "train.rec"
    rec.write_bytes(rec.read_bytes()[:rec.stat().st_size // 3])
    res = run_main("train_classifier.py", *TINY, "--epochs", "1", "--datadir", tmp_path / "pack",
                   "--runs-dir", tmp_path / "runs", "--name", "broken")
    assert res.returncode == 2 and "truncated" in res.stderr and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert not (tmp_path / "runs" / "broken").exists()


def test_preprocess_data_packs_its_crops(tmp_path):
    from tests.conftest import run_cli
    from utils.preprocess.datasets import copy_sample

    if not (SHARED_DATA_DIR / "pubfig-42").is_dir():
        pytest.skip(f"real face data not found at {SHARED_DATA_DIR}")
    copy_sample(SHARED_DATA_DIR / "pubfig-42", tmp_path / "photos", count=6, per_identity=3, identities=2)
    common = ["--input-dir", tmp_path / "photos", "--output-dir", tmp_path / "crops", "--detectors", "center",
              "--workers", "1", "--no-progress"]
    res = run_cli("preprocess_data.py", *common, "--pack", tmp_path / "crops" / "pack", timeout=300)
    assert res.returncode == 2 and "inside the crops folder" in res.stderr, res.stderr[-2000:]
    res = run_cli("preprocess_data.py", *common, "--pack", tmp_path / "pack", timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "packed 6 crops of 2 identities" in res.stdout
    pack = RecordPack(tmp_path / "pack")
    crops = list_crops(tmp_path / "crops")
    assert [pack.read(i) for i in range(len(pack))] == [open(p, "rb").read() for p in crops.paths]
    res = run_cli("preprocess_data.py", *common, "--align", "margin,similarity", "--pack", tmp_path / "p2")
    assert res.returncode == 2 and "one --align" in res.stderr


def test_a_record_whose_image_does_not_decode_is_skipped_and_counted(real_pack):
    """The record is whole but its image bytes are garbage: dropped from the stream and counted,
    as an unreadable crop file is, not a crash mid-epoch."""
    from utils.preprocess.input_pipeline import SkipCount, list_training_images, make_dataset

    folder = real_pack[0]
    pack = RecordPack(folder)
    image = pack.read(3)
    data = bytearray((folder / "train.rec").read_bytes())
    at = data.find(image)
    data[at:at + len(image)] = bytes(len(image))  # same length: the record structure stays valid
    (folder / "train.rec").write_bytes(bytes(data))
    files = list_training_images(folder)
    skipped = SkipCount()
    labels = np.concatenate([np.asarray(y) for _, y in make_dataset(files.paths, files.labels, 32, 16, training=False,
                                                                    skipped=skipped, pack=files.pack)])
    assert len(labels) == len(files.paths) - 1 and skipped.last_pass() == 1
    assert labels.tolist() == np.delete(files.labels, 3).tolist()
