"""What model families and named models exist: one :class:`Family` row per family, one
:class:`ModelCfg` row per named model.

A *family* (``clap``, ``open_clip``) is everything medzero knows about loading one kind of model:
its torch loader, where its exported backends load from, how to find its files without loading
it, how to recognise its folder and how to pack it, and which backend ``--backend auto`` prefers
for it on a CPU. A modality plug-in declares each of its families with one
``register_family(Family(...))`` call, so a family is read in one place and every consumer
(:mod:`.factory`, :mod:`.backends`, :mod:`.packs`) asks this module for the same row.

A *named model* (``clap-htsat-fused``, ``biomedclip``) is data: its family, hub id and pinned
revision.

This module is a leaf (the standard library and :mod:`medzero.core` only): the plug-ins that fill
it are imported on first use, through :func:`medzero.core.modality.modalities`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from ..core.errors import ModelUnavailableError

if TYPE_CHECKING:  # pragma: no cover
    from ..core.contracts import Encoder

__all__ = [
    "Family",
    "ModelCfg",
    "register_family",
    "family",
    "families",
    "register_model",
    "named_model",
    "list_models",
    "model_error",
]


@dataclass(frozen=True)
class Family:
    """One model family, declared by its modality plug-in.

    - ``load(source, *, revision, device, cfg) -> Encoder``: the torch loader; ``source`` is a hub
      id or ``local-dir:PATH``, ``cfg`` the named model's row if any;
    - ``onnx``: ``"module:function"``, the loader of the backends that run an ONNX export (``onnx``,
      ``openvino``, ``onnx-int8``), called as ``function(source, *, revision, cfg, backend)``. It
      is a path, imported only when such a backend is used, so the family's module never imports
      the export machinery; ``None``: the family has only the torch backend;
    - ``locate(source, revision, cfg) -> Location | None``: where a hub source's files are,
      without loading (``None``: cannot tell; the loader decides);
    - ``recognise(directory) -> bool``: whether a folder holds a model of this family;
    - ``stage(encoder, target, dest) -> dict[str, Path]``: the files of a model pack's folder,
      loadable as ``local-dir:`` (safetensors weights, configs, tokenizer, preprocessing, licence);
    - ``prefer_on_cpu``: the backend ``--backend auto`` uses on a CPU, from the family's benchmarks
      (``bench/``), or several in order of preference (the first whose runtime is installed and
      which loads the model); ``None``: torch.
    """

    name: str
    modality: str
    load: Callable[..., "Encoder"]
    onnx: str | None = None
    locate: Callable[..., Any] | None = None
    recognise: Callable[..., bool] | None = None
    stage: Callable[..., Any] | None = None
    prefer_on_cpu: str | tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.onnx is not None and ":" not in self.onnx:
            raise ValueError(f"{self.name}: onnx must be 'module:function', not {self.onnx!r}")
        if "auto" in self.preferred_on_cpu():
            raise ValueError(f"{self.name}: not a backend to prefer: 'auto'")

    def preferred_on_cpu(self) -> tuple[str, ...]:
        """``prefer_on_cpu`` as a tuple, best first (empty: torch)."""
        if self.prefer_on_cpu is None:
            return ()
        return (self.prefer_on_cpu,) if isinstance(self.prefer_on_cpu, str) else tuple(self.prefer_on_cpu)


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


_FAMILIES: dict[str, Family] = {}
_MODELS: dict[str, ModelCfg] = {}


def _ensure_registered() -> None:
    # Importing the modality plug-ins registers their families and named models; a plug-in that
    # cannot be imported (a trimmed install) leaves the others working.
    from ..core.modality import modalities

    modalities()


def register_family(row: Family) -> Family:
    """Declare a family (a plug-in does this once per family, when it is imported)."""
    _FAMILIES[row.name] = row
    return row


def family(name: str) -> Family | None:
    """The row of family ``name``; ``None`` when no plug-in here declares it (a pack made by
    another medzero, say)."""
    _ensure_registered()
    return _FAMILIES.get(name)


def families(modality: str | None = None) -> list[Family]:
    """Every declared family (of ``modality``), in the order the plug-ins declared them."""
    _ensure_registered()
    return [f for f in _FAMILIES.values() if modality in (None, f.modality)]


def register_model(cfg: ModelCfg) -> ModelCfg:
    _MODELS[cfg.name] = cfg
    return cfg


def named_model(name: str) -> ModelCfg | None:
    """The registered model called ``name``, if any."""
    _ensure_registered()
    return _MODELS.get(name)


def list_models(modality: str | None = None) -> list[ModelCfg]:
    """Registered named models, defaults first."""
    _ensure_registered()
    models = [m for m in _MODELS.values() if modality in (None, m.modality)]
    return sorted(models, key=lambda m: (m.modality, not m.default, m.name))


def model_error(reason: str, advice: str = "") -> ModelUnavailableError:
    """A one-line :class:`ModelUnavailableError`: ``reason`` (what is wrong), then ``advice``
    (what to do, for the command line). ``reason`` is kept as ``error.reason`` for front ends that
    give their own advice (the app never shows command-line flags). Every family's loader and the
    factory raise it, so it lives with the family contract."""
    error = ModelUnavailableError(f"{reason}; {advice}" if advice else reason)
    error.reason = " ".join(str(reason).split())  # type: ignore[attr-defined]
    return error
