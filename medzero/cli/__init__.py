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
import sys
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
