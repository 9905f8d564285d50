"""Read an image (DICOM, PNG, JPEG, TIFF, or an array) into float32 pixels in [0, 1].

:func:`read_image` sniffs the content (never the file name), checks the size limits before any
pixels are decoded, and returns a :class:`LoadedImage`:

- ``pixels``: float32 in [0, 1], ``H×W`` (grayscale) or ``H×W×3`` (RGB);
- ``metadata``: a small, PHI-free dict of plain JSON types (see :mod:`medzero.image.dicom` for DICOM);
- ``to_pil()``: the 8-bit RGB picture the model's own preprocessing receives.

Value mapping for non-DICOM inputs:

- 8-bit images (PNG/JPEG/TIFF/GIF/WebP modes ``1``, ``L``, ``P``, ``RGB``, ``RGBA``, ``CMYK``, ...)
  are divided by 255. Unless a window, CLAHE or ``reduce_to`` (below) changes it, ``to_pil()``
  returns exactly ``PIL.Image.open(path).convert("RGB")`` (alpha is dropped, as Pillow and
  open_clip do; EXIF orientation is not applied, as Pillow does not).
- 16-bit and 32-bit grayscale images (``I;16``, ``I``, ``F``) are scaled min–max over the image's
  own value range: exports from PACS rarely fill the full 16-bit range (12-bit data is common), so
  dividing by 65535 would give a near-black picture. ``metadata["scaling"]`` says which was used.
- ``window=(center, width)`` maps ``[center - width/2, center + width/2]`` to [0, 1] in the image's
  own values (Hounsfield/modality units for DICOM, stored values otherwise); the named presets in
  :data:`WINDOW_PRESETS` are in Hounsfield units and so are for DICOM only. Windowing applies to
  grayscale images; colour images are left as they are.
- ``clahe=True`` applies contrast-limited adaptive histogram equalisation after windowing.

Memory: before any pixel is decoded, the decoded bytes (what the codec produces at the size it
decodes to, plus two float32 copies of what is kept) are checked against
``ImageLimits.max_decoded_bytes`` (``MEDZERO_MAX_IMAGE_DECODED_BYTES``, 1 GiB by default).
``reduce_to`` lets a large image come out smaller: JPEG is decoded at 1/2, 1/4 or 1/8 by DCT
scaling (``Image.draft``), JPEG 2000 with resolution levels discarded, any other format decoded in
full and shrunk with ``Image.reduce`` (a box average) before it is converted to floats. The image
modality asks for twice the model's input side, as PIL's ``thumbnail`` does; a direct
``read_image`` call keeps the full size.
"""
from __future__ import annotations

import io
import logging
import math
import os
from pathlib import Path
from typing import Any, BinaryIO, Union

import numpy as np

from ..core.errors import BadInputError
from ..core.sniff import sniff_source
from .dicom import read_dicom
from .pixels import (
    WINDOW_PRESETS,
    ImageLimits,
    LoadedImage,
    Window,
    block_mean,
    clahe,
    decoded_bytes,
    finish_gray,
    library_messages,
    minmax_to_unit,
    reduction_factor,
    resolve_window,
    scrub,
    window_to_unit,
)

__all__ = ["read_image", "LoadedImage", "ImageLimits", "WINDOW_PRESETS", "clahe"]

_logger = logging.getLogger(__name__)

