"""Read an image (DICOM, PNG, JPEG, TIFF, or an array) into float32 pixels in [0, 1].

:func:`read_image` sniffs the content (never the file name), checks the size limits before any
pixels are decoded, and returns a :class:`LoadedImage`:

- ``pixels``: float32 in [0, 1], ``H×W`` (grayscale) or ``H×W×3`` (RGB);
- ``metadata``: a small, PHI-free dict of plain JSON types (see :mod:`medzero.image.dicom` for DICOM);
- ``to_pil()``: the 8-bit RGB picture the model's own preprocessing receives.

Value mapping for non-DICOM inputs:

- 8-bit images (PNG/JPEG/TIFF/GIF/WebP modes ``1``, ``L``, ``P``, ``RGB``, ``RGBA``, ``CMYK``, ...)
  are divided by 255. Unless a window or CLAHE is asked for, ``to_pil()`` returns exactly
  ``PIL.Image.open(path).convert("RGB")`` (alpha is dropped, as Pillow and open_clip do; EXIF
  orientation is not applied, as Pillow does not).
- 16-bit and 32-bit grayscale images (``I;16``, ``I``, ``F``) are scaled min–max over the image's
  own value range: exports from PACS rarely fill the full 16-bit range (12-bit data is common), so
  dividing by 65535 would give a near-black picture. ``metadata["scaling"]`` says which was used.
- ``window=(center, width)`` maps ``[center - width/2, center + width/2]`` to [0, 1] in the image's
  own values (Hounsfield/modality units for DICOM, stored values otherwise); the named presets in
  :data:`WINDOW_PRESETS` are in Hounsfield units and so are for DICOM only. Windowing applies to
  grayscale images; colour images are left as they are.
- ``clahe=True`` applies contrast-limited adaptive histogram equalisation after windowing.
"""
from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Union

import numpy as np

from ..core.errors import BadInputError
from ..core.sniff import sniff_source

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image as PILImage

__all__ = ["read_image", "LoadedImage", "ImageLimits", "WINDOW_PRESETS", "clahe"]

_logger = logging.getLogger(__name__)

#: Named windows as (center, width) in Hounsfield units.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "bone": (400.0, 1800.0),
}

#: Formats decoded through Pillow (the rest of :data:`medzero.core.sniff.IMAGE_FORMATS` are refused).
_PILLOW_FORMATS = ("png", "jpeg", "tiff", "gif", "webp", "jpeg2000")
_EIGHT_BIT_GRAY = ("1", "L", "LA", "La")
_HIGH_BIT_GRAY = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")

Source = Union[str, os.PathLike, bytes, bytearray, memoryview, BinaryIO, np.ndarray]
Window = Union[str, tuple[float, float], None]


@dataclass(frozen=True)
class ImageLimits:
    """Refuse inputs larger than this before decoding them."""

    max_pixels: int = 100_000_000
    max_bytes: int = 1 << 30

    @classmethod
    def from_env(cls) -> "ImageLimits":
        """``MEDZERO_MAX_IMAGE_PIXELS`` (and ``MEDZERO_MAX_IMAGE_BYTES``) override the defaults."""
        values: dict[str, int] = {}
        for attr, var in (("max_pixels", "MEDZERO_MAX_IMAGE_PIXELS"), ("max_bytes", "MEDZERO_MAX_IMAGE_BYTES")):
            raw = os.environ.get(var, "").strip().replace("_", "")
            if not raw:
                continue
            try:
                values[attr] = int(float(raw))
            except ValueError:
                raise BadInputError(f"{var}={os.environ[var]!r} is not a number; set it to a pixel count such as 100000000") from None
            if values[attr] <= 0:
                raise BadInputError(f"{var} must be positive, got {os.environ[var]!r}")
        return cls(**values)


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


# -- entry point ---------------------------------------------------------------------------------


