"""The case index in PostgreSQL with pgvector: one database that many processes write at once.

``CaseIndex("postgresql://user@host/db")`` (or ``CaseIndex(path, store=url)``) opens it; every
public method behaves as over an index folder. Needs ``pip install 'medzero[postgres]'`` (psycopg 3
and the ``pgvector`` client) and a server with the ``vector`` extension.

Tables (created by versioned migrations, :data:`MIGRATIONS`; ``medzero_schema`` lists those applied)::

    spaces (space PK, fingerprint UNIQUE, modality UNIQUE, dim, model_ref, created_at, cases)
    cases  (id identity PK, space -> spaces, path, sha256, modality, fingerprint, metadata jsonb,
            task, scores jsonb, duration_s, width, height, added_at, embedding vector,
            UNIQUE (space, sha256))

- **Spaces.** One per modality (``UNIQUE (modality)``): a second model for a modality gets the
  local store's one-line error, also when two writers create the space at once.
- **Many writers.** No lock file: each batch is one transaction, and the database refuses a
  second copy of a content in a space (``ON CONFLICT (space, sha256) DO NOTHING``), so concurrent
  writers never duplicate a case; the one that lost reports it as a duplicate.
  Another process (a Ray actor) writes directly with its own ``CaseIndex(url)`` and
  :meth:`~medzero.retrieval.CaseIndex.writer`, or :meth:`PgStore.insert`.
- **Search.** Up to ``approx_threshold`` cases a space is scanned exactly. The commit that takes
  it there builds its HNSW index (inner product of unit vectors; ``CREATE INDEX CONCURRENTLY``,
  so other writers go on): a partial expression index ``cases_hnsw_<space>`` on
  ``(embedding::vector(dim)) WHERE space = ...``, so spaces of different dimensions share one
  table. HNSW then gives a candidate pool (``hnsw.ef_search`` = max(100, 4k)) that is re-ranked
  exactly, with pgvector's iterative scan so a filtered search still finds ``k`` matches (and an
  exact scan when it does not). ``exact=True`` always scans.
- **Credentials** come from the URL, libpq's ``PG*`` environment and ``~/.pgpass``, or the file
  ``MEDZERO_PG_PASSWORD_FILE`` names (used when neither the URL nor ``PGPASSWORD`` has one). The
  store names itself by the URL with the password replaced by ``***`` (:func:`redact`) in
  ``repr``, ``stats()["path"]``, errors and logs. Case metadata is what the modality plug-ins let
  through their PHI allow-list, as for the local store, and is never logged.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import threading
from contextlib import contextmanager
from typing import Any, Iterator, Sequence
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import numpy as np

from ..core.errors import CaseIndexError, one_line
from ..core.results import Hit
from ..core.version import __version__
from .fields import COPY_FIELDS, check_space
from .spaces import space_key
from .store import COLUMNS, SpaceRow, utc_now

__all__ = ["PgStore", "redact", "MIGRATIONS", "SCHEMA_VERSION", "require_postgres", "connect"]

_logger = logging.getLogger(__name__)

#: pgvector's HNSW index takes vectors of up to this many dimensions; larger spaces are scanned.
HNSW_MAX_DIM = 2000
#: Candidates HNSW hands the exact re-rank (and its ``hnsw.ef_search``): at least this many, and
#: ``POOL_FACTOR`` × k, at most pgvector's limit of 1000.
MIN_POOL, POOL_FACTOR, MAX_POOL = 100, 4, 1000

#: Each migration runs in one transaction, in order; ``medzero_schema`` records the versions done.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        "CREATE EXTENSION IF NOT EXISTS vector",
        """CREATE TABLE spaces (
            space       text PRIMARY KEY,
            fingerprint text NOT NULL UNIQUE,
            modality    text NOT NULL UNIQUE,
            dim         integer NOT NULL CHECK (dim > 0),
            model_ref   text,
            created_at  text NOT NULL,
            cases       bigint NOT NULL DEFAULT 0
        )""",
        """CREATE TABLE cases (
            id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            space       text NOT NULL REFERENCES spaces(space),
            path        text NOT NULL,
            sha256      text NOT NULL,
            modality    text NOT NULL,
            fingerprint text NOT NULL,
            metadata    jsonb NOT NULL DEFAULT '{}',
            task        text,
            scores      jsonb,
            duration_s  double precision,
            width       integer,
            height      integer,
            added_at    text NOT NULL,
            embedding   vector NOT NULL,
            UNIQUE (space, sha256)
        )""",
        # Vectors stay in the row (a 512-d one is just over TOAST's 2 kB target): exact scans read
        # no TOAST table, and the planner's cost of a scan is what it costs.
        "ALTER TABLE cases ALTER COLUMN embedding SET STORAGE MAIN",
        "CREATE INDEX cases_path ON cases (path)",
        "CREATE INDEX cases_space ON cases (space, id)",
    ),
}
SCHEMA_VERSION = max(MIGRATIONS)
#: Serialises migrations of one database between processes (any constant; "medzero" in ASCII).
_MIGRATION_LOCK = 0x6D65647A65726F

_NUMERIC_COLUMNS = {"id", "duration_s", "width", "height"}
_STAGE = """CREATE TEMP TABLE IF NOT EXISTS medzero_stage (
    ord integer, space text, path text, sha256 text, modality text, fingerprint text, metadata text,
    task text, scores text, duration_s double precision, width integer, height integer, added_at text,
    embedding vector) ON COMMIT DELETE ROWS"""
_STAGE_TYPES = ["int4", "text", "text", "text", "text", "text", "text", "text", "text", "float8", "int4", "int4", "text", "vector"]
_CASE_COLUMNS = "space, path, sha256, modality, fingerprint, metadata, task, scores, duration_s, width, height, added_at, embedding"


def require_postgres():
    """psycopg and the pgvector client, or the one-line error naming the extra that installs them."""
    try:
        import psycopg
        from pgvector.psycopg import register_vector  # noqa: F401
    except ImportError:
        raise CaseIndexError("a PostgreSQL case index needs psycopg and pgvector: pip install 'medzero[postgres]'") from None
    return psycopg


# -- credentials ------------------------------------------------------------------------------------------


def redact(url: str) -> str:
    """``url`` with its password (in the authority or a ``password=`` parameter) replaced by ``***``."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            auth, host = netloc.rsplit("@", 1)
            if ":" in auth:
                auth = auth.split(":", 1)[0] + ":***"
            netloc = f"{auth}@{host}"
        query = urlencode([(k, "***" if k.lower() == "password" else v) for k, v in parse_qsl(parts.query, keep_blank_values=True)], safe="*/")
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return "postgresql://***"


