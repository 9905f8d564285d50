"""Site calibration: per-label thresholds fitted on a labelled handful, and the overlay that records them.

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
from .evaluate import score_manifest
from .manifest import Manifest, read_manifest

__all__ = [
    "LabelFit",
    "fit_threshold",
    "cross_validate",
    "stratified_folds",
    "calibrate_scores",
    "calibrate",
    "SiteCalibration",
    "overlay_dict",
    "write_overlay",
    "METHODS",
]

METHODS = ("youden", "sensitivity")


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


@dataclass
class SiteCalibration:
    """What :func:`calibrate` found: the fits, and the overlay to write."""

    fits: list[LabelFit]
    overlay: dict[str, Any]
    errors: list[dict[str, Any]]
    rows: int

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
) -> SiteCalibration:
    """Classify a labelled manifest with ``task``'s own thresholds and fit new ones per label.

    Rows that fail to classify are listed in ``errors`` and left out."""
    from ..classifier import Classifier

    task = load_task(task)
    if method not in METHODS:
        raise TaskError(f"unknown calibration method {method!r}; use one of {', '.join(METHODS)}")
    if folds < 2:
        raise TaskError("cross-validation needs at least 2 folds")
    table = manifest if isinstance(manifest, Manifest) else read_manifest(manifest, task)
    if not table.label_ids:
        raise BadInputError(f"{table.source}: calibration needs label columns (a verdict column alone fits no threshold)")
    if classifier is None:
        classifier = Classifier(task=task, audio_model=audio_model, image_model=image_model, device=device, batch_size=batch_size)
    scored = score_manifest(table, task, classifier, progress=progress)
    if not scored.results:
        first = scored.errors[0]
        raise BadInputError(f"no row of {table.source} could be classified; line {first['line']}: {first['error']}")
    fits = calibrate_scores(task, scored.truth(), scored.scores(), method=method, target=target, folds=folds, seed=seed)
    if all(f.threshold is None for f in fits):
        raise BadInputError(f"{table.source}: no label has both positive and negative rows; nothing to calibrate")
    overlay = overlay_dict(
        task, fits, method=method, target=target, model=", ".join(scored.models) or None,
        manifest_path=str(table.source), manifest_sha256=table.sha256, data_sha256=table.data_hash,
        rows=len(scored.results), task_sha256=task_sha256(task)[0], medzero_version=__version__,
    )
    return SiteCalibration(fits, overlay, scored.errors, len(scored.results))


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
) -> dict[str, Any]:
    name = method_name(method, target)
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
    return {
        "overlay_for": task.name,
        "task_sha256": task_sha256,
        "model": model,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "medzero_version": medzero_version,
        "method": name,
        "manifest": {"path": manifest_path, "sha256": manifest_sha256, "data_sha256": data_sha256, "rows": rows},
        "labels": labels,
    }


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
