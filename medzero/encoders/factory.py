"""Resolving and loading encoders (:class:`~medzero.core.contracts.Encoder`).

An encoder turns items of one modality (audio clips, images) and texts into L2-normalised float32
embeddings in one shared space. The families that load them and the named models are rows of
:mod:`medzero.encoders.registry`; :func:`create` resolves what a user typed:

- a registered name: ``clap-htsat-fused`` (an installed model pack of that name first, see
  :mod:`medzero.encoders.packs`, else its hub id);
- a local directory: ``/models/clap`` or ``local-dir:/models/clap`` (a path that does not exist is
  an error saying so, never taken for a hub id);
- an installed pack by name, or by the hub id it was packed from;
- a hub id: ``laion/clap-htsat-fused`` or ``hf-hub:org/name``.

Models from the hub fail fast offline: one probe of the hub (:mod:`medzero.encoders.hub`, at most a
second and a half) decides whether the hub can be used; if not, the model loads from the local cache
with the hub libraries in offline mode, or a missing one raises at once a one-line
:class:`ModelUnavailableError` that says what to do (install a pack, pass a directory, or fill the
cache). :func:`availability` answers the same question without loading anything.

Loaded encoders are kept per (reference, device), so a process loads each model once.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator, Sequence

from . import backends
from . import hub
from ..core.contracts import Encoder
from ..core.errors import MedzeroError, ModelUnavailableError
from .installed import InstalledPack, find_installed
from .registry import ModelCfg, family, families, list_models, model_error, named_model

__all__ = [
    "Location",
    "Availability",
    "Target",
    "configured_model",
    "create",
    "resolve",
    "availability",
    "default_model",
    "resolve_device",
    "no_gpu_driver",
    "weights_fingerprint",
    "local_dir",
    "advice",
    "missing_error",
    "short_reason",
    "forget",
    "loading",
]

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Location:
    """Where a model's files are on this machine, found without loading it.

    ``kind``: ``pack`` (an installed model pack), ``directory``, ``hub-cache`` (the Hugging Face
    cache), ``hub`` (not here; it would be downloaded) or ``missing`` (a directory that does not
    exist). ``where`` is a path or a hub id; ``detail`` says what is missing, if anything.
    """

    kind: str
    where: str = ""
    detail: str = ""

    @property
    def local(self) -> bool:
        return self.kind in ("pack", "directory", "hub-cache")


@dataclass(frozen=True)
class Target:
    """What a reference resolves to: the family and source its loader is given."""

    ref: str
    modality: str
    family: str
    source: str
    revision: str | None = None
    cfg: ModelCfg | None = None
    pack: InstalledPack | None = None
    directory: Path | None = None

    @property
    def display(self) -> str:
        return f"{self.cfg.name} ({self.cfg.hub_id})" if self.cfg is not None else self.ref

    @property
    def on_hub(self) -> bool:
        return self.pack is None and self.directory is None


@dataclass(frozen=True)
class Availability:
    """Whether a modality's model can be loaded here, and from where (see :func:`availability`)."""

    ref: str
    modality: str
    available: bool
    location: Location
    reason: str = ""  # why not, a sentence without command-line advice (front ends add their own)
    advice: str = ""  # what to do, for the command line
    why: str = ""  # the short cause: "it is not in the Hugging Face cache, and huggingface.co cannot be reached"
    name: str = ""  # the registered or pack name, if any
    hub_id: str = ""
    hub_cache: str = ""  # for a hub model: the Hugging Face cache folder it would be read from

    @property
    def where(self) -> str:
        return self.location.where


_LOADED: dict[tuple[str, str, str, str], Encoder] = {}  # (modality, ref, device, backend)
_LOAD_LOCK = threading.Lock()
_LOADING = threading.Event()  # set while a model loads (or exports), in whichever thread
_ENV = {"audio": "MEDZERO_AUDIO_MODEL", "image": "MEDZERO_IMAGE_MODEL"}


