"""What every ``medzero`` subcommand shares: one-line failures, the model options, progress, tables."""
from __future__ import annotations

import dataclasses
import functools
import io
import os
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import click

from ..core.modality import get_modality, modality_names
from ..core.sniff import PCM_SAMPLE_FORMATS, SAMPLE_RATE_RANGE, PcmFormat

__all__ = ["fail", "model_options", "pcm_options", "progress", "render_table", "write_text"]


def fail(message: str, code: int = 1) -> "click.exceptions.Exit":
    """Print ``medzero: error: <message>`` and return the Exit to raise (1; 2 for usage errors)."""
    click.echo(f"medzero: error: {message}", err=True)
    return click.exceptions.Exit(code)


def backend_option(command: Callable) -> Callable:
    """``--backend`` (``MEDZERO_BACKEND``), passed to ``command`` as ``backend``."""
    from ..encoders import backends as backends

    return click.option("--backend", type=click.Choice(backends.BACKENDS), envvar=backends.ENV, help=backends.OPTION_HELP)(command)


def model_options(command: Callable) -> Callable:
    """``--<modality>-model`` for every registered modality, ``--device`` and ``--backend``, passed
    as ``models={modality: ref}`` and ``device``; ``--backend`` is the default backend of every
    model the command opens (:func:`medzero.encoders.backends.use`). Every subcommand that opens a model
    or an index takes the same set, so a script can pass the same options to all of them."""
    names = modality_names()

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from ..encoders import backends as backend

        kwargs["models"] = {name: kwargs.pop(f"{name}_model", None) for name in names}
        with backend.use(kwargs.pop("backend", None)):
            return command(*args, **kwargs)

    wrapper = backend_option(wrapper)
    wrapper = click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]))(wrapper)
    helps = {"audio": "CLAP model", "image": "open_clip model"}
    for name in reversed(names):
        wrapper = click.option(
            f"--{name}-model",
            metavar="ID|DIR",
            envvar=f"MEDZERO_{name.upper()}_MODEL",
            help=f"{helps.get(name, name + ' model')}: a registered name, hub id or local directory (an index's own by default).",
        )(wrapper)
    return wrapper


def pcm_options(command: Callable) -> Callable:
    """``--pcm-rate``, ``--pcm-format`` and ``--pcm-channels``: the layout of raw headerless ``.pcm``
    files (default 16000 Hz, s16le, mono; also ``MEDZERO_PCM_RATE`` / ``_FORMAT`` / ``_CHANNELS``),
    passed to ``command`` as ``limits``, the ``{modality: limits}`` a Classifier takes: the audio
    limits with their ``pcm`` set, or ``None`` when no option is given (the environment's then)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        given = {k: kwargs.pop(f"pcm_{k}") for k in ("rate", "format", "channels")}
        kwargs["limits"] = None
        if any(v is not None for v in given.values()):
            default = PcmFormat.from_env()
            pcm = PcmFormat(given["rate"] or default.rate, given["format"] or default.sample_format,
                            given["channels"] or default.channels)
            kwargs["limits"] = {"audio": dataclasses.replace(get_modality("audio").limits(), pcm=pcm)}
        return command(*args, **kwargs)

    low, high = SAMPLE_RATE_RANGE
    wrapper = click.option("--pcm-channels", type=click.IntRange(1, 64), envvar="MEDZERO_PCM_CHANNELS",
                           help="Channels of raw .pcm files, interleaved  [default: 1]")(wrapper)
    wrapper = click.option("--pcm-format", type=click.Choice(PCM_SAMPLE_FORMATS), envvar="MEDZERO_PCM_FORMAT",
                           help="Sample format of raw .pcm files  [default: s16le]")(wrapper)
    wrapper = click.option("--pcm-rate", type=click.IntRange(low, high), metavar="HZ", envvar="MEDZERO_PCM_RATE",
                           help="Sample rate of raw .pcm files (headerless; WAV, MP3, ... named .pcm are decoded "
                                "by their content)  [default: 16000]")(wrapper)
    return wrapper


@contextmanager
def progress(label: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """A progress bar on standard error (only on a terminal, and only for more than one item;
    ``total=None`` when the count is not known in advance, e.g. a PACS query); yields ``advance(n)``."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    with Progress(
        TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=console, transient=True, disable=(total is not None and total <= 1) or not console.is_terminal,
    ) as bar:
        job = bar.add_task(label, total=total)
        yield lambda n: bar.advance(job, n)


def render_table(columns: Sequence[str], rows: Sequence[Sequence[str]], *, empty: str = "") -> str:
    """A plain-text table (no colour, 160 columns, long cells folded)."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(file=io.StringIO(), width=160, force_terminal=False, color_system=None)
    if not rows and empty:
        console.print(empty)
        return console.file.getvalue()
    table = Table(header_style="bold")
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(Text(str(cell)) for cell in row))  # paths may hold [brackets]: no markup
    console.print(table)
    return console.file.getvalue()


def write_text(text: str, output: "str | os.PathLike | None") -> None:
    """To ``output`` atomically (its folder made, a temp file renamed over it), or to standard output."""
    if output:
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        tmp = f"{os.fspath(output)}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        os.replace(tmp, output)
    else:
        click.echo(text, nl=not text.endswith("\n"))
