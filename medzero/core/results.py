"""What a classification returns. Every ``to_dict()`` is plain JSON (str, float, int, list, dict, None)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Reason", "Segment", "Result", "Hit", "format_value"]


@dataclass(frozen=True)
class Reason:
    """Why a result got its verdict: a label score or a metric on the wrong side of its limit.

    Kinds: ``label``, ``metric``; ``applicability`` (the input is outside what the task judges: a
    DICOM tag, the zero-shot gate, no speech; verdict ``not_applicable``); ``note`` (says how the
    verdict was reached, e.g. signal-only; verdict ``None``). An applicability reason on a tag has
    no numbers (``value`` and ``limit`` are ``None``); ``message`` then gives the sentence, in
    English and Chinese, that :meth:`text` returns (``to_dict()`` carries it as ``text``).
    """

    kind: str  # "label", "metric", "applicability" or "note"
    id: str
    name: dict[str, str]  # {"en": ..., "zh": ...}
    value: float | None
    limit: float | None
    direction: str  # "above" (value >= limit is the problem), "below", or "" (no numbers)
    verdict: str | None
    unit: str = ""
    advice: dict[str, str] | None = None
    message: dict[str, str] | None = None

    def text(self, lang: str = "en") -> str:
        if self.message:
            return self.message.get(lang) or self.message.get("en") or self.id
        name = self.name.get(lang) or self.name.get("en") or self.id
        if self.value is None or self.limit is None:
            return name
        value, limit = format_value(self.value, self.unit), format_value(self.limit, self.unit)
        if lang == "zh":
            word = "高于阈值" if self.direction == "above" else "低于"
            return f"{name} {value} {word} {limit}"
        word = "above the threshold" if self.direction == "above" else "below"
        return f"{name} {value} {word} {limit}"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        del data["message"]  # it is the text
        data["text"] = {"en": self.text("en"), "zh": self.text("zh")}
        return data


def format_value(value: float, unit: str = "") -> str:
    """A score or measurement as people read it: ``0.81``, ``6 dB``, ``3,400 Hz``, ``1.2%``, ``12.0 s``."""
    if unit == "%":
        return f"{value * 100:.1f}%"
    if unit in ("dB", "dBFS"):
        return f"{value:.0f} {unit}"
    if unit == "Hz":
        return f"{value:,.0f} Hz"
    if unit == "s":
        return f"{value:.1f} s"
    if unit == "" and float(value).is_integer() and abs(value) >= 1:
        return f"{value:.0f}"
    if 0 < abs(value) < 0.1:
        return f"{value:.3f}"
    return f"{value:.2f}"


@dataclass(frozen=True)
class Segment:
    """A stretch of a long recording where a label scored high."""

    label: str
    start: float  # seconds
    end: float
    score: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Result:
    source: str
    modality: str
    task: str
    model: str  # encoder fingerprint
    scores: dict[str, float]
    verdict: str | None
    reasons: list[Reason] = field(default_factory=list)
    verdict_name: dict[str, str] | None = None
    label_names: dict[str, dict[str, str]] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    segments: list[Segment] = field(default_factory=list)
    #: Long recordings: window start/end seconds and every label's score per window.
    timeline: dict[str, Any] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    #: ``False`` when the input is outside what the task judges: the verdict is then
    #: ``not_applicable``, the reasons say why (kind ``applicability``), and no triage level is given.
    applicable: bool = True
    #: What the task's ``applies_to`` checks found (``{"checks": {name: "pass" | "fail" |
    #: "unknown"}, "gate": {"score", "min_score", "decides"}}``); ``None`` for a task without them.
    applicability: dict[str, Any] | None = None
    #: ``True`` when the model could not be loaded and the verdict comes from measurement rules
    #: alone (no scores); a reason of kind ``note`` says so and why.
    signal_only: bool = False
    #: Where the thresholds came from: a site overlay (``{"status": "calibrated", "summary", "path",
    #: "sha256", "method", "model", "sources": {label: how it was fitted}}``) or
    #: ``{"status": "uncalibrated", "summary": ...}``: every result says which.
    calibration: dict[str, Any] | None = None
    #: The error as raised, for callers that want its type; not part of ``to_dict()``.
    exception: BaseException | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.error is None

    def top(self, n: int | None = None) -> list[tuple[str, float]]:
        ranked = sorted(self.scores.items(), key=lambda kv: kv[1], reverse=True)
        return ranked if n is None else ranked[:n]

    def summary(self, lang: str = "en") -> str:
        """One line, e.g. ``建议复录：背景强干扰 0.81 高于阈值 0.50；信噪比 6 dB 低于 10 dB``."""
        if self.error:
            return self.error
        name = (self.verdict_name or {}).get(lang) or self.verdict or ""
        if not self.reasons:
            return name
        sep, colon = ("；", "：") if lang == "zh" else ("; ", ": ")
        return name + colon + sep.join(r.text(lang) for r in self.reasons)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.source,
            "modality": self.modality,
            "task": self.task,
            "model": self.model,
            "scores": dict(self.scores),
            "verdict": self.verdict,
            "verdict_name": self.verdict_name,
            "summary": {"en": self.summary("en"), "zh": self.summary("zh")} if self.error is None else None,
            "reasons": [r.to_dict() for r in self.reasons],
            "label_names": self.label_names,
            "thresholds": self.thresholds,
            "metrics": dict(self.metrics),
            "segments": [s.to_dict() for s in self.segments],
            "timeline": self.timeline,
            "metadata": dict(self.metadata),
            "applicable": self.applicable,
            "applicability": self.applicability,
            "signal_only": self.signal_only,
            "calibration": self.calibration,
            "error": self.error,
        }

    @classmethod
    def failed(cls, source: str, error: BaseException, *, modality: str | None = None, task: str = "") -> "Result":
        return cls(
            source=source,
            modality=modality or "unknown",
            task=task,
            model="",
            scores={},
            verdict=None,
            error=str(error),
            exception=error,
        )


@dataclass(frozen=True)
class Hit:
    """One case found by a search, best first."""

    id: int
    path: str
    score: float
    modality: str
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
