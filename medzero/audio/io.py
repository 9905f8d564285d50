"""Load audio from a path, bytes, a file object or an array into a mono float32 :class:`AudioClip`.

Decoding is chosen from the content (:mod:`medzero.core.sniff`), never from the file name:

* WAV, FLAC, Ogg (Vorbis/Opus), MP3 and AIFF are read with ``soundfile`` (libsndfile);
* M4A/MP4, raw AAC, AMR, WebM/Matroska, anything libsndfile refuses, and content whose format is
  unknown but is not plainly text are decoded with PyAV (FFmpeg), first audio stream only.

Channels are averaged to mono and, when ``sample_rate`` is given, the clip is resampled with
``soxr`` at "HQ" quality. The result is deterministic: the same input gives bit-identical samples.

Every problem a user can cause (missing, empty, oversized, truncated or non-audio input, NaN
samples, too short or too long) raises :class:`~medzero.core.errors.BadInputError` with a one-line
message; exceptions from ``soundfile`` and ``av`` never escape.

Example::

    clip = load_audio("cough.m4a", sample_rate=48_000)
    clip.samples.shape, clip.duration, clip.source_rate
"""
from __future__ import annotations

import dataclasses
import io
import logging
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO, Optional, Union

import av
import numpy as np
import soundfile as sf
import soxr

from medzero.core.errors import BadInputError, one_line
from medzero.core.sniff import HEAD_BYTES, read_head, sniff

__all__ = ["AudioLimits", "AudioClip", "AudioSource", "load_audio"]

log = logging.getLogger(__name__)

AudioSource = Union[str, os.PathLike, bytes, bytearray, memoryview, BinaryIO, np.ndarray, tuple, Mapping]

#: Formats handed to libsndfile first; the rest go straight to PyAV.
_SOUNDFILE_FORMATS = frozenset({"wav", "flac", "ogg", "mp3", "aiff"})

_EXPECTED = "expected WAV, FLAC, Ogg, MP3, M4A/AAC or AMR"

# libsndfile reports this frame count when it cannot tell the length (e.g. a stream).
_UNKNOWN_FRAMES = 2**62


@dataclass(frozen=True)
class AudioLimits:
    """Bounds on what :func:`load_audio` accepts.

    Args:
        max_bytes: largest encoded input, checked before it is read.
        max_duration_s: longest audio, checked from the header before decoding where possible.
        min_duration_s: shortest audio worth classifying.
    """

    max_bytes: int = 200 * 1024 * 1024
    max_duration_s: float = 3 * 3600
    min_duration_s: float = 0.1

    def __post_init__(self):
        if self.max_bytes <= 0 or self.max_duration_s <= 0 or self.min_duration_s < 0:
            raise ValueError(f"audio limits must be positive: {self}")
        if self.min_duration_s > self.max_duration_s:
            raise ValueError(f"min_duration_s exceeds max_duration_s: {self}")

    @classmethod
    def from_env(cls, environ: Optional[Mapping[str, str]] = None) -> "AudioLimits":
        """Defaults overridden by ``MEDZERO_MAX_AUDIO_BYTES``, ``MEDZERO_MAX_AUDIO_SECONDS`` and
        ``MEDZERO_MIN_AUDIO_SECONDS``. A value that is not a number raises :class:`BadInputError`."""
        environ = os.environ if environ is None else environ
        default = cls()
        kwargs = dict(
            max_bytes=_env_number(environ, "MEDZERO_MAX_AUDIO_BYTES", int, default.max_bytes),
            max_duration_s=_env_number(environ, "MEDZERO_MAX_AUDIO_SECONDS", float, default.max_duration_s),
            min_duration_s=_env_number(environ, "MEDZERO_MIN_AUDIO_SECONDS", float, default.min_duration_s),
        )
        try:
            return cls(**kwargs)
        except ValueError as e:
            raise BadInputError(
                f"invalid audio limits from MEDZERO_MAX_AUDIO_BYTES / MEDZERO_MAX_AUDIO_SECONDS / "
                f"MEDZERO_MIN_AUDIO_SECONDS: {e}"
            ) from None


def _env_number(environ: Mapping[str, str], var: str, kind: type, default: float) -> Any:
    raw = environ.get(var, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)  # also takes "2e8" for bytes
    except ValueError:
        value = None
    if value is None or not np.isfinite(value) or value < 0 or (kind is int and not value.is_integer()):
        unit = "number of bytes" if kind is int else "number of seconds"
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

    def resampled(self, rate: int) -> "AudioClip":
        """This clip at ``rate`` Hz (soxr, "HQ"); ``self`` when the rate already matches."""
        rate = int(rate)
        if rate == self.sample_rate:
            return self
        return dataclasses.replace(self, samples=_resample(self.samples, self.sample_rate, rate), sample_rate=rate)


