"""Pixels as medzero holds them: :class:`LoadedImage`, size limits, windows and value mapping.

Shared by the loaders (:mod:`medzero.image.io` for Pillow formats and arrays,
:mod:`medzero.image.dicom` for DICOM), which import from here and never from each other's
internals.
"""
from __future__ import annotations

import logging
import os
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator, Union

import numpy as np

from ..core.errors import BadInputError, one_line

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image as PILImage

__all__ = [
    "LoadedImage", "ImageLimits", "WINDOW_PRESETS", "Window", "resolve_window", "window_to_unit",
    "minmax_to_unit", "clahe", "finish_gray", "decoded_bytes", "reduction_factor", "block_mean",
    "LibraryMessage", "library_messages", "divert_threads", "scrub",
]

#: Named windows as (center, width) in Hounsfield units.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "bone": (400.0, 1800.0),
}


Window = Union[str, tuple[float, float], None]

@dataclass(frozen=True)
class ImageLimits:
    """Refuse inputs larger than this before decoding them.

    ``max_decoded_bytes`` bounds the memory one image may take while it is decoded: what the codec
    produces, at the size it decodes to, plus the float32 copies medzero makes of the pixels it
    keeps (see :func:`decoded_bytes`). It is checked from the header, before any pixel is decoded.
    """

    max_pixels: int = 100_000_000
    max_bytes: int = 1 << 30
    max_decoded_bytes: int = 1 << 30

    @classmethod
    def from_env(cls) -> "ImageLimits":
        """``MEDZERO_MAX_IMAGE_PIXELS``, ``MEDZERO_MAX_IMAGE_BYTES`` and ``MEDZERO_MAX_IMAGE_DECODED_BYTES``
        override the defaults."""
        values: dict[str, int] = {}
        for attr, var in (
            ("max_pixels", "MEDZERO_MAX_IMAGE_PIXELS"),
            ("max_bytes", "MEDZERO_MAX_IMAGE_BYTES"),
            ("max_decoded_bytes", "MEDZERO_MAX_IMAGE_DECODED_BYTES"),
        ):
            raw = os.environ.get(var, "").strip().replace("_", "")
            if not raw:
                continue
            try:
                values[attr] = int(float(raw))
            except ValueError:
                raise BadInputError(f"{var}={os.environ[var]!r} is not a number; set it to a count such as 100000000") from None
            if values[attr] <= 0:
                raise BadInputError(f"{var} must be positive, got {os.environ[var]!r}")
        return cls(**values)

    def check_decoded(self, label: str, what: str, nbytes: int) -> None:
        """Refuse, before decoding, an image whose decoding would take more than ``max_decoded_bytes``."""
        if nbytes > self.max_decoded_bytes:
            raise BadInputError(
                f"{label}: decoding {what} takes about {_mib(nbytes)} of memory, over the limit of "
                f"{_mib(self.max_decoded_bytes)}; raise MEDZERO_MAX_IMAGE_DECODED_BYTES if this image is expected"
            )


def decoded_bytes(codec_bytes: int, kept_pixels: int, channels: int) -> int:
    """The memory one image takes while it is decoded: ``codec_bytes`` (the codec's output at the size
    it decodes to, and any raw copy held beside it) plus two float32 copies of the ``kept_pixels``
    medzero keeps (the result and one working copy; the value mapping works in place)."""
    return int(codec_bytes) + 2 * 4 * int(kept_pixels) * int(channels)


def _mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:,.0f} MiB"


