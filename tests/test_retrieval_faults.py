"""The case index under faults: a writer killed with SIGKILL (at random points and at each step of an
append), FAISS and database out of step, two writers."""
from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from medzero import CaseIndexError
from medzero.retrieval import CaseIndex
from test_retrieval import STORES, brute, db_vectors, is_pg, new_index_target, unit

N, DIM, BATCH = 40_000, 32, 500

WRITER = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from medzero.retrieval import CaseIndex

    path, pause = sys.argv[1], float(sys.argv[2])
    rng = np.random.default_rng(7)
    x = rng.standard_normal(({n}, {dim})).astype(np.float32)
    rows = [{{"path": f"/cases/{{i}}.wav", "metadata": {{"odd": i % 2}}}} for i in range(len(x))]
    with CaseIndex(path, checkpoint_s=0.3) as index:
        report = index.add_vectors(x, rows, modality="audio", fingerprint="gen@1", batch_size={batch},
                                   progress=lambda n: time.sleep(pause))
    print(len(report.added), len(report.duplicates))
    """
).format(n=N, dim=DIM, batch=BATCH)


def data() -> np.ndarray:
    return np.random.default_rng(7).standard_normal((N, DIM)).astype(np.float32)


def committed(path) -> int:
    try:
        db = sqlite3.connect(str(path / "cases.sqlite"), timeout=30)
        try:
            return db.execute("SELECT count(*) FROM cases").fetchone()[0]
        finally:
            db.close()
    except sqlite3.OperationalError:
        return 0


def kill_when_stopped(proc: subprocess.Popen) -> None:
    """SIGKILL ``proc`` once it prints "stopped" (it has paused at the step under test)."""
    try:
        line = proc.stdout.readline()
        assert line == "stopped\n", proc.stderr.read() if proc.poll() is not None else line
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


def start_writer(tmp_path, path, pause: float) -> subprocess.Popen:
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    return subprocess.Popen([sys.executable, str(script), str(path), str(pause)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(predicate, proc, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"writer exited early: {proc.stderr.read()}")
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_sigkill_mid_add_keeps_committed_batches(tmp_path, caplog):
    path = tmp_path / "index"
    proc = start_writer(tmp_path, path, pause=0.05)
    try:
        wait_for(lambda: committed(path) >= 3 * BATCH, proc)
        # While it writes: readers are not blocked, a second writer is refused with the holder's pid.
        with CaseIndex(path, readonly=True) as reader:
            assert len(reader.search_vector(data()[0], k=5)) == 5
        with CaseIndex(path) as other:
            with pytest.raises(CaseIndexError, match=rf"being written by another process \(pid {proc.pid}\); try again"):
                other.add_vectors(unit(np.random.default_rng(0), 2, DIM), modality="audio")
            with pytest.raises(CaseIndexError, match="being written by another process"):
                other.remove([1])
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    rows = committed(path)
    assert rows % BATCH == 0 and 0 < rows < N  # whole batches only, and it was killed mid-way

    with CaseIndex(path) as index:
        assert len(index) == rows
        ids, _ = db_vectors(path)
        for q in unit(np.random.default_rng(8), 10, DIM):
            assert [h.id for h in index.search_vector(q, k=10)] == brute(path, q, 10)
            assert [h.id for h in index.search_vector(q, k=3, where="odd=1")] == brute(path, q, 3, "json_extract(metadata, '$.odd') = 1")
        # the FAISS file on disk is now in step: a fresh reader finds nothing to repair
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="medzero.retrieval"):
        with CaseIndex(path, readonly=True) as index:
            assert len(index) == rows
    assert not caplog.records

    # Re-running the same add adds only what is missing.
    proc = start_writer(tmp_path, path, pause=0.0)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    added, duplicates = map(int, out.split())
    assert (added, duplicates) == (N - rows, rows)
    with CaseIndex(path, readonly=True) as index:
        assert len(index) == N
        q = data()[123]
        top = index.search_vector(q, k=1)[0]
        assert top.path == "/cases/123.wav" and top.score == pytest.approx(1.0, abs=1e-5)


def _small(path):
    x = unit(np.random.default_rng(9), 400, 24)
    with CaseIndex(path) as index:
        index.add_vectors(x, [{"path": f"c{i}"} for i in range(len(x))], modality="image", fingerprint="img@1", batch_size=100)
    return path, x


@pytest.fixture
def small(tmp_path):
    """400 cases in an index folder (for the faults of FAISS files, SQLite and the write lock)."""
    return _small(tmp_path / "index")


@pytest.fixture(params=STORES)
def small_any(request, tmp_path):
    """400 cases in each store (for faults that are not about how a store keeps them)."""
    return _small(new_index_target(request, request.param, tmp_path / "index"))


def test_faiss_file_deleted_is_rebuilt_on_open(small, caplog):
    path, x = small
    (faiss_file,) = path.glob("space-*.faiss")
    faiss_file.unlink()
    with caplog.at_level(logging.WARNING, logger="medzero.retrieval"):
        with CaseIndex(path) as index:
            assert len(index) == 400
            for q in x[:5]:
                assert [h.id for h in index.search_vector(q, k=5)] == brute(path, q, 5)
    assert len([r for r in caplog.records if "rebuilt" in r.getMessage()]) == 1
    assert faiss_file.exists()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="medzero.retrieval"):
        CaseIndex(path, readonly=True).close()
    assert not caplog.records


def test_database_row_deleted_behind_its_back(small, caplog):
    path, x = small
    db = sqlite3.connect(str(path / "cases.sqlite"))
    gone = db.execute("SELECT id FROM cases WHERE path = 'c7'").fetchone()[0]
    db.execute("DELETE FROM cases WHERE id = ?", (gone,))
    db.commit()
    db.close()
    with caplog.at_level(logging.WARNING, logger="medzero.retrieval"):
        with CaseIndex(path, readonly=True) as index:
            assert len(index) == 399
            hits = index.search_vector(x[7], k=5)
            assert gone not in {h.id for h in hits}
            assert [h.id for h in hits] == brute(path, x[7], 5)
            assert index.stats()["spaces"][0]["count"] == 399
    assert len([r for r in caplog.records if "did not match the database" in r.getMessage()]) == 1


def test_corrupt_faiss_file_is_rebuilt(small, caplog):
    path, x = small
    (faiss_file,) = path.glob("space-*.faiss")
    faiss_file.write_bytes(b"not a faiss index")
    with caplog.at_level(logging.WARNING, logger="medzero.retrieval"):
        with CaseIndex(path) as index:
            assert [h.id for h in index.search_vector(x[3], k=5)] == brute(path, x[3], 5)
    assert caplog.records


def test_two_writers_in_one_process(small):
    path, x = small
    first, second = CaseIndex(path), CaseIndex(path)
    seen = []

    def during(n):
        with pytest.raises(CaseIndexError, match=rf"pid {os.getpid()}"):
            second.add_vectors(x[:1] * -1, modality="image")
        with CaseIndex(path, readonly=True) as reader:  # not blocked
            seen.append(len(reader.search_vector(x[0], k=3)))

    first.add_vectors(unit(np.random.default_rng(10), 20, 24), modality="image", batch_size=10, progress=during)
    assert seen == [3, 3]
    # Once the first is done the second may write, and it sees the first's cases.
    report = second.add_vectors(unit(np.random.default_rng(11), 5, 24), modality="image")
    assert len(report.added) == 5 and len(second) == 425
    assert [h.id for h in second.search_vector(x[9], k=5)] == brute(path, x[9], 5)
    first.close()
    second.close()


def test_reader_follows_another_writer(small_any):
    path, x = small_any
    with CaseIndex(path, readonly=True) as reader, CaseIndex(path) as writer:
        assert len(reader.search_vector(x[0], k=500)) == 400
        new = unit(np.random.default_rng(12), 3, 24)
        ids = writer.add_vectors(new, modality="image").added
        writer.remove(["c0"])
        assert reader.search_vector(new[1], k=1)[0].id == ids[1]
        assert "c0" not in {h.path for h in reader.search_vector(x[0], k=10)}


def test_readonly_refuses_writes(small_any, request, tmp_path):
    path, x = small_any
    with CaseIndex(path, readonly=True) as index:
        with pytest.raises(CaseIndexError, match="read-only"):
            index.remove(["c1"])
    nothing = new_index_target(request, "postgresql" if is_pg(path) else "local", tmp_path / "nothing-here")
    with pytest.raises(CaseIndexError, match="not a case index"):
        CaseIndex(nothing, readonly=True)


# -- SIGKILL at each step of an append, and at random points ----------------------------------------------

STEP_N, STEP_BATCH, STEP_DIM = 3000, 500, 32

STEP_WRITER = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from medzero.retrieval import CaseIndex, store

    path, n, batch, dim, point, stop_batch, threshold = sys.argv[1], *map(int, sys.argv[2:5]), sys.argv[5], *map(int, sys.argv[6:8])

    def stop():
        print("stopped", flush=True)
        time.sleep(120)

    # Each batch appends to the vector file, then to the idx file, then inserts its rows and commits.
    write_rows, commit, writes, commits = store._write_rows, store.Store.commit, [], []

    def counted_write_rows(*args):
        write_rows(*args)
        writes.append(args[0])
        if (point, len(writes)) in (("vector file", 2 * stop_batch + 1), ("idx file", 2 * stop_batch + 2)):
            stop()

    def counted_commit(self):
        commits.append(1)
        if point == "commit" and len(commits) == stop_batch + 1:
            stop()
        commit(self)

    store._write_rows, store.Store.commit = counted_write_rows, counted_commit
    x = np.random.default_rng(17).standard_normal((n, dim)).astype(np.float32)
    rows = [{"path": f"/cases/{i}.wav", "metadata": {"odd": i % 2}} for i in range(n)]
    with CaseIndex(path, approx_threshold=threshold) as index:
        report = index.add_vectors(x, rows, modality="audio", fingerprint="gen@1", batch_size=batch)
    print(len(report.added), len(report.duplicates), flush=True)
    """
)


