"""The index's writer API: what an engine that computes vectors elsewhere needs to commit them.

:meth:`CaseIndex.writer() <medzero.retrieval.CaseIndex.writer>` holds the index's one write lock
for a ``with`` block and yields an :class:`IndexWriter`. While the block runs no other process
writes, so what the writer answers (the cases a space holds, the space new vectors go to) stays
true until the engine commits. Commits take the path :meth:`CaseIndex.add` takes
(:meth:`SpaceSet.insert <medzero.retrieval.spaces.SpaceSet.insert>`): vector files written and
fsynced, one SQLite transaction, then FAISS. The ray engine's driver is its user
(``medzero/distributed/_index.py``); nothing outside this package reads the index's internals.
Over a PostgreSQL index (:mod:`.pg`) no lock is held: other processes may commit meanwhile, and
the database's ``UNIQUE (space, sha256)`` keeps them from duplicating a case.

    with index.writer() as writer:
        row = writer.space_row("image", encoder.fingerprint, encoder.dim, writer.model_ref("image"))
        known = writer.known_sha256(row.space, [case["sha256"] for case in cases])
        writer.insert([(row, case) for case in cases if case["sha256"] not in known])
        writer.save()
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

from ..core.errors import CaseIndexError
from .spaces import space_key
from .store import SpaceRow

if TYPE_CHECKING:
    from .backend import CaseStore

__all__ = ["IndexWriter"]


class IndexWriter:
    """Commits to one case index while its write lock is held (valid inside ``with index.writer()`` only)."""

    def __init__(self, spaces: "CaseStore", model_ref: Callable[[str], str | None], encoders: Mapping[str, Any]):
        self._spaces = spaces
        self._model_ref = model_ref
        self._encoders = encoders
        self._open = True

    def _check(self) -> "CaseStore":
        if not self._open:
            raise CaseIndexError(f"the writer of index {self._spaces.name} was used after its with block ended")
        return self._spaces

    def close(self) -> None:
        """End the writer (the ``with`` block does): the lock it stood for is no longer held."""
        self._open = False

    # -- models ---------------------------------------------------------------------------------------
    def model_ref(self, modality: str) -> str | None:
        """The model ``modality``'s vectors are made with: the one the index was opened with, else
        the one its space remembers, else the registered default (``None`` when there is none).
        An engine loads this model where it embeds, and it is stored with a new space."""
        self._check()
        return self._model_ref(modality)

    def loaded_encoders(self) -> dict[str, Any]:
        """The encoders this index session has loaded already, by modality (none is loaded here):
        an engine reads their facts (fingerprint, dimension) instead of loading the models again."""
        self._check()
        return dict(self._encoders)

    # -- spaces ---------------------------------------------------------------------------------------
    def space_row(self, modality: str, fingerprint: str, dim: int, model_ref: str | None) -> SpaceRow:
        """The space vectors of ``modality`` from the encoder ``fingerprint`` go to: the index's
        space for the modality, or a new row (written by the first :meth:`insert` into it).

        Raises the one-line :class:`CaseIndexError` every add raises when the index holds another
        model's vectors, or vectors of another dimension, for ``modality``: ask before embedding
        to fail before the work, as the local engine does."""
        return self._check().row_for(modality, fingerprint, dim, model_ref)

    def digests(self, fingerprint: str) -> np.ndarray:
        """The sorted sha256 digests (numpy ``S32``) of the cases in ``fingerprint``'s space, empty
        when there is none: compact enough to send to every task that reads files, so files the
        index holds are skipped before they are decoded. Keys a caller gave :meth:`CaseIndex.add_vectors`
        that are not a sha256 are left out (no file hashes to them)."""
        found = []
        for sha in self._check().shas(space_key(fingerprint)):
            try:
                found.append(bytes.fromhex(sha))
            except ValueError:
                continue
        return np.sort(np.array(found, dtype="S32")) if found else np.zeros(0, dtype="S32")

    def known_sha256(self, space: str, shas: Sequence[str]) -> set[str]:
        """Those of ``shas`` already indexed in the space keyed ``space`` (:attr:`SpaceRow.space`).

        Ask at each commit: files hashed elsewhere were checked against the cases of the run's
        start, and the same file may come twice."""
        return self._check().known_sha(space, shas)

    # -- committing -----------------------------------------------------------------------------------
    def insert(self, cases: Sequence[tuple[SpaceRow, dict[str, Any]]]) -> list[int]:
        """Add ``(space row, case)`` pairs in one transaction; the new case ids, in order.

        A case has ``path``, ``sha256`` and ``vector`` (unit length, float32, the space's
        dimension), and optionally ``metadata``, ``task``, ``scores``, ``duration_s``, ``width``
        and ``height``. Vector files are written and fsynced first, then the database commits,
        then the vectors join the FAISS indexes (saved at the index's checkpoints), so a process
        killed at any point leaves an index that opens consistent. In a PostgreSQL index, where
        many processes write at once, a case whose content another writer committed to the space
        after :meth:`known_sha256` answered is refused by the database and left out of the ids."""
        return [i for i in self._check().insert(cases) if i is not None]

    def save(self) -> None:
        """Write every FAISS file that lags the database now (what an add does when it ends), so the
        next open has nothing to catch up."""
        self._check().save(force=True, tail_ok=True)
