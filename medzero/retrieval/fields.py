"""Names shared by the stores of a case index (a leaf: the stores and their protocol import it)."""
from __future__ import annotations

from typing import Any

from ..core.errors import CaseIndexError

__all__ = ["COPY_FIELDS", "check_space"]

#: The fields of a case a store hands :func:`~medzero.retrieval.copying.copy_index` (besides its vector).
COPY_FIELDS = ("path", "sha256", "metadata", "task", "scores", "duration_s", "width", "height", "added_at")


def check_space(name: str, row: Any, modality: str, fingerprint: str, dim: int | None = None) -> None:
    """The one-line :class:`CaseIndexError` both stores give when ``modality``'s space ``row`` (a
    ``SpaceRow`` or ``None``) holds another model's vectors, or vectors of another dimension than
    ``dim``; nothing when the vectors belong there."""
    if row is None:
        return
    if row.fingerprint != fingerprint:
        flag = f"--{modality}-model {row.model_ref or row.fingerprint}"
        raise CaseIndexError(
            f"index {name} holds {modality} embeddings from {row.fingerprint}; this session uses {fingerprint}"
            f" — open it with {flag} or use a new index"
        )
    if dim is not None and row.dim != dim:
        raise CaseIndexError(f"index {name} holds {row.dim}-dimensional {modality} vectors; these have {dim} dimensions")
