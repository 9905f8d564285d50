"""Load audio from a path, bytes, a file object or an array into a mono float32 :class:`AudioClip`.

Decoding is chosen from the content (:mod:`medzero.core.sniff`), never from the file name:

* WAV, FLAC, Ogg (Vorbis/Opus) and AIFF are read with ``soundfile`` (libsndfile);
* MP3, M4A/MP4, raw AAC, AMR, WebM/Matroska, anything libsndfile refuses, and content whose format
  is unknown but is not plainly text are decoded with PyAV (FFmpeg), first audio stream only.
  MP3 goes to FFmpeg because libsndfile's mpg123 prints its complaints about a damaged file straight
  to the process's stderr (around medzero's one-line error); FFmpeg's log is off under PyAV, and
  its decoder gives the same samples (within 1e-6);
* SILK v3 (WeChat and QQ voice notes, which FFmpeg does not decode) with ``pysilk`` (the
  ``silk-python`` wheel, BSD), in-process, at 24 kHz;
* raw headerless PCM (a source named ``*.pcm``, ``fmt="pcm"``, or unknown content when ``pcm=`` is
  given) as the declared :class:`~medzero.core.sniff.PcmFormat` says (``AudioLimits.pcm``, default
  16 kHz s16le mono), after a plausibility check: no text, a whole number of frames, no other
  format's signature, float samples within range. Content that sniffs as a real format is decoded
  as that format, whatever the declaration.

Channels are averaged to mono and, when ``sample_rate`` is given, the clip is resampled with
``soxr`` at "HQ" quality. The result is deterministic: the same input gives bit-identical samples.

Every problem a user can cause (missing, empty, oversized, truncated, corrupt or non-audio input,
NaN samples, an implausible sample rate, too short or too long) raises
:class:`~medzero.core.errors.BadInputError` with a one-line message; exceptions from ``soundfile``
and ``av`` never escape.

Memory is bounded in decoded samples, not in file size or seconds: a few kB can declare hours at a
high rate (or at 1 Hz, which resampling to 48 kHz multiplies by 48,000). ``AudioLimits.max_samples``
caps the samples of all channels at the source rate, checked from the header before anything is
allocated and again while a stream decodes, and the mono samples after resampling, checked before
the resampler runs. Sample rates outside :data:`SAMPLE_RATE_RANGE` are refused.

Example::

    clip = load_audio("cough.m4a", sample_rate=48_000)
    clip.samples.shape, clip.duration, clip.source_rate
"""
from __future__ import annotations

import dataclasses
import io
import logging
import math
import os
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO, Optional, Union

import av
import numpy as np
import soundfile as sf
import soxr

from medzero.core.errors import BadInputError, one_line
from medzero.core.sniff import HEAD_BYTES, PCM_HEAD_BYTES, SAMPLE_RATE_RANGE, PcmFormat, declares_pcm, read_head, sniff

__all__ = ["AudioLimits", "AudioClip", "AudioSource", "PcmFormat", "SAMPLE_RATE_RANGE", "load_audio"]

log = logging.getLogger(__name__)

AudioSource = Union[str, os.PathLike, bytes, bytearray, memoryview, BinaryIO, np.ndarray, tuple, Mapping]

#: Formats handed to libsndfile first; the rest go straight to PyAV.
_SOUNDFILE_FORMATS = frozenset({"wav", "flac", "ogg", "aiff"})

_EXPECTED = "expected WAV, FLAC, Ogg, MP3, M4A/AAC, AMR or SILK; raw PCM must be named .pcm"

# libsndfile reports this frame count when it cannot tell the length (e.g. a stream).
_UNKNOWN_FRAMES = 2**62

#: SILK is decoded at 24 kHz: WeChat records at 24 kHz and it is SILK's highest internal rate, so
#: nothing is lost and nothing is made up (pysilk also decodes at 8, 12, 16, 32, 44.1 and 48 kHz).
_SILK_RATE = 24_000
_SILK_PACKET_SAMPLES = _SILK_RATE // 50  # one 20 ms frame per packet, as WeChat and pysilk write them
_SILK_MAX_PAYLOAD = _SILK_RATE // 1000 * 40  # pysilk's output buffer in bytes: a longer packet is refused
_SILK_HEADERS = (b"\x02#!SILK_V3", b"#!SILK_V3")

#: Signatures of common non-audio files, refused when declared as raw PCM (no recording starts so).
_NOT_PCM = {
    b"PK\x03\x04": "a ZIP archive (or an Office document)", b"\x1f\x8b": "a gzip file", b"%PDF": "a PDF",
    b"\x7fELF": "a program", b"7z\xbc\xaf\x27\x1c": "a 7-Zip archive", b"Rar!": "a RAR archive",
    b"SQLite format 3\x00": "an SQLite database", b"\xfd7zXZ\x00": "an xz file", b"\x28\xb5\x2f\xfd": "a zstd file",
}
#: Float PCM whose peak passes this (+24 dBFS) is not float audio: integers or other bytes read as floats.
_MAX_FLOAT_PEAK = 16.0


