"""`medzero serve` against a real uvicorn on 127.0.0.1, with the tiny checkpoints.

The server runs in a subprocess started through the `serve` click command, its log captured to a
file; clients are httpx and, where a well-behaved client cannot do what is tested (a body that
never arrives, a client that hangs up mid-upload), a raw socket.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import yaml
from click.testing import CliRunner

import medzero
from conftest import default_models_missing_env
from medzero.service import schemas
from medzero.service.auth import ApiKeys, hash_token, load_api_keys, parse_keys
from medzero.service.cli import is_loopback, serve_command
from medzero.service.openapi import render

REPO = Path(__file__).resolve().parents[1]
TOKEN = "file-token-" + "a1" * 12
HASHED_TOKEN = "hashed-token-" + "b2" * 12
ENV_TOKEN = "env-token-" + "c3" * 12
#: Sent as the client-side file name of uploads; must never reach the server's log or a response.
PHI_NAME = "Zhang_Wei_MRN-55501234_visit.wav"
#: Bytes inside a body; must never reach the server's log.
BODY_MARKER = b"BODY-MARKER-f00d-PATIENT-NOTES"
SECRET_LABEL = "pulmonary embolism secret-label-x7"
LABELS = "a person speaking,music,a chest x-ray"
STARTUP_S = 240


class Server:
    def __init__(self, proc: subprocess.Popen, base: str, log: Path):
        self.proc, self.base, self.log_path = proc, base, log

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def client(self, token: str | None = TOKEN, timeout: float = 60.0) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.base, headers=headers, timeout=timeout)

    @property
    def port(self) -> int:
        return int(self.base.rsplit(":", 1)[1])


def start_server(workdir: Path, args: list[str], env: dict[str, str], *, ready: bool = True) -> Server:
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "server.log"
    handle = open(log, "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "medzero.service.cli", "--host", "127.0.0.1", "--port", "0", "--device", "cpu", *args],
        stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=workdir,
    )
    handle.close()
    deadline = time.monotonic() + STARTUP_S
    base = None
    while time.monotonic() < deadline and base is None:
        if proc.poll() is not None:
            pytest.fail(f"the server exited with {proc.returncode}:\n{log.read_text()}")
        found = re.search(r"running on http://127\.0\.0\.1:(\d+)", log.read_text(errors="replace"))
        if found:
            base = f"http://127.0.0.1:{found.group(1)}"
        else:
            time.sleep(0.2)
    if base is None:
        proc.kill()
        pytest.fail(f"the server did not start in {STARTUP_S} s:\n{log.read_text()}")
    server = Server(proc, base, log)
    while ready and time.monotonic() < deadline:
        if httpx.get(base + "/readyz", timeout=10).status_code == 200:
            break
        time.sleep(0.3)
    else:
        if ready:
            proc.kill()
            pytest.fail(f"the server did not become ready:\n{log.read_text()}")
    return server


def stop_server(server: Server) -> None:
    server.proc.terminate()
    try:
        server.proc.wait(30)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait(10)


@pytest.fixture(scope="module")
def model_env(tiny_clap_dir, tiny_hf_clip_dir, tmp_path_factory) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        MEDZERO_AUDIO_MODEL=str(tiny_clap_dir),
        MEDZERO_IMAGE_MODEL=f"local-dir:{tiny_hf_clip_dir}",
        MEDZERO_CACHE_DIR=str(tmp_path_factory.mktemp("server-cache")),
        HF_HUB_OFFLINE="1",
        PYTHONPATH=str(REPO),
    )
    env.pop("MEDZERO_API_KEYS", None)
    return env


def write_overlay(path: Path, threshold: float = 0.0123) -> Path:
    """A site overlay as `medzero calibrate` writes it, for voice_quality."""
    path.write_text(yaml.safe_dump({
        "overlay_for": "voice_quality",
        "method": "youden",
        "labels": {"background_noise": {"threshold": threshold, "previous_threshold": 0.5,
                                        "source": "calibrated on 40 rows of site.csv, youden"}},
    }))
    return path


@pytest.fixture(scope="module")
def calibrations(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("calibrations")
    write_overlay(folder / "ward-3.yaml")
    (folder / "README.txt").write_text("not an overlay; skipped")
    return folder


@pytest.fixture(scope="module")
def server(model_env, calibrations, tmp_path_factory):
    work = tmp_path_factory.mktemp("service")
    keys = work / "keys.txt"
    keys.write_text(f"# clinic keys\n{TOKEN}\n\nsha256:{hash_token(HASHED_TOKEN)}\n")
    env = dict(model_env, MEDZERO_API_KEYS=ENV_TOKEN)
    srv = start_server(
        work,
        ["--api-key-file", str(keys), "--max-upload-mb", "1", "--max-batch-mb", "4", "--max-batch", "8",
         "--batch-window-ms", "150", "--index-root", str(work / "indexes"), "--timeout", "120",
         "--calibration-dir", str(calibrations)],
        env,
    )
    yield srv
    stop_server(srv)


@pytest.fixture(scope="module")
def direct(tiny_clap_dir, tiny_hf_clip_dir, calibrations):
    """Classifiers in this process, the reference the service's scores must equal."""
    models = dict(audio_model=str(tiny_clap_dir), image_model=f"local-dir:{tiny_hf_clip_dir}", device="cpu")
    return {
        "labels": medzero.Classifier(labels=LABELS, **models),
        "voice_quality": medzero.Classifier(task="voice_quality", **models),
        "ward-3": medzero.Classifier(task="voice_quality", calibration=calibrations / "ward-3.yaml", **models),
        "default": medzero.Classifier(**models),
    }


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error", "detail"}, body
    assert isinstance(body["detail"], str) and "\n" not in body["detail"] and "Traceback" not in body["detail"]
    if code is not None:
        assert body["error"] == code, body
    return body


