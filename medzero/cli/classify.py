"""``medzero classify``: recordings and images, files or folders, sniffed by content.

``--engine ray`` runs the same classification on a Ray cluster (:mod:`medzero.distributed`) and
writes Parquet: one row per file, scores as columns, failed files kept as error rows.
"""
from __future__ import annotations

import csv
import io
import json
from collections import Counter

import click

from ..core.errors import MedzeroError
from ._common import fail, model_options, pcm_options, progress, render_table, write_text
from ..pacs.cli import apply_dicomweb_options, dicomweb_options
from ._engine import engine_options, ray_session

FORMATS = ("table", "json", "jsonl", "csv", "parquet")
#: The table's label column for an input the task does not judge (its raw scores are in JSON and CSV).
NOT_JUDGED = {"en": "not judged (raw scores: --format json or csv)", "zh": "未判读（原始分数见 --format json 或 csv）"}


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--task", "task", metavar="NAME|FILE", help="A shipped prompt set (see `medzero tasks`) or a YAML file.")
@click.option("--prompts", "prompts_file", metavar="FILE", type=click.Path(dir_okay=False), help="Your own prompt-set YAML.")
@click.option("--labels", metavar="'a,b,c'", help="Ad-hoc labels, comma-separated (multiclass unless --multilabel).")
@click.option("--template", metavar="T", help="Template for ad-hoc labels, with {} for the label (default: 'This is a sound of {}.').")
@click.option("--multilabel", is_flag=True, help="Score each ad-hoc label on its own against a neutral negative.")
@model_options
@pcm_options
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1))
@click.option("--window", "window_s", default=10.0, show_default=True, type=click.FloatRange(min=0.5), help="Timeline window of long recordings, seconds.")
@click.option("--hop", "hop_s", default=5.0, show_default=True, type=click.FloatRange(min=0.1), help="Timeline hop, seconds.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), help="[default: table; parquet with --engine ray] Parquet needs --output.")
@click.option("--lang", default="en", show_default=True, type=click.Choice(["en", "zh"]), help="Language of names and reasons in the table.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True), help="Write the results here instead of standard output.")
@click.option(
    "--calibration", metavar="FILE", type=click.Path(exists=True, dir_okay=False),
    help="A site calibration overlay written by `medzero calibrate` (its thresholds replace the task's).",
)
@click.option(
    "--explain", "explain_dir", metavar="DIR", type=click.Path(file_okay=False, writable=True),
    help="Write a heatmap overlay PNG per label per image into DIR (NNNN-label.png, listed in DIR/explanations.json); "
    "about 50 model passes per image.",
)
@click.option(
    "--explain-method", type=click.Choice(["auto", "occlusion", "gradient"]), default="auto", show_default=True,
    help="How --explain maps the evidence: occlusion (any backend; auto) or gradient (torch backend only).",
)
@click.option(
    "--mos/--no-mos", default=None,
    help="Measure speech quality with DNSMOS (mos_sig, mos_bak, mos_ovrl) [default: when the task's rules use it, "
    "as voice_quality's do; it costs more CPU than the audio model].",
)
@dicomweb_options
@engine_options
def classify(
    paths, task, prompts_file, labels, template, multilabel, models, device, limits, batch_size, window_s, hop_s, fmt, lang,
    output, calibration, explain_dir, explain_method, mos, query, credentials, engine,
):
    """Classify recordings and images (files or folders, sniffed by content)."""
    from ..classifier import Classifier, expand_sources
    from ..core.ingest import is_url

    if sum(x is not None for x in (task, prompts_file, labels)) > 1:
        raise fail("give one of --task, --prompts and --labels", 2)
    if (template or multilabel) and labels is None:
        raise fail("--template and --multilabel go with --labels", 2)
    fmt = fmt or ("parquet" if engine is not None else "table")
    if engine is not None and fmt != "parquet":
        raise fail("--engine ray writes Parquet: --output FILE.parquet", 2)
    if fmt == "parquet" and not output:
        raise fail("Parquet goes to a file: add --output FILE.parquet", 2)
    if calibration and not (task or prompts_file):
        raise fail("--calibration goes with the --task (or --prompts) it was fitted for", 2)
    if explain_dir and (engine is not None or query or any(is_url(p) for p in paths)):
        raise fail("--explain draws on files and folders read here (not with --engine ray or PACS sources)", 2)
    paths = apply_dicomweb_options(paths, query, credentials)
    try:
        classifier = Classifier(
            task or prompts_file, labels=labels, template=template, multilabel=multilabel, models=models,
            device=device, batch_size=batch_size, window_s=window_s, hop_s=hop_s, calibration=calibration, limits=limits,
            mos=mos,
        )
        if engine is not None:
            errors = _classify_on_ray(classifier, paths, engine, output)
        else:
            # PACS sources are listed and fetched as they are classified, so their count is not known up front.
            lazy = any(is_url(p) for p in paths)
            sources = list(paths) if lazy else expand_sources(list(paths))
            with progress("classifying", None if lazy else len(sources)) as advance:
                results = classifier.classify_batch(sources, progress=advance, explain=explain_method if explain_dir else False)
            if not results:
                raise fail("no audio or image files found in " + ", ".join(paths))
            if explain_dir:
                write_overlays(results, sources, explain_dir, lang)
            if fmt == "parquet":
                from ..distributed import results_table, write_parquet

                write_parquet(results_table(results), output)
            else:
                write_text(render(results, fmt, lang), output)
            errors = [r.error for r in results if r.error]
    except MedzeroError as exc:
        raise fail(str(exc))
    for error, count in Counter(errors).items():  # a missing model fails every file alike: said once
        click.echo(f"medzero: error: {error}" + (f" ({count} files)" if count > 1 else ""), err=True)
    if errors:
        raise click.exceptions.Exit(1)


def write_overlays(results, sources, directory: str, lang: str) -> None:
    """One PNG per label per explained image, ``NNNN-label.png`` (the input's number in the run and
    the label id made file-safe: never a file name, which may carry a patient's name), and
    ``explanations.json`` listing which input, label, score and method each file shows."""
    import os

    from medzero import explanation_overlays

    os.makedirs(directory, exist_ok=True)
    listed, unexplained = [], 0
    for number, (result, source) in enumerate(zip(results, sources), 1):
        if result.error is not None:
            continue
        if not result.explanations:
            unexplained += 1
            continue
        try:
            pictures = explanation_overlays(result, source.data, lang=lang)
        except MedzeroError as exc:
            click.echo(f"medzero: error: {result.source}: no overlay ({exc})", err=True)
            continue
        used: set[str] = set()
        for k, (label, png) in enumerate(pictures.items(), 1):
            name = f"{number:04d}-{_file_part(label)}.png"
            name = f"{number:04d}-{_file_part(label)}-{k}.png" if name in used else name  # labels alike once made file-safe
            used.add(name)
            with open(os.path.join(directory, name), "wb") as fh:
                fh.write(png)
            data = result.explanations[label]
            listed.append({"file": name, "source": result.source, "label": label, "score": data["score"], "method": data["method"]})
    write_text(json.dumps(listed, ensure_ascii=False, indent=2) + "\n", os.path.join(directory, "explanations.json"))
    if unexplained:
        click.echo(f"medzero: note: no heatmap for {unexplained} input(s): heatmaps are drawn for images the task judges", err=True)


def _file_part(label: str, limit: int = 60) -> str:
    """A label id as part of a file name: ASCII letters, digits and ``._-``, never empty or hidden."""
    import re

    return (re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("._") or "label")[:limit]


def _classify_on_ray(classifier, paths, engine, output) -> list[str]:
    """Classify on the cluster, write the Parquet file; the failed files' errors."""
    from ..distributed import classify_files, list_files, write_parquet

    files = list_files(list(paths))
    with ray_session(engine.options), progress("classifying", len(files)) as advance:
        table = classify_files(classifier, files, options=engine.options, progress=advance)
    if table.num_rows == 0:
        raise fail("no audio or image files found in " + ", ".join(paths))
    write_parquet(table, output)
    return [e for e in table.column("error").to_pylist() if e]


def render(results, fmt: str, lang: str) -> str:
    """Results as a table, JSON, JSON lines or CSV (one row per source, scores as columns)."""
    if fmt == "json":
        return json.dumps([r.to_dict() for r in results], ensure_ascii=False, indent=2) + "\n"
    if fmt == "jsonl":
        return "".join(json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in results)
    if fmt == "csv":
        labels: list[str] = []
        metrics: list[str] = []
        calibrated: list[str] = []  # labels with a site overlay's probability: a p.<label> column each
        for r in results:
            labels += [k for k in r.scores if k not in labels]
            metrics += [k for k in r.metrics if k not in metrics]
            calibrated += [k for k in r.probabilities if k not in calibrated]
        conformal = any(r.conformal for r in results)
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["path", "modality", "task", "verdict", "applicable", "signal_only", "calibration", "error", *labels,
                         *[f"p.{k}" for k in calibrated], *(["uncertain"] if conformal else []), *metrics])
        for r in results:
            writer.writerow(
                [r.source, r.modality, r.task, r.verdict or "", "" if r.error else str(r.applicable).lower(),
                 "" if r.error else str(r.signal_only).lower(), (r.calibration or {}).get("status", ""), r.error or ""]
                + [f"{r.scores[k]:.6f}" if k in r.scores else "" for k in labels]
                + [f"{r.probabilities[k]:.6f}" if k in r.probabilities else "" for k in calibrated]
                + ([";".join(r.uncertain)] if conformal else [])
                + [r.metrics.get(k, "") for k in metrics]
            )
        return buf.getvalue()
    rows = []
    for r in results:
        if r.error:
            rows.append((r.source, "error", "", r.error))
            continue
        names = {k: v.get(lang, k) for k, v in r.label_names.items()}
        if r.judged:
            top = ", ".join(f"{names.get(k, k)} {v:.2f}" + (f" (p {r.probabilities[k]:.2f})" if k in r.probabilities else "")
                            for k, v in r.top(3))  # raw score, and the site overlay's calibrated probability
        else:  # a top score of an input the task does not judge would read as a finding
            top = NOT_JUDGED[lang]
        reasons = "; ".join(reason.text(lang) for reason in r.reasons)
        rows.append((r.source, (r.verdict_name or {}).get(lang) or r.verdict or "", top, reasons))
    table = render_table(("file", "verdict", "top labels", "reasons"), rows)
    # Where the thresholds came from, once per distinct overlay (every JSON/CSV row carries it too).
    notes = dict.fromkeys(r.calibration.get("summary") or r.calibration.get("status", "") for r in results if r.calibration)
    return table + "".join(f"thresholds: {note}\n" for note in notes if note)
