"""How well does a task work on a site's own labelled files?

:func:`evaluate` classifies every manifest row with :class:`medzero.Classifier` (a row that fails
is counted and listed, never fatal) and computes, from the scores and the manifest's labels:

- per label: n+ / n− (unknown cells left out), AUROC with a 95 % percentile-bootstrap interval,
  AUPRC beside the prevalence, sensitivity / specificity / PPV / NPV at the task's threshold
  (a score at or above it is positive), Brier score and expected calibration error (10 equal-width
  bins; see :mod:`medzero.evaluation.metrics`), and the points of its ROC curve and reliability
  diagram;
- multiclass tasks: top-1 and top-5 accuracy (top-5 only with more than five labels), balanced
  accuracy, macro-F1 and the confusion matrix, over the rows whose class is known;
- tasks with verdicts and a ``verdict`` column: the confusion matrix of the human verdict against
  medzero's, agreement, Cohen's kappa and linearly weighted kappa (verdicts ordered best → worst),
  over the rows medzero judged; rows it called ``not_applicable`` are abstentions, counted and
  shown as their own column, never folded into a triage level or silently dropped;
- with a calibration overlay of format 2: per label, ``probability``, the ECE (10 equal-width
  bins), Brier score and log-loss of the raw scores (``before``) and of the overlay's calibrated
  probabilities (``after``) on these rows, with the calibrated reliability diagram; and
  ``conformal``, the empirical coverage of the overlay's conformal sets on these rows, its 95 %
  Wilson score interval, ``met`` when the interval reaches the stated level ``1 − alpha``, and how
  often the label was left uncertain. Rows the overlay was fitted on give optimistic figures: use
  held-out rows (the overlay itself records cross-validated ones);
- verdicts that abstain are counted apart and never as agreement: ``not_applicable`` (input out
  of scope) and ``uncertain`` (in scope, a conformal rule not sure), each in its own column;
- ``reproducibility``: the model fingerprints, the task's sha256, the medzero version, the
  manifest's sha256 and a data hash over (path, file sha256, labels), so a report can be re-run
  and compared.

:func:`evaluate_scores` does the statistics alone, from scores already computed.
"""
from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..core.version import __version__
from ..core.errors import BadInputError, MedzeroError, TaskError
from ..core.modality import get_modality
from ..tasks.overlay import UNCALIBRATED, Calibration, apply_calibration, check_model, task_sha256
from ..tasks.schema import NOT_APPLICABLE, Task, load_task, task_from_labels
from ..tasks.probability import UNCERTAIN
from . import metrics as M
from .manifest import Manifest, read_manifest
from .probability import coverage_figures, log_loss

__all__ = ["EvalReport", "ScoredManifest", "evaluate", "evaluate_scores", "score_manifest", "calibration_figures"]


