"""DICOM loading: pydicom's reference files across transfer syntaxes, LUTs by hand, PHI, bad input."""
from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from fixtures_image import *  # noqa: F401,F403
from fixtures_image import PHI
from medzero.core.errors import BadInputError
from medzero.image import ImageLimits, read_image
from medzero.image.dicom import METADATA_KEYS

# (file bundled with pydicom, expected pixels shape, transfer syntax it exercises)
BUNDLED = [
    ("CT_small.dcm", (128, 128), "Explicit VR Little Endian"),
    ("MR_small.dcm", (64, 64), "Explicit VR Little Endian"),
    ("MR_small_implicit.dcm", (64, 64), "Implicit VR Little Endian"),
    ("MR_small_bigendian.dcm", (64, 64), "Explicit VR Big Endian"),
    ("MR_small_RLE.dcm", (64, 64), "RLE Lossless"),
    ("MR_small_jp2klossless.dcm", (64, 64), "JPEG 2000 Image Compression (Lossless Only)"),
    ("MR_small_jpeg_ls_lossless.dcm", (64, 64), "JPEG-LS Lossless Image Compression"),
    ("JPEGLSNearLossless_08.dcm", (45, 10), "JPEG-LS Lossy (Near-Lossless) Image Compression"),
    ("JPEGLSNearLossless_16.dcm", (50, 10), "JPEG-LS Lossy (Near-Lossless) Image Compression"),
    ("JPGExtended.dcm", (1024, 256), "JPEG Extended (Process 2 and 4)"),
    ("JPEG2000.dcm", (1024, 256), "JPEG 2000 Image Compression"),
    ("693_J2KI.dcm", (512, 512), "JPEG 2000 Image Compression"),
    ("SC_rgb_jpeg_gdcm.dcm", (100, 100, 3), "JPEG Lossless, Non-Hierarchical, First-Order Prediction (Process 14 [Selection Value 1])"),
    ("SC_rgb_jpeg_dcmtk.dcm", (100, 100, 3), "JPEG Baseline (Process 1)"),
    ("SC_rgb_dcmtk_+eb+cy+s2.dcm", (100, 100, 3), "JPEG Baseline (Process 1)"),
    ("SC_rgb_jpeg.dcm", (256, 256, 3), "JPEG Baseline (Process 1)"),
    ("SC_rgb_rle.dcm", (100, 100, 3), "RLE Lossless"),
    ("SC_rgb_rle_16bit_2frame.dcm", (100, 100, 3), "RLE Lossless"),
    ("SC_rgb_gdcm_KY.dcm", (100, 100, 3), "JPEG 2000 Image Compression"),
    ("GDCMJ2K_TextGBR.dcm", (400, 400, 3), "JPEG 2000 Image Compression (Lossless Only)"),
    ("SC_ybr_full_422_uncompressed.dcm", (100, 100, 3), "Explicit VR Little Endian"),
    ("ExplVR_BigEnd.dcm", (60, 80, 3), "Explicit VR Big Endian"),
    ("examples_ybr_color.dcm", (240, 320, 3), "JPEG Baseline (Process 1)"),
    ("examples_palette.dcm", (350, 800, 3), "Explicit VR Little Endian"),
    ("image_dfl.dcm", (512, 512), "Deflated Explicit VR Little Endian"),
    ("liver_1frame.dcm", (512, 512), "Explicit VR Little Endian"),
    ("rtdose.dcm", (10, 10), "Implicit VR Little Endian"),
    ("rtdose_rle.dcm", (10, 10), "RLE Lossless"),
]


@pytest.mark.parametrize("name,shape,syntax", BUNDLED, ids=[b[0] for b in BUNDLED])
def test_bundled_file_decodes(name, shape, syntax):
    image = read_image(get_testdata_file(name))
    assert image.format == "dicom"
    assert image.pixels.dtype == np.float32
    assert image.pixels.shape == shape
    assert np.isfinite(image.pixels).all()
    assert image.pixels.min() >= 0.0 and image.pixels.max() <= 1.0
    assert image.pixels.max() > image.pixels.min()
    assert image.metadata["transfer_syntax"] == syntax
    json.dumps(image.metadata)


