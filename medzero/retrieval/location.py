"""Where a case index lives, in a form another process can open it from (a Ray actor that writes).

:attr:`CaseIndex.location <medzero.retrieval.CaseIndex.location>` is a :class:`StoreLocation`:
the folder or database URL the index was opened with, credentials included, behind a ``repr``
and ``str`` that show the redacted name only. It pickles (Ray sends it to actors inside their
constructor arguments, which Ray may print when an actor fails), so what Ray prints is the
redacted name, never a password written into the URL. A password that comes from the
environment or a file (``PGPASSWORD``, ``MEDZERO_PG_PASSWORD_FILE``, ``~/.pgpass``) never enters
the object: each process reads its own.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from .backend import CaseStore, is_url, open_store

__all__ = ["StoreLocation"]


@dataclass(frozen=True)
class StoreLocation:
    """An index's folder or database URL (``target``, never shown) and its printable ``name``."""

    target: str = field(repr=False)
    name: str

    @classmethod
    def of(cls, target: "str | os.PathLike", name: str) -> "StoreLocation":
        return cls(os.fspath(target), str(name))

    @property
    def many_writers(self) -> bool:
        """Whether processes may write the index at once (a database: its transactions and
        ``UNIQUE (space, sha256)`` keep them apart; a folder has one writer at a time)."""
        return is_url(self.target)

    def open_store(self, **options: Any) -> CaseStore:
        """The index's store opened here, with a connection of this process's own (``readonly``,
        ``approx_threshold`` as :class:`~medzero.retrieval.CaseIndex` takes them)."""
        return open_store(self.target, options)

    def __repr__(self) -> str:
        return f"StoreLocation({self.name!r})"

    def __str__(self) -> str:
        return self.name
