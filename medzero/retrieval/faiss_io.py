"""FAISS helpers for the case index: build, save atomically, load, and search exactly or approximately.

Every index is an ``IndexIDMap2`` whose ids are the SQLite row ids of the cases. The inner index is
``IndexFlatIP`` (exact) below the approximate threshold and ``IndexHNSWFlat(d, M, METRIC_INNER_PRODUCT)``
above it. Vectors are L2-normalised, so the inner product is the cosine similarity.

HNSW cannot delete vectors. A removed case of an HNSW space stays in the graph as a *tombstone*:
its id is no longer in the database, and every search excludes it with an ``IDSelectorNot``. When
tombstones make up more than :data:`TOMBSTONE_REBUILD` of the graph the index is rebuilt.
"""
from __future__ import annotations

import logging
import os
from typing import Iterable

import faiss
import numpy as np

__all__ = [
    "HNSW_M",
    "HNSW_EF_CONSTRUCTION",
    "HNSW_EF_SEARCH",
    "TOMBSTONE_REBUILD",
    "new_index",
    "is_approximate",
    "index_type",
    "ids_of",
    "add",
    "remove",
    "search",
    "search_exact",
    "save_atomic",
    "load",
    "normalise",
]

_logger = logging.getLogger(__name__)

HNSW_M = 32
HNSW_EF_CONSTRUCTION = 40
#: efSearch used for approximate searches (raised to ``2 * k`` when k is larger).
HNSW_EF_SEARCH = 256
#: Rebuild an HNSW space when this fraction of its graph is removed cases.
TOMBSTONE_REBUILD = 0.1


def normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm, as C-contiguous float32; zero or non-finite rows raise ``ValueError``."""
    vectors = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
    if vectors.ndim == 1:
        vectors = vectors[None, :]
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    if not np.all(np.isfinite(norms)) or np.any(norms == 0):
        raise ValueError("a vector is zero or not finite")
    return np.ascontiguousarray(vectors / norms, dtype=np.float32)


def new_index(dim: int, approximate: bool) -> faiss.IndexIDMap2:
    if approximate:
        inner = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        inner.hnsw.efSearch = HNSW_EF_SEARCH
    else:
        inner = faiss.IndexFlatIP(dim)
    return faiss.IndexIDMap2(inner)  # the wrapper keeps a reference to ``inner``


def _inner(index: faiss.IndexIDMap2):
    return faiss.downcast_index(index.index)


def is_approximate(index: faiss.IndexIDMap2) -> bool:
    return isinstance(_inner(index), faiss.IndexHNSW)


def index_type(index: faiss.IndexIDMap2) -> str:
    inner = _inner(index)
    if isinstance(inner, faiss.IndexHNSW):
        return f"IDMap2,HNSW{inner.hnsw.nb_neighbors(1)},Flat,IP"
    return "IDMap2,Flat,IP"


def ids_of(index: faiss.IndexIDMap2) -> np.ndarray:
    """Every id held, tombstones included (int64, in storage order)."""
    return faiss.vector_to_array(index.id_map).astype(np.int64, copy=False)


def add(index: faiss.IndexIDMap2, vectors: np.ndarray, ids: np.ndarray) -> None:
    if len(ids):
        index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.ascontiguousarray(ids, dtype=np.int64))


def remove(index: faiss.IndexIDMap2, ids: Iterable[int]) -> bool:
    """Remove ``ids`` from a flat index; ``False`` for HNSW (the caller keeps them as tombstones)."""
    ids = np.fromiter(ids, dtype=np.int64)
    if is_approximate(index):
        return False
    if len(ids):
        index.remove_ids(faiss.IDSelectorBatch(ids))
    return True


def _storage(index: faiss.IndexIDMap2) -> np.ndarray:
    """A zero-copy (ntotal, d) view of the stored vectors (valid while ``index`` lives and is not modified)."""
    inner = _inner(index)
    flat = faiss.downcast_index(inner.storage) if isinstance(inner, faiss.IndexHNSW) else inner
    n, d = flat.ntotal, flat.d
    if n == 0:
        return np.zeros((0, d), dtype=np.float32)
    return faiss.rev_swig_ptr(flat.get_xb(), n * d).reshape(n, d)


def _topk(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top k per row of ``scores`` (nq, n), best first; pads with -inf / -1 like faiss."""
    nq, n = scores.shape
    out_d = np.full((nq, k), -np.inf, dtype=np.float32)
    out_i = np.full((nq, k), -1, dtype=np.int64)
    kk = min(k, n)
    if kk == 0:
        return out_d, out_i
    part = np.argpartition(-scores, kk - 1, axis=1)[:, :kk] if kk < n else np.tile(np.arange(n), (nq, 1))
    top = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-top, axis=1, kind="stable")
    part = np.take_along_axis(part, order, axis=1)
    out_d[:, :kk] = np.take_along_axis(top, order, axis=1)
    out_i[:, :kk] = ids[part]
    return out_d, out_i