@dataclass(frozen=True)
class AudioLimits:
    """Bounds on what :func:`load_audio` accepts.

    Args:
        max_bytes: largest encoded input, checked before it is read.
        max_duration_s: longest audio, checked from the header before decoding where possible.
        min_duration_s: shortest audio worth classifying.
        max_samples: most decoded samples held at once: all channels at the source rate (from the
            header before decoding, then while decoding), and the mono clip after resampling. The
            default is 3 hours of mono audio at 48 kHz, CLAP's rate: 518,400,000 samples, 2 GB as
            float32. It bounds memory where ``max_bytes`` cannot (compressed silence, a 1 Hz header).
        pcm: the layout of raw headerless PCM (16 kHz s16le mono by default). It travels here, with
            the other settings of decoding, because the limits are the one object every entry point
            already hands each modality's decoder (``Classifier(limits=...)``, the service's
            per-request limits, ``Modality.limits()`` from the environment): no front end needs a
            path of its own to declare a layout.
        mos: whether to measure speech quality with DNSMOS (the ``mos_*`` metrics), a setting of
            decoding that travels here for the same reason. DNSMOS costs about 0.24 s of CPU per
            9 s window, twice CLAP's forward pass on OpenVINO, so ``None`` (the default) leaves the
            choice to the :class:`~medzero.Classifier`: measured when its task's rules use a
            ``mos_*`` metric, or when asked (``Classifier(mos=True)``, ``--mos``); anything else
            that decodes audio (a case index) does not measure it.
    """

    max_bytes: int = 200 * 1024 * 1024
    max_duration_s: float = 3 * 3600
    min_duration_s: float = 0.1
    max_samples: int = 3 * 3600 * 48_000
    pcm: PcmFormat = PcmFormat()
    mos: Optional[bool] = None

    def __post_init__(self):
        if self.max_bytes <= 0 or self.max_duration_s <= 0 or self.min_duration_s < 0 or self.max_samples <= 0:
            raise ValueError(f"audio limits must be positive: {self}")
        if self.min_duration_s > self.max_duration_s:
            raise ValueError(f"min_duration_s exceeds max_duration_s: {self}")

    @classmethod
    def from_env(cls, environ: Optional[Mapping[str, str]] = None) -> "AudioLimits":
        """Defaults overridden by ``MEDZERO_MAX_AUDIO_BYTES``, ``MEDZERO_MAX_AUDIO_SECONDS``,
        ``MEDZERO_MIN_AUDIO_SECONDS``, ``MEDZERO_MAX_AUDIO_SAMPLES`` and the raw PCM layout from
        ``MEDZERO_PCM_RATE``, ``MEDZERO_PCM_FORMAT`` and ``MEDZERO_PCM_CHANNELS``. A value that is not a
        number raises :class:`BadInputError`."""
        environ = os.environ if environ is None else environ
        default = cls()
        kwargs = dict(
            max_bytes=_env_number(environ, "MEDZERO_MAX_AUDIO_BYTES", int, default.max_bytes),
            max_duration_s=_env_number(environ, "MEDZERO_MAX_AUDIO_SECONDS", float, default.max_duration_s),
            min_duration_s=_env_number(environ, "MEDZERO_MIN_AUDIO_SECONDS", float, default.min_duration_s),
            max_samples=_env_number(environ, "MEDZERO_MAX_AUDIO_SAMPLES", int, default.max_samples, "samples"),
            pcm=PcmFormat.from_env(environ),
        )
        try:
            return cls(**kwargs)
        except ValueError as e:
            raise BadInputError(
                f"invalid audio limits from MEDZERO_MAX_AUDIO_BYTES / MEDZERO_MAX_AUDIO_SECONDS / "
                f"MEDZERO_MIN_AUDIO_SECONDS / MEDZERO_MAX_AUDIO_SAMPLES: {e}"
            ) from None


def _env_number(environ: Mapping[str, str], var: str, kind: type, default: float, unit: str = "") -> Any:
    raw = environ.get(var, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)  # also takes "2e8" for bytes
    except ValueError:
        value = None
    if value is None or not np.isfinite(value) or value < 0 or (kind is int and not value.is_integer()):
        unit = f"number of {unit or ('bytes' if kind is int else 'seconds')}"
        raise BadInputError(f"{var} must be a non-negative {unit}, got {raw!r}")
    return kind(value)


@dataclass
class AudioClip:
    """Decoded mono audio.

    Attributes:
        samples: 1-D, C-contiguous float32 samples in [-1, 1] (decoders may overshoot slightly).
        sample_rate: rate of ``samples`` in Hz.
        source_rate: rate of the decoded source before any resampling.
        channels: channel count of the source (``samples`` is always their average).
        format: container format from :func:`~medzero.core.sniff.sniff`, ``None`` for arrays.
        source: the path; for other inputs the ``name`` given, else ``"<bytes>"``, ``"<file>"``
            or ``"<array>"``.
    """

    samples: np.ndarray
    sample_rate: int
    source_rate: int
    channels: int
    format: Optional[str]
    source: str

    def __post_init__(self):
        if self.samples.ndim != 1 or self.samples.dtype != np.float32:
            raise ValueError(f"samples must be 1-D float32, got {self.samples.dtype} {self.samples.shape}")

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return len(self.samples) / self.sample_rate

    def resampled(
        self, rate: int, *, limits: Optional["AudioLimits"] = None, name: Optional[str] = None
    ) -> "AudioClip":
        """This clip at ``rate`` Hz (soxr, "HQ"); ``self`` when the rate already matches.

        The length after resampling is checked against ``limits.max_samples`` (default
        :meth:`AudioLimits.from_env`) before the resampler allocates it; ``name`` is what the error
        calls the clip (default :attr:`source`).
        """
        rate = int(rate)
        if rate == self.sample_rate:
            return self
        limits = AudioLimits.from_env() if limits is None else limits
        n_out = math.ceil(len(self.samples) * rate / self.sample_rate)
        _check_samples(n_out, name or self.source, limits, f"after resampling to {rate} Hz")
        return dataclasses.replace(self, samples=_resample(self.samples, self.sample_rate, rate), sample_rate=rate)