def assert_same_result(served: dict, expected: medzero.Result, name: str = "upload") -> None:
    """The served JSON is the library's ``Result.to_dict()`` for the same file: every key and every value
    (numbers to 1e-6), except the source's name and the overlay's path, which the service does not reveal."""
    want = json.loads(json.dumps(expected.to_dict()))
    want["path"] = name
    if (want.get("calibration") or {}).get("path"):
        want["calibration"]["path"] = Path(want["calibration"]["path"]).name
    _assert_close(served, want, "result")


def _assert_close(got, want, where: str) -> None:
    if isinstance(want, float) and isinstance(got, (int, float)) and not isinstance(got, bool):
        assert got == pytest.approx(want, abs=1e-6), where
    elif isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), (where, sorted(set(got) ^ set(want)))
        for key in want:
            _assert_close(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            _assert_close(g, w, f"{where}[{i}]")
    else:
        assert got == want, (where, got, want)


def raw_request(port: int, head: str, body: bytes = b"", *, read: bool = True, timeout: float = 30.0) -> bytes:
    """Send exactly ``head`` + ``body`` over a socket and (optionally) read what comes back."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head.encode("latin-1") + body)
        if not read:
            return b""
        data = b""
        try:
            while b"\r\n\r\n" not in data or len(data) < data.find(b"\r\n\r\n") + 4 + _content_length(data):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except (ConnectionResetError, socket.timeout):
            pass
        return data


def _content_length(data: bytes) -> int:
    found = re.search(rb"content-length: (\d+)", data.split(b"\r\n\r\n")[0], re.I)
    return int(found.group(1)) if found else 0


# -- health, spec and auth -----------------------------------------------------------------------------------
def test_health_ready_and_the_served_spec_is_the_committed_one(server):
    assert httpx.get(server.base + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(server.base + "/readyz")
    assert ready.status_code == 200
    states = {m["modality"]: m for m in ready.json()["models"]}
    assert states["audio"]["state"] == "ready" and states["image"]["state"] == "ready"
    committed = json.loads((REPO / "docs" / "openapi.json").read_text(encoding="utf-8"))
    assert httpx.get(server.base + "/openapi.json").json() == committed
    assert (REPO / "docs" / "openapi.json").read_text(encoding="utf-8") == render(), (
        "docs/openapi.json is stale: python -m medzero.service.openapi > docs/openapi.json"
    )
    for path in ("/docs", "/redoc"):  # no UI that would fetch scripts from a CDN
        assert_error(httpx.get(server.base + path), 404, "not_found")


def test_api_keys_from_the_file_its_hashes_and_the_environment(server):
    for token in (TOKEN, HASHED_TOKEN, ENV_TOKEN):
        with server.client(token) as client:
            assert client.get("/v1/tasks").status_code == 200
    with server.client(None) as client:
        missing = client.get("/v1/tasks")
        assert_error(missing, 401, "unauthorized")
        assert missing.headers["www-authenticate"] == "Bearer"
        assert_error(client.get("/v1/models", headers={"Authorization": "Bearer " + TOKEN[:-1]}), 401)
        assert_error(client.get("/v1/tasks", headers={"Authorization": "Basic " + TOKEN}), 401)
        assert_error(client.get("/v1/tasks", headers={"Authorization": "Bearer sha256:" + hash_token(HASHED_TOKEN)}), 401)
        assert_error(client.post("/v1/classify", content=b"RIFF"), 401)
        assert_error(client.post("/v1/index/clinic/search", json={"text": "x"}), 401)
    with server.client() as client:  # CORS is off unless --cors-origin names an origin
        cross = client.get("/v1/tasks", headers={"Origin": "https://elsewhere.example"})
        assert cross.status_code == 200 and "access-control-allow-origin" not in cross.headers
        preflight = client.options("/v1/classify", headers={"Origin": "https://elsewhere.example",
                                                            "Access-Control-Request-Method": "POST"})
        assert preflight.status_code == 405 and "access-control-allow-origin" not in preflight.headers


def test_a_request_without_a_key_is_refused_before_its_body_is_read(server):
    head = ("POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\n"
            "Content-Length: 10000000000\r\n\r\n")
    reply = raw_request(server.port, head, timeout=20)
    assert reply.startswith(b"HTTP/1.1 401"), reply[:200]


# -- catalogue ---------------------------------------------------------------------------------------------
def test_tasks_and_models(server):
    with server.client() as client:
        tasks = client.get("/v1/tasks").json()["tasks"]
        models = client.get("/v1/models").json()
    assert [t["name"] for t in tasks] == [t.name for t in medzero.list_tasks()]
    voice = next(t for t in tasks if t["name"] == "voice_quality")
    shipped = medzero.load_task("voice_quality")
    assert voice["modality"] == "audio" and [lb["id"] for lb in voice["labels"]] == shipped.label_ids()
    assert [v["id"] for v in voice["verdicts"]] == [v.id for v in shipped.verdicts]
    assert all(set(lb["name"]) == {"en", "zh"} for lb in voice["labels"])
    assert [m["name"] for m in models["models"]] == [m.name for m in medzero.list_models()]
    served = {m["modality"]: m for m in models["served"]}
    assert served["audio"]["state"] == "ready" and served["audio"]["fingerprint"]


# -- classification ------------------------------------------------------------------------------------------
def test_classify_multipart_and_raw_body_equal_the_library(server, direct, audio_clips):
    expected = direct["labels"].classify(audio_clips["speech"])
    with server.client() as client:
        multipart = client.post(
            "/v1/classify", files={"file": (PHI_NAME, audio_clips["speech"].read_bytes(), "audio/wav")},
            data={"labels": LABELS, "lang": "zh"},
        )
        raw = client.post(  # curl --data-binary sends this Content-Type; the content decides
            "/v1/classify", params={"labels": LABELS}, content=audio_clips["speech"].read_bytes(),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
    for response in (multipart, raw):
        assert response.status_code == 200, response.text
        result = response.json()["result"]
        assert result["path"] == "upload" and result["error"] is None
        assert result["calibration"]["status"] == "uncalibrated" and result["applicable"] is True
        assert_same_result(result, expected)
        assert int(response.headers["x-medzero-batch-size"]) >= 1
    assert multipart.json()["lang"] == "zh" and multipart.json()["summary"] == expected.summary("zh")
    assert raw.json()["lang"] == "en" and raw.json()["summary"] == expected.summary("en")
    assert PHI_NAME not in multipart.text


def test_dnsmos_is_measured_where_the_task_uses_it_or_the_client_asks(server, audio_clips):
    """As the library: ad-hoc labels go without DNSMOS's mos_* metrics unless ``mos=true`` (query or
    form field), voice_quality measures them, and ``mos=false`` declines."""
    mos = {"mos_sig", "mos_bak", "mos_ovrl"}
    body = audio_clips["speech"].read_bytes()
    with server.client() as client:
        def metrics(params=None, data=None) -> set[str]:
            if data is not None:
                response = client.post("/v1/classify", files={"file": ("a.wav", body, "audio/wav")}, data=data)
            else:
                response = client.post("/v1/classify", params=params, content=body)
            assert response.status_code == 200, response.text
            return set(response.json()["result"]["metrics"])

        assert not mos & metrics({"labels": LABELS})
        assert mos <= metrics({"labels": LABELS, "mos": "true"}) and mos <= metrics(data={"labels": LABELS, "mos": "true"})
        assert mos <= metrics({"task": "voice_quality"}) and not mos & metrics({"task": "voice_quality", "mos": "false"})


def test_a_shipped_task_and_a_dicom_keep_phi_out(server, direct, dicom_files, audio_clips):
    with server.client() as client:
        image = client.post("/v1/classify", content=dicom_files["phi"].read_bytes())
        voice = client.post("/v1/classify", params={"task": "voice_quality"}, content=audio_clips["noisy_0db"].read_bytes())
    assert image.status_code == 200, image.text
    result = image.json()["result"]
    assert result["task"] == "chest_xray_findings" and result["modality"] == "image"
    assert result["metadata"]["ViewPosition"] == "PA"
    assert_same_result(result, direct["default"].classify(dicom_files["phi"]))
    for value in ("Doe^Jane^Q", "MRN-99812345", "Saint Example General Hospital", "19510317"):
        assert value not in image.text
    assert voice.status_code == 200, voice.text
    assert_same_result(voice.json()["result"], direct["voice_quality"].classify(audio_clips["noisy_0db"]))


def test_a_ct_is_not_applicable_to_the_chest_xray_task(server, direct, dicom_files):
    """Abstaining comes through whole: verdict not_applicable, a tag reason without numbers, the checks."""
    with server.client() as client:
        response = client.post("/v1/classify", params={"lang": "zh"}, content=dicom_files["ct"].read_bytes())
    assert response.status_code == 200, response.text
    result = response.json()["result"]
    assert result["verdict"] == "not_applicable" and result["applicable"] is False
    assert result["applicability"]["checks"]["dicom"] == "fail"
    tag_reasons = [r for r in result["reasons"] if r["kind"] == "applicability" and r["value"] is None]
    assert tag_reasons and all(r["limit"] is None and r["text"]["en"] for r in tag_reasons)
    assert response.json()["summary"].startswith("不适用")
    assert_same_result(result, direct["default"].classify(dicom_files["ct"]))


def test_a_calibration_overlay_is_named_not_pathed(server, direct, audio_clips, calibrations):
    """calibration=NAME applies the server's overlay NAME.yaml; the result says so, without the server's path."""
    clip = audio_clips["noisy_10db"]
    with server.client() as client:
        tasks = {t["name"]: t for t in client.get("/v1/tasks").json()["tasks"]}
        site = client.post("/v1/classify", params={"task": "voice_quality", "calibration": "ward-3"}, content=clip.read_bytes())
        form = client.post("/v1/classify", files={"file": ("x", clip.read_bytes())},
                           data={"task": "voice_quality", "calibration": "ward-3"})
        batch = client.post("/v1/classify/batch", files=[("files", ("x", clip.read_bytes()))],
                            data={"task": "voice_quality", "calibration": "ward-3"})
        plain = client.post("/v1/classify", params={"task": "voice_quality"}, content=clip.read_bytes())
        errors = {
            "unknown": client.post("/v1/classify", params={"task": "voice_quality", "calibration": "ward-4"}, content=clip.read_bytes()),
            "path": client.post("/v1/classify", params={"task": "voice_quality", "calibration": str(server.log_path)},
                                content=clip.read_bytes()),
            "no task": client.post("/v1/classify", params={"labels": LABELS, "calibration": "ward-3"}, content=clip.read_bytes()),
            "other task": client.post("/v1/classify", params={"task": "respiratory_sounds", "calibration": "ward-3"},
                                      content=clip.read_bytes()),
        }
    assert tasks["voice_quality"]["calibrations"] == ["ward-3"] and tasks["chest_xray_findings"]["calibrations"] == []
    expected = direct["ward-3"].classify(clip)
    for response in (site, form):
        assert response.status_code == 200, response.text
        result = response.json()["result"]
        assert result["thresholds"]["background_noise"] == 0.0123
        assert result["calibration"]["status"] == "calibrated" and result["calibration"]["path"] == "ward-3.yaml"
        assert result["calibration"]["sources"]["background_noise"].startswith("calibrated on 40 rows")
        assert_same_result(result, expected)
    assert batch.status_code == 200, batch.text
    assert_same_result(batch.json()["results"][0]["result"], expected, name="upload-1")
    assert plain.json()["result"]["calibration"]["status"] == "uncalibrated"
    assert plain.json()["result"]["thresholds"]["background_noise"] == 0.5
    assert "ward-3" in assert_error(errors["unknown"], 422, "invalid_request")["detail"]
    assert str(calibrations) not in assert_error(errors["path"], 422, "invalid_request")["detail"]  # a name, never a path
    assert "goes with a task" in assert_error(errors["no task"], 422)["detail"]
    assert "not respiratory_sounds" in assert_error(errors["other task"], 422)["detail"]


def test_batch_keeps_order_and_gives_a_bad_file_its_own_row(server, direct, audio_clips, dicom_files):
    paths = [audio_clips["speech"], None, dicom_files["mono2"], audio_clips["m4a"]]
    files = [("files", (PHI_NAME, p.read_bytes() if p else BODY_MARKER * 20, "application/octet-stream")) for p in paths]
    with server.client() as client:
        response = client.post("/v1/classify/batch", files=files, data={"labels": LABELS})
    assert response.status_code == 200, response.text
    items = response.json()["results"]
    assert [it["result"]["path"] for it in items] == ["upload-1", "upload-2", "upload-3", "upload-4"]
    assert [it["result"]["modality"] for it in items] == ["audio", "unknown", "image", "audio"]
    bad = items[1]["result"]
    assert bad["scores"] == {} and bad["error"].startswith("upload-2 is neither audio nor an image")
    assert items[1]["summary"] == bad["error"]
    for i, (item, path) in enumerate(zip(items, paths), 1):
        if path is not None:
            assert_same_result(item["result"], direct["labels"].classify(path), name=f"upload-{i}")
    assert PHI_NAME not in response.text and BODY_MARKER.decode() not in response.text


def test_bad_files_get_400_and_415(server, image_files, audio_clips):
    with server.client() as client:
        body = assert_error(client.post("/v1/classify", content=BODY_MARKER * 50), 415, "unsupported_media_type")
        assert body["detail"].startswith("upload is neither audio nor an image")
        truncated = assert_error(client.post("/v1/classify", content=image_files["truncated.png"].read_bytes()), 400, "bad_input")
        assert truncated["detail"].startswith("upload")
        wav = audio_clips["speech"].read_bytes()
        assert_error(client.post("/v1/classify", content=wav[:60]), 400, "bad_input")
        assert_error(client.post("/v1/classify", content=b""), 400, "bad_input")
        two = [("file", ("a", wav, "audio/wav")), ("file", ("b", wav, "audio/wav"))]
        assert_error(client.post("/v1/classify", files=two), 413, "too_large")
        broken = client.post(
            "/v1/classify", content=b"--xyz\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nRIFF",
            headers={"Content-Type": "multipart/form-data; boundary=xyz"},
        )
        assert_error(broken, 400, "bad_input")
    assert BODY_MARKER.decode() not in body["detail"]


def test_bad_options_get_422(server, audio_clips, dicom_files):
    wav = audio_clips["speech"].read_bytes()
    with server.client() as client:
        cases = [
            {"lang": "fr"},
            {"task": "no_such_task"},
            {"task": "../../etc/passwd.yaml"},
            {"task": "voice_quality", "labels": "a,b"},
            {"template": "This is {}."},
            {"labels": "a,b", "template": "no placeholder"},
            {"labels": ",".join(f"label {i}" for i in range(65))},
        ]
        for params in cases:
            assert_error(client.post("/v1/classify", params=params, content=wav), 422, "invalid_request")
        assert_error(client.post("/v1/classify", files={"file": ("x", wav)}, data={"colour": "red"}), 422)
        wrong = assert_error(client.post("/v1/classify", params={"task": "voice_quality"}, content=dicom_files["mono2"].read_bytes()), 422)
        assert "voice_quality is for audio" in wrong["detail"]


def test_oversized_bodies_get_413(server, audio_clips):
    big = audio_clips["speech"].read_bytes()
    big = big + b"\0" * (int(1.5 * (1 << 20)) - len(big))
    with server.client() as client:
        assert_error(client.post("/v1/classify", content=big), 413, "too_large")

        def chunks():  # no Content-Length: chunked transfer, counted as it streams
            for start in range(0, len(big), 64 * 1024):
                yield big[start : start + 64 * 1024]

        assert_error(client.post("/v1/classify", content=chunks()), 413, "too_large")
        many = [("files", (f"f{i}", b"x" * 300_000, "audio/wav")) for i in range(16)]
        assert_error(client.post("/v1/classify/batch", files=many), 413, "too_large")
    # A declared length over the limit is refused at once: the server does not wait for the body.
    head = (f"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
            "Content-Type: application/octet-stream\r\nContent-Length: 10000000000\r\n\r\n")
    started = time.monotonic()
    reply = raw_request(server.port, head, timeout=20)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert json.loads(reply.split(b"\r\n\r\n", 1)[1])["error"] == "too_large"
    assert time.monotonic() - started < 10


def _send_at_once(server, jobs, params):
    """POST each (path, config) job from its own client, all released at the same moment."""
    barrier = threading.Barrier(len(jobs))

    def send(job):
        path, config = job
        with server.client() as client:
            barrier.wait(30)
            return client.post("/v1/classify", params=params[config], content=path.read_bytes())

    with ThreadPoolExecutor(len(jobs)) as pool:
        return list(pool.map(send, jobs))


def test_concurrent_clients_get_their_own_results(server, direct, audio_clips, dicom_files, image_files):
    """Different files and options at once: every answer equals the library's for that file alone."""
    jobs = []
    for i, key in enumerate(["speech", "noisy_0db", "noisy_10db", "noisy_20db", "telephone", "clipped", "noise", "flac", "mp3", "amr"]):
        jobs.append((audio_clips[key], "labels" if i % 2 == 0 else "voice_quality"))
    jobs += [(dicom_files["mono2"], "labels"), (image_files["rgb.png"], "labels"), (dicom_files["ct"], "default")]
    params = {"labels": {"labels": LABELS}, "voice_quality": {"task": "voice_quality"}, "default": {}}
    responses = _send_at_once(server, jobs, params)
    sizes = []
    for (path, config), response in zip(jobs, responses):
        assert response.status_code == 200, response.text
        assert_same_result(response.json()["result"], direct[config].classify(path))
        sizes.append(int(response.headers["x-medzero-batch-size"]))
    assert max(sizes) > 1, f"no request shared a forward pass: {sizes}"