@pytest.mark.parametrize(
    "reference,other,tolerance",
    [
        ("MR_small.dcm", "MR_small_RLE.dcm", 0.0),
        ("MR_small.dcm", "MR_small_jp2klossless.dcm", 0.0),
        ("MR_small.dcm", "MR_small_jpeg_ls_lossless.dcm", 0.0),
        ("MR_small.dcm", "MR_small_implicit.dcm", 0.0),
        ("MR_small.dcm", "MR_small_bigendian.dcm", 0.0),
        ("SC_rgb_rle.dcm", "SC_rgb_jpeg_gdcm.dcm", 0.0),  # JPEG lossless
        ("SC_rgb_rle.dcm", "SC_rgb_gdcm_KY.dcm", 0.0),
        ("SC_rgb_rle.dcm", "SC_rgb_rle_16bit.dcm", 0.0),
        ("SC_rgb_small_odd.dcm", "SC_rgb_small_odd_big_endian.dcm", 0.0),
        ("rtdose.dcm", "rtdose_rle.dcm", 0.0),
        ("liver_1frame.dcm", "liver_expb_1frame.dcm", 0.0),
        # Lossy and YBR-coded copies of the same picture: close, not equal (mean absolute difference).
        ("SC_rgb_rle.dcm", "SC_rgb_jpeg_dcmtk.dcm", 0.01),
        ("SC_rgb_rle.dcm", "SC_rgb_dcmtk_+eb+cy+s2.dcm", 0.01),
        ("SC_rgb_rle.dcm", "SC_ybr_full_422_uncompressed.dcm", 0.01),
        ("SC_rgb_rle.dcm", "SC_rgb_jls_lossy_line.dcm", 0.01),
    ],
)
def test_compressed_matches_reference(reference, other, tolerance):
    a = read_image(get_testdata_file(reference)).pixels
    b = read_image(get_testdata_file(other)).pixels
    assert a.shape == b.shape
    if tolerance == 0.0:
        np.testing.assert_array_equal(a, b)
    else:
        assert float(np.abs(a - b).mean()) < tolerance


def test_ybr_is_converted_to_rgb():
    """pydicom 3 converts YBR_FULL_422 to RGB by default; a grey patch stays grey, a red bar stays red."""
    rgb = read_image(get_testdata_file("SC_rgb_rle.dcm")).pixels
    ybr = read_image(get_testdata_file("SC_rgb_dcmtk_+eb+cy+s2.dcm")).pixels
    red = np.unravel_index(np.argmax(rgb[..., 0] - rgb[..., 1]), rgb.shape[:2])
    assert ybr[red][0] > ybr[red][1] + 0.5


def test_monochrome1_is_exact_inverse(dicom_files):
    for suffix in ("", "_nowindow"):
        p2 = read_image(dicom_files["mono2" + suffix]).pixels
        p1 = read_image(dicom_files["mono1" + suffix]).pixels
        assert p1.dtype == p2.dtype == np.float32
        np.testing.assert_array_equal(p1, 1 - p2)
        assert 0.0 < p2.mean() < 1.0