@dataclass
class EvalReport:
    task: str
    mode: str
    settings: dict[str, Any]
    labels: dict[str, dict[str, Any]]
    multiclass: dict[str, Any] | None = None
    verdicts: dict[str, Any] | None = None
    rows: dict[str, Any] = field(default_factory=dict)
    errors: list[dict[str, Any]] = field(default_factory=list)
    calibration: dict[str, Any] | None = None
    reproducibility: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON (``nan`` written as ``null``)."""
        return _clean({
            "task": self.task,
            "mode": self.mode,
            "rows": self.rows,
            "settings": self.settings,
            "calibration": self.calibration or {"status": UNCALIBRATED},
            "labels": self.labels,
            "multiclass": self.multiclass,
            "verdicts": self.verdicts,
            "errors": self.errors,
            "reproducibility": self.reproducibility,
        })

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, indent=2, allow_nan=False) + "\n"


# -- statistics from scores --------------------------------------------------------------------


def evaluate_scores(
    task: Task,
    truth: Mapping[str, Sequence[float | None]],
    scores: Mapping[str, Sequence[float]],
    *,
    true_verdicts: Sequence[str | None] | None = None,
    predicted_verdicts: Sequence[str | None] | None = None,
    seed: int = 0,
    n_boot: int = 1000,
) -> EvalReport:
    """The report's statistics from per-row scores.

    Args:
        truth: label id -> per-row 1 / 0 / ``None`` or ``nan`` (not known), for the labels judged.
        scores: label id -> per-row score, for **every** label of the task (same rows).
        true_verdicts, predicted_verdicts: per-row verdict ids (``None``: not judged / no verdict).
    """
    ids = task.label_ids()
    missing = [lid for lid in ids if lid not in scores]
    if missing:
        raise TaskError(f"scores for label(s) {', '.join(missing)} of task {task.name} are missing")
    S = np.column_stack([np.asarray(scores[lid], dtype=np.float64) for lid in ids]) if ids else np.zeros((0, 0))
    n = S.shape[0]
    T = {lid: np.array([np.nan if v is None else float(v) for v in truth[lid]], dtype=np.float64) for lid in ids if lid in truth}
    for lid, t in T.items():
        if t.size != n:
            raise BadInputError(f"label {lid}: {t.size} truth values for {n} scored rows")
    labels = {}
    for j, label in enumerate(task.labels):
        if label.id not in T:
            continue
        labels[label.id] = _label_block(label, T[label.id], S[:, j], seed=seed, n_boot=n_boot)
    report = EvalReport(
        task=task.name,
        mode=task.mode,
        settings={"seed": seed, "n_boot": n_boot, "ci_level": 0.95, "ci_method": "percentile bootstrap",
                  "calibration_bins": M.N_BINS, "positive_when": "score >= threshold"},
        labels=labels,
    )
    if task.mode == "multiclass" and T:
        report.multiclass = _multiclass_block(ids, T, S)
    if true_verdicts is not None and predicted_verdicts is not None and task.verdicts:
        report.verdicts = _verdict_block([v.id for v in task.verdicts], true_verdicts, predicted_verdicts)
    return report


def _label_block(label, t: np.ndarray, s: np.ndarray, *, seed: int, n_boot: int) -> dict[str, Any]:
    known = ~np.isnan(t)
    y, p = t[known].astype(np.int64), s[known]
    n_pos, n_neg = int(y.sum()), int(y.size - y.sum())
    block: dict[str, Any] = {
        "name": label.display("en"),
        "polarity": label.polarity,
        "n_pos": n_pos,
        "n_neg": n_neg,
        "n_unknown": int((~known).sum()),
        "prevalence": n_pos / y.size if y.size else None,
        "auroc": None,
        "auroc_ci": None,
        "auprc": None,
        "at_threshold": M.threshold_stats(y, p, label.threshold).to_dict(),
        "brier": M.brier_score(y, p),
        "ece": M.expected_calibration_error(y, p),
        "roc": None,
    }
    if n_pos and n_neg:
        fpr, tpr, _ = M.roc_curve(y, p)
        block.update(
            auroc=M.auroc(y, p),
            auroc_ci=M.bootstrap_ci(y, p, n_boot=n_boot, seed=seed).to_dict(),
            roc={"fpr": fpr.tolist(), "tpr": tpr.tolist()},
        )
    if n_pos:
        block["auprc"] = M.average_precision(y, p)
    if not (n_pos and n_neg):
        block["note"] = "AUROC needs positive and negative rows"
    edges, count, mean_score, frac = M.calibration_bins(y, p)
    block["reliability"] = {
        "edges": edges.tolist(), "count": count.tolist(), "mean_score": mean_score.tolist(), "fraction_positive": frac.tolist(),
    }
    return block


def _multiclass_block(ids: list[str], T: Mapping[str, np.ndarray], S: np.ndarray) -> dict[str, Any]:
    classes = np.full(S.shape[0], -1, dtype=np.int64)
    for j, lid in enumerate(ids):
        if lid in T:
            classes[T[lid] == 1] = j
    rows = classes >= 0
    y, P = classes[rows], S[rows]
    out: dict[str, Any] = {"n": int(rows.sum()), "n_without_class": int((~rows).sum()), "labels": ids}
    if not rows.any():
        out["note"] = "no row names its class"
        return out
    # the same ranking as top-k accuracy, so top-1 equals the confusion matrix's accuracy
    predicted = np.argsort(P, axis=1, kind="mergesort")[:, ::-1][:, 0]
    true_ids, pred_ids = [ids[i] for i in y], [ids[i] for i in predicted]
    out.update(
        top_1=M.top_k_accuracy(y, P, 1),
        top_5=M.top_k_accuracy(y, P, 5) if len(ids) > 5 else None,
        balanced_accuracy=M.balanced_accuracy(true_ids, pred_ids),
        macro_f1=M.macro_f1(true_ids, pred_ids),
        confusion={"rows": "true", "columns": "predicted", "labels": ids, "matrix": M.confusion_matrix(true_ids, pred_ids, ids).tolist()},
    )
    if len(ids) <= 5:
        out["top_5_note"] = f"top-5 is 1 by definition with {len(ids)} labels"
    return out


def _verdict_block(order: list[str], human: Sequence[str | None], model: Sequence[str | None]) -> dict[str, Any]:
    """Human against medzero over the rows both judged; medzero's abstentions counted apart.

    A row medzero called ``not_applicable`` (the task does not judge that input) is no triage
    level: it is counted in ``n`` and ``n_abstained``, shown in the confusion matrix's extra
    ``not_applicable`` column (``abstained``, per human verdict), and left out of the agreement
    and both kappas, which are over the ``n_judged`` rows. A row it called ``uncertain`` (in
    scope, a conformal rule not sure) is counted the same way but apart: ``n_uncertain`` and the
    ``uncertain`` column."""
    pairs = [(h, m) for h, m in zip(human, model) if h is not None and m is not None]
    judged = [(h, m) for h, m in pairs if m not in (NOT_APPLICABLE.id, UNCERTAIN.id)]
    abstained = [h for h, m in pairs if m == NOT_APPLICABLE.id]
    unsure = [h for h, m in pairs if m == UNCERTAIN.id]
    h = [a for a, _ in judged]
    m = [b for _, b in judged]
    cm = M.confusion_matrix(h, m, order)
    return {
        "n": len(pairs),
        "n_judged": len(judged),
        "n_abstained": len(abstained),
        "abstention_rate": len(abstained) / len(pairs) if pairs else None,
        "abstained_as": NOT_APPLICABLE.id,
        "n_uncertain": len(unsure),
        "uncertain_rate": len(unsure) / len(pairs) if pairs else None,
        "labels": order,
        "confusion": {
            "rows": "human", "columns": "medzero", "labels": order, "matrix": cm.tolist(),
            "abstained": [abstained.count(v) for v in order],  # the not_applicable column, per human verdict
            **({"uncertain": [unsure.count(v) for v in order]} if unsure else {}),  # the uncertain column
        },
        "agreement_over": "judged rows (not_applicable and uncertain left out)",
        "agreement": float(np.trace(cm) / cm.sum()) if cm.sum() else None,
        "kappa": M.cohen_kappa(h, m, labels=order),
        "kappa_linear": M.cohen_kappa(h, m, labels=order, weights="linear"),
    }


# -- from a manifest ---------------------------------------------------------------------------


@dataclass
class ScoredManifest:
    """A manifest's rows classified: the rows that scored, their Results, and the failures."""

    manifest: Manifest
    task: Task
    rows: list[int]  # indices into manifest.rows that scored
    results: list[Any]  # medzero.Result, one per scored row
    errors: list[dict[str, Any]]
    models: list[str]

    def truth(self) -> dict[str, list[float]]:
        return {lid: self.manifest.truth(lid)[self.rows].tolist() for lid in self.manifest.label_ids}

    def scores(self) -> dict[str, list[float]]:
        return {lid: [r.scores[lid] for r in self.results] for lid in self.task.label_ids()}


