"""Fitting calibrated probabilities and conformal rules on a site's labelled scores.

What the maps and rules mean, and how a result applies them, is :mod:`medzero.tasks.probability`;
here they are fitted, cross-validated like the thresholds (stratified, seeded k folds: each fold
is mapped by what was fitted on the others, and the held-out figures are pooled).

- :func:`fit_platt`: minimises ``Σ log-loss + a² / (2C)`` over ``(a, b)`` by damped Newton steps,
  with ``C`` = :data:`PLATT_C` = 1e8, the objective of scikit-learn's
  ``LogisticRegression(C=1e8)`` (the intercept unpenalised): effectively unpenalised, yet finite
  when the scores separate the classes perfectly.
- :func:`fit_isotonic`: pool-adjacent-violators on the distinct scores (tied scores first
  averaged), as scikit-learn's ``IsotonicRegression(out_of_bounds="clip")``; the table keeps only
  the points where the fitted value changes (the same function once interpolated).
- :func:`fit_temperature`: the ``T`` minimising the log-loss of ``σ(logit(s) / T)``;
  :func:`fit_joint_temperature`: the multiclass ``T`` minimising the log-loss of
  ``softmax(log s / T)`` over the rows whose class is known. Both are convex in ``1 / T``,
  solved by Newton's method, ``1 / T`` kept within [1e-3, 1e3].
- :func:`fit_conformal`: ``q̂`` of the raw-score non-conformity (see the task module).

Reported figures: ECE over :data:`medzero.evaluation.metrics.N_BINS` equal-width bins, Brier, and
log-loss, each of the raw scores and of the cross-validated probabilities on the same rows;
conformal coverage with its 95 % Wilson score interval (:func:`coverage_interval`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from ..core.errors import TaskError
from ..tasks.probability import EPS, PROBABILITY_METHODS, ProbabilityMap, conformal_quantile, decide, logit
from ..tasks.schema import Task
from . import metrics as M

__all__ = [
    "PLATT_C",
    "ProbabilityFit",
    "ConformalFit",
    "fit_platt",
    "fit_isotonic",
    "fit_temperature",
    "fit_joint_temperature",
    "fit_map",
    "fit_conformal",
    "nonconformity",
    "coverage_interval",
    "coverage_figures",
    "log_loss",
    "calibrate_probabilities",
    "calibrate_conformal",
]

#: Inverse L2 strength of the Platt slope (scikit-learn's ``C``): effectively unpenalised.
PLATT_C = 1e8
_BETA = (1e-3, 1e3)


# -- the maps -----------------------------------------------------------------------------------------


def _xy(y: Sequence, s: Sequence) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(y, dtype=np.float64), np.asarray(s, dtype=np.float64)


def fit_platt(y: Sequence, s: Sequence, *, C: float = PLATT_C) -> ProbabilityMap:
    """``p = σ(a·s + b)``: logistic regression of ``y`` on the raw score (see the module docstring)."""
    y, s = _xy(y, s)
    X = np.column_stack([s, np.ones_like(s)])
    ridge = np.array([1.0 / C, 0.0])
    mean = min(max(y.mean(), 1e-6), 1 - 1e-6)
    w = np.array([0.0, math.log(mean / (1 - mean))])

    def objective(w):
        z = X @ w
        return float(np.sum(np.logaddexp(0, z) - y * z) + 0.5 * np.sum(ridge * w * w))

    f = objective(w)
    for _ in range(200):
        p = 1 / (1 + np.exp(-(X @ w)))
        grad = X.T @ (p - y) + ridge * w
        hess = (X * (p * (1 - p))[:, None]).T @ X + np.diag(ridge)
        step = np.linalg.solve(hess + 1e-300 * np.eye(2), grad)
        t = 1.0
        while t > 1e-10:
            new = w - t * step
            fn = objective(new)
            if fn <= f:
                break
            t /= 2
        else:
            break
        done = f - fn <= 1e-15 * max(1.0, abs(f)) and np.max(np.abs(t * step)) <= 1e-12 * max(1.0, np.max(np.abs(w)))
        w, f = new, fn
        if done:
            break
    return ProbabilityMap("platt", {"a": float(w[0]), "b": float(w[1])})


def fit_isotonic(y: Sequence, s: Sequence) -> ProbabilityMap:
    """The non-decreasing least-squares fit of ``y`` on ``s``, as a table (see the module docstring)."""
    y, s = _xy(y, s)
    x, inverse = np.unique(s, return_inverse=True)
    weight = np.bincount(inverse).astype(np.float64)
    mean = np.bincount(inverse, weights=y) / weight
    values, weights, sizes = [], [], []
    for v, wt in zip(mean, weight):  # pool adjacent violators
        values.append(v), weights.append(wt), sizes.append(1)
        while len(values) > 1 and values[-2] > values[-1]:
            wt = weights[-2] + weights[-1]
            v = (values[-2] * weights[-2] + values[-1] * weights[-1]) / wt
            n = sizes[-2] + sizes[-1]
            del values[-2:], weights[-2:], sizes[-2:]
            values.append(v), weights.append(wt), sizes.append(n)
    fitted = np.repeat(values, sizes)
    keep = np.ones(x.size, dtype=bool)
    if x.size > 2:
        keep[1:-1] = (fitted[1:-1] != fitted[:-2]) | (fitted[1:-1] != fitted[2:])
    return ProbabilityMap("isotonic", {"x": x[keep].tolist(), "y": np.clip(fitted[keep], 0, 1).tolist()})


def _newton_beta(grad_hess, beta: float = 1.0) -> float:
    """Minimise a convex function of ``beta`` given ``beta -> (gradient, curvature)``."""
    lo, hi = _BETA
    for _ in range(100):
        g, h = grad_hess(beta)
        if h <= 0:
            break
        new = min(max(beta - g / h, max(lo, beta / 10)), min(hi, beta * 10))
        if abs(new - beta) <= 1e-12 * beta:
            beta = new
            break
        beta = new
    return beta


def fit_temperature(y: Sequence, s: Sequence) -> ProbabilityMap:
    """``p = σ(logit(s) / T)`` with ``T`` minimising the log-loss."""
    y, s = _xy(y, s)
    z = logit(s)

    def grad_hess(beta):
        p = 1 / (1 + np.exp(-beta * z))
        return float(np.sum((p - y) * z)), float(np.sum(p * (1 - p) * z * z))

    return ProbabilityMap("temperature", {"temperature": 1.0 / _newton_beta(grad_hess)})


def fit_joint_temperature(classes: Sequence[int], S: np.ndarray) -> ProbabilityMap:
    """Multiclass: ``softmax(log s / T)`` with ``T`` minimising the log-loss of the true classes."""
    classes = np.asarray(classes, dtype=np.int64)
    Z = np.log(np.clip(np.asarray(S, dtype=np.float64), EPS, 1.0))
    zy = Z[np.arange(classes.size), classes]

    def grad_hess(beta):
        P = np.exp(beta * Z - (beta * Z).max(axis=1, keepdims=True))
        P /= P.sum(axis=1, keepdims=True)
        mean = (P * Z).sum(axis=1)
        return float(np.sum(mean - zy)), float(np.sum((P * Z * Z).sum(axis=1) - mean ** 2))

    return ProbabilityMap("temperature", {"temperature": 1.0 / _newton_beta(grad_hess)})


def fit_map(method: str, y: Sequence, s: Sequence) -> ProbabilityMap:
    if method == "platt":
        return fit_platt(y, s)
    if method == "isotonic":
        return fit_isotonic(y, s)
    if method == "temperature":
        return fit_temperature(y, s)
    raise TaskError(f"unknown probability method {method!r}; use one of {', '.join(PROBABILITY_METHODS)}")


def log_loss(y: Sequence, p: Sequence) -> float:
    y, p = _xy(y, p)
    p = np.clip(p, EPS, 1 - EPS)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p))) if y.size else float("nan")


def _figures(y: np.ndarray, raw: np.ndarray, p: np.ndarray) -> dict[str, Any]:
    return {
        "n": int(y.size),
        "ece_raw": M.expected_calibration_error(y, raw), "ece": M.expected_calibration_error(y, p),
        "brier_raw": M.brier_score(y, raw), "brier": M.brier_score(y, p),
        "log_loss_raw": log_loss(y, raw), "log_loss": log_loss(y, p),
    }


# -- per label, cross-validated ---------------------------------------------------------------------


@dataclass(frozen=True)
class ProbabilityFit:
    id: str
    n_pos: int
    n_neg: int
    map: ProbabilityMap | None  # None: not fitted (see ``skipped``)
    apparent: dict[str, Any] | None  # raw and mapped figures on the rows it was fitted on
    cv: dict[str, Any] | None  # raw and held-out figures, pooled over the folds
    skipped: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "n_pos": self.n_pos, "n_neg": self.n_neg, "map": None if self.map is None else self.map.to_dict(),
                "apparent": self.apparent, "cv": self.cv, "skipped": self.skipped}


def _known(truth: Sequence, scores: Sequence) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(truth, dtype=np.float64)
    known = ~np.isnan(t)
    return t[known].astype(np.int64), np.asarray(scores, dtype=np.float64)[known]


def calibrate_probabilities(
    task: Task,
    truth: Mapping[str, Sequence[float]],
    scores: Mapping[str, Sequence[float]],
    *,
    method: str,
    assign: Any,
    folds: int = 5,
) -> list[ProbabilityFit]:
    """A probability map per label with a truth column, and its cross-validated figures.

    ``assign(y, k)`` gives each row its fold (stratified, seeded: the thresholds' own folds).
    A multiclass task with ``temperature`` gets one joint temperature (see the task module)."""
    if method not in PROBABILITY_METHODS:
        raise TaskError(f"unknown probability method {method!r}; use one of {', '.join(PROBABILITY_METHODS)}")
    if method == "temperature" and task.mode == "multiclass":
        return _joint_temperature(task, truth, scores, assign, folds)
    fits = []
    for label in task.labels:
        if label.id not in truth:
            continue
        y, s = _known(truth[label.id], scores[label.id])
        n_pos, n_neg = int(y.sum()), int(y.size - y.sum())
        if n_pos == 0 or n_neg == 0:
            fits.append(ProbabilityFit(label.id, n_pos, n_neg, None, None, None, skipped="needs positive and negative rows"))
            continue
        fitted = fit_map(method, y, s)
        k = min(folds, n_pos, n_neg)
        cv = None
        if k >= 2:
            assignment = assign(y, k)
            held = np.empty_like(s)
            for f in range(k):
                train = assignment != f
                held[~train] = fit_map(method, y[train], s[train])(s[~train])
            cv = {"folds": k, **_figures(y, s, held)}
        fits.append(ProbabilityFit(label.id, n_pos, n_neg, fitted, _figures(y, s, fitted(s)), cv))
    return fits


def _joint_temperature(task, truth, scores, assign, folds) -> list[ProbabilityFit]:
    ids = task.label_ids()
    S = np.column_stack([np.asarray(scores[lid], dtype=np.float64) for lid in ids])
    classes = np.full(S.shape[0], -1)
    for j, lid in enumerate(ids):
        if lid in truth:
            classes[np.asarray(truth[lid], dtype=np.float64) == 1] = j
    rows = classes >= 0
    if rows.sum() < 2:
        return [ProbabilityFit(lid, 0, 0, None, None, None, skipped="needs rows whose class is known") for lid in ids]
    c, Sk = classes[rows], S[rows]
    fitted = fit_joint_temperature(c, Sk)

    def mapped(m, X):
        Z = np.log(np.clip(X, EPS, 1.0)) / m.params["temperature"]
        P = np.exp(Z - Z.max(axis=1, keepdims=True))
        return P / P.sum(axis=1, keepdims=True)

    k = min(folds, int(rows.sum()))
    held = None
    if k >= 2:
        assignment = assign((c == c[0]).astype(np.int64), k)
        held = np.empty_like(Sk)
        for f in range(k):
            train = assignment != f
            held[~train] = mapped(fit_joint_temperature(c[train], Sk[train]), Sk[~train])
    apparent = mapped(fitted, Sk)
    fits = []
    for j, lid in enumerate(ids):
        y = (c == j).astype(np.int64)
        cv = None if held is None else {"folds": k, **_figures(y, Sk[:, j], held[:, j])}
        fits.append(ProbabilityFit(lid, int(y.sum()), int(y.size - y.sum()), fitted, _figures(y, Sk[:, j], apparent[:, j]), cv))
    return fits


# -- conformal --------------------------------------------------------------------------------------


def nonconformity(y: Sequence, s: Sequence) -> np.ndarray:
    """``1 − p̂(y)`` with ``p̂(1) = s``, ``p̂(0) = 1 − s`` (the raw score)."""
    y, s = _xy(y, s)
    return np.where(y == 1, 1.0 - s, s)


def fit_conformal(y: Sequence, s: Sequence, alpha: float) -> float:
    """``q̂`` at error rate ``alpha`` from calibration rows ``(y, s)``."""
    return conformal_quantile(nonconformity(y, s), alpha)


def coverage_interval(covered: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (``nan`` for ``n = 0``)."""
    if n == 0:
        return float("nan"), float("nan")
    z = {0.95: 1.959963984540054, 0.99: 2.5758293035489004}[level]
    p = covered / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def coverage_figures(y: np.ndarray, s: np.ndarray, qhat: Any, alpha: float) -> dict[str, Any]:
    """Empirical coverage of the sets ``{y: 1 − p̂(y) ≤ q̂}`` (``qhat`` a number or one per row)."""
    q = np.broadcast_to(np.asarray(qhat, dtype=np.float64), s.shape)
    covered = int(np.sum(nonconformity(y, s) <= q))
    decisions = [decide(float(v), float(qq)) for v, qq in zip(s, q)]
    low, high = coverage_interval(covered, int(y.size))
    return {
        "n": int(y.size), "covered": covered, "coverage": covered / y.size if y.size else None,
        "target": 1 - alpha, "interval": [low, high], "interval_method": "Wilson score, 95%",
        "met": bool(y.size) and high >= 1 - alpha,
        "uncertain_rate": decisions.count("uncertain") / y.size if y.size else None,
        "decided_wrong": sum(1 for d, yy in zip(decisions, y) if d != "uncertain" and (d == "positive") != bool(yy)),
    }


@dataclass(frozen=True)
class ConformalFit:
    id: str
    n: int
    qhat: float | None
    cv: dict[str, Any] | None
    skipped: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "n": self.n, "qhat": self.qhat, "cv": self.cv, "skipped": self.skipped}


def calibrate_conformal(
    task: Task, truth: Mapping[str, Sequence[float]], scores: Mapping[str, Sequence[float]], *, alpha: float, assign: Any, folds: int = 5
) -> list[ConformalFit]:
    """``q̂`` per label with a truth column, and its cross-validated coverage (each fold's sets from
    the ``q̂`` of the other folds)."""
    if not 0 < alpha < 1:
        raise TaskError("the conformal error rate alpha must be between 0 and 1")
    fits = []
    for label in task.labels:
        if label.id not in truth:
            continue
        y, s = _known(truth[label.id], scores[label.id])
        if y.size == 0:
            fits.append(ConformalFit(label.id, 0, None, None, skipped="no row with a known value"))
            continue
        k = min(folds, int(y.sum()), int(y.size - y.sum()))
        cv = None
        if k >= 2:
            assignment = assign(y, k)
            q = np.empty_like(s)
            for f in range(k):
                q[assignment == f] = fit_conformal(y[assignment != f], s[assignment != f], alpha)
            cv = {"folds": k, **coverage_figures(y, s, q, alpha)}
        fits.append(ConformalFit(label.id, int(y.size), fit_conformal(y, s, alpha), cv))
    return fits