def load_audio(
    source: AudioSource,
    *,
    sample_rate: Optional[int] = None,
    source_rate: Optional[int] = None,
    limits: Optional[AudioLimits] = None,
    name: Optional[str] = None,
    fmt: Optional[str] = None,
    pcm: Optional[PcmFormat] = None,
) -> AudioClip:
    """Decode ``source`` to a mono float32 :class:`AudioClip`.

    Args:
        source: a path; encoded bytes; a binary file object (read from its current position); a
            numpy array (1-D, or 2-D with the smaller axis taken as channels); an
            ``(array, rate)`` tuple; or a Hugging Face datasets style mapping,
            ``{"array": ..., "sampling_rate": ...}`` or ``{"bytes": ..., "path": ...}``.
        sample_rate: resample to this rate; ``None`` keeps the source rate (what
            :func:`medzero.audio.quality.compute_metrics` wants).
        source_rate: the rate of a bare array (required for arrays, ignored otherwise).
        limits: size and duration bounds; default :meth:`AudioLimits.from_env`.
        name: how to call the input in error messages and ``AudioClip.source``.
        fmt: the format already sniffed from the content (the ingest pipeline sniffs each source
            once); ``None`` sniffs here. ``"pcm"`` declares raw PCM.
        pcm: the layout of raw PCM (default ``limits.pcm``). Given, it also declares that content
            with no header is raw PCM; otherwise only a source named ``*.pcm`` (or ``fmt="pcm"``) is.

    Raises:
        BadInputError: the input is missing, empty, too large, not audio, truncated or corrupt,
            has no or non-finite samples, or is shorter or longer than ``limits`` allow.
    """
    limits = AudioLimits.from_env() if limits is None else limits
    if sample_rate is not None and int(sample_rate) <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")

    if isinstance(source, Mapping) and "array" not in source:
        # datasets.Audio(decode=False) rows: encoded bytes, or a path when bytes is None.
        data = source.get("bytes")
        source = data if data is not None else source.get("path")
        if source is None:
            raise BadInputError("audio mapping has neither 'array', 'bytes' nor 'path'")

    array_input = _array_input(source, source_rate)
    if array_input is not None:
        label = name or "<array>"
        _check_rate(array_input[1], label, "pass the rate the samples were recorded at")
        frames, rate = _array_to_frames(*array_input, label=label)
        fmt, origin = None, label
    else:
        data, origin, label = _read_source(source, limits, name)
        if fmt is None and (pcm is not None or declares_pcm(label)):
            fmt = "pcm"  # declared: raw PCM unless the content says otherwise
        frames, rate, fmt = _decode(data, label, limits, fmt, pcm or limits.pcm)

    _validate(frames, rate, label, limits)
    clip = AudioClip(
        samples=_to_mono(frames),
        sample_rate=rate,
        source_rate=rate,
        channels=frames.shape[1],
        format=fmt,
        source=origin,
    )
    log.debug("loaded %s: %s, %d Hz, %d ch, %.2f s", label, fmt, rate, clip.channels, clip.duration)
    return clip if sample_rate is None else clip.resampled(sample_rate, limits=limits, name=label)


# ---------------------------------------------------------------------------------------------
# Inputs


def _array_input(source: Any, source_rate: Optional[int]) -> Optional[tuple[np.ndarray, int]]:
    """``(array, rate)`` when ``source`` is array-like input, else ``None``."""
    if isinstance(source, np.ndarray):
        array, rate = source, None
    elif isinstance(source, tuple) and len(source) == 2 and np.isscalar(source[1]):
        array, rate = source
    elif isinstance(source, Mapping):
        array, rate = source["array"], source.get("sampling_rate")
    else:
        return None
    if rate is None:
        rate = source_rate
    elif source_rate is not None and int(source_rate) != int(rate):
        raise BadInputError(f"conflicting sample rates for the array: {rate} given with it, source_rate={source_rate}")
    if rate is None:
        raise BadInputError("an audio array needs its sample rate: pass source_rate=... (in Hz)")
    if not float(rate).is_integer() or int(rate) <= 0:
        raise BadInputError(f"invalid sample rate for the array: {rate!r} (expected a positive whole number of Hz)")
    return np.asarray(array), int(rate)


