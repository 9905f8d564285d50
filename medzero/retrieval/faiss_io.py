"""FAISS helpers for the case index: build, save atomically, load, and search exactly or approximately.

Every index is an ``IndexIDMap2`` whose ids are the SQLite row ids of the cases. Vectors are
L2-normalised, so the inner product is the cosine similarity. The inner index is

- ``IndexFlatIP`` (exact) below the approximate threshold;
- above it, ``IndexRefineFlat(IndexPQFastScan(d, d/2, 4, METRIC_INNER_PRODUCT))``: a 4-bit product
  quantiser over pairs of dimensions (d/4 bytes a vector) scanned with SIMD "fast-scan" kernels
  picks ``k · REFINE_K_FACTOR`` candidates, and those are re-ranked with exact inner products
  over the full vectors. The scan reads 16× less memory than brute force, which is what a
  one-query search on CPU is bound by; the exact re-ranking keeps recall@10 near 1 even on
  isotropic random vectors, where graph indexes (HNSW) lose most of their recall. Training the
  quantiser needs a sample (``TRAIN_SAMPLE`` vectors), after which new vectors are only encoded:
  adding to an existing index never rebuilds it.

Neither approximate index can delete vectors or take an ``IDSelector``. A removed case stays as a
*tombstone*: its id is no longer in the database, and searches over-fetch and drop it. When
tombstones make up more than :data:`TOMBSTONE_REBUILD` of the index it is rebuilt. Filtered
searches over-fetch in proportion to how much the filter removes, and fall back to an exact scan
of the allowed vectors when that does not give ``k`` results.
"""
from __future__ import annotations

import logging
import os
from typing import Iterable

import faiss
import numpy as np

from ..core.files import replacing