def test_rescale_and_file_window_by_hand(dicom_files):
    stored = pydicom.dcmread(dicom_files["ct"]).pixel_array.astype(np.float64)
    hu = stored * 2.0 - 1024.0
    center, width = 40.0, 400.0  # DICOM LINEAR: c - 0.5 and w - 1 (PS3.3 C.11.2.1.2.1)
    expected = np.clip((hu - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)
    below, above = hu <= center - 0.5 - (width - 1) / 2, hu > center - 0.5 + (width - 1) / 2
    expected[below], expected[above] = 0.0, 1.0
    image = read_image(dicom_files["ct"])
    np.testing.assert_allclose(image.pixels, expected, atol=1e-6)
    assert image.metadata["rescale"] == {"slope": 2.0, "intercept": -1024.0}
    assert image.metadata["window"]["source"] == "file"
    assert image.metadata["PixelSpacing"] == [0.5, 0.75]


@pytest.mark.parametrize("window,center,width", [("lung", -600.0, 1500.0), ("bone", 400.0, 1800.0), ((100, 50), 100.0, 50.0)])
def test_explicit_window_in_hounsfield_units(dicom_files, window, center, width):
    stored = pydicom.dcmread(dicom_files["ct"]).pixel_array.astype(np.float64)
    hu = stored * 2.0 - 1024.0
    expected = np.clip((hu - (center - width / 2)) / width, 0.0, 1.0)
    image = read_image(dicom_files["ct"], window=window)
    np.testing.assert_allclose(image.pixels, expected, atol=1e-6)
    assert image.metadata["window"]["center"] == center and image.metadata["window"]["width"] == width


def test_min_max_when_no_window(dicom_files):
    stored = pydicom.dcmread(dicom_files["mono2_nowindow"]).pixel_array.astype(np.float64)
    expected = (stored - stored.min()) / (stored.max() - stored.min())
    image = read_image(dicom_files["mono2_nowindow"])
    np.testing.assert_allclose(image.pixels, expected, atol=1e-6)
    assert image.metadata["window"]["source"] == "min-max"


def test_clahe_changes_contrast_and_keeps_range(dicom_files):
    plain = read_image(dicom_files["large"]).pixels
    enhanced = read_image(dicom_files["large"], clahe=True)
    assert enhanced.metadata["clahe"] is True
    assert enhanced.pixels.shape == plain.shape and enhanced.pixels.dtype == np.float32
    assert 0.0 <= enhanced.pixels.min() and enhanced.pixels.max() <= 1.0
    assert not np.allclose(enhanced.pixels, plain)


def test_multiframe_takes_the_middle_frame(dicom_files):
    image = read_image(dicom_files["multiframe"])
    assert image.metadata["frames"] == 5 and image.metadata["frame_index"] == 2
    assert image.pixels.shape == (16, 20)
    # Frame i holds 100 * (i + 1) except one zero pixel; min-max maps the frame's value to 1.
    assert image.pixels[0, 0] == 0.0 and np.all(image.pixels.ravel()[1:] == 1.0)
    raw = pydicom.dcmread(dicom_files["multiframe"]).pixel_array
    assert raw[2, 5, 5] == 300


def test_phi_never_leaves_the_loader(dicom_files):
    image = read_image(dicom_files["phi"])
    text = json.dumps(image.metadata)
    assert set(image.metadata) <= METADATA_KEYS
    for keyword, value in PHI.items():
        for piece in {value, *value.replace("^", " ").split()}:
            if len(piece) >= 4:
                assert piece not in text, f"{keyword} leaked: {piece!r}"
    assert "2024" not in text and "1951" not in text
    assert image.metadata["ViewPosition"] == "PA"
    assert image.metadata["BodyPartExamined"] == "CHEST"
    assert image.metadata["Manufacturer"] == "ACME Imaging"
    assert image.metadata["PixelSpacing"] == [0.139, 0.139]


def test_reads_bytes_and_streams(dicom_files):
    path = dicom_files["ct"]
    from_path = read_image(path).pixels
    from_bytes = read_image(path.read_bytes(), name="ct").pixels
    with open(path, "rb") as fh:
        from_stream = read_image(fh).pixels
    np.testing.assert_array_equal(from_path, from_bytes)
    np.testing.assert_array_equal(from_path, from_stream)


def _one_line_error(source, match, **kwargs):
    with pytest.raises(BadInputError, match=match) as info:
        read_image(source, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_bad_dicoms(dicom_files):
    _one_line_error(dicom_files["no_pixels"], "no pixel data.*Basic Text SR")
    _one_line_error(dicom_files["truncated"], "truncated")
    _one_line_error(dicom_files["truncated_header"], "truncated")
    _one_line_error(get_testdata_file("MR_truncated.dcm"), "truncated")
    _one_line_error(dicom_files["zero_size"], "empty")
    message = _one_line_error(dicom_files["mpeg2"], "1.2.840.10008.1.2.4.100")
    assert "MPEG2" in message


def test_pixel_limit_checked_from_header_before_decoding(dicom_files):
    # The header claims 60000×60000 but the pixel data is tiny: decoding would fail differently.
    _one_line_error(dicom_files["huge_header"], "over the limit")
    _one_line_error(dicom_files["large"], "over the limit", limits=ImageLimits(max_pixels=2048 * 2048 - 1))
    _one_line_error(dicom_files["multiframe"], "5 frames", limits=ImageLimits(max_pixels=16 * 20 * 4))


def test_pixel_limit_from_env(dicom_files, monkeypatch):
    monkeypatch.setenv("MEDZERO_MAX_IMAGE_PIXELS", "1000")
    assert ImageLimits.from_env().max_pixels == 1000
    _one_line_error(dicom_files["mono2"], "over the limit of 1,000")  # 32×40 = 1280 pixels


def test_missing_decoder_names_uid_and_package(dicom_files, monkeypatch):
    """A decoder pydicom knows but whose plugins are all missing: the message names what to install."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import RLELossless

    decoder = get_decoder(RLELossless)
    monkeypatch.setattr(decoder, "_available", {})
    monkeypatch.setattr(decoder, "_unavailable", {"pylibjpeg": ("pylibjpeg>=2.0", "pylibjpeg-rle>=2.0")})
    message = _one_line_error(get_testdata_file("MR_small_RLE.dcm"), "1.2.840.10008.1.2.5")
    assert "RLE Lossless" in message and "pylibjpeg-rle" in message
