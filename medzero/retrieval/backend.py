"""The seam between :class:`~medzero.retrieval.CaseIndex` and where its cases live.

Two stores implement :class:`CaseStore`: :class:`~medzero.retrieval.local.LocalStore` (the
embedded default: FAISS files beside a SQLite database in a folder, one writer at a time) and
:class:`~medzero.retrieval.pg.PgStore` (PostgreSQL with pgvector: many writers, one database).
The front speaks only this protocol, so every public method behaves the same over both, and
:class:`~medzero.retrieval.ingest.CaseIngest` and :class:`~medzero.retrieval.IndexWriter` commit
through it too. :func:`open_store` picks the store from what the caller named.
"""
from __future__ import annotations

import os
from contextlib import AbstractContextManager
from typing import Any, Iterator, Mapping, Protocol, Sequence

import numpy as np

from ..core.results import Hit
from .fields import COPY_FIELDS
from .store import SpaceRow

__all__ = ["CaseStore", "is_url", "open_store", "COPY_FIELDS"]



class CaseStore(Protocol):
    """What the front needs of a store. Writing methods run inside :meth:`writing`."""

    #: How the store names itself in messages, logs and ``stats()["path"]`` (credentials redacted).
    name: str
    readonly: bool
    approx_threshold: int

    def writing(self) -> AbstractContextManager[None]:
        """Hold whatever one write operation needs (the local store's write lock; nothing for a
        database whose transactions and constraints keep many writers apart)."""

    def refresh(self) -> None:
        """Follow what other processes committed since the last look."""

    def space_rows(self) -> list[SpaceRow]: ...

    def for_modality(self, modality: str) -> SpaceRow | None: ...

    def check_fingerprint(self, modality: str, fingerprint: str) -> None: ...

    def row_for(self, modality: str, fingerprint: str, dim: int, model_ref: str | None) -> SpaceRow: ...

    def known_sha(self, key: str, shas: Sequence[str]) -> set[str]: ...

    def shas(self, key: str) -> Iterator[str]: ...

    def insert(self, rows: Sequence[tuple[SpaceRow, dict[str, Any]]], *, vectors: np.ndarray | None = None) -> list[int | None]:
        """One transaction; per row its new id, or ``None`` where another writer committed the
        same content to the space meanwhile (a duplicate the database refused)."""

    def resolve(self, ids_or_paths: Sequence[Any]) -> list[tuple[int, str]]: ...

    def delete(self, found: Sequence[tuple[int, str]]) -> None: ...

    def search(self, row: SpaceRow, vector: np.ndarray, k: int, conditions: list, exact: bool) -> list[Hit]: ...

    def count(self) -> int: ...

    def stats(self) -> dict[str, Any]: ...

    def save(self, force: bool = False, *, tail_ok: bool = False) -> None: ...

    def read_cases(self, key: str, after: int, limit: int) -> tuple[np.ndarray, list[dict[str, Any]], np.ndarray]:
        """Up to ``limit`` cases of space ``key`` with id above ``after``, in id order: ids, their
        :data:`COPY_FIELDS` and their vectors (what a copy to another store needs)."""

    def close(self) -> None: ...


def is_url(target: Any) -> bool:
    """Whether ``target`` names a PostgreSQL database (``postgresql://`` or ``postgres://``)."""
    return isinstance(target, str) and target.strip().lower().startswith(("postgresql://", "postgres://"))


def open_store(target: "str | os.PathLike", options: Mapping[str, Any]) -> CaseStore:
    """The store ``target`` names: a PostgreSQL URL (psycopg imported only then), else an index folder."""
    if is_url(target):
        from .pg import PgStore

        return PgStore(str(target).strip(), **options)
    from .local import LocalStore

    return LocalStore(target, **options)
