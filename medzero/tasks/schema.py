"""Tasks (prompt sets): the YAML schema, loading, validation and template expansion.

A task is data, not code. It names a modality, a scoring mode, prompt templates, labels with their
prompts (and, for multilabel tasks, negatives), thresholds and polarity, optional waveform-metric
rules, and the verdicts a result can get. Shipped tasks live in the top-level ``prompts/`` folder of
the repository, which is installed as the ``medzero.prompts`` package so that the same files are
found from an editable install and from a wheel.

Example (see ``prompts/voice_quality.yaml`` for a full one)::

    name: voice_quality
    modality: audio
    mode: multilabel
    templates: ["{}"]
    labels:
      - id: background_noise
        name: {en: Strong background noise, zh: 背景强干扰}
        prompts: [speech with loud background noise]
        negatives: [a person speaking in a quiet room]
        threshold: 0.5
        polarity: bad
        advice: {en: Re-record in a quiet place., zh: 请换安静环境重新录制。}

A task may say what it can judge, with an ``applies_to`` block; an input outside it gets the verdict
``not_applicable`` (never a triage level) and reasons of kind ``applicability``::

    applies_to:
      what: {en: a frontal chest radiograph, zh: 胸部正位X光片}
      dicom: {Modality: [CR, DX], ViewPosition: [PA, AP]}       # a check the image modality registers
      gate:                                                     # zero-shot, for any modality
        prompts: [a chest radiograph]
        others: [a CT scan slice, a photograph]
        min_score: 0.5

``what`` and ``gate`` are common to every modality; any other key names a check that the task's
modality registered with :func:`register_applies_to` (``dicom`` for images, ``speech`` for audio),
validated by that check's own schema when the task loads.
"""
from __future__ import annotations

import importlib.resources
import logging
import os
from functools import lru_cache
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, Mapping

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..core.errors import MedzeroError, TaskError
from ..core.modality import get_modality

if TYPE_CHECKING:  # pragma: no cover
    from ..core.results import Reason

__all__ = [
    "Localized",
    "Label",
    "MetricRule",
    "Verdict",
    "Gate",
    "AppliesTo",
    "TimelineSettings",
    "Task",
    "load_task",
    "list_tasks",
    "task_from_labels",
    "register_applies_to",
    "applies_to_checks",
    "DEFAULT_VERDICTS",
    "NOT_APPLICABLE",
]

_logger = logging.getLogger(__name__)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Localized(_Strict):
    """A display text in English and Chinese. A plain string in YAML is used for both."""

    en: str = Field(min_length=1)
    zh: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"en": value, "zh": value}
        return value

    def get(self, lang: str = "en") -> str:
        if lang == "zh" and self.zh:
            return self.zh
        return self.en


class Verdict(_Strict):
    """One outcome of a task, e.g. ``accept`` / ``re-record`` or ``routine`` / ``review`` / ``urgent``."""

    id: str = Field(min_length=1)
    name: Localized | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"id": value}
        return value

    def display(self, lang: str = "en") -> str:
        return self.name.get(lang) if self.name else self.id


class Label(_Strict):
    id: str = Field(min_length=1)
    name: Localized | None = None
    prompts: list[str] = Field(min_length=1)
    negatives: list[str] = Field(default_factory=list)
    threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    #: ``bad``: a score at or above the threshold is a problem; ``good``: a score below it is a
    #: problem; ``info``: reported, never changes the verdict.
    polarity: Literal["bad", "good", "info"] = "bad"
    #: The verdict this label triggers when it is a problem; default: the task's worst verdict.
    verdict: str | None = None
    advice: Localized | None = None

    @field_validator("prompts", "negatives")
    @classmethod
    def _non_empty_strings(cls, value: list[str]) -> list[str]:
        for text in value:
            if not isinstance(text, str) or not text.strip():
                raise ValueError("prompts must be non-empty strings")
        return value

    def display(self, lang: str = "en") -> str:
        return self.name.get(lang) if self.name else self.id


