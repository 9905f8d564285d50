"""Errors as HTTP answers: every error the service sends is ``{"error": code, "detail": one line}``.

:class:`ApiError` is what routes raise; :func:`error_for` maps a medzero error to its status (415
not audio/image, 400 bad file, 422 task, 503 model, 409/422 case index); :func:`install_handlers`
makes FastAPI's own errors (validation, unknown routes and methods) answer in the same shape. An
exception that is not foreseen is logged by :func:`fault` (its type and place, never its message:
it may quote a file's contents) and answered with a generic 500 by the outermost middleware.
"""
from __future__ import annotations

import logging
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

import medzero

from .config import MIB

__all__ = [
    "ApiError", "CLOSE", "InternalError", "Undecodable", "busy", "error_for", "error_response", "fault",
    "install_handlers", "size_text", "undecodable", "validation_line",
]

_logger = logging.getLogger("medzero.service")  # the service's log lines keep one logger name

_STATUS_CODES = {
    400: "bad_input", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
    408: "request_timeout", 409: "conflict", 413: "too_large", 415: "unsupported_media_type",
    422: "invalid_request", 431: "too_large", 503: "unavailable",
}
#: Sent with errors answered before the whole body was read: the rest of it is not worth waiting for.
CLOSE = {"Connection": "close"}


class ApiError(Exception):
    """An error answered as ``{"error": code, "detail": detail}`` with ``status``."""

    def __init__(self, status: int, code: str, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status, self.code, self.detail, self.headers = status, code, detail, headers or {}


class Undecodable(medzero.BadInputError):
    """An upload whose decoder failed with an exception it did not foresee (a bug, or a file it cannot take)."""


class InternalError(RuntimeError):
    """The error of one upload whose classification failed unforeseen: its Result says only that."""


def error_response(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


def undecodable(name: str, exc: BaseException) -> Undecodable:
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


def size_text(n: int) -> str:
    """A byte count as error messages give it: ``64 MiB``, or ``512 bytes`` under a MiB."""
    return f"{n / MIB:g} MiB" if n >= MIB else f"{n} bytes"


def busy(what: str) -> ApiError:
    """The 503 of a request that the in-flight budget has no room for (it gives back what it held)."""
    return ApiError(503, "busy", f"the server holds too much data for open requests to take {what}; try again shortly",
                    {"Retry-After": "2", **CLOSE})


def error_for(exc: BaseException, *, modality: str | None = None, conflict: bool = False) -> ApiError:
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


def validation_line(errors) -> str:
    """Pydantic's validation errors as one line: ``where: message`` for the first five."""
    parts = []
    for err in errors[:5]:
        where = ".".join(str(x) for x in err.get("loc", ()) if x not in ("query", "body"))
        message = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts) or "invalid request"


def install_handlers(app: FastAPI) -> None:
    """Answer :class:`ApiError`, request validation and Starlette's HTTP errors as the service's JSON error."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return error_response(exc.status, exc.code, exc.detail, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return error_response(422, "invalid_request", validation_line(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        detail = exc.detail if isinstance(exc.detail, str) else "request failed"
        return error_response(exc.status_code, _STATUS_CODES.get(exc.status_code, "error"), detail, getattr(exc, "headers", None))
