"""Images: loading (DICOM, PNG, JPEG, TIFF, arrays) and the open_clip encoder.

Importing this package registers the ``open_clip`` model family and its named models
(``biomedclip``, ``vit-b-16-openai``); torch and open_clip themselves load only when a model does.
"""
from __future__ import annotations

from . import clip  # noqa: F401  (registers the open_clip family and named models)
from .io import WINDOW_PRESETS, ImageLimits, LoadedImage, read_image

__all__ = ["read_image", "LoadedImage", "ImageLimits", "WINDOW_PRESETS"]
