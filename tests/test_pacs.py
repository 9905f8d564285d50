"""medzero as a PACS node, against a real Orthanc (Debian ``orthanc`` + ``orthanc-dicomweb``).

Orthanc runs on loopback ports with a generated configuration (DICOMweb plugin, HTTP
authentication, the medzero listener as a DICOM modality). The tests upload pydicom's reference
files and a synthetic chest CR, classify them over DICOMweb (study URL and QIDO query), have
Orthanc C-STORE them to ``medzero listen`` (a subprocess, as it runs in production), read the SR
that comes back into Orthanc with highdicom, and send bad data and unknown callers to the node.
"""
from __future__ import annotations

import io
import json
import logging
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

import medzero
from fixtures_image import part10_dataset

pytest.importorskip("pynetdicom", reason="the pacs extra is not installed: pip install 'medzero[pacs]'")
pytest.importorskip("highdicom", reason="the pacs extra is not installed: pip install 'medzero[pacs]'")
pytest.importorskip("dicomweb_client", reason="the pacs extra is not installed: pip install 'medzero[pacs]'")

import highdicom as hd  # noqa: E402
import requests  # noqa: E402
from pynetdicom import AE  # noqa: E402

from medzero.pacs.dicomweb import expand_dicomweb, parse_dicomweb_url, parse_query  # noqa: E402
from medzero.pacs.scp import Listener  # noqa: E402

CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
USER, PASSWORD = "medzero", "s3cret-Pa55"
LISTENER_AET = "MEDZERO"
#: identifying values written into the chest CR; none may appear in results, logs or the database
CR_PHI = {
    "PatientName": "Doe^Jane",
    "PatientID": "MRN-4417-2291",
    "PatientBirthDate": "19480312",
    "AccessionNumber": "ACC-55107",
    "ReferringPhysicianName": "House^Gregory",
}


# -- helpers -------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen | None = None, timeout: float = 180.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"nothing listens on port {port} after {timeout:.0f} s")


def poll(fn, timeout: float = 60.0, interval: float = 0.3):
    end = time.monotonic() + timeout
    while True:
        value = fn()
        if value or time.monotonic() > end:
            return value
        time.sleep(interval)


def chest_cr(path: Path) -> Path:
    """A synthetic PA chest radiograph as a CR Part-10 file (12-bit, two dark lung fields)."""
    y, x = np.mgrid[0:256, 0:256]
    pixels = 2600 - 6 * np.abs(x - 128)
    for cx in (80, 176):
        pixels = np.where(((x - cx) / 42.0) ** 2 + ((y - 130) / 80.0) ** 2 < 1, 700 + (y % 7) * 20, pixels)
    pixels = np.clip(pixels, 0, 4095).astype(np.uint16)
    ds = part10_dataset(CR_STORAGE, ExplicitVRLittleEndian, study=True)
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "CR", "CHEST", "PA"
    ds.StudyDate, ds.SeriesDate, ds.StudyTime = "20260115", "20260115", "101500"
    ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "1", 1, 1
    ds.PatientSex = "F"
    for key, value in CR_PHI.items():
        setattr(ds, key, value)
    ds.set_pixel_data(pixels, photometric_interpretation="MONOCHROME2", bits_stored=12)
    ds.WindowCenter, ds.WindowWidth = 1800, 3000
    ds.save_as(path, enforce_file_format=True)
    return path


def c_store(port: int, obj, *, calling: str = "TESTSCU", sop_class: str = CR_STORAGE, syntax: str = ExplicitVRLittleEndian):
    """C-STORE ``obj`` (a path or a Dataset) to the listener: the status, or None when refused."""
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(sop_class, [syntax])
    assoc = ae.associate("127.0.0.1", port, ae_title=LISTENER_AET)
    if not assoc.is_established:
        return None
    try:
        status = assoc.send_c_store(obj)
    finally:
        assoc.release()
    return int(status.Status) if "Status" in status else -1


