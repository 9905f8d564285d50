"""``medzero index add | search | remove | stats | copy``: case search over a persistent index.

INDEX is an index folder or a PostgreSQL URL (``postgresql://user@host/db``, many writers; needs
``medzero[postgres]``). ``--store URL`` names the database instead, and the command then takes no
INDEX argument. Passwords come from the URL, ``PGPASSWORD``, ``~/.pgpass`` or the file
``MEDZERO_PG_PASSWORD_FILE`` names, and are never printed.
"""
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
    """Case search: a persistent index, in a folder (FAISS + SQLite) or in PostgreSQL (pgvector).

    INDEX is a folder or a postgresql:// URL; or give --store URL and leave INDEX out."""


def _open(path, models=None, device="auto", readonly=False):
    from ..retrieval import CaseIndex

    return CaseIndex(path, models=models, device=device, readonly=readonly)


def store_option(command):
    """``--store URL`` (``MEDZERO_INDEX_STORE``): the PostgreSQL database that holds the index; the
    command then takes no INDEX argument (what was typed first is the next argument)."""
    return click.option(
        "--store", "store", metavar="URL", envvar="MEDZERO_INDEX_STORE",
        help="A postgresql:// URL holding the index; INDEX is then left out.",
    )(command)


def _shift(store, index_path, rest):
    """``(index, rest)``: with --store the first positional belongs to ``rest``."""
    if store is None:
        if index_path is None:
            raise fail("give INDEX (a folder or a postgresql:// URL) or --store URL", 2)
        return index_path, list(rest)
    from ..retrieval.backend import is_url

    if not is_url(store):
        raise fail("--store takes a postgresql:// URL (an index folder is given as INDEX)", 2)
    return store, ([index_path] if index_path is not None else []) + list(rest)


@index.command("add")
@click.argument("index_path", metavar="INDEX", required=False)
@click.argument("paths", nargs=-1, type=click.Path(path_type=str))
@store_option
@click.option("--task", metavar="NAME|FILE", help="Also store this task's zero-shot scores with each case.")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--format", "fmt", default="table", show_default=True, type=click.Choice(["table", "json"]))
@model_options
@dicomweb_options
@engine_options
def index_add(index_path, paths, store, task, batch_size, fmt, models, device, query, credentials, engine):
    """Add recordings and images (files or folders) to INDEX, creating it if needed.

    With --engine ray the files are read, decoded and embedded on a Ray cluster; this process
    stays the index's one writer and commits each batch as it comes back, so a run that is
    stopped keeps every committed batch and the same command adds only what is missing.
    """
    from ..core.ingest import expand, is_url

    index_path, paths = _shift(store, index_path, paths)
    if not paths:
        raise fail("give the files or folders to add", 2)
    paths = apply_dicomweb_options(tuple(paths), query, credentials)
    try:
        with _open(index_path, models, device) as idx:
            shown = idx.path
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
                   f"{len(report.errors)} error(s); {total} case(s) in {shown}")
        for path in report.duplicates:
            click.echo(f"  duplicate: {path}")
    for message, count in Counter(message for _, message in report.errors).items():  # a missing model: said once
        click.echo(f"medzero: error: {message}" + (f" ({count} files)" if count > 1 else ""), err=True)
    if report.errors:
        raise click.exceptions.Exit(1)


@index.command("search")
@click.argument("index_path", metavar="INDEX", required=False)
@click.argument("query", required=False)
@store_option
@click.option("--like", "like", type=click.Path(exists=True, dir_okay=False), help="Search by an example file instead of text.")
@click.option("-k", "k", default=5, show_default=True, type=click.IntRange(min=1))
@click.option("--modality", type=click.Choice(modality_names()))
@click.option("--where", "where", multiple=True, metavar="EXPR", help="Filter, e.g. 'ViewPosition=PA' or 'score.pleural_effusion>0.5' (repeatable).")
@click.option("--exact", is_flag=True, help="Brute-force search even when the index is approximate.")
@click.option("--format", "fmt", default="table", show_default=True, type=click.Choice(["table", "json"]))
@model_options
def index_search(index_path, query, store, like, k, modality, where, exact, fmt, models, device):
    """Find the cases closest to a text QUERY or to an example file (--like)."""
    index_path, rest = _shift(store, index_path, [query] if query is not None else [])
    if len(rest) > 1:
        raise fail(f"unexpected argument {rest[1]!r} (with --store, leave INDEX out)", 2)
    query = rest[0] if rest else None
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
@click.argument("index_path", metavar="INDEX", required=False)
@click.argument("cases", nargs=-1, metavar="ID|PATH...")
@store_option
@model_options
def index_remove(index_path, cases, store, models, device):
    """Remove cases by id or by path."""
    index_path, cases = _shift(store, index_path, cases)
    if not cases:
        raise fail("give the ids or paths of the cases to remove", 2)
    refs = [int(c) if c.isdigit() else c for c in cases]
    try:
        with _open(index_path, models, device) as idx:
            shown = idx.path
            removed = idx.remove(refs)
            total = len(idx)
    except MedzeroError as exc:
        raise fail(str(exc))
    if not removed:
        raise fail(f"none of {', '.join(cases)} is in {shown}")
    click.echo(f"removed {len(removed)} case(s); {total} left")


@index.command("stats")
@click.argument("index_path", metavar="INDEX", required=False)
@store_option
@model_options
def index_stats(index_path, store, models, device):
    """What an index holds: spaces, models, counts, index types and sizes (JSON)."""
    index_path, rest = _shift(store, index_path, [])
    if rest:
        raise fail(f"unexpected argument {rest[0]!r} (with --store, leave INDEX out)", 2)
    try:
        with _open(index_path, models, device, readonly=True) as idx:
            stats = idx.stats()
    except MedzeroError as exc:
        raise fail(str(exc))
    click.echo(json.dumps(stats, ensure_ascii=False, indent=2, default=str))


@index.command("copy")
@click.argument("src", metavar="SRC")
@click.argument("dst", metavar="DST")
@click.option("--batch-size", default=2000, show_default=True, type=click.IntRange(min=1), help="Cases per transaction.")
@click.option("--format", "fmt", default="table", show_default=True, type=click.Choice(["table", "json"]))
def index_copy(src, dst, batch_size, fmt):
    """Copy the index SRC into DST (each a folder or a postgresql:// URL), both ways.

    Vectors and rows go as they are (nothing is embedded again), one transaction per batch.
    Cases DST holds already are skipped, so a copy that was stopped is finished by running
    the same command again. The copies get DST's own ids.
    """
    from ..retrieval import CaseIndex, copy_index

    try:
        with CaseIndex(src, readonly=True) as source, CaseIndex(dst) as target:
            with progress("copying", len(source)) as advance:
                report = copy_index(source, target, batch_size=batch_size, progress=advance)
            total, shown = len(target), target.path
    except MedzeroError as exc:
        raise fail(str(exc))
    if fmt == "json":
        click.echo(json.dumps({"added": len(report.added), "duplicates": len(report.duplicates), "cases": total}, indent=2))
    else:
        click.echo(f"copied {len(report.added)} case(s), skipped {len(report.duplicates)} already there; {total} case(s) in {shown}")