@dataclass
class LoadedImage:
    """Decoded pixels plus PHI-safe metadata.

    ``pil`` holds, for 8-bit Pillow images that were not windowed or enhanced, the RGB image exactly
    as ``PIL.Image.open(...).convert("RGB")`` gives it, so that the model sees the same pixels.
    """

    pixels: np.ndarray
    metadata: dict[str, Any]
    source: str
    format: str
    pil: "PILImage.Image | None" = field(default=None, repr=False, compare=False)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.pixels.shape)

    @property
    def is_color(self) -> bool:
        return self.pixels.ndim == 3

    def to_uint8(self) -> np.ndarray:
        """``round(pixels * 255)`` as uint8 (H×W or H×W×3)."""
        return np.clip(np.rint(self.pixels * np.float32(255.0)), 0, 255).astype(np.uint8)

    def to_pil(self) -> "PILImage.Image":
        """An 8-bit RGB PIL image: the original for 8-bit files, else ``round(pixels * 255)``."""
        from PIL import Image

        if self.pil is not None:
            return self.pil
        data = self.to_uint8()
        if data.ndim == 2:
            return Image.fromarray(data, mode="L").convert("RGB")
        return Image.fromarray(data, mode="RGB")


def resolve_window(window: Window) -> tuple[float, float] | None:
    """``(center, width)`` for a preset or tuple; ``None`` for the file's own (``None``/``"dicom"``)."""
    if window is None:
        return None
    if isinstance(window, str):
        key = window.strip().lower()
        if key in ("dicom", "file", "auto", ""):
            return None
        if key in WINDOW_PRESETS:
            return WINDOW_PRESETS[key]
        raise BadInputError(
            f"unknown window {window!r}; use one of {', '.join(WINDOW_PRESETS)}, 'dicom', or a (center, width) pair"
        )
    try:
        center, width = (float(v) for v in window)
    except (TypeError, ValueError):
        raise BadInputError(f"window must be a preset name or a (center, width) pair, got {window!r}") from None
    if not np.isfinite(center) or not np.isfinite(width) or width <= 0:
        raise BadInputError(f"window width must be a positive number, got center={center}, width={width}")
    return center, width


# -- shared value mapping ------------------------------------------------------------------------


