"""The image modality as core sees it: one :class:`~medzero.core.modality.Modality` row, and the
``dicom`` check an image task may name in its ``applies_to`` block."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
from pydantic import BaseModel, ConfigDict, field_validator

from ..core.ingest import Prepared, Source
from ..core.modality import Modality, register_modality
from ..tasks.schema import NOT_APPLICABLE, register_applies_to
from ..core.results import Reason
from .pixels import ImageLimits

__all__ = ["IMAGE", "DicomCheck"]


def _prepare(source: Source, encoder, limits) -> Prepared:
    from .io import read_image

    side = _model_side(encoder)
    # Decoded at least twice the model's input size (as PIL's thumbnail() drafts): a 10000×10000
    # JPEG then decodes at 1/8 by DCT scaling instead of to 100 M pixels and their float copies.
    image = read_image(source.data, limits=limits, name=source.name, fmt=source.format, reduce_to=2 * side if side else None)
    height, width = image.pixels.shape[:2]
    metadata = image.metadata
    return Prepared(
        source,
        item=image,
        metadata=dict(metadata),
        columns={  # the image's own size, not the size it was decoded at
            "width": int(metadata.get("width") or metadata.get("Columns") or width),
            "height": int(metadata.get("height") or metadata.get("Rows") or height),
        },
    )


def _explain(result: Any, p: Prepared, encoder: Any, head: Any, options: Mapping[str, Any]) -> None:
    """Heatmaps per label when the caller asked for them (``options["explain"]``: a method name)."""
    method = options.get("explain")
    if not method:
        return
    from .explain import explain_image

    size = (int(p.columns.get("width") or 0), int(p.columns.get("height") or 0))
    maps = explain_image(encoder, head, p.item, pixels=p.input, original_size=size if all(size) else None, method=method)
    result.explanations = {label: e.to_dict() for label, e in maps.items()}


def _model_side(encoder: Any) -> int | None:
    """The largest side the encoder's preprocessing resizes or crops to (224 for a ViT-B/16), read
    from its transforms; ``None`` when it cannot be told (the image is then decoded at full size)."""
    side = getattr(encoder, "image_size", None)
    if isinstance(side, int) and side > 0:
        return side
    sizes: list[int] = []
    for step in getattr(getattr(encoder, "preprocess", None), "transforms", None) or []:
        size = getattr(step, "size", None)
        values = [size] if isinstance(size, int) else list(size) if isinstance(size, (tuple, list)) else []
        sizes.extend(v for v in values if isinstance(v, int) and v > 0)
    return max(sizes) if sizes else None


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
        postprocess=_explain,  # heatmaps, only when asked for (medzero.image.explain)
    )
)


class DicomCheck(BaseModel):
    """``applies_to: {dicom: {Modality: [CR, DX], ViewPosition: [PA, AP], ...}}``: allowed values of
    the DICOM tags the loader reads (PHI-safe metadata), compared case-insensitively.

    A rule applies only when its tag is present and not empty: a PNG, or a DICOM file without
    BodyPartExamined, cannot be judged by that rule (the check then says it cannot tell, and the
    task's zero-shot gate decides). A value outside a rule makes the input not applicable.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    Modality: list[str] | None = None
    BodyPartExamined: list[str] | None = None
    ViewPosition: list[str] | None = None
    PhotometricInterpretation: list[str] | None = None
    Manufacturer: list[str] | None = None

    @field_validator("*", mode="before")
    @classmethod
    def _values(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list):
            if not value or not all(isinstance(v, str) and v.strip() for v in value):
                raise ValueError("allowed values must be a non-empty list of non-empty strings")
            return [v.strip().upper() for v in value]
        return value

    def rules(self) -> dict[str, list[str]]:
        return {tag: values for tag, values in self.model_dump().items() if values is not None}


#: How reasons call the tags.
_TAG_NAMES = {
    "Modality": {"en": "Modality", "zh": "成像类型"},
    "BodyPartExamined": {"en": "Body part", "zh": "检查部位"},
    "ViewPosition": {"en": "View position", "zh": "投照体位"},
    "PhotometricInterpretation": {"en": "Photometric interpretation", "zh": "光度解释"},
    "Manufacturer": {"en": "Manufacturer", "zh": "设备厂商"},
}
#: ViewPosition values that are lateral views, named in the reason.
_LATERAL = {"LL": ("left lateral view", "左侧位"), "RL": ("right lateral view", "右侧位"),
            "LATERAL": ("lateral view", "侧位"), "LAT": ("lateral view", "侧位")}


def _either(values: list[str], word: str) -> str:
    return values[0] if len(values) == 1 else ", ".join(values[:-1]) + f" {word} {values[-1]}"


def _check_dicom(
    params: DicomCheck, metadata: Mapping[str, Any], metrics: Mapping[str, float], what: Mapping[str, str]
) -> tuple[bool | None, list[Reason]]:
    reasons: list[Reason] = []
    missing = False
    for tag, allowed in params.rules().items():
        raw = metadata.get(tag)
        value = str(raw).strip() if raw is not None else ""
        if not value:
            missing = True
            continue
        if value.upper() in allowed:
            continue
        name = _TAG_NAMES[tag]
        lateral = _LATERAL.get(value.upper()) if tag == "ViewPosition" else None
        shown_en = f"{value} ({lateral[0]})" if lateral else value
        shown_zh = f"{value}（{lateral[1]}）" if lateral else value
        reasons.append(
            Reason(
                kind="applicability",
                id=tag,
                name=dict(name),
                value=None,
                limit=None,
                direction="",
                verdict=NOT_APPLICABLE.id,
                message={
                    "en": f"{name['en']} {shown_en} is not {what['en']} (expected {_either(allowed, 'or')})",
                    "zh": f"{name['zh']} {shown_zh}：不是{what['zh']}（应为 {_either(allowed, '或')}）",
                },
            )
        )
    if reasons:
        return False, reasons
    return (None if missing else True), []


register_applies_to("image", "dicom", DicomCheck, _check_dicom)
