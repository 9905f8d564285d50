"""The service's settings: :class:`ServiceConfig`, and the decoder limits that follow from it.

The CLI builds one ``ServiceConfig`` from its options; ``--workers N`` passes it to each worker
process as JSON (``MEDZERO_SERVICE_CONFIG``, key hashes only). :func:`input_limits` tightens each
modality's decoder limits to what this server may hold, so a decoder refuses an upload that could
never fit before it allocates anything.
"""
from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

__all__ = ["ServiceConfig", "input_limits", "CONFIG_ENV", "MIB"]

#: Where ``--workers N`` passes the configuration (JSON; key hashes only) to each worker process.
CONFIG_ENV = "MEDZERO_SERVICE_CONFIG"
#: A case index's name (``state.NAME_PATTERN``; repeated here, as state imports this module).
_INDEX_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
MIB = 1 << 20


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
        index_stores: case indexes kept in PostgreSQL, ``{name: "postgresql://..."}`` (``--index-store
            NAME=URL``), served as ``{name}`` beside the folders; the files added to one are kept under
            ``index_root/{name}/uploads``. Many servers may write one such index at once.
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
    index_stores: dict[str, str] = dataclasses.field(default_factory=dict)
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
        self.index_stores = dict(self.index_stores)
        for name, url in self.index_stores.items():
            if not _INDEX_NAME.fullmatch(name):
                raise ValueError(f"--index-store: {name!r} is not an index name (1-64 letters, digits, '-' or '_')")
            if not url.lower().startswith(("postgresql://", "postgres://")):
                raise ValueError(f"--index-store {name}=...: give a postgresql:// URL")
        if self.index_stores and self.index_root is None:
            raise ValueError("--index-store needs --index-root: the folder where the files added to an index are kept")
        if self.calibration_dir is not None:
            self.calibration_dir = str(Path(self.calibration_dir).resolve())

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "ServiceConfig":
        return cls(**json.loads(text))


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
