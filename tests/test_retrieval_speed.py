"""Incremental adds (issue 24): the sha256 a caller gives is stored as given, duplicates are still
caught within and across batches, batches encoded for the approximate index beside their
transaction search like one index, and a failed or killed add leaves the index consistent.

Real SQLite, vector files and FAISS; ``PARALLEL_ENCODE`` is lowered so that small batches take the
threaded path that 50,000-row batches take in use.
"""
from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from medzero.core.errors import CaseIndexError
from medzero.retrieval import CaseIndex, spaces, store

DIM = 16


def unit(n: int, seed: int, dim: int = DIM) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def db_rows(path) -> list[tuple[int, str, str, int]]:
    db = sqlite3.connect(str(path / "cases.sqlite"))
    try:
        return db.execute("SELECT id, path, sha256, vector_row FROM cases ORDER BY id").fetchall()
    finally:
        db.close()


def brute(vectors: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int) -> list[int]:
    order = np.argsort(-(vectors @ q), kind="stable")[:k]
    return [int(i) for i in ids[order]]


@pytest.fixture
def threaded(monkeypatch):
    """Batches of 64 vectors or more take the encode-beside-the-transaction path, and spaces of 100
    vectors or more defer rewriting their FAISS file (so the parts stay to be seen)."""
    monkeypatch.setattr(spaces, "PARALLEL_ENCODE", 64)
    monkeypatch.setattr(spaces, "SMALL_SPACE", 100)


def approx_index(path, n: int = 600, seed: int = 0) -> np.ndarray:
    base = unit(n, seed)
    with CaseIndex(path, approx_threshold=200) as index:
        index.add_vectors(base, [{"path": f"/base/{i}"} for i in range(n)], modality="image", fingerprint="gen@1", batch_size=300)
    return base


def test_given_sha256_are_stored_exactly_and_not_recomputed(tmp_path):
    x = unit(2500, 1)  # 2,500 rows: two 1,000-row INSERTs and 500 one by one
    shas = [hashlib.sha256(f"file {i}".encode()).hexdigest() for i in range(len(x))]
    rows = [{"path": f"/cases/{i}.png", "sha256": sha} for i, sha in enumerate(shas)]
    with CaseIndex(tmp_path / "ix") as index:
        report = index.add_vectors(x, rows, modality="image", fingerprint="gen@1", batch_size=2500)
        assert len(report.added) == 2500 and not report.duplicates
    stored = db_rows(tmp_path / "ix")
    assert [r[1] for r in stored] == [r["path"] for r in rows]
    assert [r[2] for r in stored] == shas  # as given, not the hash of the vector
    assert [r[3] for r in stored] == list(range(2500))
    with CaseIndex(tmp_path / "ix", readonly=True) as index:
        for i in (0, 999, 1000, 2499):  # each row's vector is the one given with its path
            assert index.search_vector(x[i], k=1)[0].path == f"/cases/{i}.png"


def test_duplicates_caught_within_a_batch_and_across_batches(tmp_path, threaded):
    approx_index(tmp_path / "ix")
    x = unit(500, 2)
    shas = [f"sha-{i}" for i in range(400)] + [f"sha-{i}" for i in range(100)]  # the last 100 repeat the first
    rows = [{"path": f"/new/{i}", "sha256": s} for i, s in enumerate(shas)]
    with CaseIndex(tmp_path / "ix", approx_threshold=200) as index:
        first = index.add_vectors(x, rows, modality="image", batch_size=250)  # repeats fall in the other batch
        assert len(first.added) == 400 and first.duplicates == [f"/new/{i}" for i in range(400, 500)]
        again = index.add_vectors(x[:300], rows[:300], modality="image", batch_size=128)
        assert not again.added and len(again.duplicates) == 300
        same_batch = index.add_vectors(unit(2, 3), [{"path": "/a", "sha256": "twin"}, {"path": "/b", "sha256": "twin"}], modality="image")
        assert len(same_batch.added) == 1 and same_batch.duplicates == ["/b"]
        assert len(index) == 600 + 400 + 1
    # across processes: a new writer reads the idx file and still knows them
    with CaseIndex(tmp_path / "ix", approx_threshold=200) as index:
        assert len(index.add_vectors(x[:10], rows[:10], modality="image").duplicates) == 10


def test_batches_encoded_beside_their_transaction_search_like_one_index(tmp_path, threaded):
    base = approx_index(tmp_path / "ix", n=1200)
    extra = unit(288, 4)
    with CaseIndex(tmp_path / "ix", approx_threshold=200) as index:
        added = index.add_vectors(extra, [{"path": f"/new/{i}"} for i in range(288)], modality="image", batch_size=96).added
        space = index._spaces.for_modality("image")
        assert [t.ntotal for t in space.tails] == [96, 96, 96]  # one part per batch, the file not rewritten
        queries = unit(20, 5)
        live = [[h.id for h in index.search_vector(q, k=10)] for q in queries]
        exact = [[h.id for h in index.search_vector(q, k=10, exact=True)] for q in queries]
    ids = np.array([r[0] for r in db_rows(tmp_path / "ix")])
    everything = np.concatenate([base, extra])
    assert exact == [brute(everything, ids, q, 10) for q in queries]
    assert np.mean([len(set(a) & set(e)) / 10 for a, e in zip(live, exact)]) >= 0.8
    with CaseIndex(tmp_path / "ix", readonly=True) as index:  # the newer cases read back into one part
        assert len(index) == 1488 and sorted(added) == sorted(ids[1200:].tolist())
        assert [[h.id for h in index.search_vector(q, k=10)] for q in queries] == live


