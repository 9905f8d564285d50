"""The storage of a case index: the SQLite database and, beside it, one append-only vector file per space.

``cases.sqlite`` holds every case's fields (path, sha256, metadata, scores, ...) and the spaces.
A case's vector is row ``vector_row`` of ``vectors-<space>.f32`` (``dim`` little-endian float32 per
row, in the order cases were added; ids and rows grow together). The database and the vector files
together are the source of truth a FAISS file is rebuilt from. Ids are ``INTEGER PRIMARY KEY
AUTOINCREMENT`` and are never reused, because an approximate index may still hold a removed id as a
tombstone.

Beside each vector file, ``vectors-<space>.idx`` holds per row the case id and a 64-bit key of its
sha256 (:func:`sha_keys`). It lets a writer check for duplicates with an in-memory sorted array
(see :meth:`~medzero.retrieval.spaces.SpaceSet.known_sha`) instead of a ``UNIQUE (space, sha256)``
index, whose random-key B-tree made every insert into a large table dirty most of its pages. A key
match is only a candidate: it is confirmed against the database by id, so removed cases and key
collisions are never reported as duplicates. The idx file is derived data: when it is missing or
short it is rewritten from the database.

**Appending** a batch of one space is, inside one transaction (:meth:`Store.insert_cases`):

1. write the vectors and the idx rows at the space's committed row count ``spaces.vector_rows``,
   truncate anything beyond them, and fsync both files (and the directory when a file is new) in
   a thread while
2. the case rows go in with their ``vector_row`` (multi-row INSERTs of up to
   :data:`ROWS_PER_INSERT` rows); once the fsyncs are done ``spaces.vector_rows`` is raised and
   the caller commits (WAL, ``synchronous=FULL``): no transaction commits before its vectors are
   on disk.

File rows past the committed count are a torn write of a transaction that never committed: readers
never read past the rows the database names, and the next append overwrites and truncates them.
**Removing** a case deletes its row only; its file row becomes garbage. There is no compaction yet:
``vector_rows`` minus the space's case count is what one would reclaim.

**Earlier format.** Databases written before the vector files held each vector as a BLOB column of
``cases`` with a ``UNIQUE (space, sha256)`` index. Such a database is read as it is (:attr:`Store.legacy`);
the first write migrates it once under the write lock (:meth:`Store.migrate`): the vectors are
copied to the files and fsynced, then one transaction rebuilds ``cases`` with ``vector_row`` and
records the row counts. A writer killed mid-migration leaves the old database as it was.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sqlite3
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from ..core.errors import CaseIndexError
from ..core.files import fsync_dir

__all__ = ["Store", "SpaceRow", "CaseRow", "parse_where", "where_sql", "utc_now", "sha_keys", "IDX_DTYPE"]

_logger = logging.getLogger(__name__)

#: ``PRAGMA user_version`` of a database whose vectors live in the vector files.
FORMAT = 2

_CASES = """
CREATE TABLE IF NOT EXISTS {name} (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    space       TEXT NOT NULL REFERENCES spaces(space),
    path        TEXT NOT NULL,
    sha256      TEXT NOT NULL,
    modality    TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    metadata    TEXT NOT NULL DEFAULT '{{}}',
    task        TEXT,
    scores      TEXT,
    duration_s  REAL,
    width       INTEGER,
    height      INTEGER,
    added_at    TEXT NOT NULL,
    vector_row  INTEGER NOT NULL
);
"""
_CASE_INDEXES = """
CREATE INDEX IF NOT EXISTS cases_path ON cases(path);
CREATE INDEX IF NOT EXISTS cases_space ON cases(space, id);
"""
SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS spaces (
    space       TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL UNIQUE,
    modality    TEXT NOT NULL,
    dim         INTEGER NOT NULL,
    model_ref   TEXT,
    created_at  TEXT NOT NULL,
    vector_rows INTEGER NOT NULL DEFAULT 0
);
"""
    + _CASES.format(name="cases")
    + _CASE_INDEXES
)
#: The fields of a case row other than its id and vector (in this order in every INSERT).
_FIELDS = ("space", "path", "sha256", "modality", "fingerprint", "metadata", "task", "scores", "duration_s", "width", "height", "added_at")

#: Case rows per INSERT statement (capped by the library's limit on bound parameters): one
#: statement per 1,000 rows binds and steps in C, 15–20 % faster than ``executemany`` row by row.
ROWS_PER_INSERT = 1000

