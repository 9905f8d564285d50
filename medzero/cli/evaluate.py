"""``medzero eval`` and ``medzero calibrate``: click commands for the main ``medzero`` group.

    medzero eval site.csv --task chest_xray_findings -o out/report.json     # + out/report.html
    medzero calibrate site.csv --task chest_xray_findings -o site.yaml --method sensitivity --target-sensitivity 0.9
    medzero eval site.csv --task chest_xray_findings --calibration site.yaml -o out/calibrated.json
    medzero calibrate site.csv --task chest_xray_findings -o site.yaml --method isotonic --conformal-alpha 0.1

``--method`` names the threshold rule (``youden``, ``sensitivity``) and/or the probability map
(``platt``, ``isotonic``, ``temperature``): give it twice to choose both
(``--method sensitivity --method platt``); the thresholds are always fitted (``youden`` unless
named), a probability map only when one is named.

They hold no statistics of their own: everything comes from :mod:`medzero.evaluation`. A problem
a user caused is one line, ``medzero: error: ...``, on standard error with exit status 1 (2 for
usage errors). Rows that fail to classify are listed (``medzero: warning: line N: ...``) and left
out; the report still comes out.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import click

from ..core.errors import MedzeroError
from ._common import fail, model_options, progress, render_table, write_text

__all__ = ["eval_command", "calibrate_command"]


def _warn_rows(errors: list[dict[str, Any]]) -> None:
    for err in errors:
        click.echo(f"medzero: warning: line {err['line']}: {err['error']}", err=True)


def _run(fn: Callable, total: int, models: dict, **kwargs: Any):
    with progress("classifying", total) as advance:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            value = fn(progress=advance, audio_model=models.get("audio"), image_model=models.get("image"), **kwargs)
    from ..tasks.overlay import CalibrationWarning

    for w in caught:
        if issubclass(w.category, CalibrationWarning):  # an overlay for another model or task version
            click.echo(f"medzero: warning: {' '.join(str(w.message).split())}", err=True)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return value


@click.command("eval")
@click.argument("manifest", metavar="MANIFEST", type=click.Path(dir_okay=False, path_type=str))
@click.option("--task", "task", metavar="NAME|FILE", help="A shipped prompt set (see `medzero tasks`) or a YAML file.")
@click.option("--labels", metavar="'a,b,c'", help="Ad-hoc labels instead of a task (the manifest's columns are the labels as typed).")
@click.option("--multilabel", is_flag=True, help="Score ad-hoc labels each on its own.")
@click.option("--calibration", metavar="FILE", type=click.Path(dir_okay=False, path_type=str), help="A site overlay from `medzero calibrate`: its thresholds replace the task's.")
@model_options
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1))
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the bootstrap resamples.")
@click.option("--bootstrap", "n_boot", default=1000, show_default=True, type=click.IntRange(min=0), help="Bootstrap resamples for the AUROC intervals.")
@click.option("--format", "fmt", default="html", show_default=True, type=click.Choice(["html", "md"]), help="The readable report written next to the JSON.")
@click.option("-o", "--output", metavar="FILE.json", type=click.Path(dir_okay=False, path_type=str), help="Write the JSON report here and the HTML/Markdown report beside it (same name).")
def eval_command(manifest, task, labels, multilabel, calibration, models, device, batch_size, seed, n_boot, fmt, output):
    """Evaluate a task on labelled files: MANIFEST is a CSV or JSONL with a path column and one column per label (and/or a verdict column).

    Prints per-label AUROC (95% bootstrap CI), AUPRC, sensitivity/specificity/PPV at the task's
    thresholds, Brier and calibration error; for multiclass tasks top-1/top-5, balanced accuracy,
    macro-F1 and the confusion matrix; with a verdict column, the agreement with people (kappa).
    With an overlay that has probability maps: ECE and Brier of the raw scores and of the calibrated
    probabilities; with a conformal rule: its empirical coverage on these rows, met or not."""
    from ..evaluation.evaluate import evaluate
    from ..evaluation.report import (
        CONFORMAL_COLUMNS, PROBABILITY_COLUMNS, SUMMARY_COLUMNS, apparent_note, conformal_rows, probability_rows, render_html, render_markdown,
        summary_rows, verdict_confusion, verdict_counts,
    )

    if (task is None) == (labels is None):
        raise fail("give one of --task and --labels", 2)
    if multilabel and labels is None:
        raise fail("--multilabel goes with --labels", 2)
    if calibration is not None and labels is not None:
        raise fail("--calibration goes with --task (ad-hoc labels have no calibration)", 2)
    try:
        total = _count_rows(manifest)
        report = _run(
            evaluate, total, models, manifest=manifest, task=task, labels=labels, multilabel=multilabel, calibration=calibration,
            device=device, batch_size=batch_size, seed=seed, n_boot=n_boot,
        )
    except MedzeroError as exc:
        raise fail(str(exc))
    data = report.to_dict()
    _warn_rows(data["errors"])
    text = [f"task {data['task']} ({data['mode']}): {data['rows']['scored']} of {data['rows']['manifest']} rows scored; "
            f"{data['calibration'].get('summary') or data['calibration']['status']}"]
    text.append(render_table(SUMMARY_COLUMNS, summary_rows(data)))
    prob, conf = probability_rows(data), conformal_rows(data)
    if (prob or conf) and apparent_note(data):
        text.append(f"note: {apparent_note(data)}")
    if prob:
        text.append("calibrated probabilities (raw = the model's scores; ECE over 10 equal-width bins):")
        text.append(render_table(PROBABILITY_COLUMNS, prob))
    if conf:
        text.append("conformal coverage (share of rows whose true value is in the set; 95% Wilson interval; met when it reaches 1 - alpha):")
        text.append(render_table(CONFORMAL_COLUMNS, conf))
    mc = data.get("multiclass")
    if mc and mc.get("confusion"):
        top5 = "–" if mc["top_5"] is None else f"{mc['top_5']:.3f}"
        text.append(f"multiclass ({mc['n']} rows): top-1 {mc['top_1']:.3f}, top-5 {top5}, "
                    f"balanced accuracy {mc['balanced_accuracy']:.3f}, macro-F1 {mc['macro_f1']:.3f}")
        text.append(_confusion_text(mc["confusion"]["labels"], mc["confusion"]["matrix"], "true \\ predicted"))
    v = data.get("verdicts")
    if v:
        kappa = "–" if v["kappa"] is None else f"{v['kappa']:.3f}"
        agreement = "–" if v["agreement"] is None else f"{v['agreement']:.3f}"
        text.append(f"verdicts ({v['n']} rows): {verdict_counts(v)}; over the {v['n_judged']} judged rows: "
                    f"agreement {agreement}, Cohen's kappa {kappa}")
        columns, matrix = verdict_confusion(v)
        text.append(render_table(["human \\ medzero", *columns], [[name, *map(str, row)] for name, row in zip(v["labels"], matrix)]))
    if output:
        target = Path(output)
        readable = target.with_suffix(".html" if fmt == "html" else ".md")
        if readable == target:
            raise fail(f"-o {output}: name the JSON file (e.g. report.json); the {fmt} report goes beside it", 2)
        write_text(report.to_json(), target)
        write_text(render_html(data) if fmt == "html" else render_markdown(data), readable)
        text.append(f"wrote {target} and {readable}")
    click.echo("\n".join(text))


def _confusion_text(labels: Sequence[str], matrix: Sequence[Sequence[int]], corner: str) -> str:
    return render_table([corner, *labels], [[name, *map(str, row)] for name, row in zip(labels, matrix)])


def _count_rows(manifest: str) -> int:
    """Rows for the progress bar (a CSV's header is not one)."""
    try:
        with open(manifest, "rb") as fh:
            lines = sum(1 for line in fh if line.strip())
    except OSError:
        return 0
    return lines if manifest.lower().endswith((".jsonl", ".ndjson", ".json")) else max(0, lines - 1)


@click.command("calibrate")
@click.argument("manifest", metavar="MANIFEST", type=click.Path(dir_okay=False, path_type=str))
@click.option("--task", "task", required=True, metavar="NAME|FILE", help="A shipped prompt set or a YAML file.")
@click.option("-o", "--output", required=True, metavar="SITE.yaml", type=click.Path(dir_okay=False, path_type=str), help="Where to write the calibration overlay.")
@click.option("--method", "methods", multiple=True, type=click.Choice(["youden", "sensitivity", "platt", "isotonic", "temperature"]),
              help="Threshold rule: youden (default), or the most specific threshold that reaches --target-sensitivity; and/or "
                   "probability map: platt, isotonic or temperature (calibrated probabilities beside the raw scores). Repeatable, one of each.")
@click.option("--conformal-alpha", "alpha", type=click.FloatRange(min=0, max=1, min_open=True, max_open=True),
              help="Also fit a per-label split-conformal rule at this error rate (e.g. 0.1): a label is decided only when sure at 1 - alpha, else 'uncertain'.")
@click.option("--target-sensitivity", "target", type=click.FloatRange(min=0, max=1, min_open=True), help="With --method sensitivity (default 0.9).")
@click.option("--folds", default=5, show_default=True, type=click.IntRange(min=2), help="Cross-validation folds for the reported estimates.")
@model_options
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1))
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the cross-validation folds.")
def calibrate_command(manifest, task, output, methods, alpha, target, folds, models, device, batch_size, seed):
    """Fit per-label thresholds (label columns) and metric limits (a verdict column) on labelled files and write a site overlay (use it with --calibration).

    Metric limits need no model: without CLAP weights they are fitted from the measurements of a
    signal-only run. Beside each threshold or limit fitted on all rows, sensitivity and specificity are estimated by
    stratified k-fold cross-validation: no row is scored by a threshold it helped fit."""
    from ..evaluation.calibrate import METHODS, calibrate

    rules = [m for m in methods if m in METHODS]
    maps = [m for m in methods if m not in METHODS]
    if len(rules) > 1 or len(maps) > 1:
        raise fail("--method: give at most one threshold rule (youden, sensitivity) and one probability map (platt, isotonic, temperature)", 2)
    method, probability = (rules or [None])[0], (maps or [None])[0]
    if method is None:
        method = "sensitivity" if target is not None else "youden"
    if method == "youden" and target is not None:
        raise fail("--target-sensitivity goes with --method sensitivity", 2)
    target = 0.9 if target is None else target
    try:
        result = _run(
            calibrate, _count_rows(manifest), models, manifest=manifest, task=task, method=method, target=target, folds=folds,
            seed=seed, device=device, batch_size=batch_size, probability=probability, conformal_alpha=alpha,
        )
        result.write(output)
    except MedzeroError as exc:
        raise fail(str(exc))
    except OSError as exc:
        raise fail(f"cannot write {output}: {exc.strerror or exc}")
    _warn_rows(result.errors)
    rows = []
    for f in result.fits:
        a = f.apparent.to_dict() if f.apparent else {}
        cv = f.cv.to_dict() if f.cv else {}
        rows.append([
            f.id, f"{f.n_pos}/{f.n_neg}", f"{f.previous:.3f}", "–" if f.threshold is None else f"{f.threshold:.4f}",
            _f(a.get("sensitivity")), _f(a.get("specificity")), _f(cv.get("sensitivity")), _f(cv.get("specificity")),
            f.skipped or (f"{cv['folds']} folds" if cv else "too few rows for CV"),
        ])
    click.echo(f"task {result.overlay['overlay_for']}: {result.overlay['method']} on {result.rows} rows")
    if rows:
        click.echo(render_table(["label", "n+/n−", "was", "threshold", "sens (same rows)", "spec (same rows)", "sens (CV)", "spec (CV)", "note"], rows), nl=False)
    if result.metric_fits:
        skipped = f"; {result.not_applicable} not-applicable rows left out" if result.not_applicable else ""
        click.echo(f"metric limits from the verdict column (n+: rows judged the rule's verdict or worse that no other rule or label flags){skipped}")
        click.echo(render_table(["metric", "verdict", "n+/n−", "was", "limit", "sens (same rows)", "spec (same rows)", "sens (CV)", "spec (CV)", "note"],
                                [_metric_row(f) for f in result.metric_fits]), nl=False)
    if result.probability_fits:
        click.echo(f"{probability} probabilities (CV: each fold mapped by what was fitted on the others; "
                   "ECE over 10 equal-width bins; raw = the model's scores)")
        click.echo(render_table(["label", "n+/n−", "ECE raw", "ECE (CV)", "Brier raw", "Brier (CV)", "note"],
                                [_probability_row(f) for f in result.probability_fits]), nl=False)
    if result.conformal_fits:
        click.echo(f"conformal rule at alpha {alpha:g} (coverage target {1 - alpha:.0%}; CV: each fold's sets from the others' qhat; 95% Wilson interval)")
        click.echo(render_table(["label", "n", "qhat", "coverage (CV)", "interval", "met", "uncertain (CV)", "note"],
                                [_conformal_row(f) for f in result.conformal_fits]), nl=False)
    click.echo(f"wrote {output}; use it with --calibration {output}")


