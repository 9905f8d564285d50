"""DICOM pixels and PHI-safe tags, through pydicom 3.

Pixel pipeline, in the order the DICOM standard gives (PS3.4 N.2):

1. decode one frame (the middle one of a multi-frame object) with pydicom's decoder registry,
   which converts YBR colour to RGB by default; compressed transfer syntaxes decode through
   pylibjpeg (JPEG, JPEG-LS, JPEG 2000, HTJ2K), Pillow or pydicom's own RLE decoder;
2. Modality LUT (Rescale Slope/Intercept or a Modality LUT Sequence) into modality units;
3. VOI: an explicit ``window`` (preset or (center, width), in modality units) if one was given,
   else the file's VOI LUT Sequence or first Window Center/Width (pydicom's ``apply_voi_lut``),
   else min–max of the frame's modality values;
4. scale to [0, 1] (float32) by the VOI output range;
5. MONOCHROME1: ``1.0 - x``, so a MONOCHROME1 file and its MONOCHROME2 twin are exact inverses;
6. optional CLAHE.

Colour images (RGB, YBR_*, PALETTE COLOR) are scaled by their bit depth and not windowed.

Only an allow-list of non-identifying attributes leaves this module (:data:`METADATA_TAGS`):
names, IDs, dates, accession numbers, institutions and free text never do.
"""
from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import BadInputError, one_line
from .pixels import WINDOW_PRESETS, ImageLimits, LoadedImage, clahe, minmax_to_unit, resolve_window, window_to_unit

__all__ = ["read_dicom", "METADATA_TAGS"]

_logger = logging.getLogger(__name__)

#: DICOM keyword -> metadata key (the keyword itself, as users filter on it). Nothing else is copied out.
METADATA_TAGS: dict[str, str] = {
    "Modality": "Modality",
    "BodyPartExamined": "BodyPartExamined",
    "ViewPosition": "ViewPosition",
    "PhotometricInterpretation": "PhotometricInterpretation",
    "Rows": "Rows",
    "Columns": "Columns",
    "BitsStored": "BitsStored",
    "PixelSpacing": "PixelSpacing",
    "Manufacturer": "Manufacturer",
}
#: Every key :func:`read_dicom` may put in ``metadata``.
METADATA_KEYS = frozenset(
    {*METADATA_TAGS.values(), "format", "transfer_syntax_uid", "transfer_syntax", "frames", "frame_index", "window", "rescale", "clahe"}
)

_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
# Attributes the modality and VOI LUT steps read; copied into a small per-frame data set.
_LUT_KEYWORDS = (
    "PhotometricInterpretation", "BitsStored", "BitsAllocated", "PixelRepresentation", "RescaleSlope",
    "RescaleIntercept", "RescaleType", "ModalityLUTSequence", "WindowCenter", "WindowWidth", "VOILUTFunction",
    "VOILUTSequence",
)


def read_dicom(
    data: bytes | Path,
    *,
    label: str,
    limits: ImageLimits,
    window: str | tuple[float, float] | None = None,
    use_clahe: bool = False,
) -> LoadedImage:
    import pydicom
    from pydicom.pixels import get_decoder

    explicit = resolve_window(window)
    fp: Any = data if isinstance(data, Path) else io.BytesIO(data)
    try:
        ds = pydicom.dcmread(fp, force=True)
    except Exception as exc:  # pydicom raises many types for damaged files
        raise BadInputError(f"{label}: cannot parse the DICOM data set ({one_line(exc)}); the file looks truncated or damaged") from None

    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        sop = _sop_class_name(ds)
        if "Image" in sop or "Rows" in ds:
            raise BadInputError(f"{label}: the DICOM file has no pixel data although it is a {sop or 'image'}; the file looks truncated, copy it again")
        raise BadInputError(f"{label}: the DICOM file has no pixel data{f' (it is a {sop})' if sop else ''}; pass an image DICOM")
    uid = _transfer_syntax(ds)
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        raise BadInputError(
            f"{label}: no pixel decoder exists for transfer syntax {uid} ({uid.name}); "
            f"convert the file to an uncompressed transfer syntax (e.g. gdcmconv --raw or dcmdjpeg) first"
        ) from None
    if not decoder.is_available:
        needs = "; ".join(decoder.missing_dependencies) or "a pydicom pixel-data plugin"
        raise BadInputError(
            f"{label}: transfer syntax {uid} ({uid.name}) has no decoder installed; install one of: {needs}"
        )

    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
    except (AttributeError, TypeError, ValueError) as exc:
        raise BadInputError(f"{label}: the DICOM image header is incomplete ({one_line(exc)}); Rows and Columns are required") from None
    if rows <= 0 or columns <= 0 or frames <= 0:
        raise BadInputError(f"{label}: the DICOM image is empty ({rows} rows × {columns} columns × {frames} frames)")
    if rows * columns * frames > limits.max_pixels:
        raise BadInputError(
            f"{label}: {rows}×{columns}×{frames} frames = {rows * columns * frames:,} pixels is over the limit of "
            f"{limits.max_pixels:,}; raise MEDZERO_MAX_IMAGE_PIXELS if this image is expected"
        )

    index = frames // 2
    try:
        from pydicom.pixels import pixel_array

        arr = pixel_array(ds, index=index if frames > 1 else None)
    except Exception as exc:  # decoder plugins raise ValueError, RuntimeError, OSError, ...
        message = one_line(exc)
        if "less than expected" in message or "truncat" in message.lower() or "insufficient" in message.lower():
            raise BadInputError(f"{label}: the DICOM pixel data is incomplete ({message}); the file looks truncated, copy it again") from None
        raise BadInputError(f"{label}: cannot decode the DICOM pixels with {uid.name} ({message})") from None
    if arr.ndim == 3 and samples == 1 and arr.shape[0] == 1:  # a single-frame object coded as multi-frame
        arr = arr[0]
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    metadata = _safe_metadata(ds, uid)
    metadata.update(frames=frames, frame_index=index)

    if photometric in _MONOCHROME and samples == 1:
        pixels = _grayscale(arr, _frame_view(ds, index), photometric, explicit, window, metadata, label)
    else:
        pixels = _colour(arr, ds, photometric, metadata, label)
        metadata["window"] = None
        if explicit is not None:
            _logger.info("%s: window ignored for a %s image", label, photometric)
    if use_clahe:
        pixels = clahe(pixels)
    metadata["clahe"] = bool(use_clahe)
    return LoadedImage(np.ascontiguousarray(pixels, dtype=np.float32), metadata, label, "dicom")


