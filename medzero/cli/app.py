"""``medzero app``: the Streamlit app that ships inside the package."""
from __future__ import annotations

import click


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind; 127.0.0.1 keeps the app on this machine.")
@click.option("--port", default=8501, show_default=True, type=int)
@click.argument("streamlit_args", nargs=-1, type=click.UNPROCESSED)
def app(host, port, streamlit_args):
    """Start the Streamlit app."""
    from ..app import run

    raise click.exceptions.Exit(run(list(streamlit_args), host=host, port=port))