class MetricRule(_Strict):
    """A limit on a directly computed measurement (e.g. ``snr_db``), checked beside the labels."""

    min: float | None = None
    max: float | None = None
    name: Localized | None = None
    unit: str | None = None
    verdict: str | None = None
    advice: Localized | None = None

    @model_validator(mode="after")
    def _has_a_limit(self) -> "MetricRule":
        if self.min is None and self.max is None:
            raise ValueError("a metric rule needs min or max")
        return self


#: Verdicts of a task that does not name its own: accept, else re-record.
DEFAULT_VERDICTS = (
    Verdict(id="accept", name=Localized(en="Accept", zh="可以接受")),
    Verdict(id="re-record", name=Localized(en="Re-record", zh="建议复录")),
)


#: The verdict of an input outside what its task judges (a reserved id: no task may declare it).
NOT_APPLICABLE = Verdict(id="not_applicable", name=Localized(en="Not applicable", zh="不适用"))


# -- what a task applies to ----------------------------------------------------------------------

#: ``check(params, metadata, metrics, what) -> (in_scope, reasons)``: ``in_scope`` is ``True`` when
#: the input is what the task judges, ``False`` when it is not (``reasons`` say why, one
#: ``Reason(kind="applicability", verdict="not_applicable")`` each), ``None`` when this check cannot
#: tell (e.g. a DICOM tag rule on a PNG). ``metadata`` and ``metrics`` are the prepared input's;
#: ``what`` is the task's ``applies_to.what`` as ``{"en", "zh"}``.
ScopeCheck = Callable[
    [Any, Mapping[str, Any], Mapping[str, float], Mapping[str, str]], "tuple[bool | None, list[Reason]]"
]


@dataclass(frozen=True)
class AppliesToCheck:
    """A key of ``applies_to`` that a modality checks: its parameters' schema and the check."""

    params: type[BaseModel]
    check: ScopeCheck


_APPLIES_TO: dict[str, dict[str, AppliesToCheck]] = {}
_COMMON_KEYS = ("what", "gate")


def register_applies_to(modality: str, key: str, params: type[BaseModel], check: ScopeCheck) -> None:
    """Let tasks of ``modality`` say ``applies_to: {key: ...}`` (called by the modality's plug-in).

    ``params`` (a pydantic model) validates the block when a task loads; ``check`` (see
    :data:`ScopeCheck`) runs on every prepared input before scoring.
    """
    if key in _COMMON_KEYS:
        raise ValueError(f"applies_to.{key} is common to every modality")
    _APPLIES_TO.setdefault(modality, {})[key] = AppliesToCheck(params, check)


def applies_to_checks(modality: str) -> dict[str, AppliesToCheck]:
    """The ``applies_to`` keys ``modality`` registered (its plug-in is imported first)."""
    get_modality(modality)
    return dict(_APPLIES_TO.get(modality, {}))


class Gate(_Strict):
    """A zero-shot check that the input is what the task judges, made from the task's own embedding.

    As in CheXzero's multiclass use: the ``prompts`` (averaged into one class, every one in every
    template) and each of the ``others`` (a class each) are scored with
    ``softmax(logit_scale · e·Cᵀ)``; the gate's score is its class's probability, and an input
    scoring under ``min_score`` is not applicable, when the gate decides (see :class:`AppliesTo`).
    """

    prompts: list[str] = Field(min_length=1)
    others: list[str] = Field(min_length=1)
    templates: list[str] = Field(default_factory=lambda: ["{}"], min_length=1)
    min_score: float = Field(default=0.5, ge=0.0, le=1.0)

    @field_validator("prompts", "others")
    @classmethod
    def _non_empty_strings(cls, value: list[str]) -> list[str]:
        for text in value:
            if not isinstance(text, str) or not text.strip():
                raise ValueError("gate texts must be non-empty strings")
        return value

    @field_validator("templates")
    @classmethod
    def _one_slot(cls, value: list[str]) -> list[str]:
        for template in value:
            if template.count("{}") != 1:
                raise ValueError(f"template {template!r} must contain '{{}}' exactly once")
        return value

    def groups(self) -> list[list[str]]:
        """The gate's class, then one class per other: each a list of templated texts."""
        def expand(texts: list[str]) -> list[str]:
            return [template.replace("{}", text) for text in texts for template in self.templates]

        return [expand(self.prompts)] + [expand([other]) for other in self.others]