def short_reason(error: BaseException | str, limit: int = 200) -> str:
    """Another library's message on one line, cut at a sentence or word boundary (never mid-word)."""
    text = " ".join(str(error).split()) or (type(error).__name__ if isinstance(error, BaseException) else "")
    if len(text) <= limit:
        return text
    head = text[:limit]
    sentence = head.rfind(". ")
    if sentence >= limit // 3:
        return head[: sentence + 1]
    return head.rsplit(" ", 1)[0].rstrip(",;:") + " …"


def configured_model(modality: str) -> str | None:
    """The model ``MEDZERO_AUDIO_MODEL`` / ``MEDZERO_IMAGE_MODEL`` names, or ``None`` when unset."""
    return os.environ.get(_ENV.get(modality, "")) or None


def default_model(modality: str) -> str:
    """``MEDZERO_AUDIO_MODEL`` / ``MEDZERO_IMAGE_MODEL`` if set, else the registered default."""
    configured = configured_model(modality)
    if configured is not None:
        return configured
    for cfg in list_models(modality):
        if cfg.default:
            return cfg.name
    raise ModelUnavailableError(f"no default {modality} model is registered")


def resolve_device(device: str | None = "auto") -> str:
    """``cpu``, ``cuda`` (``auto``: CUDA when torch can use it) or ``mps``; a one-line error for
    CUDA asked for where there is none, or an unknown name.

    ``auto`` and ``cpu`` on a machine without a GPU driver are answered without importing torch
    (1-1.5 s and 300 MB that the exported backends never need, on every start)."""
    device = (device or "auto").lower()
    if device == "cpu" or (device == "auto" and no_gpu_driver()):
        return "cpu"
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelUnavailableError(f"device {device!r} was asked for but CUDA is not available; use --device cpu")
    if device not in ("cpu", "mps") and not device.startswith("cuda"):
        raise ModelUnavailableError(f"unknown device {device!r}; expected auto, cpu or cuda")
    return device


#: What a machine torch could run CUDA (or ROCm) on has: the NVIDIA driver's files, AMD's
#: compute device, or WSL's GPU device.
_GPU_DRIVER_FILES = ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd", "/dev/dxg")


def no_gpu_driver() -> bool:
    """Whether this process certainly has no GPU torch could use, decided without importing torch
    or initialising CUDA: ``CUDA_VISIBLE_DEVICES`` hides every device, or (on Linux) none of the
    GPU drivers' device files and no CUDA driver library exist. Anything else (another system, a
    driver present) is ``False``: torch is asked."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return True
    if not sys.platform.startswith("linux"):
        return False
    if any(os.path.exists(path) for path in _GPU_DRIVER_FILES):
        return False
    return not _cuda_library_found()


@lru_cache(maxsize=1)
def _cuda_library_found() -> bool:
    import ctypes.util

    return ctypes.util.find_library("cuda") is not None


def _family_for(modality: str, directory: Path | None = None) -> str:
    """The family that loads ``modality``: the one that recognises ``directory`` if given, else the first."""
    candidates = families(modality)
    if not candidates:
        raise ModelUnavailableError(f"no model family is registered for {modality}")
    if directory is not None:
        for row in candidates:
            if row.recognise is not None and row.recognise(directory):
                return row.name
    return candidates[0].name


def _revision(cfg: ModelCfg) -> str | None:
    return os.environ.get(f"MEDZERO_{cfg.name.upper().replace('-', '_')}_REVISION", cfg.revision)


def resolve(ref: str | None = None, *, modality: str) -> Target:
    """What ``ref`` names, without loading it: a registered name (its installed pack first), an
    existing directory, an installed pack's name or hub id, else a hub reference."""
    ref = ref or default_model(modality)
    cfg = named_model(ref)
    if cfg is not None:
        if cfg.modality != modality:
            raise model_error(f"model {ref!r} is an {cfg.modality} model, not an {modality} model")
        revision = _revision(cfg)
        pack = find_installed(cfg.name, modality=modality, revision=revision if revision != cfg.revision else None)
        if pack is not None:
            return Target(ref, modality, pack.family, f"local-dir:{pack.path}", pack.revision, cfg, pack=pack)
        return Target(ref, modality, cfg.family, cfg.hub_id, revision, cfg)
    directory = local_dir(ref, modality=modality)
    if directory is not None:
        return Target(ref, modality, _family_for(modality, directory), f"local-dir:{directory}", directory=directory)
    pack = find_installed(ref, modality=modality)
    if pack is not None:
        return Target(ref, modality, pack.family, f"local-dir:{pack.path}", pack.revision, pack=pack)
    return Target(ref, modality, _family_for(modality), ref)


