"""Images: loading (DICOM, PNG, JPEG, TIFF, arrays) and the open_clip encoder.

Importing this package registers the ``image`` modality (:mod:`.plugin`) and the ``open_clip``
model family with its named models (``biomedclip``, ``vit-b-16-openai``); torch and open_clip
themselves load only when a model does.
"""
from __future__ import annotations

from . import clip  # noqa: F401  (registers the open_clip family and named models)
from .io import read_image
from .pixels import WINDOW_PRESETS, ImageLimits, LoadedImage
from .plugin import IMAGE

__all__ = ["IMAGE", "read_image", "LoadedImage", "ImageLimits", "WINDOW_PRESETS"]