def read_image(
    source: Source,
    *,
    limits: ImageLimits | None = None,
    window: Window = None,
    clahe: bool = False,
    name: str | None = None,
) -> LoadedImage:
    """Load ``source`` (a path, bytes, a binary file-like object or a numpy array).

    ``window``: ``None`` or ``"dicom"`` (the file's own VOI LUT / window, else min–max), a preset
    name from :data:`WINDOW_PRESETS`, or an explicit ``(center, width)``. ``clahe``: contrast-limited
    adaptive histogram equalisation after windowing. ``name`` is what ``.source`` reports for bytes,
    streams and arrays. Raises :class:`BadInputError` for anything that is not a usable image.
    """
    limits = limits or ImageLimits.from_env()
    explicit_window = resolve_window(window)
    try:
        _, fmt = sniff_source(source)
    except TypeError:
        raise BadInputError(
            f"cannot read an image from a {type(source).__name__}; pass a path, bytes, a binary file or a numpy array"
        ) from None
    label = _label(source, name)
    if isinstance(source, np.ndarray):
        return _read_array(source, label=label, limits=limits, window=explicit_window, use_clahe=clahe)
    if fmt is None:
        raise BadInputError(f"{label} is not an image (not DICOM, PNG, JPEG or TIFF by its content); pass an image file")
    if fmt not in ("dicom", *_PILLOW_FORMATS):
        raise BadInputError(f"{label} is a {fmt.upper()} image, which medzero does not read; convert it to PNG or JPEG")
    data = _load_bytes(source, label, limits)
    if fmt == "png":
        _check_png_header(data, label)
    if fmt == "dicom":
        from .dicom import read_dicom

        return read_dicom(data, label=label, limits=limits, window=window, use_clahe=clahe)
    if isinstance(window, str) and window.lower() in WINDOW_PRESETS:
        raise BadInputError(
            f"window preset {window!r} is in Hounsfield units and needs a DICOM; "
            f"for a {fmt.upper()} pass an explicit (center, width) in pixel values"
        )
    return _read_pillow(data, fmt, label=label, limits=limits, window=explicit_window, use_clahe=clahe)


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
    """Map ``[center - width/2, center + width/2]`` linearly onto [0, 1], clipping outside (float32)."""
    low = center - width / 2.0
    out = (np.asarray(values, dtype=np.float64) - low) / width
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def minmax_to_unit(values: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Scale by the array's own range; a constant image becomes all zeros."""
    values = np.asarray(values, dtype=np.float64)
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.float32), low, high
    return ((values - low) / (high - low)).astype(np.float32), low, high


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


# -- Pillow formats ------------------------------------------------------------------------------


