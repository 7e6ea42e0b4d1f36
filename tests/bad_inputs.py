"""A corpus of broken and unusual image files, generated on the fly (nothing committed).

make_bad_input_zoo(folder) writes them into folder and returns {file name: expectation},
where an expectation is ("error", substring of the reason) or ("ok", check(rgb) -> bool).
"""
from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def _jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95, **kw)
    return buf.getvalue()


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def png_bomb(width: int, height: int) -> bytes:
    """A valid 16x16 PNG whose header claims width x height (CRC fixed up)."""
    data = bytearray(_png(Image.new("RGB", (16, 16))))
    ihdr = 8  # signature; then length(4) type(4) data(13) crc(4)
    data[ihdr + 8:ihdr + 16] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr + 4:ihdr + 21])) & 0xFFFFFFFF
    data[ihdr + 21:ihdr + 25] = struct.pack(">I", crc)
    return bytes(data)


def make_bad_input_zoo(folder: Path, face_jpeg: bytes) -> dict:
    """face_jpeg: bytes of one real face photo, used where a decodable picture is needed."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    face = Image.open(io.BytesIO(face_jpeg)).convert("RGB")
    expect = {}

    def put(name, data, expectation):
        (folder / name).write_bytes(data)
        expect[name] = expectation

    put("zero_bytes.jpg", b"", ("error", "empty file"))
    put("truncated.jpg", face_jpeg[: len(face_jpeg) // 2], ("error", "cannot decode"))
    put("text_named_like.jpg", b"this is not a picture\n" * 20, ("error", "not a recognised image format"))
    put("bomb.png", png_bomb(60000, 60000), ("error", "pixel cap"))
    put("one_pixel.png", _png(Image.new("RGB", (1, 1), (200, 10, 10))), ("error", "smaller than"))

    rgba = face.convert("RGBA")
    alpha = np.array(rgba)
    alpha[:8, :8, 3] = 0  # a transparent corner must come out white
    put("alpha.png", _png(Image.fromarray(alpha, "RGBA")),
        ("ok", lambda rgb: rgb.shape[2] == 3 and (rgb[:8, :8] == 255).all()))

    gray16 = (np.array(face.convert("L"), dtype=np.uint16) * 257)
    gray16[0, 0] = 65535
    put("gray16.png", _png(Image.fromarray(gray16)),
        ("ok", lambda rgb: rgb[0, 0, 0] == 255 and 20 < rgb.mean() < 235))
    put("palette.png", _png(face.convert("P", palette=Image.Palette.ADAPTIVE)), ("ok", lambda rgb: rgb.shape[2] == 3))
    put("cmyk.jpg", _jpeg(face.convert("CMYK")), ("ok", lambda rgb: rgb.shape[:2] == (face.height, face.width)))
    put("grayscale.jpg", _jpeg(face.convert("L")),
        ("ok", lambda rgb: (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()))

    # EXIF orientation 6 = the camera was turned: the decoded picture is rotated 90 degrees.
    exif = Image.Exif()
    exif[0x0112] = 6
    put("exif_rotated.jpg", _jpeg(face, exif=exif.tobytes()),
        ("ok", lambda rgb: rgb.shape[:2] == (face.width, face.height)))

    red, blue = Image.new("RGB", (64, 64), (255, 0, 0)), Image.new("RGB", (64, 64), (0, 0, 255))
    buf = io.BytesIO()
    red.save(buf, "GIF", save_all=True, append_images=[blue], duration=100, loop=0)
    put("animated.gif", buf.getvalue(), ("ok", lambda rgb: rgb[..., 0].mean() > 200 and rgb[..., 2].mean() < 50))

    put("Zoë_日本語_ß.jpg", face_jpeg, ("ok", lambda rgb: rgb.shape[:2] == (face.height, face.width)))
    big = face.resize((face.width * 8, face.height * 8))
    put("big.jpg", _jpeg(big), ("ok", lambda rgb: rgb.shape[:2] == (big.height, big.width)))

    (folder / "directory.jpg").mkdir()
    expect["directory.jpg"] = ("error", "is a directory")
    os.symlink("does_not_exist.jpg", folder / "broken_link.jpg")
    expect["broken_link.jpg"] = ("error", "cannot stat")
    os.symlink("link_loop.jpg", folder / "link_loop.jpg")
    expect["link_loop.jpg"] = ("error", "cannot stat")
    os.mkfifo(folder / "fifo.jpg")
    expect["fifo.jpg"] = ("error", "not a regular file")
    if os.geteuid() != 0:  # root reads a chmod-000 file anyway
        put("unreadable.jpg", face_jpeg, ("error", "cannot decode"))
        os.chmod(folder / "unreadable.jpg", 0)
    return expect


def snapshot_tree(root: Path) -> dict:
    """Every entry under root with its type and content (or link target): equal
    snapshots mean the tree was left byte-identical."""
    snap = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            if os.path.islink(path):
                snap[rel] = ("link", os.readlink(path))
            elif os.path.isdir(path):
                snap[rel] = ("dir", st.st_mode)
            elif not os.path.isfile(path):
                snap[rel] = ("other", st.st_mode)
            else:
                try:
                    snap[rel] = ("file", st.st_mode, st.st_mtime_ns, Path(path).read_bytes())
                except PermissionError:
                    snap[rel] = ("unreadable", st.st_mode, st.st_mtime_ns, st.st_size)
    return snap
