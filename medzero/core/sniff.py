"""Tell the modality and container format of an input from its first bytes.

File names and extensions are never consulted: a phone recording saved as ``notes.wav`` may hold
AMR, and a screenshot may be named ``.dcm``. :func:`sniff` looks only at the leading
:data:`HEAD_BYTES` bytes and answers ``(modality, format)``:

========  ==================================================================================
audio     ``wav`` (RIFF/RIFX/RF64/BW64/Wave64), ``flac``, ``ogg`` (Opus, Vorbis, FLAC, Speex),
          ``mp3``, ``aac`` (ADTS), ``m4a`` (any ISO-BMFF/QuickTime ``ftyp`` that is not an image
          brand), ``amr`` (NB and WB), ``silk`` (SILK v3: WeChat and QQ voice notes, ``#!SILK_V3``
          with or without Tencent's leading 0x02, whatever their name: ``.amr``, ``.slk``,
          ``.aud``), ``aiff``, ``webm`` and ``mkv`` (EBML)
image     ``dicom`` (with or without the 128-byte preamble), ``png``, ``jpeg``, ``tiff``,
          ``jpeg2000``, ``gif``, ``webp``, ``heif``, ``avif``
========  ==================================================================================

Anything else is ``(None, None)``. Video containers (MP4, MOV, WebM, Matroska) are reported as
audio because the audio loader decodes their first audio stream.

Raw headerless PCM is the one format no content reveals. :func:`sniff_source` reports ``pcm`` for
a source *named* ``*.pcm`` (a path, a named file object) whose content is none of the above: the
name is the only declaration such a file carries, and the content still wins (a WAV or an MP3
named ``.pcm`` is sniffed as what it is). Its layout is declared by a :class:`PcmFormat` (rate,
sample format, channels), which travels with the audio limits to the decoder.
"""
from __future__ import annotations

import os
import stat
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Optional

from .errors import BadInputError

__all__ = [
    "HEAD_BYTES", "AUDIO_FORMATS", "IMAGE_FORMATS", "MEDIA_SUFFIXES", "PCM_HEAD_BYTES", "PCM_SAMPLE_FORMATS", "PCM_SUFFIXES",
    "SAMPLE_RATE_RANGE", "PcmFormat", "check_regular_file", "declares_pcm", "read_head", "sniff", "sniff_source",
]

#: How many leading bytes :func:`sniff` needs; callers must pass at least this many when the
#: input is that long (DICOM's magic sits at offset 128).
HEAD_BYTES = 512

AUDIO_FORMATS = ("wav", "flac", "ogg", "mp3", "aac", "m4a", "amr", "silk", "aiff", "webm", "mkv", "pcm")
IMAGE_FORMATS = ("dicom", "png", "jpeg", "tiff", "jpeg2000", "gif", "webp", "heif", "avif")

#: File-name suffixes people give the formats above. Never used to decide what a file holds; only to
#: tell, inside a folder, a broken recording or image (``visit.wav`` holding text: an error row) from
#: a file that was never meant as one (``notes.txt``: reported as skipped).
MEDIA_SUFFIXES = frozenset({
    ".wav", ".wave", ".bwf", ".rf64", ".w64", ".flac", ".ogg", ".oga", ".opus", ".spx", ".mp3", ".aac",
    ".m4a", ".mp4", ".m4b", ".3gp", ".mov", ".amr", ".awb", ".slk", ".silk", ".aud", ".pcm", ".aif", ".aiff",
    ".aifc", ".webm", ".mka", ".mkv",
    ".dcm", ".dicom", ".dic", ".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".tif", ".tiff", ".jp2", ".j2k", ".j2c",
    ".jpx", ".gif", ".webp", ".heic", ".heif", ".avif",
})

#: Names that declare raw headerless PCM (see the module docstring).
PCM_SUFFIXES = frozenset({".pcm"})
#: How many leading bytes :func:`sniff` with ``pcm=True`` wants: room for three MPEG frames at 320 kbps.
PCM_HEAD_BYTES = 8192

