"""Copy a case index from one store to another: folder to PostgreSQL, back, or folder to folder.

Vectors and rows go as they are: nothing is decoded or embedded again, each space keeps its model
fingerprint, model reference and creation time, and each case its path, sha256, metadata, task
scores, columns and ``added_at``. Every batch is one transaction of the destination. Cases the
destination already holds (same content in the same space) are skipped as duplicates, so a copy
that was stopped, or killed, is finished by running it again. The copies get the destination's
own ids (ids are never reused within a store, so they cannot be kept across stores).

The public entry is :func:`medzero.retrieval.copy_index` (and ``CaseIndex.copy_to``), which opens
the two indexes and calls :func:`copy_cases` here with their stores.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Callable

from .ingest import AddReport

if TYPE_CHECKING:
    from .backend import CaseStore

__all__ = ["copy_cases"]

_logger = logging.getLogger(__name__)


def copy_cases(reader: "CaseStore", writer: "CaseStore", *, batch_size: int, progress: Callable[[int], None] | None = None) -> AddReport:
    """Copy every case of the store ``reader`` into ``writer`` (call inside ``writer.writing()``).

    Every space's model is checked against ``writer`` before anything is written."""
    report = AddReport()
    reader.refresh()
    planned = [(row, _target_row(writer, row)) for row in reader.space_rows()]
    for row, to in planned:
        after = -1
        while True:
            ids, cases, vectors = reader.read_cases(row.space, after, batch_size)
            if not len(ids):
                break
            after = int(ids[-1])
            known = writer.known_sha(to.space, [c["sha256"] for c in cases])
            keep = [j for j, c in enumerate(cases) if c["sha256"] not in known]
            report.duplicates.extend(str(c["path"]) for c in cases if c["sha256"] in known)
            if keep:
                batch = [(to, cases[j]) for j in keep]
                report.record(batch, writer.insert(batch, vectors=vectors if len(keep) == len(cases) else vectors[keep]))
            if progress is not None:
                progress(len(ids))
        _logger.info("copied the %s space (%s) of %s to %s", row.modality, row.fingerprint, reader.name, writer.name)
    writer.save(force=True, tail_ok=True)
    return report


def _target_row(writer: "CaseStore", row):
    """The destination's space for ``row``'s vectors (checked like an add); a new one keeps the
    source's creation time."""
    existing = writer.for_modality(row.modality)
    to = writer.row_for(row.modality, row.fingerprint, row.dim, row.model_ref)
    return to if existing is not None else dataclasses.replace(to, created_at=row.created_at)
