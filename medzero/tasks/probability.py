"""Probability maps and conformal rules from a site overlay, applied to a result's raw scores.

A task's scores are the model's softmax (multiclass) or two-way softmax (multilabel) outputs:
they order inputs well but are not probabilities a clinician can read as "how often". A site
overlay may carry, per label, a map fitted on the site's labelled files (by
:mod:`medzero.evaluation.probability`) from the raw score ``s`` to a calibrated probability:

- ``platt``: ``p = 1 / (1 + exp(-(a·s + b)))``, logistic regression on the raw score itself;
- ``isotonic``: a non-decreasing step table (pool-adjacent-violators), linearly interpolated
  between its points and clipped to its ends (scikit-learn's ``IsotonicRegression`` with
  ``out_of_bounds="clip"``);
- ``temperature``: one scalar ``T`` dividing the logit the score came from. Multilabel: per label,
  ``p = σ(logit(s) / T)``, where ``logit(s)`` is exactly ``logit_scale · e·(pos − neg)``, the
  two-way softmax's logit, so ``T`` divides the model's logit scale for that label. Multiclass
  (``joint: softmax``): one ``T`` for the task, ``p = softmax(log s / T)`` across the labels,
  which equals ``softmax(logit_scale · e·Cᵀ / T)``. Scores are clipped to ``[1e-15, 1 − 1e-15]``
  before the logarithm.

The raw scores stay in ``Result.scores``; the maps' output goes to ``Result.probabilities``.

A **conformal rule** (split conformal, per label) decides a label only when it is sure at a
stated error rate ``alpha``: the non-conformity of a label value ``y`` is ``1 − p̂(y)`` with
``p̂(1) = s`` and ``p̂(0) = 1 − s``, the **raw** score (so the rule does not depend on a map
fitted on the same rows), and ``q̂`` is the ``⌈(n + 1)(1 − alpha)⌉``-th smallest non-conformity
of the ``n`` calibration rows (1 when that exceeds ``n``). The prediction set is every ``y``
with ``1 − p̂(y) ≤ q̂``; it holds the true value with probability at least ``1 − alpha`` for a
new input exchangeable with the calibration rows. A set ``{present}`` or ``{absent}`` decides
the label; both, or neither, leave it ``uncertain``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from ..core.errors import TaskError
from .schema import Localized, Verdict

__all__ = [
    "EPS",
    "PROBABILITY_METHODS",
    "UNCERTAIN",
    "ProbabilityMap",
    "ProbabilityMaps",
    "ConformalRule",
    "conformal_quantile",
    "decide",
    "logit",
    "parse_probability",
    "parse_conformal",
]

#: Scores are clipped to ``[EPS, 1 − EPS]`` before a logarithm.
EPS = 1e-15
PROBABILITY_METHODS = ("platt", "isotonic", "temperature")

#: The verdict of an input the task judges but a conformal rule is not sure about: "in scope, not
#: sure". Distinct from ``not_applicable`` ("input out of scope").
UNCERTAIN = Verdict(id="uncertain", name=Localized(en="Uncertain", zh="不确定"))


def logit(s: Any) -> np.ndarray:
    s = np.clip(np.asarray(s, dtype=np.float64), EPS, 1 - EPS)
    return np.log(s) - np.log1p(-s)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # no overflow for large |z|


@dataclass(frozen=True)
class ProbabilityMap:
    """One label's map from its raw score to a calibrated probability."""

    method: str
    params: dict[str, Any]

    def __call__(self, s: Any) -> np.ndarray:
        s = np.asarray(s, dtype=np.float64)
        if self.method == "platt":
            return _sigmoid(self.params["a"] * s + self.params["b"])
        if self.method == "isotonic":
            x, y = np.asarray(self.params["x"]), np.asarray(self.params["y"])
            return np.interp(np.clip(s, x[0], x[-1]), x, y)
        return _sigmoid(logit(s) / self.params["temperature"])

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(map(float, v)) if isinstance(v, (list, tuple, np.ndarray)) else float(v)) for k, v in self.params.items()}


@dataclass(frozen=True)
class ProbabilityMaps:
    """Every fitted label's map; ``joint`` is the multiclass temperature (one softmax across labels)."""

    method: str
    maps: dict[str, ProbabilityMap]
    joint: bool = False
    sources: dict[str, str] = field(default_factory=dict)
    cv: dict[str, dict[str, Any] | None] = field(default_factory=dict)

    def apply(self, scores: Mapping[str, float]) -> dict[str, float]:
        """``{label: calibrated probability}`` for the labels with a map."""
        if self.joint:
            ids = list(scores)
            t = next(iter(self.maps.values())).params["temperature"]
            z = np.log(np.clip([scores[i] for i in ids], EPS, 1.0)) / t
            p = np.exp(z - z.max())
            p /= p.sum()
            return {lid: float(v) for lid, v in zip(ids, p) if lid in self.maps}
        return {lid: float(m(scores[lid])) for lid, m in self.maps.items() if lid in scores}


def conformal_quantile(nonconformity: Sequence[float], alpha: float) -> float:
    """``q̂``: the ``⌈(n + 1)(1 − alpha)⌉``-th smallest value (1 when that exceeds ``n``)."""
    values = np.sort(np.asarray(nonconformity, dtype=np.float64))
    k = math.ceil((values.size + 1) * (1 - alpha) - 1e-9)
    return 1.0 if k > values.size else float(values[max(k, 1) - 1])


