"""The Encoder protocol and a registry of named models.

An encoder turns items of one modality (audio clips, images) and texts into L2-normalised float32
embeddings in one shared space. Each model *family* (``clap``, ``open_clip``) registers a loader;
each *named model* (``clap-htsat-fused``, ``biomedclip``) is a row of data naming its family, hub id
and pinned revision. :func:`create` resolves what a user typed:

- a registered name: ``clap-htsat-fused``;
- a local directory: ``/models/clap`` or ``local-dir:/models/clap``;
- a hub id: ``laion/clap-htsat-fused`` or ``hf-hub:org/name`` (loaded from the local hub cache
  when offline).

Loaded encoders are kept per (reference, device), so a process loads each model once.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import numpy as np

from .errors import ModelUnavailableError

__all__ = [
    "Encoder",
    "ModelCfg",
    "register_family",
    "register_model",
    "list_models",
    "create",
    "default_model",
    "resolve_device",
    "weights_fingerprint",
    "local_dir",
]

_logger = logging.getLogger(__name__)


@runtime_checkable
class Encoder(Protocol):
    modality: str  # "audio" or "image"
    model_id: str  # what was loaded: a hub id or a directory
    fingerprint: str  # model id + revision, or model id + weights hash
    dim: int
    logit_scale: float
    device: str

    def embed(self, items: Sequence[Any]) -> np.ndarray:
        """(n, dim) float32, L2-normalised, for already-loaded items of this modality."""

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        """(n, dim) float32, L2-normalised."""


@dataclass(frozen=True)
class ModelCfg:
    name: str
    modality: str
    family: str
    hub_id: str
    revision: str | None = None
    description: str = ""
    default: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


#: family -> (modality, loader(source, revision, device, cfg) -> Encoder)
_FAMILIES: dict[str, tuple[str, Callable[..., Encoder]]] = {}
_MODELS: dict[str, ModelCfg] = {}
_LOADED: dict[tuple[str, str, str], Encoder] = {}
_LOAD_LOCK = threading.Lock()
_ENV = {"audio": "MEDZERO_AUDIO_MODEL", "image": "MEDZERO_IMAGE_MODEL"}


def register_family(family: str, modality: str) -> Callable[[Callable[..., Encoder]], Callable[..., Encoder]]:
    def decorator(loader: Callable[..., Encoder]) -> Callable[..., Encoder]:
        _FAMILIES[family] = (modality, loader)
        return loader

    return decorator


def register_model(cfg: ModelCfg) -> ModelCfg:
    _MODELS[cfg.name] = cfg
    return cfg


def _ensure_registered() -> None:
    # Importing the modality plug-ins registers their families and named models; a plug-in that
    # cannot be imported (a trimmed install) leaves the others working.
    from .modality import modalities

    modalities()


def list_models(modality: str | None = None) -> list[ModelCfg]:
    """Registered named models, defaults first."""
    _ensure_registered()
    models = [m for m in _MODELS.values() if modality in (None, m.modality)]
    return sorted(models, key=lambda m: (m.modality, not m.default, m.name))


def default_model(modality: str) -> str:
    """``MEDZERO_AUDIO_MODEL`` / ``MEDZERO_IMAGE_MODEL`` if set, else the registered default."""
    if os.environ.get(_ENV.get(modality, "")):
        return os.environ[_ENV[modality]]
    for cfg in list_models(modality):
        if cfg.default:
            return cfg.name
    raise ModelUnavailableError(f"no default {modality} model is registered")


def resolve_device(device: str | None = "auto") -> str:
    import torch

    device = (device or "auto").lower()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelUnavailableError(f"device {device!r} was asked for but CUDA is not available; use --device cpu")
    if device not in ("cpu", "mps") and not device.startswith("cuda"):
        raise ModelUnavailableError(f"unknown device {device!r}; expected auto, cpu or cuda")
    return device


def _family_for(modality: str) -> str:
    for family, (fam_modality, _) in _FAMILIES.items():
        if fam_modality == modality:
            return family
    raise ModelUnavailableError(f"no model family is registered for {modality}")


def create(ref: str | None = None, *, modality: str, device: str | None = "auto") -> Encoder:
    """Load (once per process) the encoder that ``ref`` names; ``None`` means the default model."""
    _ensure_registered()
    ref = ref or default_model(modality)
    device = resolve_device(device)
    key = (modality, ref, device)
    with _LOAD_LOCK:
        if key in _LOADED:
            return _LOADED[key]
        cfg = _MODELS.get(ref)
        if cfg is not None:
            if cfg.modality != modality:
                raise ModelUnavailableError(f"model {ref!r} is an {cfg.modality} model, not an {modality} model")
            source, revision, family = cfg.hub_id, os.environ.get(f"MEDZERO_{cfg.name.upper().replace('-', '_')}_REVISION", cfg.revision), cfg.family
        else:
            source, revision, family = ref, None, _family_for(modality)
        _, loader = _FAMILIES[family]
        _logger.info("loading %s model %s on %s", modality, source, device)
        encoder = loader(source, revision=revision, device=device, cfg=cfg)
        _LOADED[key] = encoder
        return encoder


def local_dir(ref: str, *, modality: str = "") -> Path | None:
    """The directory that ``local-dir:PATH`` or a plain existing directory names; ``None`` for
    any other reference (a registered name, a hub id). A ``local-dir:`` reference to a missing
    directory is a one-line error saying so."""
    explicit = ref.startswith("local-dir:")
    path = Path(ref.removeprefix("local-dir:")).expanduser()
    if path.is_dir():
        return path
    if explicit:
        what = f"{modality} model directory" if modality else "model directory"
        raise ModelUnavailableError(f"{what} not found: {path} (it does not exist)")
    return None


def clear_loaded() -> None:
    """Forget loaded encoders (tests, or a long-lived app that wants memory back)."""
    with _LOAD_LOCK:
        _LOADED.clear()


# -- fingerprints ------------------------------------------------------------------------------


def weights_fingerprint(directory: str | os.PathLike, patterns: Sequence[str] = ("*.safetensors", "*.bin", "*.pt", "*.pth")) -> str:
    """A content hash of a local model directory's weight and config files.

    Hashing a large checkpoint takes a second or two, so the digest is remembered in the cache
    directory, keyed by each file's path, size and modification time.
    """
    from .cache import cache_dir

    directory = Path(directory).resolve()
    files = sorted({p for pattern in (*patterns, "*.json") for p in directory.glob(pattern) if p.is_file()})
    if not files:
        raise ModelUnavailableError(f"{directory} holds no model files (expected *.safetensors and config.json)")
    stamp = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    memo_path = cache_dir() / "weights_fingerprints.json"
    memo_key = hashlib.sha256(json.dumps(stamp).encode()).hexdigest()
    try:
        memo = json.loads(memo_path.read_text())
        if memo_key in memo:
            return memo[memo_key]
    except (OSError, ValueError):
        memo = {}
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    value = digest.hexdigest()[:16]
    try:
        memo[memo_key] = value
        memo_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo_path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(memo))
        os.replace(tmp, memo_path)
    except OSError:
        pass
    return value
