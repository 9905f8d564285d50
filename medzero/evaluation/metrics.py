"""Evaluation statistics in plain numpy, defined exactly as scikit-learn defines them.

scikit-learn is not needed at run time; the tests check every function here against it to 1e-9
on fixed random data, ties and edge cases included. Conventions:

- ``y`` is 0/1 (the label is present), ``s`` a score where higher means "more likely present".
- A score **at or above** a threshold is positive, as medzero's verdicts decide.
- A statistic that is undefined on the data (AUROC with one class, PPV with no positive call)
  is ``nan`` here and ``None`` in reports; nothing is silently replaced by 0 or 1.
- Calibration uses **10 equal-width bins** of [0, 1], right-closed as scikit-learn's
  ``calibration_curve(strategy="uniform")``: [0, 0.1], (0.1, 0.2], …, (0.9, 1]. The expected
  calibration error is the count-weighted mean of |fraction positive − mean score| over the
  non-empty bins.
- The bootstrap draws ``n_boot`` resamples of the rows with replacement, in order, each as
  ``rng.integers(0, n, n)`` from ``np.random.default_rng(seed)``; a resample where the statistic
  is undefined (one class only) is skipped and counted; the interval is the 2.5th and 97.5th
  percentile (numpy's linear interpolation) of the rest.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

__all__ = [
    "binary_clf_curve",
    "roc_curve",
    "auroc",
    "precision_recall_curve",
    "average_precision",
    "BootstrapCI",
    "bootstrap_ci",
    "ThresholdStats",
    "threshold_stats",
    "brier_score",
    "calibration_bins",
    "expected_calibration_error",
    "top_k_accuracy",
    "confusion_matrix",
    "balanced_accuracy",
    "macro_f1",
    "cohen_kappa",
    "N_BINS",
]

#: Bins of the reliability diagram and of the expected calibration error.
N_BINS = 10


def _binary(y: Sequence, s: Sequence) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y)
    s = np.asarray(s, dtype=np.float64)
    if y.shape != s.shape or y.ndim != 1:
        raise ValueError(f"labels and scores must be 1-d and of the same length, got {y.shape} and {s.shape}")
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite")
    return y.astype(np.int64), s


def binary_clf_curve(y: Sequence, s: Sequence) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False and true positives at each distinct score, highest first (scikit-learn's ``_binary_clf_curve``)."""
    y, s = _binary(y, s)
    order = np.argsort(s, kind="mergesort")[::-1]
    s, y = s[order], y[order]
    distinct = np.where(np.diff(s))[0]
    idx = np.r_[distinct, y.size - 1]
    tps = np.cumsum(y)[idx].astype(np.float64)
    fps = 1 + idx - tps
    return fps, tps, s[idx]


def roc_curve(y: Sequence, s: Sequence, *, drop_intermediate: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)`` as ``sklearn.metrics.roc_curve``: the first threshold is ``inf``
    (nothing called positive); tied scores make one point; collinear points are dropped."""
    fps, tps, thresholds = binary_clf_curve(y, s)
    if drop_intermediate and fps.size > 2:
        keep = np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True]
        fps, tps, thresholds = fps[keep], tps[keep], thresholds[keep]
    fps, tps = np.r_[0.0, fps], np.r_[0.0, tps]
    thresholds = np.r_[np.inf, thresholds]
    fpr = fps / fps[-1] if fps[-1] > 0 else np.full(fps.shape, np.nan)
    tpr = tps / tps[-1] if tps[-1] > 0 else np.full(tps.shape, np.nan)
    return fpr, tpr, thresholds


def auroc(y: Sequence, s: Sequence) -> float:
    """Area under the ROC curve (trapezoidal, ties count half); ``nan`` unless both classes occur."""
    y, s = _binary(y, s)
    if y.size == 0 or y.min() == y.max():
        return float("nan")
    fpr, tpr, _ = roc_curve(y, s)
    return float(np.trapezoid(tpr, fpr) if hasattr(np, "trapezoid") else np.trapz(tpr, fpr))


def precision_recall_curve(y: Sequence, s: Sequence) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(precision, recall, thresholds)`` as ``sklearn.metrics.precision_recall_curve``
    (recall decreasing, ending at precision 1, recall 0)."""
    fps, tps, thresholds = binary_clf_curve(y, s)
    ps = tps + fps
    precision = np.divide(tps, ps, out=np.zeros_like(tps), where=ps != 0)
    recall = np.ones_like(tps) if tps[-1] == 0 else tps / tps[-1]
    return np.r_[precision[::-1], 1.0], np.r_[recall[::-1], 0.0], thresholds[::-1]


