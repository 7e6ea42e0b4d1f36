import io

import numpy as np
import pytest
from PIL import Image

from tests.bad_inputs import make_bad_input_zoo
from utils.core.image_io import ImageReadError, load_rgb, save_rgb


def _face_jpeg() -> bytes:
    # A smooth synthetic picture stands in for a face where only decoding matters.
    y, x = np.mgrid[0:120, 0:90]
    rgb = np.stack([x * 2, y * 2, (x + y)], axis=2).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def test_every_bad_input_is_decoded_or_refused_with_a_reason(tmp_path):
    expect = make_bad_input_zoo(tmp_path, _face_jpeg())
    assert len(expect) >= 18
    for name, (kind, check) in expect.items():
        if kind == "error":
            with pytest.raises(ImageReadError) as err:
                load_rgb(tmp_path / name)
            assert check in str(err.value), (name, str(err.value))
        else:
            rgb = load_rgb(tmp_path / name)
            assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3, name
            assert check(rgb), name


def test_pixel_cap_is_a_parameter(tmp_path):
    path = tmp_path / "a.png"
    Image.new("RGB", (100, 100)).save(path)
    assert load_rgb(path, max_pixels=10_000).shape == (100, 100, 3)
    with pytest.raises(ImageReadError, match="pixel cap"):
        load_rgb(path, max_pixels=9_999)


@pytest.mark.parametrize("fmt,exact", [("png", True), ("jpg", False)])
def test_save_round_trips_and_leaves_no_temporary(tmp_path, fmt, exact):
    rgb = np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    rgb[:, :15] = (250, 10, 10)
    path = tmp_path / f"crop.{fmt}"
    save_rgb(path, rgb, fmt)
    back = load_rgb(path)
    assert back.shape == rgb.shape
    if exact:
        assert (back == rgb).all()
    else:  # channel order kept: the left half is still red
        assert back[:, :15, 0].mean() > 200 and back[:, :15, 2].mean() < 60
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
