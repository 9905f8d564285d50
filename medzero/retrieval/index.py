"""A case index: earlier recordings and X-rays found by a text query or by an example file.

On disk an index is a directory::

    cases.sqlite                    every case (path, sha256, metadata, scores, vector_row) and the spaces
    vectors-<space>.f32             each space's vectors, append-only, row vector_row (see :mod:`.store`)
    vectors-<space>.idx             per row, the case id and a 64-bit key of its sha256 (duplicate checks)
    space-<sha1(fingerprint)[:12]>.faiss   one FAISS index per embedding space (encoder fingerprint)
    write.lock                      flock'ed by the one writer; holds its pid

This module is the public front. The parts behind it are separate modules, each tested alone:
:mod:`.locking` (the one-writer rule), :mod:`.spaces` (FAISS files kept in step with the
database), :mod:`.store` (SQLite), :mod:`.faiss_io` (index types and search) and :mod:`.ingest`
(sources into case rows, through the same ingest pipeline classification uses).

The database and the vector files are the source of truth; a FAISS file is a cache of them,
replaced atomically after the transaction it reflects commits, checked against the database
whenever it is opened and brought back in step from the stored vectors when it is not.

- **Spaces.** One per modality: the fingerprint of the encoder that made its vectors. Using another
  model for a modality the index already holds raises :class:`CaseIndexError` naming both.
- **Index type.** Exact (``IndexFlatIP``) up to ``approx_threshold`` vectors in a space; above it
  a 4-bit product-quantised fast scan re-ranked exactly (``IndexRefineFlat(IndexPQFastScan)``, see
  :mod:`medzero.retrieval.faiss_io`): recall@10 near 1 even on isotropic random vectors, where
  HNSW loses most of its recall, and adding is incremental (new vectors are only encoded; the
  quantiser is trained once, on a sample, when the space switches). ``exact=True``
  always scans every stored vector.
- **Queries** are explicit: :meth:`CaseIndex.search_text` for words, :meth:`CaseIndex.search_example`
  for a file like the cases wanted, :meth:`CaseIndex.search_vector` for an embedding; a string
  is never guessed to be a file. Text queries over an index holding both modalities are embedded in each space (CLAP text
  tower for audio, CLIP for images) and searched there; as cosine scores of different models are
  not comparable, hits are *ranked within their modality* and the per-space lists are interleaved
  by rank (rank 1 of each modality, then rank 2, ...; at each rank the modalities in registry
  order, audio then image), never sorted by score across modalities. Each Hit keeps the raw cosine
  of its own space, so the merged list's scores go down within a modality only. Pass
  ``modality=`` to search one space only.
- **Writers.** Any writing operation (``add``, ``add_vectors``, ``remove``) takes ``write.lock``
  with a non-blocking ``flock`` for its duration; a second writer gets a one-line
  :class:`CaseIndexError` naming the holder's pid. :meth:`CaseIndex.writer` holds it for an
  engine that computes vectors elsewhere and commits them here (:mod:`.writer`). Readers take no
  lock (SQLite in WAL mode) and follow other processes' commits (``PRAGMA data_version``) before
  each search.
"""
from __future__ import annotations

import hashlib
import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from ..encoders import backends as _backends
from ..encoders import factory as _encoders
from ..core.engines import Engine, resolve_engine
from ..core.errors import BadInputError, CaseIndexError, MedzeroError
from ..core.ingest import Pipeline, iter_expand
from ..core.modality import modality_names
from ..core.results import Hit
from ..core.vectors import l2_normalise
from .ingest import AddReport, CaseIngest, check_source
from .locking import WriteLock
from .spaces import Space, SpaceSet, space_key
from .store import Store, parse_where
from .writer import IndexWriter

__all__ = ["CaseIndex", "AddReport", "IndexWriter", "space_key"]

_logger = logging.getLogger(__name__)

DB_NAME = "cases.sqlite"
Where = "str | Sequence[str] | Mapping[str, Any] | None"


