"""Site calibration: per-label thresholds and metric limits fitted on a labelled handful, and the overlay that records them.

A shipped task's thresholds (0.5) are guesses. ``medzero calibrate`` fits one threshold per label
from a site's own labelled files and writes a small YAML *overlay* beside the task; the task file
itself is never changed. Every fitted threshold says where it came from.

Methods (a score **at or above** the threshold means the label is present, as medzero decides):

- ``youden``: the cut that maximises Youden's J = sensitivity + specificity − 1; among equal J,
  the lowest cut (the more sensitive one).
- ``sensitivity``: the highest cut whose sensitivity for the *problem* the label flags is at least
  the target (e.g. 0.90 for urgent findings), i.e. the most specific one that meets it. For
  ``good`` labels (e.g. ``speech_present``) the problem is the label's absence, so there the
  target applies to specificity.

**Metric limits.** With a ``verdict`` column (accept / review / re-record as people judged), each
side of each metric rule (``snr_db: {min: 10}``, ``clipping_ratio: {max: 0.01}``) is fitted by
the same methods, its measurement as the score (negated for a ``min``: lower is worse). A row is a
*problem* for a rule when people judged it at the rule's verdict or worse (``re-record`` for a
re-record rule; ``review`` or ``re-record`` for a review rule). One rule alone does not explain
every re-record (clipping does not explain noise), so each rule is fitted on the problem rows
that **no other rule or label already flags** at that level, against every row judged better: a
rule's job is to catch what the others miss without flagging the good ones. The rules are fitted
in turn, each against the others' latest limits, until no limit moves (at most
:data:`METRIC_PASSES` passes). A limit that does no better than chance on its rows (Youden's
J ≤ 0: the metric does not separate the verdicts there) is not written, and the rule keeps its
limit; so is one that would lower the Youden J (with ``sensitivity``: the sensitivity) of all the
rules and labels together on the judged rows. Rows medzero called ``not_applicable`` are left
out: the rules never judge them. Metric limits need no model: a signal-only run (no CLAP weights)
fits them from the measurements.

**Probabilities and abstention** (overlay format 2; see :mod:`medzero.evaluation.probability` and
:mod:`medzero.tasks.probability`). With ``probability="platt"|"isotonic"|"temperature"`` a map
from each label's raw score to a calibrated probability is fitted on the same rows, with
cross-validated ECE / Brier / log-loss beside those of the raw scores; with ``conformal_alpha``
a per-label split-conformal ``q̂``, with its cross-validated coverage. The thresholds are fitted
as before in both cases (their method is ``method``).

A cut between two neighbouring scores is placed halfway between them (below the lowest score:
just under it), so the rows it was fitted on fall on the same sides as at the cut itself.

Reported beside each threshold fitted on all rows are **cross-validated** estimates: stratified,
seeded k folds; the threshold is fitted on k − 1 folds and the held-out fold is scored with it;
the counts are pooled over the folds. No row is ever scored by a threshold it helped fit. The
*apparent* figures (fitted and scored on the same rows) are shown too, labelled as such; they are
optimistic.

Overlay YAML (``site.yaml``)::

    overlay_for: chest_xray_findings
    task_sha256: 9f2c...
    model: biomedclip@...        # encoder fingerprint the scores came from
    created: 2025-01-31T10:00:00Z
    medzero_version: 0.1.0
    method: youden               # or "sensitivity>=0.90"
    manifest: {path: site.csv, sha256: ..., data_sha256: ..., rows: 48}
    labels:
      pleural_effusion:
        threshold: 0.43121987
        previous_threshold: 0.5
        source: calibrated on 48 rows (n+ 12, n- 36) from site.csv sha256 1a2b3c4d5e6f, youden
        apparent: {sensitivity: 0.92, specificity: 0.81, ppv: 0.61}
        cv: {folds: 5, seed: 0, sensitivity: 0.83, specificity: 0.75, ppv: 0.53, n: 48}
    metrics:                     # voice_quality with a verdict column
      snr_db:
        min:
          limit: 13.7
          previous_limit: 10.0
          verdict: re-record
          source: calibrated on 40 rows (re-record not flagged otherwise 9, better 31) from site.csv sha256 1a2b3c4d5e6f, youden
          apparent: {sensitivity: 0.89, specificity: 0.97, ppv: 0.89}
          cv: {folds: 5, seed: 0, sensitivity: 0.78, specificity: 0.94, ppv: 0.78, n: 40}
    format: 2                    # with a probability or conformal block
    probability:
      method: platt              # isotonic: map {x: [...], y: [...]}; temperature: map {temperature: T}
      joint: null                # "softmax": a multiclass task's one temperature across its labels
      labels:
        pleural_effusion:
          map: {a: 6.9, b: -3.4}
          source: calibrated on 48 rows (n+ 12, n- 36) from site.csv sha256 1a2b3c4d5e6f, platt
          cv: {folds: 5, n: 48, ece_raw: 0.21, ece: 0.06, brier_raw: 0.19, brier: 0.12, log_loss_raw: 0.6, log_loss: 0.4}
    conformal:
      alpha: 0.1
      nonconformity: 1 - p(y), p(1) = raw score, p(0) = 1 - raw score
      labels:
        pleural_effusion:
          qhat: 0.62
          n: 48
          source: ...
          cv: {folds: 5, n: 48, coverage: 0.92, interval: [0.80, 0.97], met: true, uncertain_rate: 0.4}

:func:`calibrate` fits and :func:`write_overlay` writes one here, where it is made; reading and
applying one (:func:`~medzero.tasks.overlay.load_overlay`, :func:`~medzero.tasks.overlay.apply_calibration`)
is in :mod:`medzero.tasks.overlay`, beside the task it changes, for everything that scores to use.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import yaml

from ..core.version import __version__
from ..core.errors import BadInputError, TaskError
from ..tasks.overlay import task_sha256
from ..tasks.schema import Task, load_task
from . import metrics as M
from .evaluate import ScoredManifest, score_manifest
from .probability import ConformalFit, ProbabilityFit, calibrate_conformal, calibrate_probabilities
from ..tasks.probability import PROBABILITY_METHODS
from .manifest import Manifest, read_manifest

__all__ = [
    "LabelFit",
    "MetricFit",
    "calibrate_metrics",
    "METRIC_PASSES",
    "fit_threshold",
    "cross_validate",
    "stratified_folds",
    "calibrate_scores",
    "calibrate",
    "SiteCalibration",
    "overlay_dict",
    "write_overlay",
    "probability_block",
    "conformal_block",
    "METHODS",
]

METHODS = ("youden", "sensitivity")
#: Metric rules are fitted in turn against each other's latest limits at most this many times.
METRIC_PASSES = 5


# -- fitting -------------------------------------------------------------------------------------


def _cut(distinct: np.ndarray, i: int) -> float:
    """The threshold that puts ``distinct[i:]`` (ascending distinct scores) at or above it and
    ``distinct[:i]`` below: halfway to the next lower score, or just under the lowest."""
    upper = float(distinct[i])
    if i == 0:
        return float(np.nextafter(upper, -np.inf))
    return (float(distinct[i - 1]) + upper) / 2


def fit_threshold(y: Sequence, s: Sequence, method: str = "youden", *, target: float = 0.9, polarity: str = "bad") -> float:
    """One threshold for scores ``s`` of a label whose presence is ``y`` (see the module docstring).

    Needs both classes; raises ``ValueError`` otherwise.
    """
    y = np.asarray(y, dtype=np.int64)
    s = np.asarray(s, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int(y.size - y.sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("a threshold needs positive and negative rows")
    distinct = np.unique(s)  # ascending
    # cut i: rows with s >= distinct[i] are called present
    idx = np.searchsorted(distinct, s)
    pos_at = np.bincount(idx[y == 1], minlength=distinct.size)
    neg_at = np.bincount(idx[y == 0], minlength=distinct.size)
    tp = np.cumsum(pos_at[::-1])[::-1]  # present rows at or above cut i
    fp = np.cumsum(neg_at[::-1])[::-1]
    sens = tp / n_pos
    spec = 1 - fp / n_neg
    if method == "youden":
        j = sens + spec - 1
        best = np.flatnonzero(j >= j.max() - 1e-12)
        return _cut(distinct, int(best[0]))
    if method == "sensitivity":
        if not 0 < target <= 1:
            raise ValueError("the target sensitivity must be in (0, 1]")
        if polarity == "good":  # the problem is absence: a row below the cut is flagged
            ok = np.flatnonzero(spec >= target - 1e-12)
            i = int(ok[0])  # lowest cut meeting the target: the most sensitive to presence
        else:
            ok = np.flatnonzero(sens >= target - 1e-12)
            i = int(ok[-1])  # highest cut meeting the target: the most specific
        return _cut(distinct, i)
    raise ValueError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")


def stratified_folds(y: Sequence, k: int, seed: int = 0) -> np.ndarray:
    """A fold number (0..k-1) per row: each class shuffled with ``default_rng(seed)`` and dealt round."""
    y = np.asarray(y, dtype=np.int64)
    rng = np.random.default_rng(seed)
    folds = np.empty(y.size, dtype=np.int64)
    offset = 0
    for cls in (1, 0):
        members = np.flatnonzero(y == cls)
        members = members[rng.permutation(members.size)]
        folds[members] = (np.arange(members.size) + offset) % k
        offset += members.size
    return folds


@dataclass(frozen=True)
class CrossValidation:
    folds: int
    seed: int
    stats: M.ThresholdStats  # pooled held-out counts (threshold field: nan)
    thresholds: list[float]  # one per fold, fitted without that fold
    assignment: np.ndarray = field(repr=False)  # fold of each row

    def to_dict(self) -> dict[str, Any]:
        d = self.stats.to_dict()
        d.pop("threshold")
        return {"folds": self.folds, "seed": self.seed, "n": int(self.assignment.size), **d,
                "fold_thresholds": list(self.thresholds)}


def cross_validate(
    y: Sequence, s: Sequence, fit: Callable[[np.ndarray, np.ndarray], float], *, folds: int = 5, seed: int = 0
) -> CrossValidation | None:
    """Pooled held-out sensitivity/specificity of ``fit``; ``None`` when a class has fewer than 2 rows.

    The number of folds is lowered to the smaller class's size when that is below ``folds``."""
    y = np.asarray(y, dtype=np.int64)
    s = np.asarray(s, dtype=np.float64)
    k = min(int(folds), int(y.sum()), int(y.size - y.sum()))
    if k < 2:
        return None
    assignment = stratified_folds(y, k, seed)
    tp = fp = tn = fn = 0
    thresholds = []
    for f in range(k):
        train, test = assignment != f, assignment == f
        threshold = fit(y[train], s[train])
        thresholds.append(threshold)
        st = M.threshold_stats(y[test], s[test], threshold)
        tp, fp, tn, fn = tp + st.tp, fp + st.fp, tn + st.tn, fn + st.fn
    return CrossValidation(k, seed, M.ThresholdStats(float("nan"), tp, fp, tn, fn), thresholds, assignment)