# -- pixel steps ---------------------------------------------------------------------------------


def _grayscale(
    arr: np.ndarray,
    view: Any,
    photometric: str,
    explicit: tuple[float, float] | None,
    window: Any,
    metadata: dict[str, Any],
    label: str,
) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        values = apply_modality_lut(arr, view)
    except Exception as exc:
        raise BadInputError(f"{label}: the DICOM Modality LUT cannot be applied ({one_line(exc)})") from None
    if "RescaleSlope" in view and "RescaleIntercept" in view:
        metadata["rescale"] = {"slope": float(view.RescaleSlope), "intercept": float(view.RescaleIntercept)}
    if explicit is not None:
        pixels = window_to_unit(values, *explicit)
        source = f"preset:{window.strip().lower()}" if isinstance(window, str) and window.strip().lower() in WINDOW_PRESETS else "explicit"
        metadata["window"] = {"source": source, "center": explicit[0], "width": explicit[1]}
    elif view.get("VOILUTSequence") or (view.get("WindowCenter") is not None and view.get("WindowWidth") is not None):
        try:
            out_low, out_high = _voi_output_range(view, values)
            voi = apply_voi_lut(values if view.get("VOILUTSequence") is None else _as_lut_input(values), view, prefer_lut=True)
        except Exception as exc:
            raise BadInputError(f"{label}: the DICOM window (VOI LUT) is invalid ({one_line(exc)}); pass window=(center, width)") from None
        pixels = np.clip((np.asarray(voi, dtype=np.float64) - out_low) / max(out_high - out_low, 1e-12), 0.0, 1.0).astype(np.float32)
        if view.get("VOILUTSequence"):
            metadata["window"] = {"source": "voi_lut"}
        else:
            center, width = _first(view.WindowCenter), _first(view.WindowWidth)
            metadata["window"] = {
                "source": "file",
                "center": center,
                "width": width,
                "function": str(view.get("VOILUTFunction", "LINEAR") or "LINEAR").upper(),
            }
    else:
        pixels, low, high = minmax_to_unit(values)
        metadata["window"] = {"source": "min-max", "low": low, "high": high}
    if photometric == "MONOCHROME1":
        pixels = np.float32(1.0) - pixels
    metadata["window"]["inverted"] = photometric == "MONOCHROME1"
    return pixels