#: One row of a ``.idx`` file: the case id and the 64-bit key of its sha256.
IDX_DTYPE = np.dtype([("id", "<i8"), ("key", "<u8")])

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


# -- the vector files ------------------------------------------------------------------------------


def sha_keys(shas: Sequence[str]) -> np.ndarray:
    """64-bit keys of sha256 strings (of any string: the first 8 bytes of its BLAKE2b digest), as uint64."""
    if not len(shas):
        return np.zeros(0, dtype=np.uint64)
    digests = b"".join(hashlib.blake2b(str(s).encode(), digest_size=8).digest() for s in shas)
    return np.frombuffer(digests, dtype="<u8").astype(np.uint64)


def _write_rows(path: str, row_bytes: int, row: int, data: np.ndarray, sync: bool = True) -> bool:
    """Write ``data`` at row ``row`` of the file, drop anything after it, and fsync it (and its
    directory when the file is new) unless ``sync`` is false (then see :func:`_sync_in_thread`).
    Rows before ``row`` must all be there. Returns whether the file was created."""
    created = not os.path.exists(path)
    payload = memoryview(np.ascontiguousarray(data).view(np.uint8).reshape(-1))
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            offset, size = row * row_bytes, os.fstat(fd).st_size
            if size < offset:
                raise CaseIndexError(
                    f"{path} holds {size // row_bytes} rows but the database names {row}; the file was truncated or"
                    " replaced (restore it from a backup)"
                )
            while len(payload):
                written = os.pwrite(fd, payload, offset)
                payload, offset = payload[written:], offset + written
            if size > offset:  # rows of a transaction that never committed
                os.ftruncate(fd, offset)
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        if created and sync:
            fsync_dir(os.path.dirname(path))
    except OSError as exc:
        raise CaseIndexError(f"cannot write {path}: {exc.strerror or exc}") from None
    return created


def _sync_in_thread(paths: Sequence[str], directory: str | None) -> Callable[[], None]:
    """fsync ``paths`` (and ``directory``, when a file in it is new) in a thread; returns the
    function that waits for it and raises a one-line :class:`CaseIndexError` if a sync failed.
    The files' data pages were written before: fsync flushes the file, whichever descriptor."""
    failed: list[str] = []

    def run() -> None:
        for path in paths:
            try:
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as exc:
                failed.append(f"cannot write {path}: {exc.strerror or exc}")
        if directory is not None:
            try:
                fsync_dir(directory)
            except OSError as exc:
                failed.append(f"cannot sync {directory}: {exc.strerror or exc}")

    thread = threading.Thread(target=run, name="medzero-fsync", daemon=True)
    thread.start()

    def wait() -> None:
        thread.join()
        if failed:
            raise CaseIndexError(failed[0])

    return wait


def _map_rows(path: str, rows: int, dim: int) -> np.ndarray:
    """The first ``rows`` vectors of a vector file, memory-mapped read-only."""
    if rows == 0:
        return np.zeros((0, dim), dtype=np.float32)
    try:
        return np.memmap(path, dtype="<f4", mode="r", shape=(rows, dim))
    except FileNotFoundError:
        raise CaseIndexError(f"the vector file {path} is missing; the index's stored vectors are lost (restore it from a backup)") from None
    except (OSError, ValueError):
        held = os.path.getsize(path) // (4 * dim) if os.path.exists(path) else 0
        raise CaseIndexError(
            f"the vector file {path} holds {held} rows but the database names {rows}; it was truncated or replaced"
            " (restore it from a backup)"
        ) from None


# -- the store -------------------------------------------------------------------------------------