@dataclass(frozen=True)
class LabelFit:
    id: str
    n_pos: int
    n_neg: int
    previous: float
    threshold: float | None  # None: not fitted (see ``skipped``)
    apparent: M.ThresholdStats | None
    cv: CrossValidation | None
    skipped: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "n_pos": self.n_pos, "n_neg": self.n_neg, "previous_threshold": self.previous,
            "threshold": self.threshold, "skipped": self.skipped,
            "apparent": self.apparent.to_dict() if self.apparent else None,
            "cv": self.cv.to_dict() if self.cv else None,
        }


def method_name(method: str, target: float) -> str:
    return "youden" if method == "youden" else f"sensitivity>={target:.2f}"


def calibrate_scores(
    task: Task,
    truth: Mapping[str, Sequence[float]],
    scores: Mapping[str, Sequence[float]],
    *,
    method: str = "youden",
    target: float = 0.9,
    folds: int = 5,
    seed: int = 0,
) -> list[LabelFit]:
    """Fit every label that has a truth column (unknown values, ``nan``, left out)."""
    if method not in METHODS:
        raise TaskError(f"unknown calibration method {method!r}; use one of {', '.join(METHODS)}")
    fits = []
    for label in task.labels:
        if label.id not in truth:
            continue
        t = np.asarray(truth[label.id], dtype=np.float64)
        known = ~np.isnan(t)
        y, s = t[known].astype(np.int64), np.asarray(scores[label.id], dtype=np.float64)[known]
        n_pos, n_neg = int(y.sum()), int(y.size - y.sum())
        if n_pos == 0 or n_neg == 0:
            fits.append(LabelFit(label.id, n_pos, n_neg, label.threshold, None, None, None,
                                 skipped="needs positive and negative rows"))
            continue

        def fit(yy, ss, _polarity=label.polarity):
            return fit_threshold(yy, ss, method, target=target, polarity=_polarity)

        threshold = min(max(fit(y, s), 0.0), 1.0)
        fits.append(LabelFit(label.id, n_pos, n_neg, label.threshold, threshold,
                             M.threshold_stats(y, s, threshold), cross_validate(y, s, fit, folds=folds, seed=seed)))
    return fits

