"""``medzero serve``: the public medzero API over HTTP, for hospital systems that integrate over HTTP.

Needs the ``serve`` extra (FastAPI, uvicorn). ``create_app(ServiceConfig(...))`` builds the app;
``medzero.service.cli.serve_command`` runs it. See :mod:`medzero.service.app` for the endpoints
and how the modules of this package fit together.
"""
from __future__ import annotations

__all__ = ["ServiceConfig", "create_app"]


def __getattr__(name: str):
    # FastAPI is imported only when the service is used, so `medzero serve --help` works without it.
    if name == "ServiceConfig":
        from .config import ServiceConfig

        return ServiceConfig
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(f"module 'medzero.service' has no attribute {name!r}")
