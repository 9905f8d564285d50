"""Response models of the HTTP service: the JSON of ``Result.to_dict()``, ``Hit.to_dict()`` and
``AddReport.to_dict()``, typed, plus what the service adds around them.

A test checks that these models have exactly the keys ``to_dict()`` produces, so a field added to
the library's results shows up as a failing test rather than as a field the service drops.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "Localized",
    "ReasonModel",
    "SegmentModel",
    "GateModel",
    "ApplicabilityModel",
    "CalibratedModel",
    "UncalibratedModel",
    "ResultModel",
    "ClassifyResponse",
    "BatchItem",
    "BatchResponse",
    "HitModel",
    "SearchRequest",
    "SearchResponse",
    "AddErrorModel",
    "AddReportModel",
    "LabelInfo",
    "VerdictInfo",
    "TaskInfo",
    "TasksResponse",
    "ModelInfo",
    "ServedModel",
    "ModelsResponse",
    "Health",
    "Readiness",
    "ErrorResponse",
]

#: ``{"en": ..., "zh": ...}``
Localized = dict[str, str]


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ReasonModel(_Model):
    """Why a result got its verdict (``Reason.to_dict()``)."""

    kind: str = Field(
        description='"label" or "metric": a score or measurement on the wrong side of its limit; '
        '"applicability": the input is outside what the task judges (verdict `not_applicable`); '
        '"uncertain": a label a conformal rule is not sure about (verdict `uncertain`); '
        '"note": how the verdict was reached (e.g. signal-only), with no verdict of its own'
    )
    id: str
    name: Localized
    value: Optional[float] = Field(description="The score or measurement; null for a reason without numbers (a DICOM tag check)")
    limit: Optional[float] = Field(description="The threshold or rule limit; null for a reason without numbers")
    direction: str = Field(
        description='"above": a value at or above the limit is the problem; "below": under it; "": no numbers'
    )
    verdict: Optional[str]
    unit: str
    advice: Optional[Localized]
    text: Localized = Field(description="The reason as a sentence, in English and Chinese")


class SegmentModel(_Model):
    """A stretch of a long recording where a label scored high (``Segment.to_dict()``)."""

    label: str
    start: float = Field(description="seconds")
    end: float = Field(description="seconds")
    score: float


class GateModel(_Model):
    """The zero-shot applicability gate of a task (``applies_to.gate``)."""

    score: Optional[float] = Field(description="The gate's score; null when there was no model (signal-only)")
    min_score: float
    decides: bool = Field(description="Whether the gate decided (no tag check settled it)")


class ApplicabilityModel(_Model):
    """What the task's ``applies_to`` checks found; ``gate`` only for a task that declares one."""

    checks: dict[str, str] = Field(description='Each declared check (e.g. dicom, speech): "pass", "fail" or "unknown"')
    gate: Optional[GateModel] = None


class CalibratedModel(_Model):
    """Thresholds from a site overlay written by ``medzero calibrate``."""

    status: Literal["calibrated"]
    summary: str
    path: str = Field(description="The overlay's file name in the server's calibration directory")
    sha256: str = Field(description="SHA-256 of the overlay file")
    method: str
    model: Optional[str] = Field(description="Fingerprint of the model the overlay was fitted on")
    created: Optional[str]
    sources: dict[str, str] = Field(description="How each calibrated label's threshold was fitted")
    metric_sources: dict[str, str] = Field(
        description='How each calibrated measurement limit was fitted, keyed "metric.min" or "metric.max"'
    )


class UncalibratedModel(_Model):
    """The task file's default thresholds, not fitted on local data."""

    status: Literal["uncalibrated"]
    summary: str


class ConformalModel(_Model):
    """A site overlay's split-conformal rule, applied to one result."""

    alpha: float = Field(description="The stated error rate")
    coverage: float = Field(description="1 - alpha: how often the prediction set holds the true value")
    decisions: dict[str, Literal["positive", "negative", "uncertain"]] = Field(
        description="Per label the rule covers: decided present, decided absent, or not sure"
    )


