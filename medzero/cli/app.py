"""``medzero app``: the Streamlit app that ships inside the package."""
from __future__ import annotations

import click

from ..encoders import backends as backends
from ..core.errors import MedzeroError


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind; 127.0.0.1 keeps the app on this machine.")
@click.option("--port", default=8501, show_default=True, type=int)
@click.option("--backend", type=click.Choice(backends.BACKENDS), envvar=backends.ENV, help=backends.OPTION_HELP)
@click.argument("streamlit_args", nargs=-1, type=click.UNPROCESSED)
def app(host, port, backend, streamlit_args):
    """Start the Streamlit app."""
    from ..app import run

    try:
        backends.use_in_processes(backend)  # the app runs in a streamlit subprocess, which inherits it
    except MedzeroError as exc:
        raise click.UsageError(str(exc))
    raise click.exceptions.Exit(run(list(streamlit_args), host=host, port=port))
