"""Reading any image a user's photo folder may hold as RGB uint8, and writing crops.

Bad input is reported as ImageReadError with a one-line reason, never a crash: the
preprocessing manifest records the reason and the run goes on.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from utils.core.errors import IcyfaceError
from utils.core.run_io import atomic_write_bytes

# A decompression bomb is a small file declaring a huge canvas; refuse it from the
# header, before any pixel is decoded. 40 Mpx is far above any face photo.
DEFAULT_MAX_PIXELS = 40_000_000
# Below this no detector or crop is meaningful.
MIN_IMAGE_SIDE = 16

OUTPUT_FORMATS = {"png": ".png", "jpg": ".jpg"}

# PIL would refuse big canvases with its own limit first; ours (per call) decides instead.
Image.MAX_IMAGE_PIXELS = None


class ImageReadError(IcyfaceError):
    """The file cannot be used as an image; str(err) is the reason for the manifest."""


def _to_rgb(im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # Deep grayscale (16-bit PNG/TIFF): rescale rather than let convert() clip at 255.
        arr = np.asarray(im).astype(np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        gray = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in im.info):
        # Transparent areas become white, the usual background of cut-out portraits.
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    return np.asarray(im.convert("RGB"))


def load_rgb(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode path into an HxWx3 uint8 RGB array, honouring EXIF orientation.

    Animated images give their first frame. Raises ImageReadError for anything that is
    not a usable image (empty, truncated, not an image, not a regular file, too large,
    too small, unreadable).
    """
    path = Path(path)
    try:
        st = os.stat(path)
    except OSError as err:
        raise ImageReadError(f"cannot stat file: {err.strerror or err}") from None
    if stat.S_ISDIR(st.st_mode):
        raise ImageReadError("is a directory, not an image file")
    if not stat.S_ISREG(st.st_mode):
        # Opening a FIFO or device would block or read forever.
        raise ImageReadError("not a regular file")
    if st.st_size == 0:
        raise ImageReadError("empty file (0 bytes)")
    try:
        with Image.open(path) as im:
            width, height = im.size
            if width * height > max_pixels:
                raise ImageReadError(f"image is {width}x{height} = {width * height} pixels, "
                                     f"over the {max_pixels}-pixel cap")
            if min(width, height) < MIN_IMAGE_SIDE:
                raise ImageReadError(f"image is {width}x{height}, smaller than {MIN_IMAGE_SIDE} px")
            im.seek(0)
            im.load()
            try:
                oriented = ImageOps.exif_transpose(im)
            except Exception:  # a corrupt EXIF block should not cost the picture
                oriented = im
            return np.ascontiguousarray(_to_rgb(oriented))
    except ImageReadError:
        raise
    except UnidentifiedImageError:
        raise ImageReadError("not a recognised image format") from None
    except Image.DecompressionBombError as err:
        raise ImageReadError(f"decompression bomb refused: {err}") from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as err:
        reason = str(err).replace("\n", " ") or type(err).__name__
        raise ImageReadError(f"cannot decode: {reason}") from None


def encode_image(rgb: np.ndarray, fmt: str) -> bytes:
    import cv2

    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if fmt == "jpg" else [cv2.IMWRITE_PNG_COMPRESSION, 3]
    ok, buf = cv2.imencode(OUTPUT_FORMATS[fmt], bgr, params)
    if not ok:
        raise OSError(f"could not encode image as {fmt}")
    return buf.tobytes()


def save_rgb(path: Path, rgb: np.ndarray, fmt: str) -> None:
    """Write atomically: a run killed mid-write never leaves a partial crop."""
    atomic_write_bytes(path, encode_image(rgb, fmt))