def load_audio(
    source: AudioSource,
    *,
    sample_rate: Optional[int] = None,
    source_rate: Optional[int] = None,
    limits: Optional[AudioLimits] = None,
    name: Optional[str] = None,
    fmt: Optional[str] = None,
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
            once); ``None`` sniffs here.

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
        frames, rate = _array_to_frames(*array_input, label=label)
        fmt, origin = None, label
    else:
        data, origin, label = _read_source(source, limits, name)
        frames, rate, fmt = _decode(data, label, limits, fmt)

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
    return clip if sample_rate is None else clip.resampled(sample_rate)


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
        raise BadInputError(f"empty file: {label} (0 bytes; record or export the audio again)")
    if size > limits.max_bytes:
        mb = f"more than {limits.max_bytes / 2**20:.1f}" if at_least else f"{size / 2**20:.1f}"
        raise BadInputError(
            f"file too large: {label} ({mb} MB; the limit is {limits.max_bytes / 2**20:.1f} MB, "
            f"set MEDZERO_MAX_AUDIO_BYTES to raise it)"
        )


# ---------------------------------------------------------------------------------------------
# Decoding


def _decode(
    data: Union[str, bytes], label: str, limits: AudioLimits, fmt: Optional[str] = None
) -> tuple[np.ndarray, int, Optional[str]]:
    """Decode to ``(frames, rate, format)``, frames shaped (samples, channels); sniffs unless ``fmt`` is known."""
    if fmt is None:
        head = read_head(data) if isinstance(data, str) else data[:HEAD_BYTES]
        modality, fmt = sniff(head)
        if modality == "image":
            raise BadInputError(f"{label} is an image ({fmt.upper()}), not audio; pass it to an image task instead")
        if modality is None and _looks_like_text(head):
            raise BadInputError(f"not an audio file: {label} (it holds text, no audio header found; {_EXPECTED})")
    if fmt == "wav":
        _check_wav_complete(data, label)
    if fmt in _SOUNDFILE_FORMATS:
        decoded = _decode_soundfile(data, label, fmt, limits)
        if decoded is not None:
            return (*decoded, fmt)
    return _decode_av(data, label, fmt, limits)


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
        if 0 < f.frames < _UNKNOWN_FRAMES:
            _check_max_duration(f.frames / f.samplerate, label, limits)
        try:
            frames = f.read(dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError) as e:
            raise BadInputError(f"truncated or corrupt {fmt.upper()} file: {label} ({_reason(e)})") from None
        return frames, int(f.samplerate)


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
        duration = _av_duration(container, stream)
        if duration is not None:
            _check_max_duration(duration, label, limits)

        chunks: list[np.ndarray] = []
        rate = stream.codec_context.sample_rate or None
        channels = len(stream.codec_context.layout.channels) or None
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
                    chunks.append(np.zeros((n, channels), np.float32))
                    total, concealed = total + n, concealed + 1
                    continue
                for frame in decoded:
                    if frame.samples == 0:
                        continue
                    layout = (frame.sample_rate, len(frame.layout.channels))
                    if not chunks:
                        rate, channels = layout
                    elif layout != (rate, channels):
                        raise BadInputError(
                            f"{label} changes from {rate} Hz/{channels} ch to {layout[0]} Hz/{layout[1]} ch "
                            f"mid-stream; convert it to WAV first"
                        )
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


def _check_wav_complete(data: Union[str, bytes], label: str) -> None:
    """Reject a RIFF/RF64 WAV whose data chunk declares more bytes than the file holds.

    libsndfile silently returns the shorter audio in that case, which hides a cut-off copy.
    Streamed WAVs that declare 0 or 0xFFFFFFFF bytes are accepted as they are.
    """
    with (open(data, "rb") if isinstance(data, str) else io.BytesIO(data)) as f:
        f.seek(0, io.SEEK_END)
        size = f.tell()
        f.seek(0)
        riff = f.read(12)
        if riff[:4] not in (b"RIFF", b"RIFX", b"RF64", b"BW64"):
            return  # Wave64: chunk sizes are 64-bit GUID chunks; leave it to the decoder
        endian = ">" if riff[:4] == b"RIFX" else "<"
        ds64_data_size = None
        pos = 12
        for _ in range(64):  # a WAV has a handful of chunks; stop on garbage
            header = f.read(8)
            if len(header) < 8:
                break
            chunk_id, chunk_size = header[:4], struct.unpack(endian + "I", header[4:])[0]
            if chunk_id == b"ds64":
                body = f.read(16)
                if len(body) == 16:
                    ds64_data_size = struct.unpack("<Q", body[8:16])[0]
            if chunk_id == b"data":
                declared = ds64_data_size if chunk_size == 0xFFFFFFFF and ds64_data_size else chunk_size
                available = size - (pos + 8)
                if declared not in (0, 0xFFFFFFFF) and declared > available:
                    raise BadInputError(
                        f"truncated WAV file: {label} (the data chunk declares {declared} bytes but only "
                        f"{available} are present; copy or export the file again)"
                    )
                return
            pos += 8 + chunk_size + (chunk_size & 1)
            f.seek(pos)
        raise BadInputError(f"truncated or corrupt WAV file: {label} (no data chunk found)")


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
