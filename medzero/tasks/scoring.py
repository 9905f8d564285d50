"""Zero-shot scoring: class embeddings, multiclass and multilabel probabilities, verdicts.

- A label's class embedding is the mean of the L2-normalised embeddings of all its prompts in all
  templates, re-normalised (open_clip's ``build_zero_shot_classifier``).
- Multiclass: ``p = softmax(logit_scale · e·Cᵀ)`` across the labels.
- Multilabel (the CheXzero method): for each label on its own,
  ``p = softmax(logit_scale · [e·pos, e·neg])[0]``, so labels do not compete.
- Each label (and each waveform metric with a rule) is compared with its limit and polarity; the
  verdict is the worst verdict any of them triggers, else the task's first (best) verdict.
- Before any of that, :func:`applicability` says whether the input is what the task judges (its
  ``applies_to`` block: the modality's checks, then the zero-shot gate, a multiclass softmax of
  the gate's class against the others, scored on the embedding already made). An input outside
  the task gets the verdict ``not_applicable``, never a triage level.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from ..encoders.cache import TextEmbeddingCache, text_cache
from ..core.contracts import Encoder
from .schema import NOT_APPLICABLE, Task, applies_to_checks
from ..core.results import Reason, format_values
from ..core.vectors import l2_normalise

__all__ = ["TaskHead", "build_head", "class_embeddings", "evaluate", "Applicability", "applicability"]


def class_embeddings(
    encoder: Encoder, groups: list[list[str]], *, cache: TextEmbeddingCache | None = None
) -> np.ndarray:
    """(len(groups), dim): per group, the re-normalised mean of its texts' normalised embeddings."""
    cache = cache or text_cache()
    flat = [text for group in groups for text in group]
    vectors = l2_normalise(cache.get_or_compute(encoder.fingerprint, flat, encoder.embed_text))
    out, start = [], 0
    for group in groups:
        out.append(vectors[start : start + len(group)].mean(axis=0))
        start += len(group)
    return l2_normalise(np.stack(out))


def _softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=-1, keepdims=True)


@dataclass(frozen=True)
class TaskHead:
    """A task's text side, computed once per (encoder, task) and applied to any number of embeddings."""

    task: Task
    fingerprint: str
    logit_scale: float
    positives: np.ndarray  # (labels, dim)
    negatives: np.ndarray | None  # (labels, dim), multilabel only
    #: (1 + others, dim): the ``applies_to.gate`` class, then each other kind of input; or None.
    gate: np.ndarray | None = None

    def gate_scores(self, embeddings: np.ndarray) -> np.ndarray | None:
        """(n,) probabilities of the gate's class against the others, or ``None`` without a gate."""
        if self.gate is None:
            return None
        e = np.asarray(embeddings, dtype=np.float64)
        if e.ndim == 1:
            e = e[None]
        return _softmax(self.logit_scale * (e @ self.gate.astype(np.float64).T))[:, 0]

    def scores(self, embeddings: np.ndarray) -> np.ndarray:
        """(n, labels) probabilities for (n, dim) normalised embeddings."""
        e = np.asarray(embeddings, dtype=np.float64)
        if e.ndim == 1:
            e = e[None]
        pos = self.logit_scale * (e @ self.positives.astype(np.float64).T)
        if self.negatives is None:
            return _softmax(pos)
        neg = self.logit_scale * (e @ self.negatives.astype(np.float64).T)
        return _softmax(np.stack([pos, neg], axis=-1))[..., 0]

    def as_dict(self, row: np.ndarray) -> dict[str, float]:
        return {label_id: float(p) for label_id, p in zip(self.task.label_ids(), row)}


def build_head(task: Task, encoder: Encoder, *, cache: TextEmbeddingCache | None = None) -> TaskHead:
    groups = [task.positive_texts(label) for label in task.labels]
    if task.mode == "multilabel":
        groups += [task.negative_texts(label) for label in task.labels]
    n_task = len(groups)
    gate = task.applies_to.gate if task.applies_to is not None else None
    if gate is not None:
        groups += gate.groups()
    # One pass over all the texts, so the encoder sees every new prompt in a single batch.
    embeddings = class_embeddings(encoder, groups, cache=cache)
    n = len(task.labels)
    negatives = embeddings[n:n_task] if task.mode == "multilabel" else None
    gate_classes = embeddings[n_task:] if gate is not None else None
    return TaskHead(task, encoder.fingerprint, float(encoder.logit_scale), embeddings[:n], negatives, gate_classes)


def _names(localized, fallback: str) -> dict[str, str]:
    if localized is None:
        return {"en": fallback, "zh": fallback}
    return {"en": localized.en, "zh": localized.zh or localized.en}