def decide(s: float, qhat: float) -> str:
    """``positive``, ``negative`` or ``uncertain`` from a raw score and a label's ``q̂``."""
    present, absent = 1.0 - s <= qhat, s <= qhat
    if present != absent:
        return "positive" if present else "negative"
    return "uncertain"


@dataclass(frozen=True)
class ConformalRule:
    """Per-label ``q̂`` at the error rate ``alpha`` (see the module docstring)."""

    alpha: float
    qhat: dict[str, float]
    n: dict[str, int] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    cv: dict[str, dict[str, Any] | None] = field(default_factory=dict)

    def decisions(self, scores: Mapping[str, float]) -> dict[str, str]:
        return {lid: decide(float(scores[lid]), q) for lid, q in self.qhat.items() if lid in scores}

    def cut(self, label: str, present: bool) -> float:
        """The raw score at or beyond which the label is decided present (or absent)."""
        q = self.qhat[label]
        return max(q, 1.0 - q) if present else min(q, 1.0 - q)


# -- reading the overlay's blocks ------------------------------------------------------------------


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        return None
    return float(value)


def _table(where: str, lid: str, entry: Mapping[str, Any]) -> dict[str, Any]:
    x, y = entry.get("x"), entry.get("y")
    if not isinstance(x, list) or not isinstance(y, list) or not x or len(x) != len(y):
        raise TaskError(f"{where}: label {lid!r}: an isotonic map needs lists x and y of the same, non-zero length")
    xs, ys = [_finite(v) for v in x], [_finite(v) for v in y]
    if None in xs or None in ys:
        raise TaskError(f"{where}: label {lid!r}: isotonic table values must be finite numbers")
    if any(b <= a for a, b in zip(xs, xs[1:])):
        raise TaskError(f"{where}: label {lid!r}: isotonic table x must be strictly increasing")
    if any(b < a for a, b in zip(ys, ys[1:])) or ys[0] < 0 or ys[-1] > 1:
        raise TaskError(f"{where}: label {lid!r}: isotonic table y must be non-decreasing probabilities in [0, 1]")
    return {"x": xs, "y": ys}


def _one_map(where: str, method: str, lid: str, entry: Any) -> ProbabilityMap:
    if not isinstance(entry, dict):
        raise TaskError(f"{where}: label {lid!r}: probability map must be a mapping")
    if method == "platt":
        a, b = _finite(entry.get("a")), _finite(entry.get("b"))
        if a is None or b is None:
            raise TaskError(f"{where}: label {lid!r}: a platt map needs finite numbers a and b")
        return ProbabilityMap(method, {"a": a, "b": b})
    if method == "isotonic":
        return ProbabilityMap(method, _table(where, lid, entry))
    t = _finite(entry.get("temperature"))
    if t is None or t <= 0:
        raise TaskError(f"{where}: label {lid!r}: temperature must be a positive finite number")
    return ProbabilityMap(method, {"temperature": t})


def parse_probability(where: str, block: Any) -> ProbabilityMaps | None:
    """The overlay's ``probability`` block; one :class:`TaskError` line for anything wrong in it."""
    if block is None:
        return None
    if not isinstance(block, dict) or block.get("method") not in PROBABILITY_METHODS or not isinstance(block.get("labels"), dict):
        raise TaskError(f"{where}: probability needs a method ({', '.join(PROBABILITY_METHODS)}) and labels with their maps")
    method = block["method"]
    maps, sources, cv = {}, {}, {}
    for lid, entry in block["labels"].items():
        if not isinstance(entry, dict):
            raise TaskError(f"{where}: label {lid!r}: probability map must be a mapping")
        maps[str(lid)] = _one_map(where, method, str(lid), entry.get("map"))
        sources[str(lid)] = str(entry.get("source") or "calibrated (no source recorded)")
        cv[str(lid)] = entry.get("cv") if isinstance(entry.get("cv"), dict) else None
    joint = block.get("joint") == "softmax"
    if joint and (method != "temperature" or len({m.params["temperature"] for m in maps.values()}) > 1):
        raise TaskError(f"{where}: a joint (softmax) probability map is one temperature shared by every label")
    return ProbabilityMaps(method, maps, joint, sources, cv)


def parse_conformal(where: str, block: Any) -> ConformalRule | None:
    """The overlay's ``conformal`` block; one :class:`TaskError` line for anything wrong in it."""
    if block is None:
        return None
    alpha = _finite(block.get("alpha")) if isinstance(block, dict) else None
    if alpha is None or not 0 < alpha < 1 or not isinstance(block.get("labels"), dict):
        raise TaskError(f"{where}: conformal needs alpha in (0, 1) and labels with their qhat")
    qhat, n, sources, cv = {}, {}, {}, {}
    for lid, entry in block["labels"].items():
        q = _finite(entry.get("qhat")) if isinstance(entry, dict) else None
        if q is None or not 0 <= q <= 1:
            raise TaskError(f"{where}: label {lid!r}: conformal qhat must be a number between 0 and 1")
        qhat[str(lid)] = q
        n[str(lid)] = int(entry.get("n") or 0)
        sources[str(lid)] = str(entry.get("source") or "calibrated (no source recorded)")
        cv[str(lid)] = entry.get("cv") if isinstance(entry.get("cv"), dict) else None
    return ConformalRule(alpha, qhat, n, sources, cv)