# -- metric limits from people's verdicts --------------------------------------------------------


@dataclass(frozen=True)
class MetricFit:
    """One side of one metric rule, fitted on the rows people gave a verdict."""

    metric: str
    side: str  # "min" (a value below the limit is the problem) or "max"
    verdict: str  # what the rule triggers; rows judged this or worse are its problem rows
    n_pos: int  # problem rows no other rule or label flags
    n_neg: int  # rows judged better than ``verdict``
    previous: float
    limit: float | None  # None: not fitted (see ``skipped``)
    apparent: M.ThresholdStats | None
    cv: CrossValidation | None
    skipped: str | None = None

    def flags(self, value: float, limit: float | None = None) -> bool:
        limit = self.limit if limit is None else limit
        return value < limit if self.side == "min" else value > limit

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric, "side": self.side, "verdict": self.verdict, "n_pos": self.n_pos, "n_neg": self.n_neg,
            "previous_limit": self.previous, "limit": self.limit, "skipped": self.skipped,
            "apparent": self.apparent.to_dict() if self.apparent else None,
            "cv": self.cv.to_dict() if self.cv else None,
        }


def _flagged(side: str, values: np.ndarray, limit: float) -> np.ndarray:
    """Rows a rule side flags (a missing measurement, ``nan``, is never flagged)."""
    with np.errstate(invalid="ignore"):
        return values < limit if side == "min" else values > limit


