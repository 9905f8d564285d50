"""The embedded store behind :class:`~medzero.retrieval.CaseIndex`: an index folder.

FAISS files kept in step with a SQLite database and its vector files (:mod:`.spaces`,
:mod:`.store`), one writer at a time (:mod:`.locking`). This class only adapts those parts to the
:class:`~.backend.CaseStore` protocol; what they do is documented where they are.
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from ..core.errors import CaseIndexError
from ..core.results import Hit
from .fields import COPY_FIELDS
from .locking import WriteLock
from .spaces import SpaceSet
from .store import SpaceRow, Store

__all__ = ["LocalStore", "DB_NAME"]

DB_NAME = "cases.sqlite"


class LocalStore:
    """An index folder: ``cases.sqlite``, vector files and FAISS files (see :mod:`medzero.retrieval.index`)."""

    def __init__(self, path: "str | os.PathLike", *, readonly: bool = False, approx_threshold: int = 100_000, checkpoint_s: float = 60.0):
        self.path = Path(path)
        self.name = str(self.path)
        self.readonly = readonly
        self.store: Store | None = None
        if readonly and not (self.path / DB_NAME).exists():
            raise CaseIndexError(f"{self.path} is not a case index (no {DB_NAME}); add cases to it first")
        if not readonly:
            try:
                self.path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise CaseIndexError(f"cannot create the index directory {self.path}: {exc.strerror}") from None
        self.lock = WriteLock(self.path)
        self.store = Store(str(self.path / DB_NAME), readonly=readonly)
        self.spaces = SpaceSet(self.path, self.store, self.lock, readonly=readonly, approx_threshold=approx_threshold, checkpoint_s=checkpoint_s)
        self.spaces.sync(opening=True)

    @property
    def approx_threshold(self) -> int:
        return self.spaces.approx_threshold

    def db(self) -> Store:
        if self.store is None:
            raise CaseIndexError(f"index {self.path} is closed")
        return self.store

    # -- lifetime ----------------------------------------------------------------------------------
    def close(self) -> None:
        if self.store is None:
            return
        if self.spaces.dirty and not self.readonly:
            try:
                with self.writing():  # catches up with any other writer first, so we save committed state
                    self.spaces.save(force=True, tail_ok=True)
            except CaseIndexError:
                pass  # another writer holds the lock and will save; the database has everything
        self.store.close()
        self.store = None
        self.lock.release()

    def abandon(self) -> None:
        """Best effort from ``__del__``: close the database and drop the lock, saving nothing."""
        if self.store is not None:
            self.store.close()
        self.lock.release()

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Hold the write lock for one operation; the outermost hold first clears temporaries a
        killed writer left and follows other writers' commits."""
        if self.readonly:
            raise CaseIndexError(f"index {self.path} is open read-only")
        with self.lock.hold() as outermost:
            if outermost:
                self.spaces.remove_stale_temporaries()
                self.refresh()
            yield

    def refresh(self) -> None:
        self.db()
        self.spaces.refresh()

    # -- spaces ------------------------------------------------------------------------------------
    def space_rows(self) -> list[SpaceRow]:
        return [s.row for s in self.spaces.spaces.values()]

    def for_modality(self, modality: str) -> SpaceRow | None:
        space = self.spaces.for_modality(modality)
        return None if space is None else space.row

    def check_fingerprint(self, modality: str, fingerprint: str) -> None:
        self.spaces.check_fingerprint(modality, fingerprint)

    def row_for(self, modality: str, fingerprint: str, dim: int, model_ref: str | None) -> SpaceRow:
        return self.spaces.row_for(modality, fingerprint, dim, model_ref)

    # -- cases -------------------------------------------------------------------------------------
    def known_sha(self, key: str, shas: Sequence[str]) -> set[str]:
        return self.spaces.known_sha(key, shas)

    def shas(self, key: str) -> Iterator[str]:
        return self.db().shas(key)

    def insert(self, rows: Sequence[tuple[SpaceRow, dict[str, Any]]], *, vectors: np.ndarray | None = None) -> list[int | None]:
        return list(self.spaces.insert(rows, vectors=vectors))

    def resolve(self, ids_or_paths: Sequence[Any]) -> list[tuple[int, str]]:
        return self.db().resolve(ids_or_paths)

    def delete(self, found: Sequence[tuple[int, str]]) -> None:
        self.spaces.delete(found)

    def save(self, force: bool = False, *, tail_ok: bool = False) -> None:
        self.spaces.save(force, tail_ok=tail_ok)

    def count(self) -> int:
        return self.db().count()

    def search(self, row: SpaceRow, vector: np.ndarray, k: int, conditions: list, exact: bool) -> list[Hit]:
        space = self.spaces.spaces.get(row.space)
        return [] if space is None else self.spaces.search(space, vector, k, conditions, exact)

    def read_cases(self, key: str, after: int, limit: int) -> tuple[np.ndarray, list[dict[str, Any]], np.ndarray]:
        space = self.spaces.spaces.get(key)
        if space is None:
            return np.zeros(0, np.int64), [], np.zeros((0, 0), np.float32)
        db = self.db()
        found = db.db.execute("SELECT id FROM cases WHERE space = ? AND id > ? ORDER BY id LIMIT ?", (key, int(after), int(limit))).fetchall()
        ids = np.array([r[0] for r in found], dtype=np.int64)
        if not len(ids):
            return ids, [], np.zeros((0, space.row.dim), np.float32)
        vectors = np.concatenate([v for _, v in db.vectors(key, space.row.dim, ids)])
        marks = ",".join("?" for _ in ids)
        rows = {
            r[0]: r[1:]
            for r in db.db.execute(f"SELECT id, {', '.join(COPY_FIELDS)} FROM cases WHERE id IN ({marks})", [int(i) for i in ids])
        }
        cases = []
        for i in ids.tolist():
            case = dict(zip(COPY_FIELDS, rows[i]))
            case["metadata"] = json.loads(case["metadata"] or "{}")
            case["scores"] = json.loads(case["scores"]) if case["scores"] else None
            cases.append(case)
        return ids, cases, vectors

    def stats(self) -> dict[str, Any]:
        self.refresh()
        spaces = self.spaces.stats()
        db_bytes = sum(p.stat().st_size for p in self.path.glob(DB_NAME + "*") if p.is_file())
        return {
            "path": str(self.path),
            "store": "local",
            "cases": self.db().count(),
            "spaces": spaces,
            "database_bytes": db_bytes,
            "faiss_bytes": sum(s["file_bytes"] for s in spaces),
            "approx_threshold": self.approx_threshold,
        }
