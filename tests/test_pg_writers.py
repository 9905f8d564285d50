"""Many writers, one PostgreSQL case index: two `medzero serve` processes and a Ray job at once.

A real PostgreSQL + pgvector (``fixtures_pg``), two real servers (uvicorn on 127.0.0.1, each a
subprocess started through ``medzero.service.cli`` with ``--index-store``), and the real
``RayEngine`` on a Ray started here with 2 CPUs, whose actors insert their batches over their own
connections. Tiny checkpoints in the real formats and real DICOM files written with pydicom.

Who wrote each batch is read from the database itself: a trigger notes each insert statement's
``application_name``, which libpq takes from ``PGAPPNAME`` (each server, the Ray workers and the
driver get their own).
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from fixtures_pg import PG_PASSWORD
from medzero.core.errors import CaseIndexError
from medzero.retrieval import CaseIndex
from test_service import model_env, start_server, stop_server  # noqa: F401 - model_env is a fixture

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")

TOTAL = 36
#: Which files each writer adds (overlapping): server A, server B (killed after its first answer), Ray.
#: Each server's first request holds files only it adds, so each surely inserts (the others race with Ray).
A_FILES, B_FILES, RAY_FILES = [*range(0, 4), *range(8, 20), *range(4, 8)], [*range(28, 32), *range(12, 28), *range(32, 36)], list(range(8, 28))
#: libpq's application_name per writer (PGAPPNAME), noted by the trigger.
RAY_WORKERS, DRIVER = "mz-ray-worker", "mz-ray-driver"


@pytest.fixture(scope="module")
def cluster():
    """A Ray on this machine; its workers inherit PGAPPNAME=mz-ray-worker (the driver's connection does not)."""
    ray = pytest.importorskip("ray", reason="the ray extra: pip install 'medzero[ray]'")
    saved = {k: os.environ.get(k) for k in ("RAY_DATA_LOG_LEVEL", "PGAPPNAME")}
    os.environ.update(RAY_DATA_LOG_LEVEL="WARNING", PGAPPNAME=RAY_WORKERS)
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    os.environ.pop("PGAPPNAME")
    try:
        yield ray
    finally:
        ray.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> list[Path]:
    """TOTAL distinct DICOM radiographs."""
    from fixtures_image import write_dicom

    folder = tmp_path_factory.mktemp("studies")
    rng = np.random.default_rng(22)
    return [
        write_dicom(folder / f"cxr_{i:02d}.dcm", rng.integers(0, 4096, (32, 40), dtype=np.uint16), bits_stored=12,
                    ViewPosition="PA" if i % 2 else "AP")
        for i in range(TOTAL)
    ]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _note_writers(pg_server, url: str) -> None:
    """A trigger noting, per insert statement into ``cases``, the writer's application_name and backend pid."""
    database = url.rsplit("/", 1)[1]
    import psycopg

    with psycopg.connect(host=str(pg_server.socket_dir), port=pg_server.port, user=pg_server.user, dbname=database,
                         autocommit=True) as conn:
        conn.execute("CREATE TABLE medzero_test_writers (app text, pid int, at timestamptz DEFAULT clock_timestamp())")
        conn.execute(
            "CREATE FUNCTION medzero_test_note() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "INSERT INTO medzero_test_writers (app, pid) VALUES (current_setting('application_name'), pg_backend_pid()); "
            "RETURN NULL; END $$"
        )
        conn.execute("CREATE TRIGGER medzero_test_note AFTER INSERT ON cases FOR EACH STATEMENT EXECUTE FUNCTION medzero_test_note()")


def _query(pg_server, url: str, sql: str, params=()):
    import psycopg

    database = url.rsplit("/", 1)[1]
    with psycopg.connect(host=str(pg_server.socket_dir), port=pg_server.port, user=pg_server.user, dbname=database) as conn:
        return conn.execute(sql, params).fetchall()


def _post(server, name: str, paths: list[Path]):
    files = [("files", (p.name, p.read_bytes(), "application/octet-stream")) for p in paths]
    with server.client(token=None, timeout=120) as client:
        return client.post(f"/v1/index/{name}/cases", files=files)


def test_two_servers_and_a_ray_job_write_one_index(cluster, studies, model_env, pg_server, pg_url, tiny_hf_clip_dir, tmp_path, caplog):
    from medzero.distributed import RayEngine, RayOptions

    image_model = f"local-dir:{tiny_hf_clip_dir}"
    with CaseIndex(pg_url, image_model=image_model, device="cpu"):
        pass  # the tables exist (first open migrates); the trigger goes on them
    _note_writers(pg_server, pg_url)
    url_no_password = pg_server.url(pg_url.rsplit("/", 1)[1], password=False)

    # Two servers on one PostgreSQL index; the files they are sent are kept under their --index-root.
    servers = {}

    def start(name: str) -> None:
        env = dict(model_env, PGAPPNAME=f"mz-serve-{name}", PGPASSWORD=PG_PASSWORD)
        servers[name] = start_server(tmp_path / name, ["--insecure-no-auth", "--preload", "image", "--index-root",
                                                        str(tmp_path / name / "indexes"), "--index-store", f"cases={url_no_password}"], env)

    starting = [threading.Thread(target=start, args=(n,)) for n in ("a", "b")]
    for t in starting:
        t.start()
    for t in starting:
        t.join()
    assert set(servers) == {"a", "b"}

    answers: dict[str, list] = {"a": [], "b": []}
    killed = threading.Event()

    def feed_a() -> None:
        for chunk in range(0, len(A_FILES), 4):
            answers["a"].append((A_FILES[chunk : chunk + 4], _post(servers["a"], "cases", [studies[i] for i in A_FILES[chunk : chunk + 4]])))

    def feed_b() -> None:
        first = list(B_FILES[:4])
        answers["b"].append((first, _post(servers["b"], "cases", [studies[i] for i in first])))
        rest = [studies[i] for i in B_FILES[4:]]
        sender = threading.Thread(target=lambda: _unanswered(servers["b"], rest), daemon=True)
        sender.start()
        time.sleep(0.3)  # the rest is being sent, decoded, embedded or written: kill the server now
        os.kill(servers["b"].proc.pid, signal.SIGKILL)
        killed.set()
        sender.join(30)

    feeders = [threading.Thread(target=feed_a), threading.Thread(target=feed_b)]
    ray_done: dict[str, object] = {}

    def ray_job() -> None:
        try:
            ray_done["report"] = index.add([str(studies[i]) for i in RAY_FILES], batch_size=2,
                                           engine=RayEngine(RayOptions(actors=2, cpus_per_actor=0.5)))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            ray_done["error"] = exc

    os.environ["PGAPPNAME"] = DRIVER  # this process's own connection; the workers have theirs
    try:
        index = CaseIndex(pg_url, image_model=image_model, device="cpu")
    finally:
        os.environ.pop("PGAPPNAME", None)
    job = threading.Thread(target=ray_job)
    try:
        job.start()
        # the servers start adding once the Ray actors have written their first batch: all three at once
        deadline = time.monotonic() + 120
        while not _query(pg_server, pg_url, "SELECT count(*) FROM medzero_test_writers WHERE app = %s", (RAY_WORKERS,))[0][0]:
            assert job.is_alive() and time.monotonic() < deadline, ray_done
            time.sleep(0.05)
        for t in feeders:
            t.start()
        job.join(120)
        index.close()
        if "error" in ray_done:
            raise ray_done["error"]
        ray_report = ray_done["report"]
        for t in feeders:
            t.join(120)
        assert killed.is_set()
        assert servers["b"].proc.wait(30) == -signal.SIGKILL

        # -- what each writer was told
        acknowledged: set[int] = set()
        for name, answered in answers.items():
            for numbers, response in answered:
                assert response.status_code == 200, (name, response.text)
                body = response.json()
                assert body["errors"] == [] and len(body["added"]) + len(body["duplicates"]) == len(numbers), body
                acknowledged.update(numbers)
        assert len(answers["a"]) == 5  # the survivor's adds all completed
        assert ray_report.errors == [] and len(ray_report.added) + len(ray_report.duplicates) == len(RAY_FILES)
        acknowledged.update(RAY_FILES)

        # -- what the database holds
        rows = _query(pg_server, pg_url, "SELECT sha256, count(*) FROM cases GROUP BY space, sha256")
        held = {sha: n for sha, n in rows}
        assert all(n == 1 for n in held.values()), "a file twice in a space"
        for i in acknowledged:  # every file a writer was told about is in, exactly once
            assert held.get(_sha(studies[i])) == 1, i
        assert set(held) <= {_sha(p) for p in studies}
        assert _query(pg_server, pg_url, "SELECT count(*) FROM cases c JOIN spaces s USING (space) "
                                         "WHERE c.embedding IS NULL OR vector_dims(c.embedding) <> s.dim")[0][0] == 0
        assert _query(pg_server, pg_url, "SELECT sum(cases)::int FROM spaces")[0][0] == len(held)  # no half-counted batch
        writers = _query(pg_server, pg_url, "SELECT app, count(DISTINCT pid)::int FROM medzero_test_writers GROUP BY app")
        writers = dict(writers)
        assert DRIVER not in writers and writers.get(RAY_WORKERS, 0) >= 1, writers  # the actors wrote, not the driver
        assert writers.get("mz-serve-a", 0) >= 1 and writers.get("mz-serve-b", 0) >= 1, writers

        # -- a re-run adds only what was missing: B's whole list again, through the surviving server
        missing = [i for i in B_FILES if _sha(studies[i]) not in held]
        again = _post(servers["a"], "cases", [studies[i] for i in B_FILES])
        assert again.status_code == 200, again.text
        body = again.json()
        assert len(body["added"]) == len(missing) and len(body["duplicates"]) == len(B_FILES) - len(missing)
        final = dict(_query(pg_server, pg_url, "SELECT sha256, count(*) FROM cases GROUP BY space, sha256"))
        assert sorted(final) == sorted(_sha(p) for p in studies) and set(final.values()) == {1}
        with CaseIndex(pg_url, readonly=True) as index:
            assert len(index) == TOTAL
            hits = index.search_example(studies[30], k=1)
            assert hits[0].score == pytest.approx(1.0, abs=1e-4)

        # -- credentials: the password went to every writer and into no log
        for name, server in servers.items():
            assert PG_PASSWORD not in server.log(), name
        assert PG_PASSWORD not in caplog.text
        assert PG_PASSWORD not in repr(index.location) and PG_PASSWORD not in str(index.location)
        assert PG_PASSWORD not in _ray_logs(cluster)
    finally:
        for server in servers.values():
            if server.proc.poll() is None:
                stop_server(server)


def _unanswered(server, paths: list[Path]) -> None:
    """Send adds to a server that is about to be killed: no answer counts."""
    import httpx

    for chunk in range(0, len(paths), 8):
        try:
            _post(server, "cases", paths[chunk : chunk + 8])
        except httpx.HTTPError:
            return


def _ray_logs(ray) -> str:
    """Everything the Ray session wrote to its log folder (driver, raylet, workers)."""
    from ray._private.worker import _global_node

    text = []
    for path in Path(_global_node.get_logs_dir_path()).rglob("*"):
        if path.is_file():
            text.append(path.read_text(errors="replace"))
    return "\n".join(text)


def test_a_ray_actor_that_cannot_connect_shows_no_password(cluster, studies, pg_url, tiny_hf_clip_dir, caplog):
    """Actors get the URL inside a redacted object: when their connection fails, neither the error
    the driver sees nor Ray's logs show the password the URL carried."""
    from medzero.distributed import RayEngine, RayOptions
    from medzero.retrieval.location import StoreLocation

    wrong = "not-the-password-9f3e7c"
    with CaseIndex(pg_url, image_model=f"local-dir:{tiny_hf_clip_dir}", device="cpu") as index:
        index.location = StoreLocation.of(pg_url.replace(PG_PASSWORD, wrong), index.location.name)
        with pytest.raises(CaseIndexError) as failed:
            index.add([str(p) for p in studies[:2]], engine=RayEngine(RayOptions(actors=1)))
        assert len(index) == 0
    message = str(failed.value)
    assert "\n" not in message and "password authentication failed" in message
    assert wrong not in message and PG_PASSWORD not in message and "***" in message
    assert wrong not in caplog.text and wrong not in _ray_logs(cluster)


@pytest.mark.parametrize("args, message", [
    (["--index-store", "cases"], "--index-store takes NAME=postgresql://..."),
    (["--index-store", "cases=/srv/indexes/cases", "--index-root", "."], "give a postgresql:// URL"),
    (["--index-store", "../up=postgresql://db/cases", "--index-root", "."], "is not an index name"),
    (["--index-store", "cases=postgresql://db/cases"], "--index-store needs --index-root"),
])
def test_a_bad_index_store_option_is_one_line(args, message):
    from click.testing import CliRunner

    from medzero.service.cli import serve_command

    result = CliRunner().invoke(serve_command, ["--insecure-no-auth", "--preload", "none", *args])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
