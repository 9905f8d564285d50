"""The SQLite side of a case index: spaces, cases (with their vectors) and metadata filters.

The database is the source of truth. Every case row holds its vector as a float32 BLOB, so a FAISS
file can always be rebuilt from it; ids are ``INTEGER PRIMARY KEY AUTOINCREMENT`` and are never
reused, because an HNSW graph may still hold a removed id as a tombstone.
"""
from __future__ import annotations

import json
import logging
import re
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from ..core.errors import CaseIndexError

__all__ = ["Store", "SpaceRow", "CaseRow", "parse_where", "where_sql", "utc_now"]

_logger = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS spaces (
    space       TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL UNIQUE,
    modality    TEXT NOT NULL,
    dim         INTEGER NOT NULL,
    model_ref   TEXT,
    created_at  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS cases (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    space       TEXT NOT NULL REFERENCES spaces(space),
    path        TEXT NOT NULL,
    sha256      TEXT NOT NULL,
    modality    TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    metadata    TEXT NOT NULL DEFAULT '{}',
    task        TEXT,
    scores      TEXT,
    duration_s  REAL,
    width       INTEGER,
    height      INTEGER,
    added_at    TEXT NOT NULL,
    vector      BLOB NOT NULL,
    UNIQUE (space, sha256)
);
CREATE INDEX IF NOT EXISTS cases_path ON cases(path);
CREATE INDEX IF NOT EXISTS cases_space ON cases(space, id);
"""

#: Columns a filter may name directly; any other key is looked up in the metadata JSON.
COLUMNS = {"id", "path", "sha256", "modality", "fingerprint", "task", "duration_s", "width", "height", "added_at"}
_OPS = ("==", "!=", ">=", "<=", "=", ">", "<")
_CONDITION = re.compile(r"^\s*([A-Za-z_][\w.\-]*)\s*(==|!=|>=|<=|=|>|<)\s*(.*?)\s*$")


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class SpaceRow:
    space: str
    fingerprint: str
    modality: str
    dim: int
    model_ref: str | None
    created_at: str


@dataclass(frozen=True)
class CaseRow:
    id: int
    path: str
    modality: str
    metadata: dict[str, Any]
    task: str | None
    scores: dict[str, float] | None


# -- filters ---------------------------------------------------------------------------------------


def _number(text: str) -> float | int | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return int(value) if value.is_integer() and re.fullmatch(r"[+-]?\d+", text.strip()) else value


def parse_where(where: "str | Sequence[str] | Mapping[str, Any] | None") -> list[tuple[str, str, Any]]:
    """``(key, op, value)`` conditions from a string (``"ViewPosition=PA, score.edema>0.5"``), a list of
    such strings, or a mapping (``{"ViewPosition": "PA"}``: equality; a list value means any of them;
    an ``(op, value)`` tuple value gives the operator). Raises :class:`CaseIndexError` on a bad one.
    """
    if where is None:
        return []
    conditions: list[tuple[str, str, Any]] = []
    if isinstance(where, Mapping):
        for key, value in where.items():
            if isinstance(value, tuple) and len(value) == 2 and value[0] in _OPS:
                conditions.append((str(key), "=" if value[0] == "==" else value[0], value[1]))
            elif isinstance(value, (list, set, frozenset)):
                conditions.append((str(key), "in", list(value)))
            else:
                conditions.append((str(key), "=", value))
        return conditions
    parts = [where] if isinstance(where, str) else list(where)
    for part in parts:
        for text in str(part).split(","):
            if not text.strip():
                continue
            match = _CONDITION.match(text)
            if not match:
                raise CaseIndexError(
                    f"cannot read the filter {text.strip()!r}; write KEY=VALUE, KEY!=VALUE or KEY>NUMBER "
                    "(e.g. ViewPosition=PA, score.pleural_effusion>0.5)"
                )
            key, op, raw = match.groups()
            quoted = len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\""
            raw = raw[1:-1] if quoted else raw
            number = None if quoted else _number(raw)
            if op in (">", "<", ">=", "<=") and number is None:
                raise CaseIndexError(f"the filter {text.strip()!r} compares with {raw!r}, which is not a number")
            conditions.append((key, "=" if op == "==" else op, raw if number is None else (number, raw)))
    return conditions


def where_sql(conditions: list[tuple[str, str, Any]]) -> tuple[str, list[Any]]:
    """A SQL boolean expression (``"1"`` when there is nothing to filter) and its parameters."""
    clauses, params = [], []
    for key, op, value in conditions:
        if key in COLUMNS or (key.startswith("case.") and key[5:] in COLUMNS):
            expr, expr_params = key.removeprefix("case."), []
        elif key.startswith(("score.", "scores.")):
            expr, expr_params = "json_extract(scores, ?)", [_json_path(key.split(".", 1)[1])]
        else:
            expr, expr_params = "json_extract(metadata, ?)", [_json_path(key.removeprefix("metadata."))]
        texts = value if isinstance(value, tuple) else None  # (number, text as typed)
        if op == "in":
            marks = ",".join("?" for _ in value)
            clauses.append(f"{expr} IN ({marks})")
            params += expr_params + [_sql_value(v) for v in value]
        elif op in ("=", "!="):
            if texts is not None:  # typed 2: match the number 2 and the text "2"
                clause = f"({expr} = ? OR {expr} = ?)"
                params += expr_params + [texts[0]] + expr_params + [texts[1]]
            else:
                clause = f"{expr} = ?"
                params += expr_params + [_sql_value(value)]
            clauses.append(clause if op == "=" else f"NOT coalesce({clause}, 0)")
        else:
            number = texts[0] if texts is not None else value
            if not isinstance(number, (int, float)):
                raise CaseIndexError(f"the filter on {key} compares with {value!r}, which is not a number")
            clauses.append(f"(typeof({expr}) IN ('integer', 'real') AND {expr} {op} ?)")
            params += expr_params + expr_params + [number]
    return (" AND ".join(clauses) or "1"), params


def _json_path(key: str) -> str:
    return "$." + ".".join('"' + part.replace('"', '""') + '"' for part in key.split("."))


def _sql_value(value: Any) -> Any:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float, str)) or value is None:
        return value
    return json.dumps(value)


# -- the store -------------------------------------------------------------------------------------


class Store:
    """One SQLite connection in WAL mode (readers never wait for the writer)."""

    def __init__(self, path: str, *, readonly: bool = False):
        self.path = path
        try:
            self.db = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA busy_timeout = 30000")
            if not readonly:
                self.db.execute("PRAGMA journal_mode = WAL")
                self.db.execute("PRAGMA synchronous = FULL")
                self.db.executescript(SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise CaseIndexError(f"cannot open the case database {path}: {exc}") from None

    def close(self) -> None:
        self.db.close()

    def data_version(self) -> int:
        """Changes whenever another connection commits (``PRAGMA data_version``)."""
        return int(self.db.execute("PRAGMA data_version").fetchone()[0])

    def has_schema(self) -> bool:
        return self.db.execute("SELECT 1 FROM sqlite_master WHERE name = 'cases'").fetchone() is not None

    # -- transactions ----------------------------------------------------------------------------
    def begin(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        self.db.execute("COMMIT")

    def rollback(self) -> None:
        if self.db.in_transaction:
            self.db.execute("ROLLBACK")

    # -- spaces ------------------------------------------------------------------------------------
    def spaces(self) -> dict[str, SpaceRow]:
        if not self.has_schema():
            return {}
        rows = self.db.execute("SELECT space, fingerprint, modality, dim, model_ref, created_at FROM spaces ORDER BY created_at")
        return {r[0]: SpaceRow(*r) for r in rows}

    def insert_space(self, row: SpaceRow) -> None:
        self.db.execute(
            "INSERT OR IGNORE INTO spaces (space, fingerprint, modality, dim, model_ref, created_at) VALUES (?, ?, ?, ?, ?, ?)",
            (row.space, row.fingerprint, row.modality, row.dim, row.model_ref, row.created_at),
        )

    # -- cases ---------------------------------------------------------------------------------------
    def count(self, space: str | None = None) -> int:
        if not self.has_schema():
            return 0
        if space is None:
            return int(self.db.execute("SELECT count(*) FROM cases").fetchone()[0])
        return int(self.db.execute("SELECT count(*) FROM cases WHERE space = ?", (space,)).fetchone()[0])

    def ids(self, space: str) -> np.ndarray:
        rows = self.db.execute("SELECT id FROM cases WHERE space = ? ORDER BY id", (space,)).fetchall()
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    def known_sha(self, space: str, shas: Sequence[str]) -> set[str]:
        found: set[str] = set()
        for start in range(0, len(shas), 500):
            chunk = list(shas[start : start + 500])
            marks = ",".join("?" for _ in chunk)
            found.update(
                r[0] for r in self.db.execute(f"SELECT sha256 FROM cases WHERE space = ? AND sha256 IN ({marks})", [space, *chunk])
            )
        return found

    def insert_cases(self, space: SpaceRow, cases: Sequence[Mapping[str, Any]]) -> list[int]:
        """Insert cases of one space in the open transaction; their ids, in order.

        One ``executemany``: ids are AUTOINCREMENT and the caller holds the writer lock, so they
        are the next ``len(cases)`` numbers after the table's sequence, which is checked.
        """
        if not cases:
            return []
        before = self.db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'cases'").fetchone()
        start = int(before[0]) + 1 if before else 1
        now = utc_now()
        self.db.executemany(
            "INSERT INTO cases (space, path, sha256, modality, fingerprint, metadata, task, scores, duration_s, width, height,"
            " added_at, vector) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                (
                    space.space, c["path"], c["sha256"], space.modality, space.fingerprint,
                    json.dumps(dict(c.get("metadata") or {}), default=str, ensure_ascii=False),
                    c.get("task"), json.dumps(dict(c["scores"])) if c.get("scores") is not None else None,
                    c.get("duration_s"), c.get("width"), c.get("height"), c.get("added_at") or now,
                    np.ascontiguousarray(c["vector"], dtype=np.float32).tobytes(),
                )
                for c in cases
            ),
        )
        after = int(self.db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'cases'").fetchone()[0])
        if after != start + len(cases) - 1:
            raise RuntimeError(f"case ids are not contiguous ({start}..{after} for {len(cases)} rows)")
        return list(range(start, after + 1))

    def vectors(self, space: str, dim: int, ids: np.ndarray | None = None, chunk: int = 50_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(ids, vectors)`` of a space in chunks (all of them, or those in ``ids``)."""
        if ids is None:
            last = -1
            while True:
                rows = self.db.execute(
                    "SELECT id, vector FROM cases WHERE space = ? AND id > ? ORDER BY id LIMIT ?", (space, last, chunk)
                ).fetchall()
                if not rows:
                    return
                yield _unpack(rows, dim)
                last = rows[-1][0]
        else:
            for start in range(0, len(ids), 500):
                part = [int(i) for i in ids[start : start + 500]]
                marks = ",".join("?" for _ in part)
                rows = self.db.execute(
                    f"SELECT id, vector FROM cases WHERE space = ? AND id IN ({marks}) ORDER BY id", [space, *part]
                ).fetchall()
                if rows:
                    yield _unpack(rows, dim)

    def rows(self, ids: Iterable[int]) -> dict[int, CaseRow]:
        ids = [int(i) for i in ids]
        out: dict[int, CaseRow] = {}
        for start in range(0, len(ids), 500):
            part = ids[start : start + 500]
            marks = ",".join("?" for _ in part)
            for r in self.db.execute(
                f"SELECT id, path, modality, metadata, task, scores FROM cases WHERE id IN ({marks})", part
            ):
                out[r[0]] = CaseRow(r[0], r[1], r[2], json.loads(r[3] or "{}"), r[4], json.loads(r[5]) if r[5] else None)
        return out

    def filter_ids(self, space: str, conditions: list[tuple[str, str, Any]]) -> np.ndarray:
        clause, params = where_sql(conditions)
        try:
            rows = self.db.execute(f"SELECT id FROM cases WHERE space = ? AND ({clause}) ORDER BY id", [space, *params]).fetchall()
        except sqlite3.OperationalError as exc:
            raise CaseIndexError(f"cannot apply the filter: {exc}") from None
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    def resolve(self, ids_or_paths: Iterable[Any]) -> list[tuple[int, str]]:
        """``(id, space)`` for ids and paths that are in the index (paths may match several cases)."""
        found: dict[int, str] = {}
        for item in ids_or_paths:
            if isinstance(item, (int, np.integer)) or (isinstance(item, str) and item.strip().isdigit()):
                rows = self.db.execute("SELECT id, space FROM cases WHERE id = ?", (int(item),)).fetchall()
            else:
                import os

                path = os.fspath(item)
                rows = self.db.execute("SELECT id, space FROM cases WHERE path = ? OR path = ?", (path, os.path.abspath(path))).fetchall()
            found.update((int(r[0]), r[1]) for r in rows)
        return sorted(found.items())

    def delete(self, ids: Sequence[int]) -> None:
        for start in range(0, len(ids), 500):
            part = [int(i) for i in ids[start : start + 500]]
            marks = ",".join("?" for _ in part)
            self.db.execute(f"DELETE FROM cases WHERE id IN ({marks})", part)


def _unpack(rows: list[tuple[int, bytes]], dim: int) -> tuple[np.ndarray, np.ndarray]:
    ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    vectors = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), dim)
    return ids, vectors
