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
from pathlib import Path
from typing import Any, BinaryIO, Union

import numpy as np

from ..core.errors import BadInputError, one_line
from ..core.sniff import sniff_source
from .dicom import read_dicom
from .pixels import (
    WINDOW_PRESETS,
    ImageLimits,
    LoadedImage,
    Window,
    clahe,
    finish_gray,
    minmax_to_unit,
    resolve_window,
    window_to_unit,
)

__all__ = ["read_image", "LoadedImage", "ImageLimits", "WINDOW_PRESETS", "clahe"]

_logger = logging.getLogger(__name__)

#: Formats decoded through Pillow (the rest of :data:`medzero.core.sniff.IMAGE_FORMATS` are refused).
_PILLOW_FORMATS = ("png", "jpeg", "tiff", "gif", "webp", "jpeg2000")
_EIGHT_BIT_GRAY = ("1", "L", "LA", "La")
_HIGH_BIT_GRAY = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")

Source = Union[str, os.PathLike, bytes, bytearray, memoryview, BinaryIO, np.ndarray]


# -- entry point ---------------------------------------------------------------------------------


def read_image(
    source: Source,
    *,
    limits: ImageLimits | None = None,
    window: Window = None,
    clahe: bool = False,
    name: str | None = None,
    fmt: str | None = None,
) -> LoadedImage:
    """Load ``source`` (a path, bytes, a binary file-like object or a numpy array).

    ``window``: ``None`` or ``"dicom"`` (the file's own VOI LUT / window, else min–max), a preset
    name from :data:`WINDOW_PRESETS`, or an explicit ``(center, width)``. ``clahe``: contrast-limited
    adaptive histogram equalisation after windowing. ``name`` is what ``.source`` reports for bytes,
    streams and arrays. ``fmt``: the format already sniffed from the content (the ingest pipeline
    sniffs each source once); ``None`` sniffs here. Raises :class:`BadInputError` for anything
    that is not a usable image.
    """
    limits = limits or ImageLimits.from_env()
    explicit_window = resolve_window(window)
    try:
        if fmt is None:
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
        return read_dicom(data, label=label, limits=limits, window=window, use_clahe=clahe)
    if isinstance(window, str) and window.lower() in WINDOW_PRESETS:
        raise BadInputError(
            f"window preset {window!r} is in Hounsfield units and needs a DICOM; "
            f"for a {fmt.upper()} pass an explicit (center, width) in pixel values"
        )
    return _read_pillow(data, fmt, label=label, limits=limits, window=explicit_window, use_clahe=clahe)


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
        raise BadInputError(f"{label}: cannot read the {fmt.upper()} header ({one_line(exc)}); the file may be damaged") from None
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
            raise BadInputError(f"{label}: cannot decode the {fmt.upper()} pixels ({one_line(exc)}); the file looks truncated or damaged") from None
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