def evaluate(
    task: Task,
    scores: Mapping[str, float],
    metrics: Mapping[str, float] | None = None,
    metric_info: Mapping[str, Mapping[str, str]] | None = None,
    *,
    decided: Mapping[str, tuple[bool | None, float]] | None = None,
) -> tuple[str | None, list[Reason]]:
    """The verdict and its reasons, worst first.

    Tasks with no verdicts (ad-hoc labels) get their top-scoring label as the verdict.
    ``decided`` (a site overlay's conformal rule) gives, per label it covers, ``(present, cut)``:
    whether the label is present (``None``: not sure, so no reason) and the score the decision
    turned on; those labels are judged by it instead of their threshold.
    """
    if not task.verdicts:
        top = max(scores, key=scores.get) if scores else None
        return top, []
    worst = task.worst_verdict()
    reasons: list[Reason] = []
    for label in sorted(task.labels, key=lambda lb: -scores.get(lb.id, 0.0)):
        value = scores.get(label.id)
        if value is None or label.polarity == "info":
            continue
        present, limit = (decided or {}).get(label.id, (value >= label.threshold, label.threshold))
        problem = present is not None and present == (label.polarity == "bad")
        if problem:
            reasons.append(
                Reason(
                    kind="label",
                    id=label.id,
                    name=_names(label.name, label.id),
                    value=float(value),
                    limit=float(limit),
                    direction="above" if label.polarity == "bad" else "below",
                    verdict=label.verdict or worst,
                    advice=_names(label.advice, "") if label.advice else None,
                )
            )
    for metric, rule in task.metrics.items():
        value = (metrics or {}).get(metric)
        if value is None:
            continue
        info = (metric_info or {}).get(metric, {})
        name = _names(rule.name, metric) if rule.name else {"en": info.get("en", metric), "zh": info.get("zh", metric)}
        unit = rule.unit if rule.unit is not None else info.get("unit", "")
        for limit, direction, problem in (
            (rule.min, "below", rule.min is not None and value < rule.min),
            (rule.max, "above", rule.max is not None and value > rule.max),
        ):
            if problem:
                reasons.append(
                    Reason(
                        kind="metric",
                        id=metric,
                        name=name,
                        value=float(value),
                        limit=float(limit),
                        direction=direction,
                        verdict=rule.verdict or worst,
                        unit=unit,
                        advice=_names(rule.advice, "") if rule.advice else None,
                    )
                )
    if not reasons:
        return task.verdicts[0].id, []
    reasons.sort(key=lambda r: -task.verdict_rank(r.verdict))
    return reasons[0].verdict, reasons


@dataclass(frozen=True)
class Applicability:
    """Whether an input is what its task judges; ``detail`` is plain JSON for the Result."""

    applicable: bool
    reasons: list[Reason] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)


def applicability(
    task: Task,
    metadata: Mapping[str, Any] | None = None,
    metrics: Mapping[str, float] | None = None,
    gate_score: float | None = None,
) -> Applicability | None:
    """What the task's ``applies_to`` block says of one input; ``None`` for a task without one.

    Every modality check runs; any that fails makes the input not applicable (its reasons say
    why). Otherwise, when no check settles it (none declared, or one cannot tell), the gate
    decides: a ``gate_score`` under ``min_score`` is not applicable. Without a score (no model:
    a signal-only verdict) the gate cannot decide and does not reject.
    """
    scope = task.applies_to
    if scope is None:
        return None
    what = scope.what_names(task.name)
    registered = applies_to_checks(task.modality)
    found: dict[str, str] = {}
    reasons: list[Reason] = []
    for key, params in scope.checks.items():
        in_scope, why = registered[key].check(params, metadata or {}, metrics or {}, what)
        found[key] = "pass" if in_scope is True else "fail" if in_scope is False else "unknown"
        if in_scope is False:
            reasons.extend(why)
    applicable = "fail" not in found.values()
    detail: dict[str, Any] = {"checks": found}
    if scope.gate is not None:
        decides = applicable and (not found or "unknown" in found.values()) and gate_score is not None
        score = None if gate_score is None else float(gate_score)
        detail["gate"] = {"score": score, "min_score": scope.gate.min_score, "decides": decides}
        if decides and score < scope.gate.min_score:
            applicable = False
            value, limit = format_values(score, scope.gate.min_score)
            reasons.append(
                Reason(
                    kind="applicability",
                    id="gate",
                    name={"en": "Zero-shot check", "zh": "零样本判别"},
                    value=score,
                    limit=scope.gate.min_score,
                    direction="below",
                    verdict=NOT_APPLICABLE.id,
                    message={
                        "en": f"Zero-shot check {value} below {limit}: does not look like {what['en']}",
                        "zh": f"零样本判别 {value} 低于 {limit}：不像{what['zh']}",
                    },
                )
            )
    return Applicability(applicable, reasons, detail)