#: Sample rates (Hz) medzero accepts from a header, with an array or declared for raw PCM. Below
#: 2 kHz (a 1 kHz band) no voice or body sound is captured; respiratory recordings at 4 kHz remain
#: inside. 768 kHz is the highest rate audio converters record. Anything outside is a corrupt
#: header, and a 1 Hz rate resampled to 48 kHz turns each byte into 48,000 samples.
SAMPLE_RATE_RANGE = (2_000, 768_000)

#: Raw PCM sample formats (FFmpeg's names): numpy dtype (``None``: packed 24-bit) and bytes per sample.
_PCM_LAYOUTS: dict[str, tuple[Optional[str], int]] = {
    "u8": ("u1", 1), "s8": ("i1", 1),
    "s16le": ("<i2", 2), "s16be": (">i2", 2),
    "s24le": (None, 3), "s24be": (None, 3),
    "s32le": ("<i4", 4), "s32be": (">i4", 4),
    "f32le": ("<f4", 4), "f32be": (">f4", 4),
    "f64le": ("<f8", 8), "f64be": (">f8", 8),
}
PCM_SAMPLE_FORMATS = tuple(_PCM_LAYOUTS)
_MAX_PCM_CHANNELS = 64


@dataclass(frozen=True)
class PcmFormat:
    """The layout of raw headerless PCM, which its bytes cannot tell: declared by the caller.

    The default is what phone SDKs and speech services write (16 kHz, signed 16-bit little-endian,
    mono). It lives in ``core`` beside the sniffer because every front end (CLI, REST, app) builds
    one from its options without importing the audio decoders; it reaches the decoder as
    ``AudioLimits.pcm``.

    Args:
        rate: samples per second per channel, within :data:`SAMPLE_RATE_RANGE`.
        sample_format: one of :data:`PCM_SAMPLE_FORMATS` (``s16le``, ``f32le``, ``u8``, ...).
        channels: interleaved channels, 1 to 64.
    """

    #: The sample formats a caller may declare (front ends offer these).
    SAMPLE_FORMATS: ClassVar[tuple[str, ...]] = PCM_SAMPLE_FORMATS

    rate: int = 16_000
    sample_format: str = "s16le"
    channels: int = 1

    def __post_init__(self):
        if self.sample_format not in _PCM_LAYOUTS:
            raise ValueError(f"unknown PCM sample format {self.sample_format!r}; one of {', '.join(PCM_SAMPLE_FORMATS)}")
        low, high = SAMPLE_RATE_RANGE
        if isinstance(self.rate, bool) or not isinstance(self.rate, int) or not low <= self.rate <= high:
            raise ValueError(f"PCM rate must be a whole number of Hz from {low:,} to {high:,}, got {self.rate!r}")
        if isinstance(self.channels, bool) or not isinstance(self.channels, int) or not 1 <= self.channels <= _MAX_PCM_CHANNELS:
            raise ValueError(f"PCM channels must be 1 to {_MAX_PCM_CHANNELS}, got {self.channels!r}")

    @property
    def sample_bytes(self) -> int:
        """Bytes per sample of one channel."""
        return _PCM_LAYOUTS[self.sample_format][1]

    @property
    def frame_bytes(self) -> int:
        """Bytes per frame (one sample of every channel): a raw file's length is a multiple of it."""
        return self.sample_bytes * self.channels

    @property
    def dtype(self) -> Optional[str]:
        """The numpy dtype of one sample; ``None`` for packed 24-bit."""
        return _PCM_LAYOUTS[self.sample_format][0]

    def describe(self) -> str:
        """``16000 Hz s16le mono``: how messages name the declared layout."""
        channels = {1: "mono", 2: "stereo"}.get(self.channels, f"{self.channels} ch")
        return f"{self.rate} Hz {self.sample_format} {channels}"

    @classmethod
    def from_env(cls, environ: Optional[Mapping[str, str]] = None) -> "PcmFormat":
        """The default overridden by ``MEDZERO_PCM_RATE``, ``MEDZERO_PCM_FORMAT`` and ``MEDZERO_PCM_CHANNELS``
        (the CLI's ``--pcm-*`` options read the same variables). A bad value raises :class:`BadInputError`."""
        environ = os.environ if environ is None else environ
        default = cls()
        raw = {k: environ.get(f"MEDZERO_PCM_{k.upper()}", "").strip() for k in ("rate", "format", "channels")}
        try:
            return cls(
                rate=int(raw["rate"]) if raw["rate"] else default.rate,
                sample_format=raw["format"].lower() or default.sample_format,
                channels=int(raw["channels"]) if raw["channels"] else default.channels,
            )
        except ValueError as e:
            raise BadInputError(f"invalid MEDZERO_PCM_RATE / MEDZERO_PCM_FORMAT / MEDZERO_PCM_CHANNELS: {e}") from None


