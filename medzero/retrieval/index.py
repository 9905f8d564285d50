"""A case index: earlier recordings and X-rays found by a text query or by an example file.

On disk an index is a directory::

    cases.sqlite                    every case (path, sha256, metadata, scores, vector) and the spaces
    space-<sha1(fingerprint)[:12]>.faiss   one FAISS index per embedding space (encoder fingerprint)
    write.lock                      flock'ed by the one writer; holds its pid

The database is the source of truth; a FAISS file is a cache of it, replaced atomically after the
transaction it reflects commits, checked against the database whenever it is opened and brought
back in step from the stored vectors when it is not.

- **Spaces.** One per modality: the fingerprint of the encoder that made its vectors. Using another
  model for a modality the index already holds raises :class:`CaseIndexError` naming both.
- **Index type.** Exact (``IndexFlatIP``) up to ``approx_threshold`` vectors in a space; above it
  a 4-bit product-quantised fast scan re-ranked exactly (``IndexRefineFlat(IndexPQFastScan)``, see
  :mod:`medzero.retrieval.faiss_io`): recall@10 near 1 even on isotropic random vectors, where
  HNSW loses most of its recall, and adding is incremental (new vectors are only encoded; the
  quantiser is trained once, on a sample, when the space switches). ``search(..., exact=True)``
  always scans every stored vector.
- **Text queries** over an index holding both modalities are embedded in each space (CLAP text
  tower for audio, CLIP for images) and searched there; as cosine scores of different models are
  not comparable, the per-space lists are *interleaved by rank* (the space whose best hit scores
  higher first at each rank). Each Hit keeps the raw cosine of its own space. Pass ``modality=`` to
  search one space only.
- **Writers.** Any writing operation (``add``, ``add_vectors``, ``remove``) takes ``write.lock``
  with a non-blocking ``flock`` for its duration; a second writer gets a one-line
  :class:`CaseIndexError` naming the holder's pid. Readers take no lock (SQLite in WAL mode) and
  follow other processes' commits (``PRAGMA data_version``) before each search.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from ..core.errors import BadInputError, CaseIndexError, MedzeroError, TaskError
from ..core.results import Hit
from . import faiss_io
from .store import SpaceRow, Store, parse_where, utc_now

__all__ = ["CaseIndex", "AddReport", "space_key"]

_logger = logging.getLogger(__name__)

DB_NAME = "cases.sqlite"
LOCK_NAME = "write.lock"
#: Spaces with fewer vectors than this are saved after every add (their files are cheap to write).
SMALL_SPACE = 50_000
#: A larger space defers rewriting its FAISS file until the cases added since reach this share of it.
CHECKPOINT_SHARE = 0.25
_MODALITIES = ("audio", "image")


def space_key(fingerprint: str) -> str:
    """The on-disk name of a space: the first 12 hex digits of sha1(fingerprint)."""
    return hashlib.sha1(fingerprint.encode()).hexdigest()[:12]


@dataclass
class AddReport:
    """What an ``add`` did: ids of new cases, paths skipped as already indexed, and per-file errors."""

    added: list[int] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"added": list(self.added), "duplicates": list(self.duplicates), "errors": [list(e) for e in self.errors]}


@dataclass
class _Space:
    row: SpaceRow
    index: Any  # faiss.IndexIDMap2
    tombstones: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    dirty: bool = False
    #: Set by anything but an append (remove, repair, conversion): the next save may not be deferred.
    must_save: bool = False
    #: Vectors in the FAISS file as last read or written.
    saved_ntotal: int = 0
    saved_at: float = field(default_factory=time.monotonic)


@dataclass
class _Item:
    """One source on its way in: hashed, then decoded, or the error that stopped it."""

    name: str
    source: Any
    modality: str | None = None
    sha256: str = ""
    item: Any = None
    metadata: dict[str, Any] = field(default_factory=dict)
    duration_s: float | None = None
    size: tuple[int, int] | None = None  # (width, height)
    error: str | None = None


class CaseIndex:
    """A directory of cases searchable by text or example.

    Args:
        path: the index directory (created on first write).
        audio_model, image_model: the encoder for each modality. ``None``: the model the index was
            built with (remembered per space), else the default model.
        device: ``auto``, ``cpu`` or ``cuda``.
        readonly: never write (no lock, no FAISS file repair on disk; repairs stay in memory).
        approx_threshold: vectors in a space above which it switches to the approximate index.
        checkpoint_s: during a long add, save the FAISS file at most this often (it is always saved
            when the operation ends; a FAISS file that lags the database is caught up on open).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        audio_model: str | None = None,
        image_model: str | None = None,
        device: str = "auto",
        readonly: bool = False,
        approx_threshold: int = 100_000,
        checkpoint_s: float = 60.0,
    ):
        self.path = Path(path)
        self.readonly = readonly
        self.device = device
        self.approx_threshold = int(approx_threshold)
        self.checkpoint_s = float(checkpoint_s)
        self._models = {"audio": audio_model, "image": image_model}
        self._encoders: dict[str, Any] = {}
        self._task_classifiers: dict[Any, Any] = {}
        self._spaces: dict[str, _Space] = {}
        self._lock_fd: int | None = None
        self._lock_depth = 0
        self._store: Store | None = None
        if readonly and not (self.path / DB_NAME).exists():
            raise CaseIndexError(f"{self.path} is not a case index (no {DB_NAME}); add cases to it first")
        if not readonly:
            try:
                self.path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise CaseIndexError(f"cannot create the index directory {self.path}: {exc.strerror}") from None
        elif not os.access(self.path, os.W_OK):
            _logger.debug("%s is not writable; reading only", self.path)
        self._store = Store(str(self.path / DB_NAME), readonly=readonly)
        self._version = -1
        self._sync(opening=True)

    # -- context -----------------------------------------------------------------------------------
    def __enter__(self) -> "CaseIndex":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if self._store is None:
            return
        if any(s.dirty for s in self._spaces.values()) and not self.readonly:
            try:
                with self._writing():  # catches up with any other writer first, so we save committed state
                    self._save(force=True, tail_ok=True)
            except CaseIndexError:
                pass  # another writer holds the lock and will save; the database has everything
        self._store.close()
        self._store = None
        self._release()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            if self._store is not None:
                self._store.close()
            self._release()
        except Exception:
            pass

    def __len__(self) -> int:
        return self._db().count()

    def __repr__(self) -> str:
        return f"CaseIndex({str(self.path)!r}, spaces={len(self._spaces)})"

    def _db(self) -> Store:
        if self._store is None:
            raise CaseIndexError(f"index {self.path} is closed")
        return self._store

    # -- lock ----------------------------------------------------------------------------------------
    @contextmanager
    def _writing(self, refresh: bool = True) -> Iterator[None]:
        if self.readonly:
            raise CaseIndexError(f"index {self.path} is open read-only")
        if self._lock_depth == 0:
            self._acquire()
        self._lock_depth += 1
        try:
            if refresh and self._lock_depth == 1:
                self._refresh()
            yield
        finally:
            self._lock_depth -= 1
            if self._lock_depth == 0:
                self._release()

    def _acquire(self) -> None:
        fd = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_pid(fd)
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                who = f" (pid {holder})" if holder else ""
                raise CaseIndexError(f"index {self.path} is being written by another process{who}; try again when it finishes") from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd
        for stale in self.path.glob("space-*.faiss.tmp*"):  # left by a writer killed mid-save
            try:
                stale.unlink()
            except OSError:
                pass

    def _release(self) -> None:
        if self._lock_fd is not None:
            fd, self._lock_fd = self._lock_fd, None
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def _writer_active(self) -> bool:
        """Whether another process holds the write lock now (it may be mid-add, with its FAISS file behind)."""
        if self._lock_fd is not None:
            return False
        try:
            fd = os.open(self.path / LOCK_NAME, os.O_RDONLY)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True
        finally:
            os.close(fd)
        return False

    # -- keeping FAISS in step with the database -----------------------------------------------------
    def _faiss_path(self, key: str) -> Path:
        return self.path / f"space-{key}.faiss"

    def _refresh(self) -> None:
        """Follow commits made by other connections since we last looked."""
        if self._db().data_version() != self._version:
            self._sync(opening=False)

    def _sync(self, opening: bool) -> None:
        store = self._db()
        self._version = store.data_version()
        repaired = []
        for key, row in store.spaces().items():
            space = self._spaces.get(key)
            if space is None:
                index = faiss_io.load(self._faiss_path(key))
                space = _Space(row, index, saved_ntotal=index.ntotal if index is not None else 0)
                self._spaces[key] = space
            note = self._catch_up(space)
            if note:
                repaired.append((space, note))
        if not repaired:
            return
        expected = not opening or self._writer_active()
        for space, note in repaired:
            if expected:
                _logger.debug("%s space of %s caught up with the database: %s", space.row.modality, self.path, note)
            else:
                _logger.warning(
                    "index %s: the FAISS file of the %s space (%s) did not match the database (%s); rebuilt it from the stored vectors",
                    self.path, space.row.modality, space.row.fingerprint, note,
                )
        if opening and not expected and not self.readonly:
            try:
                with self._writing():
                    self._save(force=True)
            except CaseIndexError:
                pass  # another writer started meanwhile; our in-memory copy is still right

    def _catch_up(self, space: _Space) -> str | None:
        """Make ``space.index`` hold exactly the database's vectors; a description of what was wrong, or None."""
        store, row = self._db(), space.row
        db_ids = store.ids(row.space)
        index = space.index
        if index is None or index.d != row.dim:
            space.index = self._rebuild(row, len(db_ids))
            space.tombstones = np.zeros(0, dtype=np.int64)
            space.dirty = space.must_save = True
            return "FAISS file missing or unreadable" if index is None else f"dimension {index.d} instead of {row.dim}"
        f_ids = faiss_io.ids_of(index)
        unique = np.unique(f_ids)
        if len(unique) != len(f_ids):
            space.index = self._rebuild(row, len(db_ids))
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
            elif len(extra) > faiss_io.TOMBSTONE_REBUILD * max(1, index.ntotal):
                space.index = index = faiss_io.copy_as(index, True, extra)
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
            for ids, vectors in store.vectors(row.space, row.dim, missing):
                faiss_io.add(index, vectors, ids)
            space.dirty = True
            if len(unique) and missing[0] > unique[-1]:
                # Cases added after the file was last written: adds defer rewriting a large FAISS
                # file (see _save), so a tail of newer cases is read from the database by design.
                _logger.debug("%s space: %d newer cases read from the database", row.modality, len(missing))
            else:
                space.must_save = True
                note.append(f"{len(missing)} cases missing from the FAISS file")
        self._maybe_convert(space)
        return "; ".join(note) or None

    def _rebuild(self, row: SpaceRow, count: int):
        index = faiss_io.new_index(row.dim, approximate=False)
        for ids, vectors in self._db().vectors(row.space, row.dim):
            faiss_io.add(index, vectors, ids)
        if count >= self.approx_threshold:  # the quantiser trains on a sample of the stored vectors
            index = faiss_io.copy_as(index, True)
        return index

    def _maybe_convert(self, space: _Space) -> None:
        if not faiss_io.is_approximate(space.index) and space.index.ntotal >= self.approx_threshold:
            _logger.info("%s space of %s has %d vectors; switching to the approximate index", space.row.modality, self.path, space.index.ntotal)
            space.index = faiss_io.copy_as(space.index, True)
            space.dirty = space.must_save = True

    def _save(self, force: bool = False, *, tail_ok: bool = False) -> None:
        """Write dirty FAISS files (only while holding the lock, and only for committed state).

        With ``tail_ok``, a space that has only been appended to keeps its file as it is while the
        new cases are at most :data:`CHECKPOINT_SHARE` of what the file holds: rewriting a large
        file for a small add would cost more than the add, and the next open reads the newer
        cases from the database (ids only grow, so they are exactly those above the file's last).
        """
        now = time.monotonic()
        for key, space in self._spaces.items():
            if not space.dirty or not (force or now - space.saved_at >= self.checkpoint_s):
                continue
            tail = space.index.ntotal - space.saved_ntotal
            if tail_ok and not space.must_save and space.saved_ntotal >= SMALL_SPACE and tail <= CHECKPOINT_SHARE * space.saved_ntotal:
                continue
            faiss_io.save_atomic(space.index, self._faiss_path(key))
            space.dirty, space.must_save = False, False
            space.saved_ntotal, space.saved_at = space.index.ntotal, time.monotonic()

    # -- models ----------------------------------------------------------------------------------------
    def _space_for(self, modality: str) -> _Space | None:
        return next((s for s in self._spaces.values() if s.row.modality == modality), None)

    def _model_ref(self, modality: str) -> str | None:
        if self._models[modality] is not None:
            return self._models[modality]
        space = self._space_for(modality)
        return space.row.model_ref if space is not None else None

    def _classifier(self, task: Any = None):
        from ..api import Classifier

        key = task if task is None or isinstance(task, (str, os.PathLike)) else id(task)
        if key not in self._task_classifiers:
            self._task_classifiers[key] = Classifier(
                task, audio_model=self._model_ref("audio"), image_model=self._model_ref("image"), device=self.device
            )
        return self._task_classifiers[key]

    def encoder(self, modality: str):
        """The encoder this session uses for ``modality``; raises when it is not the index's model."""
        if modality not in self._encoders:
            encoder = self._classifier().encoder(modality)
            self._check_fingerprint(modality, encoder.fingerprint, encoder.dim)
            self._encoders[modality] = encoder
        return self._encoders[modality]

    def _check_fingerprint(self, modality: str, fingerprint: str, dim: int | None = None) -> None:
        space = self._space_for(modality)
        if space is None or space.row.fingerprint == fingerprint:
            return
        flag = f"--{modality}-model {space.row.model_ref or space.row.fingerprint}"
        raise CaseIndexError(
            f"index {self.path} holds {modality} embeddings from {space.row.fingerprint}; this session uses {fingerprint}"
            f" — open it with {flag} or use a new index"
        )

    def _space_row(self, modality: str, fingerprint: str, dim: int, model_ref: str | None) -> SpaceRow:
        space = self._space_for(modality)
        if space is not None:
            self._check_fingerprint(modality, fingerprint)
            if space.row.dim != dim:
                raise CaseIndexError(
                    f"index {self.path} holds {space.row.dim}-dimensional {modality} vectors; these have {dim} dimensions"
                )
            return space.row
        return SpaceRow(space_key(fingerprint), fingerprint, modality, int(dim), model_ref, utc_now())

    # -- adding ------------------------------------------------------------------------------------------
    def add(
        self,
        sources: "Iterable[Any] | Any",
        task: Any = None,
        *,
        batch_size: int = 64,
        progress: Callable[[int], None] | None = None,
    ) -> AddReport:
        """Embed and index files (folders expanded by content); each batch commits on its own.

        Files whose content is already indexed in the same space are skipped and listed in
        ``duplicates``; a file that cannot be read gets an ``errors`` entry and the rest go on.
        With ``task``, each case also stores that task's zero-shot scores (cases of the other
        modality store none).
        """
        from ..api import expand_sources

        sources = expand_sources(sources)
        report = AddReport()
        batch_size = max(1, int(batch_size))
        with self._writing():
            with ThreadPoolExecutor(max_workers=2, thread_name_prefix="medzero-index") as pool:
                for start in range(0, len(sources), batch_size):
                    chunk = sources[start : start + batch_size]
                    items = list(pool.map(self._hash, chunk))
                    self._drop_duplicates(items, report)
                    items = list(pool.map(self._decode, items))
                    self._commit_items(items, task, report)
                    if progress is not None:
                        progress(len(chunk))
            self._save(force=True, tail_ok=True)
        return report

    def _hash(self, source: Any) -> _Item:
        from ..api import sniff_modality

        item = _Item(name=_source_name(source), source=source)
        try:
            modality = sniff_modality(source, item.name)
            if modality not in _MODALITIES:
                raise BadInputError(f"{item.name}: pass arrays as vectors with add_vectors, not as cases")
            item.modality = modality
            item.sha256 = _sha256(source)
        except MedzeroError as exc:
            item.error = str(exc)
        except OSError as exc:
            item.error = f"cannot read {item.name}: {exc.strerror or exc}"
        return item

    def _drop_duplicates(self, items: list[_Item], report: AddReport) -> None:
        by_space: dict[str, list[_Item]] = {}
        for item in items:
            if item.error is None:
                try:
                    encoder = self.encoder(item.modality)
                except CaseIndexError:
                    raise
                except MedzeroError as exc:
                    item.error = str(exc)
                    continue
                by_space.setdefault(space_key(encoder.fingerprint), []).append(item)
        for key, group in by_space.items():
            known = self._db().known_sha(key, [i.sha256 for i in group])
            for item in group:
                if item.sha256 in known:
                    item.error = "duplicate"
                    report.duplicates.append(item.name)
                known.add(item.sha256)  # a second copy in the same batch is a duplicate too

    def _decode(self, item: _Item) -> _Item:
        if item.error is not None:
            return item
        loaded = self._classifier().load(item.source, check_task=False)
        if loaded.error is not None:
            item.error = str(loaded.error)
            return item
        item.item, item.metadata = loaded.item, loaded.metadata
        if item.modality == "audio":
            item.duration_s = loaded.metadata.get("duration_s")
        else:
            item.size = (int(loaded.item.pixels.shape[1]), int(loaded.item.pixels.shape[0]))
        return item

    def _commit_items(self, items: list[_Item], task: Any, report: AddReport) -> None:
        vectors: dict[int, np.ndarray] = {}
        scores: dict[int, tuple[str, dict[str, float]]] = {}
        for modality in _MODALITIES:
            idx = [i for i, it in enumerate(items) if it.error is None and it.modality == modality]
            if not idx:
                continue
            try:
                emb = faiss_io.normalise(self.encoder(modality).embed([items[i].item for i in idx]))
            except (MedzeroError, ValueError) as exc:
                for i in idx:
                    items[i].error = str(exc)
                continue
            vectors.update(zip(idx, emb))
            if task is not None:
                head = self._head(task, modality)
                if head is not None:
                    table = head.scores(emb)
                    for row, i in enumerate(idx):
                        scores[i] = (head.task.name, head.as_dict(table[row]))
        for item in items:
            if item.error is not None and item.error != "duplicate":
                report.errors.append((item.name, item.error))
        if not vectors:
            return
        rows = []
        for i, vector in vectors.items():
            it = items[i]
            encoder = self.encoder(it.modality)
            task_name, task_scores = scores.get(i, (None, None))
            rows.append(
                (
                    self._space_row(it.modality, encoder.fingerprint, encoder.dim, self._model_ref(it.modality) or _default_ref(it.modality)),
                    dict(
                        path=it.name, sha256=it.sha256, vector=vector, metadata=it.metadata, task=task_name,
                        scores=task_scores, duration_s=it.duration_s,
                        width=it.size[0] if it.size else None, height=it.size[1] if it.size else None,
                    ),
                )
            )
        report.added.extend(self._insert(rows))

    def _head(self, task: Any, modality: str):
        try:
            return self._classifier(task).head(modality)
        except TaskError as exc:
            _logger.info("not scoring %s cases: %s", modality, exc)
            return None

    def _insert(self, rows: list[tuple[SpaceRow, dict[str, Any]]]) -> list[int]:
        """Insert rows in one transaction; after it commits, add their vectors to the FAISS indexes."""
        store = self._db()
        added: list[tuple[SpaceRow, int, np.ndarray]] = []
        store.begin()
        try:
            by_space: dict[str, tuple[SpaceRow, list[dict[str, Any]]]] = {}
            for row, case in rows:
                by_space.setdefault(row.space, (row, []))[1].append(case)
            for row, cases in by_space.values():
                if row.space not in self._spaces:
                    store.insert_space(row)
                ids = store.insert_cases(row, cases)
                added += [(row, i, case["vector"]) for i, case in zip(ids, cases)]
            store.commit()
        except BaseException:
            store.rollback()
            raise
        self._version = store.data_version()
        for row in {r.space: r for r, _, _ in added}.values():
            if row.space not in self._spaces:
                self._spaces[row.space] = _Space(row, faiss_io.new_index(row.dim, approximate=False))
            space = self._spaces[row.space]
            mine = [(i, v) for r, i, v in added if r.space == row.space]
            faiss_io.add(space.index, np.stack([v for _, v in mine]), np.array([i for i, _ in mine], dtype=np.int64))
            space.dirty = True
            self._maybe_convert(space)
        self._save(tail_ok=True)
        return [i for _, i, _ in added]

    def add_vectors(
        self,
        vectors: np.ndarray,
        rows: Sequence[Mapping[str, Any]] | None = None,
        *,
        modality: str,
        fingerprint: str | None = None,
        model_ref: str | None = None,
        batch_size: int = 10_000,
        progress: Callable[[int], None] | None = None,
    ) -> AddReport:
        """Index precomputed embeddings (normalised here) with optional per-row fields.

        ``rows[i]`` may give ``path``, ``sha256`` (default: the hash of the normalised vector),
        ``metadata``, ``task``, ``scores``, ``duration_s``, ``width`` and ``height``. ``fingerprint``
        names the encoder that made the vectors; it defaults to the index's space for ``modality``.
        Each batch of ``batch_size`` rows is one transaction.
        """
        if modality not in _MODALITIES:
            raise CaseIndexError(f"modality must be audio or image, not {modality!r}")
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2:
            raise CaseIndexError(f"vectors must be a 2-D array (n, dim), got shape {vectors.shape}")
        if rows is not None and len(rows) != len(vectors):
            raise CaseIndexError(f"{len(vectors)} vectors but {len(rows)} rows")
        report = AddReport()
        with self._writing():
            existing = self._space_for(modality)
            if fingerprint is None:
                if existing is None:
                    raise CaseIndexError(f"index {self.path} has no {modality} space yet; give the vectors' encoder fingerprint")
                fingerprint = existing.row.fingerprint
            space_row = self._space_row(modality, fingerprint, vectors.shape[1], model_ref)
            batch_size = max(1, int(batch_size))
            for start in range(0, len(vectors), batch_size):
                try:
                    chunk = faiss_io.normalise(vectors[start : start + batch_size])
                except ValueError:
                    raise CaseIndexError(f"vectors {start}..{start + batch_size - 1} include a zero or non-finite vector") from None
                fields = [dict(rows[start + j]) if rows is not None else {} for j in range(len(chunk))]
                shas = [str(f.get("sha256") or hashlib.sha256(v.tobytes()).hexdigest()) for f, v in zip(fields, chunk)]
                known = self._db().known_sha(space_row.space, shas)
                batch = []
                for j, (f, v, sha) in enumerate(zip(fields, chunk, shas)):
                    path = str(f.get("path") or f"vector:{start + j}")
                    if sha in known:
                        report.duplicates.append(path)
                        continue
                    known.add(sha)
                    batch.append(
                        (
                            space_row,
                            dict(
                                path=path, sha256=sha, vector=v, metadata=f.get("metadata") or {}, task=f.get("task"),
                                scores=f.get("scores"), duration_s=f.get("duration_s"), width=f.get("width"),
                                height=f.get("height"),
                            ),
                        )
                    )
                if batch:
                    report.added.extend(self._insert(batch))
                if progress is not None:
                    progress(len(chunk))
            self._save(force=True, tail_ok=True)
        return report

    # -- removing ------------------------------------------------------------------------------------------
    def remove(self, ids_or_paths: "Iterable[int | str | os.PathLike] | int | str | os.PathLike") -> list[int]:
        """Remove cases by id or path in one transaction; returns the ids removed."""
        if isinstance(ids_or_paths, (int, np.integer, str, os.PathLike)):
            ids_or_paths = [ids_or_paths]
        with self._writing():
            store = self._db()
            found = store.resolve(ids_or_paths)
            if not found:
                return []
            store.begin()
            try:
                store.delete([i for i, _ in found])
                store.commit()
            except BaseException:
                store.rollback()
                raise
            self._version = store.data_version()
            for key in {s for _, s in found}:
                space = self._spaces.get(key)
                if space is None:
                    continue
                gone = np.array([i for i, s in found if s == key], dtype=np.int64)
                if not faiss_io.remove(space.index, gone):
                    tomb = np.union1d(space.tombstones, gone)
                    if len(tomb) > faiss_io.TOMBSTONE_REBUILD * max(1, space.index.ntotal):
                        space.index, tomb = faiss_io.copy_as(space.index, True, tomb), np.zeros(0, dtype=np.int64)
                    space.tombstones = tomb
                space.dirty = space.must_save = True
            self._save(force=True)
        return [i for i, _ in found]

    # -- searching ------------------------------------------------------------------------------------------
    def search(
        self,
        query: Any,
        k: int = 5,
        modality: str | None = None,
        where: "str | Sequence[str] | Mapping[str, Any] | None" = None,
        exact: bool = False,
    ) -> list[Hit]:
        """The ``k`` cases most like ``query``, best first.

        ``query``: a text (embedded in every space, or only ``modality``'s); a file (a
        ``pathlib.Path``, a ``str`` naming an existing file, or its bytes), embedded with its own
        modality's encoder and searched in that space only; or a vector (numpy array) of
        ``modality``'s space. ``where`` filters on metadata (``ViewPosition=PA``), stored scores
        (``score.pleural_effusion>0.5``) and columns (``modality``, ``path``, ``task``,
        ``duration_s``, ``width``, ``height``); the filter is applied before ranking, so ``k`` hits
        come back whenever ``k`` cases match. ``exact`` scans every stored vector even in an approximate space.
        """
        if k <= 0:
            return []
        if modality is not None and modality not in _MODALITIES:
            raise BadInputError(f"modality must be audio or image, not {modality!r}")
        self._refresh()
        conditions = parse_where(where)
        for key, op, value in conditions:  # where={"modality": ...} narrows the spaces like modality= does
            if key == "modality" and op == "=" and modality is None:
                modality = str(value[1] if isinstance(value, tuple) else value)
        if isinstance(query, np.ndarray):
            per_space = self._vector_queries(query, modality)
        elif isinstance(query, (bytes, bytearray, memoryview, os.PathLike)) or (
            isinstance(query, str) and "\n" not in query and len(query) < 4096 and os.path.isfile(query)
        ):
            per_space = self._example_queries(query, modality)
        elif isinstance(query, str):
            if not query.strip():
                raise BadInputError("the query text is empty")
            spaces = [s for s in self._spaces.values() if modality in (None, s.row.modality)]
            per_space = [(s, faiss_io.normalise(self.encoder(s.row.modality).embed_text([query]))) for s in spaces]
        else:
            raise BadInputError(f"cannot search with a {type(query).__name__}; pass a text, a file path, bytes or a vector")
        results = []
        for space, vector in per_space:
            results.append(self._search_space(space, vector, k, conditions, exact))
        return _interleave([r for r in results if r], k)

    def _vector_queries(self, vector: np.ndarray, modality: str | None) -> list[tuple[_Space, np.ndarray]]:
        vector = np.asarray(vector, dtype=np.float32).reshape(1, -1) if np.asarray(vector).ndim == 1 else np.asarray(vector, dtype=np.float32)
        if vector.shape[0] != 1:
            raise CaseIndexError(f"give one query vector, not {vector.shape[0]}")
        spaces = [s for s in self._spaces.values() if modality in (None, s.row.modality)]
        if len(spaces) > 1:
            raise CaseIndexError(f"index {self.path} holds audio and image vectors; say which with modality=")
        if not spaces:
            return []
        space = spaces[0]
        if vector.shape[1] != space.row.dim:
            raise CaseIndexError(
                f"the query vector has {vector.shape[1]} dimensions; the {space.row.modality} space of {self.path} "
                f"({space.row.fingerprint}) holds {space.row.dim}-dimensional vectors"
            )
        try:
            return [(space, faiss_io.normalise(vector))]
        except ValueError:
            raise CaseIndexError("the query vector is zero or not finite") from None

    def _example_queries(self, query: Any, modality: str | None) -> list[tuple[_Space, np.ndarray]]:
        item = self._hash(query)
        if item.error is not None:
            raise BadInputError(item.error)
        if modality is not None and item.modality != modality:
            raise BadInputError(f"{item.name} is {'an image' if item.modality == 'image' else 'audio'}, not {modality}")
        item = self._decode(item)
        if item.error is not None:
            raise BadInputError(item.error)
        space = self._space_for(item.modality)
        encoder = self.encoder(item.modality)
        if space is None:
            return []
        return [(space, faiss_io.normalise(encoder.embed([item.item])))]

    def _search_space(self, space: _Space, vector: np.ndarray, k: int, conditions: list, exact: bool) -> list[Hit]:
        store = self._db()
        allowed = store.filter_ids(space.row.space, conditions) if conditions else None
        if allowed is not None and len(allowed) == 0:
            return []
        tomb = space.tombstones if len(space.tombstones) else None
        if exact:
            scores, ids = faiss_io.search_exact(space.index, vector, k, allowed=allowed, tombstones=tomb)
        else:
            scores, ids = faiss_io.search(space.index, vector, k, allowed=allowed, tombstones=tomb)
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

    # -- information --------------------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Per space: fingerprint, modality, dim, count, index type, FAISS file size; and totals."""
        self._refresh()
        store = self._db()
        spaces = []
        for key, space in self._spaces.items():
            file = self._faiss_path(key)
            spaces.append(
                {
                    "space": key,
                    "fingerprint": space.row.fingerprint,
                    "modality": space.row.modality,
                    "dim": space.row.dim,
                    "model": space.row.model_ref,
                    "count": store.count(key),
                    "index_type": faiss_io.index_type(space.index),
                    "tombstones": int(len(space.tombstones)),
                    "file": file.name,
                    "file_bytes": file.stat().st_size if file.exists() else 0,
                    "created_at": space.row.created_at,
                }
            )
        db_bytes = sum(p.stat().st_size for p in self.path.glob(DB_NAME + "*") if p.is_file())
        return {
            "path": str(self.path),
            "cases": store.count(),
            "spaces": spaces,
            "database_bytes": db_bytes,
            "faiss_bytes": sum(s["file_bytes"] for s in spaces),
            "approx_threshold": self.approx_threshold,
        }


