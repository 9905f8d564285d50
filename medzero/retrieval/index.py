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
from .backend import CaseStore, is_url, open_store
from .copying import copy_cases
from .ingest import AddReport, CaseIngest, check_source
from .location import StoreLocation
from .spaces import space_key
from .store import SpaceRow, parse_where
from .writer import IndexWriter

__all__ = ["CaseIndex", "AddReport", "IndexWriter", "copy_index", "space_key"]

_logger = logging.getLogger(__name__)

Where = "str | Sequence[str] | Mapping[str, Any] | None"


class CaseIndex:
    """A directory of cases searchable by text or example.

    Args:
        path: the index directory (created on first write), or a PostgreSQL URL
            (``postgresql://user@host/db``: the store of :mod:`medzero.retrieval.pg`, which many
            processes may write at once; needs ``medzero[postgres]``).
        store: where the cases live when ``path`` does not say: ``"local"`` (the default, the
            folder ``path``) or a PostgreSQL URL (``path`` is then ignored and may be ``None``).
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
        path: "str | os.PathLike | None" = None,
        *,
        store: str | None = None,
        audio_model: str | None = None,
        image_model: str | None = None,
        models: Mapping[str, str | None] | None = None,
        device: str = "auto",
        backend: str | None = None,
        readonly: bool = False,
        approx_threshold: int = 100_000,
        checkpoint_s: float = 60.0,
    ):
        self.readonly = readonly
        self.device = device
        self.backend = _backends.checked(backend, device)
        self._models = {"audio": audio_model, "image": image_model, **{k: v for k, v in dict(models or {}).items() if v}}
        self._encoders: dict[str, Any] = {}
        self._backend: CaseStore | None = None
        target = _target(path, store)
        options: dict[str, Any] = {"readonly": readonly, "approx_threshold": approx_threshold}
        if not is_url(target):
            options["checkpoint_s"] = checkpoint_s
        self._backend = open_store(target, options)
        #: The index folder, or the database URL with any password redacted.
        self.path = getattr(self._backend, "path", None) or self._backend.name
        #: Where the index lives, for another process to open it (a Ray actor); prints as ``path``.
        self.location = StoreLocation.of(target, str(self.path))
        self._spaces = getattr(self._backend, "spaces", None)  # the local store's consistency core (benchmarks read it)
        self._ingest = CaseIngest(self._backend, self.encoder, self._model_ref)

    @property
    def approx_threshold(self) -> int:
        return self._backend.approx_threshold

    @property
    def store(self) -> str:
        """``"local"`` (an index folder) or ``"postgresql"``."""
        return "local" if hasattr(self._backend, "path") else "postgresql"

    # -- context -----------------------------------------------------------------------------------
    def __enter__(self) -> "CaseIndex":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            if self._backend is not None:
                getattr(self._backend, "abandon", self._backend.close)()
        except Exception:
            pass

    def __len__(self) -> int:
        return self._db().count()

    def __repr__(self) -> str:
        spaces = len(self._backend.space_rows()) if self._backend is not None else 0
        return f"CaseIndex({str(self.path)!r}, spaces={spaces})"

    def _db(self) -> CaseStore:
        if self._backend is None:
            raise CaseIndexError(f"index {self.path} is closed")
        return self._backend

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """Hold what one write operation needs (the local store's write lock; a database's
        transactions need nothing held between them)."""
        with self._db().writing():
            yield

    @contextmanager
    def writer(self) -> Iterator[IndexWriter]:
        """Hold the one write lock for a ``with`` block, and commit through the :class:`IndexWriter` it
        yields: the API of an engine that reads, decodes and embeds elsewhere (the ray engine) and
        commits here. A second writer, in this process or another, gets the one-line
        :class:`CaseIndexError` naming the holder; a read-only index refuses."""
        with self._writing():
            writer = IndexWriter(self._db(), self._model_ref, self._encoders)
            try:
                yield writer
            finally:
                writer.close()

    def _refresh(self) -> None:
        self._db().refresh()

    # -- models ----------------------------------------------------------------------------------------
    def _model_ref(self, modality: str) -> str | None:
        if self._models.get(modality) is not None:
            return self._models[modality]
        space = self._db().for_modality(modality)
        if space is not None:
            return space.model_ref
        try:
            return _encoders.default_model(modality)
        except MedzeroError:
            return None

    def encoder(self, modality: str):
        """The encoder this session uses for ``modality``; raises when it is not the index's model."""
        if modality not in self._encoders:
            encoder = _encoders.create(self._model_ref(modality), modality=modality, device=self.device, backend=self.backend)
            self._db().check_fingerprint(modality, encoder.fingerprint)
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
            self._db().save(force=True, tail_ok=True)
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
        store = self._db()
        with self._writing():
            existing = store.for_modality(modality)
            if fingerprint is None:
                if existing is None:
                    raise CaseIndexError(f"index {self.path} has no {modality} space yet; give the vectors' encoder fingerprint")
                fingerprint = existing.fingerprint
            space_row = store.row_for(modality, fingerprint, vectors.shape[1], model_ref)
            batch_size = max(1, int(batch_size))
            buffer = np.empty((min(batch_size, len(vectors)), vectors.shape[1]), dtype=np.float32)  # reused: fresh pages cost
            for start in range(0, len(vectors), batch_size):
                try:
                    chunk = _normalised(vectors[start : start + batch_size], buffer)
                except ValueError:
                    raise CaseIndexError(f"vectors {start}..{start + batch_size - 1} include a zero or non-finite vector") from None
                fields = [rows[start + j] for j in range(len(chunk))] if rows is not None else [{}] * len(chunk)
                shas = [str(f.get("sha256") or hashlib.sha256(v).hexdigest()) for f, v in zip(fields, chunk)]
                known = store.known_sha(space_row.space, shas)
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
                    report.record(batch, store.insert(batch, vectors=vectors_kept))
                if progress is not None:
                    progress(len(chunk))
            store.save(force=True, tail_ok=True)
        return report

    # -- removing ------------------------------------------------------------------------------------------
    def remove(self, ids_or_paths: "Iterable[int | str | os.PathLike] | int | str | os.PathLike") -> list[int]:
        """Remove cases by id or path in one transaction; returns the ids removed."""
        if isinstance(ids_or_paths, (int, np.integer, str, os.PathLike)):
            ids_or_paths = [ids_or_paths]
        with self._writing():
            found = self._db().resolve(ids_or_paths)
            if found:
                self._db().delete(found)
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
        per_space = [(s, l2_normalise(self.encoder(s.modality).embed_text([text]), strict=True)) for s in spaces]
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
        space = self._db().for_modality(example.modality)
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
        if vector.shape[1] != space.dim:
            raise CaseIndexError(
                f"the query vector has {vector.shape[1]} dimensions; the {space.modality} space of {self.path} "
                f"({space.fingerprint}) holds {space.dim}-dimensional vectors"
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

    def _spaces_of(self, modality: str | None) -> list[SpaceRow]:
        return [s for s in self._db().space_rows() if modality in (None, s.modality)]

    def _search(self, per_space: list[tuple[SpaceRow, np.ndarray]], k: int, conditions: list, exact: bool) -> list[Hit]:
        if k <= 0:
            return []
        results = [self._db().search(space, vector, k, conditions, exact) for space, vector in per_space]
        return _interleave([r for r in results if r], k)

    # -- information --------------------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Per space: fingerprint, modality, dim, count, index type and sizes; and totals.
        ``path`` is the folder, or the database URL with any password redacted."""
        return self._db().stats()

    # -- copying ------------------------------------------------------------------------------------------------
    def copy_to(self, dst: "str | os.PathLike | CaseIndex", *, batch_size: int = 2000, progress: Callable[[int], None] | None = None) -> AddReport:
        """Copy every case of this index to ``dst`` (a folder, a PostgreSQL URL or an open
        :class:`CaseIndex`): vectors and rows as they are (nothing is embedded again), each space
        with its model fingerprint, one transaction per batch. Cases ``dst`` already holds are
        skipped as duplicates, so a copy that was stopped is finished by running it again. The
        copies get ``dst``'s own ids. See :func:`copy_index`."""
        return copy_index(self, dst, batch_size=batch_size, progress=progress)


#: The optional fields of a row given to :meth:`CaseIndex.add_vectors` that a case stores.
_CASE_FIELDS = ("metadata", "task", "scores", "duration_s", "width", "height")


def copy_index(
    src: "str | os.PathLike | CaseIndex",
    dst: "str | os.PathLike | CaseIndex",
    *,
    batch_size: int = 2000,
    progress: Callable[[int], None] | None = None,
) -> AddReport:
    """Copy every case of ``src`` into ``dst`` (folders, PostgreSQL URLs or open indexes), both ways.

    Vectors and rows go as they are (nothing is embedded again; see :mod:`.copying`), one
    transaction of ``dst`` per ``batch_size`` cases. Returns an :class:`AddReport`: ``added``
    holds the new ids in ``dst``, ``duplicates`` the paths of cases ``dst`` had already (so
    running a stopped copy again finishes it). ``progress(n)`` gets the cases read per batch. A
    space whose modality ``dst`` holds from another model raises the one-line
    :class:`CaseIndexError` an add would, before anything is written.
    """
    source = src if isinstance(src, CaseIndex) else CaseIndex(src, readonly=True)
    try:
        target = dst if isinstance(dst, CaseIndex) else CaseIndex(dst)
        try:
            with target._writing():
                return copy_cases(source._db(), target._db(), batch_size=max(1, int(batch_size)), progress=progress)
        finally:
            if target is not dst:
                target.close()
    finally:
        if source is not src:
            source.close()


def _target(path: "str | os.PathLike | None", store: str | None) -> "str | os.PathLike":
    """What to open: a URL given as ``store`` or as ``path``, else the folder ``path``."""
    if store is not None and str(store).strip().lower() not in ("", "local"):
        if not is_url(store):
            raise CaseIndexError(f"store must be 'local' or a postgresql:// URL, not {str(store).split('://')[0]!r}")
        return str(store)
    if path is None:
        raise CaseIndexError("give the index folder, or a postgresql:// URL as path or store=")
    return path if is_url(path) else Path(path)


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
