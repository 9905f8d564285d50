"""PostgreSQL-only behaviour of the case index store (a real server from ``fixtures_pg``):
migrations, read-only opens, credentials and their redaction, the database's unique rule under
concurrent writers, copies between stores, and hostile metadata and filters."""
from __future__ import annotations

import logging
import sys
import threading

import numpy as np
import psycopg
import pytest

from medzero import CaseIndexError
from medzero.retrieval import CaseIndex, copy_index
from medzero.retrieval.pg import SCHEMA_VERSION, redact
from test_retrieval import brute, stored_cases, unit


def test_fixture_gives_empty_database_with_pgvector(pg_url, pg_server):
    """Each test gets its own database; pgvector is there; password auth over TCP works."""
    with psycopg.connect(pg_url) as conn:
        ext = conn.execute("SELECT extname FROM pg_extension WHERE extname = 'vector'").fetchone()
        tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()
    assert ext == ("vector",)
    assert tables == (0,)
    bad = pg_url.replace(pg_server.password, "wrong")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(bad).close()


def add_some(target, n=50, dim=8, seed=0, **kwargs):
    x = unit(np.random.default_rng(seed), n, dim)
    with CaseIndex(target, **kwargs) as index:
        report = index.add_vectors(x, [{"path": f"/c/{seed}-{i}"} for i in range(n)], modality="audio", fingerprint="a@1")
    return x, report


# -- migrations and opening -------------------------------------------------------------------------------


def test_migrations_are_recorded_and_reopen_keeps_everything(pg_url):
    x, report = add_some(pg_url)
    with psycopg.connect(pg_url) as conn:
        versions = conn.execute("SELECT version, medzero FROM medzero_schema ORDER BY version").fetchall()
    assert [v for v, _ in versions] == list(range(1, SCHEMA_VERSION + 1))
    with CaseIndex(pg_url, readonly=True) as index:  # a second open applies nothing and sees it all
        assert len(index) == 50 and index.stats()["schema_version"] == SCHEMA_VERSION
        assert [h.id for h in index.search_vector(x[7], k=3)] == brute(pg_url, x[7], 3)
        assert index.store == "postgresql"


def test_two_processes_migrating_at_once_both_open(pg_url):
    """Each migration is one transaction behind an advisory lock: racing openers do not collide."""
    errors, opened = [], []

    def open_it():
        try:
            with CaseIndex(pg_url) as index:
                opened.append(len(index))
        except Exception as exc:  # pragma: no cover - the failure being tested for
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and opened == [0, 0, 0, 0]
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM medzero_schema").fetchone()[0] == SCHEMA_VERSION


def test_a_database_written_by_a_newer_medzero_is_refused(pg_url):
    add_some(pg_url)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("INSERT INTO medzero_schema (version, medzero) VALUES (%s, '9.9.9')", (SCHEMA_VERSION + 5,))
    for readonly in (False, True):
        with pytest.raises(CaseIndexError) as err:
            CaseIndex(pg_url, readonly=readonly)
        message = str(err.value)
        assert "written by a newer medzero" in message and f"schema version {SCHEMA_VERSION + 5}" in message
        assert "\n" not in message and "medzero-pg-test-secret" not in message


def test_readonly_never_writes(pg_url):
    with pytest.raises(CaseIndexError, match="is not a case index"):
        CaseIndex(pg_url, readonly=True)
    with psycopg.connect(pg_url) as conn:  # the failed read-only open created nothing
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()[0] == 0
    x, _ = add_some(pg_url)
    with CaseIndex(pg_url, readonly=True) as index:
        with pytest.raises(CaseIndexError, match="read-only"):
            index.remove(["/c/0-1"])
        with pytest.raises(CaseIndexError, match="read-only"):
            index.add_vectors(x[:1] * -1, modality="audio")
        assert len(index) == 50


def test_without_the_extra_the_error_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # what `import psycopg` does when it is not installed
    with pytest.raises(CaseIndexError) as err:
        CaseIndex("postgresql://medzero:secret@127.0.0.1:1/cases")
    assert str(err.value) == "a PostgreSQL case index needs psycopg and pgvector: pip install 'medzero[postgres]'"