def _secrets(url: str) -> list[str]:
    """The password texts a message must never show (the URL's, decoded and as typed)."""
    from urllib.parse import unquote

    found = []
    try:
        parts = urlsplit(url)
        password, query = parts.password, parts.query
    except ValueError:  # malformed (say an unclosed "[" host): take what sits where a password would
        match = re.match(r"^[A-Za-z][\w+.-]*://[^/@:]*:([^/@]*)@", url)
        password, query = (match.group(1) if match else None), url.partition("?")[2]
    if password:
        found += [password, unquote(password)]
    found += [v for k, v in parse_qsl(query) if k.lower() == "password"]
    return [s for s in found if s]


def _password_file() -> str | None:
    """The first line of the file ``MEDZERO_PG_PASSWORD_FILE`` names (a Docker/Kubernetes secret)."""
    path = os.environ.get("MEDZERO_PG_PASSWORD_FILE")
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return f.readline().rstrip("\r\n") or None
    except OSError as exc:
        raise CaseIndexError(f"cannot read MEDZERO_PG_PASSWORD_FILE {path}: {exc.strerror}") from None


def connect(url: str, *, readonly: bool = False):
    """A psycopg connection (autocommit: transactions are explicit) with pgvector's types.

    The password: the URL's, else ``PGPASSWORD``, else ``MEDZERO_PG_PASSWORD_FILE``'s, else libpq's
    ``~/.pgpass`` (``PGPASSFILE``). Errors are one line and never show the password.
    """
    psycopg = require_postgres()
    extra: dict[str, Any] = {}
    secrets = _secrets(url)
    if not secrets and not os.environ.get("PGPASSWORD"):
        password = _password_file()
        if password:
            extra["password"] = password
            secrets.append(password)
    try:
        conn = psycopg.connect(url, autocommit=True, connect_timeout=_connect_timeout(), **extra)
    except psycopg.Error as exc:
        raise CaseIndexError(f"cannot connect to {redact(url)}: {_scrub(exc, secrets)}") from None
    conn.execute("SET client_min_messages = warning")  # no NOTICE per batch ("already exists, skipping")
    if readonly:
        conn.execute("SET default_transaction_read_only = on")
    return conn


