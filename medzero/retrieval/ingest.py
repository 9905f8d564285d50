"""Sources into case rows: the case index's side of the ingest pipeline.

Each source is read into memory once (through :class:`~medzero.core.ingest.Source`, which has
already sniffed it), hashed from those bytes, checked against the cases of its space, decoded from
the same bytes by its modality's plug-in, embedded in one forward pass per modality, optionally
scored against a task, and handed to the consistency core (:class:`.spaces.SpaceSet`) as rows that
one transaction commits.
"""
from __future__ import annotations

import itertools
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable

import numpy as np

from ..core.errors import BadInputError, CaseIndexError, MedzeroError
from ..core.ingest import Pipeline, Prepared, Source
from ..core.modality import get_modality
from ..tasks.schema import Task, load_task
from ..tasks.scoring import TaskHead, build_head
from ..core.vectors import l2_normalise
from .spaces import space_key
from .store import SpaceRow

if TYPE_CHECKING:
    from .backend import CaseStore

__all__ = ["AddReport", "CaseIngest"]

_logger = logging.getLogger(__name__)


@dataclass
class AddReport:
    """What an ``add`` did: ids of new cases, paths skipped as already indexed, and per-file errors."""

    added: list[int] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)

    def record(self, rows: "list[tuple[SpaceRow, dict[str, Any]]]", ids: "list[int | None]") -> None:
        """Note what one insert did: per row its new id, or ``None`` when the store refused it as
        content another writer committed to the space meanwhile (then it is a duplicate)."""
        for (_, case), case_id in zip(rows, ids):
            if case_id is None:
                self.duplicates.append(str(case["path"]))
            else:
                self.added.append(case_id)

    def to_dict(self) -> dict[str, Any]:
        return {"added": self.added, "duplicates": self.duplicates, "errors": [{"path": p, "error": e} for p, e in self.errors]}


@dataclass
class _Case:
    source: Source
    sha256: str = ""
    prepared: Prepared | None = None
    error: str | None = None


class CaseIngest:
    """Turns batches of sources into committed cases (call with the index's write lock held).

    Args:
        spaces: the store the rows go to (:class:`~.backend.CaseStore`: local or PostgreSQL).
        encoder: ``encoder(modality)``, the index's encoder for a modality (fingerprint-checked).
        model_ref: ``model_ref(modality)``, the model reference a new space remembers.
        workers: threads that read, hash and decode.
    """

    def __init__(
        self,
        spaces: "CaseStore",
        encoder: Callable[[str], Any],
        model_ref: Callable[[str], str | None],
        *,
        workers: int = 2,
    ):
        self.spaces = spaces
        self.encoder = encoder
        self.model_ref = model_ref
        self.pipeline = Pipeline(encoder, workers=workers)
        self.workers = max(1, int(workers))
        self._heads: dict[tuple[int, str], TaskHead | None] = {}

    def add(self, sources: Iterable[Source], task: "str | os.PathLike | Task | None", *, batch_size: int, progress=None) -> AddReport:
        report = AddReport()
        task_obj = load_task(task) if task is not None else None
        sources = iter(sources)
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="medzero-index") as pool:
            while chunk := list(itertools.islice(sources, batch_size)):
                cases = list(pool.map(self._read, chunk))
                self._drop_duplicates(cases, report)
                cases = list(pool.map(self._prepare, cases))
                self._commit(cases, task_obj, report)
                if progress is not None:
                    progress(len(chunk))
        return report

    def _read(self, source: Source) -> _Case:
        """Read the source's content once and hash it (arrays are not cases: they have no file)."""
        case = _Case(source)
        if source.error is not None:
            case.error = str(source.error)
            return case
        if source.is_array:
            case.error = f"{source.name}: pass arrays as vectors with add_vectors, not as cases"
            return case
        try:
            limit = getattr(get_modality(source.modality).limits(), "max_bytes", None)
            case.source = source.read(limit)
            case.sha256 = case.source.sha256()
        except MedzeroError as exc:
            case.error = str(exc)
        return case

    def _prepare(self, case: _Case) -> _Case:
        """Decode from the bytes already read (the sniffed format is passed on: no second sniff)."""
        if case.error is None:
            case.prepared = self.pipeline.prepare(case.source)
            if case.prepared.error is not None:
                case.error = str(case.prepared.error)
        return case

    def _drop_duplicates(self, cases: list[_Case], report: AddReport) -> None:
        by_space: dict[str, list[_Case]] = {}
        for case in cases:
            if case.error is None:
                try:
                    encoder = self.encoder(case.source.modality)
                except CaseIndexError:
                    raise  # another model than the index's: the whole add is wrong, not one file
                except MedzeroError as exc:
                    case.error = str(exc)
                    continue
                by_space.setdefault(space_key(encoder.fingerprint), []).append(case)
        for key, group in by_space.items():
            known = self.spaces.known_sha(key, [c.sha256 for c in group])
            for case in group:
                if case.sha256 in known:
                    case.error = "duplicate"
                    report.duplicates.append(case.source.name)
                known.add(case.sha256)  # a second copy in the same batch is a duplicate too

    def _head(self, task: Task, modality: str) -> TaskHead | None:
        key = (id(task), modality)
        if key not in self._heads:
            if task.modality != modality:
                _logger.info("not scoring %s cases: task %s is for %s", modality, task.name, task.modality)
                self._heads[key] = None
            else:
                self._heads[key] = build_head(task, self.encoder(modality))
        return self._heads[key]

    def _commit(self, cases: list[_Case], task: Task | None, report: AddReport) -> None:
        ready = [c for c in cases if c.error is None]
        vectors = self.pipeline.embed([c.prepared for c in ready])
        rows: list[tuple[SpaceRow, dict[str, Any]]] = []
        by_modality: dict[str, list[tuple[_Case, np.ndarray]]] = {}
        for case, vector in zip(ready, vectors):
            if vector is None:
                case.error = str(case.prepared.error)
            else:
                by_modality.setdefault(case.source.modality, []).append((case, vector))
        for case in cases:
            if case.error is not None and case.error != "duplicate":
                report.errors.append((case.source.name, case.error))
        for modality, group in by_modality.items():
            encoder = self.encoder(modality)
            try:
                emb = l2_normalise(np.stack([v for _, v in group]), strict=True)
            except ValueError:
                for case, _ in group:
                    report.errors.append((case.source.name, f"{case.source.name}: the embedding is zero or not finite"))
                continue
            head = self._head(task, modality) if task is not None else None
            table = head.scores(emb) if head is not None else None
            space_row = self.spaces.row_for(modality, encoder.fingerprint, encoder.dim, self.model_ref(modality))
            for j, (case, _) in enumerate(group):
                p = case.prepared
                rows.append(
                    (
                        space_row,
                        dict(
                            path=case.source.name, sha256=case.sha256, vector=emb[j], metadata=p.metadata,
                            task=head.task.name if head is not None else None,
                            scores=head.as_dict(table[j]) if head is not None else None,
                            duration_s=p.columns.get("duration_s"), width=p.columns.get("width"), height=p.columns.get("height"),
                        ),
                    )
                )
        if rows:
            report.record(rows, self.spaces.insert(rows))


def check_source(source: Any) -> Source:
    """A source as an example query: sniffed, of a modality, not an array (one-line errors)."""
    found = Source.of(source, absolute=True)
    if found.error is not None:
        raise found.error if isinstance(found.error, MedzeroError) else BadInputError(str(found.error))
    if found.is_array:
        raise BadInputError("an example must be a file, bytes or a file object; search a vector with search_vector")
    return found