def _read_source(source: Any, limits: AudioLimits, name: Optional[str]) -> tuple[Union[str, bytes], str, str]:
    """Check size limits without reading large files; return ``(path or bytes, source, label)``.

    ``source`` is what :attr:`AudioClip.source` records, ``label`` what error messages call it.
    """
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        label = name or path
        if not os.path.exists(path):
            raise BadInputError(f"file not found: {path}")
        if os.path.isdir(path):
            raise BadInputError(f"{path} is a directory, not an audio file")
        _check_size(os.path.getsize(path), label, limits)
        return path, path, label
    if isinstance(source, (bytes, bytearray, memoryview)):
        data, label = bytes(source), name or "<bytes>"
        _check_size(len(data), label, limits)
        return data, label, label
    if hasattr(source, "read"):
        stream_name = getattr(source, "name", None)
        label = name or (stream_name if isinstance(stream_name, str) else "<file>")
        data = source.read(limits.max_bytes + 1)
        if isinstance(data, str):
            raise BadInputError(f"{label} is open in text mode; open audio files with mode 'rb'")
        _check_size(len(data), label, limits, at_least=len(data) > limits.max_bytes)
        return bytes(data), name or "<file>", label
    raise TypeError(f"cannot load audio from an object of type {type(source).__name__}")


def _check_size(size: int, label: str, limits: AudioLimits, at_least: bool = False) -> None:
    if size == 0:
        raise BadInputError(f"{label} is empty (0 bytes)")
    if size > limits.max_bytes:
        mb = f"more than {limits.max_bytes / 2**20:.1f}" if at_least else f"{size / 2**20:.1f}"
        raise BadInputError(
            f"file too large: {label} ({mb} MB; the limit is {limits.max_bytes / 2**20:.1f} MB, "
            f"set MEDZERO_MAX_AUDIO_BYTES to raise it)"
        )


# ---------------------------------------------------------------------------------------------
# Decoding


def _decode(
    data: Union[str, bytes], label: str, limits: AudioLimits, fmt: Optional[str] = None, pcm: Optional[PcmFormat] = None
) -> tuple[np.ndarray, int, Optional[str]]:
    """Decode to ``(frames, rate, format)``, frames shaped (samples, channels); sniffs unless ``fmt`` is known.

    ``fmt="pcm"`` (declared) is raw PCM unless the content is a format the sniffer knows: a WAV or
    an MP3 named ``.pcm`` is decoded as what it is.
    """
    if fmt is None or fmt == "pcm":
        n = PCM_HEAD_BYTES if fmt == "pcm" else HEAD_BYTES
        head = read_head(data, n) if isinstance(data, str) else data[:n]
        modality, sniffed = sniff(head, pcm=fmt == "pcm")
        if modality == "image":
            raise BadInputError(f"{label} is an image ({sniffed.upper()}), not audio; pass it to an image task instead")
        if sniffed == "pcm":
            return (*_decode_pcm(data, head, label, limits, pcm or limits.pcm), "pcm")
        if modality is None and _looks_like_text(head):
            raise BadInputError(f"not an audio file: {label} (it holds text, no audio header found; {_EXPECTED})")
        if fmt is not None and sniffed is not None:
            log.debug("%s was declared raw PCM but holds %s; decoding it as %s", label, sniffed, sniffed)
        fmt = sniffed
    if fmt == "silk":
        return (*_decode_silk(data, label, limits), fmt)
    if fmt == "wav":
        _check_wav_header(data, label)
    if fmt in _SOUNDFILE_FORMATS:
        decoded = _decode_soundfile(data, label, fmt, limits)
        if decoded is not None:
            return (*decoded, fmt)
    return _decode_av(data, label, fmt, limits)


def _decode_silk(data: Union[str, bytes], label: str, limits: AudioLimits) -> tuple[np.ndarray, int]:
    """Decode a SILK v3 stream (WeChat, QQ, Skype) with pysilk, at 24 kHz, within ``limits``.

    The packets (a little-endian int16 length, then the payload) are walked here first, because
    pysilk trusts them: a negative length (the SDK's end mark, 0xFFFF) would make it read the rest
    of the file as one packet, and a zero length (a DTX frame: nothing sent during a pause) fails
    its decoder. So the walk stops at the end mark as the SDK does, a DTX frame becomes 20 ms of
    silence (as AMR comfort noise does), a packet cut short is a truncated file, and the sample
    count is known, and checked against ``limits.max_samples``, before anything is decoded.
    """
    try:
        import pysilk
    except ImportError:
        raise BadInputError(f"{label} is a SILK voice note; decoding it needs the silk-python package (pip install silk-python)") from None

    raw = _read_all(data)
    header = next((h for h in _SILK_HEADERS if raw.startswith(h)), None)
    if header is None:
        raise BadInputError(f"corrupt SILK file: {label} (no #!SILK_V3 header)")
    runs = _silk_runs(raw, len(header), label, limits)
    pcm = bytearray()
    for run in runs:
        if isinstance(run, int):  # DTX frames: silence
            pcm += bytes(2 * _SILK_PACKET_SAMPLES * run)
            continue
        out = _Sink(limits.max_samples * 2 - len(pcm))
        try:
            pysilk.decode(io.BytesIO(b"#!SILK_V3" + raw[run[0] : run[1]]), out, _SILK_RATE)
        except _SinkFull:
            _check_samples(limits.max_samples + 1, label, limits, "while decoding SILK")
        except Exception as e:  # pysilk.SilkError, or what its C decoder returns for damaged payloads
            raise BadInputError(f"truncated or corrupt SILK file: {label} (the SILK decoder says {_reason(e)})") from None
        pcm += out.getvalue()
    if not pcm:
        raise BadInputError(f"no audio samples in {label} (the SILK stream holds no packets)")
    frames = np.frombuffer(pcm, dtype="<i2").reshape(-1, 1)
    return _to_float32(frames), _SILK_RATE