def create(ref: str | None = None, *, modality: str, device: str | None = "auto", backend: str | None = None) -> Encoder:
    """Load (once per process) the encoder that ``ref`` names; ``None`` means the default model.

    ``backend``: ``auto``, ``torch``, ``onnx``, ``openvino`` or ``onnx-int8``
    (:mod:`medzero.encoders.backends`); ``None`` means ``--backend`` / ``MEDZERO_BACKEND``, else ``auto``.

    A hub model that is not on this machine while the hub cannot be used fails here, before torch
    or the model libraries are imported: one probe of the hub (at most about 1.5 s), one line.
    """
    ref = ref or default_model(modality)
    wanted = (device or "auto").lower()
    asked = backends.resolve(backend)
    with _LOAD_LOCK, _loading((modality, ref, wanted, asked) not in _LOADED):
        if (modality, ref, wanted, asked) in _LOADED:
            return _LOADED[(modality, ref, wanted, asked)]
        target = resolve(ref, modality=modality)
        if target.pack is not None:
            target.pack.check_files()
        offline_because = hub.offline_reason() if target.on_hub else None
        location = _locate(target) if offline_because is not None else None
        if location is not None and not location.local:
            raise missing_error(target, offline_because, location)
        if asked in ("auto", "torch"):
            device = resolve_device(wanted)
            tries = backends.candidates(asked, target.family, device)
        else:
            device, tries = backends.cpu_device(asked, wanted), (asked,)
        failed: list[tuple[str, str]] = []  # (backend, why) of those auto tried first
        while True:
            backend = tries[0]
            key = (modality, ref, device, backend)
            if key in _LOADED:
                break
            hub.quiet_logging()
            try:
                _LOADED[key] = _load(target, backend, device, offline_because)
                break
            except Exception as exc:
                # auto goes on to its next backend when this one failed, not when the model is unavailable
                backend_failed = isinstance(exc, backends.BackendError) or not isinstance(exc, MedzeroError)
                if len(tries) == 1 or not backend_failed:
                    raise
                failed.append((backend, short_reason(exc)))
                # an export that cannot be had fails every exported backend alike
                tries = ("torch",) if isinstance(exc, backends.ExportUnavailable) else tries[1:]
        if failed:
            names = " and ".join(name for name, _ in failed)
            _logger.warning(
                "the %s backend%s cannot load %s (%s); using %s", names, "s" if len(failed) > 1 else "",
                target.display, "; ".join(why for _, why in failed), backend,
            )
        _LOADED[(modality, ref, wanted, asked)] = _LOADED[key]
        return _LOADED[key]


@contextmanager
def _loading(really: bool) -> Iterator[None]:
    """While the block runs, mark this process as loading a model (importing torch included),
    unless it is ``really`` not (the model is loaded already): see :func:`loading`."""
    if not really:
        yield
        return
    _LOADING.set()
    try:
        yield
    finally:
        _LOADING.clear()