class AppliesTo(_Strict):
    """What a task can judge. An input is not applicable when any modality check says it is not;
    otherwise, when the checks cannot settle it (none are declared, or one cannot tell, e.g. a tag
    rule on a file without tags), the ``gate`` decides. The gate's score is reported either way."""

    #: How reasons name what the task judges ("a frontal chest radiograph").
    what: Localized | None = None
    gate: Gate | None = None
    #: The modality's own checks (any other key of the YAML block), parsed by their schemas.
    checks: dict[str, Any] = Field(default_factory=dict)

    def what_names(self, task_name: str) -> dict[str, str]:
        if self.what is None:
            return {"en": f"an input for {task_name}", "zh": f"{task_name} 任务的输入"}
        return {"en": self.what.en, "zh": self.what.zh or self.what.en}


def _parse_applies_to(block: dict, modality: Any) -> dict:
    """``applies_to`` with every key other than ``what`` and ``gate`` parsed by the check
    ``modality`` registered for it, under ``checks``; a one-line error names a bad field."""
    sections = {k: v for k, v in block.items() if k not in (*_COMMON_KEYS, "checks")}
    if isinstance(block.get("checks"), dict):  # a Task dumped and validated again
        sections.update(block["checks"])
    try:
        known = applies_to_checks(modality) if isinstance(modality, str) else {}
    except MedzeroError:
        known = {}  # the modality field reports it
    checks = {}
    for key, raw in sections.items():
        spec = known.get(key)
        if spec is None:
            names = ", ".join([*_COMMON_KEYS, *known])
            raise ValueError(f"field 'applies_to.{key}': not a check of {modality} tasks (known: {names})")
        try:
            checks[key] = spec.params.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = ".".join(str(p) for p in first.get("loc", ()) if not isinstance(p, int))
            message = first.get("msg", "invalid").removeprefix("Value error, ")
            raise ValueError(f"field 'applies_to.{key}{'.' + loc if loc else ''}': {message}") from None
    return {**{k: v for k, v in block.items() if k in _COMMON_KEYS}, "checks": checks}


class TimelineSettings(_Strict):
    """``timeline:`` of a task: how the windows of a long recording are scored."""

    #: Windows in which the VAD heard no speech are not scored (marked skipped in the timeline): on
    #: for a task that judges the voice, off (the default) where silence itself matters.
    skip_without_speech: bool = False


