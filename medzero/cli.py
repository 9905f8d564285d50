"""The ``medzero`` command. ``main(args)`` is callable from tests, like pydicom's CLI.

It holds no loading or scoring logic: every command calls the public API. A problem a user caused
is printed as one line (``medzero: error: ...``) with a non-zero exit; in a batch, a bad file gets
an error row, the rest go on, and the exit status is 1 when any file failed.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import os
import sys
from typing import Any, Sequence

import click

from .core.errors import MedzeroError

_logger = logging.getLogger("medzero")

FORMATS = ("table", "json", "jsonl", "csv")


def _fail(message: str, code: int = 1) -> "click.exceptions.Exit":
    click.echo(f"medzero: error: {message}", err=True)
    return click.exceptions.Exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="medzero")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """Zero-shot triage of recordings (CLAP) and X-ray/DICOM images (CLIP)."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="medzero: %(levelname)s: %(message)s", stream=sys.stderr)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        if verbose == 0:
            hf_logging.set_verbosity_error()
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--task", "task", metavar="NAME|FILE", help="A shipped prompt set (see `medzero tasks`) or a YAML file.")
@click.option("--prompts", "prompts_file", metavar="FILE", type=click.Path(dir_okay=False), help="Your own prompt-set YAML.")
@click.option("--labels", metavar="'a,b,c'", help="Ad-hoc labels, comma-separated (multiclass unless --multilabel).")
@click.option("--template", metavar="T", help="Template for ad-hoc labels, with {} for the label (default: 'This is a sound of {}.').")
@click.option("--multilabel", is_flag=True, help="Score each ad-hoc label on its own against a neutral negative.")
@click.option("--audio-model", metavar="ID|DIR", envvar="MEDZERO_AUDIO_MODEL", help="CLAP model: a name, hub id or local directory.")
@click.option("--image-model", metavar="ID|DIR", envvar="MEDZERO_IMAGE_MODEL", help="open_clip model: a name, hf-hub: id or local-dir: path.")
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1))
@click.option("--window", "window_s", default=10.0, show_default=True, type=click.FloatRange(min=0.5), help="Timeline window of long recordings, seconds.")
@click.option("--hop", "hop_s", default=5.0, show_default=True, type=click.FloatRange(min=0.1), help="Timeline hop, seconds.")
@click.option("--format", "fmt", default="table", show_default=True, type=click.Choice(FORMATS))
@click.option("--lang", default="en", show_default=True, type=click.Choice(["en", "zh"]), help="Language of names and reasons in the table.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True), help="Write the results here instead of standard output.")
def classify(paths, task, prompts_file, labels, template, multilabel, audio_model, image_model, device, batch_size, window_s, hop_s, fmt, lang, output):
    """Classify recordings and images (files or folders, sniffed by content)."""
    from .api import Classifier, expand_sources

    if sum(x is not None for x in (task, prompts_file, labels)) > 1:
        raise _fail("give one of --task, --prompts and --labels", 2)
    if (template or multilabel) and labels is None:
        raise _fail("--template and --multilabel go with --labels", 2)
    try:
        classifier = Classifier(
            task or prompts_file,
            labels=labels,
            template=template,
            multilabel=multilabel,
            audio_model=audio_model,
            image_model=image_model,
            device=device,
            batch_size=batch_size,
            window_s=window_s,
            hop_s=hop_s,
        )
        sources = expand_sources(list(paths))
    except MedzeroError as exc:
        raise _fail(str(exc))
    if not sources:
        raise _fail("no audio or image files found in " + ", ".join(paths))
    results = _run_with_progress(classifier, sources)
    text = _render(results, fmt, lang)
    if output:
        tmp = f"{output}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        os.replace(tmp, output)
    else:
        click.echo(text, nl=not text.endswith("\n"))
    failed = [r for r in results if r.error]
    for r in failed:
        click.echo(f"medzero: error: {r.error}", err=True)
    if failed:
        raise click.exceptions.Exit(1)


def _run_with_progress(classifier, sources: list[Any]):
    if len(sources) == 1:
        return classifier.classify_batch(sources)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    from rich.console import Console

    console = Console(stderr=True)
    with Progress(
        TextColumn("[bold]classifying"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=console, transient=True, disable=not console.is_terminal,
    ) as bar:
        job = bar.add_task("classify", total=len(sources))
        return classifier.classify_batch(sources, progress=lambda n: bar.advance(job, n))


def _record(result) -> dict[str, Any]:
    return result.to_dict()


def _render(results, fmt: str, lang: str) -> str:
    if fmt == "json":
        return json.dumps([_record(r) for r in results], ensure_ascii=False, indent=2) + "\n"
    if fmt == "jsonl":
        return "".join(json.dumps(_record(r), ensure_ascii=False) + "\n" for r in results)
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
    return _table(results, lang)


def _table(results, lang: str) -> str:
    from rich.console import Console
    from rich.table import Table

    table = Table(show_lines=False, header_style="bold")
    for column in ("file", "verdict", "top labels", "reasons"):
        table.add_column(column, overflow="fold")
    for r in results:
        if r.error:
            table.add_row(r.source, "[red]error[/red]", "", r.error)
            continue
        names = {k: v.get(lang, k) for k, v in r.label_names.items()}
        top = ", ".join(f"{names.get(k, k)} {v:.2f}" for k, v in r.top(3))
        reasons = "; ".join(reason.text(lang) for reason in r.reasons)
        verdict = (r.verdict_name or {}).get(lang) or r.verdict or ""
        table.add_row(r.source, verdict, top, reasons)
    console = Console(file=io.StringIO(), width=160, force_terminal=False, color_system=None)
    console.print(table)
    return console.file.getvalue()


@cli.command()
@click.option("--modality", type=click.Choice(["audio", "image"]))
@click.option("--format", "fmt", default="table", type=click.Choice(["table", "json"]), show_default=True)
@click.option("--lang", default="en", show_default=True, type=click.Choice(["en", "zh"]))
def tasks(modality, fmt, lang):
    """List the shipped prompt sets and their labels."""
    from .core.prompts import list_tasks

    try:
        found = [t for t in list_tasks() if modality in (None, t.modality)]
    except MedzeroError as exc:
        raise _fail(str(exc))
    if fmt == "json":
        click.echo(json.dumps([t.model_dump(mode="json") for t in found], ensure_ascii=False, indent=2))
        return
    for t in found:
        verdicts = " / ".join(v.id for v in t.verdicts) or "top label"
        click.echo(f"{t.name}  ({t.modality}, {t.mode}; verdicts: {verdicts})")
        if t.description:
            click.echo(f"    {t.description.get(lang)}")
        for label in t.labels:
            click.echo(f"    - {label.id}: {label.display(lang)}  [{label.polarity}, threshold {label.threshold:.2f}]")
        for metric, rule in t.metrics.items():
            limits = ", ".join(f"{k} {v:g}" for k, v in (("min", rule.min), ("max", rule.max)) if v is not None)
            click.echo(f"    * {metric}: {limits}")


@cli.command()
@click.option("--modality", type=click.Choice(["audio", "image"]))
def models(modality):
    """List the registered models (any local directory or hub id works too)."""
    from .core.encoder import default_model, list_models

    for cfg in list_models(modality):
        mark = "*" if cfg.name == default_model(cfg.modality) else " "
        rev = f"@{cfg.revision}" if cfg.revision else ""
        click.echo(f"{mark} {cfg.name:<22} {cfg.modality:<6} {cfg.hub_id}{rev}  {cfg.description}")


@cli.group()
def index():
    """Case search: a persistent FAISS index with SQLite metadata."""


_model_options = [
    click.option("--audio-model", metavar="ID|DIR", envvar="MEDZERO_AUDIO_MODEL", help="CLAP model (default: the index's own)."),
    click.option("--image-model", metavar="ID|DIR", envvar="MEDZERO_IMAGE_MODEL", help="open_clip model (default: the index's own)."),
    click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"])),
]


def _with_models(command):
    for option in reversed(_model_options):
        command = option(command)
    return command


def _open_index(path, audio_model=None, image_model=None, device="auto", readonly=False):
    from .retrieval import CaseIndex

    return CaseIndex(path, audio_model=audio_model, image_model=image_model, device=device, readonly=readonly)


@index.command("add")
@click.argument("index_path", metavar="INDEX", type=click.Path(file_okay=False))
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--task", metavar="NAME|FILE", help="Also store this task's zero-shot scores with each case.")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--format", "fmt", default="table", show_default=True, type=click.Choice(["table", "json"]))
@_with_models
def index_add(index_path, paths, task, batch_size, fmt, audio_model, image_model, device):
    """Add recordings and images (files or folders) to INDEX, creating it if needed."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from .api import expand_sources

    try:
        with _open_index(index_path, audio_model, image_model, device) as idx:
            sources = expand_sources(list(paths))
            console = Console(stderr=True)
            with Progress(TextColumn("[bold]indexing"), BarColumn(), MofNCompleteColumn(), console=console,
                          transient=True, disable=not console.is_terminal) as bar:
                job = bar.add_task("add", total=len(sources))
                report = idx.add(sources, task=task, batch_size=batch_size, progress=lambda n: bar.advance(job, n))
            total = len(idx)
    except MedzeroError as exc:
        raise _fail(str(exc))
    if fmt == "json":
        click.echo(json.dumps(report.to_dict(), ensure_ascii=False, indent=2))
    else:
        click.echo(f"added {len(report.added)}, skipped {len(report.duplicates)} duplicate(s), "
                   f"{len(report.errors)} error(s); {total} case(s) in {index_path}")
        for path in report.duplicates:
            click.echo(f"  duplicate: {path}")
    for path, message in report.errors:
        click.echo(f"medzero: error: {message}", err=True)
    if report.errors:
        raise click.exceptions.Exit(1)


@index.command("search")
@click.argument("index_path", metavar="INDEX", type=click.Path(exists=True, file_okay=False))
@click.argument("query", required=False)
@click.option("--like", "like", type=click.Path(exists=True, dir_okay=False), help="Search by an example file instead of text.")
@click.option("-k", "k", default=5, show_default=True, type=click.IntRange(min=1))
@click.option("--modality", type=click.Choice(["audio", "image"]))
@click.option("--where", "where", multiple=True, metavar="EXPR", help="Filter, e.g. 'ViewPosition=PA' or 'score.pleural_effusion>0.5' (repeatable).")
@click.option("--exact", is_flag=True, help="Brute-force search even when the index is approximate.")
@click.option("--format", "fmt", default="table", show_default=True, type=click.Choice(["table", "json"]))
@_with_models
def index_search(index_path, query, like, k, modality, where, exact, fmt, audio_model, image_model, device):
    """Find the cases closest to a text QUERY or to an example file (--like)."""
    from pathlib import Path

    if (query is None) == (like is None):
        raise _fail("give a text query or --like FILE (one of them)", 2)
    try:
        with _open_index(index_path, audio_model, image_model, device, readonly=True) as idx:
            hits = idx.search(Path(like) if like else query, k=k, modality=modality, where=list(where) or None, exact=exact)
    except MedzeroError as exc:
        raise _fail(str(exc))
    if fmt == "json":
        click.echo(json.dumps([h.to_dict() for h in hits], ensure_ascii=False, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(header_style="bold")
    for column in ("id", "score", "modality", "path", "metadata"):
        table.add_column(column, overflow="fold")
    for h in hits:
        meta = ", ".join(f"{key}={value}" for key, value in h.metadata.items() if key not in ("scores",))
        table.add_row(str(h.id), f"{h.score:.3f}", h.modality, h.path, meta)
    console = Console(file=io.StringIO(), width=160, color_system=None)
    console.print(table if hits else "no matching cases")
    click.echo(console.file.getvalue(), nl=False)


@index.command("remove")
@click.argument("index_path", metavar="INDEX", type=click.Path(exists=True, file_okay=False))
@click.argument("cases", nargs=-1, required=True, metavar="ID|PATH...")
def index_remove(index_path, cases):
    """Remove cases by id or by path."""
    refs = [int(c) if c.isdigit() else c for c in cases]
    try:
        with _open_index(index_path) as idx:
            removed = idx.remove(refs)
            total = len(idx)
    except MedzeroError as exc:
        raise _fail(str(exc))
    if not removed:
        raise _fail(f"none of {', '.join(cases)} is in {index_path}")
    click.echo(f"removed {len(removed)} case(s); {total} left")


@index.command("stats")
@click.argument("index_path", metavar="INDEX", type=click.Path(exists=True, file_okay=False))
def index_stats(index_path):
    """What an index holds: spaces, models, counts, index types and sizes (JSON)."""
    try:
        with _open_index(index_path, readonly=True) as idx:
            stats = idx.stats()
    except MedzeroError as exc:
        raise _fail(str(exc))
    click.echo(json.dumps(stats, ensure_ascii=False, indent=2, default=str))


@cli.command(context_settings={"ignore_unknown_options": True})
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind; 127.0.0.1 keeps the app on this machine.")
@click.option("--port", default=8501, show_default=True, type=int)
@click.argument("streamlit_args", nargs=-1, type=click.UNPROCESSED)
def app(host, port, streamlit_args):
    """Start the Streamlit app."""
    import subprocess
    from pathlib import Path

    entry = Path(__file__).resolve().parent.parent / "streamlit_app.py"
    if not entry.exists():
        raise _fail(f"the app entry file {entry} is missing (the app runs from a source checkout)")
    command = [sys.executable, "-m", "streamlit", "run", str(entry), "--server.address", host, "--server.port", str(port), *streamlit_args]
    raise click.exceptions.Exit(subprocess.call(command))


def main(args: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status instead of exiting (for tests and embedding)."""
    try:
        # standalone_mode=False returns the code of an Exit raised in a command instead of exiting.
        code = cli.main(args=list(args) if args is not None else None, prog_name="medzero", standalone_mode=False)
        return code if isinstance(code, int) else 0
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("medzero: aborted", err=True)
        return 130
    except MedzeroError as exc:
        click.echo(f"medzero: error: {exc}", err=True)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
