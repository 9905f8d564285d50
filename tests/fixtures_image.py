"""Fixtures for the image path: tiny open_clip checkpoints in the real ``local-dir:`` format, and
test images (PNG, JPEG, TIFF, DICOM) written with Pillow and pydicom.

Import into a test module with ``from fixtures_image import *`` (or from conftest.py).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

__all__ = [
    "tiny_clip_dir",
    "tiny_hf_clip_dir",
    "image_files",
    "dicom_files",
    "isolated_cache",
    "write_dicom",
    "build_open_clip_checkpoint",
    "TINY_HF_WORDS",
]

_MEAN = [0.48145466, 0.4578275, 0.40821073]
_STD = [0.26862954, 0.26130258, 0.27577711]

#: Words in the tiny BERT vocabulary (texts made of them tokenise to distinct ids).
TINY_HF_WORDS = [
    "a", "an", "the", "of", "photo", "chest", "radiograph", "showing", "x", "ray", "normal", "lung", "lungs",
    "pneumonia", "effusion", "pleural", "edema", "cardiomegaly", "no", "finding", "skin", "lesion", "image",
]


def build_open_clip_checkpoint(
    directory: Path, model_cfg: dict, preprocess_cfg: dict, seed: int = 0, logit_scale: float | None = None
) -> Path:
    """Write ``open_clip_config.json`` and a randomly initialised ``open_clip_model.safetensors``.

    ``logit_scale`` (the exponentiated value) replaces open_clip's initial 1/0.07, as training does.
    """
    import open_clip
    import torch
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}, indent=2)
    )
    torch.manual_seed(seed)
    model = open_clip.create_model(f"local-dir:{directory}", load_weights=False)
    if logit_scale is not None:
        with torch.no_grad():
            model.logit_scale.fill_(float(np.log(logit_scale)))
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(directory / "open_clip_model.safetensors"))
    return directory


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    """A tiny CLIP with open_clip's own text transformer and ViT (64×64 input)."""
    model_cfg = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    preprocess_cfg = {"mean": _MEAN, "std": _STD, "interpolation": "bicubic", "resize_mode": "shortest"}
    return build_open_clip_checkpoint(tmp_path_factory.mktemp("tiny_clip"), model_cfg, preprocess_cfg)


@pytest.fixture(scope="session")
def tiny_hf_clip_dir(tmp_path_factory) -> Path:
    """A tiny BiomedCLIP-shaped model: timm ViT image tower + Hugging Face BERT text tower.

    As in BiomedCLIP's ``open_clip_config.json``, ``text_cfg`` names ``hf_model_name`` and
    ``hf_tokenizer_name``; here they point at a local folder with a random ``BertModel``
    (``save_pretrained``: config.json + model.safetensors) and a WordPiece tokenizer. The
    tokenizer is saved into the checkpoint folder too, where open_clip's ``local-dir:`` loader looks.
    """
    from transformers import BertConfig, BertModel, BertTokenizer
    import torch

    root = tmp_path_factory.mktemp("tiny_hf_clip")
    bert_dir, ckpt_dir = root / "bert", root / "clip"
    vocab_list = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *TINY_HF_WORDS]
    tokenizer = BertTokenizer(vocab={tok: i for i, tok in enumerate(vocab_list)})
    torch.manual_seed(1)
    bert = BertModel(
        BertConfig(
            vocab_size=len(vocab_list), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
            intermediate_size=64, max_position_embeddings=64, pad_token_id=0,
        ),
        add_pooling_layer=False,
    )
    bert.save_pretrained(bert_dir)
    tokenizer.save_pretrained(bert_dir)
    tokenizer.save_pretrained(ckpt_dir)
    model_cfg = {
        "embed_dim": 32,
        "vision_cfg": {
            "timm_model_name": "test_vit", "timm_model_pretrained": False, "timm_pool": "", "timm_proj": "linear",
            "image_size": 160,
        },
        "text_cfg": {
            "hf_model_name": str(bert_dir), "hf_tokenizer_name": str(bert_dir), "hf_proj_type": "mlp",
            "hf_pooler_type": "cls_last_hidden_state_pooler", "context_length": 24,
        },
    }
    preprocess_cfg = {"mean": _MEAN, "std": _STD}
    # BiomedCLIP's trained scale is near open_clip's cap of 100.
    return build_open_clip_checkpoint(ckpt_dir, model_cfg, preprocess_cfg, seed=2, logit_scale=100.0)


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    """A fresh MEDZERO_CACHE_DIR and no encoders kept from other tests."""
    from medzero.encoders import factory as encoder

    monkeypatch.setenv("MEDZERO_CACHE_DIR", str(tmp_path / "cache"))
    encoder.clear_loaded()
    yield tmp_path / "cache"
    encoder.clear_loaded()


