"""DICOM pixels and PHI-safe tags, through pydicom 3.

Pixel pipeline, in the order the DICOM standard gives (PS3.4 N.2):

1. check before decoding: a data set is there (not a file cut after its meta information), it has
   pixel data (else: cut short, saved without pixels, or not an image at all, each said as such),
   its Transfer Syntax UID is a UID, the header's size fits the pixel limits and, in decoded bytes
   with the float copies, ``ImageLimits.max_decoded_bytes``; native pixel data at least twice what
   the header describes means a damaged Rows/Columns/Number of Frames; a compressed frame must be
   complete (a JPEG ends with its EOI marker, a JPEG 2000 codestream with EOC, RLE segment offsets
   lie inside the frame), so that a cut frame is never decoded half grey;
2. decode one frame (the middle one of a multi-frame object, always by index) with pydicom's
   decoder registry, which converts YBR colour to RGB by default; compressed transfer syntaxes
   decode through pylibjpeg (JPEG, JPEG-LS, JPEG 2000, HTJ2K), Pillow or pydicom's own RLE
   decoder. With ``reduce_to`` (the model path asks for twice its input side) a large grayscale
   JPEG is decoded at 1/2, 1/4 or 1/8 by Pillow's DCT scaling and a JPEG 2000 with resolution
   levels discarded, and any frame is then averaged in blocks down to about ``reduce_to``;
3. Modality LUT (Rescale Slope/Intercept or a Modality LUT Sequence) into modality units;
4. VOI: an explicit ``window`` (preset or (center, width), in modality units) if one was given,
   else the file's VOI LUT Sequence or first Window Center/Width (LINEAR, LINEAR_EXACT or
   SIGMOID, PS3.3 C.11.2.1.2), else min–max of the frame's modality values;
5. scale to [0, 1] by the VOI output range; steps 3–5 run in place on one float32 array;
6. MONOCHROME1: ``1.0 - x``, so a MONOCHROME1 file and its MONOCHROME2 twin are exact inverses;
7. optional CLAHE.

Colour images (RGB, YBR_*, PALETTE COLOR) are scaled by their bit depth and not windowed.

Only an allow-list of non-identifying attributes leaves this module (:data:`METADATA_TAGS`), and
only values well formed for their VR: names, IDs, dates, accession numbers, institutions and free
text never do. Every warning and log record of pydicom and its plug-ins is kept out of the logs
while a file is read (their text quotes element values), and no library text reaches an error
message without its quoted values taken out (:func:`medzero.image.pixels.scrub`).
"""
from __future__ import annotations

import io
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import BadInputError
from .pixels import (
    WINDOW_PRESETS,
    ImageLimits,
    LibraryMessage,
    LoadedImage,
    block_mean,
    clahe,
    decoded_bytes,
    library_messages,
    minmax_to_unit,
    reduction_factor,
    resolve_window,
    scrub,
)

__all__ = ["read_dicom", "METADATA_TAGS", "check_encapsulated_frames"]

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
    {*METADATA_TAGS.values(), "format", "transfer_syntax_uid", "transfer_syntax", "frames", "frame_index", "window",
     "rescale", "clahe", "decoded_size"}
)

_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
# Attributes the modality and VOI LUT steps read; copied into a small per-frame data set.
_LUT_KEYWORDS = (
    "PhotometricInterpretation", "BitsStored", "BitsAllocated", "PixelRepresentation", "RescaleSlope",
    "RescaleIntercept", "RescaleType", "ModalityLUTSequence", "WindowCenter", "WindowWidth", "VOILUTFunction",
    "VOILUTSequence",
)

#: Transfer syntaxes whose frames are JPEG or JPEG-LS streams (SOI ... EOI).
_JPEG_FAMILY = frozenset({
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81",
})
#: Transfer syntaxes whose frames are JPEG 2000 / HTJ2K codestreams (SOC ... EOC).
_J2K_FAMILY = frozenset({
    "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202",
    "1.2.840.10008.1.2.4.203",
})
_RLE = "1.2.840.10008.1.2.5"
#: JPEG baseline and extended, which Pillow decodes at 1/2, 1/4 or 1/8 size by DCT scaling.
_DRAFT_SYNTAXES = frozenset({"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51"})
#: JPEG 2000, which Pillow's OpenJPEG decoder decodes with resolution levels discarded.
_REDUCE_SYNTAXES = frozenset({"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"})
_JP2_SIGNATURE = bytes.fromhex("0000000c6a5020200d0a870a")
#: A decoder warning with these words means the frame ended before its image did.
_PREMATURE = re.compile(r"premature|truncat|\binsufficient\b|end of (file|data|stream)", re.IGNORECASE)