def _read_pillow(
    data: bytes | Path, fmt: str, *, label: str, limits: ImageLimits, window: tuple[float, float] | None, use_clahe: bool
) -> LoadedImage:
    from PIL import Image, UnidentifiedImageError

    fp: Any = data if isinstance(data, Path) else io.BytesIO(data)
    try:
        im = Image.open(fp)  # reads the header only
    except Image.DecompressionBombError:
        raise BadInputError(
            f"{label}: the {fmt.upper()} header claims more pixels than Pillow allows "
            f"(over {2 * (Image.MAX_IMAGE_PIXELS or 0):,}); refusing to decode it"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise BadInputError(f"{label}: cannot read the {fmt.upper()} header ({_short(exc)}); the file may be damaged") from None
    with im:
        width, height = im.size
        frames = int(getattr(im, "n_frames", 1) or 1)
        if width <= 0 or height <= 0:
            raise BadInputError(f"{label}: the {fmt.upper()} image is empty ({width}×{height} pixels)")
        if width * height > limits.max_pixels:
            raise BadInputError(
                f"{label}: {width}×{height} = {width * height:,} pixels is over the limit of {limits.max_pixels:,}; "
                f"raise MEDZERO_MAX_IMAGE_PIXELS if this image is expected"
            )
        try:
            im.load()
            mode = im.mode
            metadata: dict[str, Any] = {"format": fmt, "width": width, "height": height, "mode": mode}
            if frames > 1:
                metadata["frames"] = frames
                metadata["frame_index"] = 0
            if mode in _HIGH_BIT_GRAY:
                values = np.asarray(im)
                metadata["bits"] = 32 if mode in ("I", "F") else 16
                pixels = finish_gray(values, window=window, use_clahe=use_clahe, metadata=metadata)
                metadata["scaling"] = "window" if window is not None else "min-max"
                return LoadedImage(pixels, metadata, label, fmt)
            rgb = im.convert("RGB")
            gray = mode in _EIGHT_BIT_GRAY
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise BadInputError(f"{label}: cannot decode the {fmt.upper()} pixels ({_short(exc)}); the file looks truncated or damaged") from None
    metadata["bits"] = 8
    values = np.asarray(rgb)
    if gray:
        values = values[..., 0]
    if window is not None and gray:
        pixels = window_to_unit(values, *window)
        metadata["window"] = {"source": "explicit", "center": window[0], "width": window[1]}
    else:
        if window is not None:
            _logger.info("%s: window ignored for a colour image", label)
        pixels = values.astype(np.float32) / np.float32(255.0)
        metadata["window"] = None
    metadata["scaling"] = "window" if metadata["window"] else "divide-255"
    if use_clahe:
        pixels = clahe(pixels)
    metadata["clahe"] = bool(use_clahe)
    keep = rgb if metadata["window"] is None and not use_clahe else None
    return LoadedImage(pixels, metadata, label, fmt, pil=keep)


# -- arrays --------------------------------------------------------------------------------------


def _read_array(
    array: np.ndarray, *, label: str, limits: ImageLimits, window: tuple[float, float] | None, use_clahe: bool
) -> LoadedImage:
    arr = np.asarray(array)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[-1] == 4:
        arr = arr[..., :3]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] != 3):
        raise BadInputError(f"{label}: an image array must be H×W or H×W×3, got shape {arr.shape}")
    if arr.size == 0:
        raise BadInputError(f"{label}: the image array is empty (shape {arr.shape})")
    if arr.shape[0] * arr.shape[1] > limits.max_pixels:
        raise BadInputError(
            f"{label}: {arr.shape[1]}×{arr.shape[0]} pixels is over the limit of {limits.max_pixels:,}; raise MEDZERO_MAX_IMAGE_PIXELS"
        )
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating) or arr.dtype == bool):
        raise BadInputError(f"{label}: an image array must hold numbers, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise BadInputError(f"{label}: the image array holds NaN or infinite values")
    metadata: dict[str, Any] = {"format": "array", "width": int(arr.shape[1]), "height": int(arr.shape[0]), "dtype": str(arr.dtype)}
    if arr.ndim == 2 and (window is not None or arr.dtype not in (np.uint8, bool)):
        if window is None and np.issubdtype(arr.dtype, np.floating) and arr.min() >= 0.0 and arr.max() <= 1.0:
            pixels = arr.astype(np.float32)
            metadata["window"] = None
            pixels = clahe(pixels) if use_clahe else pixels
            metadata["clahe"] = bool(use_clahe)
        else:
            pixels = finish_gray(arr, window=window, use_clahe=use_clahe, metadata=metadata)
        return LoadedImage(pixels, metadata, label, "array")
    if arr.dtype == bool:
        pixels = arr.astype(np.float32)
    elif arr.dtype == np.uint8:
        pixels = arr.astype(np.float32) / np.float32(255.0)
    elif np.issubdtype(arr.dtype, np.floating) and arr.min() >= 0.0 and arr.max() <= 1.0:
        pixels = arr.astype(np.float32)
    else:
        pixels, _, _ = minmax_to_unit(arr)
    metadata["window"] = None
    if use_clahe:
        pixels = clahe(pixels)
    metadata["clahe"] = bool(use_clahe)
    return LoadedImage(np.ascontiguousarray(pixels), metadata, label, "array")


# -- helpers -------------------------------------------------------------------------------------


def _is_bytes(source: Any) -> bool:
    return isinstance(source, (bytes, bytearray, memoryview))


def _label(source: Any, name: str | None) -> str:
    if name:
        return str(name)
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, np.ndarray):
        return "<array>"
    if _is_bytes(source):
        return "<bytes>"
    stream_name = getattr(source, "name", None)
    return stream_name if isinstance(stream_name, str) else "<stream>"


def _load_bytes(source: Any, label: str, limits: ImageLimits) -> bytes | Path:
    """A path stays a path (Pillow and pydicom read it lazily); anything else becomes bytes."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        size = path.stat().st_size
        if size > limits.max_bytes:
            raise BadInputError(f"{label}: {size:,} bytes is over the limit of {limits.max_bytes:,} bytes")
        if size == 0:
            raise BadInputError(f"{label} is empty (0 bytes)")
        return path
    if _is_bytes(source):
        data = bytes(source)
    else:
        start = source.tell()
        size = source.seek(0, os.SEEK_END) - start
        source.seek(start)
        if size > limits.max_bytes:
            raise BadInputError(f"{label}: {size:,} bytes is over the limit of {limits.max_bytes:,} bytes")
        data = source.read()
        source.seek(start)
    if len(data) > limits.max_bytes:
        raise BadInputError(f"{label}: {len(data):,} bytes is over the limit of {limits.max_bytes:,} bytes")
    return data


def _check_png_header(data: bytes | Path, label: str) -> None:
    """Refuse a zero-size PNG by its IHDR (Pillow would only say it cannot identify the file)."""
    if isinstance(data, Path):
        with data.open("rb") as fh:
            head = fh.read(24)
    else:
        head = data[:24]
    if len(head) == 24 and head[12:16] == b"IHDR":
        width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
        if width == 0 or height == 0:
            raise BadInputError(f"{label}: the PNG image is empty ({width}×{height} pixels)")


def _short(exc: BaseException) -> str:
    """An exception's message on one line (shortened), for one-line errors."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 240 else text[:237] + "..."
