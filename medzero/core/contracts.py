"""Contracts between core and the layers above it that are not data: the :class:`Encoder` protocol.

The ingest pipeline (:mod:`medzero.core.ingest`) and the modalities call ``encoder.embed``; the
encoders come from :mod:`medzero.encoders` and the plug-ins, above core. The protocol lives here so
that core names what it calls without importing the layer that implements it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, Sequence, runtime_checkable

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

__all__ = ["Encoder"]


@runtime_checkable
class Encoder(Protocol):
    modality: str  # "audio" or "image"
    model_id: str  # what was loaded: a hub id or a directory
    fingerprint: str  # model id + revision, or model id + weights hash
    dim: int
    logit_scale: float
    device: str

    def embed(self, items: Sequence[Any]) -> np.ndarray:
        """(n, dim) float32, L2-normalised, for already-loaded items of this modality."""

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        """(n, dim) float32, L2-normalised."""

    # Optional: ``preprocess_config() -> dict``, the preprocessing the loaded model really applies
    # (JSON-able). Model packs record it and ``medzero models verify`` compares it.
