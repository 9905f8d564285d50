"""``medzero index add | search | remove | stats``: case search over a persistent index."""
from __future__ import annotations

import json
from collections import Counter

import click

from ..core.errors import MedzeroError
from ..core.modality import modality_names
from ._common import fail, model_options, progress, render_table
from ..pacs.cli import apply_dicomweb_options, dicomweb_options
from ._engine import engine_options, ray_session


@click.group()
def index():
    """Case search: a persistent FAISS index with SQLite metadata."""


def _open(path, models=None, device="auto", readonly=False):
    from ..retrieval import CaseIndex

    return CaseIndex(path, models=models, device=device, readonly=readonly)


@index.command("add")
@click.argument("index_path", metavar="INDEX", type=click.Path(file_okay=False))
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--task", metavar="NAME|FILE", help="Also store this task's zero-shot scores with each case.")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--format", "fmt", default="table", show_default=True, type=click.Choice(["table", "json"]))
@model_options
@dicomweb_options
@engine_options
def index_add(index_path, paths, task, batch_size, fmt, models, device, query, credentials, engine):
    """Add recordings and images (files or folders) to INDEX, creating it if needed.

    With --engine ray the files are read, decoded and embedded on a Ray cluster; this process
    stays the index's one writer and commits each batch as it comes back, so a run that is
    stopped keeps every committed batch and the same command adds only what is missing.
    """
    from ..core.ingest import expand, is_url

    paths = apply_dicomweb_options(paths, query, credentials)
    try:
        with _open(index_path, models, device) as idx:
            if engine is not None:
                from ..distributed import list_files

                files = list_files(list(paths), absolute=True)
                with ray_session(engine.options), progress("indexing", len(files)) as advance:
                    report = idx.add(files, task, batch_size=batch_size, progress=advance, engine=engine)
            elif any(is_url(p) for p in paths):  # PACS sources: listed and fetched as they are added
                with progress("indexing", None) as advance:
                    report = idx.add(list(paths), task=task, batch_size=batch_size, progress=advance)
            else:
                sources = expand(list(paths), absolute=True)
                with progress("indexing", len(sources)) as advance:
                    report = idx.add(sources, task=task, batch_size=batch_size, progress=advance)
            total = len(idx)
    except MedzeroError as exc:
        raise fail(str(exc))
    if fmt == "json":
        click.echo(json.dumps(report.to_dict(), ensure_ascii=False, indent=2))
    else:
        click.echo(f"added {len(report.added)}, skipped {len(report.duplicates)} duplicate(s), "
                   f"{len(report.errors)} error(s); {total} case(s) in {index_path}")
        for path in report.duplicates:
            click.echo(f"  duplicate: {path}")
    for message, count in Counter(message for _, message in report.errors).items():  # a missing model: said once
        click.echo(f"medzero: error: {message}" + (f" ({count} files)" if count > 1 else ""), err=True)
    if report.errors:
        raise click.exceptions.Exit(1)


@index.command("search")
@click.argument("index_path", metavar="INDEX", type=click.Path(exists=True, file_okay=False))
@click.argument("query", required=False)
@click.option("--like", "like", type=click.Path(exists=True, dir_okay=False), help="Search by an example file instead of text.")
@click.option("-k", "k", default=5, show_default=True, type=click.IntRange(min=1))
@click.option("--modality", type=click.Choice(modality_names()))
@click.option("--where", "where", multiple=True, metavar="EXPR", help="Filter, e.g. 'ViewPosition=PA' or 'score.pleural_effusion>0.5' (repeatable).")
@click.option("--exact", is_flag=True, help="Brute-force search even when the index is approximate.")
@click.option("--format", "fmt", default="table", show_default=True, type=click.Choice(["table", "json"]))
@model_options
def index_search(index_path, query, like, k, modality, where, exact, fmt, models, device):
    """Find the cases closest to a text QUERY or to an example file (--like)."""
    if (query is None) == (like is None):
        raise fail("give a text query or --like FILE (one of them)", 2)
    filters = list(where) or None
    try:
        with _open(index_path, models, device, readonly=True) as idx:
            if like:
                hits = idx.search_example(like, k=k, modality=modality, where=filters, exact=exact)
            else:
                hits = idx.search_text(query, k=k, modality=modality, where=filters, exact=exact)
    except MedzeroError as exc:
        raise fail(str(exc))
    if fmt == "json":
        click.echo(json.dumps([h.to_dict() for h in hits], ensure_ascii=False, indent=2))
        return
    rows = [
        (str(h.id), f"{h.score:.3f}", h.modality, h.path, ", ".join(f"{key}={value}" for key, value in h.metadata.items() if key != "scores"))
        for h in hits
    ]
    click.echo(render_table(("id", "score", "modality", "path", "metadata"), rows, empty="no matching cases"), nl=False)


@index.command("remove")
@click.argument("index_path", metavar="INDEX", type=click.Path(exists=True, file_okay=False))
@click.argument("cases", nargs=-1, required=True, metavar="ID|PATH...")
@model_options
def index_remove(index_path, cases, models, device):
    """Remove cases by id or by path."""
    refs = [int(c) if c.isdigit() else c for c in cases]
    try:
        with _open(index_path, models, device) as idx:
            removed = idx.remove(refs)
            total = len(idx)
    except MedzeroError as exc:
        raise fail(str(exc))
    if not removed:
        raise fail(f"none of {', '.join(cases)} is in {index_path}")
    click.echo(f"removed {len(removed)} case(s); {total} left")


@index.command("stats")
@click.argument("index_path", metavar="INDEX", type=click.Path(exists=True, file_okay=False))
@model_options
def index_stats(index_path, models, device):
    """What an index holds: spaces, models, counts, index types and sizes (JSON)."""
    try:
        with _open(index_path, models, device, readonly=True) as idx:
            stats = idx.stats()
    except MedzeroError as exc:
        raise fail(str(exc))
    click.echo(json.dumps(stats, ensure_ascii=False, indent=2, default=str))
