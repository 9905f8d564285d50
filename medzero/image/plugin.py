"""The image modality as core sees it: one :class:`~medzero.core.modality.Modality` row."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..core.ingest import Prepared, Source
from ..core.modality import Modality, register_modality
from .pixels import ImageLimits

__all__ = ["IMAGE"]


def _prepare(source: Source, encoder, limits) -> Prepared:
    from .io import read_image

    image = read_image(source.data, limits=limits, name=source.name, fmt=source.format)
    height, width = image.pixels.shape[:2]
    return Prepared(
        source,
        item=image,
        metadata=dict(image.metadata),
        columns={"width": int(width), "height": int(height)},
    )


def _accepts_array(obj: Any) -> bool:
    # H×W grayscale or H×W×3/4 colour.
    return isinstance(obj, np.ndarray) and (obj.ndim == 2 or (obj.ndim == 3 and obj.shape[-1] in (3, 4)))


IMAGE = register_modality(
    Modality(
        name="image",
        noun="an image",
        word="an image",
        formats=("dicom", "png", "jpeg", "tiff", "jpeg2000", "gif", "webp", "heif", "avif"),
        format_words=("DICOM", "PNG", "JPEG", "TIFF"),
        prepare=_prepare,
        limits=ImageLimits.from_env,
        accepts_array=_accepts_array,
        default_task="chest_xray_findings",
        default_template="a photo of {}.",
        default_negative="something else",
    )
)
