"""The case index's storage: vector files beside the database, the idx files behind duplicate checks,
and databases of the earlier format (each vector a BLOB in its case row), read as they are and
migrated on the first add, also when the migrating writer is killed."""
from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import subprocess
import sys
import textwrap

import faiss
import numpy as np
import pytest

from medzero import CaseIndexError
from medzero.cli import main
from medzero.core.vectors import l2_normalise
from medzero.retrieval import CaseIndex, spaces
from medzero.retrieval.store import IDX_DTYPE, sha_keys
from test_retrieval import brute, db_vectors, unit
from test_retrieval_faults import kill_when_stopped

# -- the earlier format, written with sqlite3 and faiss as the code before the vector files wrote it ----

#: ``SCHEMA`` of medzero/retrieval/store.py before the vector files (commit 2916728^), verbatim.
LEGACY_SCHEMA = """
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

#: modality, fingerprint, dim, cases
LEGACY_SPACES = [("image", "img@1", 24, 300), ("audio", "aud@1", 16, 200)]
#: Removed before the migration: an id in the middle and the highest one (ids are never reused).
LEGACY_REMOVED = (5, 500)
#: The last cases of the image space that its FAISS file does not hold yet (a deferred save).
LEGACY_TAIL = 20


def key_of(fingerprint: str) -> str:
    return hashlib.sha1(fingerprint.encode()).hexdigest()[:12]


def build_legacy(path) -> dict[int, tuple[str, np.ndarray, np.ndarray]]:
    """An earlier-format index as that code left it: cases of two spaces added in mixed batches
    (so one space's ids are not contiguous), two removed, the image space's FAISS file lagging by a
    tail of cases and the audio space's FAISS file lost. Returns ``{id: (modality, stored vector,
    vector as given to add_vectors)}`` of the live cases; the code normalised what it was given and
    hashed the result."""
    path.mkdir(parents=True)
    db = sqlite3.connect(str(path / "cases.sqlite"), isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.executescript(LEGACY_SCHEMA)
    rng = np.random.default_rng(21)
    db.execute("BEGIN")
    queue = []
    for modality, fingerprint, dim, n in LEGACY_SPACES:
        db.execute(
            "INSERT INTO spaces VALUES (?, ?, ?, ?, NULL, '2026-01-01T00:00:00+00:00')", (key_of(fingerprint), fingerprint, modality, dim)
        )
        queue += [(modality, fingerprint, raw) for raw in rng.standard_normal((n, dim)).astype(np.float32)]
    order = rng.permutation(len(queue))  # the two spaces' cases interleaved in id order
    cases = {}
    for i, at in enumerate(order, start=1):
        modality, fingerprint, raw = queue[at]
        v = l2_normalise(raw, strict=True)[0]
        db.execute(
            "INSERT INTO cases (space, path, sha256, modality, fingerprint, metadata, task, scores, duration_s, width, height,"
            " added_at, vector) VALUES (?, ?, ?, ?, ?, ?, NULL, NULL, NULL, NULL, NULL, '2026-01-01T00:00:00+00:00', ?)",
            (key_of(fingerprint), f"/cases/{i}", hashlib.sha256(v.tobytes()).hexdigest(), modality, fingerprint,
             json.dumps({"odd": i % 2}), v.tobytes()),
        )
        cases[i] = (modality, v, raw)
    db.execute("COMMIT")
    db.executemany("DELETE FROM cases WHERE id = ?", [(i,) for i in LEGACY_REMOVED])
    db.close()
    for i in LEGACY_REMOVED:
        del cases[i]
    image = sorted(i for i, c in cases.items() if c[0] == "image")[:-LEGACY_TAIL]
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(LEGACY_SPACES[0][2]))
    index.add_with_ids(np.stack([cases[i][1] for i in image]), np.array(image, dtype=np.int64))
    faiss.write_index(index, str(path / f"space-{key_of('img@1')}.faiss"))
    return cases


def legacy_brute(cases, modality: str, query: np.ndarray, k: int) -> list[int]:
    ids = np.array(sorted(i for i, c in cases.items() if c[0] == modality))
    scores = np.stack([cases[i][1] for i in ids]) @ query
    return ids[np.argsort(-scores, kind="stable")[:k]].tolist()


def is_legacy(path) -> bool:
    db = sqlite3.connect(str(path / "cases.sqlite"))
    try:
        columns = {r[1] for r in db.execute("PRAGMA table_info(cases)")}
        unique = db.execute("SELECT count(*) FROM sqlite_master WHERE name LIKE 'sqlite_autoindex_cases%'").fetchone()[0]
        assert ("vector" in columns) == bool(unique) == ("vector_row" not in columns)
        return "vector" in columns
    finally:
        db.close()


def stored_vectors(path) -> dict[int, np.ndarray]:
    """``{id: vector}`` of every space, read with numpy from the vector files (case by case)."""
    out = {}
    for modality, *_ in LEGACY_SPACES:
        ids, vectors = db_vectors(path, "modality = ?", (modality,))
        out.update(zip(ids.tolist(), vectors))
    return out


def legacy_queries():
    rng = np.random.default_rng(22)
    return [(modality, q) for modality, _, dim, _ in LEGACY_SPACES for q in unit(rng, 6, dim)]


@pytest.fixture
def legacy(tmp_path):
    path = tmp_path / "old"
    return path, build_legacy(path)


def test_earlier_format_is_searched_as_it_is(legacy):
    path, cases = legacy
    for readonly in (True, False):
        with CaseIndex(path, readonly=readonly) as index:
            assert len(index) == len(cases)
            for modality, q in legacy_queries():
                hits = index.search_vector(q, k=8, modality=modality)
                assert [h.id for h in hits] == legacy_brute(cases, modality, q, 8)
                assert [h.path for h in hits] == [f"/cases/{h.id}" for h in hits]
                odd = index.search_vector(q, k=4, modality=modality, where="odd=1")
                assert odd and all(h.id % 2 == 1 for h in odd)
            counts = {s["modality"]: s["count"] for s in index.stats()["spaces"]}
            assert counts == {m: sum(c[0] == m for c in cases.values()) for m, *_ in LEGACY_SPACES}
    # Reading (and repairing the FAISS files) leaves the database as it was: only a write migrates.
    assert is_legacy(path) and not list(path.glob("vectors-*"))
    assert len(list(path.glob("space-*.faiss"))) == 2


def test_first_add_migrates_and_keeps_ids_vectors_and_hits(legacy):
    path, cases = legacy
    with CaseIndex(path, readonly=True) as index:
        before = {
            (m, i): [(h.id, h.path, h.metadata) for h in index.search_vector(q, k=8, modality=m)] for i, (m, q) in enumerate(legacy_queries())
        }
    new = unit(np.random.default_rng(23), 5, 24)
    old_image = next(i for i, c in sorted(cases.items()) if c[0] == "image")
    with CaseIndex(path) as index:
        report = index.add_vectors(
            np.vstack([cases[old_image][2], new]), [{"path": "again"}] + [{"path": f"new{j}"} for j in range(5)], modality="image"
        )
        assert report.duplicates == ["again"]
        assert report.added == list(range(max(LEGACY_REMOVED) + 1, max(LEGACY_REMOVED) + 6))  # the sequence is kept
        assert index.search_vector(new[2], k=1, modality="image")[0].id == report.added[2]
        audio = index.add_vectors(np.stack([c[2] for c in cases.values() if c[0] == "audio"][:3]), modality="audio")
        assert len(audio.duplicates) == 3 and not audio.added
    assert not is_legacy(path)

    db = sqlite3.connect(str(path / "cases.sqlite"))
    assert db.execute("PRAGMA user_version").fetchone()[0] == 2
    rows = dict(db.execute("SELECT space, vector_rows FROM spaces").fetchall())
    db.close()
    n_image = sum(c[0] == "image" for c in cases.values())
    assert rows == {key_of("img@1"): n_image + 5, key_of("aud@1"): len(cases) - n_image}
    for modality, fingerprint, dim, _ in LEGACY_SPACES:
        assert (path / f"vectors-{key_of(fingerprint)}.f32").stat().st_size == rows[key_of(fingerprint)] * dim * 4
    # Every old case's vector, read straight from its space's vector file, is the BLOB it had.
    stored = stored_vectors(path)
    assert set(stored) == set(cases) | set(report.added)
    for i, (_, v, _) in cases.items():
        np.testing.assert_array_equal(stored[i], v)

    with CaseIndex(path, readonly=True) as index:
        for i, (m, q) in enumerate(legacy_queries()):
            hits = index.search_vector(q, k=8, modality=m)
            if m == "audio":
                assert [(h.id, h.path, h.metadata) for h in hits] == before[(m, i)]
            else:
                assert [h.id for h in hits] == brute(path, q, 8, "space = ?", (key_of("img@1"),))
                kept = [h for h in hits if h.id not in report.added]
                assert [(h.id, h.path, h.metadata) for h in kept] == before[(m, i)][: len(kept)]


MIGRATION_KILLER = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from medzero.retrieval import CaseIndex, store

    path, point = sys.argv[1], sys.argv[2]

    def stop():
        print("stopped", flush=True)
        time.sleep(120)

    write_rows, commit, calls = store._write_rows, store.Store.commit, []

    def counted_write_rows(*args):
        write_rows(*args)
        calls.append(args[0])
        if (point == "first vector file" and len(calls) == 1) or (point == "every file" and len(calls) == 4):
            stop()

    def paused_commit(self):
        if point == "before commit" and self.db.execute("PRAGMA user_version").fetchone()[0] == 2:
            stop()  # inside the migrating transaction, all of it done but the commit
        commit(self)

    store._write_rows, store.Store.commit = counted_write_rows, paused_commit
    with CaseIndex(path) as index:
        index.add_vectors(np.eye(24, dtype=np.float32)[:2], modality="image")
    print("finished", flush=True)
    """
)