def step_data(n: int, dim: int) -> np.ndarray:
    x = np.random.default_rng(17).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def run_step_writer(
    tmp_path, path, n: int, batch: int, dim: int, point: str = "none", stop_batch: int = -1, threshold: int = 100_000
) -> subprocess.Popen:
    script = tmp_path / "step_writer.py"
    script.write_text(STEP_WRITER)
    args = [sys.executable, str(script), str(path), str(n), str(batch), str(dim), point, str(stop_batch), str(threshold)]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def file_rows(path, dim: int) -> tuple[int, int]:
    """(rows of the vector file, rows of the idx file), whole rows only."""
    (f32,), (idx,) = path.glob("vectors-*.f32"), path.glob("vectors-*.idx")
    return f32.stat().st_size // (4 * dim), idx.stat().st_size // 16


def assert_consistent(path, n: int, dim: int) -> int:
    """Every committed case's stored vector is its data row, the idx file names it, and a fresh
    reader's searches match brute force; the number of committed cases."""
    x = step_data(n, dim)
    db = sqlite3.connect(str(path / "cases.sqlite"))
    rows = db.execute("SELECT id, path, sha256, vector_row FROM cases ORDER BY id").fetchall()
    (vector_rows,) = db.execute("SELECT vector_rows FROM spaces").fetchone()
    db.close()
    f32, idx = file_rows(path, dim)
    assert f32 >= vector_rows and idx >= vector_rows >= len(rows)
    vectors = np.fromfile(next(path.glob("vectors-*.f32")), dtype="<f4", count=vector_rows * dim).reshape(-1, dim)
    keys = np.fromfile(next(path.glob("vectors-*.idx")), dtype=[("id", "<i8"), ("key", "<u8")], count=vector_rows)
    from medzero.retrieval.store import sha_keys

    for case_id, case_path, sha, row in rows:
        i = int(case_path.rsplit("/", 1)[1].split(".")[0])
        np.testing.assert_allclose(vectors[row], x[i], atol=1e-6)
        assert keys[row]["id"] == case_id and keys[row]["key"] == sha_keys([sha])[0]
    with CaseIndex(path, readonly=True) as index:
        assert len(index) == len(rows)
        for q in unit(np.random.default_rng(18), 5, dim):
            expected = brute(path, q, 10)
            assert [h.id for h in index.search_vector(q, k=10, exact=True)] == expected  # every committed vector is there
            found = [h.id for h in index.search_vector(q, k=10)]  # the approximate index over them (recall, not equality)
            assert len(set(found) & set(expected)) >= 8, (found, expected)
            assert [h.id for h in index.search_vector(q, k=3, where="odd=1")] == brute(path, q, 3, "json_extract(metadata, '$.odd') = 1")
    return len(rows)


