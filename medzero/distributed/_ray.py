"""The ray engine as an object: what the case index and the classifier are given, and call.

``CaseIndex.add(..., engine=RayEngine(options))`` and ``Classifier.classify_dataset(ds,
engine=RayEngine(options))`` run here without importing this package (see
:mod:`medzero.core.engines`); ``engine="ray"`` reaches this class through the name the
composition root declares.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable

from ._engine import RayOptions, classify_dataset
from ._index import RayAddReport, add_with_ray

if TYPE_CHECKING:  # pragma: no cover
    import os

    import ray.data

    from ..classifier import Classifier
    from ..retrieval import CaseIndex
    from ..tasks.schema import Task

__all__ = ["RayEngine"]


@dataclass(frozen=True)
class RayEngine:
    """Classification and case indexing on a Ray cluster (``options``: where and how wide; default
    :class:`RayOptions`). Nothing imports Ray until a method runs; without the ray extra each
    method raises the one-line :class:`~medzero.MedzeroError` naming it."""

    options: RayOptions | None = None

    def add(
        self,
        index: "CaseIndex",
        sources: "Iterable[Any] | Any",
        task: "str | os.PathLike | Task | None" = None,
        *,
        batch_size: int = 64,
        progress: Callable[[int], None] | None = None,
    ) -> RayAddReport:
        """:func:`add_with_ray`: read, decode and embed on the cluster; into an index folder this
        process commits through ``index.writer()``, holding the index's one write lock for the run;
        into a PostgreSQL index the actors insert their batches themselves."""
        return add_with_ray(index, sources, task, batch_size=batch_size, options=self.options, progress=progress)

    def classify_dataset(self, classifier: "Classifier", dataset: "ray.data.Dataset", *, batch_size: int | None = None) -> "ray.data.Dataset":
        """:func:`classify_dataset`: a lazy Dataset of result rows, one per file of ``dataset``."""
        return classify_dataset(classifier, dataset, batch_size=batch_size, options=self.options)