def score_manifest(
    manifest: Manifest,
    task: Task,
    classifier: Any,
    *,
    progress: Callable[[int], None] | None = None,
    keep_unscored: bool = False,
) -> ScoredManifest:
    """Classify every row; rows that fail are listed in ``errors`` and left out. With
    ``keep_unscored``, a result without scores (signal-only: no model) is kept for its
    measurements: fitting metric limits needs no model."""
    files = [str(row.file) for row in manifest.rows]
    results = classifier.classify_batch(files, progress=progress)
    if len(results) != len(files):  # pragma: no cover - classify_batch keeps one result per file
        raise MedzeroError(f"expected {len(files)} results, got {len(results)}")
    rows, ok, errors = [], [], []
    ids = task.label_ids()
    for i, (row, result) in enumerate(zip(manifest.rows, results)):
        error = result.error
        if error is None and (result.scores or not keep_unscored) and list(result.scores) != ids:
            error = f"scored for task {result.task} with labels {', '.join(result.scores)}, not {task.name}"
        if error is not None:
            errors.append({"line": row.line, "path": row.path, "error": error})
            continue
        rows.append(i)
        ok.append(result)
    models = sorted({r.model for r in ok if r.model})
    return ScoredManifest(manifest, task, rows, ok, errors, models)


def evaluate(
    manifest: "str | os.PathLike | Manifest",
    task: "str | os.PathLike | Task | None" = None,
    *,
    labels: "str | Sequence[str] | None" = None,
    multilabel: bool = False,
    calibration: "str | os.PathLike | Calibration | None" = None,
    classifier: Any = None,
    audio_model: str | None = None,
    image_model: str | None = None,
    device: str = "auto",
    batch_size: int = 8,
    seed: int = 0,
    n_boot: int = 1000,
    progress: Callable[[int], None] | None = None,
) -> EvalReport:
    """Classify a labelled manifest and report how the task did on it (see the module docstring).

    ``task`` is a shipped name, a YAML path or a Task; ``labels`` makes an ad-hoc task instead.
    ``calibration`` is an overlay from ``medzero calibrate`` whose thresholds replace the task's.
    ``classifier`` (a :class:`medzero.Classifier` for the same task) is used as it is; otherwise
    one is made from the model options.
    """
    from ..classifier import Classifier

    base, adhoc = _resolve_task(task, labels, multilabel)
    base_hash = task_sha256(base) if not adhoc else None
    cal = None
    scoring_task = base
    if calibration is not None:
        scoring_task, cal = apply_calibration(base, calibration)
    table = manifest if isinstance(manifest, Manifest) else read_manifest(manifest, base)
    if classifier is None:
        if adhoc:
            classifier = Classifier(labels=labels, multilabel=multilabel, audio_model=audio_model,
                                    image_model=image_model, device=device, batch_size=batch_size)
        else:
            classifier = Classifier(task=scoring_task, audio_model=audio_model, image_model=image_model,
                                    device=device, batch_size=batch_size)
    scored = score_manifest(table, scoring_task, classifier, progress=progress)
    if not scored.results:
        first = scored.errors[0]
        raise BadInputError(
            f"no row of {table.source} could be classified; line {first['line']}: {first['error']}"
        )
    if adhoc:  # the ad-hoc task of the files' modality, as the classifier built it
        base = scoring_task = task_from_labels(labels, modality=scored.results[0].modality, multilabel=multilabel)
        base_hash = task_sha256(base)
    if cal is not None:
        for fingerprint in scored.models:
            check_model(cal, fingerprint)
        for r in scored.results:  # the overlay's probabilities and conformal verdicts, as a calibrated Classifier gives them
            cal.annotate(r, scoring_task, get_modality(r.modality).metric_info)
    report = evaluate_scores(
        scoring_task,
        scored.truth(),
        scored.scores(),
        true_verdicts=[table.rows[i].verdict for i in scored.rows] if table.has_verdict else None,
        predicted_verdicts=[r.verdict for r in scored.results] if table.has_verdict else None,
        seed=seed,
        n_boot=n_boot,
    )
    for lid, block in report.labels.items():
        block["threshold_source"] = cal.labels[lid].source if cal and lid in cal.labels else "task file"
    if cal is not None:
        same = bool(cal.data_sha256) and cal.data_sha256 == table.data_hash
        for lid, extra in calibration_figures(cal, scored.truth(), scored.scores()).items():
            for block in extra.values():  # figures on the rows the overlay was fitted on are not held-out figures
                block["rows"] = "the overlay's own fitting rows (apparent, optimistic)" if same else "held out from the overlay's fit"
            report.labels[lid].update(extra)
    report.rows = {"manifest": len(table), "scored": len(scored.results), "failed": len(scored.errors)}
    report.errors = scored.errors
    report.calibration = {"status": "calibrated", **cal.to_dict()} if cal else None
    report.reproducibility = _reproducibility(table, base, base_hash, scored, cal, seed, n_boot)
    return report


