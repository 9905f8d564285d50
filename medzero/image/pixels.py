"""Pixels as medzero holds them: :class:`LoadedImage`, size limits, windows and value mapping.

Shared by the loaders (:mod:`medzero.image.io` for Pillow formats and arrays,
:mod:`medzero.image.dicom` for DICOM), which import from here and never from each other's
internals.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Union

import numpy as np

from ..core.errors import BadInputError

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image as PILImage

__all__ = [
    "LoadedImage", "ImageLimits", "WINDOW_PRESETS", "Window", "resolve_window", "window_to_unit",
    "minmax_to_unit", "clahe", "finish_gray",
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