_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
_CODE_STRING = re.compile(r"[A-Z0-9 _]{1,16}")
_PHOTOMETRIC = frozenset({
    "MONOCHROME1", "MONOCHROME2", "RGB", "PALETTE COLOR", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT",
    "YBR_PARTIAL_420", "YBR_PARTIAL_422",
})


def read_dicom(
    data: bytes | Path,
    *,
    label: str,
    limits: ImageLimits,
    window: str | tuple[float, float] | None = None,
    use_clahe: bool = False,
    reduce_to: int | None = None,
) -> LoadedImage:
    """Decode one frame of a DICOM file (the middle one of a multi-frame object) to [0, 1] pixels.

    ``reduce_to``: when given, the frame may be decoded smaller, both sides staying at least this
    many pixels (JPEG by DCT scaling, JPEG 2000 by resolution level, anything else by averaging
    blocks of the decoded frame). Every warning and log record pydicom and its plug-ins emit while
    this runs is kept out of the logs (see :func:`medzero.image.pixels.library_messages`) and
    logged at DEBUG with what it quotes from the file left out.
    """
    explicit = resolve_window(window)
    with library_messages() as said:
        try:
            return _read(data, label, limits, window, explicit, use_clahe, reduce_to, said)
        except BadInputError:
            raise
        except Exception as exc:  # noqa: BLE001 - pydicom converts elements lazily: a damaged one fails where it is read
            raise BadInputError(f"{label}: the DICOM data set is damaged ({type(exc).__name__}: {scrub(exc)})") from None
        finally:
            for message in said:
                _logger.debug("%s: %s said: %s", label, message.source, message.safe)


def _read(
    data: bytes | Path,
    label: str,
    limits: ImageLimits,
    window: Any,
    explicit: tuple[float, float] | None,
    use_clahe: bool,
    reduce_to: int | None,
    said: list[LibraryMessage],
) -> LoadedImage:
    ds, size = _parse(data, label)
    _require_pixels(ds, size, label, said)
    uid = _transfer_syntax(ds, label)
    _require_decoder(uid, label)
    geometry = _Geometry.of(ds, label, limits)
    index = geometry.frames // 2
    photometric = _photometric(ds, geometry.samples, label)
    frame = _encoded_frame(ds, index, geometry.frames, label) if uid.is_encapsulated else None
    if frame is not None:
        _check_frame(uid, frame, label, "frame" if geometry.frames == 1 else f"frame {index + 1} of {geometry.frames}")
    if frame is None:
        _check_native_length(ds, geometry, label)
    plan = _plan(uid, ds, geometry, frame, reduce_to)
    what = f"this {geometry.columns}×{geometry.rows} DICOM frame"
    limits.check_decoded(label, what, plan.bytes)

    before = len(said)
    arr = _decode_reduced(ds, frame, plan, geometry, label) if plan.via != "pydicom" and frame is not None else None
    if arr is None:
        if plan.via != "pydicom":  # Pillow read the frame differently from the header: pydicom decodes it, in full
            plan = _plan(uid, ds, geometry, frame, reduce_to, full=True)
            limits.check_decoded(label, what, plan.bytes)
        arr = _decode_full(ds, uid, index, geometry, label)
    for message in said[before:]:
        if _PREMATURE.search(message.text):
            raise BadInputError(
                f"{label}: the DICOM pixel data ends before its image does (the decoder says: {message.safe}); "
                f"the file looks truncated, copy it again"
            )
    metadata = _safe_metadata(ds, uid)
    metadata.update(frames=geometry.frames, frame_index=index)
    if plan.factor > 1 or plan.scale > 1:  # the size the pixels were decoded at, before any averaging
        metadata["decoded_size"] = [int(arr.shape[1]), int(arr.shape[0])]

    if photometric in _MONOCHROME and geometry.samples == 1:
        pixels = _grayscale(arr, _frame_view(ds, index), photometric, explicit, window, metadata, label, plan.factor)
    else:
        pixels = _colour(arr, ds, photometric, metadata, label, plan.factor)
        metadata["window"] = None
        if explicit is not None:
            _logger.info("%s: window ignored for a %s image", label, photometric)
    if use_clahe:
        pixels = clahe(pixels)
    metadata["clahe"] = bool(use_clahe)
    return LoadedImage(np.ascontiguousarray(pixels, dtype=np.float32), metadata, label, "dicom")