def _load(target: Target, backend: str, device: str, offline_because: str | None) -> Encoder:
    """Load ``target`` with ``backend`` on ``device`` (offline when the hub cannot be used)."""
    loader = _loader(target.family, backend)
    _logger.info("loading %s model %s on %s (%s)", target.modality, target.source, device, backend)
    if offline_because is None:
        encoder = loader(target.source, revision=target.revision, device=device, cfg=target.cfg)
    else:
        with hub.offline():
            encoder = loader(target.source, revision=target.revision, device=device, cfg=target.cfg)
    if target.pack is not None:
        # A pack loads as a folder; it keeps the identity of what was packed (hub id@commit,
        # or the packed directory's weights hash), so caches and indexes carry over.
        encoder.fingerprint = target.pack.fingerprint
    return encoder


def _loader(name: str, backend: str) -> Callable[..., Encoder]:
    """Family ``name``'s loader for ``backend``, called as ``loader(source, revision=, device=, cfg=)``:
    its torch loader, or for the exported backends its ``onnx`` loader, imported now (they run on
    the CPU, so the device is not passed on)."""
    row = family(name)
    if row is None:
        raise model_error(f"no loader for the {name} model family in this medzero")
    if backend == "torch":
        return row.load
    if row.onnx is None:  # every exported backend loads through it
        raise model_error(f"{name} models have no {backend} backend", "use --backend torch")
    module, _, attribute = row.onnx.partition(":")
    load = getattr(importlib.import_module(module), attribute)

    def load_exported(source: str, *, revision: str | None, device: str, cfg: ModelCfg | None) -> Encoder:
        return load(source, revision=revision, cfg=cfg, backend=backend)

    return load_exported


def _locate(target: Target) -> Location | None:
    row = family(target.family)
    if row is None or row.locate is None:
        return None
    return row.locate(target.source, target.revision, target.cfg)


def _pack_command(target: Target) -> str:
    if target.cfg is not None:
        return f"medzero models pack {target.cfg.name} -o models.tar"
    return f"medzero models pack {target.ref} --modality {target.modality} -o models.tar"


def advice(target: Target) -> str:
    """What to do on the command line when ``target`` is not on this machine and the hub is out of reach."""
    hub_id = target.cfg.hub_id if target.cfg is not None else target.ref
    return (
        f"on a connected machine run `{_pack_command(target)}`, copy models.tar here and run "
        f"`medzero models install models.tar`; or pass a model folder with --{target.modality}-model "
        f"local-dir:/path/to/folder (or MEDZERO_{target.modality.upper()}_MODEL); or copy a Hugging Face "
        f"cache that holds {hub_id.removeprefix('hf-hub:')} to {hub.cache_path()}"
    )


def _why(because: str, location: Location | None) -> str:
    detail = (location.detail if location is not None else "") or "it is not in the Hugging Face cache"
    return f"{detail}, and {because}"


def missing_error(target: Target, because: str, location: Location | None = None) -> ModelUnavailableError:
    """The one-line error for a hub model that is not on this machine while the hub cannot be used
    (``because``: "HF_HUB_OFFLINE is set", "huggingface.co cannot be reached")."""
    reason = f"{target.modality} model {target.display} is not available offline ({_why(because, location)})"
    return model_error(reason, advice(target))


