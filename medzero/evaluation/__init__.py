"""Evaluation and site calibration of a task on labelled files.

    from medzero.evaluation import evaluate, calibrate, apply_calibration
    report = evaluate("site.csv", "chest_xray_findings")          # EvalReport; .to_dict() is JSON
    site = calibrate("site.csv", "chest_xray_findings", method="sensitivity", target=0.9)
    site.write("site.yaml")
    task, calibration = apply_calibration(medzero.load_task("chest_xray_findings"), "site.yaml")

- :mod:`.metrics`: the statistics, in numpy, defined as scikit-learn defines them;
- :mod:`.manifest`: labelled CSV / JSONL manifests, checked against the task;
- :mod:`.evaluate`: classify a manifest and compute the report (or from scores alone);
- :mod:`.calibrate`: fitted thresholds with cross-validated estimates, written as an overlay;
- :mod:`.probability`: probability maps (Platt, isotonic, temperature) and split-conformal rules,
  cross-validated, for the overlay's ``probability`` and ``conformal`` blocks;
- :mod:`.report`: self-contained HTML / Markdown with inline SVG plots.

Reading and applying an overlay (``load_overlay``, ``apply_calibration``, ``check_model``,
``task_sha256``) is :mod:`medzero.tasks.overlay`, re-exported here; the commands are
:mod:`medzero.cli.evaluate`.
"""
from __future__ import annotations

from ..tasks.overlay import UNCALIBRATED, Calibration, CalibrationWarning, apply_calibration, check_model, load_overlay, task_sha256
from .calibrate import calibrate, calibrate_scores, fit_threshold
from .evaluate import EvalReport, evaluate, evaluate_scores
from .manifest import Manifest, read_manifest
from .probability import calibrate_conformal, calibrate_probabilities

__all__ = [
    "EvalReport",
    "evaluate",
    "evaluate_scores",
    "task_sha256",
    "Manifest",
    "read_manifest",
    "Calibration",
    "CalibrationWarning",
    "UNCALIBRATED",
    "apply_calibration",
    "calibrate",
    "calibrate_scores",
    "check_model",
    "fit_threshold",
    "calibrate_probabilities",
    "calibrate_conformal",
    "load_overlay",
]