# -- parsing and checks ----------------------------------------------------------------------------


def _parse(data: bytes | Path, label: str) -> tuple[Any, int]:
    import pydicom

    size = data.stat().st_size if isinstance(data, Path) else len(data)
    fp: Any = data if isinstance(data, Path) else io.BytesIO(data)
    try:
        ds = pydicom.dcmread(fp, force=True)
    except Exception as exc:  # pydicom raises many types for damaged files
        raise BadInputError(f"{label}: cannot parse the DICOM data set ({scrub(exc)}); the file looks truncated or damaged") from None
    if len(ds) == 0:
        meta = getattr(ds, "file_meta", None)
        if meta is not None and len(meta):
            raise BadInputError(f"{label}: DICOM file ends after its file meta information (no dataset); the file is truncated, copy it again")
        raise BadInputError(f"{label}: DICOM file ends after its preamble (no file meta information, no dataset); the file is truncated, copy it again")
    return ds, size


def _require_pixels(ds: Any, size: int, label: str, said: list[LibraryMessage]) -> None:
    if any(keyword in ds for keyword in _PIXEL_KEYWORDS):
        return
    if _cut_short(ds, size, said):
        raise BadInputError(
            f"{label}: DICOM file is truncated: it ends inside its data set, before any pixel data; copy it again"
        )
    sop = _sop_class_name(ds)
    if "Image" in sop or "Rows" in ds:
        raise BadInputError(
            f"{label}: DICOM has no pixel data (it is a {sop or 'image'} object whose data set ends without "
            f"Pixel Data: it was saved or sent without its pixels); pass the image itself"
        )
    what = f"it is a {sop}, not an image" if sop else "its SOP class names no image: a report, presentation state or the like"
    raise BadInputError(f"{label}: DICOM has no pixel data ({what}); pass an image DICOM")


def _cut_short(ds: Any, size: int, said: list[LibraryMessage]) -> bool:
    """Whether the data set visibly ends early: pydicom met the end of the file inside an element,
    or the last element's value is shorter than its length, or a few bytes of a header follow it."""
    from pydicom.dataelem import RawDataElement

    if any("end of file" in m.text.lower() or "EOFError" in m.text for m in said):
        return True
    tags = list(ds.keys())
    if not tags:
        return False
    last = ds.get_item(max(tags))
    if not isinstance(last, RawDataElement) or not isinstance(last.value, (bytes, bytearray)):
        return False
    if last.length == 0xFFFFFFFF:
        return False
    if len(last.value) < last.length:
        return True
    end = last.value_tell + last.length
    return 0 < size - end < 8  # part of a next element's header