def average_precision(y: Sequence, s: Sequence) -> float:
    """Average precision, scikit-learn's step definition: Σ (R_n − R_{n−1}) · P_n (no interpolation).

    ``nan`` without a positive row (scikit-learn warns and returns a meaningless value there)."""
    y, s = _binary(y, s)
    if y.sum() == 0:
        return float("nan")
    precision, recall, _ = precision_recall_curve(y, s)
    return float(-np.sum(np.diff(recall) * precision[:-1]))


@dataclass(frozen=True)
class BootstrapCI:
    low: float
    high: float
    n_boot: int
    #: Resamples where the statistic was undefined (e.g. one class only), left out of the interval.
    n_skipped: int
    seed: int
    level: float = 0.95

    def to_dict(self) -> dict:
        return {
            "low": _num(self.low),
            "high": _num(self.high),
            "level": self.level,
            "n_boot": self.n_boot,
            "n_skipped": self.n_skipped,
            "seed": self.seed,
            "method": "percentile",
        }


def bootstrap_ci(
    y: Sequence,
    s: Sequence,
    statistic: Callable[[np.ndarray, np.ndarray], float] = auroc,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> BootstrapCI:
    """Percentile bootstrap interval of ``statistic(y, s)`` (see the module docstring for the draw)."""
    y, s = _binary(y, s)
    n = y.size
    rng = np.random.default_rng(seed)
    values, skipped = [], 0
    for _ in range(int(n_boot)):
        idx = rng.integers(0, n, n) if n else np.zeros(0, dtype=np.int64)
        yb = y[idx]
        if n == 0 or yb.min() == yb.max():
            skipped += 1
            continue
        value = statistic(yb, s[idx])
        if np.isnan(value):
            skipped += 1
            continue
        values.append(value)
    if not values:
        return BootstrapCI(float("nan"), float("nan"), int(n_boot), skipped, seed, level)
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(np.asarray(values), [tail, 100 - tail])
    return BootstrapCI(float(low), float(high), int(n_boot), skipped, seed, level)


@dataclass(frozen=True)
class ThresholdStats:
    threshold: float
    tp: int
    fp: int
    tn: int
    fn: int

    @property
    def sensitivity(self) -> float:
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def specificity(self) -> float:
        return _ratio(self.tn, self.tn + self.fp)

    @property
    def ppv(self) -> float:
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def npv(self) -> float:
        return _ratio(self.tn, self.tn + self.fn)

    def to_dict(self) -> dict:
        return {
            "threshold": self.threshold,
            "tp": self.tp,
            "fp": self.fp,
            "tn": self.tn,
            "fn": self.fn,
            "sensitivity": _num(self.sensitivity),
            "specificity": _num(self.specificity),
            "ppv": _num(self.ppv),
            "npv": _num(self.npv),
        }


def threshold_stats(y: Sequence, s: Sequence, threshold: float) -> ThresholdStats:
    """Counts and rates when ``s >= threshold`` is called positive."""
    y, s = _binary(y, s)
    pred = s >= threshold
    tp = int(np.sum(pred & (y == 1)))
    fp = int(np.sum(pred & (y == 0)))
    fn = int(np.sum(~pred & (y == 1)))
    tn = int(np.sum(~pred & (y == 0)))
    return ThresholdStats(float(threshold), tp, fp, tn, fn)


def brier_score(y: Sequence, p: Sequence) -> float:
    """Mean squared difference between the probability and the 0/1 outcome."""
    y, p = _binary(y, p)
    if y.size == 0:
        return float("nan")
    return float(np.mean((p - y) ** 2))


def calibration_bins(y: Sequence, p: Sequence, n_bins: int = N_BINS) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(edges, count, mean_score, fraction_positive)`` per bin; empty bins have ``nan`` means."""
    y, p = _binary(y, p)
    if p.size and (p.min() < 0 or p.max() > 1):
        raise ValueError("probabilities must lie in [0, 1]")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    ids = np.searchsorted(edges[1:-1], p)
    count = np.bincount(ids, minlength=n_bins).astype(np.float64)
    sums = np.bincount(ids, weights=p, minlength=n_bins)
    trues = np.bincount(ids, weights=y.astype(np.float64), minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return edges, count.astype(np.int64), sums / count, trues / count


def expected_calibration_error(y: Sequence, p: Sequence, n_bins: int = N_BINS) -> float:
    """Σ_b (n_b / n) · |fraction positive_b − mean score_b| over non-empty bins."""
    _, count, mean_score, frac = calibration_bins(y, p, n_bins)
    total = count.sum()
    if total == 0:
        return float("nan")
    used = count > 0
    return float(np.sum(count[used] / total * np.abs(frac[used] - mean_score[used])))


def top_k_accuracy(y_true: Sequence[int], scores: np.ndarray, k: int) -> float:
    """Fraction of rows whose true class index is among the ``k`` highest scores.

    Ties are broken as ``sklearn.metrics.top_k_accuracy_score`` breaks them (stable sort, then
    reversed: among equal scores the later class ranks first)."""
    y = np.asarray(y_true, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[0] != y.size:
        raise ValueError("scores must be (rows, classes) with one row per label")
    if y.size == 0:
        return float("nan")
    ranked = np.argsort(scores, axis=1, kind="mergesort")[:, ::-1][:, :k]
    return float(np.mean((ranked == y[:, None]).any(axis=1)))


def confusion_matrix(y_true: Sequence, y_pred: Sequence, labels: Sequence) -> np.ndarray:
    """Counts, rows = true class, columns = predicted class, in the order of ``labels``;
    pairs with a value outside ``labels`` are not counted."""
    index = {label: i for i, label in enumerate(labels)}
    out = np.zeros((len(index), len(index)), dtype=np.int64)
    for t, p in zip(y_true, y_pred):
        if t in index and p in index:
            out[index[t], index[p]] += 1
    return out


def _present(y_true: Sequence, y_pred: Sequence) -> list:
    return sorted(set(y_true) | set(y_pred))


def balanced_accuracy(y_true: Sequence, y_pred: Sequence) -> float:
    """Mean recall over the classes that occur in ``y_true`` (``sklearn.metrics.balanced_accuracy_score``)."""
    labels = _present(y_true, y_pred)
    if not labels:
        return float("nan")
    cm = confusion_matrix(y_true, y_pred, labels)
    support = cm.sum(axis=1)
    seen = support > 0
    return float(np.mean(np.diag(cm)[seen] / support[seen]))


def macro_f1(y_true: Sequence, y_pred: Sequence) -> float:
    """Unweighted mean F1 over the classes that occur in either list (``f1_score(average="macro")``)."""
    labels = _present(y_true, y_pred)
    if not labels:
        return float("nan")
    cm = confusion_matrix(y_true, y_pred, labels)
    tp = np.diag(cm).astype(np.float64)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    return float(np.mean(2 * tp / (2 * tp + fp + fn)))


def cohen_kappa(y1: Sequence, y2: Sequence, *, labels: Sequence | None = None, weights: str | None = None) -> float:
    """Cohen's kappa between two raters (``sklearn.metrics.cohen_kappa_score``).

    ``labels`` fixes the categories and, for ``weights="linear"`` or ``"quadratic"``, their order
    (e.g. accept < review < re-record); ``nan`` where kappa is undefined."""
    labels = list(labels) if labels is not None else _present(y1, y2)
    cm = confusion_matrix(y1, y2, labels).astype(np.float64)
    n = cm.sum()
    if n == 0:
        return float("nan")
    expected = np.outer(cm.sum(axis=1), cm.sum(axis=0)) / n
    k = len(labels)
    if weights is None:
        w = np.ones((k, k)) - np.eye(k)
    elif weights in ("linear", "quadratic"):
        grid = np.tile(np.arange(k, dtype=np.float64), (k, 1))
        w = np.abs(grid - grid.T) if weights == "linear" else (grid - grid.T) ** 2
    else:
        raise ValueError(f"unknown weights {weights!r}; use None, 'linear' or 'quadratic'")
    denominator = np.sum(w * expected)
    if denominator == 0:
        return float("nan")
    return float(1 - np.sum(w * cm) / denominator)


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def _num(value: float | None) -> float | None:
    """A float for JSON: ``nan`` becomes ``None``."""
    if value is None:
        return None
    value = float(value)
    return None if np.isnan(value) else value
