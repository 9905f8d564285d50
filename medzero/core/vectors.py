"""Embedding vectors: the one place rows are scaled to unit length.

Every embedding in medzero is float32, L2-normalised, shape (n, d); similarity is the inner product.
"""
from __future__ import annotations

import numpy as np

__all__ = ["l2_normalise"]


def l2_normalise(vectors: np.ndarray, *, strict: bool = False) -> np.ndarray:
    """Rows scaled to unit L2 norm, as C-contiguous float32 of shape (n, d).

    A 1-D input is one row. With ``strict``, a zero or non-finite row raises ``ValueError`` (a
    vector that came from outside cannot be trusted to be a real embedding); otherwise a zero row
    stays zero (norms are floored at 1e-12), which is what the encoders' own normalisation does.
    """
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim == 1:
        vectors = vectors[None, :]
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    if strict and (not np.all(np.isfinite(norms)) or np.any(norms == 0)):
        raise ValueError("a vector is zero or not finite")
    return np.ascontiguousarray(vectors / np.maximum(norms, 1e-12), dtype=np.float32)
