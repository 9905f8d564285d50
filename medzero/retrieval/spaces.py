"""The consistency core of a case index: FAISS files kept in step with the stored cases.

The database and its vector files (:mod:`.store`) are the source of truth; each embedding space's
FAISS file is a cache of them, replaced atomically after the transaction it reflects commits
(:func:`faiss_io.save_atomic`), checked against the database whenever it is opened and brought
back in step from the stored vectors when it is not. This module knows nothing of models or
files: it takes vectors and rows, so it is tested alone with generated vectors.

- **Spaces.** One per modality: the fingerprint of the encoder that made its vectors.
- **Index type.** Exact (``IndexFlatIP``) up to ``approx_threshold`` vectors in a space; above it
  a 4-bit product-quantised fast scan re-ranked exactly (see :mod:`.faiss_io`).
- **Deferred saves.** A space of :data:`SMALL_SPACE` vectors or more does not rewrite its file
  after an append while the cases added since stay under :data:`CHECKPOINT_SHARE` of it: ids only
  grow, so the newer cases are exactly those above the file's last id, and opening reads them
  from the vector file.
- **Tails.** Cases appended to an approximate space go to small indexes of the same trained
  quantiser (:attr:`Space.tails`), searched with the one read from the FAISS file and merged into
  it when the file is next written: appending to the large one would reallocate and copy every
  vector it holds (2 GB for a million 512-d vectors), which cost more than the add.
- **Encoding beside the transaction.** Product-quantising a batch is single-threaded in FAISS and
  was half of an incremental add. A batch of :data:`PARALLEL_ENCODE` vectors or more for an
  approximate space is encoded in a thread, into a tail part of its own (ids are predicted from
  the table's sequence and checked), while the vector files are written and fsynced and the rows
  inserted; the part joins the space only once the transaction commits, and is dropped if it
  rolls back. Smaller batches are encoded after the commit, into the last part.
- **Duplicates** are found in memory (:meth:`SpaceSet.known_sha`): a sorted array of the 64-bit sha
  keys of every row of a space's vector file (:class:`KnownShas`), read from its idx file on the
  first check in a process (16 bytes a case: ~10 ms for a million) and followed by the rows any
  writer appended since; a key match is confirmed in the database by case id, so removed cases
  are not duplicates. A database of the earlier format is migrated first (:meth:`SpaceSet.upgrade`).
"""
from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..core.errors import CaseIndexError
from ..core.results import Hit
from . import faiss_io
from .fields import check_space
from .locking import WriteLock
from .store import SpaceRow, Store, sha_keys, utc_now

__all__ = ["Space", "SpaceSet", "KnownShas", "space_key", "SMALL_SPACE", "CHECKPOINT_SHARE", "PARALLEL_ENCODE", "MAX_TAILS"]

_logger = logging.getLogger(__name__)

#: Spaces with fewer vectors than this are saved after every add (their files are cheap to write).
SMALL_SPACE = 50_000
#: A larger space defers rewriting its FAISS file until the cases added since reach this share of it.
CHECKPOINT_SHARE = 0.25
#: Appends of at least this many vectors to an approximate space are encoded in a thread while
#: their transaction runs (below it, a thread costs more than it hides).
PARALLEL_ENCODE = 4096
#: At most this many tail parts per space (each searched separately); past it, appends go into the last.
MAX_TAILS = 16


def space_key(fingerprint: str) -> str:
    """The on-disk name of a space: the first 12 hex digits of sha1(fingerprint)."""
    return hashlib.sha1(fingerprint.encode()).hexdigest()[:12]


