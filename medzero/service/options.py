"""The options of a classification: task or labels (template, multilabel), lang, calibration, mos, and
the layout of a raw PCM upload (``pcm_rate``, ``pcm_format``, ``pcm_channels``).

They come from the query string (:func:`option_query`, FastAPI's dependency, which also documents
them) or, with a multipart body, from its form fields (:data:`FORM_FIELDS` documents those);
:func:`parse_options` merges both into one :class:`ClassifyOptions` or answers 422 in one line.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Literal, Optional

from fastapi import Query
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..core.sniff import PCM_SAMPLE_FORMATS, SAMPLE_RATE_RANGE, PcmFormat
from .errors import ApiError, validation_line
from .uploads import Upload

__all__ = ["ClassifyOptions", "FORM_FIELDS", "flag", "option_query", "parse_options"]

_MAX_LABELS, _MAX_LABEL_CHARS = 64, 200

#: The options as multipart form fields, for the OpenAPI request bodies.
FORM_FIELDS = {
    "task": {"type": "string"}, "labels": {"type": "string"}, "template": {"type": "string"},
    "multilabel": {"type": "boolean"}, "lang": {"type": "string", "enum": ["en", "zh"]}, "calibration": {"type": "string"},
    "mos": {"type": "boolean"},
    "pcm_rate": {"type": "integer", "minimum": SAMPLE_RATE_RANGE[0], "maximum": SAMPLE_RATE_RANGE[1]},
    "pcm_format": {"type": "string", "enum": list(PCM_SAMPLE_FORMATS)},
    "pcm_channels": {"type": "integer", "minimum": 1, "maximum": 64},
}
_PCM_HELP = ("declares the upload raw headerless PCM (content that is WAV, MP3, ... is still decoded as what it is); "
             "unset options take 16000 Hz, s16le, mono")


class ClassifyOptions(BaseModel):
    """The options of a classification, from the query string or (multipart) form fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task: Optional[str] = None
    labels: Optional[tuple[str, ...]] = None
    template: Optional[str] = Field(default=None, max_length=_MAX_LABEL_CHARS)
    multilabel: bool = False
    lang: Literal["en", "zh"] = "en"
    calibration: Optional[str] = Field(default=None, max_length=_MAX_LABEL_CHARS)  # an overlay's name, looked up
    mos: Optional[bool] = None  # DNSMOS: None = when the task's rules use it (medzero.Classifier's mos)
    pcm_rate: Optional[int] = Field(default=None, ge=SAMPLE_RATE_RANGE[0], le=SAMPLE_RATE_RANGE[1])
    pcm_format: Optional[Literal[PCM_SAMPLE_FORMATS]] = None  # type: ignore[valid-type]
    pcm_channels: Optional[int] = Field(default=None, ge=1, le=64)

    @field_validator("labels", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",")]
        if value is None:
            return None
        value = [str(v).strip() for v in value if str(v).strip()]
        if not value:
            raise ValueError("labels is empty")
        if len(value) > _MAX_LABELS or any(len(v) > _MAX_LABEL_CHARS for v in value):
            raise ValueError(f"at most {_MAX_LABELS} labels of at most {_MAX_LABEL_CHARS} characters")
        return tuple(value)

    @model_validator(mode="after")
    def _consistent(self) -> "ClassifyOptions":
        if self.task is not None and self.labels is not None:
            raise ValueError("give either task or labels, not both")
        if (self.template is not None or self.multilabel) and self.labels is None:
            raise ValueError("template and multilabel go with labels")
        return self

    def key(self) -> tuple:
        return (self.task, self.labels, self.template, self.multilabel, self.calibration, self.mos, self.pcm)

    @property
    def pcm(self) -> Optional[PcmFormat]:
        """The declared raw PCM layout (any ``pcm_*`` option declares it; the rest default), else ``None``."""
        if self.pcm_rate is None and self.pcm_format is None and self.pcm_channels is None:
            return None
        default = PcmFormat()
        return PcmFormat(self.pcm_rate or default.rate, self.pcm_format or default.sample_format,
                         self.pcm_channels or default.channels)

    def limits(self, base: dict[str, Any]) -> dict[str, Any]:
        """The server's per-modality decoder limits, with the audio limits' ``pcm`` set when declared:
        the one way a PCM layout reaches the decoder, the same as a library caller's."""
        pcm = self.pcm
        if pcm is None or "audio" not in base:
            return base
        return {**base, "audio": dataclasses.replace(base["audio"], pcm=pcm)}

    def upload_name(self, name: str) -> str:
        """What results call an upload: ``upload``, or ``upload.pcm`` when raw PCM is declared (the
        name is how a source without a header declares it; its content still wins)."""
        return f"{name}.pcm" if self.pcm is not None else name


async def option_query(
    task: Optional[str] = Query(None, description="A shipped task (see /v1/tasks); default: each file's modality's default task"),
    labels: Optional[str] = Query(None, description="Ad-hoc labels, comma-separated (instead of a task)"),
    template: Optional[str] = Query(None, description="Template for ad-hoc labels, with {} for the label"),
    multilabel: Optional[bool] = Query(None, description="Score each ad-hoc label on its own"),
    lang: Optional[Literal["en", "zh"]] = Query(None, description="Language of `summary` (default en)"),
    calibration: Optional[str] = Query(
        None, description="A site calibration overlay on this server (see `calibrations` in /v1/tasks); goes with `task`"),
    mos: Optional[bool] = Query(
        None, description="Measure speech quality with DNSMOS (mos_* metrics); default: when the task's rules use it"),
    pcm_rate: Optional[int] = Query(None, description=f"Sample rate of a raw PCM upload in Hz; {_PCM_HELP}"),
    pcm_format: Optional[str] = Query(
        None, description=f"Sample format of a raw PCM upload ({', '.join(PCM_SAMPLE_FORMATS)}); {_PCM_HELP}"),
    pcm_channels: Optional[int] = Query(None, description=f"Interleaved channels of a raw PCM upload; {_PCM_HELP}"),
) -> dict[str, Any]:
    """The options given in the query string (``None`` where not given), for :func:`parse_options`."""
    return {"task": task, "labels": labels, "template": template, "multilabel": multilabel, "lang": lang,
            "calibration": calibration, "mos": mos, "pcm_rate": pcm_rate, "pcm_format": pcm_format, "pcm_channels": pcm_channels}


def parse_options(query: dict[str, Any], upload: Upload | None = None) -> ClassifyOptions:
    """The query's options overridden by the upload's form fields; 422 for an unknown field or a bad value."""
    values = {k: v for k, v in query.items() if v is not None}
    if upload is not None:
        for name in ClassifyOptions.model_fields:
            if upload.field(name) is not None:
                values[name] = upload.field(name)
        unknown = sorted(set(upload.fields) - set(ClassifyOptions.model_fields))
        if unknown:
            raise ApiError(422, "invalid_request", f"unknown form field(s): {', '.join(unknown)}")
    try:
        return ClassifyOptions(**values)
    except ValidationError as exc:
        raise ApiError(422, "invalid_request", validation_line(exc.errors())) from None


def flag(value: Optional[str]) -> bool:
    """A form field's boolean (``true``/``1``/``yes``/``on`` and their opposites); 422 for anything else."""
    if value is None:
        return False
    text = value.strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ApiError(422, "invalid_request", f"expected true or false, not {value[:20]!r}")