# -- helpers ----------------------------------------------------------------------------------------------------


def _interleave(lists: list[list[Hit]], k: int) -> list[Hit]:
    """Per-space lists merged by rank: rank 1 of every space, then rank 2, ...; within a rank, higher score first."""
    if len(lists) <= 1:
        return lists[0][:k] if lists else []
    lists = sorted(lists, key=lambda hits: -hits[0].score)
    merged: list[Hit] = []
    for rank in range(max(len(h) for h in lists)):
        merged += sorted((h[rank] for h in lists if rank < len(h)), key=lambda hit: -hit.score)
    return merged[:k]


def _source_name(source: Any) -> str:
    """The API's name for a source, with paths made absolute (hits must point at the file)."""
    from ..api import source_name

    return os.path.abspath(os.fspath(source)) if isinstance(source, (str, os.PathLike)) else source_name(source)


def _sha256(source: Any) -> str:
    digest = hashlib.sha256()
    if isinstance(source, (bytes, bytearray, memoryview)):
        digest.update(source)
    elif isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    else:
        raise BadInputError(f"cannot index a {type(source).__name__}; pass a path or bytes")
    return digest.hexdigest()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode().strip()
        return int(text) if text.isdigit() else None
    except (OSError, ValueError):
        return None


def _default_ref(modality: str) -> str | None:
    from ..core.encoder import default_model

    try:
        return default_model(modality)
    except MedzeroError:
        return None
