"""No patient identifier reaches a log, stderr or a response through a library's warning.

pydicom warns about a damaged element by quoting its value, twice (its "pydicom" logger and
warnings.warn). A UID whose length runs over the elements after it quotes the patient's name, ID,
birth date and address. Files with made-up identifiers planted (:data:`fixtures_image.PLANTED`)
go through every command: ``classify`` (also at -vv), ``index add``, ``serve`` (a real uvicorn) and
``listen`` (C-STORE from pynetdicom); the identifiers must appear in no output and no file written.
"""
from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from fixtures_image import PLANTED, damaged_uid_dicom
from medzero.core.errors import BadInputError
from medzero.image.io import read_image
from test_hostile_image import cli, medzero_command

#: The UI elements damaged: the file meta's Transfer Syntax UID (it swallows the start of the data
#: set), Related General SOP Class UID and SOP Instance UID (they swallow the patient module).
DAMAGED = {"transfer_syntax": 0x00020010, "related_sop_class": 0x0008001A, "sop_instance": 0x00080018}
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("planted")
    return {name: damaged_uid_dicom(root / f"{name}.dcm", tag) for name, tag in DAMAGED.items()}


def leaked(text: str | bytes) -> list[str]:
    """The planted identifiers (and the distinctive parts of the name) found in ``text``."""
    if isinstance(text, bytes):
        text = text.decode("latin-1")
    pieces = {*PLANTED.values(), *PLANTED["PatientName"].split("^"), "Kookaburra"}
    return sorted(piece for piece in pieces if piece in text)


def leaked_in_files(root: Path) -> dict[str, list[str]]:
    return {str(p): found for p in root.rglob("*") if p.is_file() and (found := leaked(p.read_bytes()))}


def test_the_damaged_files_do_make_pydicom_quote_the_identifiers(planted):
    """The premise: read by pydicom directly, the damage makes it warn with the identifiers."""
    with pytest.warns(UserWarning) as caught:
        str(pydicom.dcmread(planted["transfer_syntax"]).file_meta.TransferSyntaxUID)
    assert leaked(" ".join(str(w.message) for w in caught))


@pytest.mark.parametrize("verbose", [[], ["-vv"]])
def test_classify_prints_no_identifier(planted, tiny_clip_dir, tmp_path, verbose):
    run = cli(*verbose, "classify", "--format", "json", "--image-model", str(tiny_clip_dir), "--device", "cpu",
              *map(str, planted.values()), env={"MEDZERO_CACHE_DIR": str(tmp_path / "cache")})
    assert run.returncode == 1  # the damaged Transfer Syntax UID is an error row
    assert leaked(run.stdout) == [] and leaked(run.stderr) == [], run.stderr[-3000:]
    errors = [line for line in run.stderr.splitlines() if line.startswith("medzero: error:")]
    assert len(errors) == 1 and "Transfer Syntax UID is damaged (not a UID" in errors[0]
    if not verbose:
        assert run.stderr.splitlines() == errors  # nothing but medzero's one line
    assert leaked_in_files(tmp_path) == {}


def test_index_add_prints_and_stores_no_identifier(planted, tiny_clip_dir, tmp_path):
    index = tmp_path / "index"
    run = cli("index", "add", str(index), *map(str, planted.values()), "--image-model", str(tiny_clip_dir),
              "--device", "cpu", env={"MEDZERO_CACHE_DIR": str(tmp_path / "cache")})
    assert run.returncode == 1 and run.stdout.startswith("added 2, skipped 0 duplicate(s), 1 error(s)"), run.stdout + run.stderr
    assert leaked(run.stdout) == [] and leaked(run.stderr) == []
    assert leaked_in_files(tmp_path) == {}


def test_serve_logs_and_answers_no_identifier(planted, tiny_clip_dir, tiny_clap_dir, tmp_path):
    pytest.importorskip("fastapi", reason="the serve extra is not installed")
    import httpx

    from test_service import start_server, stop_server

    env = dict(os.environ, HF_HUB_OFFLINE="1", MEDZERO_CACHE_DIR=str(tmp_path / "cache"),
               MEDZERO_IMAGE_MODEL=str(tiny_clip_dir), MEDZERO_AUDIO_MODEL=str(tiny_clap_dir))
    server = start_server(tmp_path / "serve", ["--insecure-no-auth", "--preload", "image"], env)
    try:
        with httpx.Client(base_url=server.base, timeout=120) as client:
            answers = {name: client.post("/v1/classify", content=path.read_bytes()) for name, path in planted.items()}
    finally:
        stop_server(server)
    assert answers["transfer_syntax"].status_code == 400
    assert "Transfer Syntax UID is damaged" in answers["transfer_syntax"].json()["detail"]
    assert answers["related_sop_class"].status_code == 200 and answers["sop_instance"].status_code == 200
    for answer in answers.values():
        assert leaked(answer.text) == []
    assert leaked(server.log()) == [], server.log()[-3000:]
    assert leaked_in_files(tmp_path) == {}


