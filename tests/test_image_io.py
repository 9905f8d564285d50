"""PNG/JPEG/TIFF/array loading: value mapping, sniffing by content, limits and bad input."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from fixtures_image import *  # noqa: F401,F403
from medzero.core.errors import BadInputError
from medzero.image import ImageLimits, LoadedImage, read_image


@pytest.mark.parametrize(
    "name,fmt,shape",
    [
        ("gray8.png", "png", (48, 64)),
        ("rgb.png", "png", (48, 64, 3)),
        ("rgba.png", "png", (40, 30, 3)),
        ("gray16.png", "png", (48, 64)),
        ("photo.jpg", "jpeg", (48, 64, 3)),
        ("rgb.tiff", "tiff", (48, 64, 3)),
        ("gray16.tiff", "tiff", (48, 64)),
        ("jpeg_named.png", "jpeg", (48, 64, 3)),  # sniffed by content, not by the .png name
    ],
)
def test_reads_formats(image_files, name, fmt, shape):
    image = read_image(image_files[name])
    assert isinstance(image, LoadedImage)
    assert image.format == fmt and image.pixels.shape == shape and image.pixels.dtype == np.float32
    assert 0.0 <= image.pixels.min() <= image.pixels.max() <= 1.0
    assert image.source == str(image_files[name])
    json.dumps(image.metadata)


@pytest.mark.parametrize("name", ["gray8.png", "rgb.png", "rgba.png", "photo.jpg", "rgb.tiff", "jpeg_named.png"])
def test_eight_bit_pil_is_pillow_open_convert_rgb(image_files, name):
    expected = np.asarray(Image.open(image_files[name]).convert("RGB"))
    image = read_image(image_files[name])
    np.testing.assert_array_equal(np.asarray(image.to_pil()), expected)
    # and the float pixels are the same values / 255
    values = expected if image.is_color else expected[..., 0]
    np.testing.assert_array_equal(image.to_uint8(), values)


def test_sixteen_bit_png_is_min_max_scaled(image_files):
    raw = np.asarray(Image.open(image_files["gray16.png"])).astype(np.float64)
    image = read_image(image_files["gray16.png"])
    np.testing.assert_allclose(image.pixels, (raw - raw.min()) / (raw.max() - raw.min()), atol=1e-6)
    assert image.metadata["scaling"] == "min-max" and image.metadata["bits"] == 16
    assert image.pil is None
    pil = image.to_pil()
    assert pil.mode == "RGB" and pil.size == (64, 48)
    np.testing.assert_array_equal(np.asarray(pil)[..., 0], np.rint(image.pixels * 255).astype(np.uint8))


def test_explicit_window_on_png_values(image_files):
    raw = np.asarray(Image.open(image_files["gray16.png"])).astype(np.float64)
    image = read_image(image_files["gray16.png"], window=(2000, 1000))
    np.testing.assert_allclose(image.pixels, np.clip((raw - 1500) / 1000, 0, 1), atol=1e-6)
    with pytest.raises(BadInputError, match="Hounsfield"):
        read_image(image_files["gray16.png"], window="lung")
    with pytest.raises(BadInputError, match="unknown window"):
        read_image(image_files["gray16.png"], window="soft")


def test_sources_bytes_stream_array(image_files):
    path = image_files["rgb.png"]
    data = path.read_bytes()
    a = read_image(path).pixels
    np.testing.assert_array_equal(read_image(data).pixels, a)
    np.testing.assert_array_equal(read_image(io.BytesIO(data), name="upload.png").pixels, a)
    assert read_image(data).source == "<bytes>"
    assert read_image(io.BytesIO(data), name="upload.png").source == "upload.png"
    array = np.asarray(Image.open(path))
    from_array = read_image(array)
    assert from_array.format == "array"
    np.testing.assert_array_equal(from_array.pixels, a)
    gray16 = np.arange(12, dtype=np.uint16).reshape(3, 4) * 100
    np.testing.assert_allclose(read_image(gray16).pixels, gray16 / 1100.0, atol=1e-6)


def test_clahe_on_png(image_files):
    image = read_image(image_files["gray8.png"], clahe=True)
    assert image.pil is None and image.metadata["clahe"] is True
    assert image.pixels.shape == (48, 64) and 0.0 <= image.pixels.min() <= image.pixels.max() <= 1.0


def _bad(source, match, **kwargs):
    with pytest.raises(BadInputError, match=match) as info:
        read_image(source, **kwargs)
    assert "\n" not in str(info.value)


def test_bad_inputs(image_files, tmp_path):
    _bad(image_files["text.txt"], "not an image")
    _bad(b"hello world, definitely not pixels" * 10, "not an image")
    _bad(image_files["truncated.png"], "truncated")
    _bad(image_files["zero.png"], "empty")
    _bad(np.zeros((0, 5), dtype=np.uint8), "empty")
    _bad(np.zeros((4, 4, 7), dtype=np.uint8), "H×W")
    _bad(tmp_path / "missing.png", "not found")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    _bad(empty, "not an image|empty")
    with pytest.raises(BadInputError):
        read_image(12345)


def test_pixel_limit_from_png_header(image_files):
    # 30000×30000 claimed by the header: refused before decoding (Pillow's own bomb check or ours).
    _bad(image_files["huge_header.png"], "pixels")
    _bad(image_files["huge_header.png"], "pixels", limits=ImageLimits(max_pixels=10**12))
    _bad(image_files["rgb.png"], "over the limit of 1,000", limits=ImageLimits(max_pixels=1000))
    _bad(image_files["rgb.png"], "bytes", limits=ImageLimits(max_bytes=100))