def _voi_output_range(view: Any, values: np.ndarray) -> tuple[float, float]:
    """The output range of the VOI step, as pydicom's ``apply_windowing`` / ``apply_voi`` produce it."""
    if view.get("VOILUTSequence"):
        item = view.VOILUTSequence[0]
        lut = np.asarray(item.LUTData if not isinstance(item.LUTData, bytes) else np.frombuffer(item.LUTData, "<u2"))
        return float(lut.min()), float(lut.max())
    bits = int(view.get("BitsStored", 16) or 16)
    if view.get("ModalityLUTSequence"):
        low, high = 0.0, float(2 ** int(view.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    elif int(view.get("PixelRepresentation", 0) or 0) == 0:
        low, high = 0.0, float(2**bits - 1)
    else:
        low, high = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    if "RescaleSlope" in view and "RescaleIntercept" in view:
        slope, intercept = float(view.RescaleSlope), float(view.RescaleIntercept)
        low, high = low * slope + intercept, high * slope + intercept
    return low, high


def _as_lut_input(values: np.ndarray) -> np.ndarray:
    # A VOI LUT indexes by integer value; after a float rescale the values are whole numbers anyway.
    return np.rint(values).astype(np.int64) if not np.issubdtype(values.dtype, np.integer) else values


def _colour(arr: np.ndarray, ds: Any, photometric: str, metadata: dict[str, Any], label: str) -> np.ndarray:
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        try:
            rgb = apply_color_lut(arr, ds)
        except Exception as exc:
            raise BadInputError(f"{label}: the DICOM palette cannot be applied ({one_line(exc)})") from None
        depth = int(ds.RedPaletteColorLookupTableDescriptor[2])
        return (rgb.astype(np.float32) / np.float32(2**depth - 1)).clip(0.0, 1.0)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise BadInputError(f"{label}: {photometric} DICOM pixels have an unexpected shape {arr.shape}")
    bits = int(ds.get("BitsStored", 8) or 8)
    if bits <= 16 and np.issubdtype(arr.dtype, np.integer):
        return (arr.astype(np.float32) / np.float32(2**bits - 1)).clip(0.0, 1.0)
    pixels, _, _ = minmax_to_unit(arr)  # 32-bit colour: no sensible fixed range
    return pixels


def _frame_view(ds: Any, index: int) -> Any:
    """A small data set with the LUT attributes that apply to frame ``index``.

    Enhanced multi-frame objects keep rescale and window values in functional groups rather than
    at the top level; pydicom's LUT functions read only the top level.
    """
    from pydicom.dataset import Dataset

    view = Dataset()
    if hasattr(ds, "file_meta"):
        view.file_meta = ds.file_meta
    view.set_original_encoding(*ds.original_encoding)
    for keyword in _LUT_KEYWORDS:
        if keyword in ds:
            setattr(view, keyword, ds[keyword].value)
    groups = []
    for seq_name in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
        seq = ds.get(seq_name)
        if seq:
            item = seq[index] if seq_name.startswith("PerFrame") and index < len(seq) else seq[0]
            groups.append(item)
    for item in groups:
        transform = item.get("PixelValueTransformationSequence")
        if transform and "RescaleSlope" not in view:
            for keyword in ("RescaleSlope", "RescaleIntercept"):
                if keyword in transform[0]:
                    setattr(view, keyword, transform[0][keyword].value)
        voi = item.get("FrameVOILUTSequence")
        if voi and "WindowCenter" not in view:
            for keyword in ("WindowCenter", "WindowWidth", "VOILUTFunction"):
                if keyword in voi[0]:
                    setattr(view, keyword, voi[0][keyword].value)
    return view


# -- tags ----------------------------------------------------------------------------------------


def _transfer_syntax(ds: Any) -> Any:
    """The data set's transfer syntax; for files without one, what the parser found."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, UID

    meta = getattr(ds, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    if uid:
        return UID(str(uid))
    implicit, little = ds.original_encoding
    uid = ImplicitVRLittleEndian if implicit else (ExplicitVRLittleEndian if little is not False else ExplicitVRBigEndian)
    if meta is None:
        ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = uid
    return uid


def _safe_metadata(ds: Any, uid: Any) -> dict[str, Any]:
    metadata: dict[str, Any] = {"format": "dicom", "transfer_syntax_uid": str(uid), "transfer_syntax": uid.name}
    for keyword, key in METADATA_TAGS.items():
        try:
            value = ds.get(keyword)
        except Exception:  # an unparsable value is left out rather than failing the image
            continue
        if value is None or value == "":
            continue
        if keyword == "PixelSpacing":
            try:
                metadata[key] = [float(v) for v in (value if isinstance(value, (list, tuple)) or hasattr(value, "__iter__") else [value])]
            except (TypeError, ValueError):
                continue
        elif keyword in ("Rows", "Columns", "BitsStored"):
            metadata[key] = int(value)
        else:
            metadata[key] = str(value).strip()[:64]
    return metadata


def _sop_class_name(ds: Any) -> str:
    try:
        uid = ds.get("SOPClassUID") or getattr(ds, "file_meta", {}).get("MediaStorageSOPClassUID")
        return uid.name if uid else ""
    except Exception:
        return ""


def _first(value: Any) -> float:
    try:
        return float(value[0]) if hasattr(value, "__len__") and not isinstance(value, str) else float(value)
    except (TypeError, ValueError, IndexError):
        return float("nan")
