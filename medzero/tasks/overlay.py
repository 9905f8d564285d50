"""Site calibration overlays: per-label thresholds and metric limits fitted on a site's own files, applied to a Task.

An overlay is data about a task, as the task file is: a small YAML file beside it whose thresholds
replace the task's own (the task file itself is never changed). It lives with tasks, not with the
fitting in :mod:`medzero.evaluation.calibrate` that writes one, because everything that scores with
a task (the classifier, the service, the apps) reads and applies overlays, and none of them fits one.

:func:`load_overlay` reads one into a :class:`Calibration`; :func:`apply_calibration` returns the
task with the overlay's thresholds and metric limits, and that :class:`Calibration` for results to carry;
:func:`check_model` warns when scores come from another model than the overlay was fitted on;
:func:`task_sha256` is the hash an overlay records to notice a task changed since. The fields read
are ``overlay_for``, ``task_sha256``, ``model``, ``method``, ``created`` and, per label,
``threshold``, ``previous_threshold``, ``source`` and ``cv``, and, per metric rule and side
(``metrics: {snr_db: {min: {limit, previous_limit, source, cv}}}``), the limit that replaces the
rule's ``min`` or ``max`` (the whole format is in :mod:`medzero.evaluation.calibrate`). Overlays
written before metric limits were fitted have no ``metrics`` block and load as they did.

Format 2 (``format: 2``) adds two optional blocks, read by :mod:`medzero.tasks.probability`:
``probability`` (per-label maps from the raw score to a calibrated probability) and
``conformal`` (per-label split-conformal ``q̂`` at an error rate ``alpha``). An overlay without
``format`` is format 1 and loads as before; a format this medzero does not know is refused.
:meth:`Calibration.annotate` puts both on a Result: ``probabilities`` beside the raw scores, and
labels a conformal rule is not sure about in ``uncertain``; the verdict becomes ``uncertain``
when a label it is not sure about could make it worse. Maps and rules are fitted on one model's
scores: applied to another model's they are refused (thresholds alone only warn).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..core.errors import MedzeroError, TaskError
from .probability import UNCERTAIN, ConformalRule, ProbabilityMaps, parse_conformal, parse_probability
from .schema import Task, load_task

__all__ = [
    "Calibration",
    "CalibrationWarning",
    "LabelCalibration",
    "LimitCalibration",
    "UNCALIBRATED",
    "apply_calibration",
    "check_model",
    "load_overlay",
    "task_sha256",
]


class CalibrationWarning(UserWarning):
    """An overlay applied to another model or another version of its task than it was fitted on."""

#: What a result without a calibration overlay says about its thresholds.
UNCALIBRATED = "uncalibrated: thresholds are the task file's defaults, not fitted on local data"


@dataclass(frozen=True)
class LabelCalibration:
    threshold: float
    previous_threshold: float | None
    source: str
    cv: dict[str, Any] | None = None


@dataclass(frozen=True)
class LimitCalibration:
    """One side (``min`` or ``max``) of a metric rule, as fitted."""

    limit: float
    previous_limit: float | None
    source: str
    cv: dict[str, Any] | None = None


#: The sides of a metric rule an overlay may set.
SIDES = ("min", "max")
#: The newest overlay format this medzero reads (1: thresholds and metric limits; 2: + probability, conformal).
OVERLAY_FORMAT = 2


@dataclass(frozen=True)
class Calibration:
    """A parsed overlay: where the thresholds came from. ``to_dict()`` is plain JSON."""

    path: str
    sha256: str
    task: str
    task_sha256: str | None
    model: str | None
    method: str
    created: str | None
    labels: dict[str, LabelCalibration]
    #: metric -> side (``min``/``max``) -> the fitted limit; empty for an overlay of thresholds only.
    metrics: dict[str, dict[str, LimitCalibration]] = field(default_factory=dict)
    #: Per-label maps from raw score to calibrated probability (format 2), or None.
    probability: ProbabilityMaps | None = None
    #: Per-label split-conformal rule (format 2), or None.
    conformal: ConformalRule | None = None
    format: int = 1
    #: The data hash of the manifest it was fitted on (``manifest.data_sha256``), to tell held-out rows from those.
    data_sha256: str | None = None

    def summary(self) -> str:
        limits = sum(len(sides) for sides in self.metrics.values())
        fitted = f"{len(self.labels)} labels" + (f", {limits} metric limits" if limits else "")
        if self.probability is not None:
            fitted += f", {self.probability.method} probabilities"
        if self.conformal is not None:
            fitted += f", conformal alpha {self.conformal.alpha:g}"
        return f"calibrated: {os.path.basename(self.path)} ({self.method}, {fitted}, sha256 {self.sha256[:12]})"

    def metric_sources(self) -> dict[str, str]:
        """``{"snr_db.min": how it was fitted}`` for every fitted limit."""
        return {f"{m}.{side}": c.source for m, sides in self.metrics.items() for side, c in sides.items()}

    def result_info(self) -> dict[str, Any]:
        """What a Result carries (its thresholds are in ``Result.thresholds``): plain JSON."""
        return {
            "summary": self.summary(), "path": self.path, "sha256": self.sha256, "method": self.method,
            "model": self.model, "created": self.created,
            "sources": {k: v.source for k, v in self.labels.items()},
            "metric_sources": self.metric_sources(),
        }

    def annotate(self, result: Any, task: Task, metric_info: Any = None) -> None:
        """Put the overlay's probabilities and conformal decisions on a judged ``result`` of ``task``.

        ``result.scores`` stay raw. With a conformal rule the labels it covers are decided by it
        (their thresholds no longer decide them); a label it is not sure about is listed in
        ``result.uncertain``, and when calling it a problem would make the verdict worse, the
        verdict is ``uncertain`` (in scope, not sure), never ``not_applicable`` (out of scope)."""
        if not result.judged or not result.scores:
            return
        if self.probability is not None:
            result.probabilities = self.probability.apply(result.scores)
        if self.conformal is None:
            return
        from .scoring import evaluate

        rule = self.conformal
        decisions = rule.decisions(result.scores)
        result.conformal = {"alpha": rule.alpha, "coverage": 1 - rule.alpha, "decisions": decisions}
        result.uncertain = [lid for lid, d in decisions.items() if d == "uncertain"]
        decided = {lid: (None if d == "uncertain" else d == "positive", rule.cut(lid, d != "negative"))
                   for lid, d in decisions.items()}
        verdict, reasons = evaluate(task, result.scores, result.metrics, metric_info, decided=decided)
        if task.verdicts and result.uncertain:
            polarity = {lb.id: lb.polarity for lb in task.labels}
            worst = {lid: (polarity[lid] == "bad", rule.cut(lid, polarity[lid] == "bad")) for lid in result.uncertain}
            alternative, _ = evaluate(task, result.scores, result.metrics, metric_info, decided={**decided, **worst})
            if task.verdict_rank(alternative) > task.verdict_rank(verdict):
                sets = {lb.id: lb.verdict or task.worst_verdict() for lb in task.labels}
                could = [lid for lid in result.uncertain  # the labels that, present, would make the verdict worse
                         if polarity[lid] != "info" and task.verdict_rank(sets[lid]) > task.verdict_rank(verdict)]
                reasons = [self._uncertain_reason(task, lid, result.scores[lid]) for lid in could] + reasons
                verdict = UNCERTAIN.id
        kept = [r for r in result.reasons if r.kind not in ("label", "metric", "uncertain")]  # notes a postprocess added stay
        result.verdict, result.reasons = verdict, reasons + kept
        shown = UNCERTAIN if verdict == UNCERTAIN.id else (task.verdict(verdict) if task.verdicts and verdict else None)
        if shown is not None:
            result.verdict_name = {"en": shown.display("en"), "zh": shown.display("zh")}

    def _uncertain_reason(self, task: Task, lid: str, score: float) -> Any:
        from ..core.results import Reason

        label = next(lb for lb in task.labels if lb.id == lid)
        en, zh = label.display("en"), label.display("zh")
        level = f"{(1 - self.conformal.alpha) * 100:g}%"
        return Reason(
            kind="uncertain", id=lid, name={"en": en, "zh": zh}, value=float(score), limit=None, direction="",
            verdict=UNCERTAIN.id,
            message={"en": f"{en} {score:.2f}: not sure at the {level} level (conformal set holds both present and absent)",
                     "zh": f"{zh} {score:.2f}：在 {level} 置信水平下无法确定（共形预测集同时包含有和无）"},
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path, "sha256": self.sha256, "task": self.task, "task_sha256": self.task_sha256,
            "model": self.model, "method": self.method, "created": self.created, "summary": self.summary(),
            "labels": {k: {"threshold": v.threshold, "previous_threshold": v.previous_threshold, "source": v.source, "cv": v.cv}
                       for k, v in self.labels.items()},
            "metrics": {m: {side: {"limit": c.limit, "previous_limit": c.previous_limit, "source": c.source, "cv": c.cv}
                            for side, c in sides.items()} for m, sides in self.metrics.items()},
            "format": self.format,
            "probability": None if self.probability is None else {
                "method": self.probability.method, "joint": "softmax" if self.probability.joint else None,
                "labels": {k: {"map": m.to_dict(), "source": self.probability.sources.get(k), "cv": self.probability.cv.get(k)}
                           for k, m in self.probability.maps.items()}},
            "conformal": None if self.conformal is None else {
                "alpha": self.conformal.alpha,
                "labels": {k: {"qhat": q, "n": self.conformal.n.get(k), "source": self.conformal.sources.get(k),
                               "cv": self.conformal.cv.get(k)} for k, q in self.conformal.qhat.items()}},
        }


def load_overlay(path: "str | os.PathLike") -> Calibration:
    """Read a calibration overlay; a problem is one :class:`TaskError` line naming the file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise TaskError(f"calibration overlay not found: {path}") from None
    except OSError as exc:
        raise TaskError(f"cannot read calibration overlay {path}: {exc.strerror or exc}") from None
    try:
        raw = yaml.safe_load(data.decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise TaskError(f"{path}: not a valid YAML calibration overlay ({type(exc).__name__})") from None
    if (
        not isinstance(raw, dict) or not isinstance(raw.get("overlay_for"), str)
        or not any(isinstance(raw.get(k), dict) for k in ("labels", "metrics", "probability", "conformal"))
    ):
        raise TaskError(f"{path}: not a calibration overlay (needs overlay_for and labels or metrics; write one with medzero calibrate)")
    version = raw.get("format", 1)
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= OVERLAY_FORMAT:
        raise TaskError(f"{path}: overlay format {version!r} is not one this medzero reads (1 to {OVERLAY_FORMAT}); upgrade medzero or recalibrate")
    labels = {}
    for lid, entry in (raw.get("labels") or {}).items():
        threshold = entry.get("threshold") if isinstance(entry, dict) else None
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= float(threshold) <= 1.0:
            raise TaskError(f"{path}: label {lid!r}: threshold must be a number between 0 and 1")
        previous = entry.get("previous_threshold")
        labels[str(lid)] = LabelCalibration(
            float(threshold),
            float(previous) if isinstance(previous, (int, float)) and not isinstance(previous, bool) else None,
            str(entry.get("source") or "calibrated (no source recorded)"),
            entry.get("cv") if isinstance(entry.get("cv"), dict) else None,
        )
    return Calibration(
        path=str(path),
        sha256=hashlib.sha256(data).hexdigest(),
        task=raw["overlay_for"],
        task_sha256=raw.get("task_sha256"),
        model=raw.get("model"),
        method=str(raw.get("method") or "unknown"),
        created=str(raw["created"]) if raw.get("created") is not None else None,
        labels=labels,
        metrics=_metric_limits(path, raw.get("metrics")),
        probability=parse_probability(str(path), raw.get("probability")),
        conformal=parse_conformal(str(path), raw.get("conformal")),
        format=version,
        data_sha256=_fitted_rows(raw.get("manifest")),
    )


def _fitted_rows(manifest: Any) -> str | None:
    """The ``manifest.data_sha256`` an overlay records, or None."""
    value = manifest.get("data_sha256") if isinstance(manifest, dict) else None
    return value if isinstance(value, str) and value else None


def _number(value: Any) -> float | None:
    """A finite float, or None for anything else (booleans included)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        return None
    return float(value)


def _metric_limits(path: Path, block: Any) -> dict[str, dict[str, LimitCalibration]]:
    """The ``metrics`` block: metric -> side -> limit; one :class:`TaskError` line for a bad entry."""
    if block is None:
        return {}
    if not isinstance(block, dict):
        raise TaskError(f"{path}: metrics must map each metric to its fitted min/max limits")
    out: dict[str, dict[str, LimitCalibration]] = {}
    for metric, sides in block.items():
        if not isinstance(sides, dict) or not sides or any(side not in SIDES for side in sides):
            raise TaskError(f"{path}: metric {metric!r}: give min and/or max, each with its limit")
        out[str(metric)] = {}
        for side, entry in sides.items():
            limit = _number(entry.get("limit")) if isinstance(entry, dict) else None
            if limit is None:
                raise TaskError(f"{path}: metric {metric!r}: {side}: limit must be a finite number")
            out[str(metric)][side] = LimitCalibration(
                limit,
                _number(entry.get("previous_limit")),
                str(entry.get("source") or "calibrated (no source recorded)"),
                entry.get("cv") if isinstance(entry.get("cv"), dict) else None,
            )
    return out


def apply_calibration(
    task: Task, overlay: "Calibration | str | os.PathLike", *, model: str | None = None
) -> tuple[Task, Calibration]:
    """``task`` with the overlay's thresholds and metric limits (a new Task; ``task`` is unchanged)
    and the overlay.

    Refuses (:class:`TaskError`) an overlay made for another task, naming labels the task does
    not have, or setting a metric limit the task has no rule for (a ``max`` on a rule with only a
    ``min`` included: the overlay changes limits, it does not add rules). Warns when the task's content changed since calibration, and when ``model`` (the
    fingerprint that will score) is not the one the overlay was fitted with."""
    calibration = overlay if isinstance(overlay, Calibration) else load_overlay(overlay)
    where = os.path.basename(calibration.path)
    if calibration.task != task.name:
        raise TaskError(f"{where} is a calibration for task {calibration.task}, not {task.name}")
    ids = task.label_ids()
    named = [*calibration.labels, *(calibration.probability.maps if calibration.probability else ()),
             *(calibration.conformal.qhat if calibration.conformal else ())]
    unknown = list(dict.fromkeys(lid for lid in named if lid not in ids))
    if unknown:
        raise TaskError(f"{where} names label(s) {', '.join(unknown)} that task {task.name} does not have ({', '.join(ids)})")
    if calibration.probability is not None and calibration.probability.joint and task.mode != "multiclass":
        raise TaskError(f"{where} has a joint (softmax) temperature, but task {task.name} is {task.mode}")
    _check_metrics(task, calibration, where)
    if calibration.task_sha256:
        current = task_sha256(task)[0]
        if current != calibration.task_sha256:
            warnings.warn(
                f"{where} was fitted for a different version of task {task.name} (task sha256 {calibration.task_sha256[:12]}, now {current[:12]}); recalibrate",
                CalibrationWarning, stacklevel=2,
            )
    if model is not None:
        check_model(calibration, model)
    labels = [
        lb.model_copy(update={"threshold": calibration.labels[lb.id].threshold}) if lb.id in calibration.labels else lb
        for lb in task.labels
    ]
    metrics = {
        name: rule.model_copy(update={side: c.limit for side, c in calibration.metrics.get(name, {}).items()})
        for name, rule in task.metrics.items()
    }
    return task.model_copy(update={"labels": labels, "metrics": metrics}, deep=True), calibration


def _check_metrics(task: Task, calibration: Calibration, where: str) -> None:
    for name, sides in calibration.metrics.items():
        rule = task.metrics.get(name)
        if rule is None:
            have = ", ".join(task.metrics) or "none"
            raise TaskError(f"{where} sets a limit on metric {name} that task {task.name} has no rule for (its rules: {have})")
        for side in sides:
            if getattr(rule, side) is None:
                raise TaskError(f"{where} sets the {side} of metric {name}, but task {task.name}'s rule has no {side}")


def check_model(calibration: Calibration, fingerprint: str) -> bool:
    """Warn (and return False) when scores come from another model than the overlay was fitted on.

    An overlay with probability maps or a conformal rule is refused instead (:class:`TaskError`):
    they are functions of one model's scores and mean nothing for another's."""
    fitted_on = {m.strip() for m in (calibration.model or "").split(",")}  # a manifest of both modalities names two
    if calibration.model and fingerprint and fingerprint not in fitted_on and (calibration.probability or calibration.conformal):
        raise TaskError(
            f"{os.path.basename(calibration.path)}: its probability maps and conformal rule were fitted on model "
            f"{calibration.model}, but scores come from {fingerprint}; recalibrate on this model"
        )
    if calibration.model and fingerprint and calibration.model != fingerprint:
        warnings.warn(
            f"{os.path.basename(calibration.path)} was fitted on model {calibration.model}, but scores come from {fingerprint}; its thresholds may not fit",
            CalibrationWarning, stacklevel=2,
        )
        return False
    return True


def task_sha256(task: Task) -> tuple[str, str]:
    """``(hex, basis)``: the sha256 of the task's YAML file when the task is exactly that file's
    content, else of its canonical JSON (sorted keys, without ``source``)."""
    source = task.source
    if source and not source.startswith(("builtin:", "ad-hoc")) and os.path.isfile(source):
        try:
            same = load_task(source).model_dump() == task.model_dump()
        except MedzeroError:
            same = False
        if same:
            return hashlib.sha256(Path(source).read_bytes()).hexdigest(), "file"
    blob = json.dumps(task.model_dump(mode="json", exclude={"source"}), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest(), "canonical-json"