#: Formats decoded through Pillow (the rest of :data:`medzero.core.sniff.IMAGE_FORMATS` are refused).
_PILLOW_FORMATS = ("png", "jpeg", "tiff", "gif", "webp", "jpeg2000")
_EIGHT_BIT_GRAY = ("1", "L", "LA", "La")
#: Modes Image.reduce averages as they are (others are converted to RGB first: a palette index is no value).
_REDUCE_FIRST = ("L", "LA", "RGB", "RGBA")
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
    reduce_to: int | None = None,
) -> LoadedImage:
    """Load ``source`` (a path, bytes, a binary file-like object or a numpy array).

    ``window``: ``None`` or ``"dicom"`` (the file's own VOI LUT / window, else min–max), a preset
    name from :data:`WINDOW_PRESETS`, or an explicit ``(center, width)``. ``clahe``: contrast-limited
    adaptive histogram equalisation after windowing. ``name`` is what ``.source`` reports for bytes,
    streams and arrays. ``fmt``: the format already sniffed from the content (the ingest pipeline
    sniffs each source once); ``None`` sniffs here. ``reduce_to``: the pixels may come out smaller,
    both sides staying at least this many pixels (what a model that resizes to ``reduce_to / 2``
    needs): JPEG and JPEG 2000 are then decoded smaller by the codec, anything else averaged in
    blocks; ``None`` keeps the full size. Raises :class:`BadInputError` for anything that is not a
    usable image, or that would take more memory to decode than ``limits.max_decoded_bytes``.
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
        return read_dicom(data, label=label, limits=limits, window=window, use_clahe=clahe, reduce_to=reduce_to)
    if isinstance(window, str) and window.lower() in WINDOW_PRESETS:
        raise BadInputError(
            f"window preset {window!r} is in Hounsfield units and needs a DICOM; "
            f"for a {fmt.upper()} pass an explicit (center, width) in pixel values"
        )
    return _read_pillow(data, fmt, label=label, limits=limits, window=explicit_window, use_clahe=clahe, reduce_to=reduce_to)


# -- Pillow formats ------------------------------------------------------------------------------


def _read_pillow(
    data: bytes | Path,
    fmt: str,
    *,
    label: str,
    limits: ImageLimits,
    window: tuple[float, float] | None,
    use_clahe: bool,
    reduce_to: int | None = None,
) -> LoadedImage:
    with library_messages() as said:
        try:
            return _decode_pillow(data, fmt, label, limits, window, use_clahe, reduce_to)
        finally:
            for message in said:
                _logger.debug("%s: %s said: %s", label, message.source, message.safe)


def _decode_pillow(
    data: bytes | Path, fmt: str, label: str, limits: ImageLimits, window: tuple[float, float] | None, use_clahe: bool,
    reduce_to: int | None,
) -> LoadedImage:
    from PIL import Image

    fp: Any = data if isinstance(data, Path) else io.BytesIO(data)
    size = data.stat().st_size if isinstance(data, Path) else len(data)
    try:
        im = Image.open(fp)  # reads the header only
    except Image.DecompressionBombError:
        raise BadInputError(
            f"{label}: the {fmt.upper()} header claims more pixels than Pillow allows "
            f"(over {2 * (Image.MAX_IMAGE_PIXELS or 0):,}); refusing to decode it"
        ) from None
    except Exception as exc:  # noqa: BLE001 - Pillow's plug-ins raise many types for damaged headers
        raise BadInputError(_header_error(label, fmt, size, exc)) from None
    with im:
        width, height = im.size
        try:
            frames = int(getattr(im, "n_frames", 1) or 1)  # TIFF and GIF walk their frame headers here
        except Exception as exc:  # noqa: BLE001
            raise BadInputError(_header_error(label, fmt, size, exc)) from None
        if width <= 0 or height <= 0:
            raise BadInputError(f"{label}: the {fmt.upper()} image is empty ({width}×{height} pixels)")
        if width * height > limits.max_pixels:
            raise BadInputError(
                f"{label}: {width}×{height} = {width * height:,} pixels is over the limit of {limits.max_pixels:,}; "
                f"raise MEDZERO_MAX_IMAGE_PIXELS if this image is expected"
            )
        try:
            decoded_w, decoded_h = _decode_smaller(im, fmt, reduce_to)
            factor = reduction_factor(decoded_h, decoded_w, reduce_to)
            mode = im.mode
            channels = 1 if mode in _EIGHT_BIT_GRAY or mode in _HIGH_BIT_GRAY else 3
            converts = mode not in ("RGB", *_HIGH_BIT_GRAY) and mode not in _REDUCE_FIRST
            codec = decoded_w * decoded_h * (_pil_bytes(mode) + (4 if converts else 0))
            kept = (decoded_w // factor) * (decoded_h // factor)
            limits.check_decoded(label, f"this {width}×{height} {fmt.upper()}", decoded_bytes(codec, kept, channels))
            im.load()
            metadata: dict[str, Any] = {"format": fmt, "width": width, "height": height, "mode": mode}
            if (decoded_w, decoded_h) != (width, height) or factor > 1:  # the size decoded at, before any averaging
                metadata["decoded_size"] = [decoded_w, decoded_h]
            if frames > 1:
                metadata["frames"] = frames
                metadata["frame_index"] = 0
            if mode in _HIGH_BIT_GRAY:
                values = block_mean(np.asarray(im), factor) if factor > 1 else np.asarray(im)
                metadata["bits"] = 32 if mode in ("I", "F") else 16
                pixels = finish_gray(values, window=window, use_clahe=use_clahe, metadata=metadata)
                metadata["scaling"] = "window" if window is not None else "min-max"
                return LoadedImage(pixels, metadata, label, fmt)
            small = im.reduce(factor) if factor > 1 and mode in _REDUCE_FIRST else im
            rgb = small.convert("RGB")
            if factor > 1 and mode not in _REDUCE_FIRST:
                rgb = rgb.reduce(factor)
            gray = mode in _EIGHT_BIT_GRAY
        except BadInputError:
            raise
        except Exception as exc:  # noqa: BLE001 - OSError for truncated data, and whatever a damaged file raises
            raise BadInputError(
                f"{label}: cannot decode the {fmt.upper()} pixels ({scrub(exc)}); the file looks truncated or damaged"
            ) from None
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
        pixels = values.astype(np.float32)
        pixels /= np.float32(255.0)
        metadata["window"] = None
    metadata["scaling"] = "window" if metadata["window"] else "divide-255"
    if use_clahe:
        pixels = clahe(pixels)
    metadata["clahe"] = bool(use_clahe)
    keep = rgb if metadata["window"] is None and not use_clahe else None
    return LoadedImage(pixels, metadata, label, fmt, pil=keep)


def _decode_smaller(im: Any, fmt: str, reduce_to: int | None) -> tuple[int, int]:
    """Ask the codec for a smaller picture when it can make one (both sides staying at least
    ``reduce_to``): JPEG by DCT scaling (1/2, 1/4, 1/8), JPEG 2000 by discarding resolution levels.
    Returns the size the codec will decode to."""
    fit = min(im.size) // reduce_to if reduce_to else 0
    if fit >= 2 and fmt == "jpeg":
        im.draft(im.mode, (reduce_to, reduce_to))  # sets im.size to the reduced size
    elif fit >= 4 and fmt == "jpeg2000" and isinstance(getattr(type(im), "reduce", None), property):
        levels = min(int(math.log2(fit)) - 1, 5)  # one level fewer: block averages ring less than the wavelet
        im.reduce = levels
        power = 1 << levels  # the size Pillow's load() will give (Jpeg2KImageFile.load)
        return int((im.size[0] + (power >> 1)) / power), int((im.size[1] + (power >> 1)) / power)
    return im.size


def _pil_bytes(mode: str) -> int:
    """Bytes per pixel Pillow stores for ``mode``."""
    if mode in ("1", "L", "P"):
        return 1
    if mode.startswith("I;16"):
        return 2
    return 4


def _header_error(label: str, fmt: str, size: int, exc: BaseException) -> str:
    from PIL import UnidentifiedImageError

    if fmt == "tiff" and size <= 132:
        return (
            f"{label}: only {size} bytes: too short for a TIFF image, and the start of a DICOM file's 128-byte "
            f"preamble looks like this too; the file is truncated or damaged"
        )
    if isinstance(exc, UnidentifiedImageError):
        return f"{label}: Pillow cannot read the {fmt.upper()} header; the file may be damaged"
    return f"{label}: cannot read the {fmt.upper()} header ({scrub(exc)}); the file may be damaged"


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