class Store:
    """One SQLite connection in WAL mode (readers never wait for the writer) and the vector files beside it."""

    def __init__(self, path: str, *, readonly: bool = False):
        self.path = path
        self.directory = os.path.dirname(os.path.abspath(path))
        self._legacy: tuple[int, bool] | None = None
        try:
            self.db = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA busy_timeout = 30000")
            if not readonly:
                self.db.execute("PRAGMA journal_mode = WAL")
                self.db.execute("PRAGMA synchronous = FULL")
                if not self.has_schema():
                    self.db.executescript(f"BEGIN IMMEDIATE; {SCHEMA} PRAGMA user_version = {FORMAT}; COMMIT;")
        except sqlite3.DatabaseError as exc:
            self.rollback_quietly()
            raise CaseIndexError(f"cannot open the case database {path}: {exc}") from None

    def close(self) -> None:
        self.db.close()

    def rollback_quietly(self) -> None:
        try:
            self.rollback()
        except (AttributeError, sqlite3.Error):
            pass

    def data_version(self) -> int:
        """Changes whenever another connection commits (``PRAGMA data_version``)."""
        return int(self.db.execute("PRAGMA data_version").fetchone()[0])

    def has_schema(self) -> bool:
        return self.db.execute("SELECT 1 FROM sqlite_master WHERE name = 'cases'").fetchone() is not None

    @property
    def legacy(self) -> bool:
        """Whether the database is of the earlier format (each vector a BLOB in its case row)."""
        version = int(self.db.execute("PRAGMA schema_version").fetchone()[0])
        if self._legacy is None or self._legacy[0] != version:
            columns = {r[1] for r in self.db.execute("PRAGMA table_info(cases)")}
            self._legacy = (version, "vector" in columns)
        return self._legacy[1]

    # -- transactions ----------------------------------------------------------------------------
    def begin(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def next_id(self) -> int:
        """The id the next inserted case gets (AUTOINCREMENT: one above the table's sequence);
        stable while this connection holds the write transaction."""
        row = self.db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'cases'").fetchone()
        return int(row[0]) + 1 if row else 1

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

    # -- the vector files ----------------------------------------------------------------------------
    def vector_path(self, space: str) -> str:
        return os.path.join(self.directory, f"vectors-{space}.f32")

    def idx_path(self, space: str) -> str:
        return os.path.join(self.directory, f"vectors-{space}.idx")

    def vector_rows(self, space: str) -> int:
        """Rows of the space's vector file written by committed transactions (0 for a new space)."""
        if self.legacy:
            return 0
        row = self.db.execute("SELECT vector_rows FROM spaces WHERE space = ?", (space,)).fetchone()
        return int(row[0]) if row else 0

    def idx_rows(self, space: str, start: int, stop: int) -> np.ndarray:
        """Rows ``start..stop`` of the space's idx file (case id, sha key); call with the write lock
        held: a missing or short idx file is first rewritten from the database."""
        self._complete_idx(space, stop)
        count = max(0, stop - start)
        if count == 0:
            return np.zeros(0, dtype=IDX_DTYPE)
        return np.fromfile(self.idx_path(space), dtype=IDX_DTYPE, count=count, offset=start * IDX_DTYPE.itemsize)

    def _complete_idx(self, space: str, rows: int) -> None:
        path = self.idx_path(space)
        have = os.path.getsize(path) // IDX_DTYPE.itemsize if os.path.exists(path) else 0
        if have >= rows:
            return
        fix = np.zeros(rows - have, dtype=IDX_DTYPE)
        fix["id"] = -1  # rows of removed cases
        found = self.db.execute(
            "SELECT vector_row, id, sha256 FROM cases WHERE space = ? AND vector_row >= ? AND vector_row < ?", (space, have, rows)
        ).fetchall()
        if found:
            at = np.array([r[0] for r in found], dtype=np.int64) - have
            fix["id"][at] = [r[1] for r in found]
            fix["key"][at] = sha_keys([r[2] for r in found])
        _logger.debug("rewrote rows %d..%d of %s from the database", have, rows, path)
        _write_rows(path, IDX_DTYPE.itemsize, have, fix)

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

    def shas(self, space: str) -> Iterator[str]:
        """The sha256 of every case of ``space`` (in no particular order)."""
        for (sha,) in self.db.execute("SELECT sha256 FROM cases WHERE space = ?", (space,)):
            yield sha

    def confirm_sha(self, space: str, ids: Iterable[int], shas: Iterable[str]) -> set[str]:
        """Those of ``shas`` that the cases ``ids`` of ``space`` have (candidates found by key)."""
        wanted, found = set(shas), set()
        ids = [int(i) for i in ids]
        for start in range(0, len(ids), 500):
            part = ids[start : start + 500]
            marks = ",".join("?" for _ in part)
            found.update(
                r[0] for r in self.db.execute(f"SELECT sha256 FROM cases WHERE space = ? AND id IN ({marks})", [space, *part])
            )
        return found & wanted

    def insert_cases(
        self, space: SpaceRow, cases: Sequence[Mapping[str, Any]], vectors: np.ndarray | None = None, *, keys: np.ndarray | None = None
    ) -> list[int]:
        """Append cases of one space in the open transaction; their ids, in order.

        The vectors (``vectors``, or each case's ``"vector"``) and idx rows (``keys``: the
        :func:`sha_keys` of the cases' sha256, if already computed) are written at the space's
        committed row count first and fsynced in a thread while the rows go in (multi-row
        INSERTs); the space's row count is raised only after the fsyncs succeeded. Ids are
        AUTOINCREMENT and the caller holds the writer lock, so they are the next ``len(cases)``
        numbers after the table's sequence, which is checked.
        """
        if not cases:
            return []
        if self.legacy:
            raise RuntimeError("migrate the case database before adding to it")
        vectors = np.stack([c["vector"] for c in cases]) if vectors is None else vectors
        vectors = np.ascontiguousarray(vectors, dtype="<f4")
        if vectors.shape != (len(cases), space.dim):
            raise ValueError(f"{len(cases)} cases but vectors of shape {vectors.shape} for a {space.dim}-d space")
        start = self.next_id()
        first_row = self.vector_rows(space.space)
        idx = np.empty(len(cases), dtype=IDX_DTYPE)
        idx["id"] = np.arange(start, start + len(cases))
        idx["key"] = sha_keys([c["sha256"] for c in cases]) if keys is None else keys
        self._complete_idx(space.space, first_row)
        paths = (self.vector_path(space.space), self.idx_path(space.space))
        # positional: tests wrap _write_rows(*args) to stop a writer between the two files
        created = _write_rows(paths[0], 4 * space.dim, first_row, vectors, False)
        created = _write_rows(paths[1], IDX_DTYPE.itemsize, first_row, idx, False) or created
        wait = _sync_in_thread(paths, self.directory if created else None)
        try:
            self._insert_rows(space, cases, first_row)
        finally:
            wait()
        after = int(self.db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'cases'").fetchone()[0])
        if after != start + len(cases) - 1:
            raise RuntimeError(f"case ids are not contiguous ({start}..{after} for {len(cases)} rows)")
        self.db.execute("UPDATE spaces SET vector_rows = ? WHERE space = ?", (first_row + len(cases), space.space))
        return list(range(start, after + 1))

    def _insert_rows(self, space: SpaceRow, cases: Sequence[Mapping[str, Any]], first_row: int) -> None:
        """The case rows, :data:`ROWS_PER_INSERT` to a statement (the rest one by one)."""
        now = utc_now()
        values = [
            (
                space.space, c["path"], c["sha256"], space.modality, space.fingerprint,
                json.dumps(dict(c["metadata"]), default=str, ensure_ascii=False) if c.get("metadata") else "{}",
                c.get("task"), json.dumps(dict(c["scores"])) if c.get("scores") is not None else None,
                c.get("duration_s"), c.get("width"), c.get("height"), c.get("added_at") or now, first_row + j,
            )
            for j, c in enumerate(cases)
        ]
        columns = len(_FIELDS) + 1
        one = "(" + ", ".join("?" for _ in range(columns)) + ")"
        head = f"INSERT INTO cases ({', '.join(_FIELDS)}, vector_row) VALUES "
        per = max(1, min(ROWS_PER_INSERT, self.db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // columns))
        whole = len(values) - len(values) % per if per > 1 else 0
        if whole:
            statement = head + ", ".join([one] * per)
            for start in range(0, whole, per):
                self.db.execute(statement, [field for row in values[start : start + per] for field in row])
        if whole < len(values):
            self.db.executemany(head + one, values[whole:])

    def vectors(
        self, space: str, dim: int, ids: np.ndarray | None = None, *, after: int | None = None, chunk: int = 50_000
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(ids, vectors)`` of a space in id order and in chunks: all of them, those above id
        ``after``, or those in ``ids``. Runs of consecutive rows are views of the memory-mapped
        file (valid while the caller holds them; the rows never change)."""
        if self.legacy:
            yield from self._legacy_vectors(space, dim, ids, after, chunk)
            return
        if ids is None:
            rows = self.db.execute(
                "SELECT id, vector_row FROM cases WHERE space = ? AND id > ? ORDER BY id", (space, -1 if after is None else int(after))
            ).fetchall()
        else:
            rows = []
            for start in range(0, len(ids), 500):
                part = [int(i) for i in ids[start : start + 500]]
                marks = ",".join("?" for _ in part)
                rows += self.db.execute(f"SELECT id, vector_row FROM cases WHERE space = ? AND id IN ({marks})", [space, *part]).fetchall()
            rows.sort()
        if not rows:
            return
        pairs = np.array(rows, dtype=np.int64).reshape(-1, 2)
        case_ids, file_rows = pairs[:, 0], pairs[:, 1]
        # Read after the rows: they name only rows that committed transactions had fsynced.
        table = _map_rows(self.vector_path(space), int(file_rows.max()) + 1, dim)
        for start in range(0, len(pairs), chunk):
            r = file_rows[start : start + chunk]
            if r[-1] - r[0] == len(r) - 1 and (len(r) < 2 or bool(np.all(np.diff(r) == 1))):
                part = np.asarray(table[r[0] : r[-1] + 1])
            else:
                part = np.asarray(table[r])
            yield case_ids[start : start + chunk], part

    def _legacy_vectors(self, space: str, dim: int, ids, after, chunk) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        if ids is None:
            last = -1 if after is None else int(after)
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
                path = os.fspath(item)
                rows = self.db.execute("SELECT id, space FROM cases WHERE path = ? OR path = ?", (path, os.path.abspath(path))).fetchall()
            found.update((int(r[0]), r[1]) for r in rows)
        return sorted(found.items())

    def delete(self, ids: Sequence[int]) -> None:
        """Delete case rows (their file rows become garbage: files are append-only)."""
        for start in range(0, len(ids), 500):
            part = [int(i) for i in ids[start : start + 500]]
            marks = ",".join("?" for _ in part)
            self.db.execute(f"DELETE FROM cases WHERE id IN ({marks})", part)

    # -- the earlier format ----------------------------------------------------------------------------
    def migrate(self, chunk: int = 50_000) -> bool:
        """Move an earlier-format database's vector BLOBs into the vector files (write lock held);
        ``False`` when there is nothing to migrate.

        The files are written from row 0 and fsynced first; then one transaction rebuilds ``cases``
        without the BLOB column and the ``UNIQUE (space, sha256)`` index, numbers each case's
        ``vector_row`` in id order, keeps the id sequence, and records each space's row count.
        """
        if not self.legacy:
            return False
        counts: dict[str, int] = {}
        for key, space in self.spaces().items():
            written, last = 0, -1
            while True:
                rows = self.db.execute(
                    "SELECT id, sha256, vector FROM cases WHERE space = ? AND id > ? ORDER BY id LIMIT ?", (key, last, chunk)
                ).fetchall()
                if not rows:
                    break
                ids, vectors = _unpack([(r[0], r[2]) for r in rows], space.dim)
                idx = np.empty(len(rows), dtype=IDX_DTYPE)
                idx["id"], idx["key"] = ids, sha_keys([r[1] for r in rows])
                _write_rows(self.vector_path(key), 4 * space.dim, written, vectors)
                _write_rows(self.idx_path(key), IDX_DTYPE.itemsize, written, idx)
                written, last = written + len(rows), rows[-1][0]
            counts[key] = written
        fields = ", ".join(("id",) + _FIELDS)
        self.begin()
        try:
            in_db = dict(self.db.execute("SELECT space, count(*) FROM cases GROUP BY space").fetchall())
            if any(in_db.get(k, 0) != n for k, n in counts.items()) or set(in_db) - set(counts):
                raise RuntimeError(f"the case database changed while it was migrated ({in_db} != {counts})")
            seq = self.db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'cases'").fetchone()
            self.db.execute(_CASES.format(name="cases_v2"))
            self.db.execute(
                f"INSERT INTO cases_v2 ({fields}, vector_row)"
                f" SELECT {fields}, row_number() OVER (PARTITION BY space ORDER BY id) - 1 FROM cases"
            )
            self.db.execute("DROP TABLE cases")
            self.db.execute("ALTER TABLE cases_v2 RENAME TO cases")
            for statement in filter(str.strip, _CASE_INDEXES.split(";")):
                self.db.execute(statement)
            self.db.execute("ALTER TABLE spaces ADD COLUMN vector_rows INTEGER NOT NULL DEFAULT 0")
            self.db.executemany("UPDATE spaces SET vector_rows = ? WHERE space = ?", [(n, k) for k, n in counts.items()])
            if seq is not None:  # ids are never reused, not even those of removed cases
                self.db.execute("DELETE FROM sqlite_sequence WHERE name IN ('cases', 'cases_v2')")
                self.db.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('cases', ?)", (int(seq[0]),))
            self.db.execute(f"PRAGMA user_version = {FORMAT}")
            self.commit()
        except BaseException:
            self.rollback()
            raise
        return True


def _unpack(rows: list[tuple[int, bytes]], dim: int) -> tuple[np.ndarray, np.ndarray]:
    ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    vectors = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), dim)
    return ids, vectors