def _transfer_syntax(ds: Any, label: str) -> Any:
    """The data set's transfer syntax (checked to be a UID); for files without one, what the parser found."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, UID

    meta = getattr(ds, "file_meta", None)
    try:
        value = meta.get("TransferSyntaxUID") if meta is not None else None
    except Exception:  # noqa: BLE001 - an unreadable value is a damaged one
        value = "?"
    if value:
        text = str(value).strip("\x00 ")
        if not _UID.fullmatch(text) or len(text) > 64:
            raise BadInputError(
                f"{label}: the DICOM file meta's Transfer Syntax UID is damaged (not a UID: {len(text)} characters); "
                f"the file is damaged, copy it again"
            )
        return UID(text)
    implicit, little = ds.original_encoding
    uid = ImplicitVRLittleEndian if implicit else (ExplicitVRLittleEndian if little is not False else ExplicitVRBigEndian)
    if meta is None:
        ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = uid
    return uid


def _require_decoder(uid: Any, label: str) -> None:
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        raise BadInputError(
            f"{label}: no pixel decoder exists for transfer syntax {uid} ({uid.name}); "
            f"convert the file to an uncompressed transfer syntax (e.g. gdcmconv --raw or dcmdjpeg) first"
        ) from None
    if not decoder.is_available:
        needs = "; ".join(decoder.missing_dependencies) or "a pydicom pixel-data plugin"
        raise BadInputError(f"{label}: transfer syntax {uid} ({uid.name}) has no decoder installed; install one of: {needs}")


@dataclass(frozen=True)
class _Geometry:
    rows: int
    columns: int
    frames: int
    samples: int
    bits_allocated: int
    bits_stored: int

    @classmethod
    def of(cls, ds: Any, label: str, limits: ImageLimits) -> "_Geometry":
        missing = [keyword for keyword in ("Rows", "Columns") if keyword not in ds]
        if missing:
            raise BadInputError(f"{label}: the DICOM image header has no {' or '.join(missing)}; the file is damaged")
        try:
            rows, columns = int(ds.Rows), int(ds.Columns)
            frames = int(ds.get("NumberOfFrames", 1) or 1)
            samples = int(ds.get("SamplesPerPixel", 1) or 1)
            bits_allocated = int(ds.get("BitsAllocated", 16) or 16)
            bits_stored = int(ds.get("BitsStored", bits_allocated) or bits_allocated)
        except Exception as exc:  # noqa: BLE001 - missing, non-numeric or undecodable values
            raise BadInputError(
                f"{label}: the DICOM image header is incomplete or damaged ({scrub(exc)}); Rows and Columns are required"
            ) from None
        if rows <= 0 or columns <= 0 or frames <= 0:
            raise BadInputError(f"{label}: the DICOM image is empty ({rows} rows × {columns} columns × {frames} frames)")
        if rows * columns * frames > limits.max_pixels:
            raise BadInputError(
                f"{label}: {rows}×{columns}×{frames} frames = {rows * columns * frames:,} pixels is over the limit of "
                f"{limits.max_pixels:,}; raise MEDZERO_MAX_IMAGE_PIXELS if this image is expected"
            )
        if samples not in (1, 3):
            raise BadInputError(f"{label}: the DICOM header says {samples} samples per pixel; an image has 1 or 3")
        if bits_allocated not in (1, 8, 16, 32, 64) or not 1 <= bits_stored <= bits_allocated:
            raise BadInputError(
                f"{label}: the DICOM header's bit depths are inconsistent (Bits Allocated {bits_allocated}, Bits Stored {bits_stored})"
            )
        return cls(rows, columns, frames, samples, bits_allocated, bits_stored)


def _photometric(ds: Any, samples: int, label: str) -> str:
    try:
        value = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    except Exception:  # noqa: BLE001 - an unreadable value
        value = ""
    if value in _PHOTOMETRIC:
        return value
    if samples == 1:
        return "MONOCHROME2"  # the only reading of one sample per pixel that pydicom's decoders support
    raise BadInputError(f"{label}: the DICOM Photometric Interpretation is missing or not one DICOM defines; cannot tell the colours")


def check_encapsulated_frames(ds: Any, label: str) -> None:
    """Refuse encapsulated pixel data whose frames are incomplete (see :func:`_check_frame`).

    For the DICOM listener, which answers a C-STORE before anything is decoded.
    """
    from pydicom.uid import UID

    with library_messages():
        meta = getattr(ds, "file_meta", None)
        uid = UID(str(meta.get("TransferSyntaxUID", "") if meta is not None else ""))
        if "PixelData" not in ds or not uid.is_encapsulated:
            return
        try:
            frames = int(ds.get("NumberOfFrames", 1) or 1)
        except Exception:  # noqa: BLE001
            raise BadInputError(f"{label}: the DICOM Number of Frames is damaged") from None
        for index in range(frames):
            frame = _encoded_frame(ds, index, frames, label)
            _check_frame(uid, frame, label, "frame" if frames == 1 else f"frame {index + 1} of {frames}")


def _encoded_frame(ds: Any, index: int, frames: int, label: str) -> bytes:
    from pydicom.encaps import get_frame

    extended = None
    if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
        extended = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
    try:
        return bytes(get_frame(ds.PixelData, index, extended_offsets=extended, number_of_frames=frames))
    except Exception as exc:  # noqa: BLE001 - item tags, lengths and offset tables of damaged data
        raise BadInputError(
            f"{label}: the DICOM's encapsulated pixel data is damaged or cut short ({scrub(exc)}); copy the file again"
        ) from None


def _check_frame(uid: Any, frame: bytes, label: str, which: str) -> None:
    """Refuse a compressed frame that is visibly incomplete, before a decoder fills its missing part
    with grey: a JPEG without its end-of-image marker, a JPEG 2000 codestream without its
    end-of-codestream marker, an RLE frame whose segment offsets point past its end.

    Entropy-coded JPEG and JPEG 2000 data never hold 0xFFD9, so finding it near the end is sound;
    fragments are padded to an even length, and some writers add a few bytes after the marker.
    """
    body = frame.rstrip(b"\x00")
    uid = str(uid)
    if uid in _JPEG_FAMILY:
        if not body.startswith(b"\xff\xd8"):
            raise BadInputError(f"{label}: the DICOM's JPEG {which} does not start with a JPEG start-of-image marker; the pixel data is damaged")
        if b"\xff\xd9" not in body[-16:]:
            raise BadInputError(
                f"{label}: the DICOM's JPEG {which} is incomplete: it ends after {len(body):,} bytes without its "
                f"end-of-image marker, so part of the picture is missing; copy the file again from its source"
            )
    elif uid in _J2K_FAMILY:
        if not (body.startswith(b"\xff\x4f\xff\x51") or body.startswith(_JP2_SIGNATURE)):
            raise BadInputError(f"{label}: the DICOM's JPEG 2000 {which} does not start with a codestream header; the pixel data is damaged")
        if b"\xff\xd9" not in body[-16:]:
            raise BadInputError(
                f"{label}: the DICOM's JPEG 2000 {which} is incomplete: it ends after {len(body):,} bytes without its "
                f"end-of-codestream marker, so part of the picture is missing; copy the file again from its source"
            )
    elif uid == _RLE:
        if len(frame) < 64:
            raise BadInputError(f"{label}: the DICOM's RLE {which} is shorter than its 64-byte header; the pixel data is damaged")
        header = np.frombuffer(frame[:64], dtype="<u4")
        count, offsets = int(header[0]), [int(v) for v in header[1 : 1 + min(int(header[0]), 15)]]
        if not 1 <= count <= 15 or offsets[0] != 64 or any(b <= a for a, b in zip(offsets, offsets[1:])) or offsets[-1] >= len(frame):
            raise BadInputError(
                f"{label}: the DICOM's RLE {which} has a damaged header (segment offsets outside its {len(frame):,} bytes); "
                f"the pixel data is damaged"
            )


# -- decoding --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    """How a frame is decoded: ``via`` "draft" (Pillow's JPEG DCT scaling by ``scale``), "reduce"
    (Pillow's JPEG 2000 decoder, ``scale`` = 2**levels), or "pydicom" (full size); then ``factor``
    (block averaging); ``bytes`` is what that takes (:func:`medzero.image.pixels.decoded_bytes`)."""

    via: str
    scale: int
    factor: int
    bytes: int


def _plan(uid: Any, ds: Any, g: _Geometry, frame: bytes | None, reduce_to: int | None, full: bool = False) -> _Plan:
    via, scale = "pydicom", 1
    if reduce_to and frame is not None and g.samples == 1 and not full:
        fit = min(g.rows, g.columns) // reduce_to
        if str(uid) in _DRAFT_SYNTAXES and g.bits_allocated == 8 and g.bits_stored <= 8 and fit >= 2:
            via, scale = "draft", max(s for s in (1, 2, 4, 8) if s <= fit)
        elif str(uid) in _REDUCE_SYNTAXES and g.bits_allocated <= 16 and fit >= 4:
            # One level fewer than would fit, the last halving by block averages: the wavelet's
            # low-pass rings at sharp edges (up to 68/255 in the model's input at two levels,
            # 21 at one level + 2×2 averages, against a full decode; see tests/test_reduced_decode.py).
            via, scale = "reduce", 2 ** min(int(math.log2(fit)) - 1, 5)
    height, width = math.ceil(g.rows / scale), math.ceil(g.columns / scale)
    itemsize = 1 if g.bits_allocated <= 8 else g.bits_allocated // 8
    channels = 3 if g.samples == 3 or str(ds.get("PhotometricInterpretation", "")).strip() == "PALETTE COLOR" else 1
    codec = height * width * channels * itemsize
    held = len(frame) if frame is not None else g.rows * g.columns * g.samples * itemsize  # the element's own bytes
    factor = reduction_factor(height, width, reduce_to)
    kept = (height // factor) * (width // factor)
    return _Plan(via, scale, factor, decoded_bytes(codec + held, kept, channels))


def _check_native_length(ds: Any, g: _Geometry, label: str) -> None:
    """Refuse native pixel data that holds at least twice what the header describes: Rows, Columns
    or Number of Frames is damaged (CT_small.dcm with Rows = Columns = 1 would read as 16,384 frames)."""
    try:
        held = len(ds.PixelData) if "PixelData" in ds else 0
    except Exception:  # noqa: BLE001 - float pixel data and the like: pydicom checks those
        return
    per_frame = g.rows * g.columns * g.samples * g.bits_allocated // 8 if g.bits_allocated >= 8 else (g.rows * g.columns + 7) // 8
    if str(ds.get("PhotometricInterpretation", "")).strip().upper() == "YBR_FULL_422":
        per_frame = per_frame * 2 // 3
    needed = per_frame * g.frames
    if held >= 2 * needed + 2:
        raise BadInputError(
            f"{label}: the DICOM header describes {g.frames} frame(s) of {g.columns}×{g.rows} pixels ({needed:,} bytes), "
            f"but the pixel data holds {held:,} bytes; Rows, Columns or Number of Frames is damaged"
        )


def _decode_full(ds: Any, uid: Any, index: int, g: _Geometry, label: str) -> np.ndarray:
    from pydicom.pixels import pixel_array

    try:
        # Always one frame, by index: pixel data longer than the header says is never read as more frames.
        arr = pixel_array(ds, index=index)
    except Exception as exc:  # decoder plugins raise ValueError, RuntimeError, OSError, ...
        message = scrub(exc)
        if "less than expected" in message or "truncat" in message.lower() or "insufficient" in message.lower():
            raise BadInputError(f"{label}: the DICOM pixel data is incomplete ({message}); the file looks truncated, copy it again") from None
        raise BadInputError(f"{label}: cannot decode the DICOM pixels with {uid.name} ({message})") from None
    if arr.ndim == 3 and g.samples == 1 and arr.shape[0] == 1:  # a single-frame object coded as multi-frame
        arr = arr[0]
    expected = (g.rows, g.columns) if g.samples == 1 else (g.rows, g.columns, 3)
    if tuple(arr.shape) != expected:
        raise BadInputError(
            f"{label}: the DICOM pixels decode to shape {tuple(arr.shape)}, but the header says {'×'.join(map(str, expected))}; "
            f"the file is damaged"
        )
    return arr


def _decode_reduced(ds: Any, frame: bytes, plan: _Plan, g: _Geometry, label: str) -> np.ndarray | None:
    """A grayscale frame decoded smaller by Pillow, as the integers pydicom would give at that size;
    ``None`` when Pillow reads something other than what the header says (pydicom decides then)."""
    from PIL import Image

    try:
        im = Image.open(io.BytesIO(frame), formats=("JPEG",) if plan.via == "draft" else ("JPEG2000",))
    except Exception:  # noqa: BLE001 - pydicom's own decoders say what is wrong with it
        return None
    if im.size != (g.columns, g.rows):
        return None
    try:
        if plan.via == "draft":
            if im.mode != "L":
                return None
            im.draft("L", (math.ceil(g.columns / plan.scale), math.ceil(g.rows / plan.scale)))
        else:
            im.reduce = int(math.log2(plan.scale))
        im.load()
    except Exception as exc:  # noqa: BLE001 - OSError for truncated or damaged streams, and more
        raise BadInputError(f"{label}: cannot decode the DICOM's compressed frame ({scrub(exc)}); the file looks truncated or damaged") from None
    if im.mode not in ("L", "I;16", "I;16L"):
        return None
    arr = np.asarray(im)
    if plan.via == "reduce":
        arr = _j2k_integers(arr, frame, ds, g)
        if arr is None:
            return None
    return arr


def _j2k_integers(arr: np.ndarray, frame: bytes, ds: Any, g: _Geometry) -> np.ndarray | None:
    """The stored integers pydicom would give for a JPEG 2000 frame that Pillow decoded (Pillow
    scales N-bit samples to 8 or 16 bits, unsigned): its Pillow plug-in's corrections, then its sign
    correction for a codestream whose signedness disagrees with Pixel Representation."""
    from pydicom.pixels.utils import get_j2k_parameters

    params = get_j2k_parameters(frame)
    precision = int(params.get("precision", g.bits_stored))
    if not 0 < precision <= 16:
        return None
    bits = 8 if precision <= 8 else 16
    representation = int(ds.get("PixelRepresentation", 0) or 0)
    j2k_signed = int(bool(params.get("is_signed", representation)))
    out = np.array(arr, dtype=f"u{bits // 8}", copy=True)
    if j2k_signed and representation == 1:
        out = out.view(f"i{bits // 8}")
        out -= np.int32(2 ** (bits - 1))  # level shift back, wrapping: [0, 127, 128, 255] -> [-128, -1, 0, 127]
    shift = bits - precision
    if shift:
        np.right_shift(out, shift, out=out)
    out = out.view(f"i{bits // 8}" if representation == 1 else f"u{bits // 8}")
    if shift and j2k_signed != representation:
        np.left_shift(out, shift, out=out)
        np.right_shift(out, shift, out=out)
    return out


# -- pixel steps -----------------------------------------------------------------------------------


def _grayscale(
    arr: np.ndarray,
    view: Any,
    photometric: str,
    explicit: tuple[float, float] | None,
    window: Any,
    metadata: dict[str, Any],
    label: str,
    factor: int = 1,
) -> np.ndarray:
    """Modality LUT, then VOI, to float32 in [0, 1]: in place on one float32 array."""
    values = _modality(arr, view, metadata, label, factor)
    if explicit is not None:
        pixels = values
        pixels -= np.float32(explicit[0] - explicit[1] / 2.0)
        pixels /= np.float32(explicit[1])
        np.clip(pixels, 0.0, 1.0, out=pixels)
        source = f"preset:{window.strip().lower()}" if isinstance(window, str) and window.strip().lower() in WINDOW_PRESETS else "explicit"
        metadata["window"] = {"source": source, "center": explicit[0], "width": explicit[1]}
    elif view.get("VOILUTSequence"):
        try:
            from pydicom.pixels import apply_voi_lut

            out_low, out_high = _voi_output_range(view, values)
            voi = apply_voi_lut(_as_lut_input(values), view, prefer_lut=True)
        except Exception as exc:  # noqa: BLE001
            raise BadInputError(f"{label}: the DICOM window (VOI LUT) is invalid ({scrub(exc)}); pass window=(center, width)") from None
        pixels = np.asarray(voi, dtype=np.float32)
        pixels -= np.float32(out_low)
        pixels /= np.float32(max(out_high - out_low, 1e-12))
        np.clip(pixels, 0.0, 1.0, out=pixels)
        metadata["window"] = {"source": "voi_lut"}
    elif view.get("WindowCenter") is not None and view.get("WindowWidth") is not None:
        center, width = _first(view.WindowCenter), _first(view.WindowWidth)
        function = _code_string(view.get("VOILUTFunction")) or "LINEAR"
        pixels = _apply_window(values, center, width, function, label)
        metadata["window"] = {"source": "file", "center": center, "width": width, "function": function}
    else:
        pixels, low, high = minmax_to_unit(values)
        metadata["window"] = {"source": "min-max", "low": low, "high": high}
    if photometric == "MONOCHROME1":
        np.subtract(np.float32(1.0), pixels, out=pixels)
    metadata["window"]["inverted"] = photometric == "MONOCHROME1"
    return pixels


def _modality(arr: np.ndarray, view: Any, metadata: dict[str, Any], label: str, factor: int = 1) -> np.ndarray:
    """Stored values to modality units (Modality LUT, else Rescale Slope/Intercept) as a float32 array
    that this function owns, shrunk ``factor`` times by averaging blocks: before a (linear) rescale,
    after a LUT (which indexes stored integers)."""
    try:
        if view.get("ModalityLUTSequence"):
            from pydicom.pixels import apply_modality_lut

            mapped = apply_modality_lut(_as_lut_input(arr), view)
            return block_mean(mapped, factor) if factor > 1 else np.asarray(mapped, dtype=np.float32)
        values = block_mean(arr, factor) if factor > 1 else arr.astype(np.float32)
        if "RescaleSlope" in view and "RescaleIntercept" in view:
            slope, intercept = float(view.RescaleSlope), float(view.RescaleIntercept)
            if not (math.isfinite(slope) and math.isfinite(intercept)):
                raise ValueError("Rescale Slope and Intercept must be finite numbers")
            values *= np.float32(slope)
            values += np.float32(intercept)
            metadata["rescale"] = {"slope": slope, "intercept": intercept}
        return values
    except Exception as exc:  # noqa: BLE001
        raise BadInputError(f"{label}: the DICOM Modality LUT cannot be applied ({scrub(exc)})") from None


def _apply_window(values: np.ndarray, center: float, width: float, function: str, label: str) -> np.ndarray:
    """The file's window (PS3.3 C.11.2.1.2) as [0, 1], in place on ``values`` (float32): the same
    numbers pydicom's ``apply_windowing`` gives divided by its output range, without its float64 copies."""
    if not (math.isfinite(center) and math.isfinite(width)):
        raise BadInputError(f"{label}: the DICOM window (Window Center/Width) is not a number; pass window=(center, width)")
    if function == "LINEAR":
        if width < 1:
            raise BadInputError(f"{label}: the DICOM Window Width {width:g} is under 1, which a LINEAR window needs; pass window=(center, width)")
        center, width = center - 0.5, width - 1.0
        if width == 0:
            return (values > np.float32(center)).astype(np.float32)
        values -= np.float32(center)
        values /= np.float32(width)
        values += np.float32(0.5)
        return np.clip(values, 0.0, 1.0, out=values)
    if width <= 0:
        raise BadInputError(f"{label}: the DICOM Window Width {width:g} is not positive; pass window=(center, width)")
    if function == "LINEAR_EXACT":
        values -= np.float32(center)
        values /= np.float32(width)
        values += np.float32(0.5)
        return np.clip(values, 0.0, 1.0, out=values)
    if function == "SIGMOID":
        values -= np.float32(center)
        values *= np.float32(-4.0 / width)
        np.exp(values, out=values)
        values += np.float32(1.0)
        return np.reciprocal(values, out=values)
    raise BadInputError(f"{label}: the DICOM VOI LUT Function {function} is not one of LINEAR, LINEAR_EXACT, SIGMOID; pass window=(center, width)")


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


def _colour(arr: np.ndarray, ds: Any, photometric: str, metadata: dict[str, Any], label: str, factor: int) -> np.ndarray:
    """RGB (palette applied, YBR already converted by pydicom) scaled by its bit depth to float32 [0, 1],
    shrunk ``factor`` times by averaging blocks."""
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        try:
            arr = apply_color_lut(arr, ds)
            top = float(2 ** int(ds.RedPaletteColorLookupTableDescriptor[2]) - 1)
        except Exception as exc:  # noqa: BLE001
            raise BadInputError(f"{label}: the DICOM palette cannot be applied ({scrub(exc)})") from None
    else:
        if arr.ndim != 3 or arr.shape[-1] != 3:
            raise BadInputError(f"{label}: {photometric} DICOM pixels have an unexpected shape {arr.shape}")
        bits = int(ds.get("BitsStored", 8) or 8)
        top = float(2**bits - 1) if bits <= 16 and np.issubdtype(arr.dtype, np.integer) else 0.0
    if factor > 1:
        arr = block_mean(arr, factor)
    if not top:
        pixels, _, _ = minmax_to_unit(arr)  # 32-bit colour: no sensible fixed range
        return pixels
    pixels = arr.astype(np.float32, copy=not (arr.dtype == np.float32 and factor > 1))
    pixels /= np.float32(top)
    return np.clip(pixels, 0.0, 1.0, out=pixels)


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
#
# A damaged length makes an element's value run over the elements after it: a Modality or
# Manufacturer can then hold the patient's name. So a value leaves this module only when it is
# well formed for its VR (a code string of 1-16 letters, digits, spaces and underscores; a long
# string of at most 64 printable characters; a UID of digits and dots), else it is left out.


def _safe_metadata(ds: Any, uid: Any) -> dict[str, Any]:
    metadata: dict[str, Any] = {"format": "dicom", "transfer_syntax_uid": str(uid), "transfer_syntax": uid.name}
    for keyword, key in METADATA_TAGS.items():
        try:
            value = ds.get(keyword)
            if value is None or value == "":
                continue
            if keyword == "PixelSpacing":
                spacing = [float(v) for v in (value if hasattr(value, "__iter__") and not isinstance(value, str) else [value])]
                if spacing and all(math.isfinite(v) for v in spacing):
                    metadata[key] = spacing
            elif keyword in ("Rows", "Columns", "BitsStored"):
                metadata[key] = int(value)
            elif keyword == "Manufacturer":
                text = str(value).strip()
                if 0 < len(text) <= 64 and text.isprintable() and "\\" not in text:
                    metadata[key] = text
            elif code := _code_string(value):
                metadata[key] = code
        except Exception:  # noqa: BLE001 - an unparsable value is left out rather than failing the image
            continue
    return metadata


def _code_string(value: Any) -> str:
    """The first value of a CS element, upper-case, if it is a well-formed code string; else ""."""
    if value is None:
        return ""
    if hasattr(value, "__iter__") and not isinstance(value, (str, bytes)):
        value = next(iter(value), "")
    text = str(value).strip().upper()
    return text if _CODE_STRING.fullmatch(text) else ""


def _sop_class_name(ds: Any) -> str:
    """The SOP class's name (``CT Image Storage``), for a registered, well-formed UID; else ""."""
    try:
        uid = ds.get("SOPClassUID") or getattr(ds, "file_meta", {}).get("MediaStorageSOPClassUID")
        text = str(uid or "").strip("\x00 ")
        if not _UID.fullmatch(text) or len(text) > 64:
            return ""
        from pydicom.uid import UID

        name = UID(text).name
        return name if name != text else ""
    except Exception:  # noqa: BLE001
        return ""


def _first(value: Any) -> float:
    try:
        return float(value[0]) if hasattr(value, "__len__") and not isinstance(value, str) else float(value)
    except (TypeError, ValueError, IndexError):
        return float("nan")
