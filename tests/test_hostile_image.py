"""Hostile images and DICOM: every bad input is one line naming the file, through ``read_image``, the
``Classifier``, the real CLI (``classify``, ``index add``) and ``medzero listen``; nothing else is
printed; decoding a large image stays within a bounded, documented amount of memory.

Inputs are real files: pydicom's reference files in several transfer syntaxes, PNG/JPEG/TIFF
written with Pillow, and damaged copies of them (cut, mutated, with bogus headers).
"""
from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

import medzero
from fixtures_image import (
    chest_pixels,
    jpeg_dicom,
    large_jpeg_dicom,
    large_rgb_png,
    rle_with_bogus_segments,
    write_dicom,
)
from medzero.core.errors import BadInputError, MedzeroError
from medzero.image.io import read_image
from medzero.image.pixels import ImageLimits

#: pydicom reference files, one per transfer syntax family medzero decodes.
REFERENCE_DICOM = [
    "CT_small.dcm",  # explicit VR little endian, rescale
    "MR_small_implicit.dcm",  # implicit VR
    "MR_small_bigendian.dcm",  # explicit VR big endian
    "MR_small_RLE.dcm",  # RLE lossless
    "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline, YBR colour
    "JPGExtended.dcm",  # JPEG extended 12-bit
    "SC_rgb_jpeg_gdcm.dcm",  # JPEG lossless
    "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS
    "MR_small_jp2klossless.dcm",  # JPEG 2000 lossless
    "examples_palette.dcm",  # palette colour
]


def medzero_command() -> list[str]:
    """The ``medzero`` command as installed (its console script), else ``python -m medzero.cli``."""
    script = Path(sys.executable).with_name("medzero")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "medzero.cli"]


