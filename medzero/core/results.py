"""What a classification returns. Every ``to_dict()`` is plain JSON (str, float, int, list, dict, None)."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Reason", "Segment", "Result", "Hit", "format_value", "format_values"]


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
        """The reason as a sentence. Value and limit are printed with enough digits that the
        sentence is true as printed (``9.6 dB below 10.0 dB``, never ``10 dB below 10 dB``)."""
        if self.message:
            return self.message.get(lang) or self.message.get("en") or self.id
        name = self.name.get(lang) or self.name.get("en") or self.id
        if self.value is None or self.limit is None:
            return name
        value, limit = format_values(self.value, self.limit, self.unit)
        if self.value == self.limit:  # a label at its threshold exactly: "above" would be false
            return f"{name} {value} 等于阈值 {limit}" if lang == "zh" else f"{name} {value} at the threshold {limit}"
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
    return _render(value, unit, _decimals(value, unit))


def format_values(value: float, limit: float, unit: str = "") -> tuple[str, str]:
    """``value`` and ``limit`` as :func:`format_value` prints them, with more decimals where
    needed so that the printed numbers compare as the true ones do: 9.58 against 10 dB is
    ``9.6 dB`` and ``10.0 dB``, not ``10 dB`` twice; 0.4996 against 0.5 is ``0.4996`` and ``0.5000``.
    A sentence built from them ("below", "above") is then true as printed."""
    shown = format_value(value, unit), format_value(limit, unit)
    if not (math.isfinite(value) and math.isfinite(limit)):
        return shown
    want = _sign(float(value) - float(limit))
    decimals = max(_decimals(value, unit), _decimals(limit, unit))
    while _sign(_printed(shown[0]) - _printed(shown[1])) != want and decimals < _MAX_DECIMALS:
        decimals += 1
        shown = _render(value, unit, decimals), _render(limit, unit, decimals)
    return shown


#: Past this many decimals two floats that still print alike are printed alike (they differ by rounding noise).
_MAX_DECIMALS = 17


def _decimals(value: float, unit: str) -> int:
    """How many decimals a value gets by default: as many as a person needs for that unit."""
    if unit in ("%", "s"):
        return 1
    if unit in ("dB", "dBFS", "Hz"):
        return 0
    if unit == "" and float(value).is_integer() and abs(value) >= 1:
        return 0
    if 0 < abs(value) < 0.1:
        return 3
    return 2


def _render(value: float, unit: str, decimals: int) -> str:
    if unit == "%":
        return f"{value * 100:.{decimals}f}%"
    if unit in ("dB", "dBFS"):
        return f"{value:.{decimals}f} {unit}"
    if unit == "Hz":
        return f"{value:,.{decimals}f} Hz"
    if unit == "s":
        return f"{value:.{decimals}f} s"
    return f"{value:.{decimals}f}"


def _printed(text: str) -> float:
    """The number a person reads in a rendered value (``3,400 Hz`` -> 3400; ``5.0%`` -> 5.0)."""
    return float("".join(ch for ch in text if ch.isdigit() or ch in ".-"))


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


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
    #: Where the voice activity detector (Silero VAD) heard speech, ``(start, end)`` seconds, in
    #: order; empty when it heard none, did not run (not installed), or the input is not audio.
    speech_segments: list[tuple[float, float]] = field(default_factory=list)
    #: ``False`` when the input is outside what the task judges: the verdict is then
    #: ``not_applicable``, the reasons say why (kind ``applicability``), and no triage level is given.
    #: Its ``scores`` are kept as computed but judged against nothing: ``positive()`` is ``None``
    #: and ``to_dict()`` gives no ``thresholds``.
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
    #: Image results classified with ``explain``: per label, a heatmap of the region that drove its
    #: score (:mod:`medzero.image.explain`): ``{label: {"method", "grid" (rows of floats), "region"
    #: ([x0, y0, x1, y1] in the original image's pixels), "image_size", "score"}}``; else empty.
    explanations: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Calibrated probabilities ``{label: p}`` from a site overlay's probability maps, beside the raw
    #: ``scores`` (which stay as the model gave them); empty without maps.
    probabilities: dict[str, float] = field(default_factory=dict)
    #: Labels a site overlay's conformal rule is not sure about (its prediction set is not one value).
    uncertain: list[str] = field(default_factory=list)
    #: The conformal rule's ``{"alpha", "coverage", "decisions": {label: positive|negative|uncertain}}``, or None.
    conformal: dict[str, Any] | None = None
    #: The error as raised, for callers that want its type; not part of ``to_dict()``.
    exception: BaseException | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def judged(self) -> bool:
        """Whether the scores were judged against thresholds. A ``not_applicable`` result keeps its
        raw scores, but no label of it is positive or negative and it has no triage level."""
        return self.error is None and self.applicable

    def positive(self, label: str) -> bool | None:
        """Whether ``label`` is present: the site overlay's conformal decision where its rule covers
        the label (the decision the verdict used; ``None`` when the rule is not sure), else whether
        the score reached its threshold; ``None`` where nothing was judged (an input the task does
        not judge, a failed or signal-only result, a label without a score)."""
        score, threshold = self.scores.get(label), self.thresholds.get(label)
        if not self.judged or score is None or threshold is None:
            return None
        decision = (self.conformal or {}).get("decisions", {}).get(label)
        if decision is not None:
            return None if decision == "uncertain" else decision == "positive"
        return score >= threshold

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
            # no threshold was applied to an input the task does not judge; its raw scores stay above
            "thresholds": dict(self.thresholds) if self.judged else {},
            "metrics": dict(self.metrics),
            "segments": [s.to_dict() for s in self.segments],
            "timeline": self.timeline,
            "metadata": dict(self.metadata),
            "speech_segments": [[float(start), float(end)] for start, end in self.speech_segments],
            "applicable": self.applicable,
            "applicability": self.applicability,
            "signal_only": self.signal_only,
            "calibration": self.calibration,
            "explanations": dict(self.explanations),
            "probabilities": dict(self.probabilities),
            "uncertain": list(self.uncertain),
            "conformal": self.conformal,
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