def window_to_unit(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """Map ``[center - width/2, center + width/2]`` linearly onto [0, 1], clipping outside.

    Returns a new float32 array (``values`` is never changed) computed in place: one copy, never a
    float64 one, so a large image costs four bytes per value here.
    """
    out = np.array(values, dtype=np.float32, copy=True)
    out -= np.float32(center - width / 2.0)
    out /= np.float32(width)
    return np.clip(out, 0.0, 1.0, out=out)


def minmax_to_unit(values: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Scale by the array's own range; a constant image becomes all zeros (a new float32 array)."""
    values = np.asarray(values)
    low, high = float(values.min()), float(values.max())
    if not high > low:  # constant, or NaN
        return np.zeros(values.shape, dtype=np.float32), low, high
    out = np.array(values, dtype=np.float32, copy=True)
    out -= np.float32(low)
    out /= np.float32(high - low)
    return np.clip(out, 0.0, 1.0, out=out), low, high


def reduction_factor(height: int, width: int, reduce_to: int | None) -> int:
    """The integer factor by which an image can shrink and keep both sides at least ``reduce_to``
    (1: keep it as it is)."""
    if not reduce_to or reduce_to <= 0:
        return 1
    return max(1, min(int(height), int(width)) // int(reduce_to))


def block_mean(values: np.ndarray, factor: int) -> np.ndarray:
    """``values`` (H×W or H×W×C) shrunk ``factor`` times by averaging ``factor × factor`` blocks, as
    float32. The last rows and columns that do not fill a block are dropped (fewer than ``factor``).

    Sums whole rows first (``factor`` contiguous adds into one float32 array of ``H/factor`` rows),
    then columns: 3–5× faster than ``mean`` over a 4-d view, whose reduction walks short strided
    axes, and no full-size float copy is made. Integer samples sum exactly in float32 (up to 2**24),
    so the result is the exact block mean rounded once.
    """
    if factor <= 1:
        return np.asarray(values)
    h, w = values.shape[0] // factor, values.shape[1] // factor
    rows = values[: h * factor, : w * factor].reshape(h, factor, w * factor, *values.shape[2:])
    acc = rows[:, 0].astype(np.float32)
    for i in range(1, factor):
        acc += rows[:, i]
    cols = acc.reshape(h, w, factor, *values.shape[2:])
    out = cols[:, :, 0].copy()
    for j in range(1, factor):
        out += cols[:, :, j]
    out /= np.float32(factor * factor)
    return out


def clahe(image: np.ndarray, *, clip_limit: float = 2.0, tiles: int = 8, bins: int = 256) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation of a [0, 1] image (float32, same shape).

    The OpenCV algorithm: per tile of a ``tiles × tiles`` grid, a histogram clipped at
    ``clip_limit`` times the mean bin count (the excess spread evenly), its CDF as a mapping, and
    bilinear interpolation between the four nearest tile mappings. RGB images are equalised on
    their luminance and each channel scaled by the same factor.
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 3:
        luma = image @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        equalised = clahe(luma, clip_limit=clip_limit, tiles=tiles, bins=bins)
        ratio = np.where(luma > 1e-6, equalised / np.maximum(luma, 1e-6), 0.0).astype(np.float32)
        out = image * ratio[..., None]
        out[luma <= 1e-6] = equalised[luma <= 1e-6, None]
        return np.clip(out, 0.0, 1.0).astype(np.float32)
    h, w = image.shape
    ty, tx = max(1, min(tiles, h)), max(1, min(tiles, w))
    q = np.minimum((np.clip(image, 0.0, 1.0) * bins).astype(np.int64), bins - 1)
    ys = np.linspace(0, h, ty + 1).astype(int)
    xs = np.linspace(0, w, tx + 1).astype(int)
    maps = np.empty((ty, tx, bins), dtype=np.float32)
    for i in range(ty):
        for j in range(tx):
            tile = q[ys[i] : ys[i + 1], xs[j] : xs[j + 1]]
            hist = np.bincount(tile.ravel(), minlength=bins).astype(np.float64)
            limit = max(clip_limit * tile.size / bins, 1.0)
            excess = np.maximum(hist - limit, 0.0).sum()
            hist = np.minimum(hist, limit) + excess / bins
            cdf = np.cumsum(hist)
            maps[i, j] = (cdf - cdf[0]) / max(cdf[-1] - cdf[0], 1e-12)
    # Bilinear interpolation between tile centres.
    fy = (np.arange(h) + 0.5) / (h / ty) - 0.5
    fx = (np.arange(w) + 0.5) / (w / tx) - 0.5
    y0 = np.clip(np.floor(fy).astype(int), 0, ty - 1)
    x0 = np.clip(np.floor(fx).astype(int), 0, tx - 1)
    y1, x1 = np.minimum(y0 + 1, ty - 1), np.minimum(x0 + 1, tx - 1)
    wy = np.clip(fy - y0, 0.0, 1.0).astype(np.float32)[:, None]
    wx = np.clip(fx - x0, 0.0, 1.0).astype(np.float32)[None, :]
    top = maps[y0[:, None], x0[None, :], q] * (1 - wx) + maps[y0[:, None], x1[None, :], q] * wx
    bottom = maps[y1[:, None], x0[None, :], q] * (1 - wx) + maps[y1[:, None], x1[None, :], q] * wx
    return np.clip(top * (1 - wy) + bottom * wy, 0.0, 1.0).astype(np.float32)


def finish_gray(
    values: np.ndarray, *, window: tuple[float, float] | None, use_clahe: bool, metadata: dict[str, Any]
) -> np.ndarray:
    """Window (explicit, else min–max) a grayscale array to [0, 1]; CLAHE if asked. Fills metadata."""
    if window is not None:
        pixels = window_to_unit(values, *window)
        metadata["window"] = {"source": "explicit", "center": window[0], "width": window[1]}
    else:
        pixels, low, high = minmax_to_unit(values)
        metadata["window"] = {"source": "min-max", "low": low, "high": high}
    if use_clahe:
        pixels = clahe(pixels)
    metadata["clahe"] = bool(use_clahe)
    return pixels


# -- what the decoding libraries say ---------------------------------------------------------------
#
# pydicom reports a damaged file twice, to its "pydicom" logger and with warnings.warn (its
# warn_and_log), and those messages quote element values: a UID whose length runs over the next
# elements quotes the patient's name, ID, birth date and address. Its decoder registry logs a full
# traceback for every plug-in that fails; pynetdicom logs a bad command's values and a traceback.
# Decoding runs in worker threads (the ingest pipeline, the server's decode pool, the DICOM
# listener's association threads), where warnings.catch_warnings cannot be used: it swaps
# process-wide state. So the diversion is per thread: a logging filter on the libraries' loggers and
# a wrapper around warnings.showwarning, both installed on first use, divert what a thread says
# while it is inside library_messages() (or, for threads a library starts itself, while a rule
# given to divert_threads() claims it) and pass everything else on unchanged. The user's own code,
# and medzero's other threads, see their warnings and log records as before.

#: Loggers whose records are diverted (and any logger below them).
_LIBRARY_LOGGERS = ("pydicom", "pylibjpeg", "openjpeg", "libjpeg", "rle", "PIL", "pynetdicom", "py.warnings")
#: Loggers created lazily by the libraries (when a decoder plug-in is first imported): made now, so
#: that their first record is diverted too.
_KNOWN_LOGGERS = (
    "pydicom.pixels.decoders.base", "pydicom.pixels.utils", "pylibjpeg.utils", "openjpeg.utils",
    "openjpeg._openjpeg", "libjpeg.utils", "rle.utils", "PIL.Image", "PIL.PngImagePlugin",
    "PIL.TiffImagePlugin", "PIL.JpegImagePlugin", "PIL.Jpeg2KImagePlugin",
)

_local = threading.local()
_install_lock = threading.Lock()
_scanned = -1
_thread_rules: list[Callable[[threading.Thread], bool]] = []
_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LibraryMessage:
    """One warning or log record a library emitted while medzero decoded. ``text`` is the library's
    own words and may quote file content: read it, never print it; :attr:`safe` may be printed."""

    kind: str  # "warning" or "log"
    source: str  # the warning category or the logger's name
    text: str
    level: int = logging.WARNING

    @property
    def safe(self) -> str:
        return scrub(self.text)


def _sink() -> Callable[[LibraryMessage], None] | None:
    """Where this thread's library messages go: its library_messages() list, a thread rule's
    scrubbed log, or ``None`` (on to the user's handlers, untouched)."""
    sink = getattr(_local, "sink", None)
    if sink is not None:
        return sink.append
    if _thread_rules:
        thread = threading.current_thread()
        if any(rule(thread) for rule in list(_thread_rules)):
            return _log_scrubbed
    return None


def _log_scrubbed(message: LibraryMessage) -> None:
    """A library's message from a claimed thread: its errors stay visible, what they quote does not."""
    level = message.level if message.level >= logging.ERROR else logging.DEBUG
    _logger.log(level, "%s: %s", message.source, message.safe)


class _Divert(logging.Filter):
    """Drops a library's record from the logs when its thread's messages are diverted."""

    def filter(self, record: logging.LogRecord) -> bool:
        sink = _sink()
        if sink is None:
            return True
        try:
            text = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is still diverted
            text = str(record.msg)
        if record.exc_info and record.exc_info[1] is not None:
            text = f"{text} ({type(record.exc_info[1]).__name__})"
        sink(LibraryMessage("log", record.name, text, record.levelno))
        return False


_DIVERT = _Divert()


def _divert_showwarning(previous: Any) -> Any:
    def showwarning(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001 - warnings' signature
        sink = _sink()
        if sink is None:
            return previous(message, category, filename, lineno, file, line)
        sink(LibraryMessage("warning", getattr(category, "__name__", "Warning"), str(message)))
        return None

    showwarning._medzero_divert = True  # type: ignore[attr-defined]
    return showwarning


def _install() -> None:
    """Wrap warnings.showwarning (again, if something replaced it since) and filter the libraries'
    loggers, including those created since the last call."""
    global _scanned
    with _install_lock:
        if not getattr(warnings.showwarning, "_medzero_divert", False):
            warnings.showwarning = _divert_showwarning(warnings.showwarning)
        loggers = logging.root.manager.loggerDict
        if len(loggers) == _scanned:
            return
        for name in (*_LIBRARY_LOGGERS, *_KNOWN_LOGGERS):
            logging.getLogger(name)
        for name, logger in list(loggers.items()):
            ours = any(name == root or name.startswith(root + ".") for root in _LIBRARY_LOGGERS)
            if ours and isinstance(logger, logging.Logger) and _DIVERT not in logger.filters:
                logger.addFilter(_DIVERT)
        _scanned = len(loggers)


@contextmanager
def library_messages() -> Iterator[list[LibraryMessage]]:
    """Collect, instead of printing, what the decoding libraries warn and log in this thread.

    Yields the list the messages are appended to. The caller decides what they mean (a decoder's
    warning about a premature end makes the image an error) and logs them, scrubbed, at DEBUG.
    """
    _install()
    outer = getattr(_local, "sink", None)
    sink: list[LibraryMessage] = []
    _local.sink = sink
    try:
        yield sink
    finally:
        _local.sink = outer
        _install()  # loggers a plug-in created while decoding are filtered from now on


def divert_threads(rule: Callable[[threading.Thread], bool]) -> Callable[[], None]:
    """Divert the library messages of every thread ``rule`` claims (threads a library starts, such
    as pynetdicom's association and DUL threads, which decode what a peer sends before medzero's
    code runs): their errors are logged scrubbed, the rest at DEBUG. Returns the function that
    stops it. The rule must be cheap: it runs for every library message of every thread."""
    _install()
    _thread_rules.append(rule)

    def stop() -> None:
        if rule in _thread_rules:
            _thread_rules.remove(rule)

    return stop


_names: frozenset[str] | None = None


def _dicom_names() -> frozenset[str]:
    """DICOM keywords, element names and registered UIDs: what a library may quote that is not data."""
    global _names
    if _names is None:
        try:
            from pydicom._uid_dict import UID_dictionary
            from pydicom.datadict import DicomDictionary

            names = {entry[4] for entry in DicomDictionary.values()} | {entry[2] for entry in DicomDictionary.values()}
            names |= set(UID_dictionary)
        except ImportError:  # pragma: no cover - pydicom is a dependency
            names = set()
        _names = frozenset(n for n in names if n)
    return _names


def scrub(text: "str | BaseException", limit: int = 200) -> str:
    """A library's message with what it quotes from the file left out, on one line.

    Quoted values and byte strings (``'Doe^Jane'``, ``b'\\x10\\x00'``) become ``'…'``; a quoted DICOM
    keyword, element name or registered UID stays (``(0028,0008) 'Number of Frames'``); an
    unterminated quote drops the rest of the message. An apostrophe inside a word (``can't``) is
    not a quote. Used for every library message medzero prints or logs, since such messages quote
    element values (patient names, IDs, dates). A message that holds raw bytes (control
    characters: a value formatted as it was read) is cut before the first of them.
    """
    text = str(text)
    cut = next((k for k, c in enumerate(text) if ord(c) < 32 and c not in "\t\n\r"), None)
    if cut is not None:
        text = text[:cut] + "…"
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        is_bytes = text[i] == "b" and i + 1 < n and text[i + 1] in "'\"" and (i == 0 or not text[i - 1].isalnum())
        start = i + 1 if is_bytes else i
        if text[start] in "'\"" and (start == 0 or not text[start - 1].isalnum() or is_bytes):
            quote, j = text[start], start + 1
            while j < n and text[j] != quote:
                j += 2 if text[j] == "\\" else 1
            if j >= n:  # unterminated: what follows may be the file's bytes
                out.append("'…'")
                break
            content = text[start + 1 : j]
            out.append(text[i : j + 1] if not is_bytes and content in _dicom_names() else ("b'…'" if is_bytes else "'…'"))
            i = j + 1
            continue
        out.append(text[i])
        i += 1
    return one_line("".join(out), limit)
