"""Case retrieval: find earlier recordings and X-rays like a case, by text or by example.

    from medzero.retrieval import CaseIndex
    with CaseIndex("cases/") as index:
        index.add(["recordings/", "xrays/"], task="chest_xray_findings")
        hits = index.search_text("left pleural effusion", k=5, where="ViewPosition=PA")

    # The same API over PostgreSQL + pgvector (many writers; pip install 'medzero[postgres]'):
    with CaseIndex("postgresql://medzero@db.example/cases") as index: ...
    copy_index("cases/", "postgresql://medzero@db.example/cases")   # and back
"""
from __future__ import annotations

from .index import CaseIndex, copy_index
from .ingest import AddReport
from .spaces import space_key
from .store import parse_where
from .writer import IndexWriter

__all__ = ["CaseIndex", "AddReport", "IndexWriter", "copy_index", "parse_where", "space_key"]