def test_store_argument_and_bad_store(pg_url, tmp_path):
    add_some(pg_url)
    with CaseIndex(store=pg_url, readonly=True) as index:
        assert len(index) == 50
    with CaseIndex(tmp_path / "ignored", store=pg_url, readonly=True) as index:
        assert len(index) == 50 and not (tmp_path / "ignored").exists()
    with pytest.raises(CaseIndexError, match="store must be 'local' or a postgresql:// URL, not 'mysql'"):
        CaseIndex(tmp_path, store="mysql://root:pw@db/x")


# -- credentials ----------------------------------------------------------------------------------------------


def test_password_from_environment_and_files(pg_url, pg_server, tmp_path, monkeypatch):
    add_some(pg_url)
    bare = pg_server.url(pg_url.rsplit("/", 1)[1], password=False)
    for name in ("PGPASSWORD", "PGPASSFILE", "MEDZERO_PG_PASSWORD_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "no-pgpass"))
    with pytest.raises(CaseIndexError, match="cannot connect to postgresql://postgres@127.0.0.1"):
        CaseIndex(bare, readonly=True)

    monkeypatch.setenv("PGPASSWORD", pg_server.password)
    with CaseIndex(bare, readonly=True) as index:
        assert len(index) == 50
    monkeypatch.delenv("PGPASSWORD")

    secret = tmp_path / "secret"
    secret.write_text(pg_server.password + "\n")
    monkeypatch.setenv("MEDZERO_PG_PASSWORD_FILE", str(secret))
    with CaseIndex(bare, readonly=True) as index:
        assert len(index) == 50
    monkeypatch.setenv("MEDZERO_PG_PASSWORD_FILE", str(tmp_path / "missing"))
    with pytest.raises(CaseIndexError, match="cannot read MEDZERO_PG_PASSWORD_FILE .*missing: No such file"):
        CaseIndex(bare, readonly=True)
    monkeypatch.delenv("MEDZERO_PG_PASSWORD_FILE")

    pgpass = tmp_path / "pgpass"
    pgpass.write_text(f"127.0.0.1:{pg_server.port}:*:{pg_server.user}:{pg_server.password}\n")
    pgpass.chmod(0o600)
    monkeypatch.setenv("PGPASSFILE", str(pgpass))
    with CaseIndex(bare, readonly=True) as index:
        assert len(index) == 50


def test_redacted_everywhere(pg_url, pg_server, caplog, dicom_files, tiny_clip_dir, capsys):
    """The URL's password and a patient's name reach no repr, stats, error, log or CLI output."""
    from fixtures_image import PHI
    from medzero.cli import main

    secret = pg_server.password
    assert redact(pg_url) == pg_url.replace(secret, "***")
    assert redact("postgresql://db/x?user=u&password=p%40ss") == "postgresql://db/x?user=u&password=***"
    name = PHI["PatientName"]
    with caplog.at_level(logging.DEBUG):
        with CaseIndex(pg_url, image_model=str(tiny_clip_dir), device="cpu") as index:
            report = index.add([dicom_files["phi"]])
            assert len(report.added) == 1
            [hit] = index.search_text("chest", k=1)
            shown = repr(index) + str(index.stats()) + str(hit)
            with pytest.raises(CaseIndexError) as err:
                index.add_vectors(np.ones((1, 3), np.float32), modality="image")
            shown += str(err.value)
        with pytest.raises(CaseIndexError) as err:
            CaseIndex(pg_url.replace(secret, secret + "x"))
        shown += str(err.value)
        assert "password authentication failed" in str(err.value)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert logged and "***" in shown
    for text in (shown, logged):
        assert secret not in text and name not in text and name.split("^")[0] not in text
    stored = str(stored_cases(pg_url))
    assert name.split("^")[0] not in stored and PHI["PatientID"] not in stored and "ViewPosition" in stored

    assert main(["index", "add", pg_url.replace(secret, secret + "x"), str(dicom_files["phi"]), "--image-model", str(tiny_clip_dir)]) == 1
    out, err = capsys.readouterr()
    assert err.startswith("medzero: error: cannot connect to postgresql://postgres:***@") and err.count("\n") == 1
    assert secret not in out + err


# -- many writers -----------------------------------------------------------------------------------------------


def test_concurrent_writers_never_duplicate(pg_url):
    """Two writers (own connections, threads) add the same 2,000 vectors at once, in batches of 100:
    every vector is stored once, and between them the two reports account for each exactly once."""
    x = unit(np.random.default_rng(21), 2000, 16)
    rows = [{"path": f"/c/{i}"} for i in range(len(x))]
    add_some(pg_url, n=1, dim=16, seed=99)  # the space exists: the race is on the cases
    start, reports, errors = threading.Barrier(2), [None, None], []

    def write(slot, order):
        try:
            with CaseIndex(pg_url) as index:
                start.wait()
                reports[slot] = index.add_vectors(x[order], [rows[i] for i in order], modality="audio", batch_size=100)
        except Exception as exc:  # pragma: no cover - the failure being tested for
            errors.append(exc)

    forward, backward = np.arange(len(x)), np.arange(len(x))[::-1].copy()
    threads = [threading.Thread(target=write, args=(0, forward)), threading.Thread(target=write, args=(1, backward))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    a, b = reports
    assert len(a.added) + len(b.added) == 2000 and not set(a.added) & set(b.added)
    assert sorted(a.duplicates + b.duplicates) == sorted(r["path"] for r in rows)
    with psycopg.connect(pg_url) as conn:
        per_sha = conn.execute("SELECT count(*), count(DISTINCT sha256) FROM cases").fetchone()
        counter = conn.execute("SELECT cases FROM spaces").fetchone()[0]
    assert per_sha == (2001, 2001) and counter == 2001
    with CaseIndex(pg_url, readonly=True) as index:
        assert len(index) == 2001
        assert index.search_vector(x[1234], k=1)[0].path == "/c/1234"


def test_two_models_racing_for_a_modality(pg_url):
    """Two writers create the audio space with different models at once: one wins, the other
    gets the one-line error of a second model, and no case of it is stored."""
    start, outcomes = threading.Barrier(2), {}

    def write(fingerprint):
        try:
            with CaseIndex(pg_url) as index:
                start.wait()
                outcomes[fingerprint] = len(index.add_vectors(unit(np.random.default_rng(1), 5, 8), modality="audio", fingerprint=fingerprint).added)
        except CaseIndexError as exc:
            outcomes[fingerprint] = str(exc)

    threads = [threading.Thread(target=write, args=(f,)) for f in ("one@1", "two@2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    won = [f for f, v in outcomes.items() if v == 5]
    assert len(won) == 1
    [lost] = [v for v in outcomes.values() if v != 5]
    assert f"holds audio embeddings from {won[0]}; this session uses" in lost and "\n" not in lost
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM cases").fetchone()[0] == 5


# -- copies ---------------------------------------------------------------------------------------------------------


def test_copy_both_ways_keeps_vectors_rows_and_spaces(pg_url, tmp_path):
    src = tmp_path / "src"
    x = unit(np.random.default_rng(5), 300, 12)
    rows = [{"path": f"/c/{i}", "metadata": {"ViewPosition": "PA" if i % 2 else "AP", "n": i}, "task": "t", "scores": {"e": i / 300},
             "width": 10 + i, "height": 20} for i in range(len(x))]
    with CaseIndex(src) as index:
        index.add_vectors(x, rows, modality="image", fingerprint="img@1", model_ref="local-dir:/models/clip")
        index.add_vectors(unit(np.random.default_rng(6), 7, 4), modality="audio", fingerprint="aud@1")
        index.remove(["/c/3"])
    report = copy_index(src, pg_url, batch_size=64)
    assert len(report.added) == 306 and report.duplicates == []

    back = tmp_path / "back"
    with CaseIndex(pg_url, readonly=True) as index:
        assert index.copy_to(back, batch_size=50).added and len(index) == 306
    for copy in (pg_url, back):
        theirs = {(c["modality"], tuple(np.round(c["vector"], 7))): c for c in stored_cases(copy)}
        for c in stored_cases(src):
            other = theirs[(c["modality"], tuple(np.round(c["vector"], 7)))]
            assert np.array_equal(other["vector"], c["vector"]) and other["metadata"] == c["metadata"] and other["scores"] == c["scores"]
    with CaseIndex(back, readonly=True) as a, CaseIndex(src, readonly=True) as b:
        strip = lambda s: {(x["modality"], x["fingerprint"], x["model"], x["dim"], x["count"], x["created_at"]) for x in s["spaces"]}
        assert strip(a.stats()) == strip(b.stats())
        hits = a.search_vector(x[10], k=5, where="ViewPosition=AP, score.e>0.01", modality="image")
        assert [h.path for h in hits] == [h.path for h in b.search_vector(x[10], k=5, where="ViewPosition=AP, score.e>0.01", modality="image")]


def test_copy_stopped_midway_is_finished_by_running_it_again(pg_url, tmp_path):
    src = tmp_path / "src"
    x = unit(np.random.default_rng(8), 500, 8)
    with CaseIndex(src) as index:
        index.add_vectors(x, modality="audio", fingerprint="a@1")
    seen = []

    def stop_after_two(n):
        seen.append(n)
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        copy_index(src, pg_url, batch_size=100, progress=stop_after_two)
    with CaseIndex(pg_url, readonly=True) as index:
        assert len(index) == 200  # two committed batches
    report = copy_index(src, pg_url, batch_size=100)
    assert len(report.added) == 300 and len(report.duplicates) == 200
    with CaseIndex(pg_url, readonly=True) as index:
        assert len(index) == 500


def test_copy_refuses_another_model_before_writing(pg_url, tmp_path):
    add_some(pg_url)  # audio from a@1
    src = tmp_path / "src"
    with CaseIndex(src) as index:
        index.add_vectors(unit(np.random.default_rng(1), 5, 8), modality="image", fingerprint="i@1")
        index.add_vectors(unit(np.random.default_rng(2), 5, 8), modality="audio", fingerprint="b@2")
    with pytest.raises(CaseIndexError, match="holds audio embeddings from a@1; this session uses b@2"):
        copy_index(src, pg_url)
    with CaseIndex(pg_url, readonly=True) as index:
        assert len(index) == 50 and {r.modality for r in index._db().space_rows()} == {"audio"}


# -- hostile input ----------------------------------------------------------------------------------------------------


def test_hostile_metadata_and_filters(pg_url):
    x = unit(np.random.default_rng(3), 4, 8)
    rows = [
        {"path": "/c/nul", "metadata": {"note": "a\x00b", "x": float("nan"), "nested": {"k": [1, float("inf")]}}},
        {"path": "/c/quote'; DROP TABLE cases; --", "metadata": {"ViewPosition": "PA'; DROP TABLE cases; --"}},
        {"path": "/c/plain", "metadata": {"ViewPosition": "PA", "flag": True}},
        {"path": "/c/num", "metadata": {"ViewPosition": 2}},
    ]
    with CaseIndex(pg_url) as index:
        assert len(index.add_vectors(x, rows, modality="image", fingerprint="i@1").added) == 4
        [nul] = index.search_vector(x[0], k=1)
        assert nul.metadata == {"note": "ab", "x": None, "nested": {"k": [1, None]}}
        assert [h.path for h in index.search_vector(x[0], k=4, where="ViewPosition=\"PA'; DROP TABLE cases; --\"")] == [rows[1]["path"]]
        assert [h.path for h in index.search_vector(x[0], k=4, where="ViewPosition=PA")] == ["/c/plain"]
        assert [h.path for h in index.search_vector(x[0], k=4, where="ViewPosition=2")] == ["/c/num"]
        assert [h.path for h in index.search_vector(x[0], k=4, where="ViewPosition='2'")] == []
        assert [h.path for h in index.search_vector(x[0], k=4, where={"flag": True})] == ["/c/plain"]
        assert {h.path for h in index.search_vector(x[0], k=4, where="path>3")} == set()
        assert index.remove(["/c/quote'; DROP TABLE cases; --"]) and len(index) == 3
        assert index.remove([2**70]) == []


def test_connection_lost_is_a_one_line_error(pg_url):
    """The server ends the index's connection (a restart, a failover): the next call says so in
    one line, and a new CaseIndex works."""
    x, _ = add_some(pg_url)
    index = CaseIndex(pg_url, readonly=True)
    try:
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        with pytest.raises(CaseIndexError) as err:
            index.search_vector(x[0], k=3)
        assert str(err.value).startswith("index postgresql://postgres:***@") and "\n" not in str(err.value)
    finally:
        index.close()
    with CaseIndex(pg_url, readonly=True) as again:
        assert again.search_vector(x[0], k=1)[0].path == "/c/0-0"


def test_writer_api_from_two_processes_at_once(pg_url):
    """What a Ray actor does: its own CaseIndex(url) and writer(), no lock between writers; a case
    another writer committed after known_sha256 answered is left out of insert's ids."""
    x = unit(np.random.default_rng(4), 6, 8)
    with CaseIndex(pg_url) as a, CaseIndex(pg_url) as b:
        with a.writer() as wa, b.writer() as wb:  # both at once: nothing is held
            row = wa.space_row("audio", "a@1", 8, None)
            cases = [{"path": f"/w/{i}", "sha256": f"{i:064x}", "vector": x[i]} for i in range(6)]
            assert wa.known_sha256(row.space, [c["sha256"] for c in cases]) == set()
            first = wa.insert([(row, c) for c in cases[:4]])
            assert len(first) == 4
            again = wb.insert([(wb.space_row("audio", "a@1", 8, None), c) for c in cases[2:]])
            assert len(again) == 2  # cases 2 and 3 were committed by the other writer meanwhile
            assert len(wb.digests("a@1")) == 6
        assert len(b) == 6 and b.search_vector(x[5], k=1)[0].path == "/w/5"


def test_copy_killed_with_sigkill_is_finished_by_running_it_again(pg_url, tmp_path):
    """`medzero index copy` killed between its transactions keeps the batches it committed; the
    same command run again copies only the rest: every case once."""
    import os
    import signal
    import subprocess
    import time

    from test_hostile_image import medzero_command

    src = tmp_path / "src"
    x = unit(np.random.default_rng(11), 8_000, 16)
    with CaseIndex(src) as index:
        index.add_vectors(x, modality="audio", fingerprint="a@1", batch_size=8_000)
    command = [*medzero_command(), "index", "copy", str(src), pg_url, "--batch-size", "50"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def copied() -> int:
        try:
            with psycopg.connect(pg_url) as conn:
                return conn.execute("SELECT count(*) FROM cases").fetchone()[0]
        except psycopg.Error:
            return 0  # the tables are not there yet

    deadline = time.monotonic() + 60
    while copied() < 500:
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = copied()
    assert 500 <= partial < 8_000 and partial % 50 == 0  # whole batches only
    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert f"copied {8_000 - partial} case(s), skipped {partial} already there; 8000 case(s)" in again.stdout
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*), count(DISTINCT sha256) FROM cases").fetchone() == (8_000, 8_000)


@pytest.mark.parametrize("url", ["postgresql://u:s3cret@127.0.0.1:1/x", "postgresql://u:s3cret@[bad/x", "postgres://u@127.0.0.1:1/x?password=s3cret"])
def test_unreachable_or_malformed_url_is_one_line(url, monkeypatch):
    monkeypatch.setenv("PGCONNECT_TIMEOUT", "nonsense")
    with pytest.raises(CaseIndexError) as err:
        CaseIndex(url, readonly=True)
    message = str(err.value)
    assert message.startswith("cannot connect to postgres") and "\n" not in message and "s3cret" not in message


def test_approximate_search_uses_the_hnsw_index(pg_url):
    """Above approx_threshold a search walks the space's HNSW index (a scan would give the same
    hits, only slower); below it, and with exact=True, it scans."""
    x = unit(np.random.default_rng(13), 600, 16)
    with CaseIndex(pg_url, approx_threshold=300) as index:
        index.add_vectors(x[:200], modality="image", fingerprint="i@1")
        assert index.stats()["spaces"][0]["index_type"] == "exact"
        index.add_vectors(x[200:], modality="image")
        assert index.stats()["spaces"][0]["index_type"].startswith("HNSW")
        conn = index._db().conn

        def hnsw_scans() -> int:
            conn.execute("SELECT pg_stat_force_next_flush()")
            return conn.execute("SELECT coalesce(sum(idx_scan), 0) FROM pg_stat_user_indexes WHERE indexrelname LIKE 'cases_hnsw_%'").fetchone()[0]

        before = hnsw_scans()
        assert [h.id for h in index.search_vector(x[5], k=10, exact=True)] == brute(pg_url, x[5], 10)
        assert hnsw_scans() == before
        hits = index.search_vector(x[5], k=10)
        assert hnsw_scans() == before + 1
        assert hits[0].path == "vector:5" and len(hits) == 10