def _silk_runs(raw: bytes, start: int, label: str, limits: AudioLimits) -> list[Union[tuple[int, int], int]]:
    """The packet stream as runs: ``(start, end)`` byte ranges of packets to decode, and counts of
    DTX (empty) packets between them; refuses a cut-off packet or one pysilk cannot hold."""
    runs: list[Union[tuple[int, int], int]] = []
    pos, packets, run_start, silent = start, 0, start, 0
    while pos + 2 <= len(raw):
        (size,) = struct.unpack_from("<h", raw, pos)
        if size < 0:  # the SILK SDK's end of stream
            break
        if size > _SILK_MAX_PAYLOAD:
            raise BadInputError(f"corrupt SILK file: {label} (packet {packets + 1} declares {size} bytes)")
        if pos + 2 + size > len(raw):
            raise BadInputError(
                f"truncated SILK file: {label} (packet {packets + 1} declares {size} bytes but "
                f"{len(raw) - pos - 2} are left; copy or export the file again)"
            )
        packets += 1
        _check_samples(packets * _SILK_PACKET_SAMPLES, label, limits, "in its SILK packets")
        if size == 0:
            if pos > run_start:
                runs.append((run_start, pos))
            silent += 1
        elif silent:
            runs.append(silent)
            silent, run_start = 0, pos
        pos += 2 + size
        if size == 0:
            run_start = pos
    if pos > run_start:
        runs.append((run_start, pos))
    if silent:
        runs.append(silent)
    _check_max_duration(packets * _SILK_PACKET_SAMPLES / _SILK_RATE, label, limits)
    return runs


class _SinkFull(Exception):
    """pysilk's output passed the sample limit (raised inside its decode loop, which stops it)."""