class Task(_Strict):
    name: str = Field(min_length=1)
    modality: str
    mode: Literal["multiclass", "multilabel"] = "multiclass"
    description: Localized | None = None
    templates: list[str] = Field(default_factory=lambda: ["{}"], min_length=1)
    #: Negative used by multilabel labels that list none (templated like the prompts).
    default_negative: str | None = None
    labels: list[Label] = Field(min_length=1)
    metrics: dict[str, MetricRule] = Field(default_factory=dict)
    #: Ordered from best to worst. Empty: the result's verdict is the top-scoring label.
    verdicts: list[Verdict] = Field(default_factory=lambda: list(DEFAULT_VERDICTS))
    #: What the task can judge; ``None``: every input of its modality.
    applies_to: AppliesTo | None = None
    #: How a long recording's timeline windows are scored; ``None``: every window (left out of
    #: dumps then, so the canonical JSON, and the hash overlays record, of other tasks is unchanged).
    timeline: TimelineSettings | None = Field(default=None, exclude_if=lambda value: value is None)
    #: Where the task came from (a file path, ``builtin:NAME`` or ``ad-hoc``); not part of the YAML.
    source: str = "ad-hoc"

    @model_validator(mode="before")
    @classmethod
    def _modality_checks(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("applies_to"), dict):
            data = {**data, "applies_to": _parse_applies_to(data["applies_to"], data.get("modality"))}
        return data

    @field_validator("modality")
    @classmethod
    def _registered(cls, value: str) -> str:
        try:
            get_modality(value)
        except MedzeroError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("templates")
    @classmethod
    def _one_slot(cls, value: list[str]) -> list[str]:
        for template in value:
            if template.count("{}") != 1:
                raise ValueError(f"template {template!r} must contain '{{}}' exactly once")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "Task":
        ids = [label.id for label in self.labels]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"duplicate label ids: {', '.join(dupes)}")
        verdict_ids = {v.id for v in self.verdicts}
        if NOT_APPLICABLE.id in verdict_ids:
            raise ValueError(f"verdict {NOT_APPLICABLE.id!r} is reserved for inputs outside the task (see applies_to)")
        for label in self.labels:
            if label.verdict is not None and label.verdict not in verdict_ids:
                raise ValueError(f"label {label.id!r}: verdict {label.verdict!r} is not one of the task's verdicts")
            if self.mode == "multilabel" and not label.negatives and self.default_negative is None:
                raise ValueError(
                    f"label {label.id!r}: a multilabel task needs negatives for every label or a default_negative"
                )
        for metric, rule in self.metrics.items():
            if rule.verdict is not None and rule.verdict not in verdict_ids:
                raise ValueError(f"metric {metric!r}: verdict {rule.verdict!r} is not one of the task's verdicts")
        if self.metrics:
            known = _known_metrics(self.modality)
            unknown = sorted(set(self.metrics) - set(known))
            if unknown:
                raise ValueError(
                    f"unknown metric(s) {', '.join(unknown)} for {self.modality}; known: {', '.join(known)}"
                )
        return self

    # -- helpers used by scoring -------------------------------------------------------------
    def expand(self, texts: list[str]) -> list[str]:
        """Every text in every template (``str.replace``, so braces inside prompts are safe)."""
        return [template.replace("{}", text) for text in texts for template in self.templates]

    def positive_texts(self, label: Label) -> list[str]:
        return self.expand(label.prompts)

    def negative_texts(self, label: Label) -> list[str]:
        negatives = label.negatives or ([self.default_negative] if self.default_negative else [])
        return self.expand(negatives)

    def label_ids(self) -> list[str]:
        return [label.id for label in self.labels]

    def verdict_rank(self, verdict_id: str) -> int:
        return [v.id for v in self.verdicts].index(verdict_id)

    def worst_verdict(self) -> str | None:
        return self.verdicts[-1].id if self.verdicts else None

    def verdict(self, verdict_id: str) -> Verdict:
        for v in self.verdicts:
            if v.id == verdict_id:
                return v
        if verdict_id == NOT_APPLICABLE.id:
            return NOT_APPLICABLE
        return Verdict(id=verdict_id)


def _known_metrics(modality: str) -> tuple[str, ...]:
    return get_modality(modality).metric_names


# -- loading -------------------------------------------------------------------------------------


def _format_validation_error(error: ValidationError, raw: dict, where: str) -> str:
    """``file: label 'x': field 'threshold': message`` for the first error pydantic reports."""
    first = error.errors()[0]
    loc = list(first.get("loc", ()))
    parts = [where]
    if len(loc) >= 2 and loc[0] == "labels" and isinstance(loc[1], int):
        labels = raw.get("labels") or []
        label_id = labels[loc[1]].get("id") if loc[1] < len(labels) and isinstance(labels[loc[1]], dict) else None
        parts.append(f"label {label_id!r}" if label_id else f"label #{loc[1] + 1}")
        loc = loc[2:]
    elif len(loc) >= 2 and loc[0] == "metrics":
        parts.append(f"metric {loc[1]!r}")
        loc = loc[2:]
    field = ".".join(str(p) for p in loc if not isinstance(p, int))
    if field:
        parts.append(f"field {field!r}")
    message = first.get("msg", "invalid").removeprefix("Value error, ")
    return ": ".join(parts + [message])