class CaseIndex:
    """A directory of cases searchable by text or example.

    Args:
        path: the index directory (created on first write).
        audio_model, image_model: the encoder for each modality. ``None``: the model the index was
            built with (remembered per space), else the default model.
        models: the same for any modality, ``{modality: reference}``.
        device: ``auto``, ``cpu`` or ``cuda``.
        backend: ``auto``, ``torch``, ``onnx``, ``openvino`` or ``onnx-int8`` (see :class:`medzero.Classifier`); an int8
            model is another model, so its vectors go to a space of their own.
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
        models: Mapping[str, str | None] | None = None,
        device: str = "auto",
        backend: str | None = None,
        readonly: bool = False,
        approx_threshold: int = 100_000,
        checkpoint_s: float = 60.0,
    ):
        self.path = Path(path)
        self.readonly = readonly
        self.device = device
        self.backend = _backends.checked(backend, device)
        self._models = {"audio": audio_model, "image": image_model, **{k: v for k, v in dict(models or {}).items() if v}}
        self._encoders: dict[str, Any] = {}
        self._store: Store | None = None
        if readonly and not (self.path / DB_NAME).exists():
            raise CaseIndexError(f"{self.path} is not a case index (no {DB_NAME}); add cases to it first")
        if not readonly:
            try:
                self.path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise CaseIndexError(f"cannot create the index directory {self.path}: {exc.strerror}") from None
        self._lock = WriteLock(self.path)
        self._store = Store(str(self.path / DB_NAME), readonly=readonly)
        self._spaces = SpaceSet(
            self.path, self._store, self._lock, readonly=readonly, approx_threshold=approx_threshold, checkpoint_s=checkpoint_s
        )
        self._ingest = CaseIngest(self._spaces, self.encoder, self._model_ref)
        self._spaces.sync(opening=True)

    @property
    def approx_threshold(self) -> int:
        return self._spaces.approx_threshold

    # -- context -----------------------------------------------------------------------------------
    def __enter__(self) -> "CaseIndex":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if self._store is None:
            return
        if self._spaces.dirty and not self.readonly:
            try:
                with self._writing():  # catches up with any other writer first, so we save committed state
                    self._spaces.save(force=True, tail_ok=True)
            except CaseIndexError:
                pass  # another writer holds the lock and will save; the database has everything
        self._store.close()
        self._store = None
        self._lock.release()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            if self._store is not None:
                self._store.close()
            self._lock.release()
        except Exception:
            pass

    def __len__(self) -> int:
        return self._db().count()

    def __repr__(self) -> str:
        return f"CaseIndex({str(self.path)!r}, spaces={len(self._spaces.spaces)})"

    def _db(self) -> Store:
        if self._store is None:
            raise CaseIndexError(f"index {self.path} is closed")
        return self._store

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """Hold the write lock for one operation; the outermost hold first clears temporaries a
        killed writer left and follows other writers' commits."""
        if self.readonly:
            raise CaseIndexError(f"index {self.path} is open read-only")
        with self._lock.hold() as outermost:
            if outermost:
                self._spaces.remove_stale_temporaries()
                self._refresh()
            yield

    @contextmanager
    def writer(self) -> Iterator[IndexWriter]:
        """Hold the one write lock for a ``with`` block, and commit through the :class:`IndexWriter` it
        yields: the API of an engine that reads, decodes and embeds elsewhere (the ray engine) and
        commits here. A second writer, in this process or another, gets the one-line
        :class:`CaseIndexError` naming the holder; a read-only index refuses."""
        with self._writing():
            writer = IndexWriter(self._spaces, self._model_ref, self._encoders)
            try:
                yield writer
            finally:
                writer.close()

    def _refresh(self) -> None:
        self._db()
        self._spaces.refresh()

    # -- models ----------------------------------------------------------------------------------------
    def _model_ref(self, modality: str) -> str | None:
        if self._models.get(modality) is not None:
            return self._models[modality]
        space = self._spaces.for_modality(modality)
        if space is not None:
            return space.row.model_ref
        try:
            return _encoders.default_model(modality)
        except MedzeroError:
            return None

    def encoder(self, modality: str):
        """The encoder this session uses for ``modality``; raises when it is not the index's model."""
        if modality not in self._encoders:
            encoder = _encoders.create(self._model_ref(modality), modality=modality, device=self.device, backend=self.backend)
            self._spaces.check_fingerprint(modality, encoder.fingerprint)
            self._encoders[modality] = encoder
        return self._encoders[modality]

    # -- adding ------------------------------------------------------------------------------------------
    def add(
        self,
        sources: "Iterable[Any] | Any",
        task: Any = None,
        *,
        batch_size: int = 64,
        progress: Callable[[int], None] | None = None,
        engine: "str | Engine" = "local",
        ray_options: Any = None,
    ) -> AddReport:
        """Embed and index files (folders expanded by content); each batch commits on its own.

        Files whose content is already indexed in the same space are skipped and listed in
        ``duplicates``; a file that cannot be read gets an ``errors`` entry and the rest go on.
        With ``task``, each case also stores that task's zero-shot scores (cases of the other
        modality store none). ``engine``: ``"local"`` (here), or an engine that reads, decodes
        and embeds elsewhere and commits through :meth:`writer`, such as
        ``medzero.distributed.RayEngine(options)`` (needs ``medzero[ray]``); ``"ray"`` is the same
        engine by name, with ``ray_options`` (a :class:`medzero.distributed.RayOptions`).
        """
        runner = resolve_engine(engine, ray_options)
        if runner is not None:
            return runner.add(self, sources, task, batch_size=batch_size, progress=progress)
        sources = iter_expand(sources, absolute=True)
        with self._writing():
            report = self._ingest.add(sources, task, batch_size=max(1, int(batch_size)), progress=progress)
            self._spaces.save(force=True, tail_ok=True)
        return report

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
        if modality not in modality_names():
            raise CaseIndexError(f"modality must be one of {', '.join(modality_names())}, not {modality!r}")
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2:
            raise CaseIndexError(f"vectors must be a 2-D array (n, dim), got shape {vectors.shape}")
        if rows is not None and len(rows) != len(vectors):
            raise CaseIndexError(f"{len(vectors)} vectors but {len(rows)} rows")
        report = AddReport()
        with self._writing():
            existing = self._spaces.for_modality(modality)
            if fingerprint is None:
                if existing is None:
                    raise CaseIndexError(f"index {self.path} has no {modality} space yet; give the vectors' encoder fingerprint")
                fingerprint = existing.row.fingerprint
            space_row = self._spaces.row_for(modality, fingerprint, vectors.shape[1], model_ref)
            batch_size = max(1, int(batch_size))
            buffer = np.empty((min(batch_size, len(vectors)), vectors.shape[1]), dtype=np.float32)  # reused: fresh pages cost
            for start in range(0, len(vectors), batch_size):
                try:
                    chunk = _normalised(vectors[start : start + batch_size], buffer)
                except ValueError:
                    raise CaseIndexError(f"vectors {start}..{start + batch_size - 1} include a zero or non-finite vector") from None
                fields = [rows[start + j] for j in range(len(chunk))] if rows is not None else [{}] * len(chunk)
                shas = [str(f.get("sha256") or hashlib.sha256(v).hexdigest()) for f, v in zip(fields, chunk)]
                known = self._spaces.known_sha(space_row.space, shas)
                batch, keep = [], []
                for j, (f, sha) in enumerate(zip(fields, shas)):
                    path = str(f.get("path") or f"vector:{start + j}")
                    if sha in known:
                        report.duplicates.append(path)
                        continue
                    known.add(sha)
                    keep.append(j)
                    case = {"path": path, "sha256": sha}
                    if f:
                        case.update((name, f[name]) for name in _CASE_FIELDS if f.get(name) is not None)
                    batch.append((space_row, case))
                if batch:
                    vectors_kept = chunk if len(keep) == len(chunk) else chunk[keep]
                    report.added.extend(self._spaces.insert(batch, vectors=vectors_kept))
                if progress is not None:
                    progress(len(chunk))
            self._spaces.save(force=True, tail_ok=True)
        return report

    # -- removing ------------------------------------------------------------------------------------------
    def remove(self, ids_or_paths: "Iterable[int | str | os.PathLike] | int | str | os.PathLike") -> list[int]:
        """Remove cases by id or path in one transaction; returns the ids removed."""
        if isinstance(ids_or_paths, (int, np.integer, str, os.PathLike)):
            ids_or_paths = [ids_or_paths]
        with self._writing():
            found = self._db().resolve(ids_or_paths)
            if found:
                self._spaces.delete(found)
        return [i for i, _ in found]

    # -- searching ------------------------------------------------------------------------------------------
    def search_text(self, text: str, k: int = 5, *, modality: str | None = None, where: Where = None, exact: bool = False) -> list[Hit]:
        """The ``k`` cases that best match the words ``text``, best first.

        The text is embedded by each space's text encoder (or only ``modality``'s). Cosines of
        different models are not comparable, so hits are ranked **within their modality**: the
        list is rank 1 of each modality, then rank 2, ... (modalities in registry order), and a
        Hit's ``score`` is the cosine in its own space; scores go down within a modality, not
        across the list. ``where``
        filters on metadata (``ViewPosition=PA``), stored scores (``score.pleural_effusion>0.5``)
        and columns (``modality``, ``path``, ``task``, ``duration_s``, ``width``, ``height``) before
        ranking, so ``k`` hits come back whenever ``k`` cases match. ``exact`` scans every stored
        vector even in an approximate space.
        """
        if not isinstance(text, str):
            raise BadInputError(f"search_text takes words, not a {type(text).__name__}; use search_example for a file")
        if not text.strip():
            raise BadInputError("the query text is empty")
        modality, conditions = self._query(modality, where)
        spaces = self._spaces_of(modality)
        per_space = [(s, l2_normalise(self.encoder(s.row.modality).embed_text([text]), strict=True)) for s in spaces]
        return self._search(per_space, k, conditions, exact)

    def search_example(self, source: Any, k: int = 5, *, modality: str | None = None, where: Where = None, exact: bool = False) -> list[Hit]:
        """The ``k`` cases most like the example ``source`` (a path, bytes or a binary file object).

        The example is read through the same ingest path as a case and embedded with its own
        modality's encoder; only that modality's space is searched. ``where`` and ``exact`` as in
        :meth:`search_text`.
        """
        example = check_source(source)
        modality, conditions = self._query(modality, where)
        if modality is not None and example.modality != modality:
            raise BadInputError(f"{example.name} is {'an image' if example.modality == 'image' else example.modality}, not {modality}")
        space = self._spaces.for_modality(example.modality)
        encoder = self.encoder(example.modality)
        prepared = Pipeline(lambda _m: encoder).prepare(example)
        if prepared.error is not None:
            raise prepared.error
        if space is None:
            return []
        return self._search([(space, l2_normalise(encoder.embed([prepared.item]), strict=True))], k, conditions, exact)

    def search_vector(self, vector: np.ndarray, k: int = 5, *, modality: str | None = None, where: Where = None, exact: bool = False) -> list[Hit]:
        """The ``k`` cases nearest an embedding of ``modality``'s space (needed when the index holds several)."""
        modality, conditions = self._query(modality, where)
        vector = np.asarray(vector, dtype=np.float32)
        vector = vector.reshape(1, -1) if vector.ndim == 1 else vector
        if vector.ndim != 2 or vector.shape[0] != 1:
            raise CaseIndexError(f"give one query vector, not {vector.shape[0]}")
        spaces = self._spaces_of(modality)
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
            query = l2_normalise(vector, strict=True)
        except ValueError:
            raise CaseIndexError("the query vector is zero or not finite") from None
        return self._search([(space, query)], k, conditions, exact)

    def _query(self, modality: str | None, where: Where) -> tuple[str | None, list]:
        if modality is not None and modality not in modality_names():
            raise BadInputError(f"modality must be one of {', '.join(modality_names())}, not {modality!r}")
        self._refresh()
        conditions = parse_where(where)
        for key, op, value in conditions:  # where={"modality": ...} narrows the spaces like modality= does
            if key == "modality" and op == "=" and modality is None:
                modality = str(value[1] if isinstance(value, tuple) else value)
        return modality, conditions

    def _spaces_of(self, modality: str | None) -> list[Space]:
        return [s for s in self._spaces.spaces.values() if modality in (None, s.row.modality)]

    def _search(self, per_space: list[tuple[Space, np.ndarray]], k: int, conditions: list, exact: bool) -> list[Hit]:
        if k <= 0:
            return []
        results = [self._spaces.search(space, vector, k, conditions, exact) for space, vector in per_space]
        return _interleave([r for r in results if r], k)

    # -- information --------------------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Per space: fingerprint, modality, dim, count, index type, FAISS file size; and totals."""
        self._refresh()
        spaces = self._spaces.stats()
        db_bytes = sum(p.stat().st_size for p in self.path.glob(DB_NAME + "*") if p.is_file())
        return {
            "path": str(self.path),
            "cases": self._db().count(),
            "spaces": spaces,
            "database_bytes": db_bytes,
            "faiss_bytes": sum(s["file_bytes"] for s in spaces),
            "approx_threshold": self.approx_threshold,
        }


