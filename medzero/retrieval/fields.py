"""Names shared by the stores of a case index (a leaf: the stores and their protocol import it)."""
from __future__ import annotations

__all__ = ["COPY_FIELDS"]

#: The fields of a case a store hands :func:`~medzero.retrieval.copying.copy_index` (besides its vector).
COPY_FIELDS = ("path", "sha256", "metadata", "task", "scores", "duration_s", "width", "height", "added_at")