__all__ = [
    "REFINE_K_FACTOR",
    "TRAIN_SAMPLE",
    "TOMBSTONE_REBUILD",
    "new_index",
    "empty_like",
    "merge_results",
    "add_from",
    "sample_rows",
    "training_sample",
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

#: Candidates re-ranked exactly per result wanted (k · factor from the quantised scan).
REFINE_K_FACTOR = 32
#: Vectors the product quantiser is trained on (a fixed-seed sample of the space).
TRAIN_SAMPLE = 65_536
#: Rebuild an approximate space when this fraction of it is removed cases.
TOMBSTONE_REBUILD = 0.1
#: Most candidates one approximate search fetches before it falls back to an exact scan.
MAX_FETCH = 4096


def normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm, as C-contiguous float32; zero or non-finite rows raise ``ValueError``."""
    vectors = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
    if vectors.ndim == 1:
        vectors = vectors[None, :]
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    if not np.all(np.isfinite(norms)) or np.any(norms == 0):
        raise ValueError("a vector is zero or not finite")
    return np.ascontiguousarray(vectors / norms, dtype=np.float32)


def _pq_subquantisers(dim: int) -> int:
    return dim // 2 if dim % 2 == 0 else dim


def new_index(dim: int, approximate: bool, train: np.ndarray | None = None) -> faiss.IndexIDMap2:
    """An empty index; an approximate one is trained on ``train`` (a sample of the space's vectors)."""
    if approximate:
        if train is None or len(train) == 0:
            raise ValueError("an approximate index needs vectors to train on")
        base = faiss.IndexPQFastScan(dim, _pq_subquantisers(dim), 4, faiss.METRIC_INNER_PRODUCT)
        inner = faiss.IndexRefineFlat(base)
        inner.k_factor = REFINE_K_FACTOR
        inner.train(np.ascontiguousarray(train, dtype=np.float32))
    else:
        inner = faiss.IndexFlatIP(dim)
    return faiss.IndexIDMap2(inner)  # faiss's Python wrappers keep references to their sub-indexes


def empty_like(index: faiss.IndexIDMap2) -> faiss.IndexIDMap2:
    """An empty index of the same type; an approximate one shares ``index``'s trained quantiser
    (copied, without its codes), so vectors added to either are encoded alike."""
    inner = _inner(index)
    if not isinstance(inner, faiss.IndexRefine):
        return new_index(index.d, approximate=False)
    base = faiss.downcast_index(inner.base_index)
    pq = faiss.IndexPQ(index.d, base.pq.M, base.pq.nbits, base.metric_type)
    pq.pq, pq.is_trained = base.pq, True
    empty = faiss.IndexRefineFlat(faiss.IndexPQFastScan(pq, base.bbs))
    empty.k_factor = inner.k_factor
    return faiss.IndexIDMap2(empty)


def merge_results(results: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The best ``k`` per query of several ``(scores, ids)`` searches of disjoint indexes (padded like faiss)."""
    if len(results) == 1:
        return results[0]
    scores = np.concatenate([d for d, _ in results], axis=1)
    ids = np.concatenate([i for _, i in results], axis=1)
    scores = np.where(ids >= 0, scores, -np.inf)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)


def sample_rows(count: int, size: int = TRAIN_SAMPLE) -> np.ndarray:
    """Sorted positions of a fixed-seed sample of ``size`` rows out of ``count`` (all when fewer)."""
    if count <= size:
        return np.arange(count)
    return np.sort(np.random.default_rng(0).choice(count, size, replace=False))


def training_sample(vectors: np.ndarray, size: int = TRAIN_SAMPLE) -> np.ndarray:
    """A fixed-seed sample of rows (all of them when there are fewer than ``size``)."""
    return vectors if len(vectors) <= size else vectors[sample_rows(len(vectors), size)]


def _inner(index: faiss.IndexIDMap2):
    return faiss.downcast_index(index.index)


def is_approximate(index: faiss.IndexIDMap2) -> bool:
    return isinstance(_inner(index), faiss.IndexRefine)


def index_type(index: faiss.IndexIDMap2) -> str:
    inner = _inner(index)
    if isinstance(inner, faiss.IndexRefine):
        base = faiss.downcast_index(inner.base_index)
        return f"IDMap2,PQ{base.pq.M}x4fs,RFlat,IP (k_factor {inner.k_factor:g})"
    return "IDMap2,Flat,IP"


def ids_of(index: faiss.IndexIDMap2) -> np.ndarray:
    """Every id held, tombstones included (int64, in storage order)."""
    return faiss.vector_to_array(index.id_map).astype(np.int64, copy=False)


def add(index: faiss.IndexIDMap2, vectors: np.ndarray, ids: np.ndarray) -> None:
    if len(ids):
        index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.ascontiguousarray(ids, dtype=np.int64))


def add_from(index: faiss.IndexIDMap2, other: faiss.IndexIDMap2) -> None:
    """Add every vector ``other`` holds, with its id (``other`` of the same kind, see :func:`empty_like`)."""
    add(index, _storage(other), ids_of(other))


def remove(index: faiss.IndexIDMap2, ids: Iterable[int]) -> bool:
    """Remove ``ids`` from a flat index; ``False`` for an approximate one (the caller keeps tombstones)."""
    ids = np.fromiter(ids, dtype=np.int64)
    if is_approximate(index):
        return False
    if len(ids):
        index.remove_ids(faiss.IDSelectorBatch(ids))
    return True


def _storage(index: faiss.IndexIDMap2) -> np.ndarray:
    """A zero-copy (ntotal, d) view of the stored vectors (valid while ``index`` lives and is not modified)."""
    inner = _inner(index)
    flat = faiss.downcast_index(inner.refine_index) if isinstance(inner, faiss.IndexRefine) else inner
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
    exact_below: int = 20_000,
) -> tuple[np.ndarray, np.ndarray]:
    """The index's own search: exact for a flat index, quantised scan + exact re-ranking otherwise.

    A filter that leaves fewer than ``exact_below`` candidates is searched exactly among them.
    Otherwise the approximate search over-fetches (in proportion to the share the filter and the
    tombstones remove), drops what is not allowed, and falls back to an exact scan of the allowed
    vectors for any query that is left with fewer than ``k`` results.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if not is_approximate(index):
        return search_exact(index, queries, k, allowed=allowed, tombstones=tombstones)
    if allowed is not None and len(allowed) < exact_below:
        return search_exact(index, queries, k, allowed=allowed, tombstones=tombstones)
    dead = tombstones if tombstones is not None and len(tombstones) else None
    if allowed is None and dead is None:
        return index.search(queries, k)
    live = max(1, index.ntotal - (len(dead) if dead is not None else 0))
    share = (len(allowed) / live) if allowed is not None else 1.0
    fetch = int(min(MAX_FETCH, max(2 * k, np.ceil(2 * k / max(share, 1e-9)) + (len(dead) if dead is not None else 0))))
    fetch = min(fetch, index.ntotal)
    scores, ids = index.search(queries, fetch)
    keep = ids >= 0
    if allowed is not None:
        keep &= np.isin(ids, allowed)
    if dead is not None:
        keep &= ~np.isin(ids, dead)
    out_d = np.full((len(queries), k), -np.inf, dtype=np.float32)
    out_i = np.full((len(queries), k), -1, dtype=np.int64)
    for row in range(len(queries)):
        got = np.flatnonzero(keep[row])[:k]
        if len(got) < k and fetch < index.ntotal:
            d, i = search_exact(index, queries[row : row + 1], k, allowed=allowed, tombstones=dead)
            out_d[row], out_i[row] = d[0], i[0]
        else:
            out_d[row, : len(got)], out_i[row, : len(got)] = scores[row, got], ids[row, got]
    return out_d, out_i


def rebuild(dim: int, vectors: np.ndarray, ids: np.ndarray, approximate: bool) -> faiss.IndexIDMap2:
    index = new_index(dim, approximate, training_sample(vectors) if approximate else None)
    add(index, vectors, ids)
    return index


def copy_as(index: faiss.IndexIDMap2, approximate: bool, tombstones: np.ndarray | None = None) -> faiss.IndexIDMap2:
    """The same live vectors in a flat or an approximate index (dropping tombstones; retrains the quantiser)."""
    xb, ids = _storage(index), ids_of(index)
    if tombstones is not None and len(tombstones):
        keep = ~np.isin(ids, tombstones)
        xb, ids = xb[keep], ids[keep]
    return rebuild(index.d, np.array(xb, copy=True), ids, approximate and len(ids) > 0)


def save_atomic(index: faiss.IndexIDMap2, path: str | os.PathLike) -> None:
    """Write ``index`` to a temporary file next to ``path``, fsync it, rename it over ``path``, fsync the directory."""
    with replacing(path) as tmp:
        faiss.write_index(index, tmp)


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
