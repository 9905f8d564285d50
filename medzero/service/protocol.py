"""The HTTP/1.1 protocol ``medzero serve`` gives uvicorn: its httptools protocol with the bounds it lacks.

uvicorn times out neither slow request headers nor a body that stops arriving while the app is not
reading it (every byte received cancels its keep-alive timer), and it holds request headers of any
size. A client that opens connections and trickles bytes would hold them, and their memory, forever.
:class:`GuardedHttpProtocol` adds, per request:

* a header deadline: the request line and headers must be complete within ``header_timeout_s`` of
  the connection opening (or of the request's first byte on a kept-alive connection), else 408;
  a new connection that sends nothing is closed at the same deadline;
* a header size bound: more than ``max_header_bytes`` before the headers end gives 431;
* a body deadline, a backstop behind the app's own 408 (which needs the app to be reading the body):
  a body not complete within ``body_timeout_s`` plus a grace second closes the connection, answering
  408 if no response has begun (the app answers first when it is reading);
* malformed HTTP answered as the service's JSON error, not uvicorn's plain text.

Every such answer closes the connection. The protocol logs no byte of a request.

uvicorn builds one protocol per connection as ``http(config=..., server_state=..., app_state=...)``:
``medzero serve`` passes ``functools.partial(GuardedHttpProtocol, header_timeout_s=..., ...)``,
which pickles, so ``--workers N`` processes get the same bounds.
"""
from __future__ import annotations

import asyncio
import json
import logging

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

__all__ = ["GuardedHttpProtocol", "BODY_GRACE_S"]

_logger = logging.getLogger(__name__)

#: How much longer than the app's own body timeout the protocol waits before it closes a connection.
BODY_GRACE_S = 1.0


def _error_parts(status: int, code: str, detail: str) -> tuple[list[tuple[bytes, bytes]], bytes]:
    body = json.dumps({"error": code, "detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), (b"connection", b"close")]
    return headers, body


def error_bytes(status: int, code: str, detail: str) -> bytes:
    """A whole HTTP/1.1 response with the service's JSON error body; it closes the connection."""
    headers, body = _error_parts(status, code, detail)
    return STATUS_LINE[status] + b"".join(name + b": " + value + b"\r\n" for name, value in headers) + b"\r\n" + body


def error_app(status: int, code: str, detail: str):
    """An ASGI app that answers every request with this error (and closes the connection)."""
    headers, body = _error_parts(status, code, detail)

    async def app(scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    return app


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header and body deadlines and a header size bound (see the module)."""

    def __init__(self, *args, header_timeout_s: float, body_timeout_s: float, max_header_bytes: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.header_timeout_s = float(header_timeout_s)
        self.body_timeout_s = float(body_timeout_s)
        self.max_header_bytes = int(max_header_bytes)
        self._header_bytes = 0  # bytes received since the request began, while its headers are incomplete
        self._parsed_bytes = 0  # the request line's URL and the headers, as parsed
        self._in_headers = False
        self._deadline: asyncio.TimerHandle | None = None

    # -- deadlines ------------------------------------------------------------------------------------------
    def _arm(self, seconds: float, callback) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, callback)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _await_headers(self) -> None:
        self._in_headers, self._header_bytes, self._parsed_bytes = True, 0, 0
        self._arm(self.header_timeout_s, self._headers_too_slow)

    def _refuse(self, status: int, code: str, detail: str) -> None:
        """Answer ``status`` (unless a response has begun) and close the connection."""
        self._disarm()
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            if cycle.response_started:
                self.transport.close()
                return
            cycle.disconnected = True  # the app, if it still runs, stops writing and sees a disconnect
            cycle.message_event.set()
        self.transport.write(error_bytes(status, code, detail))
        self.transport.close()

    def _headers_too_slow(self) -> None:
        self._deadline = None
        _logger.info("closed a connection whose request headers took over %g s", self.header_timeout_s)
        self._refuse(408, "request_timeout", f"the request headers did not arrive within {self.header_timeout_s:g} s")

    def _body_too_slow(self) -> None:
        self._deadline = None
        _logger.info("closed a connection whose request body took over %g s", self.body_timeout_s)
        self._refuse(408, "request_timeout", f"the request body did not arrive within {self.body_timeout_s:g} s")

    # -- uvicorn's hooks ------------------------------------------------------------------------------------
    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_headers()  # a connection that never sends a request is closed too

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._in_headers:
            self._header_bytes += len(data)
        super().data_received(data)
        # Still in the headers after this read: the parser holds them all; bound what it may hold.
        if self._in_headers and self._header_bytes > self.max_header_bytes and not self.transport.is_closing():
            _logger.info("refused a request whose headers are over %d bytes", self.max_header_bytes)
            self._refuse(431, "too_large", self._too_large_detail())

    def _too_large_detail(self) -> str:
        return f"the request headers are over the limit of {self.max_header_bytes // 1024} KiB"

    def on_url(self, url: bytes) -> None:
        self._parsed_bytes += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._parsed_bytes += len(name) + len(value) + 4
        super().on_header(name, value)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if not self._in_headers:  # a request on a kept-alive connection: its first byte starts the clock
            self._await_headers()

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._arm(self.body_timeout_s + BODY_GRACE_S, self._body_too_slow)
        if self._parsed_bytes <= self.max_header_bytes:
            super().on_headers_complete()
            return
        # Headers that arrived whole in one read: answered through uvicorn's own request cycle, by an app
        # that refuses them, so the parser's later callbacks (body, message end) find the cycle they expect.
        _logger.info("refused a request whose headers are over %d bytes", self.max_header_bytes)
        app, self.app = self.app, error_app(431, "too_large", self._too_large_detail())
        try:
            super().on_headers_complete()
        finally:
            self.app = app

    def on_message_complete(self) -> None:
        if self._deadline is not None and not self._in_headers:
            self._disarm()
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        """Malformed HTTP: the service's JSON error (uvicorn's says the same in plain text)."""
        self._disarm()
        if not self.transport.is_closing():
            self.transport.write(error_bytes(400, "bad_input", "the request is not valid HTTP/1.1"))
            self.transport.close()