def test_a_failed_batch_leaves_no_part_and_the_next_add_works(tmp_path, threaded, monkeypatch):
    approx_index(tmp_path / "ix")
    extra = unit(300, 6)
    rows = [{"path": f"/new/{i}"} for i in range(300)]
    insert_rows = store.Store._insert_rows

    def full_disk(self, *args):
        raise sqlite3.OperationalError("database or disk is full")

    with CaseIndex(tmp_path / "ix", approx_threshold=200) as index:
        monkeypatch.setattr(store.Store, "_insert_rows", full_disk)
        with pytest.raises(sqlite3.OperationalError):
            index.add_vectors(extra, rows, modality="image", batch_size=300)
        assert index._spaces.for_modality("image").tails == [] and len(index) == 600
        assert all(h.path.startswith("/base/") for h in index.search_vector(extra[0], k=20))
        monkeypatch.setattr(store.Store, "_insert_rows", insert_rows)
        assert len(index.add_vectors(extra, rows, modality="image", batch_size=300).added) == 300
        assert index.search_vector(extra[7], k=1, exact=True)[0].path == "/new/7"
    assert [r[3] for r in db_rows(tmp_path / "ix")] == list(range(900))  # the failed rows were overwritten


def test_a_failed_fsync_is_one_line_and_commits_nothing(tmp_path, threaded, monkeypatch):
    approx_index(tmp_path / "ix")
    real_fsync = os.fsync

    def failing_fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".f32"):
            raise OSError(5, "Input/output error")
        real_fsync(fd)

    with CaseIndex(tmp_path / "ix", approx_threshold=200) as index:
        monkeypatch.setattr(os, "fsync", failing_fsync)
        with pytest.raises(CaseIndexError) as caught:
            index.add_vectors(unit(300, 7), modality="image", batch_size=300)
        monkeypatch.setattr(os, "fsync", real_fsync)
        message = str(caught.value)
        assert "\n" not in message and "Input/output error" in message and ".f32" in message
        assert len(index) == 600 and index._spaces.for_modality("image").tails == []
    assert len(db_rows(tmp_path / "ix")) == 600


KILLED_WRITER = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from medzero.retrieval import CaseIndex, spaces, store

    path = sys.argv[1]
    spaces.PARALLEL_ENCODE = 64
    insert_rows, calls = store.Store._insert_rows, []

    def slow_insert_rows(self, *args):
        calls.append(1)
        if len(calls) == 3:  # batch 3: its vectors written, its encoding running, its rows not yet in
            print("stopped", flush=True)
            time.sleep(120)
        insert_rows(self, *args)

    store.Store._insert_rows = slow_insert_rows
    x = np.random.default_rng(8).standard_normal((1200, 16)).astype(np.float32)
    with CaseIndex(path, approx_threshold=200) as index:
        index.add_vectors(x, [{"path": f"/new/{i}"} for i in range(1200)], modality="image", batch_size=300)
    """
)


def test_sigkill_during_a_threaded_add_keeps_every_committed_batch(tmp_path):
    base = approx_index(tmp_path / "ix")
    script = tmp_path / "writer.py"
    script.write_text(KILLED_WRITER)
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "ix")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "stopped", proc.stderr.read()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    raw = np.random.default_rng(8).standard_normal((1200, 16)).astype(np.float32)  # as the writer gave them
    x = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    rows = db_rows(tmp_path / "ix")
    assert len(rows) == 600 + 600  # two batches committed, the third never was
    assert [r[1] for r in rows[600:]] == [f"/new/{i}" for i in range(600)]
    everything, ids = np.concatenate([base, x[:600]]), np.array([r[0] for r in rows])
    with CaseIndex(tmp_path / "ix", readonly=True) as index:
        assert len(index) == 1200
        for q in unit(10, 9):
            assert [h.id for h in index.search_vector(q, k=10, exact=True)] == brute(everything, ids, q, 10)
    with CaseIndex(tmp_path / "ix", approx_threshold=200) as index:  # the next writer goes on over the torn rows
        report = index.add_vectors(raw, [{"path": f"/new/{i}"} for i in range(1200)], modality="image", batch_size=300)
        assert len(report.added) == 600 and report.duplicates == [f"/new/{i}" for i in range(600)]
        assert index.search_vector(x[1000], k=1, exact=True)[0].path == "/new/1000"
