"""Copy a case index from one store to another: folder to PostgreSQL, back, or folder to folder.

Vectors and rows go as they are: nothing is decoded or embedded again, each space keeps its model
fingerprint, model reference and creation time, and each case its path, sha256, metadata, task
scores, columns and ``added_at``. Every batch is one transaction of the destination. Cases the
destination already holds (same content in the same space) are skipped as duplicates, so a copy
that was stopped, or killed, is finished by running it again. The copies get the destination's
own ids (ids are never reused within a store, so they cannot be kept across stores).

    from medzero.retrieval import copy_index
    report = copy_index("cases/", "postgresql://medzero@db.example/cases")
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import TYPE_CHECKING, Callable

from .ingest import AddReport

if TYPE_CHECKING:
    from .index import CaseIndex

__all__ = ["copy_index"]

_logger = logging.getLogger(__name__)


def copy_index(
    src: "str | os.PathLike | CaseIndex",
    dst: "str | os.PathLike | CaseIndex",
    *,
    batch_size: int = 2000,
    progress: Callable[[int], None] | None = None,
) -> AddReport:
    """Copy every case of ``src`` into ``dst`` (folders, PostgreSQL URLs or open indexes).

    Returns an :class:`AddReport`: ``added`` holds the new ids in ``dst``, ``duplicates`` the
    paths of cases ``dst`` had already. ``progress(n)`` is called with the cases read per batch.
    A space of ``src`` whose modality ``dst`` holds from another model raises the one-line
    :class:`~medzero.core.errors.CaseIndexError` an add would, before anything is written to it.
    """
    from .index import CaseIndex

    source = src if isinstance(src, CaseIndex) else CaseIndex(src, readonly=True)
    try:
        target = dst if isinstance(dst, CaseIndex) else CaseIndex(dst)
        try:
            return _copy(source, target, max(1, int(batch_size)), progress)
        finally:
            if target is not dst:
                target.close()
    finally:
        if source is not src:
            source.close()


def _copy(source: "CaseIndex", target: "CaseIndex", batch_size: int, progress) -> AddReport:
    report = AddReport()
    reader, writer = source._db(), target._db()
    source._refresh()
    with target._writing():
        rows = reader.space_rows()
        planned = [(row, _target_row(writer, row)) for row in rows]  # every model conflict before any write
        for row, to in planned:
            after = -1
            while True:
                ids, cases, vectors = reader.read_cases(row.space, after, batch_size)
                if not len(ids):
                    break
                after = int(ids[-1])
                known = writer.known_sha(to.space, [c["sha256"] for c in cases])
                keep = [j for j, c in enumerate(cases) if c["sha256"] not in known]
                report.duplicates.extend(str(cases[j]["path"]) for j in range(len(cases)) if cases[j]["sha256"] in known)
                if keep:
                    batch = [(to, cases[j]) for j in keep]
                    report.record(batch, writer.insert(batch, vectors=vectors if len(keep) == len(cases) else vectors[keep]))
                if progress is not None:
                    progress(len(ids))
            _logger.info("copied the %s space (%s) of %s to %s", row.modality, row.fingerprint, source.path, target.path)
        writer.save(force=True, tail_ok=True)
    return report


def _target_row(writer, row):
    """The destination's space for ``row``'s vectors (checked like an add); a new one keeps the
    source's creation time."""
    existing = writer.for_modality(row.modality)
    to = writer.row_for(row.modality, row.fingerprint, row.dim, row.model_ref)
    return to if existing is not None else dataclasses.replace(to, created_at=row.created_at)
