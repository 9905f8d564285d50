"""The Hugging Face Hub as medzero sees it: can it be reached, what is in its local cache.

On a machine without internet, ``huggingface_hub`` retries every request five times with back-off
(about 28 s per file, each retry logged twice) before transformers or open_clip give up. medzero
asks once instead: :func:`probe` opens one TCP connection to the hub's host (or the proxy in
between) and, if that works, sends one HEAD request to the hub through huggingface_hub's own client;
no connection, no answer within about a second, or an answer that huggingface_hub would retry (5xx,
408) or a proxy's 407 means the hub cannot be used. The answer is kept for a few minutes. When the
hub cannot be used, models are loaded from the local cache with the hub libraries switched to
offline mode (:func:`offline`), so no request is made at all, and a model that is not cached fails
at once, before torch or the model libraries are imported.

Only ``huggingface_hub`` is imported here (it is light); transformers and open_clip are not.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

__all__ = ["endpoint", "host", "probe", "reachable", "forget_probe", "offline_reason", "offline", "cache_path", "cached_file", "quiet_logging"]

_logger = logging.getLogger(__name__)

#: Seconds one probe may take (connect, and name resolution in a helper thread).
PROBE_TIMEOUT_S = 1.0
#: How long a probe's answer is kept.
PROBE_TTL_S = 300.0
_PROBES: dict[tuple[str, int], tuple[float, str | None]] = {}
_PROBE_LOCK = threading.Lock()
_TRUE = {"1", "true", "yes", "on"}


def endpoint() -> str:
    """The hub's URL: ``HF_ENDPOINT`` if set, else huggingface_hub's, else https://huggingface.co."""
    if os.environ.get("HF_ENDPOINT"):
        return os.environ["HF_ENDPOINT"].rstrip("/")
    try:
        from huggingface_hub import constants

        return str(constants.ENDPOINT).rstrip("/")
    except ImportError:  # pragma: no cover - a dependency
        return "https://huggingface.co"


def _target() -> tuple[str, int]:
    """Host and port a request to the hub connects to first: the proxy when one applies."""
    url = urlsplit(endpoint())
    scheme = url.scheme or "https"
    host = url.hostname or "huggingface.co"
    proxies = urllib.request.getproxies()
    proxy = proxies.get(scheme) or proxies.get("all")
    if proxy and not urllib.request.proxy_bypass(host):
        p = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        if p.hostname:
            return p.hostname, p.port or (443 if p.scheme == "https" else 80)
    return host, url.port or (443 if scheme == "https" else 80)


#: HTTP answers that mean the hub cannot be used: a proxy that wants credentials, or statuses that
#: huggingface_hub retries with back-off (a proxy that blocks the hub often answers 502 or 503).
_UNUSABLE_STATUS = {407, 408, 500, 502, 503, 504}


def _probe(host: str, port: int, result: list[str]) -> None:
    """Connect to ``host:port``; when that works, ask the hub's root through huggingface_hub's own
    HTTP client (its proxies and certificates). Appends ``""`` when the hub answers, else why not."""
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S):
            pass
    except OSError as exc:
        result.append(f"cannot be reached ({exc.strerror or exc or type(exc).__name__})")
        return
    try:
        from huggingface_hub.utils import get_session

        status = get_session().head(endpoint() + "/", timeout=PROBE_TIMEOUT_S, follow_redirects=False).status_code
    except ImportError:  # pragma: no cover - a dependency
        result.append("")
        return
    except Exception as exc:  # the client's connection, TLS and timeout errors
        result.append(f"cannot be reached ({type(exc).__name__})")
        return
    result.append(f"cannot be used (it answers HTTP {status})" if status in _UNUSABLE_STATUS else "")


def probe() -> str | None:
    """``None`` when the hub (or the proxy in between) answers within about a second and a half,
    else why not (``"cannot be reached (Connection refused)"``). Name resolution has no timeout of
    its own, so the probe runs in a daemon thread that is given ``PROBE_TIMEOUT_S`` plus half a
    second. The answer is kept for ``PROBE_TTL_S``."""
    target = _target()
    with _PROBE_LOCK:
        now = time.monotonic()
        known = _PROBES.get(target)
        if known is not None and now - known[0] < PROBE_TTL_S:
            return known[1]
        result: list[str] = []
        thread = threading.Thread(target=_probe, args=(*target, result), name="medzero-hub-probe", daemon=True)
        thread.start()
        thread.join(PROBE_TIMEOUT_S + 0.5)
        why = result[0] if result else "cannot be reached (no answer)"
        _PROBES[target] = (time.monotonic(), why or None)
        if why:
            _logger.info("the model hub (%s:%d) %s; loading from local copies only", *target, why)
        return why or None


def reachable() -> bool:
    """Whether the hub (or its proxy) answers; see :func:`probe`."""
    return probe() is None


def forget_probe() -> None:
    """Probe again next time (tests, or after the network came back)."""
    with _PROBE_LOCK:
        _PROBES.clear()


def forced_offline() -> bool:
    """``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` set now, or huggingface_hub's offline mode on."""
    if (os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or "").strip().lower() in _TRUE:
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:  # pragma: no cover
        return False


def offline_reason() -> str | None:
    """Why nothing may be fetched from the hub (``HF_HUB_OFFLINE`` is set, or the hub cannot be
    reached), or ``None`` when it can be used. Probes the network at most once per ``PROBE_TTL_S``."""
    if forced_offline():
        return "HF_HUB_OFFLINE is set"
    why = probe()
    if why is not None:
        return f"{host()} {why}"
    return None


def host() -> str:
    """The hub's host name, for messages (``huggingface.co``)."""
    return urlsplit(endpoint()).hostname or endpoint()


@contextmanager
def offline() -> Iterator[None]:
    """huggingface_hub (and so transformers and open_clip) in offline mode for the ``with`` block:
    files come from the local cache and nothing is requested."""
    from huggingface_hub import constants

    saved_env, saved_const = os.environ.get("HF_HUB_OFFLINE"), constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved_const
        if saved_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved_env


def cache_path() -> Path:
    """The Hugging Face hub cache (``HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ~/.cache/huggingface/hub)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    try:
        from huggingface_hub import constants

        return Path(constants.HF_HUB_CACHE)
    except ImportError:  # pragma: no cover
        return Path.home() / ".cache" / "huggingface" / "hub"


def cached_file(repo: str, filename: str, revision: str | None = None) -> Path | None:
    """A file of a hub repository in the local cache, or ``None`` (also for an invalid repo id)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo, filename, cache_dir=str(cache_path()), revision=revision)
    except Exception:  # an invalid repo id, or no huggingface_hub
        return None
    return Path(found) if isinstance(found, str) else None


_QUIET_DONE = False


def quiet_logging() -> None:
    """One copy of each hub warning.

    huggingface_hub gives its ``huggingface_hub`` logger a stream handler of its own and lets
    records propagate as well, so once the application has configured the root logger (the CLI
    does, and so does open_clip's first ``logging.warning``) every hub warning is printed twice.
    The hub logger keeps its handler and stops propagating; its level is left alone. Called before
    the first model load.
    """
    global _QUIET_DONE
    if _QUIET_DONE:
        return
    _QUIET_DONE = True
    try:
        import huggingface_hub  # noqa: F401  (its import adds the handler)
    except ImportError:  # pragma: no cover
        return
    hub = logging.getLogger("huggingface_hub")
    if any(isinstance(h, logging.StreamHandler) for h in hub.handlers):
        hub.propagate = False
