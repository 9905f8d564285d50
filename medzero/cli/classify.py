"""``medzero classify``: recordings and images, files or folders, sniffed by content."""
from __future__ import annotations

import csv
import io
import json

import click

from ..core.errors import MedzeroError
from ._common import fail, model_options, progress, render_table, write_text

FORMATS = ("table", "json", "jsonl", "csv")


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--task", "task", metavar="NAME|FILE", help="A shipped prompt set (see `medzero tasks`) or a YAML file.")
@click.option("--prompts", "prompts_file", metavar="FILE", type=click.Path(dir_okay=False), help="Your own prompt-set YAML.")
@click.option("--labels", metavar="'a,b,c'", help="Ad-hoc labels, comma-separated (multiclass unless --multilabel).")
@click.option("--template", metavar="T", help="Template for ad-hoc labels, with {} for the label (default: 'This is a sound of {}.').")
@click.option("--multilabel", is_flag=True, help="Score each ad-hoc label on its own against a neutral negative.")
@model_options
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1))
@click.option("--window", "window_s", default=10.0, show_default=True, type=click.FloatRange(min=0.5), help="Timeline window of long recordings, seconds.")
@click.option("--hop", "hop_s", default=5.0, show_default=True, type=click.FloatRange(min=0.1), help="Timeline hop, seconds.")
@click.option("--format", "fmt", default="table", show_default=True, type=click.Choice(FORMATS))
@click.option("--lang", default="en", show_default=True, type=click.Choice(["en", "zh"]), help="Language of names and reasons in the table.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True), help="Write the results here instead of standard output.")
def classify(paths, task, prompts_file, labels, template, multilabel, models, device, batch_size, window_s, hop_s, fmt, lang, output):
    """Classify recordings and images (files or folders, sniffed by content)."""
    from ..classifier import Classifier, expand_sources

    if sum(x is not None for x in (task, prompts_file, labels)) > 1:
        raise fail("give one of --task, --prompts and --labels", 2)
    if (template or multilabel) and labels is None:
        raise fail("--template and --multilabel go with --labels", 2)
    try:
        classifier = Classifier(
            task or prompts_file, labels=labels, template=template, multilabel=multilabel, models=models,
            device=device, batch_size=batch_size, window_s=window_s, hop_s=hop_s,
        )
        sources = expand_sources(list(paths))
    except MedzeroError as exc:
        raise fail(str(exc))
    if not sources:
        raise fail("no audio or image files found in " + ", ".join(paths))
    with progress("classifying", len(sources)) as advance:
        results = classifier.classify_batch(sources, progress=advance)
    write_text(render(results, fmt, lang), output)
    failed = [r for r in results if r.error]
    for r in failed:
        click.echo(f"medzero: error: {r.error}", err=True)
    if failed:
        raise click.exceptions.Exit(1)


def render(results, fmt: str, lang: str) -> str:
    """Results as a table, JSON, JSON lines or CSV (one row per source, scores as columns)."""
    if fmt == "json":
        return json.dumps([r.to_dict() for r in results], ensure_ascii=False, indent=2) + "\n"
    if fmt == "jsonl":
        return "".join(json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in results)
    if fmt == "csv":
        labels: list[str] = []
        metrics: list[str] = []
        for r in results:
            labels += [k for k in r.scores if k not in labels]
            metrics += [k for k in r.metrics if k not in metrics]
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["path", "modality", "task", "verdict", "error", *labels, *metrics])
        for r in results:
            writer.writerow(
                [r.source, r.modality, r.task, r.verdict or "", r.error or ""]
                + [f"{r.scores[k]:.6f}" if k in r.scores else "" for k in labels]
                + [r.metrics.get(k, "") for k in metrics]
            )
        return buf.getvalue()
    rows = []
    for r in results:
        if r.error:
            rows.append((r.source, "error", "", r.error))
            continue
        names = {k: v.get(lang, k) for k, v in r.label_names.items()}
        top = ", ".join(f"{names.get(k, k)} {v:.2f}" for k, v in r.top(3))
        reasons = "; ".join(reason.text(lang) for reason in r.reasons)
        rows.append((r.source, (r.verdict_name or {}).get(lang) or r.verdict or "", top, reasons))
    return render_table(("file", "verdict", "top labels", "reasons"), rows)