class _Sink(io.BytesIO):
    """pysilk's output file, refusing to grow past ``capacity`` bytes: memory stays bounded even if
    a packet decodes to more samples than the walk counted."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity

    def write(self, chunk) -> int:
        if self.tell() + len(chunk) > self.capacity:
            raise _SinkFull()
        return super().write(chunk)


def _decode_pcm(
    data: Union[str, bytes], head: bytes, label: str, limits: AudioLimits, pcm: PcmFormat
) -> tuple[np.ndarray, int]:
    """Raw PCM as ``pcm`` declares it, after the checks that tell a mislabelled file from audio."""
    hint = f"declared {pcm.describe()}"
    if _looks_like_text(head):
        raise BadInputError(f"not raw PCM: {label} (it holds text, not samples)")
    other = next((what for magic, what in _NOT_PCM.items() if head.startswith(magic)), None)
    if other is not None:
        raise BadInputError(f"not raw PCM: {label} (it is {other})")
    size = os.path.getsize(data) if isinstance(data, str) else len(data)
    if size % pcm.frame_bytes:
        raise BadInputError(
            f"not raw PCM as declared: {label} ({size:,} bytes is not a whole number of {pcm.frame_bytes}-byte "
            f"frames of {hint}; check the PCM format and channels)"
        )
    n = size // pcm.frame_bytes
    _check_max_duration(n / pcm.rate, label, limits)
    _check_samples(n * pcm.channels, label, limits, f"{hint}")
    raw = _read_all(data)
    if pcm.dtype is None:  # packed 24-bit: widen to 32 bits, sign from the top byte
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3)
        lo, mid, hi = (b[:, 0], b[:, 1], b[:, 2]) if pcm.sample_format.endswith("le") else (b[:, 2], b[:, 1], b[:, 0])
        ints = (lo.astype(np.int32) | (mid.astype(np.int32) << 8) | (hi.astype(np.int8).astype(np.int32) << 16))
        samples = (ints / float(2**23)).astype(np.float32)
    else:
        samples = _to_float32(np.frombuffer(raw, pcm.dtype))
    frames = samples.reshape(-1, pcm.channels)
    if pcm.sample_format[0] == "f" and frames.size:
        finite = np.isfinite(frames)
        peak = float(np.abs(frames[finite]).max()) if finite.any() else float("inf")
        if not finite.all() or peak > _MAX_FLOAT_PEAK:
            raise BadInputError(
                f"not raw PCM as declared: {label} (read as {hint} its samples reach "
                f"{'NaN or infinity' if not finite.all() else f'{peak:.3g}'}, not audio; check the PCM format)"
            )
    return frames, pcm.rate


def _read_all(data: Union[str, bytes]) -> bytes:
    if not isinstance(data, str):
        return data
    try:
        with open(data, "rb") as f:
            return f.read()
    except OSError as e:
        raise BadInputError(f"cannot read {data}: {e.strerror or e}") from None


def _decode_soundfile(
    data: Union[str, bytes], label: str, fmt: str, limits: AudioLimits
) -> Optional[tuple[np.ndarray, int]]:
    """Decode with libsndfile; ``None`` if libsndfile cannot open it (the caller tries PyAV)."""
    try:
        f = sf.SoundFile(data if isinstance(data, str) else io.BytesIO(data))
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        log.debug("libsndfile cannot open %s (%s); trying PyAV", label, e)
        return None
    with f:
        if f.frames >= _UNKNOWN_FRAMES:
            # No length in the header (a FLAC streamed with 0 total samples): read() would size its
            # array from the "unknown" count, so PyAV decodes it, packet by packet, within the limits.
            log.debug("libsndfile cannot tell the length of %s; decoding it with PyAV", label)
            return None
        rate, channels = int(f.samplerate), int(f.channels)
        _check_rate(rate, label)
        if channels <= 0:
            raise BadInputError(f"corrupt {fmt.upper()} header: {label} ({channels} channels)")
        # the header's length: refuse before read() allocates it
        _check_max_duration(f.frames / rate, label, limits)
        _check_samples(f.frames * channels, label, limits, f"declared by its header, {channels} ch")
        try:
            frames = f.read(dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError) as e:
            raise BadInputError(f"truncated or corrupt {fmt.upper()} file: {label} ({_reason(e)})") from None
        return frames, rate


def _decode_av(
    data: Union[str, bytes], label: str, fmt: Optional[str], limits: AudioLimits
) -> tuple[np.ndarray, int, Optional[str]]:
    """Decode the first audio stream with PyAV, keeping the source rate and channels."""
    try:
        container = av.open(data if isinstance(data, str) else io.BytesIO(data), mode="r")
    except (av.FFmpegError, OSError, ValueError, EOFError) as e:
        if fmt is None:
            raise BadInputError(f"not an audio file: {label} (no audio header found; {_EXPECTED})") from None
        raise BadInputError(
            f"truncated or corrupt {fmt.upper()} file: {label} (FFmpeg cannot open it: {_reason(e)})"
        ) from None

    with container:
        fmt = fmt or container.format.name.split(",")[0]
        if not container.streams.audio:
            raise BadInputError(f"no audio stream in {label} (the {fmt.upper()} container holds no audio)")
        stream = container.streams.audio[0]
        if stream.codec_context is None:  # PyAV leaves it unset when FFmpeg has no decoder
            raise BadInputError(
                f"unsupported audio encoding in {label} ({_codec_word(data, fmt)} that neither libsndfile nor "
                f"FFmpeg decodes; convert it to PCM WAV or FLAC)"
            )
        rate = stream.codec_context.sample_rate or None
        channels = len(stream.codec_context.layout.channels) or None
        if rate:
            _check_rate(rate, label)
        duration = _av_duration(container, stream)
        if duration is not None:
            _check_max_duration(duration, label, limits)
            if rate and channels:
                _check_samples(round(duration * rate) * channels, label, limits, "declared by its header")

        chunks: list[np.ndarray] = []
        total = concealed = 0
        try:
            for packet in container.demux(stream):
                try:
                    decoded = packet.decode()
                except av.FFmpegError:
                    if not (rate and channels and _is_amr_comfort_noise(stream, packet)):
                        raise
                    # FFmpeg cannot decode AMR DTX frames (SID, NO_DATA); they carry background
                    # noise only, so keep the timeline with silence of the same length.
                    n = round(float(packet.duration * packet.time_base) * rate)
                    _check_samples((total + n) * channels, label, limits, "before the end of the stream")
                    chunks.append(np.zeros((n, channels), np.float32))
                    total, concealed = total + n, concealed + 1
                    continue
                for frame in decoded:
                    if frame.samples == 0:
                        continue
                    layout = (frame.sample_rate, len(frame.layout.channels))
                    if not chunks:
                        rate, channels = layout
                        _check_rate(rate, label)
                    elif layout != (rate, channels):
                        raise BadInputError(
                            f"{label} changes from {rate} Hz/{channels} ch to {layout[0]} Hz/{layout[1]} ch "
                            f"mid-stream; convert it to WAV first"
                        )
                    _check_samples((total + frame.samples) * channels, label, limits, "before the end of the stream")
                    chunks.append(_frame_to_array(frame))
                    total += frame.samples
                if rate:
                    _check_max_duration(total / rate, label, limits)
        except BadInputError:
            raise
        except (av.FFmpegError, OSError, ValueError, EOFError) as e:
            raise BadInputError(f"truncated or corrupt {fmt.upper()} file: {label} ({_reason(e)})") from None

    if concealed:
        log.debug("%s: %d AMR comfort-noise frames decoded as silence", label, concealed)
    if total == 0:
        raise BadInputError(f"no audio samples in {label} (the {fmt.upper()} stream decoded to nothing)")
    return np.concatenate(chunks), int(rate), fmt


def _is_amr_comfort_noise(stream: Any, packet: Any) -> bool:
    """An AMR frame of type SID or NO_DATA (DTX), which FFmpeg's decoders do not implement."""
    first_speech_free = {"amrnb": 8, "amr_nb": 8, "amrwb": 9, "amr_wb": 9}.get(stream.codec_context.name)
    if first_speech_free is None or packet.size == 0 or packet.duration is None:
        return False
    frame_type = (bytes(packet)[0] >> 3) & 0x0F
    return frame_type >= first_speech_free


