"""``medzero listen`` and the DICOMweb options of ``classify`` / ``index add``.

``listen_command`` is a click command for the ``medzero`` group (``cli.add_command(listen_command)``);
``dicomweb_options`` adds ``--query`` and ``--credentials`` to a command. Credentials are taken
from a file or the environment only, never from an option value.
"""
from __future__ import annotations

import importlib
import logging
import signal
import sys
import threading
from typing import Callable

import click

from ..encoders import backends as backends
from ..core.errors import MedzeroError

__all__ = ["listen_command", "dicomweb_options", "apply_dicomweb_options", "main"]


def dicomweb_options(command: Callable) -> Callable:
    """``--query QIDO`` and ``--credentials FILE`` for commands that read ``dicomweb://`` URLs."""
    command = click.option(
        "--credentials",
        metavar="FILE",
        type=click.Path(exists=True, dir_okay=False),
        envvar="MEDZERO_DICOMWEB_CREDENTIALS",
        help="DICOMweb credentials: JSON {\"token\"} or {\"user\", \"password\"}, or one line user:password or token "
        "(else MEDZERO_DICOMWEB_TOKEN, or MEDZERO_DICOMWEB_USER and MEDZERO_DICOMWEB_PASSWORD).",
    )(command)
    command = click.option(
        "--query",
        metavar="QIDO",
        help="QIDO-RS query for dicomweb:// URLs, e.g. 'Modality=CR&StudyDate=20260101-' (limit=N caps the instances).",
    )(command)
    return command


def apply_dicomweb_options(paths, query: str | None, credentials: str | None) -> list[str]:
    """The sources with ``--query`` and ``--credentials`` applied to their ``dicomweb://`` URLs.

    The query joins each URL's own (``?Modality=CR`` ...); the credentials file is handed to the
    scheme handler through ``MEDZERO_DICOMWEB_CREDENTIALS`` of this process, so it never appears in a
    source name, a result or a log line.
    """
    import os

    from ..core.ingest import is_url

    paths = [str(p) for p in paths]
    urls = [p for p in paths if is_url(p) and p.lower().startswith(("dicomweb://", "dicomwebs://"))]
    if (query or credentials) and not urls:
        raise click.UsageError("--query and --credentials go with dicomweb:// sources")
    if credentials:
        os.environ["MEDZERO_DICOMWEB_CREDENTIALS"] = os.path.abspath(credentials)
    if not query:
        return paths
    query = query.lstrip("?&")
    return [p + ("&" if "?" in p else "?") + query if p in urls else p for p in paths]


@click.command("listen")
@click.option("--ae-title", default="MEDZERO", show_default=True, help="This node's AE title.")
@click.option("--port", default=11112, show_default=True, type=click.IntRange(0, 65535))
@click.option("--bind", "host", default="0.0.0.0", show_default=True, help="Address to listen on.")
@click.option("--task", default="chest_xray_findings", show_default=True, metavar="NAME|FILE", help="The image task applied to every image.")
@click.option(
    "--allow", "allow", multiple=True, metavar="AET[,AET]",
    help="Calling AE titles accepted (repeat or comma-separate); others are refused. Default: any.",
)
@click.option("--send-to", metavar="HOST:PORT:AET|URL", help="Send an SR per study: C-STORE to HOST:PORT:AET, or STOW-RS to a dicomweb:// URL.")
@click.option("--credentials", metavar="FILE", type=click.Path(exists=True, dir_okay=False), envvar="MEDZERO_DICOMWEB_CREDENTIALS", help="Credentials file for a STOW-RS --send-to.")
@click.option("--index", "index", metavar="DIR", type=click.Path(file_okay=False), help="Also add every image to this case index.")
@click.option(
    "--results", "results_db", default="medzero-results.sqlite", show_default=True, type=click.Path(dir_okay=False),
    help="SQLite file of PHI-safe results (UIDs, scores, verdicts; no names, IDs or dates).",
)
@click.option("--image-model", metavar="ID|DIR", envvar="MEDZERO_IMAGE_MODEL", help="open_clip model: a registered name, hub id or local directory.")
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--backend", type=click.Choice(backends.BACKENDS), envvar=backends.ENV, help=backends.OPTION_HELP)
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--explain", is_flag=True,
    help="With --send-to: also send, per image, Secondary Captures of the top 3 labels' heatmaps (about 50 model passes an image).",
)
@click.option("--study-idle", "study_idle_s", default=30.0, show_default=True, type=click.FloatRange(min=0.1), help="Report a study after this many seconds without a new image, even if its association stays open.")
def listen_command(ae_title, port, host, task, allow, send_to, credentials, index, results_db, image_model, device, backend, batch_size, explain, study_idle_s):
    """Receive images by DICOM C-STORE, triage each one, and optionally send an SR back (a research tool)."""
    from .scp import Listener

    allowed = [a.strip() for value in allow for a in value.split(",") if a.strip()] or None
    _logging_for_node()
    try:
        backends.use_in_processes(backend, device)
        listener = Listener(
            ae_title, port, task, host=host, image_model=image_model, device=device, batch_size=batch_size,
            allow=allowed, index=index, send_to=send_to, credentials=credentials, results_db=results_db,
            study_idle_s=study_idle_s, explain=explain,
        )
    except MedzeroError as exc:
        click.echo(f"medzero: error: {exc}", err=True)
        raise click.exceptions.Exit(1)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: listener.shutdown())
    try:
        listener.serve_forever()
    except MedzeroError as exc:
        click.echo(f"medzero: error: {exc}", err=True)
        raise click.exceptions.Exit(1)
    except OSError as exc:  # the port is taken, or not ours to bind
        click.echo(f"medzero: error: cannot listen on {host}:{port}: {exc.strerror or exc}", err=True)
        raise click.exceptions.Exit(1)


def _logging_for_node() -> None:
    """A node says what it does: medzero.pacs at INFO, one line per record. pynetdicom's chatter is
    off, and so are pydicom's decoder tracebacks (medzero reports the same failure in one line)."""
    root = logging.getLogger()
    if not root.handlers:  # run outside the medzero group
        logging.basicConfig(level=logging.WARNING, format="medzero: %(levelname)s: %(message)s", stream=sys.stderr)
    pacs = logging.getLogger("medzero.pacs")
    if pacs.getEffectiveLevel() > logging.INFO:
        pacs.setLevel(logging.INFO)
    if root.getEffectiveLevel() > logging.DEBUG:  # -vv keeps everything
        importlib.import_module("pydicom.config")  # it sets its logger's level on import: import it first
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
        logging.getLogger("pydicom").setLevel(logging.CRITICAL)


def main(args: list[str] | None = None) -> int:
    """``python -m medzero.pacs.cli [listen options]``: the listen command on its own."""
    try:
        listen_command.main(args=args, prog_name="medzero listen", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