def parse_task(raw: Any, *, where: str) -> Task:
    if not isinstance(raw, dict):
        raise TaskError(f"{where}: a prompt set must be a YAML mapping with name, modality and labels")
    data = dict(raw)
    data["source"] = where
    try:
        return Task.model_validate(data)
    except ValidationError as exc:
        raise TaskError(_format_validation_error(exc, raw, where)) from None


def load_task_file(path: str | os.PathLike) -> Task:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TaskError(f"prompt set not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TaskError(f"cannot read prompt set {path}: {exc}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise TaskError(f"{path}: invalid YAML{at}: {getattr(exc, 'problem', exc)}") from None
    return parse_task(raw, where=str(path))


def _builtin_files() -> dict[str, Any]:
    root = importlib.resources.files("medzero.prompts")
    return {
        entry.name[: -len(".yaml")]: entry
        for entry in root.iterdir()
        if entry.name.endswith(".yaml") and not entry.name.startswith(".")
    }


@lru_cache(maxsize=None)
def _builtin(name: str) -> Task:
    entry = _builtin_files()[name]
    raw = yaml.safe_load(entry.read_text(encoding="utf-8"))
    return parse_task(raw, where=f"builtin:{name}")


def list_tasks() -> list[Task]:
    """The shipped prompt sets, sorted by name."""
    return [_builtin(name) for name in sorted(_builtin_files())]


def load_task(task: "str | os.PathLike | Task") -> Task:
    """A shipped task by name (``voice_quality``), or a YAML file by path, or a Task as it is."""
    if isinstance(task, Task):
        return task
    ref = os.fspath(task)
    if ref.endswith((".yaml", ".yml")) or os.sep in ref or Path(ref).is_file():
        return load_task_file(ref)
    files = _builtin_files()
    if ref not in files:
        raise TaskError(f"unknown task {ref!r}; shipped tasks: {', '.join(sorted(files))} (or pass a YAML file)")
    return _builtin(ref)


def task_from_labels(
    labels: "str | list[str]",
    *,
    modality: str,
    template: str | None = None,
    multilabel: bool = False,
    threshold: float = 0.5,
) -> Task:
    """An ad-hoc task from typed labels. The label id is the label text as typed.

    Multiclass by default, as in the Hugging Face zero-shot pipelines; with ``multilabel`` each
    label is scored against a neutral negative. Ad-hoc tasks have no verdict scheme: a result's
    verdict is its top-scoring label.
    """
    if isinstance(labels, str):
        labels = labels.split(",")
    names = [label.strip() for label in labels if label.strip()]
    if not names:
        raise TaskError("no labels given; pass them comma-separated, e.g. --labels 'speech,music,noise'")
    if len(set(names)) != len(names):
        raise TaskError(f"duplicate labels in {', '.join(names)}")
    try:
        kind = get_modality(modality)
    except MedzeroError as exc:
        raise TaskError(str(exc)) from None
    if not multilabel and len(names) < 2:
        raise TaskError("multiclass scoring needs at least two labels (or use --multilabel)")
    data = {
        "name": "ad-hoc",
        "modality": modality,
        "mode": "multilabel" if multilabel else "multiclass",
        "templates": [template or kind.default_template],
        "default_negative": kind.default_negative if multilabel else None,
        "labels": [{"id": n, "prompts": [n], "threshold": threshold, "polarity": "info"} for n in names],
        "verdicts": [],
    }
    return parse_task(data, where="ad-hoc labels")
