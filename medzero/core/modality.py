"""The modality registry: what core knows of audio, images and any modality added later.

A modality is a plug-in. Its package (``medzero/audio/``, ``medzero/image/``) builds one
:class:`Modality` and calls :func:`register_modality` when it is imported; core never imports a
modality package by code. Which packages provide modalities is declared by import path, the way
pydicom registers its decoders:

- the built-in ones are declared by ``medzero/__init__.py`` (the composition root), with
  :func:`declare_plugin`;
- other distributions declare theirs in the ``medzero.modalities`` entry-point group
  (``name = "package.module"``).

A declared plug-in is imported the first time its modality is asked for. Adding a modality is one
folder: its loader, its encoder family, a ``Modality`` row, and one declaration.
"""
from __future__ import annotations

import importlib
import logging
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

from .errors import MedzeroError, one_line

if TYPE_CHECKING:  # pragma: no cover
    from .contracts import Encoder
    from .ingest import Prepared, Source
    from .results import Result
    from ..tasks.scoring import TaskHead

__all__ = [
    "Modality",
    "register_modality",
    "declare_plugin",
    "get_modality",
    "modalities",
    "modality_names",
    "plugin_errors",
]

_logger = logging.getLogger(__name__)

#: ``prepare(source, encoder, limits) -> Prepared``: decode one sniffed source for ``encoder``.
Prepare = Callable[["Source", "Encoder", Any], "Prepared"]
#: ``postprocess(result, prepared, encoder, head, options)``: add modality-specific parts to a Result.
Postprocess = Callable[["Result", "Prepared", "Encoder", "TaskHead", Mapping[str, Any]], None]


@dataclass(frozen=True)
class Modality:
    """One kind of input, as the rest of medzero sees it.

    Attributes:
        name: ``"audio"``, ``"image"``.
        noun: how errors call one input (``"an audio recording"``).
        word: how "neither ... nor ..." errors call the modality (``"audio"``, ``"an image"``).
        formats: the container formats (from :mod:`medzero.core.sniff`) its loader reads.
        format_words: how errors list the formats people know (``"WAV"``, ``"M4A/AAC"``).
        prepare: decodes one sniffed :class:`~medzero.core.ingest.Source` into a
            :class:`~medzero.core.ingest.Prepared` ready for ``encoder.embed`` (plus PHI-safe
            metadata, measurements and the case-index columns).
        limits: ``limits()`` builds the default input limits (read from the environment).
        accepts_array: whether an in-memory array (or ``(array, rate)`` pair) is of this modality,
            when no task says which modality it is.
        default_task: the task used when the caller names neither a task nor labels.
        default_template: the template for ad-hoc labels (``"This is a sound of {}."``).
        default_negative: the neutral negative of ad-hoc multilabel scoring, before templating.
        metric_info: measurements ``prepare`` reports, ``{metric: {"en", "zh", "unit"}}``; a task's
            metric rules may name only these.
        postprocess: optional; adds modality-specific parts to a Result (the timeline of a long
            recording).
    """

    name: str
    noun: str
    word: str
    formats: tuple[str, ...]
    format_words: tuple[str, ...]
    prepare: Prepare
    limits: Callable[[], Any] = lambda: None
    accepts_array: Callable[[Any], bool] = lambda obj: False
    default_task: str | None = None
    default_template: str = "{}"
    default_negative: str = "something else"
    metric_info: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    postprocess: Postprocess | None = None

    @property
    def metric_names(self) -> tuple[str, ...]:
        return tuple(self.metric_info)


_REGISTRY: dict[str, Modality] = {}
_PLUGINS: dict[str, str] = {}  # modality name -> module that registers it
_FAILED: dict[str, str] = {}  # modality name -> one-line reason its plug-in did not import
_LOCK = threading.RLock()
_entry_points_read = False


def register_modality(modality: Modality) -> Modality:
    """Make ``modality`` known (called by the modality's package when it is imported)."""
    with _LOCK:
        _REGISTRY[modality.name] = modality
        _FAILED.pop(modality.name, None)
    return modality


def declare_plugin(name: str, module: str) -> None:
    """Say that importing ``module`` registers modality ``name`` (imported when first needed)."""
    with _LOCK:
        _PLUGINS.setdefault(name, module)


def _read_entry_points() -> None:
    global _entry_points_read
    if _entry_points_read:
        return
    _entry_points_read = True
    try:
        from importlib.metadata import entry_points

        for ep in entry_points(group="medzero.modalities"):
            declare_plugin(ep.name, ep.value)
    except Exception as exc:  # a broken distribution must not stop the built-in modalities
        _logger.warning("could not read medzero.modalities entry points: %s", one_line(exc))


def _import_plugin(name: str) -> None:
    module = _PLUGINS.get(name)
    if module is None or name in _REGISTRY or name in _FAILED:
        return
    try:
        importlib.import_module(module)
    except ImportError as exc:  # e.g. a trimmed install without PyAV: the other modalities still work
        _FAILED[name] = f"the {name} modality ({module}) cannot be imported: {one_line(exc)}"
        _logger.info(_FAILED[name])
        return
    if name not in _REGISTRY:
        _FAILED[name] = f"importing {module} did not register the {name} modality"


def _load_all() -> None:
    with _LOCK:
        _read_entry_points()
        for name in list(_PLUGINS):
            _import_plugin(name)


def get_modality(name: str) -> Modality:
    """The registered modality ``name``; a one-line error when it is unknown or could not load."""
    with _LOCK:
        if name not in _REGISTRY:
            _read_entry_points()
            _import_plugin(name)
        if name in _REGISTRY:
            return _REGISTRY[name]
        if name in _FAILED:
            raise MedzeroError(_FAILED[name])
    known = ", ".join(modality_names()) or "none"
    raise MedzeroError(f"unknown modality {name!r}; known: {known}")


def modalities() -> list[Modality]:
    """Every modality that is registered or declared and importable, in declaration order."""
    _load_all()
    order = list(_PLUGINS) + [n for n in _REGISTRY if n not in _PLUGINS]
    return [_REGISTRY[n] for n in order if n in _REGISTRY]


def modality_names() -> list[str]:
    return [m.name for m in modalities()]


def plugin_errors() -> dict[str, str]:
    """Declared modalities whose plug-in failed to import, with the one-line reason."""
    _load_all()
    return dict(_FAILED)


def modality_of_format(fmt: str | None) -> Modality | None:
    """The modality whose loader reads container format ``fmt`` (``"wav"``, ``"dicom"``), if any."""
    if fmt is None:
        return None
    return next((m for m in modalities() if fmt in m.formats), None)