def cli(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """The real ``medzero`` command in a fresh process: what a user sees on stdout and stderr."""
    environment = dict(os.environ, HF_HUB_OFFLINE="1", **(env or {}))
    return subprocess.run([*medzero_command(), *args], capture_output=True, text=True, env=environment, timeout=timeout)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> dict[str, Path]:
    """Damaged DICOM files, each with what its one-line error must say."""
    root = tmp_path_factory.mktemp("hostile")
    files: dict[str, Path] = {}
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.Rows = ds.Columns = 1  # 32 KB of pixel data for one pixel
    ds.save_as(files.setdefault("rows_columns_one", root / "ct_1x1.dcm"))
    for name in ("JPEG-lossy.dcm", "JPEG2000-embedded-sequence-delimiter.dcm"):
        files[name] = root / name
        files[name].write_bytes(Path(get_testdata_file(name)).read_bytes())
    files["rle_offset_outside"] = rle_with_bogus_segments(root / "rle_offset_outside.dcm", outside=True)
    files["rle_bogus_lengths"] = rle_with_bogus_segments(root / "rle_bogus_lengths.dcm", outside=False)
    files["truncated_jpeg"] = jpeg_dicom(root / "truncated_jpeg.dcm", chest_pixels(512), keep=0.6)
    raw = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    meta_end = 144 + int.from_bytes(raw[140:144], "little")  # (0002,0000) File Meta Information Group Length
    files["meta_only"] = root / "meta_only.dcm"
    files["meta_only"].write_bytes(raw[:meta_end])
    files["cut_in_dataset"] = root / "cut_in_dataset.dcm"
    files["cut_in_dataset"].write_bytes(raw[:1000])
    files["cut_in_preamble"] = root / "cut_in_preamble.dcm"
    files["cut_in_preamble"].write_bytes(raw[:100])
    files["sr"] = root / "report.dcm"
    files["sr"].write_bytes(Path(get_testdata_file("test-SR.dcm")).read_bytes())
    gsps = pydicom.dcmread(get_testdata_file("CT_small.dcm"), stop_before_pixels=True)
    for keyword in ("Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
                    "SamplesPerPixel", "PhotometricInterpretation"):
        delattr(gsps, keyword)
    gsps.SOPClassUID = gsps.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.11.1"
    gsps.Modality = "PR"
    gsps.save_as(files.setdefault("presentation_state", root / "presentation_state.dcm"))
    image_without_pixels = pydicom.dcmread(get_testdata_file("CT_small.dcm"), stop_before_pixels=True)
    image_without_pixels.save_as(files.setdefault("image_without_pixels", root / "ct_no_pixels.dcm"))
    return files


# -- item: a decoder's fault is one line naming the file ------------------------------------------


def test_rows_columns_one_is_an_error_row_not_a_crash(hostile, tiny_clip_dir, isolated_cache):
    path = hostile["rows_columns_one"]
    with pytest.raises(BadInputError) as info:
        read_image(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert "1×1 pixels" in message and "32,768 bytes" in message  # says what is wrong: the header, not the data
    classifier = medzero.Classifier(task="chest_xray_findings", image_model=str(tiny_clip_dir), device="cpu")
    bad, good = classifier.classify_batch([path, get_testdata_file("CT_small.dcm")])
    assert isinstance(bad.exception, BadInputError) and bad.error == message and bad.verdict is None
    assert good.error is None and good.scores


def _mutations(data: bytes, rng: random.Random, count: int) -> list[bytes]:
    """Seeded damage: cuts anywhere, bytes flipped in the headers, bytes overwritten anywhere,
    a run of 0xFF (lengths that run over what follows)."""
    out = []
    for i in range(count):
        kind = i % 4
        if kind == 0:
            out.append(data[: rng.randrange(1, len(data))])
            continue
        buffer = bytearray(data)
        if kind == 1:
            for _ in range(rng.randint(1, 6)):
                buffer[rng.randrange(min(len(buffer), 1024))] = rng.randrange(256)
        elif kind == 2:
            for _ in range(rng.randint(1, 12)):
                buffer[rng.randrange(len(buffer))] = rng.randrange(256)
        else:
            start = rng.randrange(len(buffer))
            buffer[start : start + rng.randint(2, 8)] = b"\xff" * 8
        out.append(bytes(buffer))
    return out


def _fuzz_sources(image_files) -> list[tuple[str, bytes]]:
    sources = [(name, Path(get_testdata_file(name)).read_bytes()) for name in REFERENCE_DICOM]
    sources += [(name, image_files[name].read_bytes()) for name in ("rgb.png", "gray16.png", "photo.jpg", "rgb.tiff", "gray16.tiff")]
    return sources


def test_fuzzed_files_give_only_one_line_medzero_errors(image_files, caplog, recwarn):
    """Only MedzeroError subclasses come out, each one line naming the file; nothing is logged or
    warned by the libraries; what decodes gives finite [0, 1] pixels and an RGB picture."""
    rng = random.Random(19)
    decoded = failed = 0
    for name, data in _fuzz_sources(image_files):
        for i, damaged in enumerate(_mutations(data, rng, 40)):
            label = f"fuzz-{i}-{name}"
            try:
                image = read_image(damaged, name=label, reduce_to=rng.choice([None, 32]))
                picture = image.to_pil()
            except MedzeroError as exc:
                failed += 1
                message = str(exc)
                assert "\n" not in message and message.startswith(label), message
                continue
            decoded += 1
            assert picture.mode == "RGB" and picture.size[0] > 0
            assert np.isfinite(image.pixels).all() and 0.0 <= image.pixels.min() <= image.pixels.max() <= 1.0
    assert decoded > 50 and failed > 50  # the damage reaches both outcomes
    assert not [r for r in caplog.records if not r.name.startswith("medzero")], "a library logged"
    assert not [w for w in recwarn if "pydicom" in w.filename or "PIL" in w.filename], "a library warned"


def test_fuzzed_files_through_the_classifier_are_error_rows(image_files, tiny_clip_dir, isolated_cache, tmp_path):
    rng = random.Random(7)
    paths = []
    for name, data in _fuzz_sources(image_files)[::2]:
        for i, damaged in enumerate(_mutations(data, rng, 6)):
            paths.append(tmp_path / f"{i}-{name}")
            paths[-1].write_bytes(damaged)
    classifier = medzero.Classifier(task="chest_xray_findings", image_model=str(tiny_clip_dir), device="cpu", batch_size=8)
    results = classifier.classify_batch(paths)
    assert len(results) == len(paths)
    for path, result in zip(paths, results):
        if result.error is not None:
            assert isinstance(result.exception, MedzeroError), (path, result.exception)
            assert "\n" not in result.error and str(path) in result.error
        else:
            assert result.scores
    assert any(r.error for r in results) and any(r.error is None for r in results)


# -- items: the CLI prints one line per bad file and nothing else ----------------------------------


BAD_FOR_CLI = (
    "rows_columns_one", "JPEG-lossy.dcm", "JPEG2000-embedded-sequence-delimiter.dcm", "rle_offset_outside",
    "rle_bogus_lengths", "truncated_jpeg", "meta_only", "sr",
)


def test_classify_prints_one_line_per_bad_file_and_goes_on(hostile, tiny_clip_dir, tmp_path):
    bad = [hostile[name] for name in BAD_FOR_CLI]
    good = get_testdata_file("CT_small.dcm")
    run = cli("classify", "--format", "json", "--image-model", str(tiny_clip_dir), "--device", "cpu", *map(str, bad), good,
              env={"MEDZERO_CACHE_DIR": str(tmp_path / "cache")})
    assert run.returncode == 1
    results = {r["path"]: r for r in json.loads(run.stdout)}
    assert results[good]["error"] is None and results[good]["scores"]
    lines = error_lines(run.stderr)
    assert len(lines) == len(bad), run.stderr  # no tracebacks, no library warnings, nothing twice
    for path, line in zip(bad, lines):
        assert line.startswith(f"medzero: error: {path}: "), line
        assert results[str(path)]["error"] and results[str(path)]["verdict"] is None


def test_index_add_prints_one_line_per_bad_file_and_goes_on(hostile, tiny_clip_dir, tmp_path):
    bad = [hostile[name] for name in BAD_FOR_CLI]
    run = cli("index", "add", str(tmp_path / "index"), *map(str, bad), get_testdata_file("CT_small.dcm"),
              "--image-model", str(tiny_clip_dir), "--device", "cpu", env={"MEDZERO_CACHE_DIR": str(tmp_path / "cache")})
    assert run.returncode == 1
    assert run.stdout.startswith("added 1, skipped 0 duplicate(s), 8 error(s)"), run.stdout
    lines = error_lines(run.stderr)
    assert len(lines) == len(bad), run.stderr
    assert sorted(lines) == sorted(line for line in lines if re.match(r"medzero: error: \S+\.dcm: ", line))
    assert {line.split(": ")[2] for line in lines} == {str(p) for p in bad}


# -- item: messages that say what is really wrong --------------------------------------------------


@pytest.mark.parametrize(
    "name,expected,not_expected",
    [
        ("meta_only", r"DICOM file ends after its file meta information \(no dataset\)", "TIFF"),
        ("cut_in_preamble", r"too short for a TIFF image.*DICOM file's 128-byte preamble", "cannot identify"),
        ("cut_in_dataset", r"DICOM file is truncated: it ends inside its data set, before any pixel data", "TIFF"),
        ("sr", r"DICOM has no pixel data \(it is a Comprehensive SR Storage, not an image\)", "truncat"),
        ("presentation_state", r"DICOM has no pixel data \(it is a Grayscale Softcopy Presentation State Storage, not an image\)", "truncat"),
        ("image_without_pixels", r"DICOM has no pixel data \(it is a CT Image Storage object .* saved or sent without its pixels\)", "truncat"),
        ("truncated_jpeg", r"JPEG frame is incomplete: .* without its end-of-image marker", "decode"),
        ("rle_offset_outside", r"RLE frame has a damaged header", "Traceback"),
    ],
)
def test_messages_say_what_is_wrong(hostile, name, expected, not_expected):
    path = hostile[name]
    with pytest.raises(BadInputError) as info:
        read_image(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert re.search(expected, message), message
    assert not_expected not in message


# -- item: a truncated JPEG inside a well-formed DICOM ---------------------------------------------


def test_truncated_jpeg_frame_is_refused_not_triaged(hostile, tiny_clip_dir, isolated_cache, tmp_path):
    path = hostile["truncated_jpeg"]
    complete = jpeg_dicom(tmp_path / "complete.dcm", chest_pixels(512))
    assert read_image(complete).shape == (512, 512)
    classifier = medzero.Classifier(task="chest_xray_findings", image_model=str(tiny_clip_dir), device="cpu")
    cut, whole = classifier.classify_batch([path, complete])
    assert cut.verdict is None and cut.scores == {} and "incomplete" in cut.error and cut.error.startswith(str(path))
    assert whole.error is None and whole.verdict in {"routine", "review", "urgent", "not_applicable"}


def test_listen_refuses_an_incomplete_frame_and_goes_on(hostile, tiny_clip_dir, tmp_path):
    pytest.importorskip("pynetdicom", reason="the pacs extra is not installed")
    from pydicom.uid import JPEGBaseline8Bit

    from test_pacs import c_store, free_port, poll, wait_for_port

    port = free_port()
    log_path = tmp_path / "listen.log"
    env = dict(os.environ, HF_HUB_OFFLINE="1", MEDZERO_CACHE_DIR=str(tmp_path / "cache"), PYTHONUNBUFFERED="1")
    args = [*medzero_command(), "listen", "--ae-title", "MEDZERO", "--port", str(port), "--bind", "127.0.0.1",
            "--allow", "TESTSCU", "--results", str(tmp_path / "results.sqlite"), "--image-model", str(tiny_clip_dir),
            "--device", "cpu", "--study-idle", "1"]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    try:
        wait_for_port(port, process)
        cut = pydicom.dcmread(hostile["truncated_jpeg"])
        assert c_store(port, hostile["truncated_jpeg"], syntax=JPEGBaseline8Bit) == 0xC210
        good = jpeg_dicom(tmp_path / "good.dcm", chest_pixels(512))
        assert c_store(port, good, syntax=JPEGBaseline8Bit) == 0x0000
        study = str(pydicom.dcmread(good, stop_before_pixels=True).StudyInstanceUID)
        assert poll(lambda: f"study {study} from TESTSCU: 1 image(s) triaged" in log_path.read_text(), timeout=120)
        assert process.poll() is None  # the node goes on
    finally:
        process.terminate()
        process.wait(30)
    lines = log_path.read_text().splitlines()
    mentions = [line for line in lines if str(cut.SOPInstanceUID) in line]
    assert len(mentions) == 1 and mentions[0].startswith("medzero: ERROR: C-STORE from TESTSCU refused (0xC210)"), mentions
    assert "end-of-image marker" in mentions[0]
    assert not any("Traceback" in line or "Warning" in line for line in lines)


# -- item: memory is bounded in decoded bytes ------------------------------------------------------


@pytest.fixture(scope="module")
def large_files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("large")
    return {"jpeg_dicom": large_jpeg_dicom(root / "large_jpeg.dcm"), "rgb_png": large_rgb_png(root / "large_rgb.png")}


_PEAK = """
import re, sys
from medzero.cli import main
code = main(["classify", "--format", "json", "--image-model", sys.argv[1], "--device", "cpu", *sys.argv[2:]])
peak = int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) // 1024
print(f"exit={code} peak_mib={peak}", file=sys.stderr)
"""


def _classify_peak_mib(model: Path, path: Path | str, cache: Path) -> int:
    """Peak resident memory (VmHWM) of ``medzero classify`` on one file, in a fresh process."""
    environment = dict(os.environ, HF_HUB_OFFLINE="1", MEDZERO_CACHE_DIR=str(cache))
    run = subprocess.run([sys.executable, "-c", _PEAK, str(model), str(path)], capture_output=True, text=True,
                         env=environment, timeout=600, cwd=cache.parent)
    found = re.search(r"exit=(\d+) peak_mib=(\d+)", run.stderr)
    assert found and found.group(1) == "0", run.stderr[-2000:]
    return int(found.group(2))


def test_classifying_100_megapixel_images_stays_within_bounded_memory(large_files, tiny_clip_dir, tmp_path):
    """Measured on this machine before the fix: 4.1 GB for the 1.3 MB JPEG DICOM, 3.0 GB for the
    RGB PNG (a 0.85 GB baseline with torch); after: the baseline, and the baseline + 0.4 GB."""
    baseline = _classify_peak_mib(tiny_clip_dir, get_testdata_file("CT_small.dcm"), tmp_path / "cache")
    jpeg = _classify_peak_mib(tiny_clip_dir, large_files["jpeg_dicom"], tmp_path / "cache")
    png = _classify_peak_mib(tiny_clip_dir, large_files["rgb_png"], tmp_path / "cache")
    # the JPEG decodes at 1/8 by DCT scaling: 1250×1250 bytes, nothing near its 100 M pixels
    assert jpeg - baseline < 150, (baseline, jpeg)
    # PNG has no reduced decoding: Pillow's 400 MB RGB image, then Image.reduce, no full-size float copy
    assert png - baseline < 600, (baseline, png)


def test_decoded_bytes_limit_refuses_before_decoding(large_files, monkeypatch):
    monkeypatch.setenv("MEDZERO_MAX_IMAGE_DECODED_BYTES", str(200 * 2**20))
    limits = ImageLimits.from_env()
    assert limits.max_decoded_bytes == 200 * 2**20
    with pytest.raises(BadInputError) as info:
        read_image(large_files["rgb_png"], limits=limits)  # full size: 400 MB in Pillow + 2.4 GB of float32
    message = str(info.value)
    assert message.startswith(f"{large_files['rgb_png']}: decoding this 10000×10000 PNG takes about ")
    assert "over the limit of 200 MiB" in message and "MEDZERO_MAX_IMAGE_DECODED_BYTES" in message
    with pytest.raises(BadInputError, match="over the limit of 200 MiB"):
        read_image(large_files["jpeg_dicom"], limits=limits)  # full size: 100 M pixels of float32
    reduced = read_image(large_files["jpeg_dicom"], limits=limits, reduce_to=448)  # what a 224-pixel model needs
    assert reduced.metadata["decoded_size"] == [1250, 1250] and reduced.shape == (625, 625)
    monkeypatch.setenv("MEDZERO_MAX_IMAGE_DECODED_BYTES", "lots")
    with pytest.raises(BadInputError, match="MEDZERO_MAX_IMAGE_DECODED_BYTES='lots' is not a number"):
        ImageLimits.from_env()


def test_reduced_decoding_keeps_the_pixels(tmp_path):
    """Decoded smaller (JPEG DCT scaling, JPEG 2000 resolution levels, block averages) the picture is
    the full decode averaged, up to the codecs' own filters; window and rescale apply the same."""
    from medzero.image.pixels import block_mean

    chest = jpeg_dicom(tmp_path / "chest.dcm", chest_pixels(2048), RescaleSlope="2", RescaleIntercept="-100",
                       WindowCenter="150", WindowWidth="300")
    native = write_dicom(tmp_path / "native.dcm", (chest_pixels(1024).astype(np.uint16) * 16), bits_stored=12,
                         WindowCenter=2000, WindowWidth=4000)
    cases = [(chest, 256, 0.01), (native, 256, 1e-6), (get_testdata_file("JPEG2000.dcm"), 64, 0.01)]
    for path, reduce_to, tolerance in cases:
        full = read_image(path).pixels
        reduced = read_image(path, reduce_to=reduce_to)
        assert reduce_to <= min(reduced.shape) < 2 * reduce_to and "decoded_size" in reduced.metadata
        factor = full.shape[0] // reduced.shape[0]
        reference = block_mean(full, factor)[: reduced.shape[0], : reduced.shape[1]]
        assert float(np.abs(reduced.pixels[: reference.shape[0], : reference.shape[1]] - reference).mean()) < tolerance, path