def calibrate_metrics(
    task: Task,
    verdicts: Sequence[str | None],
    metrics: Sequence[Mapping[str, float]],
    *,
    label_verdicts: Sequence[str | None] | None = None,
    method: str = "youden",
    target: float = 0.9,
    folds: int = 5,
    seed: int = 0,
) -> list[MetricFit]:
    """Fit every side of every metric rule of ``task`` from people's verdicts (see the module docstring).

    Args:
        verdicts: per row, the verdict a person gave (``None``: not judged; the row is left out).
        metrics: per row, the measurements (a missing one leaves the row out of that rule).
        label_verdicts: per row, the worst verdict the row's label reasons give (``None``: none),
            so a rule is not fitted to catch what a label already flags.
    """
    if method not in METHODS:
        raise TaskError(f"unknown calibration method {method!r}; use one of {', '.join(METHODS)}")
    order = [v.id for v in task.verdicts]
    if not order or not task.metrics:
        return []
    human = np.array([-1 if v is None else order.index(v) for v in verdicts], dtype=np.int64)
    by_labels = np.array([-1 if v is None else order.index(v) for v in (label_verdicts or [None] * len(human))], dtype=np.int64)
    sides = [(name, side) for name, rule in task.metrics.items() for side in ("min", "max") if getattr(rule, side) is not None]
    values = {name: np.array([float(m.get(name, np.nan)) for m in metrics], dtype=np.float64) for name, _ in sides}
    rank = {(name, side): order.index(task.metrics[name].verdict or order[-1]) for name, side in sides}
    limits = {(name, side): float(getattr(task.metrics[name], side)) for name, side in sides}
    fits: dict[tuple[str, str], MetricFit] = {}
    for _ in range(METRIC_PASSES):
        moved = False
        for key in sides:
            fit = _fit_side(key, rank, limits, values, human, by_labels, order, task, method=method, target=target, folds=folds, seed=seed)
            fits[key] = fit
            if fit.limit is not None and fit.limit != limits[key]:
                limits[key], moved = fit.limit, True
        if not moved:
            break
    return [fits[key] for key in sides]


