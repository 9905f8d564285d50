"""Request bodies, read as they stream in, within the request's limit and the server's in-flight budget.

:func:`read_upload` takes a multipart/form-data body (file parts and text fields, parsed by
python-multipart as the chunks arrive) or a raw body (one file) and holds it in memory as an
:class:`Upload`; :func:`read_stream` is the one loop that reads a body: 413 past the limit (a
declared Content-Length before a byte is read), 408 past the body deadline, 503 when the budget has
no room, each with ``Connection: close``. Files are kept as bytes, in order; their client-side
names are never read, and :func:`named` gives each the neutral name results and errors use.
"""
from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass, field
from typing import Any, Optional

from starlette.requests import ClientDisconnect, Request

from .budget import BudgetExceeded, InFlight, Lease
from .errors import CLOSE, ApiError, busy, size_text

__all__ = ["LEASE", "Upload", "lease_of", "named", "read_stream", "read_upload"]

#: The ASGI scope key of a request's Lease (opened by the outermost middleware).
LEASE = "medzero.lease"
_MAX_FIELD_BYTES = 64 * 1024
_MAX_BOUNDARY = 256  # python-multipart's MAX_BOUNDARY_LENGTH (RFC 2046 asks for at most 70)


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
    lease = request.scope.get(LEASE)
    if lease is None:  # the app without its middleware (not served): a budget of its own
        lease = request.scope[LEASE] = InFlight(1 << 62).lease()
    return lease


async def read_stream(request: Request, limit: int, timeout_s: float, on_chunk) -> int:
    """Feed the body to ``on_chunk``; 413 as soon as it passes ``limit`` (Content-Length first, unread).

    Its bytes are held in the request's lease as they arrive (a declared length at once): 503 when
    the server's in-flight budget has no room for them.
    """
    lease = lease_of(request)
    limit = min(limit, lease.budget.limit)  # more than the whole budget could never be admitted
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise ApiError(400, "bad_input", "Content-Length is not a number", CLOSE)
        if int(declared) > limit:
            raise ApiError(413, "too_large", f"the request body is over the limit of {size_text(limit)}", CLOSE)
        try:
            lease.hold(int(declared))
        except BudgetExceeded:
            raise busy(f"a body of {size_text(int(declared))}") from None

    async def consume() -> int:
        received = 0
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise ApiError(413, "too_large", f"the request body is over the limit of {size_text(limit)}", CLOSE)
            if chunk:
                try:
                    lease.hold_at_least(received)
                except BudgetExceeded:
                    raise busy("more of this body") from None
                on_chunk(chunk)
        return received

    try:
        return await asyncio.wait_for(consume(), timeout_s)
    except asyncio.TimeoutError:
        raise ApiError(408, "request_timeout", f"the request body did not arrive within {timeout_s:g} s", CLOSE) from None
    except ClientDisconnect:
        raise ApiError(400, "bad_input", "the client disconnected before the body was complete", CLOSE) from None


async def read_upload(request: Request, limit: int, timeout_s: float, *, max_files: int) -> Upload:
    """A multipart/form-data body (file parts and text fields) or a raw body (one file), held in memory."""
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/"):
        buf = bytearray()
        await read_stream(request, limit, timeout_s, buf.extend)
        return Upload(files=[bytes(buf)] if buf else [])  # the buffer is dropped on return, in the same step
    from python_multipart.exceptions import FormParserError
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise ApiError(400, "bad_input", "the multipart body has no boundary in its Content-Type", CLOSE)
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
                       CLOSE) from None
    try:
        await read_stream(request, limit, timeout_s, parser.write)
        parser.finalize()
    except FormParserError:  # its message quotes the body: not repeated
        raise ApiError(400, "bad_input", "the multipart body is malformed", CLOSE) from None
    if not finished:
        raise ApiError(400, "bad_input", "the multipart body is incomplete (no closing boundary)")
    return upload


def named(data: bytes, name: str) -> io.BytesIO:
    """An upload's bytes as a file object named ``name``: results and errors call the source this,
    never the client's file name."""
    stream = io.BytesIO(data)
    stream.name = name
    return stream