class ResultModel(_Model):
    """One classified source (``Result.to_dict()``). ``error`` is set, and the scores empty, when it failed."""

    path: str = Field(description='The source\'s name: "upload" (or "upload-N" in a batch) for uploaded files')
    modality: str = Field(description='"audio", "image", or "unknown" when the content was neither')
    task: str
    model: str = Field(description="Fingerprint of the encoder that embedded the source; empty for a signal-only verdict")
    scores: dict[str, float] = Field(description="Each label's score; empty for a signal-only verdict or an error")
    verdict: Optional[str] = Field(description="A verdict id of the task (or the top label), `not_applicable`, `uncertain`, or null on error")
    verdict_name: Optional[Localized]
    summary: Optional[Localized]
    reasons: list[ReasonModel]
    label_names: dict[str, Localized]
    thresholds: dict[str, float] = Field(description="The thresholds applied (a calibration overlay's where one was used); "
                                           "empty when applicable is false, since nothing was judged")
    metrics: dict[str, float] = Field(description="Waveform measurements of a recording (SNR, clipping, ...)")
    segments: list[SegmentModel]
    timeline: Optional[dict[str, Any]] = Field(description="Window scores of recordings longer than the model's input")
    metadata: dict[str, Any] = Field(
        description="PHI-safe metadata (format, duration; allow-listed DICOM tags). Audio: `quality_models` (fingerprint "
        "of each speech model that ran: `vad`, `mos`) and, when one is not installed, `quality_notes` (`vad`/`mos`: "
        "{en, zh}, what stood in for it)"
    )
    speech_segments: list[Annotated[list[float], Field(min_length=2, max_length=2)]] = Field(
        description="Where the voice activity detector (Silero VAD) heard speech: [start, end] seconds, in order; "
        "empty when none was heard, the VAD is not installed, or the input is not audio"
    )
    applicable: bool = Field(
        description="false when the input is outside what the task judges: verdict `not_applicable`, reasons of kind "
        "`applicability`, no triage level"
    )
    applicability: Optional[ApplicabilityModel] = Field(description="The task's applies_to checks; null for a task without them")
    signal_only: bool = Field(
        description="true when the model was not available and the verdict comes from measurement rules alone (no scores)"
    )
    calibration: Optional[Annotated[Union[CalibratedModel, UncalibratedModel], Field(discriminator="status")]] = Field(
        description="Where the thresholds came from; null on error"
    )
    probabilities: dict[str, float] = Field(
        default_factory=dict,
        description="Calibrated probabilities from the site overlay's probability maps (platt, isotonic or temperature), "
        "beside the raw `scores`; empty without maps",
    )
    uncertain: list[str] = Field(
        default_factory=list,
        description="Labels the overlay's conformal rule is not sure about; the verdict is `uncertain` (in scope, not sure: "
        "unlike `not_applicable`, out of scope) when one of them could make it worse",
    )
    conformal: Optional[ConformalModel] = Field(default=None, description="The overlay's conformal rule as applied; null without one")
    explanations: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Per label, the image heatmap (method, grid, region of the original image) when one was asked for "
        "(`POST /v1/explain`, which adds each overlay's PNG); empty otherwise",
    )
    error: Optional[str]


class ClassifyResponse(_Model):
    lang: Literal["en", "zh"]
    summary: Optional[str] = Field(description="The verdict and its reasons in one line, in `lang`")
    result: ResultModel


class BatchItem(_Model):
    summary: Optional[str] = Field(description="The verdict and its reasons (or the error) in one line, in `lang`")
    result: ResultModel


class BatchResponse(_Model):
    lang: Literal["en", "zh"]
    results: list[BatchItem] = Field(description="One per uploaded file, in upload order; a bad file has `result.error` set")


class HitModel(_Model):
    """One case found by a search (``Hit.to_dict()``)."""

    id: int
    path: str = Field(description="The case's file; files added through the service are `uploads/<sha256>` in the index")
    score: float = Field(description="Cosine similarity in the case's own embedding space")
    modality: str
    metadata: dict[str, Any]


class SearchRequest(BaseModel):
    """A text search (JSON body). To search by example, send the file instead (multipart or raw body)."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, max_length=2000)
    k: int = Field(default=5, ge=1, le=100)
    modality: Optional[Literal["audio", "image"]] = None
    where: Optional[str | list[str]] = Field(
        default=None, description="Filters, e.g. `ViewPosition=PA` or `score.pleural_effusion>0.5`"
    )
    exact: bool = False


class SearchResponse(_Model):
    hits: list[HitModel]


class AddErrorModel(_Model):
    path: str
    error: str = Field(description="One line: what was wrong")


class AddReportModel(_Model):
    """What adding cases did (``AddReport.to_dict()``)."""

    added: list[int] = Field(description="Ids of the new cases")
    duplicates: list[str] = Field(description="Files whose content was already in the index")
    errors: list[AddErrorModel] = Field(description="Each file that could not be added")


class LabelInfo(_Model):
    id: str
    name: Localized
    polarity: str
    threshold: float


class VerdictInfo(_Model):
    id: str
    name: Localized


class TaskInfo(_Model):
    name: str
    modality: str
    mode: str
    description: Optional[Localized]
    labels: list[LabelInfo]
    verdicts: list[VerdictInfo]
    calibrations: list[str] = Field(description="Site overlays on this server for the task (the `calibration` option)")


class TasksResponse(_Model):
    tasks: list[TaskInfo]


class ModelInfo(_Model):
    """A registered named model."""

    name: str
    modality: str
    family: str
    hub_id: str
    revision: Optional[str]
    description: str
    default: bool


class ServedModel(_Model):
    """The model this server uses for a modality, and whether it is loaded."""

    modality: str
    state: Literal["loading", "ready", "failed", "on_demand"]
    fingerprint: Optional[str]
    error: Optional[str]


class ModelsResponse(_Model):
    models: list[ModelInfo]
    served: list[ServedModel]


class Health(_Model):
    status: Literal["ok"]


class Readiness(_Model):
    status: Literal["ready"]
    models: list[ServedModel]


class ErrorResponse(_Model):
    """Every error: a short machine-readable code and a one-line explanation."""

    error: str = Field(
        description="bad_input, unauthorized, not_found, timeout, too_large, unsupported_media_type, "
        "invalid_request, conflict, queue_full, busy, request_timeout, not_ready, model_unavailable, internal"
    )
    detail: str