def _fit_side(key, rank, limits, values, human, by_labels, order, task, *, method, target, folds, seed) -> MetricFit:
    name, side = key
    level = rank[key]
    previous = float(getattr(task.metrics[name], side))
    x = values[name]
    others = by_labels >= level
    for other in limits:
        if other != key and rank[other] >= level:
            others |= _flagged(other[1], values[other[0]], limits[other])
    judged = (human >= 0) & ~np.isnan(x)
    problem = human >= level
    rows = judged & (~problem | ~others)  # every better row; the problem rows nothing else flags
    y = problem[rows].astype(np.int64)
    s = -x[rows] if side == "min" else x[rows]  # higher score: worse
    n_pos, n_neg = int(y.sum()), int(y.size - y.sum())
    verdict = order[level]
    if n_pos == 0 or n_neg == 0:
        why = (f"no row judged better than {verdict}" if n_neg == 0 else
               f"no {verdict} row left once the other rules and labels have flagged theirs")
        return MetricFit(name, side, verdict, n_pos, n_neg, previous, None, None, None, skipped=why)

    def fit(yy, ss):
        return fit_threshold(yy, ss, method, target=target, polarity="bad")

    cut = fit(y, s)
    apparent = M.threshold_stats(y, s, cut)
    if apparent.sensitivity + apparent.specificity - 1 <= 0:
        return MetricFit(name, side, verdict, n_pos, n_neg, previous, None, apparent, None,
                         skipped="no limit does better than chance on these rows; kept the task's")
    limit = -cut if side == "min" else cut
    before = _combined(level, limits, values, human, by_labels, rank)
    after = _combined(level, {**limits, key: limit}, values, human, by_labels, rank)
    worse = after[0] < before[0] if method == "sensitivity" else sum(after) < sum(before)
    if worse:
        what = "sensitivity" if method == "sensitivity" else "Youden J"
        return MetricFit(name, side, verdict, n_pos, n_neg, previous, None, apparent, None,
                         skipped=f"kept the current limit: {limit:.6g} would lower the {what} of all rules together")
    return MetricFit(name, side, verdict, n_pos, n_neg, previous, limit, apparent,
                     cross_validate(y, s, fit, folds=folds, seed=seed))


def _combined(level, limits, values, human, by_labels, rank) -> tuple[float, float]:
    """(sensitivity, specificity) of all rules and labels together at ``level`` on the judged rows."""
    flagged = by_labels >= level
    for (name, side), limit in limits.items():
        if rank[(name, side)] >= level:
            flagged |= _flagged(side, values[name], limit)
    judged = human >= 0
    problem = human >= level
    pos, neg = judged & problem, judged & ~problem
    sens = float((flagged & pos).sum() / pos.sum()) if pos.any() else 0.0
    spec = float((~flagged & neg).sum() / neg.sum()) if neg.any() else 0.0
    return sens, spec