@pytest.mark.parametrize("point", ["vector file", "idx file", "commit"])
def test_sigkill_at_each_step_of_an_append(tmp_path, point):
    path = tmp_path / "index"
    proc = run_step_writer(tmp_path, path, STEP_N, STEP_BATCH, STEP_DIM, point, stop_batch=3)
    kill_when_stopped(proc)
    # Killed with the fourth batch written past the committed rows (a torn write).
    assert committed(path) == 3 * STEP_BATCH
    assert file_rows(path, STEP_DIM) == (4 * STEP_BATCH, 3 * STEP_BATCH if point == "vector file" else 4 * STEP_BATCH)
    assert assert_consistent(path, STEP_N, STEP_DIM) == 3 * STEP_BATCH

    # Running the add again adds exactly what is missing, over the torn rows.
    proc = run_step_writer(tmp_path, path, STEP_N, STEP_BATCH, STEP_DIM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert out.split() == [str(STEP_N - 3 * STEP_BATCH), str(3 * STEP_BATCH)]
    assert file_rows(path, STEP_DIM) == (STEP_N, STEP_N)
    assert assert_consistent(path, STEP_N, STEP_DIM) == STEP_N


def test_sigkill_at_random_points_of_appends(tmp_path):
    """Random kills of a writer whose space turns approximate early (appends then go to its tail)."""
    n, batch, dim, threshold = 20_000, 250, STEP_DIM, 2_000
    path = tmp_path / "index"
    rng = np.random.default_rng()
    seen = []
    for _ in range(4):
        before = committed(path)
        if before == n:  # a kill came after the last commit
            break
        proc = run_step_writer(tmp_path, path, n, batch, dim, threshold=threshold)
        try:
            wait_for(lambda: committed(path) > before, proc)
            time.sleep(rng.uniform(0.0, 0.4))
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.kill()
            out, err = proc.communicate()
        if proc.returncode == 0:  # it finished before the kill
            break
        assert proc.returncode == -signal.SIGKILL, err
        rows = assert_consistent(path, n, dim)
        assert rows % batch == 0 and rows > before
        seen.append(rows)
    proc = run_step_writer(tmp_path, path, n, batch, dim, threshold=threshold)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    added, duplicates = map(int, out.split())
    assert duplicates == committed(path) - added and added + duplicates == n
    assert assert_consistent(path, n, dim) == n
    assert file_rows(path, dim) == (n, n)
    assert seen, "the writer finished before the first kill"
