"""The ``medzero`` command. ``main(args)`` is callable from tests, like pydicom's CLI.

It holds no loading or scoring logic: every command calls the public API. A problem a user caused
is printed as one line (``medzero: error: ...``) with a non-zero exit; in a batch, a bad file gets
an error row, the rest go on, and the exit status is 1 when any file failed.

Each subcommand lives in its own module; the ones that open a model or an index share
:func:`medzero.cli._common.model_options`.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from typing import Sequence

import click

from ..core.errors import MedzeroError

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="medzero")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """Zero-shot triage of recordings (CLAP) and X-ray/DICOM images (CLIP)."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="medzero: %(levelname)s: %(message)s", stream=sys.stderr)
    # transformers and huggingface_hub read these when they are imported, which only the commands
    # that load a model do: `medzero tasks` and `--help` never pay for importing them. Where they
    # are imported already (main() called from a program that uses them), set them directly.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if verbose == 0:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if "huggingface_hub" in sys.modules:
        sys.modules["huggingface_hub"].utils.disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        if verbose == 0:
            hf_logging.set_verbosity_error()


def _register() -> None:
    from .app import app
    from .classify import classify
    from .evaluate import calibrate_command, eval_command
    from .index import index
    from .info import models, tasks
    from ..pacs.cli import listen_command
    from ..service.cli import serve_command

    for command in (classify, tasks, models, index, eval_command, calibrate_command, listen_command, serve_command, app):
        cli.add_command(command)


_register()


def _on_interrupt(signum: int, frame: object) -> None:
    """Ctrl-C. While a model loads (or exports) in a worker thread, in native code that no signal
    reaches, a KeyboardInterrupt would wait for the load to finish, then again at exit for its
    threads (13-25 s with CLAP). So then the process leaves at once: one line, the unfinished ONNX
    export folders removed, exit status 130. Otherwise it is Python's own KeyboardInterrupt."""
    encoders = sys.modules.get("medzero.encoders.factory")
    if encoders is None or not encoders.loading():
        raise KeyboardInterrupt
    backends = sys.modules.get("medzero.encoders.backends")
    if backends is not None:
        backends.discard_unfinished_exports()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os.write(2, b"\nmedzero: aborted\n")  # the newline closes the terminal's ^C, as click does
    os._exit(130)


def main(args: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status instead of exiting (for tests and embedding). Run as
    the program (no ``args``), a Ctrl-C during a model load ends the process at once (:func:`_on_interrupt`)."""
    as_program = args is None and threading.current_thread() is threading.main_thread()
    if as_program and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_interrupt)
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
