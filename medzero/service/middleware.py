"""The app's middleware: :class:`Guard`, outermost, and :func:`add_cors` for ``--cors-origin``."""
from __future__ import annotations

import logging
import time

from fastapi import FastAPI

from .budget import InFlight
from .errors import error_response, fault
from .uploads import LEASE

__all__ = ["Guard", "add_cors"]

_logger = logging.getLogger("medzero.service")  # the service's log lines keep one logger name
_access = logging.getLogger("medzero.service.access")


class Guard:
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
        lease = scope[LEASE] = self.budget.lease()

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception as exc:  # noqa: BLE001
            _logger.error("unhandled error: %s", fault(exc))
            if status["code"] == 0:
                response = error_response(500, "internal", "internal error; the server log has the details")
                await response(scope, receive, send_wrapper)
        finally:
            lease.release()
            template = getattr(scope.get("route"), "path", None)
            if template is None:  # a client's path is only repeated when it is one of ours
                template = scope.get("path") if scope.get("path") == "/openapi.json" else "<unmatched>"
            _access.info("%s %s %d %.0fms", scope.get("method", "?"), template, status["code"],
                         (time.perf_counter() - started) * 1000)


def add_cors(app: FastAPI, origins: tuple[str, ...]) -> None:
    """CORS for ``origins`` (GET and POST, the Authorization and Content-Type headers); a refused
    preflight answers the service's JSON error like any other."""
    from fastapi.middleware.cors import CORSMiddleware

    class _Cors(CORSMiddleware):
        def preflight_response(self, request_headers):
            response = super().preflight_response(request_headers)
            if response.status_code == 400:
                return error_response(400, "bad_input", response.body.decode("latin-1"))
            return response

    app.add_middleware(
        _Cors, allow_origins=list(origins), allow_methods=["GET", "POST"], allow_headers=["Authorization", "Content-Type"],
    )