@dataclass
class SiteCalibration:
    """What :func:`calibrate` found: the fits, and the overlay to write."""

    fits: list[LabelFit]
    overlay: dict[str, Any]
    errors: list[dict[str, Any]]
    rows: int
    metric_fits: list[MetricFit] = field(default_factory=list)
    #: Rows left out of the metric fits because medzero called them not applicable.
    not_applicable: int = 0
    probability_fits: list[ProbabilityFit] = field(default_factory=list)
    conformal_fits: list[ConformalFit] = field(default_factory=list)

    def write(self, path: "str | os.PathLike") -> None:
        write_overlay(self.overlay, path)


def calibrate(
    manifest: Any,
    task: "str | os.PathLike | Task",
    *,
    method: str = "youden",
    target: float = 0.9,
    folds: int = 5,
    seed: int = 0,
    classifier: Any = None,
    audio_model: str | None = None,
    image_model: str | None = None,
    device: str = "auto",
    batch_size: int = 8,
    progress: Callable[[int], None] | None = None,
    probability: str | None = None,
    conformal_alpha: float | None = None,
) -> SiteCalibration:
    """Classify a labelled manifest with ``task``'s own thresholds and limits, and fit new ones:
    a threshold per label column, and with a ``verdict`` column a limit per metric rule side;
    with ``probability`` a probability map per label column, with ``conformal_alpha`` a conformal rule.

    Rows that fail to classify are listed in ``errors`` and left out. Without the model (a
    signal-only run) the metric limits are still fitted; the labels are skipped, saying why."""
    from ..classifier import Classifier

    task = load_task(task)
    if method not in METHODS:
        raise TaskError(f"unknown calibration method {method!r}; use one of {', '.join(METHODS)}")
    if folds < 2:
        raise TaskError("cross-validation needs at least 2 folds")
    if probability is not None and probability not in PROBABILITY_METHODS:
        raise TaskError(f"unknown probability method {probability!r}; use one of {', '.join(PROBABILITY_METHODS)}")
    if conformal_alpha is not None and not 0 < conformal_alpha < 1:
        raise TaskError("the conformal error rate alpha must be between 0 and 1")
    table = manifest if isinstance(manifest, Manifest) else read_manifest(manifest, task)
    if (probability or conformal_alpha) and not table.label_ids:
        raise BadInputError(f"{table.source}: probability maps and conformal rules need label columns")
    fits_metrics = table.has_verdict and bool(task.metrics)
    if not table.label_ids and not fits_metrics:
        raise BadInputError(
            f"{table.source}: calibration needs label columns, or a verdict column for a task with metric rules "
            f"(task {task.name} has {'none' if not task.metrics else 'rules but the manifest has no verdict column'})"
        )
    if classifier is None:
        classifier = Classifier(task=task, audio_model=audio_model, image_model=image_model, device=device, batch_size=batch_size)
    measured = score_manifest(table, task, classifier, progress=progress, keep_unscored=True)
    if not measured.results:
        first = measured.errors[0]
        raise BadInputError(f"no row of {table.source} could be classified; line {first['line']}: {first['error']}")
    fits = _label_fits(table, task, measured, method=method, target=target, folds=folds, seed=seed)
    judged = [i for i, r in enumerate(measured.results) if r.applicable]
    metric_fits = []
    if fits_metrics:
        metric_fits = calibrate_metrics(
            task,
            [table.rows[measured.rows[i]].verdict for i in judged],
            [measured.results[i].metrics for i in judged],
            label_verdicts=[_label_verdict(task, measured.results[i]) for i in judged],
            method=method, target=target, folds=folds, seed=seed,
        )
    if all(f.threshold is None for f in fits) and all(f.limit is None for f in metric_fits):
        raise BadInputError(f"{table.source}: {_nothing_fitted(fits, metric_fits)}; nothing to calibrate")
    probability_fits, conformal_fits = _probability_fits(table, task, measured, probability, conformal_alpha, folds, seed)
    overlay = overlay_dict(
        task, fits, method=method, target=target, model=", ".join(measured.models) or None,
        manifest_path=str(table.source), manifest_sha256=table.sha256, data_sha256=table.data_hash,
        rows=len(measured.results), task_sha256=task_sha256(task)[0], medzero_version=__version__,
        metric_fits=metric_fits,
    )
    where = f"from {os.path.basename(str(table.source))} sha256 {table.sha256[:12]}"
    overlay.update(probability_block(probability_fits, probability, where, joint=probability == "temperature" and task.mode == "multiclass"))
    overlay.update(conformal_block(conformal_fits, conformal_alpha, where))
    if "probability" in overlay or "conformal" in overlay:
        overlay = {"format": 2, **overlay}
    return SiteCalibration(fits, overlay, measured.errors, len(measured.results), metric_fits,
                           len(measured.results) - len(judged), probability_fits, conformal_fits)


