"""``medzero serve``: run the HTTP service with uvicorn.

``serve_command`` is a click command; the main ``medzero`` group adds it with ``cli.add_command``.
This module imports neither FastAPI nor uvicorn until the command runs, so the rest of the CLI works
without the ``serve`` extra.
"""
from __future__ import annotations

import functools
import ipaddress
import logging
import os
import socket
import sys

import click

from ..encoders import backends as backends
from ..core.errors import MedzeroError

__all__ = ["serve_command", "is_loopback"]

_MIB = 1 << 20


def is_loopback(host: str) -> bool:
    """Whether every address ``host`` names is a loopback address (127.0.0.0/8, ::1)."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


def _log_config(level: str) -> dict:
    level = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stderr"}},
        "loggers": {
            "uvicorn": {"handlers": ["stderr"], "level": level, "propagate": False},
            # uvicorn's access lines carry the query string; the service writes its own (route template only).
            "uvicorn.access": {"handlers": [], "level": "CRITICAL", "propagate": False},
            "medzero": {"handlers": ["stderr"], "level": level, "propagate": False},
        },
    }


def _require_serve_extra() -> None:
    import importlib.util

    missing = [name for name in ("fastapi", "uvicorn", "python_multipart", "httptools") if importlib.util.find_spec(name) is None]
    if missing:
        raise click.ClickException(
            f"medzero serve needs {', '.join(missing)}: pip install 'medzero[serve]'"
        )


def _index_stores(values: tuple[str, ...]) -> dict[str, str]:
    """``--index-store NAME=URL`` options as ``{name: url}``."""
    out = {}
    for value in values:
        name, sep, url = value.partition("=")
        if not sep or not name.strip() or not url.strip():
            raise ValueError("--index-store takes NAME=postgresql://...")
        out[name.strip()] = url.strip()
    return out


@click.command("serve", context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1), help="Processes; each loads the models.")
@click.option("--api-key-file", type=click.Path(exists=True, dir_okay=False), help="API keys, one per line: a token, or sha256:<hex> of one. Also read: MEDZERO_API_KEYS.")
@click.option("--insecure-no-auth", is_flag=True, help="Accept requests without an API key (loopback hosts only).")
@click.option("--audio-model", metavar="ID|DIR", envvar="MEDZERO_AUDIO_MODEL", help="CLAP model: a name, hub id or local directory.")
@click.option("--image-model", metavar="ID|DIR", envvar="MEDZERO_IMAGE_MODEL", help="open_clip model: a name, hf-hub: id or local-dir: path.")
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--backend", type=click.Choice(backends.BACKENDS), envvar=backends.ENV, help=backends.OPTION_HELP)
@click.option("--preload", default="audio,image", show_default=True, help="Modalities whose models load at start (/readyz waits for them); 'none' for neither.")
@click.option("--index-root", type=click.Path(file_okay=False), help="Directory holding the case indexes served as /v1/index/{name}.")
@click.option("--index-store", "index_stores", multiple=True, metavar="NAME=URL", help="Serve the PostgreSQL case index at URL as /v1/index/NAME (repeatable; many servers may write it). Password from PGPASSWORD, MEDZERO_PG_PASSWORD_FILE or ~/.pgpass; files kept under --index-root/NAME.")
@click.option("--calibration-dir", type=click.Path(exists=True, file_okay=False), help="Site overlays from `medzero calibrate` (NAME.yaml), chosen per request with calibration=NAME.")
@click.option("--max-upload-mb", default=64.0, show_default=True, type=click.FloatRange(min=0.001), help="Largest single-file request.")
@click.option("--max-batch-mb", default=256.0, show_default=True, type=click.FloatRange(min=0.001), help="Largest batch or add request.")
@click.option("--max-batch-files", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--max-batch", default=8, show_default=True, type=click.IntRange(min=1), help="Most sources in one forward pass (1: no batching).")
@click.option("--batch-window-ms", default=5.0, show_default=True, type=click.FloatRange(min=0), help="How long a request waits for others to share its forward pass.")
@click.option("--queue-size", default=64, show_default=True, type=click.IntRange(min=1), help="Sources that may wait for a forward pass; beyond it, 503.")
@click.option("--timeout", "timeout_s", default=120.0, show_default=True, type=click.FloatRange(min=0.001), help="Seconds before a classification gives up with 503.")
@click.option("--max-inflight-mb", default=1024.0, show_default=True, type=click.FloatRange(min=1), help="Most data held for all open requests together (bodies and decoded uploads); beyond it, 503 with Retry-After. One upload may decode to a quarter of it.")
@click.option("--header-timeout", "header_timeout_s", default=20.0, show_default=True, type=click.FloatRange(min=0.001), help="Seconds a client has to send a request's headers; then 408 and the connection is closed.")
@click.option("--body-timeout", "body_timeout_s", default=60.0, show_default=True, type=click.FloatRange(min=0.001), help="Seconds a client has to send a request's whole body; then 408 and the connection is closed.")
@click.option("--cors-origin", "cors_origins", multiple=True, metavar="ORIGIN", help="Allow this origin by CORS (repeatable; default: CORS off).")
@click.option("--log-level", default="info", show_default=True, type=click.Choice(["debug", "info", "warning", "error"]))
def serve_command(host, port, workers, api_key_file, insecure_no_auth, audio_model, image_model, device, backend, preload, index_root,
                  index_stores, calibration_dir, max_upload_mb, max_batch_mb, max_batch_files, max_batch, batch_window_ms, queue_size, timeout_s,
                  max_inflight_mb, header_timeout_s, body_timeout_s, cors_origins, log_level):
    """Serve classification and case search over HTTP (FastAPI + uvicorn).

    Every /v1 request needs `Authorization: Bearer <key>`. Logs hold no file names, labels or bodies.
    """
    from .auth import load_api_keys

    try:
        hashes = load_api_keys(api_key_file)
    except ValueError as exc:
        raise click.UsageError(str(exc))
    if insecure_no_auth:
        if hashes:
            raise click.UsageError("--insecure-no-auth and API keys together: drop one")
        if not is_loopback(host):
            raise click.UsageError(f"--insecure-no-auth is allowed on a loopback host only, not {host}")
    elif not hashes:
        raise click.UsageError(
            "no API keys: pass --api-key-file or set MEDZERO_API_KEYS (or --insecure-no-auth on 127.0.0.1)"
        )
    _require_serve_extra()
    try:
        backends.use_in_processes(backend, device)  # inherited by --workers processes
    except MedzeroError as exc:
        raise click.UsageError(str(exc))
    import uvicorn

    import medzero

    from .app import create_app
    from .config import CONFIG_ENV, ServiceConfig
    from .protocol import GuardedHttpProtocol
    from .state import load_calibrations

    modalities = tuple(m.strip() for m in preload.split(",") if m.strip() and m.strip() != "none")
    try:
        config = ServiceConfig(
            audio_model=audio_model, image_model=image_model, device=device, preload=modalities,
            api_key_hashes=tuple(hashes), insecure_no_auth=insecure_no_auth,
            max_upload_bytes=int(max_upload_mb * _MIB), max_batch_bytes=int(max_batch_mb * _MIB),
            max_batch_files=max_batch_files, max_batch=max_batch, batch_window_ms=batch_window_ms,
            queue_size=queue_size, timeout_s=timeout_s, index_root=index_root, calibration_dir=calibration_dir,
            index_stores=_index_stores(index_stores),
            cors_origins=tuple(cors_origins), max_inflight_bytes=int(max_inflight_mb * _MIB),
            header_timeout_s=header_timeout_s, body_timeout_s=body_timeout_s,
        )
        load_calibrations(config.calibration_dir, {t.name: t for t in medzero.list_tasks()})  # a bad overlay stops us here
    except ValueError as exc:
        raise click.UsageError(str(exc))
    if insecure_no_auth:
        logging.getLogger("medzero.service").warning("serving without API keys (--insecure-no-auth)")
    # Header and body deadlines and the header size bound, which uvicorn's own protocols lack; a
    # partial of a module-level class pickles, so --workers processes get them too.
    protocol = functools.partial(
        GuardedHttpProtocol, header_timeout_s=config.header_timeout_s, body_timeout_s=config.body_timeout_s,
        max_header_bytes=config.max_header_bytes,
    )
    options = dict(
        host=host, port=port, log_config=_log_config(log_level), access_log=False, server_header=False,
        proxy_headers=False, timeout_graceful_shutdown=10, http=protocol,
    )
    if workers > 1:
        os.environ[CONFIG_ENV] = config.to_json()  # key hashes only; each worker builds its app from it
        uvicorn.run("medzero.service.app:app_from_env", factory=True, workers=workers, **options)
    else:
        uvicorn.run(create_app(config), **options)


if __name__ == "__main__":  # python -m medzero.service.cli ...
    sys.exit(serve_command())