Sniffed = tuple[Optional[str], Optional[str]]

_UNKNOWN: Sniffed = (None, None)

# Wave64 identifies its chunks by GUID instead of FourCC.
_W64_RIFF_GUID = bytes.fromhex("726966662e91cf11a5d628db04c10000")
_W64_WAVE_GUID = bytes.fromhex("77617665f3acd3118cd100c04f8edb8a")

_JP2_SIGNATURE = bytes.fromhex("0000000c6a5020200d0a870a")
_J2K_CODESTREAM = bytes.fromhex("ff4fff51")

# ISO-BMFF major/compatible brands that mean a still image rather than audio or video.
_HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"}
_AVIF_BRANDS = {b"avif", b"avis"}

# DICOM value representations; an explicit-VR element must carry one of these.
_DICOM_VRS = {
    b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT", b"OB",
    b"OD", b"OF", b"OL", b"OV", b"OW", b"PN", b"SH", b"SL", b"SQ", b"SS", b"ST", b"SV", b"TM",
    b"UC", b"UI", b"UL", b"UN", b"UR", b"US", b"UT", b"UV",
}
# VRs whose explicit-VR header is 12 bytes (2 reserved bytes and a 4-byte length).
_DICOM_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT", b"UV"}


def sniff(head: bytes, *, pcm: bool = False) -> Sniffed:
    """Return ``(modality, format)`` for content starting with ``head``, or ``(None, None)``.

    ``modality`` is ``"audio"`` or ``"image"``; ``format`` is one of :data:`AUDIO_FORMATS` or
    :data:`IMAGE_FORMATS`. Pass the first :data:`HEAD_BYTES` bytes (fewer if the input is shorter).

    ``pcm=True``: the content is declared raw PCM (pass :data:`PCM_HEAD_BYTES`). Quiet samples
    often begin with bytes that pass for one MP3 or ADTS frame header (``ff ff 00 00`` is -1, 0 in
    s16le), so a bare frame sync counts only when the next frames follow where its header says
    they start; otherwise the answer is ``("audio", "pcm")``.
    """
    head = bytes(head[: PCM_HEAD_BYTES if pcm else HEAD_BYTES])
    for check in (_sniff_image, _sniff_audio):
        found = check(head[:HEAD_BYTES])
        if found is not None:
            if pcm and not _confirmed(found, head):
                return ("audio", "pcm")
            return found
    return ("audio", "pcm") if pcm else _UNKNOWN