def calibration_figures(cal: Calibration, truth: Mapping[str, Sequence[float]], scores: Mapping[str, Sequence[float]]) -> dict[str, dict[str, Any]]:
    """Per label with a truth column: ``probability`` (ECE / Brier / log-loss of the raw scores and of
    the overlay's probabilities, the latter's reliability bins) and ``conformal`` (coverage)."""
    ids = list(scores)
    n = len(next(iter(scores.values()))) if scores else 0
    rows = [{lid: scores[lid][i] for lid in ids} for i in range(n)]
    mapped = [cal.probability.apply(r) for r in rows] if cal.probability is not None else None
    out: dict[str, dict[str, Any]] = {}
    for lid in truth:
        t = np.asarray(truth[lid], dtype=np.float64)
        known = ~np.isnan(t)
        y, s = t[known].astype(np.int64), np.asarray(scores[lid], dtype=np.float64)[known]
        extra: dict[str, Any] = {}
        if mapped is not None and lid in cal.probability.maps:
            p = np.array([m[lid] for m in mapped], dtype=np.float64)[known]
            edges, count, mean_p, frac = M.calibration_bins(y, p)
            extra["probability"] = {
                "method": cal.probability.method, "n": int(y.size), "bins": f"{M.N_BINS} equal-width",
                "before": {"ece": M.expected_calibration_error(y, s), "brier": M.brier_score(y, s), "log_loss": log_loss(y, s)},
                "after": {"ece": M.expected_calibration_error(y, p), "brier": M.brier_score(y, p), "log_loss": log_loss(y, p)},
                "reliability": {"edges": edges.tolist(), "count": count.tolist(), "mean_score": mean_p.tolist(),
                                "fraction_positive": frac.tolist()},
            }
        if cal.conformal is not None and lid in cal.conformal.qhat:
            extra["conformal"] = {"alpha": cal.conformal.alpha, "qhat": cal.conformal.qhat[lid],
                                  **coverage_figures(y, s, cal.conformal.qhat[lid], cal.conformal.alpha)}
        if extra:
            out[lid] = extra
    return out