def _connect_timeout() -> int:
    """Seconds to wait for the server: ``PGCONNECT_TIMEOUT`` (libpq's variable), else 10."""
    text = os.environ.get("PGCONNECT_TIMEOUT", "").strip()
    return int(text) if text.isdigit() and int(text) > 0 else 10


def _scrub(error: BaseException | str, secrets: Sequence[str]) -> str:
    text = one_line(error)
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


# -- filters ------------------------------------------------------------------------------------------


def where_pg(conditions: list[tuple[str, str, Any]]) -> tuple[str, list[Any]]:
    """:func:`~.store.parse_where` conditions as a PostgreSQL boolean expression and its parameters,
    with the local store's meaning: metadata and scores are JSON (``#>`` paths), a number typed
    without quotes matches the JSON number and the text, and order comparisons hold for numbers only."""
    clauses, params = [], []
    for key, op, value in conditions:
        column = key.removeprefix("case.") if key in COLUMNS or (key.startswith("case.") and key[5:] in COLUMNS) else None
        if column is not None:
            clause, more = _column_clause(column, op, value)
        else:
            field, path = ("scores", key.split(".", 1)[1]) if key.startswith(("score.", "scores.")) else ("metadata", key.removeprefix("metadata."))
            clause, more = _json_clause(f"{field} #> %s::text[]", path.split("."), op, value)
        clauses.append(clause)
        params += more
    return (" AND ".join(clauses) or "TRUE"), params


def _column_clause(column: str, op: str, value: Any) -> tuple[str, list[Any]]:
    numeric = column in _NUMERIC_COLUMNS
    texts = value if isinstance(value, tuple) else None  # (number, text as typed)
    if op == "in":
        items = [v for v in value if isinstance(v, (int, float)) and not isinstance(v, bool)] if numeric else [str(v) for v in value]
        return (f"{column} = ANY(%s)", [items])
    if op in ("=", "!="):
        if texts is not None:
            wanted = texts[0] if numeric else texts[1]
        elif numeric:
            wanted = value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
        else:
            wanted = str(value)
        clause = "FALSE" if wanted is None else f"{column} = %s"
        params = [] if wanted is None else [wanted]
        return (clause if op == "=" else f"NOT coalesce({clause}, FALSE)"), params
    number = texts[0] if texts is not None else value
    if not isinstance(number, (int, float)):
        raise CaseIndexError(f"the filter on {column} compares with {value!r}, which is not a number")
    return (f"{column} {op} %s" if numeric else "FALSE"), ([number] if numeric else [])


def _json_clause(expr: str, path: list[str], op: str, value: Any) -> tuple[str, list[Any]]:
    texts = value if isinstance(value, tuple) else None
    if op == "in":
        wanted = [json.dumps(w) for v in value for w in _json_values(v)]
        return (f"{expr} = ANY(%s::jsonb[])", [path, wanted])
    if op in ("=", "!="):
        wanted = [json.dumps(texts[0]), json.dumps(texts[1])] if texts is not None else [json.dumps(w) for w in _json_values(value)]
        clause = f"{expr} = ANY(%s::jsonb[])"
        return (clause if op == "=" else f"NOT coalesce({clause}, FALSE)"), [path, wanted]
    number = texts[0] if texts is not None else value
    if not isinstance(number, (int, float)):
        raise CaseIndexError(f"the filter compares with {value!r}, which is not a number")
    clause = f"(CASE WHEN jsonb_typeof({expr}) = 'number' THEN ({expr})::float8 {op} %s ELSE FALSE END)"
    return clause, [path, path, float(number)]


def _json_values(value: Any) -> list[Any]:
    """The JSON values an equality with ``value`` matches (SQLite's json_extract reads true as 1)."""
    if isinstance(value, bool):
        return [value, int(value)]
    if value is None or isinstance(value, (int, float, str)):
        return [value]
    return [value]


