"""Heatmap overlays as DICOM Secondary Capture images, for PACS viewers that cannot show an SR.

:func:`build_sc` turns one label's overlay of one image (:func:`medzero.explanation_overlays`: the
image in grey, the heatmap in colour, the label, score and method in a caption band) into an RGB
Secondary Capture (highdicom ``SCImage``) of the source image's study, in a new series of its own:

- the warning is burned into the pixels as a second band (``RESEARCH USE ONLY - NOT FOR DIAGNOSIS``),
  ``BurnedInAnnotation`` is ``YES``, and the series description and image comments say it too;
- ``DerivationDescription`` names the method, the label and the model; the source image is
  referenced (``SourceImageSequence``);
- the patient and study modules are copied from the source (highdicom), so the PACS files it with
  the study: that is PHI going back to the PACS it came from, and it is never logged.

The listener (``medzero listen --explain``) sends them where it sends the SR, with
:func:`medzero.pacs.sr.send_sr` (C-STORE or STOW-RS).
"""
from __future__ import annotations

import io
import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.errors import BadInputError
from . import require_pacs
from .sr import DISCLAIMER, _lo

if TYPE_CHECKING:  # pragma: no cover
    from pydicom.dataset import Dataset

__all__ = ["build_sc", "SC_SERIES_DESCRIPTION", "SC_SERIES_NUMBER", "WARNING_BAND"]

_logger = logging.getLogger(__name__)

SC_SERIES_DESCRIPTION = "medzero heatmaps - NOT FOR DIAGNOSIS"
SC_SERIES_NUMBER = 9902
#: Burned into every picture, under the caption.
WARNING_BAND = "RESEARCH USE ONLY - NOT FOR DIAGNOSIS"


def build_sc(
    overlay_png: bytes,
    source: "Dataset",
    *,
    label: str,
    method: str,
    model: str,
    series_instance_uid: str | None = None,
    series_number: int = SC_SERIES_NUMBER,
    instance_number: int = 1,
    manufacturer: str = "medzero",
) -> "Dataset":
    """A Secondary Capture of ``overlay_png`` (one label's overlay of ``source``) in ``source``'s study.

    ``source`` needs its UIDs and patient/study modules, not its pixels. Images of one study
    share ``series_instance_uid`` (a new series; one is made when ``None``).
    """
    require_pacs("highdicom")
    import highdicom as hd
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    for keyword in ("StudyInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        if not str(source.get(keyword, "") or "").strip():
            raise BadInputError(f"the source image has no {keyword}: no Secondary Capture")
    pixels = _with_warning(overlay_png)
    orientation = _orientation(source)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=pixels,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=series_instance_uid or generate_uid(),
        series_number=series_number,
        sop_instance_uid=generate_uid(),
        instance_number=instance_number,
        manufacturer=manufacturer,
        patient_orientation=orientation or ("L", "F"),  # emptied below when the source has none
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )
    if orientation is None:
        sc.PatientOrientation = ""  # type 2: unknown; a derived picture does not claim one
    sc.SeriesDescription = SC_SERIES_DESCRIPTION
    sc.BurnedInAnnotation = "YES"
    sc.ImageComments = _lo(f"{DISCLAIMER}", 10240)
    sc.DerivationDescription = _lo(f"medzero {method} heatmap of '{label}'; model {model}", 1024)
    sc.ImageType = ["DERIVED", "SECONDARY", "HEATMAP"]
    from pydicom.dataset import Dataset as _Dataset

    reference = _Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    sc.SourceImageSequence = [reference]
    return sc


def _orientation(source: "Dataset") -> tuple[str, str] | None:
    """The source's Patient Orientation when it has a valid one (the overlay keeps the image's layout)."""
    import highdicom as hd

    values = list(source.get("PatientOrientation", None) or [])
    if len(values) != 2:
        return None
    try:
        return tuple(hd.PatientOrientationValuesBiped(str(v)).value for v in values)  # type: ignore[return-value]
    except ValueError:
        return None


def _with_warning(png: bytes) -> np.ndarray:
    """(rows, cols, 3) uint8: the overlay with a warning band burned in below it."""
    from PIL import Image, ImageDraw, ImageFont

    with Image.open(io.BytesIO(png)) as opened:
        picture = opened.convert("RGB")
    band = max(16, picture.size[1] // 18)
    canvas = Image.new("RGB", (picture.size[0], picture.size[1] + band), (120, 0, 0))
    canvas.paste(picture, (0, 0))
    try:
        font = ImageFont.load_default(size=max(9, int(band * 0.6)))
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    ImageDraw.Draw(canvas).text((4, picture.size[1] + band * 0.15), WARNING_BAND, fill=(255, 255, 255), font=font)
    return np.asarray(canvas, dtype=np.uint8)


def sc_items(result: Any, pictures: dict[str, bytes], *, top: int = 3) -> list[tuple[str, bytes]]:
    """The labels worth a picture: the ``top`` highest-scoring labels that have an overlay, best first."""
    ranked = sorted((label for label in pictures), key=lambda label: -float(result.scores.get(label, 0.0)))
    return [(label, pictures[label]) for label in ranked[: max(0, int(top))]]
