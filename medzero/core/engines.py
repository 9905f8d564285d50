"""Engines: where classification and case indexing run, given to the library as objects.

An engine is an object with the two methods of :class:`Engine`; a caller hands one in
(``CaseIndex.add(..., engine=RayEngine(options))``, ``Classifier.classify_dataset(ds,
engine=...)``) and the index and the classifier call it without importing it, so the engines
that sit above them (``medzero.distributed``) stay above them. ``"local"`` is no engine: the
caller's own path, in this process.

Engines are also known by name, for ``engine="ray"``: the composition root
(``medzero/__init__.py``) declares ``"ray" -> "medzero.distributed:RayEngine"`` here, and the
class is imported only when the name is first used, as modality plug-ins are.
"""
from __future__ import annotations

import importlib
import threading
from typing import Any, Callable, Protocol

from .errors import BadInputError, MedzeroError, one_line

__all__ = ["Engine", "declare_engine", "engine_names", "resolve_engine"]

#: name -> "module:Class", or the class once imported; called with the engine's options
_ENGINES: dict[str, "Callable[[Any], Engine] | str"] = {}
_LOCK = threading.Lock()


class Engine(Protocol):
    """What the case index and the classifier call on an engine.

    ``add`` indexes sources into ``index`` (a :class:`~medzero.retrieval.CaseIndex`): it takes
    the index's one write lock itself (``index.writer()``) when it is ready to commit, and returns
    an :class:`~medzero.retrieval.AddReport`. ``classify_dataset`` classifies the rows of a
    dataset of files with ``classifier`` and returns a dataset of result rows.
    """

    def add(self, index: Any, sources: Any, task: Any = None, *, batch_size: int = 64, progress: Any = None) -> Any: ...

    def classify_dataset(self, classifier: Any, dataset: Any, *, batch_size: int | None = None) -> Any: ...


def declare_engine(name: str, target: str) -> None:
    """Say that engine ``name`` is the class ``"module:Class"`` (imported when the name is first used)."""
    with _LOCK:
        _ENGINES.setdefault(name, target)


def engine_names() -> list[str]:
    """``local`` and every declared engine, in declaration order."""
    return ["local", *_ENGINES]


def resolve_engine(engine: "str | Engine | None", options: Any = None) -> "Engine | None":
    """The engine ``engine`` names or is; ``None`` for the local engine.

    A name is built with ``options`` (the ray engine's :class:`~medzero.distributed.RayOptions`);
    an object with an engine's methods is used as it is. Anything else is a one-line
    :class:`BadInputError` listing the names.
    """
    if engine is None or engine == "local":
        return None
    if not isinstance(engine, str):
        if hasattr(engine, "add") or hasattr(engine, "classify_dataset"):
            return engine
        raise BadInputError(f"engine must be {_choices()}, not {engine!r}")
    with _LOCK:
        factory = _ENGINES.get(engine)
        if factory is None:
            raise BadInputError(f"engine must be {_choices()}, not {engine!r}")
        if isinstance(factory, str):
            module, _, name = factory.partition(":")
            try:
                factory = _ENGINES[engine] = getattr(importlib.import_module(module), name)
            except ImportError as exc:
                raise MedzeroError(f"the {engine} engine ({module}) cannot be imported: {one_line(exc)}") from None
    return factory(options)


def _choices() -> str:
    names = engine_names()
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