# -- test images ---------------------------------------------------------------------------------


def _gradient(h: int, w: int, scale: float = 255.0) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return (x + 2 * y) / (w + 2 * h - 3) * scale


@pytest.fixture(scope="session")
def image_files(tmp_path_factory) -> dict[str, Path]:
    from PIL import Image

    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    files: dict[str, Path] = {}
    gray8 = _gradient(48, 64).astype(np.uint8)
    rgb = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    rgba = rng.integers(0, 256, (40, 30, 4), dtype=np.uint8)
    gray16 = (_gradient(48, 64, 4095.0) + 100).astype(np.uint16)  # 12-bit data in a 16-bit PNG
    for name, array, fmt in (
        ("gray8.png", gray8, "PNG"), ("rgb.png", rgb, "PNG"), ("rgba.png", rgba, "PNG"),
        ("gray16.png", gray16, "PNG"), ("photo.jpg", rgb, "JPEG"), ("rgb.tiff", rgb, "TIFF"),
        ("gray16.tiff", gray16, "TIFF"),
    ):
        files[name] = root / name
        Image.fromarray(array).save(files[name], format=fmt)
    # A JPEG saved under a .png name: the content decides, not the extension.
    files["jpeg_named.png"] = root / "jpeg_named.png"
    Image.fromarray(rgb).save(files["jpeg_named.png"], format="JPEG", quality=90)
    files["text.txt"] = root / "notes.png"
    files["text.txt"].write_text("Patient notes: not an image at all.\n" * 20)
    data = files["rgb.png"].read_bytes()
    files["truncated.png"] = root / "truncated.png"
    files["truncated.png"].write_bytes(data[: len(data) // 2])
    files["huge_header.png"] = root / "huge_header.png"
    files["huge_header.png"].write_bytes(_png_with_size(30000, 30000))
    files["zero.png"] = root / "zero.png"
    files["zero.png"].write_bytes(_png_with_size(0, 16))
    return files


def _png_with_size(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width × height`` (8-bit gray) followed by a tiny IDAT."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 17)) + chunk(b"IEND", b"")


# -- DICOM ---------------------------------------------------------------------------------------

PHI = {
    "PatientName": "Doe^Jane^Q",
    "PatientID": "MRN-99812345",
    "PatientBirthDate": "19510317",
    "StudyDate": "20240229",
    "SeriesDate": "20240229",
    "AccessionNumber": "ACC-7731926",
    "InstitutionName": "Saint Example General Hospital",
    "ReferringPhysicianName": "House^Gregory",
    "StudyDescription": "Thorax followup smoker Janet",
    "ImageComments": "pt says pain left side since Tuesday",
    "OperatorsName": "Tech^Alice",
    "StudyID": "STUDY-424242",
}


def part10_dataset(sop_class: str, transfer_syntax: str, *, study: bool = False):
    """A data set with its file meta and a fresh SOP Instance UID (and Study/Series UIDs with ``study``)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    if study:
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    return ds


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    modality: str = "DX",
    transfer_syntax: str | None = None,
    **attrs,
) -> Path:
    """Write ``pixels`` ((rows, cols), (frames, rows, cols) or (rows, cols, 3)) as a DICOM Part 10 file."""
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

    ds = part10_dataset(SecondaryCaptureImageStorage, ExplicitVRLittleEndian)
    ds.Modality = modality
    ds.set_pixel_data(pixels, photometric_interpretation=photometric, bits_stored=bits_stored or pixels.dtype.itemsize * 8)
    for key, value in attrs.items():
        setattr(ds, key, value)
    if transfer_syntax is not None:
        ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="session")
def dicom_files(tmp_path_factory) -> dict[str, Path]:
    from pydicom.encaps import encapsulate

    root = tmp_path_factory.mktemp("dicom")
    rng = np.random.default_rng(1)
    files: dict[str, Path] = {}
    twin = rng.integers(0, 4096, (32, 40), dtype=np.uint16)
    files["mono2"] = write_dicom(root / "mono2.dcm", twin, bits_stored=12, WindowCenter=2000, WindowWidth=3000)
    files["mono1"] = write_dicom(
        root / "mono1.dcm", twin, photometric="MONOCHROME1", bits_stored=12, WindowCenter=2000, WindowWidth=3000
    )
    files["mono2_nowindow"] = write_dicom(root / "mono2_nowindow.dcm", twin, bits_stored=12)
    files["mono1_nowindow"] = write_dicom(root / "mono1_nowindow.dcm", twin, photometric="MONOCHROME1", bits_stored=12)
    ct = rng.integers(-1000, 2000, (24, 24)).astype(np.int16)
    files["ct"] = write_dicom(
        root / "ct.dcm", ct, modality="CT", RescaleSlope="2", RescaleIntercept="-1024",
        WindowCenter="40", WindowWidth="400", BodyPartExamined="CHEST", PixelSpacing=[0.5, 0.75],
    )
    files["phi"] = write_dicom(
        root / "phi.dcm", twin, bits_stored=12, ViewPosition="PA", BodyPartExamined="CHEST",
        Manufacturer="ACME Imaging", PixelSpacing=[0.139, 0.139], **PHI,
    )
    frames = np.stack([np.full((16, 20), 100 * (i + 1), dtype=np.uint16) for i in range(5)])
    frames[:, 0, 0] = 0  # a non-constant frame, so min–max scaling is defined
    files["multiframe"] = write_dicom(root / "multiframe.dcm", frames, bits_stored=16)
    files["rgb"] = write_dicom(
        root / "rgb.dcm", rng.integers(0, 256, (20, 30, 3), dtype=np.uint8), photometric="RGB", modality="XC"
    )
    files["large"] = write_dicom(
        root / "large.dcm", (_gradient(2048, 2048, 4000.0)).astype(np.uint16), bits_stored=12, modality="DX"
    )
    # Bad inputs.
    no_pixels = root / "no_pixels.dcm"
    write_dicom(no_pixels, twin[:2, :2])
    import pydicom

    ds = pydicom.dcmread(no_pixels)  # a structured report: a DICOM object that is not an image
    for keyword in ("PixelData", "Rows", "Columns", "SamplesPerPixel", "PhotometricInterpretation",
                    "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation"):
        delattr(ds, keyword)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
    ds.Modality = "SR"
    ds.save_as(no_pixels, enforce_file_format=True)
    files["no_pixels"] = no_pixels
    data = files["mono2"].read_bytes()
    files["truncated"] = root / "truncated.dcm"
    files["truncated"].write_bytes(data[: len(data) - 700])
    files["truncated_header"] = root / "truncated_header.dcm"
    files["truncated_header"].write_bytes(data[:200])
    ds = pydicom.dcmread(files["mono2"])
    ds.Rows, ds.Columns = 60000, 60000  # the header claims 3.6 gigapixels; the data is tiny
    files["huge_header"] = root / "huge_header.dcm"
    ds.save_as(files["huge_header"], enforce_file_format=True)
    ds = pydicom.dcmread(files["mono2"])
    ds.Rows = 0
    files["zero_size"] = root / "zero_size.dcm"
    ds.save_as(files["zero_size"], enforce_file_format=True)
    ds = pydicom.dcmread(files["mono2"])
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2 Main Profile: no pydicom decoder
    ds.PixelData = encapsulate([b"\xff\x0a" + b"\x00" * 64])
    ds["PixelData"].VR = "OB"
    files["mpeg2"] = root / "mpeg2.dcm"
    ds.save_as(files["mpeg2"], enforce_file_format=True)
    return files


# -- hostile DICOM and large images (tests/test_hostile_image.py, tests/test_phi_logs.py) ----------

#: Unique, made-up identifiers planted in hostile files; none may appear in any output or log.
PLANTED = {
    "PatientName": "Qwertyuk^Zebulonia",
    "PatientID": "PID-73X9-QQ5521",
    "PatientBirthDate": "19270914",
    "PatientAddress": "77 Kookaburra Crescent Wagga",
}
CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"


def chest_pixels(size: int = 256) -> np.ndarray:
    """An 8-bit picture with a chest radiograph's layout: a bright body, two dark lung fields."""
    y, x = np.mgrid[0:size, 0:size] / size
    pixels = 200 - 120 * np.abs(x - 0.5)
    for cx in (0.31, 0.69):
        lung = ((x - cx) / 0.16) ** 2 + ((y - 0.5) / 0.31) ** 2 < 1
        pixels = np.where(lung, 40 + 30 * y, pixels)
    return np.clip(pixels, 0, 255).astype(np.uint8)


def jpeg_dicom(path: Path, pixels: np.ndarray, *, keep: float | None = None, quality: int = 90, **attrs) -> Path:
    """``pixels`` (8-bit grayscale) as a JPEG baseline CR Part-10 file with its UIDs.

    ``keep``: the share of the JPEG stream kept (a stream cut before its end, inside an otherwise
    well-formed DICOM, as a transfer that died mid-frame and was wrapped anyway leaves it).
    """
    import io

    from PIL import Image
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    stream = buffer.getvalue()
    if keep is not None:
        stream = stream[: int(len(stream) * keep)]
    ds = part10_dataset(CR_IMAGE_STORAGE, JPEGBaseline8Bit, study=True)
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "CR", "CHEST", "PA"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    for key, value in attrs.items():
        setattr(ds, key, value)
    ds.PixelData = encapsulate([stream])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


def damaged_uid_dicom(path: Path, tag: int) -> Path:
    """A CR with :data:`PLANTED` identifiers whose UI element ``tag`` has a length that runs over the
    following elements up to the end of Patient's Address, as a damaged writer leaves it.

    ``0x00020010`` (Transfer Syntax UID, in the file meta) swallows the start of the data set;
    ``0x0008001A`` (Related General SOP Class UID) swallows the patient module.
    """
    import struct

    from pydicom.uid import generate_uid

    write_dicom(
        path, (np.arange(64 * 64).reshape(64, 64) % 4096).astype(np.uint16), bits_stored=12, modality="CR",
        StudyInstanceUID=generate_uid(), SeriesInstanceUID=generate_uid(), RelatedGeneralSOPClassUID="1.2.840.10008.5.1.4.1.1.1",
        WindowCenter=2000, WindowWidth=4000, **PLANTED,
    )
    raw = bytearray(path.read_bytes())
    position = raw.index(struct.pack("<HH", tag >> 16, tag & 0xFFFF) + b"UI")
    end = raw.index(PLANTED["PatientAddress"].encode()) + len(PLANTED["PatientAddress"])
    end += end % 2
    struct.pack_into("<H", raw, position + 6, end - (position + 8))
    path.write_bytes(bytes(raw))
    return path


def rle_with_bogus_segments(path: Path, *, outside: bool) -> Path:
    """pydicom's MR_small_RLE.dcm with its RLE header damaged: a segment offset past the frame's end
    (``outside``), or the offsets moved so that each segment's length is wrong."""
    import struct

    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.encaps import encapsulate, get_frame

    ds = pydicom.dcmread(get_testdata_file("MR_small_RLE.dcm"))
    frame = bytearray(get_frame(ds.PixelData, 0))
    count = struct.unpack_from("<I", frame, 0)[0]
    if outside:
        struct.pack_into("<I", frame, 4 * count, len(frame) + 1000)
    else:
        struct.pack_into("<I", frame, 8, struct.unpack_from("<I", frame, 8)[0] - 37)  # segment 1 shorter, 2 longer
    ds.PixelData = encapsulate([bytes(frame)])
    ds.save_as(path, enforce_file_format=True)
    return path


def large_jpeg_dicom(path: Path, size: int = 10_000) -> Path:
    """A ``size``×``size`` JPEG CR with rescale and a window: about 1.3 MB on disk, 100 M pixels."""
    y = np.linspace(0.0, 1.0, size, dtype=np.float32)
    pixels = (np.add.outer(y, y) * 100).astype(np.uint8)
    pixels[size // 3 : size // 3 + size // 50, :] = 220
    pixels[:, size // 2 : size // 2 + size // 30] = 30
    return jpeg_dicom(path, pixels, quality=80, RescaleSlope="2", RescaleIntercept="-100", WindowCenter="150", WindowWidth="300")


def large_rgb_png(path: Path, size: int = 10_000) -> Path:
    """A ``size``×``size`` RGB PNG of smooth gradients: a few MB on disk, 100 M pixels."""
    from PIL import Image

    y = np.linspace(0.0, 1.0, size, dtype=np.float32)
    gray = (np.add.outer(y, y) * 100).astype(np.uint8)
    Image.fromarray(np.stack([gray, gray[::-1], gray[:, ::-1]], axis=-1)).save(path, compress_level=1)
    return path