def _probability_row(f) -> list[str]:
    cv = f.cv or {}
    return [f.id, f"{f.n_pos}/{f.n_neg}", _f(cv.get("ece_raw")), _f(cv.get("ece")), _f(cv.get("brier_raw")), _f(cv.get("brier")),
            f.skipped or (f"{cv['folds']} folds" if cv else "too few rows for CV")]


def _conformal_row(f) -> list[str]:
    cv = f.cv or {}
    interval = cv.get("interval")
    return [f.id, str(f.n), _f(f.qhat), _f(cv.get("coverage")), "–" if not interval else f"[{interval[0]:.3f}, {interval[1]:.3f}]",
            "–" if not cv else ("met" if cv["met"] else "NOT MET"), _f(cv.get("uncertain_rate")),
            f.skipped or _conformal_note(f, cv)]


def _conformal_note(f, cv) -> str:
    """Says when a rule can never decide: fewer rows than 1 / alpha - 1 make qhat 1, every set both values."""
    trivial = "too few rows for this alpha: every label stays uncertain; " if f.qhat == 1.0 else ""
    return trivial + (f"{cv['folds']} folds" if cv else "too few rows for CV")


def _metric_row(f) -> list[str]:
    a = f.apparent.to_dict() if f.apparent and f.limit is not None else {}
    cv = f.cv.to_dict() if f.cv else {}
    return [
        f"{f.metric} {f.side}", f.verdict, f"{f.n_pos}/{f.n_neg}", f"{f.previous:g}", "–" if f.limit is None else f"{f.limit:.6g}",
        _f(a.get("sensitivity")), _f(a.get("specificity")), _f(cv.get("sensitivity")), _f(cv.get("specificity")),
        f.skipped or (f"{cv['folds']} folds" if cv else "too few rows for CV"),
    ]


def _f(value: Any) -> str:
    return "–" if value is None else f"{value:.3f}"