def _av_duration(container: Any, stream: Any) -> Optional[float]:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def _frame_to_array(frame: Any) -> np.ndarray:
    """An ``av.AudioFrame`` as float32 (samples, channels), planar or packed."""
    array = frame.to_ndarray()
    channels = len(frame.layout.channels)
    if frame.format.is_planar:
        array = array.reshape(channels, -1).T
    else:
        array = array.reshape(-1, channels)
    return _to_float32(array)


def _to_float32(array: np.ndarray) -> np.ndarray:
    """Scale integer PCM to [-1, 1) and cast floats, without copying float32 input."""
    kind = array.dtype.kind
    if kind == "f":
        return array.astype(np.float32, copy=False)
    if kind in "iu":
        half = float(2 ** (8 * array.dtype.itemsize - 1))
        offset = half if kind == "u" else 0.0
        return ((array.astype(np.float64) - offset) / half).astype(np.float32)
    raise BadInputError(f"audio samples must be numbers, got dtype {array.dtype}")


def _reason(error: BaseException) -> str:
    """A short, single-line reason from a decoder exception (FFmpeg errors without errno noise)."""
    text = getattr(error, "strerror", None) if isinstance(error, av.FFmpegError) else None
    return one_line(text or error, 160)


def _looks_like_text(head: bytes) -> bool:
    """True for UTF-8 text (notes, CSV, HTML, JSON); audio headers always hold binary bytes."""
    if not head or b"\x00" in head:
        return False
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 3:  # not just a character cut at the end of the head
            return False
        text = head[: e.start].decode("utf-8")
    return all(c.isprintable() or c in "\t\n\r\f\v" for c in text)


# WAV format tags whose bits-per-sample field must be set (PCM, IEEE float, extensible).
_WAV_PCM_TAGS = {0x0001: "PCM", 0x0003: "float", 0xFFFE: "extensible"}


def _wav_chunks(f: BinaryIO) -> Iterator[tuple[bytes, int, int, str]]:
    """``(chunk id, size, offset of its body, endianness)`` for each RIFF/RF64 chunk up to ``data``.

    Yields nothing for Wave64 (64-bit GUID chunks), which is left to the decoders. At most 64
    chunks are read: a WAV has a handful, and garbage must not loop.
    """
    riff = f.read(12)
    if riff[:4] not in (b"RIFF", b"RIFX", b"RF64", b"BW64"):
        return
    endian = ">" if riff[:4] == b"RIFX" else "<"
    pos = 12
    for _ in range(64):
        f.seek(pos)
        header = f.read(8)
        if len(header) < 8:
            return
        chunk_id, chunk_size = header[:4], struct.unpack(endian + "I", header[4:])[0]
        yield chunk_id, chunk_size, pos + 8, endian
        if chunk_id == b"data":
            return
        pos += 8 + chunk_size + (chunk_size & 1)


def _check_wav_header(data: Union[str, bytes], label: str) -> None:
    """Reject a RIFF/RF64 WAV whose header cannot describe real audio, before a decoder sees it.

    * a ``fmt `` chunk with 0 channels, a sample rate outside :data:`SAMPLE_RATE_RANGE`, or PCM/float
      samples of 0 bits: libsndfile refuses these and FFmpeg, which gets them next, has no decoder
      for them, so the message would otherwise be a decoder's guess;
    * a data chunk that declares more bytes than the file holds: libsndfile silently returns the
      shorter audio, which hides a cut-off copy. Streamed WAVs that declare 0 or 0xFFFFFFFF bytes
      are accepted as they are (the decoders read to the end of the file).
    """
    with (open(data, "rb") if isinstance(data, str) else io.BytesIO(data)) as f:
        f.seek(0, io.SEEK_END)
        size = f.tell()
        f.seek(0)
        if f.read(4) not in (b"RIFF", b"RIFX", b"RF64", b"BW64"):
            return
        f.seek(0)
        ds64_data_size = None
        for chunk_id, chunk_size, body, endian in _wav_chunks(f):
            if chunk_id == b"fmt ":
                _check_wav_fmt(f.read(min(chunk_size, 40)), endian, label)
            elif chunk_id == b"ds64":
                ds64 = f.read(16)
                if len(ds64) == 16:
                    ds64_data_size = struct.unpack("<Q", ds64[8:16])[0]
            elif chunk_id == b"data":
                declared = ds64_data_size if chunk_size == 0xFFFFFFFF and ds64_data_size else chunk_size
                available = size - body
                if declared not in (0, 0xFFFFFFFF) and declared > available:
                    raise BadInputError(
                        f"truncated WAV file: {label} (the data chunk declares {declared} bytes but only "
                        f"{available} are present; copy or export the file again)"
                    )
                return
        raise BadInputError(f"truncated or corrupt WAV file: {label} (no data chunk found)")


