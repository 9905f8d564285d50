"""Content sniffing: every format from its magic bytes and from real files, never from the name."""
from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from medzero.core.errors import BadInputError
from medzero.core.sniff import AUDIO_FORMATS, HEAD_BYTES, IMAGE_FORMATS, sniff, sniff_source

W64 = bytes.fromhex("726966662e91cf11a5d628db04c10000") + b"\x00" * 8 + bytes.fromhex(
    "77617665f3acd3118cd100c04f8edb8a"
)
EBML = b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\xf7\x81\x01\x42\xf2\x81\x04\x42\xf3\x81\x08\x42\x82\x84"

MAGIC = [
    (b"RIFF\x24\x08\x00\x00WAVEfmt \x10\x00\x00\x00", "audio", "wav"),
    (b"RF64\xff\xff\xff\xffWAVEds64", "audio", "wav"),
    (b"BW64\xff\xff\xff\xffWAVEds64", "audio", "wav"),
    (W64, "audio", "wav"),
    (b"fLaC\x00\x00\x00\x22\x10\x00", "audio", "flac"),
    (b"OggS\x00\x02" + b"\x00" * 22 + b"OpusHead", "audio", "ogg"),
    (b"OggS\x00\x02" + b"\x00" * 22 + b"\x01vorbis", "audio", "ogg"),
    (b"ID3\x04\x00\x00\x00\x00\x00\x0a" + b"\x00" * 10 + b"\xff\xfb\x90\x64", "audio", "mp3"),
    (b"\xff\xfb\x90\x64\x00\x00", "audio", "mp3"),  # MPEG-1 layer III, 128 kb/s, 44.1 kHz
    (b"\xff\xf3\x64\xc4\x00\x00", "audio", "mp3"),  # MPEG-2 layer III
    (b"\xff\xf1\x50\x80\x02\x1f\xfc", "audio", "aac"),  # ADTS, MPEG-4 AAC-LC, 44.1 kHz
    (b"\xff\xf9\x50\x80\x02\x1f\xfc", "audio", "aac"),  # ADTS, MPEG-2
    (b"ID3\x04\x00\x00\x00\x00\x00\x00\xff\xf1\x50\x80\x02\x1f\xfc", "audio", "aac"),
    (b"ID3\x04\x00\x00\x00\x00\x00\x00fLaC\x00\x00\x00\x22", "audio", "flac"),
    (b"\x00\x00\x00\x20ftypM4A \x00\x00\x02\x00M4A isommp42\x00\x00\x00\x00", "audio", "m4a"),
    (b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isommp41", "audio", "m4a"),
    (b"\x00\x00\x00\x14ftyp3gp4\x00\x00\x00\x003gp4", "audio", "m4a"),
    (b"#!AMR\n\x3c\x48\xf5", "audio", "amr"),
    (b"#!AMR-WB\n\x24", "audio", "amr"),
    (EBML + b"webm\x42\x87\x81\x04", "audio", "webm"),
    (EBML[:-4] + b"\x42\x82\x88matroska", "audio", "mkv"),
    (b"FORM\x00\x00\x10\x00AIFFCOMM", "audio", "aiff"),
    (b"\x00" * 128 + b"DICM\x02\x00\x00\x00UL\x04\x00", "image", "dicom"),
    (b"II*\x00" + b"\x00" * 124 + b"DICM", "image", "dicom"),  # DICOM with a TIFF preamble
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR", "image", "png"),
    (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", "image", "jpeg"),
    (b"II*\x00\x08\x00\x00\x00", "image", "tiff"),
    (b"MM\x00*\x00\x00\x00\x08", "image", "tiff"),
    (bytes.fromhex("0000000c6a5020200d0a870a") + b"\x00\x00\x00\x14ftypjp2 ", "image", "jpeg2000"),
    (bytes.fromhex("ff4fff51002f"), "image", "jpeg2000"),
    (b"GIF89a\x01\x00\x01\x00", "image", "gif"),
    (b"RIFF\x24\x00\x00\x00WEBPVP8 ", "image", "webp"),
    (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", "image", "heif"),
    (b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf", "image", "avif"),
]

NOT_RECOGNISED = [
    b"",
    b"patient notes: cough for three days\n",
    b"RIFF\x24\x00\x00\x00AVI LIST",  # RIFF, but video
    b"\xff\xfb\xf0\x64\x00\x00",  # MPEG sync with the invalid bitrate index 1111
    b"\xff\xed\x90\x64",  # MPEG sync with the reserved layer 00 and not ADTS
    b"\x08\x00\x05\x00ZZ\x00\x01",  # group 0x0008, but no VR and an odd length
    b"PK\x03\x04\x14\x00\x00\x00",  # a zip archive
    b"%PDF-1.7\n",
]


@pytest.mark.parametrize("head, modality, fmt", MAGIC, ids=[f"{m[2]}-{i}" for i, m in enumerate(MAGIC)])
def test_magic(head, modality, fmt):
    assert sniff(head.ljust(HEAD_BYTES, b"\x00")) == (modality, fmt)
    assert fmt in (AUDIO_FORMATS if modality == "audio" else IMAGE_FORMATS)


@pytest.mark.parametrize("head", NOT_RECOGNISED)
def test_unrecognised(head):
    assert sniff(head) == (None, None)


@pytest.mark.parametrize("fmt", ["wav", "flac", "ogg", "mp3", "m4a", "amr"])
def test_real_audio_files(audio_clips, fmt):
    assert sniff_source(audio_clips[fmt]) == ("audio", fmt)


def test_text_named_wav_is_not_audio(tmp_path):
    path = tmp_path / "x.wav"
    path.write_text("Patient presents with a productive cough.\n")
    assert sniff_source(path) == (None, None)


@pytest.mark.parametrize("fmt, name", [("PNG", "png"), ("JPEG", "jpeg"), ("TIFF", "tiff"), ("GIF", "gif")])
def test_image_named_wav_is_an_image(tmp_path, fmt, name):
    path = tmp_path / "recording.wav"
    Image.new("L", (32, 32), 128).save(path, format=fmt)
    assert sniff_source(path) == ("image", name)
    assert sniff_source(str(path)) == ("image", name)


def test_real_dicom():
    path = get_testdata_file("CT_small.dcm")
    assert sniff_source(path) == ("image", "dicom")


@pytest.mark.parametrize("implicit_vr", [True, False])
def test_dicom_without_preamble(implicit_vr):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del ds.file_meta
    ds.preamble = None
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=False, implicit_vr=implicit_vr, little_endian=True)
    data = buffer.getvalue()
    assert data[:2] == b"\x08\x00"  # no preamble, the data set starts at once
    assert sniff(data) == ("image", "dicom")


def test_dicom_file_meta_without_preamble():
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, pydicom.dcmread(get_testdata_file("CT_small.dcm")))
    assert sniff(buffer.getvalue()[132:]) == ("image", "dicom")


def test_source_kinds_agree(audio_clips):
    path = audio_clips["flac"]
    data = path.read_bytes()
    expected = ("audio", "flac")
    assert sniff_source(data) == expected
    assert sniff_source(bytearray(data)) == expected
    assert sniff_source(memoryview(data)) == expected
    with open(path, "rb") as f:
        f.seek(0)
        assert sniff_source(f) == expected
        assert f.tell() == 0


def test_file_object_position_is_restored():
    stream = io.BytesIO(b"junk" + b"fLaC" + b"\x00" * 600)
    stream.seek(4)
    assert sniff_source(stream) == ("audio", "flac")
    assert stream.tell() == 4


def test_array():
    assert sniff_source(np.zeros(16, np.float32)) == ("array", None)


def test_missing_file(tmp_path):
    with pytest.raises(BadInputError, match="file not found") as info:
        sniff_source(tmp_path / "nope.wav")
    assert "nope.wav" in str(info.value)
