"""PostgreSQL-only behaviour of the case index store (a real server from ``fixtures_pg``)."""
from __future__ import annotations


def test_fixture_gives_empty_database_with_pgvector(pg_url, pg_server):
    """Each test gets its own database; pgvector is there; password auth over TCP works."""
    import psycopg

    with psycopg.connect(pg_url) as conn:
        ext = conn.execute("SELECT extname FROM pg_extension WHERE extname = 'vector'").fetchone()
        tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()
    assert ext == ("vector",)
    assert tables == (0,)
    bad = pg_url.replace(pg_server.password, "wrong")
    try:
        psycopg.connect(bad).close()
    except psycopg.OperationalError as exc:
        assert "password authentication failed" in str(exc)
    else:
        raise AssertionError("a wrong password was accepted")