def _probability_fits(table, task, measured, probability, alpha, folds, seed) -> tuple[list[ProbabilityFit], list[ConformalFit]]:
    """Probability maps and conformal rules from the rows the model scored, on the thresholds' folds."""
    keep = [i for i, r in enumerate(measured.results) if r.scores]
    if not (probability or alpha) or not keep:
        return [], []
    truth = {lid: [table.truth(lid)[measured.rows[i]] for i in keep] for lid in table.label_ids}
    scores = {lid: [measured.results[i].scores[lid] for i in keep] for lid in task.label_ids()}

    def assign(y, k):
        return stratified_folds(y, k, seed)

    maps = calibrate_probabilities(task, truth, scores, method=probability, assign=assign, folds=folds) if probability else []
    rules = calibrate_conformal(task, truth, scores, alpha=alpha, assign=assign, folds=folds) if alpha else []
    return maps, rules


def probability_block(fits: Sequence[ProbabilityFit], method: str | None, where: str, *, joint: bool = False) -> dict[str, Any]:
    """The overlay's ``probability`` block (empty without a fitted map)."""
    labels = {
        f.id: {"map": f.map.to_dict(),
               "source": f"calibrated on {f.n_pos + f.n_neg} rows (n+ {f.n_pos}, n- {f.n_neg}) {where}, {method}",
               "cv": None if f.cv is None else {k: _round(v) for k, v in f.cv.items()}}
        for f in fits if f.map is not None
    }
    if not labels:
        return {}
    return {"probability": {"method": method, "joint": "softmax" if joint else None, "labels": labels}}


def conformal_block(fits: Sequence[ConformalFit], alpha: float | None, where: str) -> dict[str, Any]:
    """The overlay's ``conformal`` block (empty without a fitted rule)."""
    labels = {
        f.id: {"qhat": f.qhat, "n": f.n, "source": f"split conformal on {f.n} rows {where}, alpha {alpha:g}",
               "cv": None if f.cv is None else {k: _round(v) if not isinstance(v, list) else [_round(x) for x in v]
                                                for k, v in f.cv.items()}}
        for f in fits if f.qhat is not None
    }
    if not labels:
        return {}
    return {"conformal": {"alpha": alpha, "nonconformity": "1 - p(y), p(1) = raw score, p(0) = 1 - raw score", "labels": labels}}



def _label_fits(table: Manifest, task: Task, measured: ScoredManifest, **options: Any) -> list[LabelFit]:
    """Thresholds for the label columns, from the rows the model scored (none in a signal-only run)."""
    if not table.label_ids:
        return []
    keep = [i for i, r in enumerate(measured.results) if r.scores]
    if not keep:
        previous = {lb.id: lb.threshold for lb in task.labels}
        why = "signal-only run: the model is not available, so there are no scores to fit"
        return [LabelFit(lid, 0, 0, previous[lid], None, None, None, skipped=why) for lid in table.label_ids]
    truth = {lid: [table.truth(lid)[measured.rows[i]] for i in keep] for lid in table.label_ids}
    scores = {lid: [measured.results[i].scores[lid] for i in keep] for lid in task.label_ids()}
    return calibrate_scores(task, truth, scores, **options)


def _label_verdict(task: Task, result: Any) -> str | None:
    """The worst verdict the result's label reasons give, or None."""
    found = [r.verdict for r in result.reasons if r.kind == "label" and r.verdict]
    return max(found, key=task.verdict_rank) if found else None