def _check_wav_fmt(fmt: bytes, endian: str, label: str) -> None:
    """Check the fields of a WAV ``fmt `` chunk body that every decodable WAV has right."""
    if len(fmt) < 16:
        raise BadInputError(f"corrupt WAV header: {label} (the fmt chunk holds {len(fmt)} bytes, 16 are needed)")
    tag, channels, rate, _, _, bits = struct.unpack(endian + "HHIIHH", fmt[:16])
    if channels == 0:
        raise BadInputError(f"corrupt WAV header: {label} (0 channels)")
    _check_rate(rate, label)
    if tag in _WAV_PCM_TAGS and bits == 0:
        raise BadInputError(f"corrupt WAV header: {label} ({_WAV_PCM_TAGS[tag]} samples of 0 bits)")


def _wav_format_tag(data: Union[str, bytes]) -> Optional[int]:
    """The format tag of a RIFF WAV's ``fmt `` chunk, ``None`` when there is none to read."""
    with (open(data, "rb") if isinstance(data, str) else io.BytesIO(data)) as f:
        for chunk_id, _, _, endian in _wav_chunks(f):
            if chunk_id == b"fmt ":
                body = f.read(2)
                return struct.unpack(endian + "H", body)[0] if len(body) == 2 else None
    return None


def _codec_word(data: Union[str, bytes], fmt: Optional[str]) -> str:
    """How an error names an encoding no decoder knows: the WAV format tag, else the container."""
    tag = _wav_format_tag(data) if fmt == "wav" else None
    if tag is not None:
        return f"WAV format tag 0x{tag:04X}"
    return f"an encoding inside {fmt.upper()}" if fmt else "an encoding"


# ---------------------------------------------------------------------------------------------
# Arrays and checks


def _array_to_frames(array: np.ndarray, rate: int, label: str) -> tuple[np.ndarray, int]:
    """A 1-D or 2-D array as float32 (samples, channels); the smaller 2-D axis is channels."""
    if array.dtype.kind not in "fiu":
        raise BadInputError(f"audio array {label} has dtype {array.dtype}; expected float or integer PCM")
    if array.ndim == 1:
        array = array[:, None]
    elif array.ndim == 2:
        if array.shape[0] < array.shape[1]:  # channels-first
            array = array.T
    else:
        raise BadInputError(f"audio array {label} has shape {array.shape}; expected 1-D or 2-D (channels, samples)")
    return _to_float32(array), rate


def _validate(frames: np.ndarray, rate: int, label: str, limits: AudioLimits) -> None:
    if frames.shape[0] == 0 or frames.shape[1] == 0:
        raise BadInputError(f"no audio samples in {label} (it decoded to 0 samples)")
    if not np.isfinite(frames).all():
        bad = int(frames.size - np.count_nonzero(np.isfinite(frames)))
        raise BadInputError(f"invalid samples in {label} ({bad} of {frames.size} samples are NaN or infinite)")
    duration = frames.shape[0] / rate
    if duration < limits.min_duration_s:
        raise BadInputError(
            f"audio too short: {label} ({duration:.3f} s; at least {limits.min_duration_s:g} s is needed)"
        )
    _check_max_duration(duration, label, limits)
    _check_samples(frames.size, label, limits)


def _check_rate(rate: int, label: str, hint: str = "a header that says otherwise is corrupt") -> None:
    """Refuse a sample rate outside :data:`SAMPLE_RATE_RANGE` (see there for why)."""
    low, high = SAMPLE_RATE_RANGE
    if not low <= rate <= high:
        raise BadInputError(
            f"implausible sample rate in {label}: {int(rate):,} Hz (medzero accepts {low:,} to {high:,} Hz; {hint})"
        )


def _check_samples(count: int, label: str, limits: AudioLimits, where: str = "") -> None:
    """Refuse ``count`` decoded samples over ``limits.max_samples``, before they are allocated."""
    if count > limits.max_samples:
        where = f" {where}" if where else ""
        raise BadInputError(
            f"audio too long: {label} ({count:,} samples{where}; the limit is {limits.max_samples:,} samples, "
            f"set MEDZERO_MAX_AUDIO_SAMPLES to raise it)"
        )


def _check_max_duration(duration: float, label: str, limits: AudioLimits) -> None:
    if duration > limits.max_duration_s:
        raise BadInputError(
            f"audio too long: {label} ({duration:.1f} s; the limit is {limits.max_duration_s:g} s, "
            f"trim it or set MEDZERO_MAX_AUDIO_SECONDS)"
        )


def _to_mono(frames: np.ndarray) -> np.ndarray:
    mono = frames[:, 0] if frames.shape[1] == 1 else frames.mean(axis=1, dtype=np.float32)
    return np.ascontiguousarray(mono, dtype=np.float32)


def _resample(samples: np.ndarray, in_rate: int, out_rate: int) -> np.ndarray:
    out = soxr.resample(samples, in_rate, out_rate, quality="HQ")
    return np.ascontiguousarray(out, dtype=np.float32)