class Orthanc:
    def __init__(self, root: Path, listener_port: int):
        binary = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
        self.http_port, self.dicom_port = free_port(), free_port()
        self.listener_port = listener_port
        config = {
            "Name": "medzero-test",
            "StorageDirectory": str(root / "db"),
            "IndexDirectory": str(root / "db"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": "ORTHANC",
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {USER: PASSWORD},
            "Plugins": [str(dicomweb_plugin())],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True},
            "DicomModalities": {"medzero": [LISTENER_AET, "127.0.0.1", listener_port]},
            "DicomScuTimeout": 30,
            "HttpDescribeErrors": False,
        }
        (root / "orthanc.json").write_text(json.dumps(config, indent=2))
        self.log = open(root / "orthanc.log", "wb")
        self.process = subprocess.Popen([binary, str(root / "orthanc.json")], stdout=self.log, stderr=subprocess.STDOUT, cwd=root)
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.dicomweb = f"dicomweb://127.0.0.1:{self.http_port}/dicom-web"
        self.session = requests.Session()
        self.session.auth = (USER, PASSWORD)
        end = time.monotonic() + 60
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited: {(root / 'orthanc.log').read_text()[-2000:]}")
            try:
                if self.session.get(self.url + "/system", timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > end:
                raise TimeoutError("Orthanc did not start in 60 s")
            time.sleep(0.2)

    def get(self, path: str):
        response = self.session.get(self.url + path, timeout=30)
        response.raise_for_status()
        return response.json() if "json" in response.headers.get("content-type", "") else response.content

    def post(self, path: str, data):
        response = self.session.post(self.url + path, data=data if isinstance(data, bytes) else json.dumps(data), timeout=120)
        response.raise_for_status()
        return response.json() if response.content else None

    def upload(self, path: str | Path) -> str:
        return self.post("/instances", Path(path).read_bytes())["ID"]

    def lookup(self, uid: str) -> str:
        return self.post("/tools/lookup", uid.encode())[0]["ID"]

    def lookup_or_none(self, uid: str) -> str | None:
        found = self.post("/tools/lookup", uid.encode())
        return found[0]["ID"] if found else None

    def srs(self, study_uid: str) -> list[Dataset]:
        """The SR instances of a study, parsed."""
        out = []
        for series in self.get(f"/studies/{self.lookup(study_uid)}/series"):
            if series["MainDicomTags"].get("Modality") == "SR":
                for instance in series["Instances"]:
                    out.append(pydicom.dcmread(io.BytesIO(self.get(f"/instances/{instance}/file"))))
        return out

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:  # pragma: no cover
            self.process.kill()
        self.log.close()


def dicomweb_plugin() -> Path | None:
    candidates = [Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")]
    try:
        listing = subprocess.run(["dpkg", "-L", "orthanc-dicomweb"], capture_output=True, text=True, timeout=30).stdout
        candidates += [Path(p) for p in listing.split() if "DicomWeb" in p and ".so" in p]
    except (OSError, subprocess.SubprocessError):
        pass
    return next((p for p in candidates if p.exists()), None)


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    if not (shutil.which("Orthanc") or os.path.exists("/usr/sbin/Orthanc")):
        pytest.skip("Orthanc is not installed (apt-get install orthanc orthanc-dicomweb)")
    if dicomweb_plugin() is None:
        pytest.skip("the Orthanc DICOMweb plugin is not installed (apt-get install orthanc-dicomweb)")
    server = Orthanc(tmp_path_factory.mktemp("orthanc"), listener_port=free_port())
    yield server
    server.stop()


@pytest.fixture(scope="module")
def pacs_files(orthanc, tmp_path_factory):
    """CT_small, MR_small and a chest CR, uploaded: {name: (path, dataset without pixels)}."""
    root = tmp_path_factory.mktemp("pacs_files")
    files = {
        "ct": Path(get_testdata_file("CT_small.dcm")),
        "mr": Path(get_testdata_file("MR_small.dcm")),
        "cr": chest_cr(root / "chest_cr.dcm"),
    }
    out = {}
    for name, path in files.items():
        orthanc.upload(path)
        out[name] = (path, pydicom.dcmread(path, stop_before_pixels=True))
    return out


@pytest.fixture(scope="module")
def classifier(tiny_clip_dir):
    return medzero.Classifier(task="chest_xray_findings", image_model=str(tiny_clip_dir), device="cpu", batch_size=4)


@pytest.fixture
def credentials_file(tmp_path):
    path = tmp_path / "pacs.credentials"
    path.write_text(f"{USER}:{PASSWORD}\n")
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def node(orthanc, tiny_clip_dir, tmp_path_factory):
    """``medzero listen`` in its own process, as Orthanc's modality ``medzero``, sending SRs back to Orthanc."""
    root = tmp_path_factory.mktemp("node")
    log_path = root / "listen.log"
    env = dict(os.environ, HF_HUB_OFFLINE="1", MEDZERO_CACHE_DIR=str(root / "cache"), PYTHONUNBUFFERED="1")
    args = [
        sys.executable, "-m", "medzero.pacs.cli",
        "--ae-title", LISTENER_AET, "--port", str(orthanc.listener_port), "--bind", "127.0.0.1",
        "--task", "chest_xray_findings", "--allow", "ORTHANC,TESTSCU",
        "--send-to", f"127.0.0.1:{orthanc.dicom_port}:ORTHANC",
        "--results", str(root / "results.sqlite"), "--index", str(root / "index"),
        "--image-model", str(tiny_clip_dir), "--device", "cpu", "--study-idle", "3",
    ]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root)
    try:
        wait_for_port(orthanc.listener_port, process)
    except (RuntimeError, TimeoutError) as exc:
        process.kill()
        pytest.fail(f"medzero listen did not start: {exc}\n{log_path.read_text()[-3000:]}")

    class Node:
        port = orthanc.listener_port
        results = root / "results.sqlite"
        index = root / "index"

        @staticmethod
        def log() -> str:
            return log_path.read_text(errors="replace")

        @staticmethod
        def rows(sop_uid: str) -> list[sqlite3.Row]:
            with sqlite3.connect(root / "results.sqlite") as db:
                db.row_factory = sqlite3.Row
                return db.execute("SELECT * FROM results WHERE sop_instance_uid = ?", (sop_uid,)).fetchall()

        @staticmethod
        def alive() -> bool:
            return process.poll() is None

    yield Node
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:  # pragma: no cover
        process.kill()


# -- parsing, no server --------------------------------------------------------------------------


def test_urls_and_queries_parse():
    url = parse_dicomweb_url("dicomwebs://pacs.example.org:8443/wado/rs/studies/1.2.3/series/4.5/instances/6.7")
    assert url.base_url == "https://pacs.example.org:8443/wado/rs"
    assert (url.study, url.series, url.instance) == ("1.2.3", "4.5", "6.7")
    url = parse_dicomweb_url("dicomweb://pacs/dicom-web/studies?Modality=CR")
    assert url.base_url == "http://pacs/dicom-web" and url.study is None and url.query == "Modality=CR"
    assert parse_query("Modality=CR&StudyDate=20260101-&limit=5") == ({"Modality": "CR", "StudyDate": "20260101-"}, 5, False)
    for bad, words in [
        ("dicomweb://pacs/dicom-web/studies/1.2.x", "not a DICOM UID"),
        ("dicomweb://pacs/dicom-web/studies/1.2/instances/3.4", "expected .../studies/UID"),
        ("http://pacs/dicom-web/studies/1.2", "not a DICOMweb URL"),
    ]:
        with pytest.raises(medzero.BadInputError, match=words):
            parse_dicomweb_url(bad)
    with pytest.raises(medzero.BadInputError, match="not a DICOM attribute keyword"):
        parse_query("Modalty=CR")
    with pytest.raises(medzero.BadInputError) as info:
        list(expand_dicomweb("dicomweb://admin:hunter2@pacs/dicom-web/studies/1.2.3"))
    assert "hunter2" not in str(info.value) and "credentials do not belong in the URL" in str(info.value)
    with pytest.raises(medzero.BadInputError, match="name a study"):
        expand_dicomweb("dicomweb://pacs/dicom-web")


def test_credentials_forms_and_destinations(tmp_path):
    from medzero.pacs.dicomweb import load_credentials
    from medzero.pacs.sr import parse_destination

    files = {
        "token.txt": "# a comment\nabc.def-ghi\n",
        "pair.txt": "alice:pa:ss\n",
        "token.json": json.dumps({"token": "abc.def-ghi"}),
        "pair.json": json.dumps({"username": "alice", "password": "pa:ss"}),
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
        (tmp_path / name).chmod(0o600)
        creds = load_credentials(tmp_path / name, env={})
        if "token" in name:
            assert creds.token == "abc.def-ghi" and creds.user is None
        else:
            assert (creds.user, creds.password) == ("alice", "pa:ss")
        assert "abc.def" not in repr(creds) and "pa:ss" not in repr(creds) and "alice" not in str(creds)
    assert load_credentials(env={}) is None
    assert load_credentials(env={"MEDZERO_DICOMWEB_TOKEN": "t0k"}).token == "t0k"
    env = {"MEDZERO_DICOMWEB_USER": "bob", "MEDZERO_DICOMWEB_PASSWORD": "pw", "MEDZERO_DICOMWEB_CREDENTIALS": str(tmp_path / "token.json")}
    assert load_credentials(env=env).token == "abc.def-ghi"  # a file wins over the variables
    with pytest.raises(medzero.BadInputError, match="both MEDZERO_DICOMWEB_USER and MEDZERO_DICOMWEB_PASSWORD"):
        load_credentials(env={"MEDZERO_DICOMWEB_USER": "bob"})
    with pytest.raises(medzero.BadInputError, match="cannot read the credentials file"):
        load_credentials(tmp_path / "missing", env={})

    dimse = parse_destination("pacs.local:104:ORTHANC")
    assert (dimse.kind, dimse.host, dimse.port, dimse.ae_title) == ("dimse", "pacs.local", 104, "ORTHANC")
    assert parse_destination("ORTHANC@10.0.0.5:4242") == parse_destination("10.0.0.5:4242:ORTHANC")
    stow = parse_destination("https://pacs.example.org/dicom-web")
    assert (stow.kind, stow.url) == ("stow", "dicomwebs://pacs.example.org/dicom-web")
    for bad in ("pacs.local:104", "pacs:x:AET", "pacs:104:THIS_AE_TITLE_IS_TOO_LONG"):
        with pytest.raises(medzero.BadInputError, match="HOST:PORT:AET"):
            parse_destination(bad)


# -- reading over DICOMweb -----------------------------------------------------------------------


def test_classify_a_study_over_dicomweb(orthanc, pacs_files, classifier, credentials_file):
    path, ds = pacs_files["cr"]
    url = f"{orthanc.dicomweb}/studies/{ds.StudyInstanceUID}"
    sources = expand_dicomweb(url, credentials=str(credentials_file))
    assert not isinstance(sources, list)  # lazy: instances are fetched as they are consumed
    results = classifier.classify_batch(list(sources))
    assert len(results) == 1 and results[0].error is None
    result = results[0]
    assert result.source == f"{url}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    assert PASSWORD not in result.source and USER not in result.source
    local = classifier.classify(str(path))
    assert result.scores == local.scores  # the same pixels through the same path: bit-identical
    assert result.verdict == local.verdict and result.verdict in {"routine", "review", "urgent"}
    assert result.metadata["Modality"] == "CR" and result.metadata["ViewPosition"] == "PA"
    text = json.dumps(result.to_dict())
    assert not any(value in text for value in CR_PHI.values())


def test_qido_query_through_the_scheme_handler(orthanc, pacs_files, classifier, monkeypatch):
    monkeypatch.setenv("MEDZERO_DICOMWEB_USER", USER)
    monkeypatch.setenv("MEDZERO_DICOMWEB_PASSWORD", PASSWORD)
    medzero.register_scheme("dicomweb", expand_dicomweb)  # what the ingest pipeline registers
    results = classifier.classify_batch([f"{orthanc.dicomweb}?Modality=CR&StudyDate=20260101-"])
    assert [r.source.rsplit("/", 1)[-1] for r in results] == [pacs_files["cr"][1].SOPInstanceUID]
    names = [s.name for s in expand_dicomweb(orthanc.dicomweb, query="Modality=CT&Modality=MR")]
    assert sorted(n.rsplit("/", 1)[-1] for n in names) == sorted(str(pacs_files[k][1].SOPInstanceUID) for k in ("ct", "mr"))
    results = classifier.classify_batch([f"{orthanc.dicomweb}/studies/{pacs_files['ct'][1].StudyInstanceUID}"])
    assert len(results) == 1 and results[0].error is None and results[0].metadata["Modality"] == "CT"


def test_credentials_are_checked_and_never_shown(orthanc, pacs_files, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("MEDZERO_DICOMWEB_USER", USER)
    monkeypatch.setenv("MEDZERO_DICOMWEB_PASSWORD", "wrong-password")
    with pytest.raises(medzero.BadInputError) as info:
        list(expand_dicomweb(orthanc.dicomweb, query="Modality=CR"))
    message = str(info.value)
    assert "HTTP 401" in message and "\n" not in message and "wrong-password" not in message
    monkeypatch.delenv("MEDZERO_DICOMWEB_USER")
    monkeypatch.delenv("MEDZERO_DICOMWEB_PASSWORD")
    loose = tmp_path / "loose.json"
    loose.write_text(json.dumps({"user": USER, "password": PASSWORD}))
    loose.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="medzero.pacs"):
        names = [s.name for s in expand_dicomweb(orthanc.dicomweb, query="Modality=MR", credentials=str(loose))]
    assert len(names) == 1
    assert "can be read by other users" in caplog.text and PASSWORD not in caplog.text


def _medzero(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """The installed ``medzero`` command, as a user runs it (no credentials in the environment)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MEDZERO_DICOMWEB")}
    return subprocess.run(
        [sys.executable, "-m", "medzero.cli", *args], capture_output=True, text=True, timeout=300, env={**clean, **(env or {})}
    )


def test_cli_classify_and_index_add_over_dicomweb(orthanc, pacs_files, tiny_clip_dir, credentials_file, tmp_path):
    model = ["--image-model", str(tiny_clip_dir), "--device", "cpu"]
    run = _medzero(
        "classify", orthanc.dicomweb, "--query", "Modality=CR&StudyDate=20260101-", "--credentials", str(credentials_file),
        "--task", "chest_xray_findings", *model, "--format", "json",
    )
    assert run.returncode == 0, run.stderr
    results = json.loads(run.stdout)
    cr = pacs_files["cr"][1]
    assert [r["path"].rsplit("/", 1)[-1] for r in results] == [cr.SOPInstanceUID]
    assert results[0]["verdict"] in {"routine", "review", "urgent"}
    assert PASSWORD not in run.stdout + run.stderr and USER not in run.stdout + run.stderr

    # the CT and MR studies are fetched, and not triaged by a chest X-ray task
    run = _medzero("classify", orthanc.dicomweb, "--query", "Modality=CT&Modality=MR", "--task", "chest_xray_findings", *model,
                   "--format", "json", env={"MEDZERO_DICOMWEB_USER": USER, "MEDZERO_DICOMWEB_PASSWORD": PASSWORD})
    assert run.returncode == 0, run.stderr
    assert sorted(r["verdict"] for r in json.loads(run.stdout)) == ["not_applicable", "not_applicable"]

    index = tmp_path / "cases"
    add = ["index", "add", str(index), orthanc.dicomweb, "--query", "Modality=CR", "--credentials", str(credentials_file), *model,
           "--format", "json"]
    run = _medzero(*add)
    assert run.returncode == 0, run.stderr
    assert len(json.loads(run.stdout)["added"]) == 1
    run = _medzero(*add)  # the same instance again: a duplicate, by content
    assert run.returncode == 0 and json.loads(run.stdout)["added"] == [] and len(json.loads(run.stdout)["duplicates"]) == 1
    run = _medzero("index", "search", str(index), "a chest radiograph", *model, "--format", "json")
    assert run.returncode == 0, run.stderr
    assert cr.SOPInstanceUID in run.stdout

    wrong = tmp_path / "wrong.credentials"
    wrong.write_text(f"{USER}:not-the-password\n")
    wrong.chmod(0o600)
    run = _medzero("classify", orthanc.dicomweb, "--query", "Modality=CR", "--credentials", str(wrong), *model)
    assert run.returncode == 1 and "HTTP 401" in run.stderr and "not-the-password" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr
    run = _medzero("classify", str(pacs_files["ct"][0]), "--query", "Modality=CR", *model)
    assert run.returncode == 2 and "--query and --credentials go with dicomweb:// sources" in run.stderr


# -- receiving: medzero listen ------------------------------------------------------------------


def _groups_by_sop(sr: Dataset) -> dict[str, dict]:
    """Per source SOP instance: {label: (probability, threshold, present)} and the triage level."""
    parsed = hd.sr.Comprehensive3DSR.from_dataset(sr)
    out: dict[str, dict] = {}
    for group in parsed.content.get_image_measurement_groups():
        sop = group.source_images[0].referenced_sop_instance_uid
        entry = out.setdefault(sop, {"labels": {}, "triage": None})
        finding = group.finding_type
        evaluations = {q.name.value: q.value for q in group.get_qualitative_evaluations()}
        if finding.value == "triage":
            entry["triage"] = evaluations["260870009"].value
            continue
        measured = {m.name.meaning: m.value for m in group.get_measurements()}
        assert {m.unit.value for m in group.get_measurements()} == {"1"}
        present = evaluations["121052"].meaning == "Present"
        entry["labels"][finding.value] = (measured["Probability"], measured["Decision threshold"], present)
    return out


def test_orthanc_sends_images_to_the_node_and_gets_an_sr_back(orthanc, pacs_files, node, classifier, credentials_file):
    cr_path, cr = pacs_files["cr"]
    ct_path, ct = pacs_files["ct"]
    orthanc.post("/modalities/medzero/store", [orthanc.lookup(cr.SOPInstanceUID), orthanc.lookup(ct.SOPInstanceUID)])
    srs = poll(lambda: orthanc.srs(cr.StudyInstanceUID), timeout=90)
    assert len(srs) == 1, node.log()[-3000:]
    sr = srs[0]
    assert sr.SOPClassUID == SR_STORAGE
    assert sr.StudyInstanceUID == cr.StudyInstanceUID and sr.PatientID == cr.PatientID  # filed with the images
    assert "RESEARCH USE ONLY" in sr.SeriesDescription
    assert sr.VerificationFlag == "UNVERIFIED" and sr.PreliminaryFlag == "PRELIMINARY"
    comments = [
        str(i.TextValue) for i in sr.ContentSequence
        if i.ValueType == "TEXT" and i.ConceptNameCodeSequence[0].CodeValue == "121106"  # DCM "Comment"
    ]
    assert comments and comments[0].startswith("RESEARCH USE ONLY - NOT FOR DIAGNOSIS")
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence
    assert [e.ReferencedSOPInstanceUID for e in evidence] == [cr.SOPInstanceUID]

    rows = node.rows(cr.SOPInstanceUID)
    assert len(rows) == 1 and rows[0]["error"] is None
    assert rows[0]["sr_status"] == "sent" and rows[0]["sr_sop_instance_uid"] == sr.SOPInstanceUID
    scores = json.loads(rows[0]["scores"])
    local = classifier.classify(str(cr_path))
    assert scores == local.scores and rows[0]["verdict"] == local.verdict
    findings = _groups_by_sop(sr)
    assert list(findings) == [cr.SOPInstanceUID]
    labels = findings[cr.SOPInstanceUID]["labels"]
    assert list(labels) == list(local.scores)
    for label, (probability, threshold, present) in labels.items():
        assert probability == pytest.approx(local.scores[label], abs=1e-9)
        assert threshold == local.thresholds[label]
        assert present == (local.scores[label] >= local.thresholds[label])
    assert findings[cr.SOPInstanceUID]["triage"] == local.verdict

    # The CT went in the same association: its own study, classified through the same path. A
    # chest X-ray task does not apply to a CT slice (the task's applies_to rules): no findings and no
    # triage level go back, so no SR; where the rules are absent, it gets its own SR.
    ct_local = classifier.classify(str(ct_path))
    ct_rows = poll(lambda: (lambda rows: rows if rows and rows[0]["sr_status"] != "not sent" else None)(node.rows(ct.SOPInstanceUID)), timeout=60)
    assert ct_rows and ct_rows[0]["verdict"] == ct_local.verdict and json.loads(ct_rows[0]["scores"]) == ct_local.scores
    if getattr(ct_local, "applicable", True):
        ct_srs = poll(lambda: orthanc.srs(ct.StudyInstanceUID), timeout=60)
        assert len(ct_srs) == 1 and list(_groups_by_sop(ct_srs[0])) == [ct.SOPInstanceUID]
    else:
        assert ct_local.verdict == "not_applicable"
        assert ct_rows[0]["sr_status"] == "not sent: no image the task applies to"
        assert orthanc.srs(ct.StudyInstanceUID) == []

    # PHI-safe: nothing identifying in the results database or the log
    with sqlite3.connect(node.results) as db:
        dump = "\n".join(db.iterdump())
    log = node.log()
    for value in CR_PHI.values():
        assert value not in dump and value not in log
    assert "listening as MEDZERO" in log
    assert len(medzero.CaseIndex(node.index)) == 2
    # the SR now in the study is not an image: expanding the study skips it
    names = [s.name for s in expand_dicomweb(f"{orthanc.dicomweb}/studies/{cr.StudyInstanceUID}", credentials=str(credentials_file))]
    assert [n.rsplit("/", 1)[-1] for n in names] == [cr.SOPInstanceUID]


def test_bad_data_is_refused_with_one_line_and_the_node_goes_on(orthanc, pacs_files, node, tmp_path):
    cr_path, _ = pacs_files["cr"]
    data = cr_path.read_bytes()
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(data[: int(len(data) * 0.6)])
    truncated_uid = pydicom.dcmread(truncated, stop_before_pixels=True).SOPInstanceUID
    assert c_store(node.port, truncated) == 0xC210

    garbage = pydicom.dcmread(cr_path)
    garbage.SOPInstanceUID = garbage.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    garbage.Rows, garbage.Columns = 2048, 2048  # the header promises 8 MB of pixels; 128 KB follow
    assert c_store(node.port, garbage) == 0xC210

    undecodable = pydicom.dcmread(cr_path)
    undecodable.SOPInstanceUID = undecodable.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    undecodable.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    # complete as a JPEG stream (start and end markers; an incomplete frame is refused at once), undecodable inside
    undecodable.PixelData = encapsulate([b"\xff\xd8\xff\xe0 not really a jpeg " * 4 + b"\xff\xd9"])
    undecodable.BitsAllocated = undecodable.BitsStored = 8
    undecodable.HighBit = 7
    undecodable["PixelData"].VR = "OB"
    assert c_store(node.port, undecodable, syntax=JPEGBaseline8Bit) == 0x0000  # parses; fails in the model's queue
    rows = poll(lambda: node.rows(undecodable.SOPInstanceUID), timeout=60)
    assert rows and rows[0]["error"] and rows[0]["verdict"] is None

    assert c_store(node.port, str(cr_path), calling="INTRUDER") is None  # not on the allow-list
    good = pydicom.dcmread(cr_path)
    good.SOPInstanceUID = good.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    assert c_store(node.port, good) == 0x0000
    rows = poll(lambda: node.rows(good.SOPInstanceUID), timeout=60)
    assert rows and rows[0]["error"] is None and rows[0]["verdict"] in {"routine", "review", "urgent"}
    assert node.alive()

    log = poll(lambda: (lambda text: text if "INTRUDER" in text and str(undecodable.SOPInstanceUID) in text else "")(node.log()), timeout=30)
    lines = log.splitlines()
    for uid in (truncated_uid, garbage.SOPInstanceUID):
        mentions = [line for line in lines if str(uid) in line]
        assert len(mentions) == 1 and mentions[0].startswith("medzero: ERROR: C-STORE from TESTSCU refused (0xC210)"), mentions
    assert any("pixel data is" in line and "truncated" in line for line in lines)
    mentions = [line for line in lines if str(undecodable.SOPInstanceUID) in line and "ERROR" in line]
    assert len(mentions) == 1 and mentions[0].startswith("medzero: ERROR: not triaged (from TESTSCU)")
    assert any("refused an association from INTRUDER" in line for line in lines)
    assert "Traceback" not in log


def test_listener_in_process_sends_the_sr_by_stow(orthanc, tiny_clip_dir, tmp_path, credentials_file, caplog):
    cr_path = chest_cr(tmp_path / "another_chest.dcm")  # a new study, not in Orthanc yet
    cr = pydicom.dcmread(cr_path, stop_before_pixels=True)
    listener = Listener(
        "MZSTOW", 0, "chest_xray_findings", host="127.0.0.1", image_model=str(tiny_clip_dir), device="cpu",
        allow=["TESTSCU"], send_to=orthanc.dicomweb, credentials=str(credentials_file),
        results_db=tmp_path / "results.sqlite", study_idle_s=1.0,
    )
    with caplog.at_level(logging.INFO, logger="medzero.pacs"), listener:
        ae = AE(ae_title="TESTSCU")
        ae.add_requested_context(CR_STORAGE, [ExplicitVRLittleEndian])
        assoc = ae.associate("127.0.0.1", listener.port, ae_title="MZSTOW")
        assert assoc.is_established
        assert assoc.send_c_store(pydicom.dcmread(cr_path)).Status == 0x0000
        assoc.release()
        srs = poll(lambda: orthanc.lookup_or_none(cr.StudyInstanceUID) and orthanc.srs(cr.StudyInstanceUID), timeout=60)
    assert len(srs) == 1 and list(_groups_by_sop(srs[0])) == [cr.SOPInstanceUID]
    assert f"sent to {orthanc.dicomweb}" in caplog.text and PASSWORD not in caplog.text
    with sqlite3.connect(tmp_path / "results.sqlite") as db:
        assert db.execute("SELECT sr_status FROM results").fetchall() == [("sent",)]