def test_requests_with_different_options_share_a_forward_pass(server, direct, audio_clips):
    """Gathered by model, not by options: four configurations at once, each scored by its own options."""
    params = {"labels": {"labels": LABELS}, "voice_quality": {"task": "voice_quality"},
              "ward-3": {"task": "voice_quality", "calibration": "ward-3"}, "default": {}}
    jobs = list(zip([audio_clips[k] for k in ("speech", "noisy_10db", "noisy_10db", "telephone")], params))
    responses = _send_at_once(server, jobs, params)
    for (path, config), response in zip(jobs, responses):
        assert response.status_code == 200, response.text
        assert_same_result(response.json()["result"], direct[config].classify(path))
    sizes = [int(r.headers["x-medzero-batch-size"]) for r in responses]
    assert max(sizes) > 1, f"requests with different options did not share a forward pass: {sizes}"


def test_a_client_that_hangs_up_mid_upload_does_not_hurt_the_server(server, audio_clips):
    wav = audio_clips["speech"].read_bytes()
    head = (f"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {len(wav)}\r\n\r\n")
    raw_request(server.port, head, wav[: len(wav) // 3], read=False)
    boundary = "b0undary"
    part = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{PHI_NAME}\"\r\n"
            "Content-Type: audio/wav\r\n\r\n").encode() + wav
    head = (f"POST /v1/classify/batch HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = part[: len(part) // 2]
    raw_request(server.port, head, f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n", read=False)
    time.sleep(0.5)
    assert server.proc.poll() is None
    assert httpx.get(server.base + "/healthz").status_code == 200
    with server.client() as client:
        after = client.post("/v1/classify", params={"labels": LABELS}, content=wav)
    assert after.status_code == 200 and after.json()["result"]["error"] is None


# -- case search ----------------------------------------------------------------------------------------------
def test_cases_are_added_and_found_by_text_and_by_example(server, audio_clips, dicom_files, image_files):
    speech, noise, xray = audio_clips["speech"], audio_clips["noise"], dicom_files["phi"]
    files = [("files", (PHI_NAME, p.read_bytes(), "application/octet-stream")) for p in (speech, noise, xray)]
    files.append(("files", ("notes.txt", BODY_MARKER * 10, "text/plain")))
    with server.client() as client:
        added = client.post("/v1/index/clinic-1/cases", files=files, data={"task": "voice_quality"})
        assert added.status_code == 200, added.text
        report = added.json()
        assert len(report["added"]) == 3 and report["duplicates"] == []
        assert len(report["errors"]) == 1 and "neither audio nor an image" in report["errors"][0]["error"]
        kept = sorted(p.name for p in (Path(server.log_path).parent / "indexes" / "clinic-1" / "uploads").iterdir())
        assert kept == sorted(hashlib.sha256(p.read_bytes()).hexdigest() for p in (speech, noise, xray))
        again = client.post("/v1/index/clinic-1/cases", content=speech.read_bytes()).json()
        assert again["added"] == [] and len(again["duplicates"]) == 1

        text = client.post("/v1/index/clinic-1/search", json={"text": "a person speaking", "k": 5, "modality": "audio"})
        assert text.status_code == 200, text.text
        hits = text.json()["hits"]
        assert len(hits) == 2 and {h["modality"] for h in hits} == {"audio"}
        assert all(re.fullmatch(r"uploads/[0-9a-f]{64}", h["path"]) for h in hits)
        assert hits[0]["score"] >= hits[1]["score"]
        assert all(h["metadata"]["task"] == "voice_quality" for h in hits)

        example = client.post("/v1/index/clinic-1/search", params={"k": 2}, content=speech.read_bytes())
        assert example.status_code == 200, example.text
        top = example.json()["hits"][0]
        assert top["path"] == "uploads/" + hashlib.sha256(speech.read_bytes()).hexdigest()
        assert top["score"] == pytest.approx(1.0, abs=1e-4)

        filtered = client.post("/v1/index/clinic-1/search", json={"text": "a chest x-ray", "where": "ViewPosition=PA"})
        assert [h["modality"] for h in filtered.json()["hits"]] == ["image"]
        assert "Doe^Jane^Q" not in filtered.text
        multipart = client.post("/v1/index/clinic-1/search", files={"file": ("x", xray.read_bytes())}, data={"k": "1"})
        assert [h["modality"] for h in multipart.json()["hits"]] == ["image"]

        assert_error(client.post("/v1/index/nowhere/search", json={"text": "speech"}), 404, "not_found")
        assert_error(client.post("/v1/index/clinic-1/search", json={"text": "x", "k": 0}), 422)
        assert_error(client.post("/v1/index/clinic-1/search", json={"text": "x", "where": "no operator"}), 422)
        assert_error(client.post("/v1/index/clinic-1/search", content=b"{not json", headers={"Content-Type": "application/json"}), 422)
        assert_error(client.post("/v1/index/clinic-1/search", content=BODY_MARKER), 415, "unsupported_media_type")
        assert_error(client.post("/v1/index/clinic-1/search", content=image_files["truncated.png"].read_bytes()), 400, "bad_input")
        assert_error(client.post("/v1/index/clinic-1/cases", params={"task": "nope"}, content=speech.read_bytes()), 422)


def test_index_names_cannot_leave_the_index_root(server, audio_clips):
    root = Path(server.log_path).parent / "indexes"
    before = sorted(p.name for p in root.parent.iterdir())
    with server.client() as client:
        for name in ("..", "%2E%2E", ".hidden", "a.b", "x" * 65, "..%2F..%2Fescape", "a%00b"):
            response = client.post(f"/v1/index/{name}/cases", content=audio_clips["speech"].read_bytes())
            assert response.status_code in (404, 422), (name, response.status_code)
            assert set(response.json()) == {"error", "detail"}
    assert sorted(p.name for p in root.parent.iterdir()) == before
    assert not (root.parent / "escape").exists()


# -- overload ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def busy_server(model_env, tmp_path_factory):
    """Room for one waiting source, a 6 s gather window and a 3 s timeout; no API keys (loopback)."""
    srv = start_server(
        tmp_path_factory.mktemp("busy"),
        ["--insecure-no-auth", "--queue-size", "1", "--batch-window-ms", "6000", "--timeout", "3", "--preload", "audio"],
        model_env,
    )
    yield srv
    stop_server(srv)


def test_a_full_queue_gets_503_with_retry_after_and_a_slow_one_times_out(busy_server, audio_clips):
    wav = audio_clips["speech"].read_bytes()
    with busy_server.client(None) as client:
        assert client.get("/v1/tasks").status_code == 200  # --insecure-no-auth
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(client.post, "/v1/classify", content=wav)
            time.sleep(1.2)
            full = client.post("/v1/classify", content=wav)
            timed_out = first.result(30)
        assert_error(full, 503, "queue_full")
        assert full.headers["retry-after"] == "1"
        assert_error(timed_out, 503, "timeout")
        assert int(timed_out.headers["retry-after"]) > 0
        two = [("files", ("a", wav)), ("files", ("b", wav))]
        assert_error(client.post("/v1/classify/batch", files=two), 413, "too_large")  # more files than the queue holds
        # The timed-out request gave its place back: the next one is admitted. It joins the gather
        # window still open (200), or, on a slow machine, opens its own and times out in turn.
        after = client.post("/v1/classify", content=wav)
        assert after.status_code == 200 or assert_error(after, 503, "timeout")
    assert busy_server.proc.poll() is None


# -- two workers, no audio model, CORS on -----------------------------------------------------------------------
ORIGIN = "https://ris.hospital.example"


@pytest.fixture(scope="module")
def modelless_server(model_env, tmp_path_factory):
    """`--workers 2` on a site without the default audio model: never ready; one CORS origin allowed."""
    env = dict(model_env)
    for key, value in default_models_missing_env(tmp_path_factory.mktemp("no-models")).items():
        if key == "MEDZERO_IMAGE_MODEL":  # the image model stays the tiny one
            continue
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    srv = start_server(
        tmp_path_factory.mktemp("modelless"),
        ["--workers", "2", "--insecure-no-auth", "--preload", "audio", "--cors-origin", ORIGIN], env, ready=False,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(srv.base + "/healthz", timeout=5).status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    yield srv
    stop_server(srv)


def test_not_ready_without_the_model_yet_signal_only_verdicts_still_come(modelless_server, audio_clips):
    srv = modelless_server
    assert httpx.get(srv.base + "/healthz").json() == {"status": "ok"}
    deadline = time.monotonic() + 60
    while True:  # each worker reports on its own model load
        ready = httpx.get(srv.base + "/readyz")
        body = assert_error(ready, 503, "not_ready")
        if "laion/clap-htsat-fused" in body["detail"] or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert body["detail"].startswith("audio: ") and "(laion/clap-htsat-fused) is not available offline" in body["detail"]
    assert int(ready.headers["retry-after"]) > 0
    with srv.client(None) as client:
        served = {m["modality"]: m for m in client.get("/v1/models").json()["served"]}
        assert served["audio"]["state"] == "failed" and served["image"]["state"] == "on_demand"
        voice = client.post("/v1/classify", params={"task": "voice_quality"}, content=audio_clips["clipped"].read_bytes())
        labels = client.post("/v1/classify", params={"labels": LABELS}, content=audio_clips["clipped"].read_bytes())
    assert voice.status_code == 200, voice.text
    result = voice.json()["result"]
    assert result["signal_only"] is True and result["scores"] == {} and result["verdict"] == "re-record"
    assert result["reasons"][-1]["kind"] == "note" and result["reasons"][-1]["verdict"] is None
    assert any(r["kind"] == "metric" and r["id"] == "clipping_ratio" for r in result["reasons"])
    body = assert_error(labels, 503, "model_unavailable")
    assert "laion/clap-htsat-fused" in body["detail"] and int(labels.headers["retry-after"]) > 0


def test_cors_answers_only_the_configured_origin(modelless_server):
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"}
    allowed = httpx.options(modelless_server.base + "/v1/classify", headers={"Origin": ORIGIN, **preflight})
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in allowed.headers["access-control-allow-methods"]
    other = httpx.options(modelless_server.base + "/v1/classify", headers={"Origin": "https://evil.example", **preflight})
    assert_error(other, 400, "bad_input")
    assert "access-control-allow-origin" not in other.headers
    simple = httpx.get(modelless_server.base + "/v1/tasks", headers={"Origin": ORIGIN})
    assert simple.headers["access-control-allow-origin"] == ORIGIN


# -- the command line -------------------------------------------------------------------------------------------
def test_serve_refuses_to_run_without_keys_or_insecurely_off_loopback(monkeypatch, tmp_path):
    monkeypatch.delenv("MEDZERO_API_KEYS", raising=False)
    runner = CliRunner()
    result = runner.invoke(serve_command, ["--host", "0.0.0.0", "--insecure-no-auth"])
    assert result.exit_code == 2 and "loopback" in result.output
    result = runner.invoke(serve_command, ["--host", "127.0.0.1"])
    assert result.exit_code == 2 and "no API keys" in result.output
    bad = tmp_path / "keys"
    bad.write_text("sha256:not-hex\n")
    result = runner.invoke(serve_command, ["--api-key-file", str(bad)])
    assert result.exit_code == 2 and "entry 1" in result.output and "not-hex" not in result.output
    monkeypatch.setenv("MEDZERO_API_KEYS", ENV_TOKEN)
    result = runner.invoke(serve_command, ["--insecure-no-auth"])
    assert result.exit_code == 2 and "drop one" in result.output
    overlays = tmp_path / "overlays"
    overlays.mkdir()
    write_overlay(overlays / "ward.yaml", threshold=1.5)
    result = runner.invoke(serve_command, ["--calibration-dir", str(overlays)])
    assert result.exit_code == 2 and "ward.yaml" in result.output and "between 0 and 1" in result.output
    (overlays / "ward.yaml").write_text(yaml.safe_dump({"overlay_for": "no_such_task", "labels": {"x": {"threshold": 0.5}}}))
    result = runner.invoke(serve_command, ["--calibration-dir", str(overlays)])
    assert result.exit_code == 2 and "no_such_task" in result.output
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("127.8.9.10")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3") and not is_loopback("::")


def test_api_keys_are_kept_as_hashes_and_checked_exactly():
    hashes = parse_keys([f"  {TOKEN}  ", "# comment", "", f"SHA256:{hash_token(HASHED_TOKEN).upper()}", TOKEN])
    assert hashes == [hash_token(TOKEN), hash_token(HASHED_TOKEN)]
    keys = ApiKeys(hashes)
    assert keys.check_header(f"Bearer {TOKEN}") and keys.check_header(f"bearer {HASHED_TOKEN}")
    for header in (None, "", "Bearer", "Bearer ", f"Bearer {TOKEN}x", f"Token {TOKEN}", f"Bearer {hash_token(TOKEN)}"):
        assert not keys.check_header(header), header
    for entry in ("short", "has space inside-xxxxxxxx", "sha256:abc"):
        with pytest.raises(ValueError):
            parse_keys([entry])
    assert load_api_keys(None, {"MEDZERO_API_KEYS": f"{TOKEN}, sha256:{hash_token(ENV_TOKEN)}"}) == [
        hash_token(TOKEN), hash_token(ENV_TOKEN)
    ]
    with pytest.raises(ValueError):
        ApiKeys([])


def test_response_models_have_exactly_the_library_fields(tmp_path):
    """Every key of the library's to_dict() is a field, and what the service serialises (as it does: unset
    keys left out) is the library's JSON unchanged, for each shape a Result takes."""
    from medzero.tasks.overlay import load_overlay

    label = medzero.Reason(kind="label", id="x", name={"en": "X", "zh": "X"}, value=0.9, limit=0.5, direction="above",
                           verdict="review", advice={"en": "Look", "zh": "看"})
    tag = medzero.Reason(kind="applicability", id="dicom.Modality", name={"en": "Modality", "zh": "模态"}, value=None,
                         limit=None, direction="", verdict="not_applicable",
                         message={"en": "Modality CT is not CR or DX", "zh": "模态 CT 不是 CR 或 DX"})
    note = medzero.Reason(kind="note", id="signal_only", name={"en": "Signal only", "zh": "仅信号"}, value=None, limit=None,
                          direction="", verdict=None, message={"en": "signal-only verdict", "zh": "仅依据信号指标"})
    segment = medzero.Segment("x", 0.0, 10.0, 0.9)
    overlay = load_overlay(write_overlay(tmp_path / "site.yaml"))
    common = dict(source="s", modality="audio", task="t", model="m", scores={"x": 0.9}, verdict="review",
                  verdict_name={"en": "Review", "zh": "复核"}, label_names={"x": {"en": "X", "zh": "X"}}, thresholds={"x": 0.5})
    results = [
        medzero.Result(**common, reasons=[label], segments=[segment], metrics={"snr_db": 12.5},
                       timeline={"start": [0.0, 5.0], "end": [10.0, 15.0], "scores": {"x": [0.1, 0.9]}},
                       calibration={"status": "uncalibrated", "summary": "uncalibrated: defaults"}),
        medzero.Result(**{**common, "verdict": "not_applicable"}, reasons=[tag], applicable=False,
                       applicability={"checks": {"dicom": "fail"}}, calibration={"status": "calibrated", **overlay.result_info()}),
        medzero.Result(**{**common, "scores": {}, "model": ""}, reasons=[note], signal_only=True,
                       applicability={"checks": {}, "gate": {"score": None, "min_score": 0.5, "decides": False}}),
        medzero.Result.failed("upload", medzero.MedzeroError("bad")),
    ]
    hit = medzero.Hit(id=1, path="p", score=0.5, modality="audio", metadata={"task": "t"})
    report = medzero.AddReport(added=[3], duplicates=["a"], errors=[("b", "b is neither audio nor an image")])
    pairs = [(schemas.ResultModel, r.to_dict()) for r in results]
    pairs += [(schemas.ReasonModel, r.to_dict()) for r in (label, tag, note)]
    pairs += [(schemas.SegmentModel, segment.to_dict()), (schemas.HitModel, hit.to_dict()), (schemas.AddReportModel, report.to_dict())]
    for model, data in pairs:
        assert set(model.model_fields) == set(data), model.__name__
        plain = json.loads(json.dumps(data))
        assert model.model_validate(plain).model_dump(mode="json", exclude_unset=True) == plain, model.__name__
    calibrated = results[1].to_dict()["calibration"]
    assert set(schemas.CalibratedModel.model_fields) == set(calibrated)
    assert set(schemas.UncalibratedModel.model_fields) == set(results[0].to_dict()["calibration"])
    assert set(schemas.ApplicabilityModel.model_fields) == set(results[2].to_dict()["applicability"])
    assert set(schemas.GateModel.model_fields) == set(results[2].to_dict()["applicability"]["gate"])


# Last in the file: it reads the log of everything the server did above.
def test_the_log_has_requests_but_no_names_labels_bodies_or_tracebacks(server):
    with server.client() as client:
        client.post("/v1/classify", params={"labels": f"{SECRET_LABEL},music"}, content=BODY_MARKER * 10)
    time.sleep(0.3)
    log = server.log()
    assert re.search(r"POST /v1/classify 200 \d+ms", log), log[-2000:]
    assert "POST /v1/index/{name}/search 200" in log and "POST /v1/classify 415" in log
    for secret in (PHI_NAME, "Zhang_Wei", BODY_MARKER.decode(), SECRET_LABEL, "clinic-1", TOKEN, HASHED_TOKEN, ENV_TOKEN,
                   "Doe^Jane^Q", "MRN-99812345", "upload-2 is neither"):
        assert secret not in log, secret
    assert "Traceback" not in log and "Exception" not in log, log[-3000:]