def sniff_source(source: Any) -> Sniffed:
    """Sniff a path, a byte string, a binary file-like object or a numpy array.

    Arrays answer ``("array", None)``. A file-like object is read from its current position and
    put back there. A path that does not exist raises :class:`BadInputError`.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        return sniff(bytes(memoryview(source)[:HEAD_BYTES]))
    if isinstance(source, (str, os.PathLike)):
        if declares_pcm(source):
            return sniff(read_head(source, PCM_HEAD_BYTES), pcm=True)
        return sniff(read_head(source))
    if _is_array(source):
        return ("array", None)
    if isinstance(source, tuple) and len(source) == 2 and _is_array(source[0]):
        return ("array", None)  # (samples, sample_rate)
    if isinstance(source, Mapping):
        if "array" in source:
            return ("array", None)  # Hugging Face datasets: {"array": ..., "sampling_rate": ...}
        if source.get("bytes") is not None:
            data = memoryview(source["bytes"])
            if declares_pcm(source.get("path")):
                return sniff(bytes(data[:PCM_HEAD_BYTES]), pcm=True)
            return sniff_source(source["bytes"])
        if source.get("path") is not None:
            return sniff_source(source["path"])
    if hasattr(source, "read"):
        if declares_pcm(getattr(source, "name", None)):
            return sniff(_peek(source, PCM_HEAD_BYTES), pcm=True)
        return sniff(_peek(source))
    raise BadInputError(
        f"cannot read a {type(source).__name__}; pass a path, bytes, a binary file or an (array, sample_rate) pair"
    )


def declares_pcm(name: Any) -> bool:
    """Whether ``name`` (a path or a file object's name) says the content is raw PCM (``*.pcm``)."""
    if isinstance(name, os.PathLike):
        name = os.fspath(name)
    return isinstance(name, str) and os.path.splitext(name)[1].lower() in PCM_SUFFIXES


def read_head(path: str | os.PathLike, n: int = HEAD_BYTES) -> bytes:
    """Read the first ``n`` bytes of ``path``, raising :class:`BadInputError` if it is not a regular file.

    A FIFO, socket or device is refused before it is opened: opening a FIFO with no writer blocks
    forever, and a stream's head cannot be read twice (once to sniff, once to decode).
    """
    path = Path(path)
    check_regular_file(path)
    try:
        with path.open("rb") as f:
            return f.read(n)
    except FileNotFoundError:
        raise BadInputError(f"file not found: {path}") from None
    except IsADirectoryError:
        raise BadInputError(f"{path} is a directory, not a file") from None
    except PermissionError:
        raise BadInputError(f"cannot read {path}: permission denied") from None


def check_regular_file(path: str | os.PathLike) -> os.stat_result:
    """``path``'s stat (links followed), or a one-line :class:`BadInputError` if it is not a regular file."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise BadInputError(f"file not found: {os.fspath(path)}") from None
    except PermissionError:
        raise BadInputError(f"cannot read {os.fspath(path)}: permission denied") from None
    except OSError as exc:
        raise BadInputError(f"cannot read {os.fspath(path)}: {exc.strerror or exc}") from None
    if stat.S_ISREG(st.st_mode):
        return st
    if stat.S_ISDIR(st.st_mode):
        raise BadInputError(f"{os.fspath(path)} is a directory, not a file")
    kind = (
        "a FIFO (named pipe)" if stat.S_ISFIFO(st.st_mode)
        else "a socket" if stat.S_ISSOCK(st.st_mode)
        else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
        else "not a regular file"
    )
    raise BadInputError(f"{os.fspath(path)} is {kind}, not a regular file; save the data to a file first")


def _peek(stream: Any, n: int = HEAD_BYTES) -> bytes:
    """Read ``n`` bytes from a binary stream and seek back to where it was."""
    if not (getattr(stream, "seekable", lambda: False)()):
        raise BadInputError("cannot sniff a stream that cannot seek; pass a path or bytes instead")
    pos = stream.tell()
    try:
        head = stream.read(n)
    finally:
        stream.seek(pos)
    if isinstance(head, str):
        raise BadInputError("the stream is open in text mode; open the file with mode 'rb'")
    return bytes(head)


def _is_array(obj: Any) -> bool:
    # Checked by type name so that importing numpy is not needed to sniff bytes.
    return type(obj).__module__ == "numpy" and type(obj).__name__ == "ndarray"


def _sniff_image(head: bytes) -> Sniffed | None:
    if head[128:132] == b"DICM" or _looks_like_bare_dicom(head):
        return ("image", "dicom")
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return ("image", "png")
    if head.startswith(b"\xff\xd8\xff"):
        return ("image", "jpeg")
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return ("image", "tiff")
    if head.startswith(_JP2_SIGNATURE) or head.startswith(_J2K_CODESTREAM):
        return ("image", "jpeg2000")
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return ("image", "gif")
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return ("image", "webp")
    if head[4:8] == b"ftyp":
        brands = _ftyp_brands(head)
        if brands & _AVIF_BRANDS:
            return ("image", "avif")
        if brands & _HEIF_BRANDS and not brands & {b"M4A ", b"M4B ", b"mp41", b"mp42", b"isom"}:
            return ("image", "heif")
    return None


def _sniff_audio(head: bytes) -> Sniffed | None:
    tag4 = head[:4]
    if tag4 in (b"RIFF", b"RIFX", b"RF64", b"BW64") and head[8:12] == b"WAVE":
        return ("audio", "wav")
    if head[:16] == _W64_RIFF_GUID and head[24:40] == _W64_WAVE_GUID:
        return ("audio", "wav")
    if tag4 == b"fLaC":
        return ("audio", "flac")
    if tag4 == b"OggS":
        return ("audio", "ogg")
    if tag4 == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return ("audio", "aiff")
    if head.startswith(b"#!AMR"):  # "#!AMR\n", "#!AMR-WB\n", "#!AMR_MC1.0\n"
        return ("audio", "amr")
    if head.startswith(b"#!SILK_V3") or head.startswith(b"\x02#!SILK_V3"):  # Skype's SILK; Tencent adds 0x02
        return ("audio", "silk")
    if tag4 == b"\x1a\x45\xdf\xa3":
        return ("audio", "webm" if b"webm" in head[:64] else "mkv")
    if head[4:8] == b"ftyp":
        return ("audio", "m4a")
    if head.startswith(b"ID3"):
        # ID3v2 tags also precede FLAC and ADTS streams now and then; look past the tag if we can.
        after = _skip_id3(head)
        if after is not None and after.startswith(b"fLaC"):
            return ("audio", "flac")
        if after is not None and _is_adts(after):
            return ("audio", "aac")
        return ("audio", "mp3")
    if _is_adts(head):
        return ("audio", "aac")
    if _is_mpeg_audio_frame(head):
        return ("audio", "mp3")
    return None


def _confirmed(found: Sniffed, head: bytes) -> bool:
    """Whether a sniff of content declared raw PCM stands: any signature but a bare frame sync
    (MP3 without an ID3 tag, ADTS) does; a frame sync needs the next two frames (or as many as
    ``head`` holds, at least one) where its header says they start."""
    if found == ("audio", "mp3") and not head.startswith(b"ID3"):
        length = _mpeg_frame_length
    elif found == ("audio", "aac") and not head.startswith(b"ID3"):
        length = _adts_frame_length
    else:
        return True
    pos, seen = 0, 0
    while seen < 2:
        size = length(head[pos:])
        if not size:
            return False
        pos += size
        if pos + 7 > len(head):
            return seen > 0
        nxt = head[pos:]
        if not (_is_mpeg_audio_frame(nxt) if length is _mpeg_frame_length else _is_adts(nxt)):
            return False
        seen += 1
    return True


# MPEG audio bitrates (kbps) by (version 1 or 2, layer) and index; index 0 is "free format".
_MPEG_KBPS = {
    (1, 1): (0, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (1, 2): (0, 32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (1, 3): (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (2, 1): (0, 32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (2, 2): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_MPEG_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}


def _mpeg_frame_length(head: bytes) -> int:
    """Bytes of the MPEG audio frame ``head`` starts with; 0 when it cannot tell (free format)."""
    if not _is_mpeg_audio_frame(head):
        return 0
    version_bits, layer = (head[1] >> 3) & 0x03, 4 - ((head[1] >> 1) & 0x03)
    version = 1 if version_bits == 3 else 2
    kbps = _MPEG_KBPS[(version, layer if version == 1 or layer == 1 else 2)][head[2] >> 4]
    rate = _MPEG_RATES[version_bits][(head[2] >> 2) & 0x03]
    padding = (head[2] >> 1) & 0x01
    if kbps == 0:
        return 0
    if layer == 1:
        return (12 * kbps * 1000 // rate + padding) * 4
    per_frame = 72 if layer == 3 and version == 2 else 144
    return per_frame * kbps * 1000 // rate + padding


def _adts_frame_length(head: bytes) -> int:
    """Bytes of the ADTS frame ``head`` starts with (header included); 0 when it is no frame."""
    if not _is_adts(head):
        return 0
    size = ((head[3] & 0x03) << 11) | (head[4] << 3) | (head[5] >> 5)
    return size if size >= 7 else 0


def _skip_id3(head: bytes) -> bytes | None:
    """The bytes after an ID3v2 tag, or ``None`` if the tag runs past ``head``."""
    if len(head) < 10:
        return None
    size = 0
    for b in head[6:10]:  # "syncsafe" integer: 7 bits per byte
        size = (size << 7) | (b & 0x7F)
    end = 10 + size + (10 if head[5] & 0x10 else 0)  # footer flag
    return head[end:] if end < len(head) else None


def _is_adts(head: bytes) -> bool:
    """ADTS (raw AAC): 12-bit sync, layer bits 00, a valid sampling-frequency index."""
    if len(head) < 7 or head[0] != 0xFF or (head[1] & 0xF6) != 0xF0:
        return False
    return ((head[2] >> 2) & 0x0F) < 13


def _is_mpeg_audio_frame(head: bytes) -> bool:
    """MPEG-1/2/2.5 audio frame header (MP3 without an ID3 tag), validated field by field."""
    if len(head) < 4 or head[0] != 0xFF or (head[1] & 0xE0) != 0xE0:
        return False
    version = (head[1] >> 3) & 0x03  # 01 is reserved
    layer = (head[1] >> 1) & 0x03  # 00 is reserved (and marks ADTS)
    bitrate = head[2] >> 4  # 1111 is invalid
    rate = (head[2] >> 2) & 0x03  # 11 is reserved
    emphasis = head[3] & 0x03  # 10 is reserved
    return version != 1 and layer != 0 and bitrate != 15 and rate != 3 and emphasis != 2


def _ftyp_brands(head: bytes) -> set[bytes]:
    """Major and compatible brands of a leading ISO-BMFF ``ftyp`` box."""
    (size,) = struct.unpack(">I", head[:4])
    end = min(max(size, 16), len(head))
    brands = {head[8:12]}
    brands.update(head[i : i + 4] for i in range(16, end - 3, 4))
    return brands


def _looks_like_bare_dicom(head: bytes) -> bool:
    """A DICOM data set without the preamble and ``DICM`` (as some old PACS exports write).

    Conservative: the first three elements must parse as little-endian group 0x0002 or 0x0008
    elements (explicit or implicit VR), in ascending tag order, with lengths that fit.
    """
    pos, previous, parsed = 0, -1, 0
    explicit = head[4:6] in _DICOM_VRS
    while parsed < 3:
        if pos + 8 > len(head):
            return parsed > 0 and pos == len(head)
        group, element = struct.unpack_from("<HH", head, pos)
        if group not in (0x0002, 0x0008) or (group << 16 | element) <= previous:
            return False
        previous = group << 16 | element
        if explicit:
            vr = head[pos + 4 : pos + 6]
            if vr not in _DICOM_VRS:
                return False
            if vr in _DICOM_LONG_VRS:
                if pos + 12 > len(head):
                    return False
                (length,) = struct.unpack_from("<I", head, pos + 8)
                pos += 12
            else:
                (length,) = struct.unpack_from("<H", head, pos + 6)
                pos += 8
        else:
            (length,) = struct.unpack_from("<I", head, pos + 4)
            pos += 8
        if length == 0xFFFFFFFF or length > 1024 or length % 2:
            return False
        pos += length
        parsed += 1
    return True