@pytest.mark.parametrize("point", ["first vector file", "every file", "before commit"])
def test_sigkill_mid_migration_leaves_the_old_database_usable(legacy, tmp_path, point):
    path, cases = legacy
    script = tmp_path / "migrate.py"
    script.write_text(MIGRATION_KILLER)
    proc = subprocess.Popen([sys.executable, str(script), str(path), point], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    kill_when_stopped(proc)
    assert list(path.glob("vectors-*.f32"))  # it was killed after writing vector files
    assert is_legacy(path)

    with CaseIndex(path, readonly=True) as index:
        assert len(index) == len(cases)
        for modality, q in legacy_queries():
            assert [h.id for h in index.search_vector(q, k=8, modality=modality)] == legacy_brute(cases, modality, q, 8)

    # The next writer migrates from the start, over the killed one's files.
    new = np.eye(24, dtype=np.float32)[:2]
    with CaseIndex(path) as index:
        added = index.add_vectors(new, modality="image").added
        assert len(added) == 2 and len(index) == len(cases) + 2
    assert not is_legacy(path)
    stored = stored_vectors(path)
    for i, (_, v, _) in cases.items():
        np.testing.assert_array_equal(stored[i], v)
    for modality, fingerprint, dim, _ in LEGACY_SPACES:
        held = sum(c[0] == modality for c in cases.values()) + (2 if modality == "image" else 0)
        assert (path / f"vectors-{key_of(fingerprint)}.f32").stat().st_size == held * dim * 4
        assert (path / f"vectors-{key_of(fingerprint)}.idx").stat().st_size == held * IDX_DTYPE.itemsize
    with CaseIndex(path, readonly=True) as index:
        for modality, q in legacy_queries():
            hits = index.search_vector(q, k=8, modality=modality)
            assert [h.id for h in hits] == brute(path, q, 8, "modality = ?", (modality,))
        assert [h.id for h in index.search_vector(new[1], k=1, modality="image")] == [added[1]]


# -- the vector files ------------------------------------------------------------------------------------

DIM = 16


@pytest.fixture
def small(tmp_path):
    path = tmp_path / "index"
    x = unit(np.random.default_rng(31), 500, DIM)
    with CaseIndex(path) as index:
        index.add_vectors(x, [{"path": f"c{i}"} for i in range(len(x))], modality="image", fingerprint="img@1", batch_size=200)
    return path, x


def files(path):
    (f32,) = path.glob("vectors-*.f32")
    (idx,) = path.glob("vectors-*.idx")
    (faiss_file,) = path.glob("space-*.faiss")
    return f32, idx, faiss_file


def assert_idx_file_matches_database(path) -> None:
    """Row r of the idx file: the id and sha key of the case at vector_row r (id -1 for a removed one)."""
    _, idx_file, _ = files(path)
    db = sqlite3.connect(str(path / "cases.sqlite"))
    rows = db.execute("SELECT vector_row, id, sha256 FROM cases").fetchall()
    total = db.execute("SELECT vector_rows FROM spaces").fetchone()[0]
    db.close()
    idx = np.fromfile(idx_file, dtype=IDX_DTYPE)
    assert len(idx) == total
    live = np.zeros(total, dtype=bool)
    for row, case_id, sha in rows:
        assert idx["id"][row] == case_id and idx["key"][row] == sha_keys([sha])[0]
        live[row] = True
    assert not np.isin(idx["id"][~live], [r[1] for r in rows]).any()  # a dead row never names a live case


def sha_of(v: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(v, dtype=np.float32).tobytes()).hexdigest()


@pytest.mark.parametrize("faiss_file_lost", [False, True])
def test_torn_write_past_the_committed_rows_is_ignored_then_overwritten(small, faiss_file_lost):
    path, x = small
    f32, idx_file, faiss_file = files(path)
    g = unit(np.random.default_rng(32), 1, DIM)[0]
    # A writer killed between writing its rows and committing: 3 whole rows of g and half a row,
    # and idx rows naming the next ids with g's key.
    with open(f32, "ab") as f:
        f.write(np.tile(g, 3).tobytes() + g[: DIM // 2].tobytes())
    torn = np.zeros(3, dtype=IDX_DTYPE)
    torn["id"], torn["key"] = [501, 502, 503], sha_keys([sha_of(g)] * 3)
    with open(idx_file, "ab") as f:
        f.write(torn.tobytes() + b"\x01" * 5)
    if faiss_file_lost:
        faiss_file.unlink()

    with CaseIndex(path, readonly=True) as index:
        assert len(index) == 500
        hits = index.search_vector(g, k=5)
        assert [h.id for h in hits] == brute(path, g, 5) and hits[0].score < 0.99
    with CaseIndex(path) as index:
        report = index.add_vectors(np.vstack([g, x[7]]), [{"path": "g"}, {"path": "x7 again"}], modality="image")
        assert report.added == [501] and report.duplicates == ["x7 again"]
        top = index.search_vector(g, k=2)
        assert top[0].id == 501 and top[0].score == pytest.approx(1.0, abs=1e-5) and top[1].score < 0.99
    # The append wrote at the committed row and dropped the torn rows after it.
    assert f32.stat().st_size == 501 * DIM * 4 and idx_file.stat().st_size == 501 * IDX_DTYPE.itemsize
    np.testing.assert_array_equal(np.fromfile(f32, dtype="<f4")[-DIM:], l2_normalise(g)[0])
    assert_idx_file_matches_database(path)
    with CaseIndex(path, readonly=True) as index:
        for q in unit(np.random.default_rng(33), 5, DIM):
            assert [h.id for h in index.search_vector(q, k=10)] == brute(path, q, 10)


@pytest.mark.parametrize("damage", ["missing", "short"])
def test_lost_idx_file_is_rewritten_from_the_database(small, damage):
    path, x = small
    with CaseIndex(path) as index:
        assert index.remove(["c3"]) == [4]
    _, idx_file, _ = files(path)
    if damage == "missing":
        idx_file.unlink()
    else:
        with open(idx_file, "r+b") as f:
            f.truncate(200 * IDX_DTYPE.itemsize + 7)
    new = unit(np.random.default_rng(34), 4, DIM)
    with CaseIndex(path) as index:
        report = index.add_vectors(np.vstack([x[10:20], x[3], new]), [{"path": f"p{j}"} for j in range(15)], modality="image")
        assert report.duplicates == [f"p{j}" for j in range(10)]
        assert report.added == list(range(501, 506))  # x[3] was removed: it is added again
    assert_idx_file_matches_database(path)
    db = sqlite3.connect(str(path / "cases.sqlite"))
    assert db.execute("SELECT vector_row FROM cases WHERE id = 501").fetchone()[0] == 500
    db.close()
    # The removed case's row: -1 when rewritten from the database, its old id when the rewrite began after it.
    assert np.fromfile(idx_file, dtype=IDX_DTYPE)["id"][3] == (-1 if damage == "missing" else 4)


@pytest.mark.parametrize("faiss_file_lost", [True, False])
def test_truncated_vector_file_is_a_one_line_error(small, faiss_file_lost, capsys):
    path, x = small
    f32, _, faiss_file = files(path)
    with open(f32, "r+b") as f:
        f.truncate(450 * DIM * 4 + 10)
    if faiss_file_lost:
        faiss_file.unlink()
        for readonly in (True, False):
            with pytest.raises(CaseIndexError) as caught:
                CaseIndex(path, readonly=readonly)
            message = str(caught.value)
            assert "\n" not in message and str(f32) in message
            assert "holds 450 rows but the database names 500" in message and "restore it from a backup" in message
        assert main(["index", "stats", str(path)]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("medzero: error: ") and "holds 450 rows" in err
    else:
        # The FAISS file still holds every vector: search works; an add is refused and changes nothing.
        with CaseIndex(path) as index:
            assert [h.id for h in index.search_vector(x[480], k=1)] == [481]
            with pytest.raises(CaseIndexError) as caught:
                index.add_vectors(unit(np.random.default_rng(35), 3, DIM), modality="image")
            message = str(caught.value)
            assert "\n" not in message and str(f32) in message and "holds 450 rows but the database names 500" in message
            assert len(index) == 500
        assert f32.stat().st_size == 450 * DIM * 4 + 10
    db = sqlite3.connect(str(path / "cases.sqlite"))
    assert db.execute("SELECT count(*), max(vector_row) FROM cases").fetchone() == (500, 499)
    db.close()


def test_missing_vector_file_is_a_one_line_error(small):
    path, _ = small
    f32, _, faiss_file = files(path)
    f32.unlink()
    faiss_file.unlink()
    with pytest.raises(CaseIndexError, match=r"^the vector file .*vectors-\w+\.f32 is missing; .*restore it from a backup\)$"):
        CaseIndex(path, readonly=True)


# -- duplicates ---------------------------------------------------------------------------------------------


def test_duplicates_after_reopen_after_remove_and_from_another_writer(small):
    path, x = small
    with CaseIndex(path) as index:  # a new process's first check reads the idx file
        report = index.add_vectors(x[:50], [{"path": f"again{i}"} for i in range(50)], modality="image")
        assert not report.added and report.duplicates == [f"again{i}" for i in range(50)]
        # A removed case is no duplicate: it can be added again, and then it is one.
        assert index.remove(["c0", "c1"]) == [1, 2]
        assert index.add_vectors(x[:3], modality="image").added == [501, 502]
        assert len(index.add_vectors(x[:3], modality="image").duplicates) == 3
    with CaseIndex(path) as index:  # and so after reopening
        report = index.add_vectors(x[:3], modality="image")
        assert not report.added and len(report.duplicates) == 3
        assert index.remove([501]) == [501]
        assert index.add_vectors(x[:1], modality="image").added == [503]

    # Two writers, one after the other: each follows the rows the other appended.
    new = unit(np.random.default_rng(36), 30, DIM)
    first, second = CaseIndex(path), CaseIndex(path)
    try:
        assert len(second.add_vectors(x[100:101], modality="image").duplicates) == 1  # loads its keys
        assert len(first.add_vectors(new[:20], modality="image").added) == 20
        report = second.add_vectors(new, modality="image")
        assert len(report.duplicates) == 20 and len(report.added) == 10
        assert len(first.add_vectors(new, modality="image").duplicates) == 30
    finally:
        first.close()
        second.close()
    assert_idx_file_matches_database(path)


# -- appending to a large approximate space -----------------------------------------------------------------


def test_cases_appended_to_a_large_space_are_searched_with_it_until_its_file_is_rewritten(tmp_path, caplog, monkeypatch):
    """Appends to a large approximate space go to a separate index searched with the one read from
    the FAISS file (so the large one is not reallocated); both are written as one file once the
    appended cases pass a quarter of it."""
    monkeypatch.setattr(spaces, "SMALL_SPACE", 5_000)  # "large": 5 000 cases and more
    path, dim = tmp_path / "large", 16
    x = unit(np.random.default_rng(41), 6_000, dim)
    with CaseIndex(path, approx_threshold=2_000) as index:
        rows = [{"metadata": {"half": i % 2}} for i in range(len(x))]
        index.add_vectors(x, rows, modality="image", fingerprint="img@1", batch_size=3_000)
    (faiss_file,) = path.glob("space-*.faiss")
    written = faiss_file.stat().st_mtime_ns
    new = unit(np.random.default_rng(42), 600, dim)
    queries = unit(np.random.default_rng(43), 8, dim)

    def check(index, added, removed):
        for j in (0, 299, 599):
            top = index.search_vector(new[j], k=3)
            assert top[0].id == added[j] and top[0].score == pytest.approx(1.0, abs=1e-5)
        for q in queries:
            hits = index.search_vector(q, k=10, exact=True)
            assert [h.id for h in hits] == brute(path, q, 10)
            assert not {h.id for h in index.search_vector(q, k=50)} & set(removed)
            assert [h.id for h in index.search_vector(q, k=5, where="half=1", exact=True)] == brute(
                path, q, 5, "json_extract(metadata, '$.half') = 1"
            )
        assert len(index.search_vector(new[10], k=100, where="half=1")) == 100

    with CaseIndex(path, approx_threshold=2_000) as index:
        added = index.add_vectors(new, [{"metadata": {"half": i % 2}} for i in range(600)], modality="image", batch_size=200).added
        check(index, added, [])
    assert faiss_file.stat().st_mtime_ns == written  # the appended cases are read from the vector file on open
    with caplog.at_level(logging.WARNING, logger="medzero.retrieval"):
        with CaseIndex(path, readonly=True, approx_threshold=2_000) as reader:
            check(reader, added, [])
            # Another process removes a case of each part: the reader follows, with tombstones.
            with CaseIndex(path, approx_threshold=2_000) as writer:
                removed = writer.remove([added[5], added[6], 3])
                assert removed == [3, added[5], added[6]]
                check(writer, added, removed)
            check(reader, added, removed)
    assert not caplog.records
    assert faiss_file.stat().st_mtime_ns != written  # a remove writes the file
    written = faiss_file.stat().st_mtime_ns

    # Past a quarter of the file, the next add writes one file holding every case.
    more = unit(np.random.default_rng(44), 1_700, dim)
    with CaseIndex(path, approx_threshold=2_000) as index:
        more_ids = index.add_vectors(more, modality="image", batch_size=500).added
        assert index.search_vector(more[7], k=1)[0].id == more_ids[7]
    assert faiss_file.stat().st_mtime_ns != written
    held = faiss.read_index(str(faiss_file))
    assert held.ntotal == 6_000 + 600 + 1_700  # removed cases stay as tombstones
    with caplog.at_level(logging.WARNING, logger="medzero.retrieval"):
        with CaseIndex(path, readonly=True, approx_threshold=2_000) as index:
            check(index, added, removed)
            assert index.search_vector(more[9], k=1)[0].id == more_ids[9]
    assert not caplog.records