def _literal(key: str) -> str:
    """A space key (12 hex digits, :func:`space_key`) as an SQL string literal; anything else is refused."""
    if not re.fullmatch(r"[0-9a-f]{1,64}", key):
        raise CaseIndexError(f"{key!r} is not a space key")
    return f"'{key}'"


def _jsonable(value: Any) -> Any:
    """A value PostgreSQL's jsonb takes: no NUL characters, no NaN or infinity (null instead)."""
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {_jsonable(str(k)): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (int, bool)) or value is None:
        return value
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    return _jsonable(str(value))


def _json_text(value: Any) -> str | None:
    return None if value is None else json.dumps(_jsonable(dict(value)), ensure_ascii=False)


# -- the store ----------------------------------------------------------------------------------------------


class PgStore:
    """One PostgreSQL database holding a case index (see the module's text)."""

    def __init__(self, url: str, *, readonly: bool = False, approx_threshold: int = 100_000):
        self.name = redact(url)
        self.readonly = readonly
        self.approx_threshold = int(approx_threshold)
        self._secrets = _secrets(url)
        self._mutex = threading.RLock()
        self._rows: dict[str, SpaceRow] = {}
        self._counts: dict[str, int] = {}
        self._indexes: dict[str, str] = {}
        self._building: set[str] = set()
        self.conn = connect(url, readonly=readonly)
        try:
            self._migrate() if not readonly else self._check_schema()
            from pgvector.psycopg import register_vector

            register_vector(self.conn)
            # A filtered HNSW scan goes on past ef_search until it has enough rows (pgvector >= 0.8).
            self.conn.execute("SELECT set_config('hnsw.iterative_scan', 'strict_order', false)")
            self.refresh()
        except BaseException:
            self.conn.close()
            raise

    # -- schema ------------------------------------------------------------------------------------
    def _version(self) -> int | None:
        """The newest migration applied, or ``None`` when the database has no medzero tables."""
        found = self.conn.execute("SELECT to_regclass('medzero_schema') IS NOT NULL").fetchone()[0]
        if not found:
            return None
        return int(self.conn.execute("SELECT coalesce(max(version), 0) FROM medzero_schema").fetchone()[0])

    def _too_new(self, version: int | None) -> None:
        if version is not None and version > SCHEMA_VERSION:
            raise CaseIndexError(
                f"index {self.name} was written by a newer medzero (schema version {version}; medzero {__version__}"
                f" knows up to {SCHEMA_VERSION}): upgrade medzero to open it"
            )

    def _check_schema(self) -> None:
        version = self._version()
        if version is None:
            raise CaseIndexError(f"{self.name} is not a case index (no medzero tables); add cases to it first")
        self._too_new(version)
        if version < SCHEMA_VERSION:
            raise CaseIndexError(
                f"index {self.name} has schema version {version}; this medzero needs {SCHEMA_VERSION}: open it once without --readonly to upgrade it"
            )

    def _migrate(self) -> None:
        """Apply the migrations this database lacks, each in one transaction, one process at a time."""
        self._too_new(self._version())
        for version in sorted(MIGRATIONS):
            try:
                with self.conn.transaction():
                    self.conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
                    self.conn.execute(
                        "CREATE TABLE IF NOT EXISTS medzero_schema (version integer PRIMARY KEY,"
                        " applied_at timestamptz NOT NULL DEFAULT now(), medzero text NOT NULL)"
                    )
                    current = self._version() or 0
                    self._too_new(current)
                    if current >= version:
                        continue
                    for statement in MIGRATIONS[version]:
                        self.conn.execute(statement)
                    self.conn.execute("INSERT INTO medzero_schema (version, medzero) VALUES (%s, %s)", (version, __version__))
                _logger.info("index %s: applied schema migration %d", self.name, version)
            except CaseIndexError:
                raise
            except Exception as exc:
                raise CaseIndexError(f"cannot prepare the case index in {self.name} (migration {version}): {self._scrub(exc)}") from None

    def _scrub(self, error: BaseException | str) -> str:
        return _scrub(error, self._secrets)

    # -- lifetime -------------------------------------------------------------------------------------------
    def close(self) -> None:
        with self._mutex:
            if not self.conn.closed:
                self.conn.close()

    def _live(self):
        if self.conn.closed:
            raise CaseIndexError(f"index {self.name} is closed")
        return self.conn

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Nothing is held between transactions: the database keeps writers apart."""
        if self.readonly:
            raise CaseIndexError(f"index {self.name} is open read-only")
        self.refresh()
        yield

    @contextmanager
    def _sql(self, what: str):
        """Run database work; a database error becomes a one-line :class:`CaseIndexError`."""
        import psycopg

        with self._mutex:
            conn = self._live()
            try:
                yield conn
            except psycopg.Error as exc:
                raise CaseIndexError(f"index {self.name}: cannot {what}: {self._scrub(exc)}") from None

    def refresh(self) -> None:
        """Re-read the spaces (and their case counts): other processes may have added some."""
        with self._sql("read the spaces") as conn:
            rows = conn.execute(
                "SELECT s.space, s.fingerprint, s.modality, s.dim, s.model_ref, s.created_at, s.cases,"
                " (SELECT i.indisvalid FROM pg_index i WHERE i.indexrelid = to_regclass('cases_hnsw_' || s.space))"
                " FROM spaces s ORDER BY s.created_at, s.space"
            ).fetchall()
        self._rows = {r[0]: SpaceRow(r[0], r[1], r[2], int(r[3]), r[4], r[5]) for r in rows}
        self._counts = {r[0]: int(r[6]) for r in rows}
        #: Spaces whose HNSW index is built and valid (one being built concurrently is not yet).
        self._indexes = {r[0]: f"cases_hnsw_{r[0]}" for r in rows if r[7]}
        self._building = {r[0] for r in rows if r[7] is False}

    def save(self, force: bool = False, *, tail_ok: bool = False) -> None:
        """Nothing to do: every commit is complete in the database."""

    @property
    def dirty(self) -> bool:
        return False

    # -- spaces ----------------------------------------------------------------------------------------------
    def space_rows(self) -> list[SpaceRow]:
        return list(self._rows.values())

    def for_modality(self, modality: str) -> SpaceRow | None:
        return next((r for r in self._rows.values() if r.modality == modality), None)

    def check_fingerprint(self, modality: str, fingerprint: str) -> None:
        """The local store's one-line error when ``modality``'s space holds another model's vectors."""
        check_space(self.name, self.for_modality(modality), modality, fingerprint)

    def row_for(self, modality: str, fingerprint: str, dim: int, model_ref: str | None) -> SpaceRow:
        row = self.for_modality(modality)
        if row is not None:
            check_space(self.name, row, modality, fingerprint, dim)
            return row
        return SpaceRow(space_key(fingerprint), fingerprint, modality, int(dim), model_ref, utc_now())

    def _ensure_space(self, conn, row: SpaceRow) -> None:
        """Create the space in the open transaction unless another writer did (as in the local
        store, it exists only if the cases that made it commit). A writer that creates the same
        modality at once waits on the unique index until this one ends; if it used another model
        it then gets :meth:`check_fingerprint`'s error and its transaction rolls back."""
        conn.execute(
            "INSERT INTO spaces (space, fingerprint, modality, dim, model_ref, created_at) VALUES (%s, %s, %s, %s, %s, %s)"
            " ON CONFLICT DO NOTHING",
            (row.space, row.fingerprint, row.modality, row.dim, row.model_ref, row.created_at),
        )
        found = conn.execute("SELECT space, fingerprint, dim, model_ref FROM spaces WHERE modality = %s", (row.modality,)).fetchone()
        if found is None or found[0] != row.space:
            winner = SpaceRow(found[0], found[1], row.modality, int(found[2]), found[3], "") if found else None
            if winner is not None and winner.fingerprint != row.fingerprint:
                self._rows[winner.space] = winner
                self.check_fingerprint(row.modality, row.fingerprint)
            raise CaseIndexError(f"index {self.name}: the space {row.fingerprint} could not be created (another space has its key)")
        if int(found[2]) != row.dim:
            raise CaseIndexError(f"index {self.name} holds {found[2]}-dimensional {row.modality} vectors; these have {row.dim} dimensions")

    # -- cases -----------------------------------------------------------------------------------------------
    def known_sha(self, key: str, shas: Sequence[str]) -> set[str]:
        if not len(shas):
            return set()
        with self._sql("look up duplicates") as conn:
            rows = conn.execute("SELECT sha256 FROM cases WHERE space = %s AND sha256 = ANY(%s)", (key, list(shas))).fetchall()
        return {r[0] for r in rows}

    def shas(self, key: str) -> Iterator[str]:
        with self._sql("read the case hashes") as conn:
            rows = conn.execute("SELECT sha256 FROM cases WHERE space = %s", (key,)).fetchall()
        return iter([r[0] for r in rows])

    def insert(self, rows: Sequence[tuple[SpaceRow, dict[str, Any]]], *, vectors: np.ndarray | None = None) -> list[int | None]:
        """Insert case rows in one transaction (binary COPY into a staging table, then one
        ``INSERT ... ON CONFLICT (space, sha256) DO NOTHING``); per row its id, or ``None`` where
        the space already held that content (committed by another writer meanwhile)."""
        if not len(rows):
            return []
        new_spaces = [row for row in {r.space: r for r, _ in rows}.values() if row.space not in self._rows]
        now = utc_now()
        with self._sql("add cases") as conn, conn.transaction():
            for row in new_spaces:
                self._ensure_space(conn, row)
            conn.execute(_STAGE)  # once per session (IF NOT EXISTS); rows go at commit
            with conn.cursor() as cur:
                with cur.copy(
                    "COPY medzero_stage (ord, space, path, sha256, modality, fingerprint, metadata, task, scores,"
                    " duration_s, width, height, added_at, embedding) FROM STDIN WITH (FORMAT BINARY)"
                ) as copy:
                    copy.set_types(_STAGE_TYPES)
                    for j, (row, case) in enumerate(rows):
                        vector = case["vector"] if vectors is None else vectors[j]
                        copy.write_row(self._stage_row(j, row, case, vector, now))
                found = cur.execute(
                    f"INSERT INTO cases ({_CASE_COLUMNS}) SELECT space, path, sha256, modality, fingerprint, metadata::jsonb, task,"
                    " scores::jsonb, duration_s, width, height, added_at, embedding FROM medzero_stage ORDER BY ord"
                    " ON CONFLICT (space, sha256) DO NOTHING RETURNING id, space, sha256"
                ).fetchall()
                added: dict[str, int] = {}
                for _, space, _ in found:
                    added[space] = added.get(space, 0) + 1
                for space, n in sorted(added.items()):
                    cur.execute("UPDATE spaces SET cases = cases + %s WHERE space = %s", (n, space))
        if new_spaces:
            self.refresh()
        ids = {(space, sha): int(i) for i, space, sha in found}
        out: list[int | None] = []
        for row, case in rows:  # a content twice in one batch: the first copy has the id
            out.append(ids.pop((row.space, case["sha256"]), None))
        for space, n in added.items():
            self._counts[space] = self._counts.get(space, 0) + n
            self._maybe_index(self._rows[space])
        return out

    def _maybe_index(self, row: SpaceRow) -> None:
        """Build the space's HNSW index once it holds ``approx_threshold`` cases (after the commit
        that got it there). Built in one go it costs a fraction of keeping it up to date from the
        first case, and smaller spaces are scanned exactly anyway. ``CONCURRENTLY``: other writers
        go on adding meanwhile (the index takes their rows too), and searches scan exactly until it
        is valid. When another writer is building it, this one leaves it to them; an invalid index
        a killed builder left is dropped and built again."""
        import psycopg
        from psycopg import sql

        if row.space in self._indexes or row.dim > HNSW_MAX_DIM or self._counts.get(row.space, 0) < self.approx_threshold:
            return
        name = sql.Identifier(f"cases_hnsw_{row.space}")
        _logger.info("index %s: the %s space holds %d cases; building its HNSW index", self.name, row.modality, self._counts[row.space])
        with self._mutex:
            conn = self._live()
            try:
                if row.space in self._building and not self._builder_alive(row.space):
                    conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(name))
                conn.execute("SELECT set_config('maintenance_work_mem', '512MB', false)")
                conn.execute(
                    sql.SQL("CREATE INDEX CONCURRENTLY IF NOT EXISTS {} ON cases USING hnsw ((embedding::vector({})) vector_ip_ops)"
                            " WHERE space = {}").format(name, sql.Literal(row.dim), sql.Literal(row.space))
                )
                conn.execute("RESET maintenance_work_mem")
                conn.execute("ANALYZE cases")  # planner statistics that know the space is large: HNSW over a sort
            except psycopg.Error as exc:
                raise CaseIndexError(f"index {self.name}: cannot build the HNSW index: {self._scrub(exc)}") from None
        self.refresh()

    def _builder_alive(self, space: str) -> bool:
        """Whether some session is running the CREATE INDEX of ``space``'s HNSW index now."""
        found = self.conn.execute(
            "SELECT count(*) FROM pg_stat_progress_create_index p JOIN pg_class c ON c.oid = p.index_relid WHERE c.relname = %s",
            (f"cases_hnsw_{space}",),
        ).fetchone()[0]
        return bool(found)

    @staticmethod
    def _stage_row(j: int, row: SpaceRow, case: dict[str, Any], vector: np.ndarray, now: str) -> tuple:
        vector = np.asarray(vector, dtype=np.float32).reshape(-1)
        if vector.shape[0] != row.dim:
            raise ValueError(f"a vector of {vector.shape[0]} dimensions for a {row.dim}-d space")
        duration = case.get("duration_s")
        return (
            j, row.space, str(case["path"]), str(case["sha256"]), row.modality, row.fingerprint,
            _json_text(case.get("metadata") or {}), case.get("task"),
            _json_text(case["scores"]) if case.get("scores") is not None else None,
            None if duration is None else float(duration),
            None if case.get("width") is None else int(case["width"]),
            None if case.get("height") is None else int(case["height"]),
            case.get("added_at") or now, vector,
        )

    def resolve(self, ids_or_paths: Sequence[Any]) -> list[tuple[int, str]]:
        found: dict[int, str] = {}
        with self._sql("find cases") as conn:
            for item in ids_or_paths:
                if isinstance(item, (int, np.integer)) or (isinstance(item, str) and item.strip().isdigit()):
                    number = int(item)
                    rows = conn.execute("SELECT id, space FROM cases WHERE id = %s", (number,)).fetchall() if number < 2**63 else []
                else:
                    path = os.fspath(item)
                    rows = conn.execute("SELECT id, space FROM cases WHERE path = %s OR path = %s", (path, os.path.abspath(path))).fetchall()
                found.update((int(r[0]), r[1]) for r in rows)
        return sorted(found.items())

    def delete(self, found: Sequence[tuple[int, str]]) -> None:
        with self._sql("remove cases") as conn, conn.transaction():
            gone = conn.execute("DELETE FROM cases WHERE id = ANY(%s) RETURNING space", ([int(i) for i, _ in found],)).fetchall()
            per_space: dict[str, int] = {}
            for (space,) in gone:
                per_space[space] = per_space.get(space, 0) + 1
            for space, n in sorted(per_space.items()):
                conn.execute("UPDATE spaces SET cases = cases - %s WHERE space = %s", (n, space))

    def count(self) -> int:
        with self._sql("count cases") as conn:
            return int(conn.execute("SELECT coalesce(sum(cases), 0) FROM spaces").fetchone()[0])

    # -- searching --------------------------------------------------------------------------------------------
    def search(self, row: SpaceRow, vector: np.ndarray, k: int, conditions: list, exact: bool) -> list[Hit]:
        """The ``k`` best cases of one space for a unit query vector, filtered in SQL."""
        if row.space not in self._rows:
            return []
        clause, params = where_pg(conditions)
        query = np.ascontiguousarray(np.asarray(vector, dtype=np.float32).reshape(-1))
        approximate = not exact and row.space in self._indexes and self._counts.get(row.space, 0) >= self.approx_threshold
        found = self._candidates(row, query, k, clause, params, approximate)
        if approximate and len(found) < k:  # the filtered HNSW scan ran dry: scan exactly
            found = self._candidates(row, query, k, clause, params, False)
        return self._rank(found, query, k)

    def _candidates(self, row: SpaceRow, query: np.ndarray, k: int, clause: str, params: list, approximate: bool) -> list[tuple]:
        columns = "id, path, modality, metadata, task, scores, embedding"
        with self._sql("search") as conn, conn.transaction():
            if approximate:
                pool = min(MAX_POOL, max(MIN_POOL, POOL_FACTOR * k))
                # The HNSW index, not a scan and a sort the planner misjudges as cheaper (it cannot
                # see what computing each distance costs): only the index gives the order without a
                # sort. Both settings last for this transaction only.
                conn.execute("SELECT set_config('hnsw.ef_search', %s, true), set_config('enable_sort', 'off', true)", (str(pool),))
            else:
                pool = 0
            # The space key is written into the statement, not bound: the planner can then prove the
            # partial HNSW index applies also in the generic plan psycopg's prepared statements get.
            space, dim = _literal(row.space), int(row.dim)
            keep = k + 10  # a few more than k: the re-rank below settles near-ties as numpy does
            if approximate:
                # HNSW hands over `pool` candidates; they are ordered by their exact distance in
                # the database and only the best `keep` travel, with their vectors.
                sql_text = (
                    f"SELECT {columns} FROM (SELECT {columns}, embedding::vector({dim}) <#> %b::vector({dim}) AS distance"
                    f" FROM cases WHERE space = {space} AND ({clause}) ORDER BY distance LIMIT %s) AS pool ORDER BY distance LIMIT %s"
                )
                return conn.execute(sql_text, [query, *params, pool, keep], binary=True).fetchall()
            sql_text = f"SELECT {columns} FROM cases WHERE space = {space} AND ({clause}) ORDER BY embedding <#> %b LIMIT %s"
            return conn.execute(sql_text, [*params, query, keep], binary=True).fetchall()

    @staticmethod
    def _rank(found: list[tuple], query: np.ndarray, k: int) -> list[Hit]:
        """Exact cosines of the candidates (their stored float32 vectors), best first, ``k`` of them."""
        if not found:
            return []
        vectors = np.stack([np.asarray(r[6].to_numpy(), dtype=np.float32) for r in found])
        scores = vectors @ query
        hits = []
        for j in np.argsort(-scores, kind="stable")[:k]:
            i, path, modality, metadata, task, scores_json = found[j][:6]
            metadata = dict(metadata or {})
            if scores_json is not None:
                metadata["task"] = task
                metadata["scores"] = scores_json
            hits.append(Hit(id=int(i), path=path, score=float(scores[j]), modality=modality, metadata=metadata))
        return hits

    # -- copying and information -------------------------------------------------------------------------------
    def read_cases(self, key: str, after: int, limit: int) -> tuple[np.ndarray, list[dict[str, Any]], np.ndarray]:
        row = self._rows.get(key)
        if row is None:
            return np.zeros(0, np.int64), [], np.zeros((0, 0), np.float32)
        with self._sql("read cases") as conn:
            found = conn.execute(
                f"SELECT id, {', '.join(COPY_FIELDS)}, embedding FROM cases WHERE space = %s AND id > %s ORDER BY id LIMIT %s",
                (key, int(after), int(limit)), binary=True,
            ).fetchall()
        ids = np.array([r[0] for r in found], dtype=np.int64)
        cases = [dict(zip(COPY_FIELDS, r[1:-1])) for r in found]
        vectors = np.stack([r[-1].to_numpy() for r in found]).astype(np.float32) if found else np.zeros((0, row.dim), np.float32)
        return ids, cases, vectors

    def stats(self) -> dict[str, Any]:
        self.refresh()
        spaces = []
        with self._sql("read the statistics") as conn:
            for key, row in self._rows.items():
                count = self._counts.get(key, 0)
                index = self._indexes.get(key)
                size = conn.execute("SELECT pg_relation_size(to_regclass(%s))", (index,)).fetchone()[0] if index else 0
                kind = "exact" if index is None or count < self.approx_threshold else "HNSW(ip),exact re-rank"
                spaces.append({
                    "space": key, "fingerprint": row.fingerprint, "modality": row.modality, "dim": row.dim, "model": row.model_ref,
                    "count": count, "index_type": kind, "tombstones": 0, "index": index, "index_bytes": int(size or 0),
                    "created_at": row.created_at,
                })
            db_bytes = int(conn.execute("SELECT pg_database_size(current_database())").fetchone()[0])
            version = self._version()
        return {
            "path": self.name,
            "store": "postgresql",
            "schema_version": version,
            "cases": sum(s["count"] for s in spaces),
            "spaces": spaces,
            "database_bytes": db_bytes,
            "index_bytes": sum(s["index_bytes"] for s in spaces),
            "approx_threshold": self.approx_threshold,
        }