def availability(ref: str | None = None, *, modality: str) -> Availability:
    """Whether ``ref`` (default: the modality's configured model) can be loaded here, and from
    where, without loading it: an installed pack, a directory, the Hugging Face cache, or the hub
    when it can be reached (probed at most once per few minutes)."""
    try:
        ref = ref or default_model(modality)
        target = resolve(ref, modality=modality)
    except ModelUnavailableError as exc:
        reason = getattr(exc, "reason", str(exc))
        missing = Location("missing", str(ref or ""), reason)
        return Availability(str(ref or ""), modality, False, missing, reason=reason, advice=str(exc), why=reason)
    name = target.cfg.name if target.cfg is not None else (target.pack.name if target.pack is not None else "")
    hub_id = target.cfg.hub_id if target.cfg is not None else (target.ref if target.on_hub else "")
    common = dict(ref=ref, modality=modality, name=name, hub_id=hub_id, hub_cache=str(hub.cache_path()) if hub_id else "")
    if target.pack is not None:
        try:
            target.pack.check_files()
        except ModelUnavailableError as exc:
            reason = getattr(exc, "reason", str(exc))
            location = Location("pack", str(target.pack.path), reason)
            return Availability(available=False, location=location, reason=reason, advice=str(exc), why=reason, **common)
        return Availability(available=True, location=Location("pack", str(target.pack.path)), **common)
    if target.directory is not None:
        return Availability(available=True, location=Location("directory", str(target.directory)), **common)
    location = _locate(target) or Location("hub", target.source)
    if location.local:
        return Availability(available=True, location=location, **common)
    because = hub.offline_reason()
    if because is None:
        return Availability(available=True, location=Location("hub", location.where or target.source, "downloads on first use"), **common)
    error = missing_error(target, because, location)
    return Availability(
        available=False, location=location, reason=error.reason, advice=advice(target), why=_why(because, location), **common
    )


def _looks_like_path(ref: str) -> bool:
    """A reference that can only be a filesystem path (a hub id is ``org/name``)."""
    if ref.startswith(("/", "./", "../", "~", ".\\", "..\\")) or "\\" in ref:
        return True
    if len(ref) > 2 and ref[1] == ":" and ref[0].isalpha() and ref[2] in "/\\":
        return True  # C:\models
    return ref.count("/") > 1 and ":" not in ref


def local_dir(ref: str, *, modality: str = "") -> Path | None:
    """The directory that ``local-dir:PATH`` or a plain existing directory names; ``None`` for
    any other reference (a registered name, a hub id). A ``local-dir:`` reference, or one that can
    only be a path (``/…``, ``./…``, ``~/…``), to a missing directory is a one-line error saying so."""
    explicit = ref.startswith("local-dir:")
    path = Path(ref.removeprefix("local-dir:")).expanduser()
    if path.is_dir():
        return path
    if explicit or _looks_like_path(ref):
        what = f"{modality} model directory" if modality else "model directory"
        if path.exists():
            raise model_error(f"{what} {path} is a file, not a directory")
        hint = "check the path" + (f" given with --{modality}-model or MEDZERO_{modality.upper()}_MODEL" if modality else "")
        raise model_error(f"{what} not found: {path} (it does not exist)", hint)
    return None


def loading() -> bool:
    """Whether a model is loading (or exporting) in this process right now, in any thread. A load
    runs in native code that no signal interrupts, for seconds; the command line asks this to
    leave at once on Ctrl-C rather than wait for it. An exported model's sessions, built in the
    background after :func:`create` returns, count as loading too."""
    return _LOADING.is_set() or backends.building()


def forget(refs: Sequence[str]) -> None:
    """Drop loaded encoders whose reference is one of ``refs`` (after a pack is installed)."""
    with _LOAD_LOCK:
        for key in [k for k in _LOADED if k[1] in set(refs)]:
            del _LOADED[key]


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
    from .cache import cache_dir, read_memo, write_memo

    directory = Path(directory).resolve()
    files = sorted({p for pattern in (*patterns, "*.json") for p in directory.glob(pattern) if p.is_file()})
    if not files:
        raise ModelUnavailableError(f"{directory} holds no model files (expected *.safetensors and config.json)")
    stamp = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    memo_path = cache_dir() / "weights_fingerprints.json"
    memo_key = hashlib.sha256(json.dumps(stamp).encode()).hexdigest()
    memo = read_memo(memo_path)
    if memo_key in memo:
        return memo[memo_key]
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    value = digest.hexdigest()[:16]
    memo[memo_key] = value
    write_memo(memo_path, memo)
    return value
