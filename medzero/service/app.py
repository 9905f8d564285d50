"""The HTTP service: ``create_app(config)`` returns a FastAPI app over the public medzero API.

Endpoints (all JSON; every error is ``{"error": code, "detail": one line}``)::

    POST /v1/classify               one file: multipart (field ``file``) or the raw request body
    POST /v1/classify/batch         several files (multipart, field ``files``); a bad file gets an error row
    GET  /v1/tasks                  the shipped prompt sets
    GET  /v1/models                 registered models and the ones this server uses
    POST /v1/index/{name}/search    JSON ``{"text": ...}``, or an example file (multipart or raw body)
    POST /v1/index/{name}/cases     add files to the case index ``{name}`` under the index root
    GET  /healthz                   the process answers
    GET  /readyz                    200 once the models are loaded, else 503

Classification options (query string, or form fields of a multipart body): ``task`` or ``labels`` (with
``template``, ``multilabel``), ``lang`` (en, zh) and ``calibration``: the name of a site overlay written
by ``medzero calibrate`` and kept in the server's ``--calibration-dir`` (a client names one, never a
path; results say ``calibrated`` or ``uncalibrated``).

Classification goes through one :class:`~medzero.service.batching.Batcher`: each upload is decoded
in a decode thread, then concurrent uploads share one forward pass per modality on a single
compute thread, whatever their options (an embedding does not depend on the task that scores it),
and each is scored by its own options' ``Classifier``. ``/v1/*`` needs ``Authorization: Bearer <token>`` unless the server was
started with ``--insecure-no-auth`` (loopback only; the CLI enforces that).

Bounds: one request's body is capped (``max_upload_bytes``, ``max_batch_bytes``), and so is the
total held across all open requests, bodies and decoded uploads alike (``max_inflight_bytes``; see
:mod:`medzero.service.budget`): past it a request gets 503 with ``Retry-After``. Each decoder's own
limits are tightened to fit that budget (:func:`~medzero.service.config.input_limits`). Header and
body deadlines and the header size bound are the HTTP protocol's (:mod:`medzero.service.protocol`);
the body deadline is also enforced where the body is read (:mod:`medzero.service.uploads`). A
decoder that fails in a way it did not foresee costs its upload a 400 (in a batch, that file's
error row), never a 500.

Privacy: uploads are classified from memory under the neutral names ``upload`` / ``upload-N``;
their file names are never read, and the service's logs hold the method, the route template, the
status and the time, never a query string, a name, a label or a byte of a body.

This module only wires the parts: settings (:mod:`.config`), errors (:mod:`.errors`), request
bodies (:mod:`.uploads`), options (:mod:`.options`), what the app holds (:mod:`.state`), the
middleware (:mod:`.middleware`) and the routes (:mod:`.routers`).
"""
from __future__ import annotations

import os
from contextlib import asynccontextmanager

from fastapi import FastAPI

import medzero

from .config import CONFIG_ENV, ServiceConfig
from .errors import install_handlers
from .middleware import Guard, add_cors
from .routers import ROUTERS
from .state import ServiceState

__all__ = ["create_app", "app_from_env"]


def create_app(config: ServiceConfig | None = None) -> FastAPI:
    """The service app for ``config``; models load when the app starts (see ``/readyz``)."""
    config = config or ServiceConfig()
    if not config.insecure_no_auth and not config.api_key_hashes:
        raise ValueError("no API keys configured: give key hashes, or insecure_no_auth for a loopback-only server")
    state = ServiceState(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state.start()
        yield
        await state.stop()

    app = FastAPI(
        title="medzero",
        version=medzero.__version__,
        summary="Zero-shot triage of clinical recordings (CLAP) and X-ray/DICOM images (CLIP) over HTTP.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.medzero = state  # what the routes reach through state_of(request)
    install_handlers(app)
    if config.cors_origins:
        add_cors(app, config.cors_origins)
    app.add_middleware(Guard, budget=state.budget)  # added last: the outermost
    for router in ROUTERS:
        app.include_router(router)
    return app


def app_from_env() -> FastAPI:
    """The factory ``--workers N`` gives uvicorn: the configuration comes from ``MEDZERO_SERVICE_CONFIG``."""
    text = os.environ.get(CONFIG_ENV)
    if not text:
        raise RuntimeError(f"{CONFIG_ENV} is not set; start the service with `medzero serve`")
    return create_app(ServiceConfig.from_json(text))
