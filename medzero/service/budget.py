"""The in-flight byte budget: request bodies and decoded uploads held across all open requests.

Per-request limits (``--max-upload-mb``) bound one request, not how many are open: twenty clients
each sending a large upload slowly would make the server hold them all, and every decoded upload
waiting for a forward pass holds its samples or pixels too. :class:`InFlight` caps the total. Each
HTTP request gets a :class:`Lease` (the service's outermost middleware opens it and releases it
when the response is sent); reading the body holds its bytes as they arrive (a declared
Content-Length at once, before any is read), and each decoded upload holds its arrays' bytes. When
the total would pass the cap, the request that asked is refused (the service answers 503 with
``Retry-After``) and gives back everything it held; requests already admitted are not disturbed.

Decoding itself runs in a fixed number of threads, each bounded by the decoders' own limits (which
the service sets to fit this budget), so the peak is about the cap plus what those threads hold.
"""
from __future__ import annotations

import threading
from typing import Any

__all__ = ["InFlight", "Lease", "BudgetExceeded", "decoded_nbytes"]


class BudgetExceeded(Exception):
    """Holding more would pass the in-flight cap."""


class InFlight:
    """Bytes held by open requests, process-wide, never more than ``limit``."""

    def __init__(self, limit: int):
        if limit < 1:
            raise ValueError("the in-flight limit must be at least 1 byte")
        self.limit = int(limit)
        self.used = 0
        self.peak = 0
        self._lock = threading.Lock()

    def lease(self) -> "Lease":
        return Lease(self)

    def _take(self, n: int) -> None:
        with self._lock:
            if self.used + n > self.limit:
                raise BudgetExceeded()
            self.used += n
            self.peak = max(self.peak, self.used)

    def _give(self, n: int) -> None:
        with self._lock:
            self.used -= n


class Lease:
    """What one request holds of an :class:`InFlight` budget; :meth:`release` gives it all back."""

    def __init__(self, budget: InFlight):
        self.budget = budget
        self.held = 0

    def hold(self, n: int) -> None:
        """Hold ``n`` more bytes; :class:`BudgetExceeded` (holding nothing more) when they do not fit."""
        if n > 0:
            self.budget._take(n)
            self.held += n

    def hold_at_least(self, n: int) -> None:
        """Hold ``n`` bytes in all (a body's bytes so far, when its declared length was held already)."""
        self.hold(n - self.held)

    def release(self) -> None:
        held, self.held = self.held, 0
        if held:
            self.budget._give(held)


def decoded_nbytes(value: Any, _depth: int = 0) -> int:
    """The bytes of the arrays, tensors and images inside a decoded upload (its item and model input).

    Walks containers and plain objects' attributes a few levels deep; each array counts once,
    so views and shared buffers are not counted twice (their base's size is counted).
    """
    seen: set[int] = set()

    def walk(obj: Any, depth: int) -> int:
        if obj is None or isinstance(obj, (str, bytes, int, float, bool)) or id(obj) in seen or depth > 4:
            return 0
        seen.add(id(obj))
        nbytes = getattr(obj, "nbytes", None)
        if isinstance(nbytes, int) and hasattr(obj, "shape"):  # numpy arrays (a view counts its base)
            base = getattr(obj, "base", None)
            if base is not None and hasattr(base, "nbytes"):
                return walk(base, depth)
            return nbytes
        if hasattr(obj, "element_size") and hasattr(obj, "nelement"):  # torch tensors
            return int(obj.element_size() * obj.nelement())
        if hasattr(obj, "getbands") and hasattr(obj, "size"):  # PIL images
            width, height = obj.size
            return int(width * height * len(obj.getbands()) * (4 if obj.mode in ("I", "F", "I;16") else 1))
        if isinstance(obj, dict):
            return sum(walk(v, depth + 1) for v in obj.values())
        if isinstance(obj, (list, tuple, set, frozenset)):
            return sum(walk(v, depth + 1) for v in obj)
        attrs = getattr(obj, "__dict__", None)
        if isinstance(attrs, dict):
            return sum(walk(v, depth + 1) for v in attrs.values())
        return 0

    return walk(value, _depth)