def _nothing_fitted(fits: Sequence[LabelFit], metric_fits: Sequence[MetricFit]) -> str:
    """Why no threshold and no limit came out, in one line."""
    parts = []
    if fits:
        reasons = {f.skipped for f in fits}
        parts.append(reasons.pop() if len(reasons) == 1 and "signal-only" in str(next(iter(reasons))) else
                     "no label has both positive and negative rows")
    if metric_fits:
        parts.append("no metric limit could be fitted (" + "; ".join(f"{f.metric} {f.side}: {f.skipped}" for f in metric_fits) + ")")
    return "; ".join(parts)


# -- writing the overlay (read and applied by medzero.tasks.overlay) ----------------------------


def overlay_dict(
    task: Task,
    fits: Sequence[LabelFit],
    *,
    method: str,
    target: float,
    model: str | None,
    manifest_path: str,
    manifest_sha256: str,
    data_sha256: str,
    rows: int,
    task_sha256: str,
    medzero_version: str,
    metric_fits: Sequence[MetricFit] = (),
) -> dict[str, Any]:
    name = method_name(method, target)
    where = f"{os.path.basename(manifest_path)} sha256 {manifest_sha256[:12]}, {name}"
    labels = {}
    for f in fits:
        if f.threshold is None:
            continue
        cv = f.cv.to_dict() if f.cv else None
        labels[f.id] = {
            "threshold": f.threshold,  # not rounded: rounding could move it across a score it was fitted on
            "previous_threshold": f.previous,
            "source": (
                f"calibrated on {f.n_pos + f.n_neg} rows (n+ {f.n_pos}, n- {f.n_neg}) from "
                f"{os.path.basename(manifest_path)} sha256 {manifest_sha256[:12]}, {name}"
            ),
            "apparent": {k: _round(v) for k, v in f.apparent.to_dict().items() if k in ("sensitivity", "specificity", "ppv")},
            "cv": None if cv is None else {k: _round(v) if isinstance(v, float) else v
                                           for k, v in cv.items() if k in ("folds", "seed", "n", "sensitivity", "specificity", "ppv")},
        }
    metrics: dict[str, dict[str, Any]] = {}
    for f in metric_fits:
        if f.limit is None:
            continue
        metrics.setdefault(f.metric, {})[f.side] = {
            "limit": f.limit,
            "previous_limit": f.previous,
            "verdict": f.verdict,
            "source": (
                f"calibrated on {f.n_pos + f.n_neg} rows ({f.verdict} not flagged otherwise {f.n_pos}, "
                f"better {f.n_neg}) from {where}"
            ),
            "apparent": _stats(f.apparent.to_dict()),
            "cv": _cv(f.cv),
        }
    out = {
        "overlay_for": task.name,
        "task_sha256": task_sha256,
        "model": model,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "medzero_version": medzero_version,
        "method": name,
        "manifest": {"path": manifest_path, "sha256": manifest_sha256, "data_sha256": data_sha256, "rows": rows},
        "labels": labels,
    }
    if metrics:
        out["metrics"] = metrics
    return out


def _stats(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _round(v) for k, v in d.items() if k in ("sensitivity", "specificity", "ppv")}


def _cv(cv: CrossValidation | None) -> dict[str, Any] | None:
    if cv is None:
        return None
    return {k: _round(v) if isinstance(v, float) else v
            for k, v in cv.to_dict().items() if k in ("folds", "seed", "n", "sensitivity", "specificity", "ppv")}


def write_overlay(data: Mapping[str, Any], path: "str | os.PathLike") -> None:
    text = (
        f"# medzero calibration overlay for task {data['overlay_for']}; apply with --calibration {os.path.basename(os.fspath(path))}\n"
        + yaml.safe_dump(dict(data), sort_keys=False, allow_unicode=True)
    )
    tmp = f"{os.fspath(path)}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def _round(value: Any) -> Any:
    return round(value, 6) if isinstance(value, float) and math.isfinite(value) else value
