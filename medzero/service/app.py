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
limits are tightened to fit that budget (:func:`input_limits`). Header and body deadlines and the
header size bound are the HTTP protocol's (:mod:`medzero.service.protocol`); the body deadline is
also enforced here, where the body is read. A decoder that fails in a way it did not foresee costs
its upload a 400 (in a batch, that file's error row), never a 500.

Privacy: uploads are classified from memory under the neutral names ``upload`` / ``upload-N``;
their file names are never read, and the service's logs hold the method, the route template, the
status and the time, never a query string, a name, a label or a byte of a body.
"""
from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import json
import logging
import os
import re
import threading
import time
import warnings
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

from fastapi import Depends, FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

import medzero

from . import schemas
from .auth import ApiKeys
from .batching import Batcher, QueueFull
from .budget import BudgetExceeded, InFlight, Lease, decoded_nbytes

__all__ = ["ServiceConfig", "create_app", "app_from_env", "load_calibrations", "CONFIG_ENV"]

_logger = logging.getLogger("medzero.service")
_access = logging.getLogger("medzero.service.access")

#: Where ``--workers N`` passes the configuration (JSON; key hashes only) to each worker process.
CONFIG_ENV = "MEDZERO_SERVICE_CONFIG"
MIB = 1 << 20
_INDEX_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_MAX_LABELS, _MAX_LABEL_CHARS = 64, 200
_MAX_FIELD_BYTES = 64 * 1024
_JSON_LIMIT = 64 * 1024
_MAX_BOUNDARY = 256  # python-multipart's MAX_BOUNDARY_LENGTH (RFC 2046 asks for at most 70)
_LEASE = "medzero.lease"  # the ASGI scope key of a request's Lease


@dataclass
class ServiceConfig:
    """Everything a server needs; the CLI builds one from its options.

    Args:
        audio_model, image_model: model references as the library takes them (``None``: its default).
        device: ``auto``, ``cpu`` or ``cuda``.
        preload: the modalities whose encoders load at start-up; ``/readyz`` is 200 once they have.
        api_key_hashes: SHA-256 hex digests of the accepted bearer tokens.
        insecure_no_auth: accept requests without a token (the CLI allows it on loopback only).
        max_upload_bytes: the largest request to ``/v1/classify`` and to a search by example.
        max_batch_bytes: the largest request to ``/v1/classify/batch`` and ``/v1/index/{name}/cases``.
        max_batch_files: the most files in one such request.
        max_batch: the most sources in one forward pass (1: no batching).
        batch_window_ms: how long a request waits for others to share its forward pass.
        queue_size: the most sources waiting for a forward pass; beyond it, 503 (before the body is read).
        timeout_s: a classification that has not finished after this long gets 503.
        body_timeout_s: a request body that has not arrived after this long gets 408.
        header_timeout_s: request headers that have not arrived after this long get 408 (the protocol's).
        max_header_bytes: request headers over this size get 431 (the protocol's).
        max_inflight_bytes: the most bytes held across all open requests, bodies and decoded uploads;
            a request that would pass it gets 503 with ``Retry-After``. No one request may be larger.
        index_root: the directory whose subfolders are the case indexes ``{name}``; ``None``: no case search.
        calibration_dir: a directory of site overlays written by ``medzero calibrate``; ``NAME.yaml`` in it is
            the request option ``calibration=NAME``. ``None``: no calibration overlays.
        cors_origins: origins allowed by CORS; empty: CORS off.
        max_configurations: classifiers kept (one per task / labels / template / calibration).
    """

    audio_model: Optional[str] = None
    image_model: Optional[str] = None
    device: str = "auto"
    preload: tuple[str, ...] = ("audio", "image")
    api_key_hashes: tuple[str, ...] = ()
    insecure_no_auth: bool = False
    max_upload_bytes: int = 64 * MIB
    max_batch_bytes: int = 256 * MIB
    max_batch_files: int = 32
    max_batch: int = 8
    batch_window_ms: float = 5.0
    queue_size: int = 64
    timeout_s: float = 120.0
    body_timeout_s: float = 60.0
    header_timeout_s: float = 20.0
    max_header_bytes: int = 64 * 1024
    max_inflight_bytes: int = 1024 * MIB
    index_root: Optional[str] = None
    calibration_dir: Optional[str] = None
    cors_origins: tuple[str, ...] = ()
    max_configurations: int = 32

    def __post_init__(self) -> None:
        self.preload = tuple(self.preload)
        self.api_key_hashes = tuple(self.api_key_hashes)
        self.cors_origins = tuple(self.cors_origins)
        if any(m not in ("audio", "image") for m in self.preload):
            raise ValueError("preload takes audio and image")
        if min(self.max_upload_bytes, self.max_batch_bytes, self.max_batch_files, self.max_batch, self.queue_size,
               self.max_inflight_bytes) < 1 or self.max_header_bytes < 1024:
            raise ValueError("limits, batch and queue sizes must be at least 1 (headers: at least 1 KiB)")
        if self.batch_window_ms < 0 or min(self.timeout_s, self.body_timeout_s, self.header_timeout_s) <= 0:
            raise ValueError("the batch window cannot be negative and timeouts must be positive")
        if self.index_root is not None:
            self.index_root = str(Path(self.index_root).resolve())
        if self.calibration_dir is not None:
            self.calibration_dir = str(Path(self.calibration_dir).resolve())

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "ServiceConfig":
        return cls(**json.loads(text))


# -- errors ------------------------------------------------------------------------------------------------
class ApiError(Exception):
    """An error answered as ``{"error": code, "detail": detail}`` with ``status``."""

    def __init__(self, status: int, code: str, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status, self.code, self.detail, self.headers = status, code, detail, headers or {}


def _error_response(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


_STATUS_CODES = {
    400: "bad_input", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
    408: "request_timeout", 409: "conflict", 413: "too_large", 415: "unsupported_media_type",
    422: "invalid_request", 431: "too_large", 503: "unavailable",
}
#: Sent with errors answered before the whole body was read: the rest of it is not worth waiting for.
_CLOSE = {"Connection": "close"}


class Undecodable(medzero.BadInputError):
    """An upload whose decoder failed with an exception it did not foresee (a bug, or a file it cannot take)."""


def _undecodable(name: str, exc: BaseException) -> Undecodable:
    """A one-line 400 for ``name`` that names the exception's type only: a library's message may quote
    the file's bytes or element values (patient data), so it goes neither to the client nor to the log."""
    _logger.error("decoding an upload failed: %s", fault(exc))
    return Undecodable(f"{name} cannot be decoded: the file is damaged or malformed ({type(exc).__name__} in the decoder)")


def fault(exc: BaseException) -> str:
    """Where an unexpected exception was raised, for the log: its type and the innermost frame's file,
    line and function, never its message or arguments (they may carry a file's contents)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return type(exc).__name__
    code = tb.tb_frame.f_code
    parts = Path(code.co_filename).parts
    short = "/".join(parts[-2:]) if len(parts) >= 2 else code.co_filename
    return f"{type(exc).__name__} at {short}:{tb.tb_lineno} in {code.co_name}"


def _busy(what: str) -> ApiError:
    return ApiError(503, "busy", f"the server holds too much data for open requests to take {what}; try again shortly",
                    {"Retry-After": "2", **_CLOSE})


def _error_for(exc: BaseException, *, modality: str | None = None, conflict: bool = False) -> ApiError:
    """The HTTP status of a medzero error: 415 not audio/image, 400 bad file, 422 task, 503 model."""
    if isinstance(exc, medzero.BadInputError):
        if modality == "unknown" and not isinstance(exc, Undecodable):
            return ApiError(415, "unsupported_media_type", str(exc))
        return ApiError(400, "bad_input", str(exc))
    if isinstance(exc, medzero.TaskError):
        return ApiError(422, "invalid_request", str(exc))
    if isinstance(exc, medzero.ModelUnavailableError):
        return ApiError(503, "model_unavailable", str(exc), {"Retry-After": "30"})
    if isinstance(exc, medzero.CaseIndexError):
        return ApiError(409, "conflict", str(exc)) if conflict else ApiError(422, "invalid_request", str(exc))
    if isinstance(exc, medzero.MedzeroError):
        return ApiError(400, "bad_input", str(exc))
    return ApiError(500, "internal", "internal error; the server log has the details")


class _InternalError(RuntimeError):
    pass


# -- request bodies ----------------------------------------------------------------------------------------
@dataclass
class Upload:
    """A request's files (bytes, in order; their client-side names are never read) and form fields."""

    files: list[bytes] = field(default_factory=list)
    fields: dict[str, list[str]] = field(default_factory=dict)

    def field(self, name: str) -> Optional[str]:
        values = self.fields.get(name)
        return values[-1] if values else None


def lease_of(request: Request) -> Lease:
    """The request's share of the in-flight budget (opened by the outermost middleware)."""
    lease = request.scope.get(_LEASE)
    if lease is None:  # the app without its middleware (not served): a budget of its own
        lease = request.scope[_LEASE] = InFlight(1 << 62).lease()
    return lease


async def _read_stream(request: Request, limit: int, timeout_s: float, on_chunk) -> int:
    """Feed the body to ``on_chunk``; 413 as soon as it passes ``limit`` (Content-Length first, unread).

    Its bytes are held in the request's lease as they arrive (a declared length at once): 503 when
    the server's in-flight budget has no room for them.
    """
    lease = lease_of(request)
    limit = min(limit, lease.budget.limit)  # more than the whole budget could never be admitted
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise ApiError(400, "bad_input", "Content-Length is not a number", _CLOSE)
        if int(declared) > limit:
            raise ApiError(413, "too_large", f"the request body is over the limit of {_size(limit)}", _CLOSE)
        try:
            lease.hold(int(declared))
        except BudgetExceeded:
            raise _busy(f"a body of {_size(int(declared))}") from None

    async def consume() -> int:
        received = 0
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise ApiError(413, "too_large", f"the request body is over the limit of {_size(limit)}", _CLOSE)
            if chunk:
                try:
                    lease.hold_at_least(received)
                except BudgetExceeded:
                    raise _busy("more of this body") from None
                on_chunk(chunk)
        return received

    try:
        return await asyncio.wait_for(consume(), timeout_s)
    except asyncio.TimeoutError:
        raise ApiError(408, "request_timeout", f"the request body did not arrive within {timeout_s:g} s", _CLOSE) from None
    except ClientDisconnect:
        raise ApiError(400, "bad_input", "the client disconnected before the body was complete", _CLOSE) from None


def _size(n: int) -> str:
    return f"{n / MIB:g} MiB" if n >= MIB else f"{n} bytes"


async def read_upload(request: Request, limit: int, timeout_s: float, *, max_files: int) -> Upload:
    """A multipart/form-data body (file parts and text fields) or a raw body (one file), held in memory."""
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/"):
        buf = bytearray()
        await _read_stream(request, limit, timeout_s, buf.extend)
        return Upload(files=[bytes(buf)] if buf else [])  # the buffer is dropped on return, in the same step
    from python_multipart.exceptions import FormParserError
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise ApiError(400, "bad_input", "the multipart body has no boundary in its Content-Type", _CLOSE)
    upload = Upload()
    part: dict[str, Any] = {}
    finished = []

    def begin() -> None:
        part.clear()
        part.update(headers={}, name=b"", value=b"", data=bytearray())

    def header_field(data: bytes, start: int, end: int) -> None:
        part["name"] += data[start:end]

    def header_value(data: bytes, start: int, end: int) -> None:
        part["value"] += data[start:end]

    def header_end() -> None:
        part["headers"][part["name"].lower()] = part["value"]
        part["name"], part["value"] = b"", b""

    def headers_done() -> None:
        _, disp = parse_options_header(part["headers"].get(b"content-disposition", b""))
        name = disp.get(b"name", b"").decode("utf-8", "replace")
        part["is_file"] = b"filename" in disp or name in ("file", "files")
        part["field"] = name
        if part["is_file"] and len(upload.files) >= max_files:
            raise ApiError(413, "too_large", f"at most {max_files} file(s) per request")
        if not part["is_file"] and sum(len(v) for v in upload.fields.values()) >= 64:
            raise ApiError(422, "invalid_request", "too many form fields")

    def data(chunk: bytes, start: int, end: int) -> None:
        part["data"] += chunk[start:end]
        if not part.get("is_file") and len(part["data"]) > _MAX_FIELD_BYTES:
            raise ApiError(422, "invalid_request", f"form field {part['field']!r} is too long")

    def part_end() -> None:
        if part.get("is_file"):
            # Copied out and its buffer dropped at once, within this one step of the event loop: only one
            # request at a time ever holds a file twice (the in-flight budget counts it once).
            upload.files.append(bytes(part["data"]))
            part["data"] = bytearray()
        else:
            try:
                value = part["data"].decode("utf-8")
            except UnicodeDecodeError:
                raise ApiError(422, "invalid_request", f"form field {part['field']!r} is not UTF-8") from None
            upload.fields.setdefault(part["field"], []).append(value)

    callbacks = {
        "on_part_begin": begin, "on_header_field": header_field, "on_header_value": header_value,
        "on_header_end": header_end, "on_headers_finished": headers_done, "on_part_data": data,
        "on_part_end": part_end, "on_end": lambda: finished.append(True),
    }
    try:  # python-multipart bounds the boundary (256), part headers (8) and header lines (4 KiB)
        parser = MultipartParser(boundary, callbacks)
    except ValueError:  # FormParserError is one
        raise ApiError(400, "bad_input", f"the multipart boundary is not valid (at most {_MAX_BOUNDARY} characters)",
                       _CLOSE) from None
    try:
        await _read_stream(request, limit, timeout_s, parser.write)
        parser.finalize()
    except FormParserError:  # its message quotes the body: not repeated
        raise ApiError(400, "bad_input", "the multipart body is malformed", _CLOSE) from None
    if not finished:
        raise ApiError(400, "bad_input", "the multipart body is incomplete (no closing boundary)")
    return upload


def _named(data: bytes, name: str) -> io.BytesIO:
    stream = io.BytesIO(data)
    stream.name = name  # results and errors call the source this, never the client's file name
    return stream


# -- options -----------------------------------------------------------------------------------------------
class ClassifyOptions(BaseModel):
    """The options of a classification, from the query string or (multipart) form fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task: Optional[str] = None
    labels: Optional[tuple[str, ...]] = None
    template: Optional[str] = Field(default=None, max_length=_MAX_LABEL_CHARS)
    multilabel: bool = False
    lang: Literal["en", "zh"] = "en"
    calibration: Optional[str] = Field(default=None, max_length=_MAX_LABEL_CHARS)  # an overlay's name, looked up

    @field_validator("labels", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",")]
        if value is None:
            return None
        value = [str(v).strip() for v in value if str(v).strip()]
        if not value:
            raise ValueError("labels is empty")
        if len(value) > _MAX_LABELS or any(len(v) > _MAX_LABEL_CHARS for v in value):
            raise ValueError(f"at most {_MAX_LABELS} labels of at most {_MAX_LABEL_CHARS} characters")
        return tuple(value)

    @model_validator(mode="after")
    def _consistent(self) -> "ClassifyOptions":
        if self.task is not None and self.labels is not None:
            raise ValueError("give either task or labels, not both")
        if (self.template is not None or self.multilabel) and self.labels is None:
            raise ValueError("template and multilabel go with labels")
        return self

    def key(self) -> tuple:
        return (self.task, self.labels, self.template, self.multilabel, self.calibration)


def _options(query: dict[str, Any], upload: Upload | None = None) -> ClassifyOptions:
    values = {k: v for k, v in query.items() if v is not None}
    if upload is not None:
        for name in ClassifyOptions.model_fields:
            if upload.field(name) is not None:
                values[name] = upload.field(name)
        unknown = sorted(set(upload.fields) - set(ClassifyOptions.model_fields))
        if unknown:
            raise ApiError(422, "invalid_request", f"unknown form field(s): {', '.join(unknown)}")
    try:
        return ClassifyOptions(**values)
    except ValidationError as exc:
        raise ApiError(422, "invalid_request", _validation_line(exc.errors())) from None


def _validation_line(errors) -> str:
    parts = []
    for err in errors[:5]:
        where = ".".join(str(x) for x in err.get("loc", ()) if x not in ("query", "body"))
        message = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts) or "invalid request"


def _flag(value: Optional[str]) -> bool:
    if value is None:
        return False
    text = value.strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ApiError(422, "invalid_request", f"expected true or false, not {value[:20]!r}")


# -- calibration overlays ---------------------------------------------------------------------------------
def load_calibrations(directory: "str | os.PathLike | None", tasks: dict[str, Any]) -> dict[str, Any]:
    """The site overlays in ``directory`` by name (``NAME.yaml`` or ``NAME.yml``), each checked against its task.

    A client names an overlay, never a path. Each is read once, here; its ``path`` is reduced to the
    file name, so results do not show where the server keeps its files. Raises ``ValueError`` with one
    line naming the file when one is not a valid overlay or is for a task this server does not have.
    """
    if directory is None:
        return {}
    from medzero.evaluation.calibrate import apply_calibration, load_overlay

    root = Path(directory)
    if not root.is_dir():
        raise ValueError(f"the calibration directory {root} does not exist")
    found: dict[str, Any] = {}
    for path in sorted(root.iterdir()):
        if path.suffix.lower() not in (".yaml", ".yml") or not path.is_file():
            continue
        if not _INDEX_NAME.fullmatch(path.stem):
            raise ValueError(f"{path.name}: an overlay's name is 1-64 letters, digits, '-' or '_'")
        if path.stem in found:
            raise ValueError(f"two calibration overlays are named {path.stem!r}")
        try:
            overlay = load_overlay(path)
            if overlay.task not in tasks:
                raise medzero.TaskError(f"{path.name} is for task {overlay.task}, which this server does not have")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a changed task warns when a classifier applies it
                apply_calibration(tasks[overlay.task], overlay)  # labels the task does not have: refused now
        except medzero.MedzeroError as exc:
            raise ValueError(str(exc)) from None
        found[path.stem] = dataclasses.replace(overlay, path=path.name)
    if not found:
        raise ValueError(f"no calibration overlays (NAME.yaml) in {root}")
    return found


# -- decoder limits ---------------------------------------------------------------------------------------
#: The decoders' limit fields this server tightens, and the bytes one unit of each takes once decoded.
_DECODED_FIELDS = {
    "max_samples": 4,  # audio: float32 samples, at the source rate and at the model's
    "max_decoded_bytes": 1,  # images: the codec's output and medzero's float32 copies, from the header
}
#: One upload may decode to at most this share of the in-flight budget.
_UPLOAD_SHARE = 4


def input_limits(config: ServiceConfig) -> dict[str, Any]:
    """Each modality's decoder limits (its ``limits()``: defaults and environment) tightened to this server.

    The encoded size (``max_bytes``) to the largest request this server takes, and what one upload
    may decode to (audio samples, an image's decoded bytes: whichever of those fields the modality's
    limits have) to a quarter of ``max_inflight_bytes``, so that a decoder refuses, from the header and
    before allocating, an upload that could never fit the budget.
    """
    from medzero.core.modality import modalities

    request_bytes = min(max(config.max_upload_bytes, config.max_batch_bytes), config.max_inflight_bytes)
    decoded_bytes = max(1, config.max_inflight_bytes // _UPLOAD_SHARE)
    out: dict[str, Any] = {}
    for modality in modalities():
        limits = modality.limits()
        if not dataclasses.is_dataclass(limits):
            continue
        names = {f.name for f in dataclasses.fields(limits)}
        changes = {}
        if "max_bytes" in names:
            changes["max_bytes"] = min(limits.max_bytes, request_bytes)
        for name, unit in _DECODED_FIELDS.items():
            if name in names and getattr(limits, name) is not None:
                changes[name] = max(1, min(getattr(limits, name), decoded_bytes // unit))
        out[modality.name] = dataclasses.replace(limits, **changes)
    return out


# -- state -------------------------------------------------------------------------------------------------
class ServiceState:
    """What a running app holds: classifiers, the batcher, executors, model readiness, indexes."""

    def __init__(self, config: ServiceConfig):
        self.config = config
        self.keys = None if config.insecure_no_auth else ApiKeys(config.api_key_hashes)
        self.tasks = {t.name: t for t in medzero.list_tasks()}
        self.calibrations = load_calibrations(config.calibration_dir, self.tasks)
        self.budget = InFlight(config.max_inflight_bytes)
        self.limits = input_limits(config)
        self.classifiers: OrderedDict[tuple, Any] = OrderedDict()
        self.models: dict[str, dict[str, Any]] = {
            m: {"modality": m, "state": "loading" if m in config.preload else "on_demand", "fingerprint": None, "error": None}
            for m in ("audio", "image")
        }
        self.compute: ThreadPoolExecutor | None = None
        self.decode: ThreadPoolExecutor | None = None
        self.index_pool: ThreadPoolExecutor | None = None
        self.batcher: Batcher | None = None
        self.indexes: OrderedDict[str, Any] = OrderedDict()

    # lifecycle
    def start(self) -> None:
        try:  # a server's log is no place for download and weight-loading progress bars
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        except ImportError:  # pragma: no cover - transformers is a dependency
            pass
        self.compute = ThreadPoolExecutor(max_workers=1, thread_name_prefix="medzero-compute")
        self.decode = ThreadPoolExecutor(max_workers=2, thread_name_prefix="medzero-decode")
        self.index_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="medzero-index")
        self.batcher = Batcher(
            _embed_and_score, max_batch=self.config.max_batch, window_s=self.config.batch_window_ms / 1000.0,
            capacity=self.config.queue_size, executor=self.compute,
        )
        threading.Thread(target=self._load_models, name="medzero-preload", daemon=True).start()

    async def stop(self) -> None:
        if self.batcher is not None:
            await self.batcher.close()
        if self.index_pool is not None:
            await asyncio.get_running_loop().run_in_executor(self.index_pool, self._close_indexes)
        for pool in (self.compute, self.decode, self.index_pool):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)

    def _load_models(self) -> None:
        for modality in self.config.preload:
            ref = self.config.audio_model if modality == "audio" else self.config.image_model
            try:
                encoder = medzero.create_encoder(ref, modality=modality, device=self.config.device)
            except medzero.MedzeroError as exc:
                self.models[modality].update(state="failed", error=str(exc))
                _logger.error("the %s model is not available: %s", modality, exc)
            except Exception as exc:  # noqa: BLE001 - reported by /readyz; the process keeps serving the rest
                self.models[modality].update(state="failed", error=f"{type(exc).__name__} while loading the model")
                _logger.exception("loading the %s model failed", modality)
            else:
                self.models[modality].update(state="ready", fingerprint=encoder.fingerprint)
                _logger.info("%s model ready (%s)", modality, encoder.fingerprint)

    @property
    def ready(self) -> bool:
        return all(self.models[m]["state"] == "ready" for m in self.config.preload)

    # classification
    def classifier(self, options: ClassifyOptions) -> Any:
        """The classifier of one set of options (task or labels, template, calibration), built once."""
        if options.task is not None and options.task not in self.tasks:
            raise ApiError(
                422, "invalid_request", f"unknown task {options.task!r}; shipped tasks: {', '.join(sorted(self.tasks))}"
            )
        calibration = None
        if options.calibration is not None:
            if not self.calibrations:
                raise ApiError(422, "invalid_request", "this server has no calibration overlays (start it with --calibration-dir)")
            calibration = self.calibrations.get(options.calibration)
            if calibration is None:
                raise ApiError(422, "invalid_request", f"unknown calibration {options.calibration!r}; this server has: "
                               f"{', '.join(sorted(self.calibrations))}")
        key = options.key()
        classifier = self.classifiers.get(key)
        if classifier is not None:
            self.classifiers.move_to_end(key)
            return classifier
        try:
            classifier = medzero.Classifier(
                task=self.tasks[options.task] if options.task is not None else None,
                labels=list(options.labels) if options.labels is not None else None,
                template=options.template,
                multilabel=options.multilabel,
                audio_model=self.config.audio_model,
                image_model=self.config.image_model,
                device=self.config.device,
                batch_size=self.config.max_batch,
                calibration=calibration,
                limits=self.limits,
            )
        except medzero.MedzeroError as exc:
            raise _error_for(exc) from None
        self.classifiers[key] = classifier
        while len(self.classifiers) > self.config.max_configurations:  # one still in use lives on in its jobs
            self.classifiers.popitem(last=False)
        return classifier

    def check_room(self, n: int = 1) -> None:
        """503 at once when ``n`` more sources would not fit in the queue (before a body is read or decoded)."""
        if self.batcher is None or self.batcher.waiting + n > self.batcher.capacity:
            raise ApiError(503, "queue_full", "the server is busy; try again shortly", {"Retry-After": "1"})

    async def classify(self, options: ClassifyOptions, items: list[tuple[bytes, str]], lease: Lease) -> list[tuple[Any, int]]:
        """Results for uploads ``(bytes, name)``, each with the size of the forward pass it shared.

        Each upload is decoded by its classifier in the decode threads (while the compute thread
        embeds others), then queued for the next forward pass of its modality's model, which
        sources of every configuration share: the models are the server's, and the embedding of
        a source does not depend on the task that scores it. The decoded arrays are held in
        ``lease`` until the response is sent: 503 when the in-flight budget has no room for them.
        """
        classifier = self.classifier(options)
        self.check_room(len(items))
        loop = asyncio.get_running_loop()
        jobs: list = []

        async def run() -> list:
            decoded = await asyncio.gather(*(
                loop.run_in_executor(self.decode, _prepare, classifier, data, name) for data, name in items
            ))
            ready = [p for p in decoded if not isinstance(p, medzero.Result)]
            needed = sum(decoded_nbytes(p.item) + decoded_nbytes(p.input) for p in ready)
            try:
                lease.hold(needed)
            except BudgetExceeded:
                if lease.held + needed > lease.budget.limit:  # would not fit an idle server either
                    raise ApiError(413, "too_large", f"the files decode to {needed / MIB:.1f} MiB, more than this server holds "
                                   f"for all requests ({_size(lease.budget.limit)}); send fewer per request") from None
                raise _busy("the decoded uploads") from None
            try:
                jobs.extend(self.batcher.enqueue([(classifier, p) for p in ready]) if ready else [])
            except QueueFull:
                raise ApiError(503, "queue_full", "the server is busy; try again shortly", {"Retry-After": "1"}) from None
            await asyncio.gather(*(job.future for job in jobs))
            return decoded

        try:
            decoded = await asyncio.wait_for(run(), self.config.timeout_s)
        except asyncio.TimeoutError:
            Batcher.cancel(jobs)
            raise ApiError(
                503, "timeout", f"the classification did not finish within {self.config.timeout_s:g} s", {"Retry-After": "5"}
            ) from None
        except BaseException:
            Batcher.cancel(jobs)
            raise
        done = iter(jobs)  # one job per upload that decoded, in order
        out = []
        for p in decoded:
            if isinstance(p, medzero.Result):  # failed before its forward pass
                out.append((p, 0))
            else:
                job = next(done)
                out.append((job.future.result(), job.batch_size))
        return out

    # case indexes
    def index_dir(self, name: str, *, must_exist: bool) -> Path:
        if self.config.index_root is None:
            raise ApiError(404, "not_found", "case search is not enabled on this server (start it with --index-root)")
        if not _INDEX_NAME.fullmatch(name):
            raise ApiError(422, "invalid_request", "an index name is 1-64 letters, digits, '-' or '_', starting with a letter or digit")
        root = Path(self.config.index_root)
        path = root / name
        if path.is_symlink() or (path.exists() and path.resolve().parent != root.resolve()):
            raise ApiError(404, "not_found", f"no case index named {name!r}")
        if must_exist and not (path / "cases.sqlite").is_file():
            raise ApiError(404, "not_found", f"no case index named {name!r}")
        return path

    def open_index(self, name: str, path: Path):
        index = self.indexes.get(name)
        if index is None:
            index = medzero.CaseIndex(path, audio_model=self.config.audio_model, image_model=self.config.image_model,
                                      device=self.config.device)
            self.indexes[name] = index
            while len(self.indexes) > 8:
                _, old = self.indexes.popitem(last=False)
                old.close()
        self.indexes.move_to_end(name)
        return index

    def _close_indexes(self) -> None:
        while self.indexes:
            _, index = self.indexes.popitem()
            try:
                index.close()
            except Exception:  # noqa: BLE001 - closing at shutdown; the database has every commit
                _logger.warning("closing a case index failed", exc_info=True)

    async def in_index_thread(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.index_pool, fn, *args)


def _prepare(classifier: Any, data: bytes, name: str) -> Any:
    """One upload decoded by its classifier (in a decode thread). Whatever the decoding path raises
    that is not a :class:`MedzeroError` costs this upload a one-line 400 (:class:`Undecodable`), never
    the request or the server: in a batch the other files go on."""
    try:
        return classifier.pipeline.prepare(_named(data, name))
    except medzero.MedzeroError as exc:
        return medzero.Result.failed(name, exc)
    except Exception as exc:  # noqa: BLE001
        return medzero.Result.failed(name, _undecodable(name, exc))


def _embed_and_score(items: list[tuple[Any, Any]]) -> list[Any]:
    """One forward pass per modality for decoded uploads ``(classifier, prepared)`` of any configuration,
    then each scored by its own classifier. Runs on the compute thread.

    Every classifier of a server uses the server's models, so any one's pipeline embeds them all. A
    failure that is not a :class:`MedzeroError` (a bug) is isolated: the items are embedded and
    scored one by one, and only the one that fails again gets an internal error.
    """
    prepared = [p for _, p in items]
    try:
        vectors = items[0][0].pipeline.embed(prepared)
        return _score(items, vectors)
    except Exception as exc:  # noqa: BLE001 - not a MedzeroError: isolate it to its source
        if len(items) == 1:
            _logger.error("classification failed: %s", fault(exc))
            return [medzero.Result.failed(prepared[0].name, _InternalError("internal error"), modality=prepared[0].modality)]
    results = []
    for item in items:
        try:
            results.extend(_score([item], item[0].pipeline.embed([item[1]])))
        except Exception as exc:  # noqa: BLE001
            _logger.error("classification failed: %s", fault(exc))
            results.append(medzero.Result.failed(item[1].name, _InternalError("internal error"), modality=item[1].modality))
    return results


def _score(items: list[tuple[Any, Any]], vectors: list[Any]) -> list[Any]:
    """Each item's Result from its embedding, by its own classifier (items of one classifier together)."""
    results: list[Any] = [None] * len(items)
    groups: dict[int, list[int]] = {}
    for i, (classifier, _) in enumerate(items):
        groups.setdefault(id(classifier), []).append(i)
    for indices in groups.values():
        classifier = items[indices[0]][0]
        out = classifier.classify_prepared([items[i][1] for i in indices], [vectors[i] for i in indices])
        for i, result in zip(indices, out):
            results[i] = result
    return results


def _relative(value: Any, base: str) -> Any:
    """Paths inside the index directory as relative paths (``uploads/<sha256>``), in any JSON value."""
    prefix = base.rstrip(os.sep) + os.sep
    if isinstance(value, str):
        return value.replace(prefix, "")
    if isinstance(value, list):
        return [_relative(v, base) for v in value]
    if isinstance(value, dict):
        return {k: _relative(v, base) for k, v in value.items()}
    return value


# -- middleware --------------------------------------------------------------------------------------------
class _Guard:
    """Outermost: one access line per request (method, route template, status, ms), a JSON 500
    instead of any exception that escaped, so no traceback ever reaches a client (nor the log: its
    type and place only), and the request's in-flight :class:`Lease`, released once the response is sent."""

    def __init__(self, app, budget: InFlight):
        self.app = app
        self.budget = budget

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = {"code": 0}
        lease = scope[_LEASE] = self.budget.lease()

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception as exc:  # noqa: BLE001
            _logger.error("unhandled error: %s", fault(exc))
            if status["code"] == 0:
                response = _error_response(500, "internal", "internal error; the server log has the details")
                await response(scope, receive, send_wrapper)
        finally:
            lease.release()
            template = getattr(scope.get("route"), "path", None)
            if template is None:  # a client's path is only repeated when it is one of ours
                template = scope.get("path") if scope.get("path") == "/openapi.json" else "<unmatched>"
            _access.info("%s %s %d %.0fms", scope.get("method", "?"), template, status["code"],
                         (time.perf_counter() - started) * 1000)


# -- the app -----------------------------------------------------------------------------------------------
_ERRORS = {status: {"model": schemas.ErrorResponse} for status in (400, 401, 408, 413, 415, 422, 503)}
_BATCH_HEADER = {200: {"headers": {"X-Medzero-Batch-Size": {
    "description": "How many sources shared this request's forward pass", "schema": {"type": "integer"}}}}}
_BINARY = {"type": "string", "format": "binary"}


def _upload_body(many: bool, fields: dict[str, Any]) -> dict[str, Any]:
    files = {"files": {"type": "array", "items": _BINARY}} if many else {"file": _BINARY}
    content: dict[str, Any] = {
        "multipart/form-data": {
            "schema": {"type": "object", "properties": {**files, **fields}, "required": list(files)}
        }
    }
    if not many:
        content["application/octet-stream"] = {"schema": _BINARY}
    return {"requestBody": {"required": True, "content": content}}


_OPTION_FIELDS = {
    "task": {"type": "string"}, "labels": {"type": "string"}, "template": {"type": "string"},
    "multilabel": {"type": "boolean"}, "lang": {"type": "string", "enum": ["en", "zh"]}, "calibration": {"type": "string"},
}
_EXAMPLE_FIELDS = {
    "k": {"type": "integer", "minimum": 1, "maximum": 100}, "where": {"type": "string"}, "exact": {"type": "boolean"},
}


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
    app.state.medzero = state
    bearer = HTTPBearer(auto_error=False, description="An API key of this server")

    async def authorized(request: Request, _credentials=Depends(bearer)) -> None:
        if state.keys is None:
            return
        if not state.keys.check_header(request.headers.get("authorization")):
            raise ApiError(401, "unauthorized", "a valid API key is needed: Authorization: Bearer <key>",
                           {"WWW-Authenticate": "Bearer"})

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return _error_response(exc.status, exc.code, exc.detail, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return _error_response(422, "invalid_request", _validation_line(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        detail = exc.detail if isinstance(exc.detail, str) else "request failed"
        return _error_response(exc.status_code, _STATUS_CODES.get(exc.status_code, "error"), detail, getattr(exc, "headers", None))

    if config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        class _Cors(CORSMiddleware):
            def preflight_response(self, request_headers):  # a refused preflight is a JSON error like any other
                response = super().preflight_response(request_headers)
                if response.status_code == 400:
                    return _error_response(400, "bad_input", response.body.decode("latin-1"))
                return response

        app.add_middleware(
            _Cors, allow_origins=list(config.cors_origins), allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(_Guard, budget=state.budget)

    # -- health --------------------------------------------------------------------------------------------
    @app.get("/healthz", response_model=schemas.Health, tags=["health"])
    async def healthz():
        """The process is up and answering."""
        return {"status": "ok"}

    @app.get("/readyz", response_model=schemas.Readiness, tags=["health"], responses={503: {"model": schemas.ErrorResponse}})
    async def readyz():
        """200 once the models named at start-up are loaded; 503 while they load or when one failed."""
        if not state.ready:
            failed = [f"{m['modality']}: {m['error']}" for m in state.models.values() if m["state"] == "failed"]
            detail = "; ".join(failed) if failed else "models are loading"
            raise ApiError(503, "not_ready", detail, {"Retry-After": "5"})
        return {"status": "ready", "models": list(state.models.values())}

    # -- classification -----------------------------------------------------------------------------------
    async def option_query(
        task: Optional[str] = Query(None, description="A shipped task (see /v1/tasks); default: each file's modality's default task"),
        labels: Optional[str] = Query(None, description="Ad-hoc labels, comma-separated (instead of a task)"),
        template: Optional[str] = Query(None, description="Template for ad-hoc labels, with {} for the label"),
        multilabel: Optional[bool] = Query(None, description="Score each ad-hoc label on its own"),
        lang: Optional[Literal["en", "zh"]] = Query(None, description="Language of `summary` (default en)"),
        calibration: Optional[str] = Query(
            None, description="A site calibration overlay on this server (see `calibrations` in /v1/tasks); goes with `task`"),
    ) -> dict[str, Any]:
        return {"task": task, "labels": labels, "template": template, "multilabel": multilabel, "lang": lang,
                "calibration": calibration}

    def _early_options(request: Request, query: dict[str, Any]) -> None:
        # With a raw body every option is in the query string: a bad one is a 422 before the body is read.
        if not request.headers.get("content-type", "").lower().startswith("multipart/"):
            state.classifier(_options(query))

    @app.post(
        "/v1/classify", response_model=schemas.ClassifyResponse, responses={**_BATCH_HEADER, **_ERRORS}, tags=["classify"],
        response_model_exclude_unset=True,  # keys the library leaves out (a task without a gate) stay out
        dependencies=[Depends(authorized)], openapi_extra=_upload_body(False, _OPTION_FIELDS),
    )
    async def classify(request: Request, response: Response, query: dict = Depends(option_query)):
        """Classify one recording or image: multipart (field `file`, options as fields or query) or the raw body.

        The content decides the modality (WAV, FLAC, Ogg, MP3, M4A/AAC, AMR, WebM; DICOM, PNG, JPEG, TIFF).
        `X-Medzero-Batch-Size` says how many sources shared the forward pass.
        """
        _early_options(request, query)
        state.check_room()  # a full queue answers before the body is read
        upload = await read_upload(request, config.max_upload_bytes, config.body_timeout_s, max_files=1)
        options = _options(query, upload)
        if len(upload.files) != 1 or not upload.files[0]:
            raise ApiError(400, "bad_input", "send one file: multipart field 'file', or the raw request body")
        (result, size), = await state.classify(options, [(upload.files[0], "upload")], lease_of(request))
        if result.error is not None:
            raise _error_for(result.exception, modality=result.modality)
        response.headers["X-Medzero-Batch-Size"] = str(size)
        return {"lang": options.lang, "summary": result.summary(options.lang), "result": result.to_dict()}

    @app.post(
        "/v1/classify/batch", response_model=schemas.BatchResponse, responses=_ERRORS, tags=["classify"],
        response_model_exclude_unset=True,  # keys the library leaves out (a task without a gate) stay out
        dependencies=[Depends(authorized)], openapi_extra=_upload_body(True, _OPTION_FIELDS),
    )
    async def classify_batch(request: Request, query: dict = Depends(option_query)):
        """Classify several files (multipart field `files`, repeated); results come back in upload order.

        A file that cannot be classified gets a result with `error` set; the others are unaffected.
        """
        _early_options(request, query)
        state.check_room()
        max_files = min(config.max_batch_files, config.queue_size)
        upload = await read_upload(request, config.max_batch_bytes, config.body_timeout_s, max_files=max_files)
        options = _options(query, upload)
        if not upload.files:
            raise ApiError(400, "bad_input", "send the files as multipart/form-data, field 'files'")
        items = [(data, f"upload-{i}") for i, data in enumerate(upload.files, 1)]
        done = await state.classify(options, items, lease_of(request))
        results = []
        for result, _ in done:
            if result.exception is not None and not isinstance(result.exception, medzero.MedzeroError):
                result = medzero.Result.failed(result.source, _InternalError("internal error"), modality=result.modality)
            results.append({"summary": result.summary(options.lang), "result": result.to_dict()})
        return {"lang": options.lang, "results": results}

    # -- catalogue ------------------------------------------------------------------------------------------
    @app.get("/v1/tasks", response_model=schemas.TasksResponse, responses=_ERRORS, tags=["catalogue"],
             dependencies=[Depends(authorized)])
    def tasks():
        """The shipped prompt sets: labels, thresholds and verdicts."""
        out = []
        for task in state.tasks.values():
            out.append({
                "name": task.name,
                "modality": task.modality,
                "mode": task.mode,
                "description": {"en": task.description.get("en"), "zh": task.description.get("zh")} if task.description else None,
                "labels": [
                    {"id": lb.id, "name": {"en": lb.display("en"), "zh": lb.display("zh")}, "polarity": lb.polarity,
                     "threshold": lb.threshold}
                    for lb in task.labels
                ],
                "verdicts": [{"id": v.id, "name": {"en": v.display("en"), "zh": v.display("zh")}} for v in task.verdicts],
                "calibrations": sorted(n for n, c in state.calibrations.items() if c.task == task.name),
            })
        return {"tasks": out}

    @app.get("/v1/models", response_model=schemas.ModelsResponse, responses=_ERRORS, tags=["catalogue"],
             dependencies=[Depends(authorized)])
    def models():
        """Registered named models, and the state of the ones this server uses."""
        registered = [
            {"name": m.name, "modality": m.modality, "family": m.family, "hub_id": m.hub_id, "revision": m.revision,
             "description": m.description, "default": m.default}
            for m in medzero.list_models()
        ]
        return {"models": registered, "served": list(state.models.values())}

    # -- case search ------------------------------------------------------------------------------------------
    @app.post(
        "/v1/index/{name}/search", response_model=schemas.SearchResponse, responses={**_ERRORS, 404: {"model": schemas.ErrorResponse}},
        tags=["case search"], dependencies=[Depends(authorized)],
        openapi_extra={"requestBody": {"required": True, "content": {
            "application/json": {"schema": schemas.SearchRequest.model_json_schema()},
            **_upload_body(False, _EXAMPLE_FIELDS)["requestBody"]["content"],
        }}},
    )
    async def search(
        request: Request,
        name: str,
        k: int = Query(5, ge=1, le=100, description="Example search: how many cases"),
        where: Optional[list[str]] = Query(None, description="Example search: filters, e.g. ViewPosition=PA"),
        exact: bool = Query(False, description="Example search: scan every stored vector"),
    ):
        """Cases most like a text (JSON body `{"text": ...}`) or like an example file (multipart `file` or raw body)."""
        path = state.index_dir(name, must_exist=True)
        content_type = request.headers.get("content-type", "").lower()
        if content_type.startswith("application/json"):
            buf = bytearray()
            await _read_stream(request, _JSON_LIMIT, config.body_timeout_s, buf.extend)
            try:
                query = schemas.SearchRequest.model_validate_json(bytes(buf))
            except ValidationError as exc:
                raise ApiError(422, "invalid_request", _validation_line(exc.errors())) from None
            run = _search_text
            args: tuple = (query.text, query.k, query.modality, query.where, query.exact)
        else:
            upload = await read_upload(request, config.max_upload_bytes, config.body_timeout_s, max_files=1)
            if len(upload.files) != 1 or not upload.files[0]:
                raise ApiError(400, "bad_input", "send a JSON text query, or one example file")
            unknown = sorted(set(upload.fields) - set(_EXAMPLE_FIELDS))
            if unknown:
                raise ApiError(422, "invalid_request", f"unknown form field(s): {', '.join(unknown)}")
            if upload.field("k") is not None:
                try:
                    k = int(upload.field("k"))
                except ValueError:
                    raise ApiError(422, "invalid_request", "k: expected an integer") from None
                if not 1 <= k <= 100:
                    raise ApiError(422, "invalid_request", "k: between 1 and 100")
            where = upload.fields.get("where", where)
            exact = _flag(upload.field("exact")) if upload.field("exact") is not None else exact
            example = medzero.Source.of(_named(upload.files[0], "upload"), name="upload")  # sniffed once, here
            if example.error is not None:
                raise _error_for(example.error, modality="unknown" if example.modality is None else example.modality)
            run = _search_example
            args = (example, k, where, exact)

        def work():
            index = state.open_index(name, path)
            return [_relative(hit.to_dict(), str(path)) for hit in run(index, *args)]

        try:
            hits = await state.in_index_thread(work)
        except medzero.MedzeroError as exc:
            raise _error_for(exc) from None
        except Exception as exc:  # noqa: BLE001 - an example the decoders did not foresee costs a 400, not a 500
            if run is not _search_example:
                raise
            raise _error_for(_undecodable("upload", exc)) from None
        return {"hits": hits}

    @app.post(
        "/v1/index/{name}/cases", response_model=schemas.AddReportModel, responses={**_ERRORS, 404: {"model": schemas.ErrorResponse}, 409: {"model": schemas.ErrorResponse}},
        tags=["case search"], dependencies=[Depends(authorized)],
        openapi_extra=_upload_body(True, {"task": {"type": "string"}}),
    )
    async def add_cases(request: Request, name: str, task: Optional[str] = Query(None, description="Also store this task's scores with each case")):
        """Add files to the case index `{name}` (created on first add). Files are kept in the index as `uploads/<sha256>`."""
        path = state.index_dir(name, must_exist=False)
        max_files = config.max_batch_files
        upload = await read_upload(request, config.max_batch_bytes, config.body_timeout_s, max_files=max_files)
        unknown = sorted(set(upload.fields) - {"task"})
        if unknown:
            raise ApiError(422, "invalid_request", f"unknown form field(s): {', '.join(unknown)}")
        task = upload.field("task") or task
        if task is not None and task not in state.tasks:
            raise ApiError(422, "invalid_request", f"unknown task {task!r}; shipped tasks: {', '.join(sorted(state.tasks))}")
        if not upload.files or not all(upload.files):
            raise ApiError(400, "bad_input", "send the files as multipart/form-data (field 'files') or one raw body")

        def work():
            index = state.open_index(name, path)
            return _add_cases(index, path, upload.files, state.tasks[task] if task is not None else None)

        try:
            report = await state.in_index_thread(work)
        except medzero.MedzeroError as exc:
            raise _error_for(exc, conflict=True) from None
        return report

    return app


def _search_text(index: Any, text: str, k: int, modality: Optional[str], where: Any, exact: bool) -> list:
    return index.search_text(text, k, modality=modality, where=where, exact=exact)


def _search_example(index: Any, example: Any, k: int, where: Any, exact: bool) -> list:
    return index.search_example(example, k, where=where, exact=exact)


def _add_cases(index: Any, path: Path, blobs: list[bytes], task: Any) -> dict[str, Any]:
    """Keep each upload as ``uploads/<sha256>`` in the index (hits must point at a file) and add them."""
    uploads = path / "uploads"
    uploads.mkdir(parents=True, exist_ok=True)
    paths, created = [], []
    for data in blobs:
        target = uploads / hashlib.sha256(data).hexdigest()
        if not target.exists():
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
            created.append(target)
        paths.append(str(target))
    report = index.add(paths, task=task).to_dict()
    failed = {entry["path"] if isinstance(entry, dict) else entry[0] for entry in report["errors"]}
    for target in created:  # a file that could not be added is not kept
        if str(target) in failed or os.path.abspath(target) in failed:
            target.unlink(missing_ok=True)
    return _relative(report, str(path))


def app_from_env() -> FastAPI:
    """The factory ``--workers N`` gives uvicorn: the configuration comes from ``MEDZERO_SERVICE_CONFIG``."""
    text = os.environ.get(CONFIG_ENV)
    if not text:
        raise RuntimeError(f"{CONFIG_ENV} is not set; start the service with `medzero serve`")
    return create_app(ServiceConfig.from_json(text))