def search_exact(
    index: faiss.IndexIDMap2,
    queries: np.ndarray,
    k: int,
    *,
    allowed: np.ndarray | None = None,
    tombstones: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force inner products over every stored vector (restricted to ``allowed`` ids when given)."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if not is_approximate(index) and (tombstones is None or len(tombstones) == 0):
        params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(allowed)) if allowed is not None else None
        return index.search(queries, k, params=params)
    xb, ids = _storage(index), ids_of(index)
    mask = None
    if allowed is not None:
        mask = np.isin(ids, allowed)
    if tombstones is not None and len(tombstones):
        keep = ~np.isin(ids, tombstones)
        mask = keep if mask is None else mask & keep
    if mask is None:
        if len(ids) == 0:
            return _topk(np.zeros((len(queries), 0), np.float32), ids, k)
        distances, positions = faiss.knn(queries, xb, k, metric=faiss.METRIC_INNER_PRODUCT)
        labels = np.where(positions >= 0, ids[np.clip(positions, 0, None)], -1)
        return distances, labels
    positions = np.flatnonzero(mask)
    return _topk(queries @ xb[positions].T, ids[positions], k)


def search(
    index: faiss.IndexIDMap2,
    queries: np.ndarray,
    k: int,
    *,
    allowed: np.ndarray | None = None,
    tombstones: np.ndarray | None = None,
    ef_search: int | None = None,
    exact_below: int = 20_000,
) -> tuple[np.ndarray, np.ndarray]:
    """The index's own search: exact for a flat index, HNSW otherwise.

    A filter that leaves fewer than ``exact_below`` candidates is searched exactly among them (an HNSW
    walk restricted to a few allowed nodes loses recall); a wider filter walks the graph with an
    ``IDSelector`` and an efSearch raised in proportion to how much it filters out.
    """
    if not is_approximate(index):
        return search_exact(index, queries, k, allowed=allowed, tombstones=tombstones)
    if allowed is not None and len(allowed) < exact_below:
        return search_exact(index, queries, k, allowed=allowed, tombstones=tombstones)
    ef_search = ef_search or HNSW_EF_SEARCH
    ef = max(ef_search, 2 * k)
    sel = None
    if allowed is not None:
        sel = faiss.IDSelectorBatch(np.ascontiguousarray(allowed, dtype=np.int64))
        ef = int(min(max(ef, ef * index.ntotal / max(1, len(allowed))), 4 * ef_search + 2 * k))
        if tombstones is not None and len(tombstones):
            allowed = np.setdiff1d(allowed, tombstones)
            sel = faiss.IDSelectorBatch(np.ascontiguousarray(allowed, dtype=np.int64))
    elif tombstones is not None and len(tombstones):
        sel = faiss.IDSelectorNot(faiss.IDSelectorBatch(np.ascontiguousarray(tombstones, dtype=np.int64)))
    params = faiss.SearchParametersHNSW(efSearch=int(ef))
    if sel is not None:
        params.sel = sel
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), k, params=params)


def rebuild(dim: int, vectors: np.ndarray, ids: np.ndarray, approximate: bool) -> faiss.IndexIDMap2:
    index = new_index(dim, approximate)
    add(index, vectors, ids)
    return index


def copy_as(index: faiss.IndexIDMap2, approximate: bool, tombstones: np.ndarray | None = None) -> faiss.IndexIDMap2:
    """The same live vectors in a flat or HNSW index (dropping tombstones)."""
    xb, ids = _storage(index), ids_of(index)
    if tombstones is not None and len(tombstones):
        keep = ~np.isin(ids, tombstones)
        xb, ids = xb[keep], ids[keep]
    return rebuild(index.d, np.array(xb, copy=True), ids, approximate)


def save_atomic(index: faiss.IndexIDMap2, path: str | os.PathLike) -> None:
    """Write ``index`` to a temporary file next to ``path``, fsync it, rename it over ``path``, fsync the directory."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        faiss.write_index(index, tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load(path: str | os.PathLike) -> faiss.IndexIDMap2 | None:
    """The index at ``path``, or ``None`` when it is missing or unreadable (the caller rebuilds it)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        return None
    try:
        index = faiss.read_index(path)
    except RuntimeError as exc:
        _logger.debug("cannot read %s: %s", path, exc)
        return None
    if not isinstance(index, faiss.IndexIDMap2):
        index = faiss.downcast_index(index)
    if not isinstance(index, faiss.IndexIDMap2):
        return None
    return index