#: The optional fields of a row given to :meth:`CaseIndex.add_vectors` that a case stores.
_CASE_FIELDS = ("metadata", "task", "scores", "duration_s", "width", "height")


def _normalised(vectors: np.ndarray, buffer: np.ndarray, step: int = 4096) -> np.ndarray:
    """``l2_normalise(vectors, strict=True)`` written into the first rows of ``buffer``, a slice of
    rows at a time: each row's norm is its own sum, so the bits are the same (and so the default
    sha256 of a vector), without temporaries the size of a whole batch."""
    out = buffer[: len(vectors)]
    for start in range(0, len(vectors), step):
        out[start : start + step] = l2_normalise(vectors[start : start + step], strict=True)
    return out


def _interleave(lists: list[list[Hit]], k: int) -> list[Hit]:
    """Per-space lists merged by rank: rank 1 of every space, then rank 2, ...; within a rank the
    spaces in registry order (audio, image). Scores never decide between spaces: the cosines of
    two models are not on one scale."""
    if len(lists) <= 1:
        return lists[0][:k] if lists else []
    order = {name: i for i, name in enumerate(modality_names())}
    lists = sorted(lists, key=lambda hits: order.get(hits[0].modality, len(order)))
    merged: list[Hit] = []
    for rank in range(max(len(h) for h in lists)):
        merged += [h[rank] for h in lists if rank < len(h)]
    return merged[:k]