def _resolve_task(task, labels, multilabel) -> tuple[Task, bool]:
    if task is not None and labels is not None:
        raise TaskError("give either a task or labels, not both")
    if labels is not None:
        # the label ids are the typed texts whatever the modality; the real task is rebuilt once
        # the files' modality is known
        return task_from_labels(labels, modality="audio", multilabel=multilabel), True
    if task is None:
        raise TaskError("name the task to evaluate (--task NAME or a YAML file)")
    return load_task(task), False


def _reproducibility(table: Manifest, task: Task, task_hash, scored: ScoredManifest, cal, seed, n_boot) -> dict[str, Any]:
    return {
        "medzero_version": __version__,
        "models": scored.models,
        "task": {"name": task.name, "source": task.source, "sha256": task_hash[0], "sha256_of": task_hash[1]},
        "calibration": {"path": cal.path, "sha256": cal.sha256} if cal else None,
        "manifest": {"path": str(table.source), "sha256": table.sha256, "rows": len(table)},
        "data_sha256": table.data_hash,
        "data_hash_of": "sorted (path as written, file sha256, labels, verdict)",
        "seed": seed,
        "n_boot": n_boot,
        "numpy_version": np.__version__,
        "python_version": platform.python_version(),
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def _clean(value: Any) -> Any:
    """JSON-safe: numpy scalars to Python, ``nan``/``inf`` to ``None``."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return _clean(value.tolist())
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if np.isfinite(value) else None
    return value