@dataclass
class Space:
    row: SpaceRow
    index: Any  # faiss.IndexIDMap2
    #: Cases appended to an approximate space since its FAISS file was read or written, kept in
    #: indexes of the same trained quantiser (:func:`faiss_io.empty_like`) and searched with
    #: ``index``: appending to the large index read from the file would reallocate and copy every
    #: vector it stores. A large batch is one part (encoded beside its transaction); small ones
    #: go into the last part. Merged into ``index`` when the file is next written.
    tails: list = field(default_factory=list)
    tombstones: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    dirty: bool = False
    #: Set by anything but an append (remove, repair, conversion): the next save may not be deferred.
    must_save: bool = False
    #: Vectors in the FAISS file as last read or written.
    saved_ntotal: int = 0
    saved_at: float = field(default_factory=time.monotonic)

    @property
    def parts(self) -> list[Any]:
        """The indexes to search: ``index``, and the tail parts that hold anything."""
        return [self.index, *(tail for tail in self.tails if tail.ntotal)]

    @property
    def ntotal(self) -> int:
        return sum(part.ntotal for part in self.parts)

    def append(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        if faiss_io.is_approximate(self.index):
            if not self.tails:
                self.tails.append(faiss_io.empty_like(self.index))
            faiss_io.add(self.tails[-1], vectors, ids)
        else:
            faiss_io.add(self.index, vectors, ids)

    def can_encode_apart(self, count: int) -> bool:
        """Whether ``count`` new vectors may be encoded beside their transaction, as a part of their own."""
        return count >= PARALLEL_ENCODE and len(self.tails) < MAX_TAILS and faiss_io.is_approximate(self.index)

    def merge_tail(self) -> None:
        for tail in self.tails:
            faiss_io.add_from(self.index, tail)
        self.tails = []


class Encoding:
    """Vectors of an approximate space encoded in a thread, into an index of the space's quantiser.

    FAISS releases the GIL while it encodes, so this runs on another core while the caller writes
    and fsyncs the vector files and inserts the rows. ``vectors`` must not change until
    :meth:`result` (or :meth:`abandon`) returns.
    """

    def __init__(self, space: Space, vectors: np.ndarray, ids: np.ndarray):
        self.ids = ids
        self.part = faiss_io.empty_like(space.index)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(vectors,), name="medzero-encode", daemon=True)
        self._thread.start()

    def _run(self, vectors: np.ndarray) -> None:
        try:
            faiss_io.add(self.part, vectors, self.ids)
        except BaseException as exc:  # noqa: BLE001 - handed to the thread that waits for it
            self._error = exc

    def result(self) -> Any:
        """The encoded part; raises what the encoding raised."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self.part

    def abandon(self) -> None:
        """Wait for the thread and drop its work (the transaction rolled back)."""
        self._thread.join()
        self.part = None


class KnownShas:
    """The sha keys of rows ``0..rows`` of one space's vector file, sorted, with their case ids.

    Kept as a few sorted parts (the rows loaded first, then those appended since) that are merged
    when they grow numerous, so following an add costs a sort of the new rows only.
    """

    MAX_PARTS = 8

    def __init__(self) -> None:
        self.rows = 0
        self.parts: list[tuple[np.ndarray, np.ndarray]] = []

    def extend(self, idx: np.ndarray) -> None:
        """Follow ``idx`` (rows of the idx file, ``id`` and ``key``) appended after ``rows``."""
        order = np.argsort(idx["key"], kind="stable")
        self.parts.append((idx["key"][order], idx["id"][order]))
        self.rows += len(idx)
        if len(self.parts) > self.MAX_PARTS:
            small = self.parts[1:] if sum(len(k) for k, _ in self.parts[1:]) < len(self.parts[0][0]) else self.parts
            keys, ids = np.concatenate([k for k, _ in small]), np.concatenate([i for _, i in small])
            order = np.argsort(keys, kind="stable")
            self.parts = self.parts[: len(self.parts) - len(small)] + [(keys[order], ids[order])]

    def candidates(self, keys: np.ndarray) -> np.ndarray:
        """Ids of the rows whose key is among ``keys`` (removed cases and key collisions included)."""
        found = []
        for part_keys, part_ids in self.parts:
            lo, hi = np.searchsorted(part_keys, keys, "left"), np.searchsorted(part_keys, keys, "right")
            hit = hi > lo
            found += [part_ids[a:b] for a, b in zip(lo[hit], hi[hit])]
        return np.unique(np.concatenate(found)) if found else np.zeros(0, dtype=np.int64)


class SpaceSet:
    """The spaces of one index directory, in step with its database.

    Writing methods (:meth:`known_sha`, :meth:`insert`, :meth:`delete`, :meth:`save`) must run while
    ``lock`` is held (the front, :class:`~medzero.retrieval.CaseIndex`, takes it per operation).
    """

    def __init__(self, directory: Path, store: Store, lock: WriteLock, *, readonly: bool, approx_threshold: int, checkpoint_s: float):
        self.directory = directory
        self.store = store
        self.lock = lock
        self.readonly = readonly
        self.approx_threshold = int(approx_threshold)
        self.checkpoint_s = float(checkpoint_s)
        self.spaces: dict[str, Space] = {}
        self._known: dict[str, KnownShas] = {}
        #: sha key of each sha256 last looked up by known_sha (keys are a function of the sha), for insert.
        self._keys: dict[str, int] = {}
        self._version = -1

    def faiss_path(self, key: str) -> Path:
        return self.directory / f"space-{key}.faiss"

    def remove_stale_temporaries(self) -> None:
        """Temporary FAISS files left by a writer killed mid-save (call with the lock held)."""
        for stale in self.directory.glob("space-*.faiss.tmp*"):
            try:
                stale.unlink()
            except OSError:
                pass

    # -- following the database --------------------------------------------------------------
    def refresh(self) -> None:
        """Follow commits made by other connections since we last looked."""
        if self.store.data_version() != self._version:
            self.sync(opening=False)

    def sync(self, opening: bool) -> None:
        """Load every space the database lists and make its FAISS index hold exactly its vectors."""
        self._version = self.store.data_version()
        repaired = []
        for key, row in self.store.spaces().items():
            space = self.spaces.get(key)
            if space is None:
                index = faiss_io.load(self.faiss_path(key))
                space = Space(row, index, saved_ntotal=index.ntotal if index is not None else 0)
                self.spaces[key] = space
            note = self._catch_up(space)
            if note:
                repaired.append((space, note))
        if not repaired:
            return
        expected = not opening or self.lock.other_writer_active()
        for space, note in repaired:
            if expected:
                _logger.debug("%s space of %s caught up with the database: %s", space.row.modality, self.directory, note)
            else:
                _logger.warning(
                    "index %s: the FAISS file of the %s space (%s) did not match the database (%s); rebuilt it from the stored vectors",
                    self.directory, space.row.modality, space.row.fingerprint, note,
                )
        if opening and not expected and not self.readonly:
            try:
                with self.lock.hold():
                    self.save(force=True)
            except CaseIndexError:
                pass  # another writer started meanwhile; our in-memory copy is still right

    def _catch_up(self, space: Space) -> str | None:
        """Make ``space.index`` hold exactly the database's vectors; a description of what was wrong, or None."""
        row = space.row
        db_ids = self.store.ids(row.space)
        index = space.index
        if index is None or index.d != row.dim:
            space.index, space.tails = self._rebuild(row, db_ids), []
            space.tombstones = np.zeros(0, dtype=np.int64)
            space.dirty = space.must_save = True
            return "FAISS file missing or unreadable" if index is None else f"dimension {index.d} instead of {row.dim}"
        f_ids = np.concatenate([faiss_io.ids_of(part) for part in space.parts])
        unique = np.unique(f_ids)
        if len(unique) != len(f_ids):
            space.index, space.tails = self._rebuild(row, db_ids), []
            space.tombstones = np.zeros(0, dtype=np.int64)
            space.dirty = space.must_save = True
            return "repeated ids"
        missing = np.setdiff1d(db_ids, unique, assume_unique=True)
        extra = np.setdiff1d(unique, db_ids, assume_unique=True)
        new_extra = np.setdiff1d(extra, space.tombstones, assume_unique=True)
        space.tombstones = np.zeros(0, dtype=np.int64)
        note = []
        if len(extra):
            if faiss_io.remove(index, extra):
                note.append(f"{len(extra)} removed cases still indexed")
            elif len(extra) > faiss_io.TOMBSTONE_REBUILD * max(1, space.ntotal):
                space.merge_tail()
                space.index = faiss_io.copy_as(space.index, True, extra)
                note.append(f"{len(extra)} removed cases still indexed")
            else:
                # The approximate index cannot delete: removed cases stay, excluded from every search.
                space.tombstones = extra
                if len(new_extra):
                    _logger.debug("%d removed cases kept as tombstones", len(new_extra))
            if note:
                space.dirty = True
        if note:
            space.must_save = True
        if len(missing):
            tail = bool(len(unique)) and missing[0] > unique[-1]
            chunks = self.store.vectors(row.space, row.dim, after=unique[-1]) if tail else self.store.vectors(row.space, row.dim, missing)
            for ids, vectors in chunks:
                if tail:
                    space.append(vectors, ids)
                else:
                    faiss_io.add(space.index, vectors, ids)
            space.dirty = True
            if tail:
                # Cases added after the file was last written: adds defer rewriting a large FAISS
                # file (see save), so a tail of newer cases is read from the vector file by design.
                _logger.debug("%s space: %d newer cases read from the vector file", row.modality, len(missing))
            else:
                space.must_save = True
                note.append(f"{len(missing)} cases missing from the FAISS file")
        self._maybe_convert(space)
        return "; ".join(note) or None

    def _rebuild(self, row: SpaceRow, ids: np.ndarray | None = None):
        """A new index of every stored vector of the space (``ids``: its case ids, if already read).

        An approximate one first trains its quantiser on a fixed-seed sample of the vectors (the
        same rows :func:`faiss_io.training_sample` picks), then each vector is read from the
        memory-mapped vector file and encoded once.
        """
        ids = self.store.ids(row.space) if ids is None else ids
        if len(ids) >= self.approx_threshold:
            sample = ids[faiss_io.sample_rows(len(ids))]
            train = np.concatenate([v for _, v in self.store.vectors(row.space, row.dim, sample)])
            index = faiss_io.new_index(row.dim, approximate=True, train=train)
        else:
            index = faiss_io.new_index(row.dim, approximate=False)
        for chunk_ids, vectors in self.store.vectors(row.space, row.dim):
            faiss_io.add(index, vectors, chunk_ids)
        return index

    def _maybe_convert(self, space: Space) -> None:
        if not faiss_io.is_approximate(space.index) and space.index.ntotal >= self.approx_threshold:
            _logger.info("%s space of %s has %d vectors; switching to the approximate index", space.row.modality, self.directory, space.index.ntotal)
            space.index = faiss_io.copy_as(space.index, True)
            space.dirty = space.must_save = True

    def save(self, force: bool = False, *, tail_ok: bool = False) -> None:
        """Write dirty FAISS files (only while holding the lock, and only for committed state).

        With ``tail_ok``, a space that has only been appended to keeps its file as it is while the
        new cases are at most :data:`CHECKPOINT_SHARE` of what the file holds: rewriting a large
        file for a small add would cost more than the add, and the next open reads the newer
        cases from the database (ids only grow, so they are exactly those above the file's last).
        """
        now = time.monotonic()
        for key, space in self.spaces.items():
            if not space.dirty or not (force or now - space.saved_at >= self.checkpoint_s):
                continue
            tail = space.ntotal - space.saved_ntotal
            if tail_ok and not space.must_save and space.saved_ntotal >= SMALL_SPACE and tail <= CHECKPOINT_SHARE * space.saved_ntotal:
                continue
            space.merge_tail()
            faiss_io.save_atomic(space.index, self.faiss_path(key))
            space.dirty, space.must_save = False, False
            space.saved_ntotal, space.saved_at = space.index.ntotal, time.monotonic()

    @property
    def dirty(self) -> bool:
        return any(s.dirty for s in self.spaces.values())

    # -- spaces and models -------------------------------------------------------------------
    def for_modality(self, modality: str) -> Space | None:
        return next((s for s in self.spaces.values() if s.row.modality == modality), None)

    def check_fingerprint(self, modality: str, fingerprint: str) -> None:
        """A one-line error when ``modality``'s space holds another model's vectors."""
        space = self.for_modality(modality)
        check_space(str(self.directory), space and space.row, modality, fingerprint)

    def row_for(self, modality: str, fingerprint: str, dim: int, model_ref: str | None) -> SpaceRow:
        """The space new vectors of ``modality`` go to (an existing one must match model and dimension)."""
        space = self.for_modality(modality)
        if space is not None:
            check_space(str(self.directory), space.row, modality, fingerprint, dim)
            return space.row
        return SpaceRow(space_key(fingerprint), fingerprint, modality, int(dim), model_ref, utc_now())

    # -- writing -----------------------------------------------------------------------------
    def upgrade(self) -> None:
        """Migrate a database of the earlier format to the vector files (once; lock held)."""
        if self.store.legacy:
            _logger.info("index %s: moving the stored vectors from the database into vector files (once)", self.directory)
            self.store.migrate()

    def known_sha(self, key: str, shas: Sequence[str]) -> set[str]:
        """Those of ``shas`` already indexed in the space ``key`` (lock held).

        Looked up in memory in :class:`KnownShas`, which reads the idx file's rows up to the
        committed count: all of them on the first check in a process, then only the rows appended
        since (by this or any other writer). Matches are confirmed in the database by case id.
        """
        self.upgrade()
        if not len(shas):
            return set()
        rows = self.store.vector_rows(key)
        known = self._known.get(key)
        if known is None or known.rows > rows:
            known = self._known[key] = KnownShas()
        if known.rows < rows:
            known.extend(self.store.idx_rows(key, known.rows, rows))
        keys = sha_keys(shas)
        self._keys = dict(zip(shas, keys.tolist()))
        ids = known.candidates(keys)
        return self.store.confirm_sha(key, ids, shas) if len(ids) else set()

    def insert(self, rows: Sequence[tuple[SpaceRow, dict[str, Any]]], *, vectors: np.ndarray | None = None) -> list[int]:
        """Insert case rows in one transaction (vector files first, see :meth:`Store.insert_cases`);
        after it commits, add their vectors to the FAISS indexes. The vectors are each case's
        ``"vector"``, or the rows of ``vectors`` in the order of ``rows``."""
        self.upgrade()
        store = self.store
        by_space: dict[str, tuple[SpaceRow, list[int]]] = {}
        for j, (row, _) in enumerate(rows):
            by_space.setdefault(row.space, (row, []))[1].append(j)
        added: list[tuple[SpaceRow, list[int], np.ndarray, Encoding | None]] = []
        store.begin()
        try:
            next_id = store.next_id()
            for row, at in by_space.values():
                if row.space not in self.spaces:
                    store.insert_space(row)
                cases = [rows[j][1] for j in at]
                if vectors is None:
                    part = np.stack([c["vector"] for c in cases])
                else:
                    part = vectors if len(at) == len(rows) else vectors[at]
                part = np.ascontiguousarray(part, dtype=np.float32)
                keys = [self._keys.get(c["sha256"]) for c in cases]
                keys = None if None in keys else np.array(keys, dtype=np.uint64)
                space = self.spaces.get(row.space)
                encoding = None
                if space is not None and space.can_encode_apart(len(at)):
                    encoding = Encoding(space, part, np.arange(next_id, next_id + len(at), dtype=np.int64))
                added.append((row, [], part, encoding))
                ids = store.insert_cases(row, cases, part, keys=keys)
                added[-1] = (row, ids, part, encoding)
                if encoding is not None and (ids[0], ids[-1]) != (next_id, next_id + len(at) - 1):
                    raise RuntimeError(f"case ids {ids[0]}..{ids[-1]} are not the predicted {next_id}..{next_id + len(at) - 1}")
                next_id = ids[-1] + 1
            store.commit()
        except BaseException:
            store.rollback()
            for *_, encoding in added:
                if encoding is not None:
                    encoding.abandon()
            raise
        self._version = store.data_version()
        for row, ids, vectors, encoding in added:
            if row.space not in self.spaces:
                self.spaces[row.space] = Space(row, faiss_io.new_index(row.dim, approximate=False))
            space = self.spaces[row.space]
            self._attach(space, vectors, np.array(ids, dtype=np.int64), encoding)
            space.dirty = True
            self._maybe_convert(space)
        self.save(tail_ok=True)
        return [i for _, ids, _, _ in added for i in ids]

    @staticmethod
    def _attach(space: Space, vectors: np.ndarray, ids: np.ndarray, encoding: Encoding | None) -> None:
        """Committed vectors into the space's FAISS indexes: the part encoded beside the
        transaction, or encoded now (also when that encoding failed)."""
        if encoding is not None:
            try:
                space.tails.append(encoding.result())
                return
            except Exception as exc:  # noqa: BLE001 - the rows are committed: encode them here instead
                _logger.debug("encoding beside the transaction failed (%s); encoding after it", type(exc).__name__)
        space.append(vectors, ids)

    def delete(self, found: Sequence[tuple[int, str]]) -> None:
        """Delete ``(id, space)`` cases in one transaction, then from FAISS (or as tombstones), and save."""
        store = self.store
        store.begin()
        try:
            store.delete([i for i, _ in found])
            store.commit()
        except BaseException:
            store.rollback()
            raise
        self._version = store.data_version()
        for key in {s for _, s in found}:
            space = self.spaces.get(key)
            if space is None:
                continue
            gone = np.array([i for i, s in found if s == key], dtype=np.int64)
            if not faiss_io.remove(space.index, gone):
                tomb = np.union1d(space.tombstones, gone)
                if len(tomb) > faiss_io.TOMBSTONE_REBUILD * max(1, space.ntotal):
                    space.merge_tail()
                    space.index, tomb = faiss_io.copy_as(space.index, True, tomb), np.zeros(0, dtype=np.int64)
                space.tombstones = tomb
            space.dirty = space.must_save = True
        self.save(force=True)

    # -- reading -----------------------------------------------------------------------------
    def search(self, space: Space, vector: np.ndarray, k: int, conditions: list, exact: bool) -> list[Hit]:
        """The ``k`` best cases of one space for a normalised query vector, filtered in SQL first."""
        store = self.store
        allowed = store.filter_ids(space.row.space, conditions) if conditions else None
        if allowed is not None and len(allowed) == 0:
            return []
        tomb = space.tombstones if len(space.tombstones) else None
        search = faiss_io.search_exact if exact else faiss_io.search
        scores, ids = faiss_io.merge_results([search(part, vector, k, allowed=allowed, tombstones=tomb) for part in space.parts], k)
        found = [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0]
        rows = store.rows([i for i, _ in found])
        hits = []
        for i, score in found:
            row = rows.get(i)
            if row is None:  # removed by another process since our last look
                continue
            metadata = dict(row.metadata)
            if row.scores is not None:
                metadata["task"] = row.task
                metadata["scores"] = row.scores
            hits.append(Hit(id=i, path=row.path, score=score, modality=row.modality, metadata=metadata))
        return hits

    def stats(self) -> list[dict[str, Any]]:
        spaces = []
        for key, space in self.spaces.items():
            file, vectors = self.faiss_path(key), Path(self.store.vector_path(key))
            spaces.append(
                {
                    "space": key,
                    "fingerprint": space.row.fingerprint,
                    "modality": space.row.modality,
                    "dim": space.row.dim,
                    "model": space.row.model_ref,
                    "count": self.store.count(key),
                    "index_type": faiss_io.index_type(space.index),
                    "tombstones": int(len(space.tombstones)),
                    "file": file.name,
                    "file_bytes": file.stat().st_size if file.exists() else 0,
                    "vector_file": vectors.name,
                    "vector_rows": self.store.vector_rows(key),
                    "vector_bytes": vectors.stat().st_size if vectors.exists() else 0,
                    "created_at": space.row.created_at,
                }
            )
        return spaces
