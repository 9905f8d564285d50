"""What the routes share: the bearer check of ``/v1/*`` and the OpenAPI fragments of errors and upload bodies."""
from __future__ import annotations

from typing import Any

from fastapi import Depends, Request
from fastapi.security import HTTPBearer

from .. import schemas
from ..errors import ApiError
from ..state import state_of

__all__ = ["ERRORS", "authorized", "upload_body"]

#: The error responses every ``/v1/*`` route documents.
ERRORS = {status: {"model": schemas.ErrorResponse} for status in (400, 401, 408, 413, 415, 422, 503)}
_BINARY = {"type": "string", "format": "binary"}
_bearer = HTTPBearer(auto_error=False, description="An API key of this server")


async def authorized(request: Request, _credentials=Depends(_bearer)) -> None:
    """401 unless the request carries one of the server's API keys (nothing to check with ``--insecure-no-auth``)."""
    keys = state_of(request).keys
    if keys is None:
        return
    if not keys.check_header(request.headers.get("authorization")):
        raise ApiError(401, "unauthorized", "a valid API key is needed: Authorization: Bearer <key>",
                       {"WWW-Authenticate": "Bearer"})


def upload_body(many: bool, fields: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI request body of an upload: multipart (``file`` or ``files`` and ``fields``), and for
    one file the raw body too. The routes read bodies themselves (:mod:`..uploads`), so FastAPI cannot
    infer it."""
    files = {"files": {"type": "array", "items": _BINARY}} if many else {"file": _BINARY}
    content: dict[str, Any] = {
        "multipart/form-data": {
            "schema": {"type": "object", "properties": {**files, **fields}, "required": list(files)}
        }
    }
    if not many:
        content["application/octet-stream"] = {"schema": _BINARY}
    return {"requestBody": {"required": True, "content": content}}
