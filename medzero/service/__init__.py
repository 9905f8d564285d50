"""``medzero serve``: the public medzero API over HTTP, for hospital systems that integrate over HTTP.

Needs the ``serve`` extra (FastAPI, uvicorn). ``create_app(ServiceConfig(...))`` builds the app;
``medzero.service.cli.serve_command`` runs it. See :mod:`medzero.service.app` for the endpoints.
"""
from __future__ import annotations

__all__ = ["ServiceConfig", "create_app"]


def __getattr__(name: str):
    # FastAPI is imported only when the service is used, so `medzero serve --help` works without it.
    if name in __all__:
        from . import app

        return getattr(app, name)
    raise AttributeError(f"module 'medzero.service' has no attribute {name!r}")