# the test's own sender is the hostile one: pydicom warns it, in this process, about the planted UIDs
@pytest.mark.filterwarnings("ignore:.*VR UI:UserWarning")
def test_listen_logs_and_stores_no_identifier(planted, tiny_clip_dir, tmp_path, monkeypatch):
    pynetdicom = pytest.importorskip("pynetdicom", reason="the pacs extra is not installed")
    from test_pacs import c_store, free_port, poll, wait_for_port

    # pynetdicom as SCU checks the UIDs it sends; a sender that does not is what the node must survive
    monkeypatch.setitem(pynetdicom._config.VALIDATORS, "UI", lambda value: (True, ""))

    port = free_port()
    log_path = tmp_path / "listen.log"
    env = dict(os.environ, HF_HUB_OFFLINE="1", MEDZERO_CACHE_DIR=str(tmp_path / "cache"), PYTHONUNBUFFERED="1")
    args = [*medzero_command(), "listen", "--ae-title", "MEDZERO", "--port", str(port), "--bind", "127.0.0.1",
            "--allow", "TESTSCU", "--results", str(tmp_path / "results.sqlite"), "--index", str(tmp_path / "index"),
            "--image-model", str(tiny_clip_dir), "--device", "cpu", "--study-idle", "1"]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    try:
        wait_for_port(port, process)
        # A C-STORE carries the data set, not the file meta: the damaged data-set UIDs travel.
        related = pydicom.dcmread(planted["related_sop_class"])
        assert c_store(port, related, sop_class=SECONDARY_CAPTURE) == 0x0000  # a UID nobody needs is damaged: triaged
        # the SOP Instance UID is damaged, so is the command's Affected SOP Instance UID copied from it:
        # pynetdicom refuses the message itself (no status), in its own threads, before any handler
        instance = pydicom.dcmread(planted["sop_instance"])
        assert c_store(port, instance, sop_class=SECONDARY_CAPTURE) in (None, -1)
        # a damaged UID in the data set only: refused by the node's handler
        bad_study = pydicom.dcmread(planted["related_sop_class"])
        bad_study.SOPInstanceUID = bad_study.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        bad_study.StudyInstanceUID = "1.2.840.99.x-not-a-uid"
        assert c_store(port, bad_study, sop_class=SECONDARY_CAPTURE) == 0xC210
        study = str(related.StudyInstanceUID)
        assert poll(lambda: f"study {study} from TESTSCU" in log_path.read_text(), timeout=120)
        assert process.poll() is None
    finally:
        process.terminate()
        process.wait(30)
    text = log_path.read_text()
    assert "StudyInstanceUID is damaged (not a UID: 22 characters)" in text
    assert "Traceback" not in text and "Warning" not in text
    assert leaked(text) == [], text[-3000:]
    with sqlite3.connect(tmp_path / "results.sqlite") as db:
        assert leaked("\n".join(db.iterdump())) == []
    assert leaked_in_files(tmp_path) == {}


def test_only_decoding_threads_are_quiet(planted, caplog):
    """medzero diverts what pydicom says only in the thread that decodes, while it decodes: the
    user's own pydicom calls, in any thread, before or after, warn and log as they always did."""
    path = planted["transfer_syntax"]

    def users_own_read() -> list[str]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            str(pydicom.dcmread(path).file_meta.TransferSyntaxUID)
        return [str(w.message) for w in caught]

    def medzero_read() -> str:
        try:
            read_image(path)
        except BadInputError as exc:
            return str(exc)
        return ""

    with caplog.at_level(logging.WARNING, logger="pydicom"):
        assert users_own_read()  # before medzero ever decoded
        caplog.clear()
        barrier = threading.Barrier(2)

        def medzero_in_a_worker() -> str:
            barrier.wait()
            return medzero_read()

        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(medzero_in_a_worker)
            barrier.wait()
            message = pending.result()
        assert "Transfer Syntax UID is damaged" in message and leaked(message) == []
        assert not [r for r in caplog.records if r.name.startswith("pydicom")]  # the worker's records were diverted
        assert users_own_read()  # after: the user's warnings are untouched
        assert [r for r in caplog.records if r.name == "pydicom"]  # and so is pydicom's logger
