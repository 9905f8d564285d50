"""The exported backends when things go wrong: an export torch refuses is remembered (``auto`` uses
torch at once in every later process, with one warning), no temporary folder is left behind, and
one Ctrl-C while a model loads ends ``medzero classify`` at once. Real exports of real checkpoints
in the real formats, run by the real command line in subprocesses.

An export is made to fail for real by asking for an ONNX opset that cannot express the model
(``MEDZERO_ONNX_OPSET=9``: CLAP's audio tower resizes with bicubic interpolation, an opset 11
operator), which torch's exporter refuses.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from medzero.encoders import backends as backends
from medzero.encoders import factory as encoders
from medzero.core.errors import ModelUnavailableError

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

REFUSED_OPSET = "9"


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty medzero cache for this test and the processes it starts, and no loaded encoders."""
    path = tmp_path / "cache"
    monkeypatch.setenv("MEDZERO_CACHE_DIR", str(path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("MEDZERO_BACKEND", raising=False)
    monkeypatch.delenv(backends.OPSET_ENV, raising=False)
    encoders.clear_loaded()
    yield path
    encoders.clear_loaded()


@pytest.fixture(scope="module")
def tone(tmp_path_factory) -> Path:
    """A 3 s 440 Hz tone as a 48 kHz 16-bit WAV."""
    path = tmp_path_factory.mktemp("tone") / "tone.wav"
    t = np.arange(48000 * 3) / 48000
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(48000)
        out.writeframes((0.3 * np.sin(2 * np.pi * 440 * t) * 32767).astype("<i2").tobytes())
    return path


def _medzero() -> list[str]:
    """The ``medzero`` command as installed (its console script), else ``python -m medzero.cli``."""
    script = Path(sys.executable).with_name("medzero")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "medzero.cli"]


def _cli(args: list[str], **env: str) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    run = subprocess.run([*_medzero(), *args], capture_output=True, text=True, timeout=600,
                         env={**os.environ, **env})
    return run, time.monotonic() - start


def _leftovers(cache: Path) -> list[str]:
    root = cache / "onnx"
    return sorted(p.name for p in root.iterdir() if p.name.endswith(".tmp")) if root.is_dir() else []


def _exports(cache: Path) -> list[Path]:
    root = cache / "onnx"
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []


def _markers(cache: Path) -> list[Path]:
    root = cache / "onnx"
    return sorted(root.glob("*.refused.json")) if root.is_dir() else []


# -- a refused export ---------------------------------------------------------------------------------


def test_a_refused_export_is_remembered_and_auto_uses_torch_at_once(tiny_clap_dir, tone, cache):
    """First process: torch refuses the export, one warning, torch's scores, the refusal written
    down, no temporary folder. Second process: no export tried (the log says why), one warning."""
    args = ["-v", "classify", "--format", "json", "--labels", "speech,noise", "--audio-model", str(tiny_clap_dir), str(tone)]
    first, first_s = _cli(args, **{backends.OPSET_ENV: REFUSED_OPSET})
    second, second_s = _cli(args, **{backends.OPSET_ENV: REFUSED_OPSET})
    reference, _ = _cli(["classify", "--format", "json", "--backend", "torch", "--labels", "speech,noise",
                         "--audio-model", str(tiny_clap_dir), str(tone)])

    for run in (first, second):
        assert run.returncode == 0, run.stderr
        assert "Traceback" not in run.stderr and "graph(" not in run.stdout + run.stderr  # no exporter graph dump
        (result,) = json.loads(run.stdout)  # standard output is the JSON and nothing else
        assert result["error"] is None
        assert result["scores"] == pytest.approx(json.loads(reference.stdout)[0]["scores"], abs=1e-9)  # torch's own
        warnings = [line for line in run.stderr.splitlines() if "WARNING" in line]
        assert len(warnings) == 1 and warnings[0].endswith("; using torch"), run.stderr
    assert "(once per model)" in first.stderr and "torch cannot export" in first.stderr and "opset 9" in first.stderr
    assert "(once per model)" not in second.stderr, second.stderr  # not tried again
    assert "its ONNX export was refused on" in second.stderr and ".refused.json" in second.stderr

    (marker,) = _markers(cache)
    record = json.loads(marker.read_text())
    assert "UnsupportedOperatorError" in record["reason"] and "opset 9" in record["reason"]
    first_tried = backends.runtime(backends.choose("auto", "clap", "cpu"))  # openvino where installed, else onnxruntime
    assert set(record["versions"]) == {"medzero", "torch", "onnx", first_tried} and all(record["versions"].values())
    assert _exports(cache) == [] and _leftovers(cache) == []
    print(f"first process {first_s:.1f} s (export refused), second {second_s:.1f} s")


def test_a_named_backend_gets_the_remembered_refusal_in_one_line(tiny_clap_dir, tone, cache):
    env = {backends.OPSET_ENV: REFUSED_OPSET}
    args = ["classify", "--backend", "onnx", "--labels", "speech,noise", "--audio-model", str(tiny_clap_dir), str(tone)]
    first, _ = _cli(args, **env)
    again, _ = _cli(["-v", *args], **env)
    for run in (first, again):
        assert run.returncode == 1 and "Traceback" not in run.stderr and "graph(" not in run.stdout + run.stderr
        errors = [line for line in run.stderr.splitlines() if line.startswith("medzero: error:")]
        assert len(errors) == 1 and "opset 9" in errors[0], run.stderr
    assert "torch cannot export" in first.stderr
    assert "(once per model)" not in again.stderr and "remembered in" in again.stderr
    assert _leftovers(cache) == []


def test_an_upgrade_tries_the_export_again(tiny_clap_dir, cache, monkeypatch):
    """A refusal recorded under other versions (here: an older torch) is not trusted: the export
    is tried again and the record renewed; a refusal under these versions is not tried again."""
    monkeypatch.setenv(backends.OPSET_ENV, REFUSED_OPSET)
    with pytest.raises(ModelUnavailableError, match="torch cannot export"):
        encoders.create(str(tiny_clap_dir), modality="audio", device="cpu", backend="onnx")
    (marker,) = _markers(cache)
    record = json.loads(marker.read_text())
    encoders.clear_loaded()
    with pytest.raises(ModelUnavailableError, match="its ONNX export was refused on"):
        encoders.create(str(tiny_clap_dir), modality="audio", device="cpu", backend="onnx")

    marker.write_text(json.dumps({**record, "versions": {**record["versions"], "torch": "2.0.0"}}))
    encoders.clear_loaded()
    with pytest.raises(ModelUnavailableError) as caught:
        encoders.create(str(tiny_clap_dir), modality="audio", device="cpu", backend="onnx")
    assert str(caught.value).startswith("torch cannot export")  # tried, not remembered
    assert json.loads(marker.read_text())["versions"] == record["versions"]

    monkeypatch.delenv(backends.OPSET_ENV)  # the opset that works: its own export, no refusal
    encoders.clear_loaded()
    encoder = encoders.create(str(tiny_clap_dir), modality="audio", device="cpu", backend="onnx")
    assert type(encoder).__name__ == "ClapOnnxEncoder" and len(_exports(cache)) == 1


def test_a_bad_opset_setting_is_one_line(tiny_clap_dir, cache, monkeypatch):
    monkeypatch.setenv(backends.OPSET_ENV, "seventeen")
    with pytest.raises(ModelUnavailableError, match="MEDZERO_ONNX_OPSET must be a whole number"):
        encoders.create(str(tiny_clap_dir), modality="audio", device="cpu", backend="onnx")


# -- temporary folders --------------------------------------------------------------------------------


def test_a_killed_exports_folder_is_removed_by_the_next_export(tiny_clap_dir, cache):
    """A process killed mid-export leaves its temporary folder; the next export on this machine
    removes it when its process is gone, and leaves a live process's folder alone."""
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    root = cache / "onnx"
    root.mkdir(parents=True)
    killed = root / f".clap-0123456789abcdef.tmp-{backends.HOST}-{int(gone.stdout)}-k1ll3d.tmp"
    live = root / f".clap-0123456789abcdef.tmp-{backends.HOST}-{os.getppid()}-w0rk1n.tmp"
    for folder in (killed, live):
        folder.mkdir()
        (folder / "audio.onnx").write_bytes(b"half a model")
    encoders.create(str(tiny_clap_dir), modality="audio", device="cpu", backend="onnx")
    assert not killed.exists() and live.exists()
    assert _leftovers(cache) == [live.name] and len(_exports(cache)) == 1


# -- Ctrl-C during model loading ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def slow_clap_dir(tiny_clap_dir, tmp_path_factory) -> Path:
    """The tiny CLAP's tokenizer and features with wider, deeper towers (57 MB of random weights):
    its ONNX export takes seconds, as a real model's does (about 10 s for CLAP-HTSAT)."""
    import torch
    from transformers import ClapConfig, ClapModel, ClapProcessor

    config = ClapConfig.from_pretrained(tiny_clap_dir)
    config.text_config.update({"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 1024})
    config.audio_config.update({"patch_embeds_hidden_size": 64, "hidden_size": 512, "depths": [2, 2, 4, 2],
                                "num_attention_heads": [2, 4, 8, 16]})
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("slow-clap") / "clap"
    ClapModel(config).eval().save_pretrained(folder)
    ClapProcessor.from_pretrained(tiny_clap_dir).save_pretrained(folder)
    return folder


#: How long one Ctrl-C may take to end the command (it measured under 0.6 s on a loaded 2-core
#: machine; before, it waited for the export to finish: 8-25 s).
STOP_WITHIN_S = 3.0


def test_one_ctrl_c_during_model_loading_stops_classify_at_once(slow_clap_dir, tone, cache):
    """SIGINT while the model's first ONNX export runs (in a worker thread): exit status 130
    within seconds, one line, no traceback, nothing half-exported left in the cache."""
    command = [*_medzero(), "classify", "--labels", "speech,noise", "--audio-model", str(slow_clap_dir), str(tone)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        deadline = time.monotonic() + 300
        while not _leftovers(cache):  # the export has started: the model is loaded, the towers are being traced
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the export never started"
            time.sleep(0.02)
        time.sleep(0.3)
        assert process.poll() is None
        process.send_signal(signal.SIGINT)
        sent = time.monotonic()
        try:
            out, err = process.communicate(timeout=STOP_WITHIN_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"one Ctrl-C did not stop medzero classify within {STOP_WITHIN_S} s")
        took = time.monotonic() - sent
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 130, err
    assert "Traceback" not in err and err.strip() == "medzero: aborted", err
    assert out == ""
    assert _leftovers(cache) == [] and _exports(cache) == []  # the unfinished export removed, none half-made
    print(f"stopped {took:.2f} s after SIGINT")


# -- OpenVINO's cache of compiled models --------------------------------------------------------------

openvino_only = pytest.mark.skipif(
    __import__("importlib.util").util.find_spec("openvino") is None, reason="openvino is not installed"
)


def _compiled(cache: Path) -> dict[Path, tuple[int, int, int]]:
    """The compiled models OpenVINO keeps beside the exports: path -> (inode, size, mtime)."""
    found = {}
    for blob in sorted((cache / "onnx").glob(f"*/{backends.OPENVINO_CACHE}/*.blob")):
        info = blob.stat()
        found[blob] = (info.st_ino, info.st_size, info.st_mtime_ns)
    return found


def _openvino_scores(tiny_clap_dir: Path, tone: Path) -> tuple[subprocess.CompletedProcess, dict | None]:
    run, _ = _cli(["classify", "--format", "json", "--backend", "openvino", "--labels", "speech,noise",
                   "--audio-model", str(tiny_clap_dir), str(tone)])
    return run, (json.loads(run.stdout)[0]["scores"] if run.returncode == 0 else None)


def _cache_leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in (cache / "onnx").glob(f"*/{backends.OPENVINO_CACHE}/.*"))


@openvino_only
def test_openvino_keeps_its_compiled_model_for_the_next_process(tiny_clap_dir, tone, cache):
    """The first process compiles both towers and keeps them; the next imports them (nothing
    compiled or written again) and scores the same."""
    first, scores = _openvino_scores(tiny_clap_dir, tone)
    assert first.returncode == 0, first.stderr
    compiled = _compiled(cache)
    assert len(compiled) == 2, compiled  # the audio tower and the text tower
    again, scores_again = _openvino_scores(tiny_clap_dir, tone)
    assert again.returncode == 0, again.stderr
    assert _compiled(cache) == compiled  # the same files, untouched
    assert scores_again == pytest.approx(scores, abs=1e-7)
    assert _cache_leftovers(cache) == []


@openvino_only
def test_a_truncated_compiled_model_is_compiled_again(tiny_clap_dir, tone, cache):
    """A compiled model cut short (a full disk, a killed copy) is not trusted: the next process
    compiles again, scores the same, and leaves complete files behind (a later process imports
    them and writes nothing). The label cache is emptied so the text tower is loaded too."""
    _, scores = _openvino_scores(tiny_clap_dir, tone)
    compiled = _compiled(cache)
    assert len(compiled) == 2, compiled
    for blob, (_, size, _) in compiled.items():
        os.chmod(blob, 0o600)
        os.truncate(blob, size // 3)
    (cache / "text_embeddings.sqlite").unlink()
    run, scores_again = _openvino_scores(tiny_clap_dir, tone)
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr
    assert scores_again == pytest.approx(scores, abs=1e-7)
    repaired = _compiled(cache)
    assert repaired.keys() == compiled.keys()
    assert all(repaired[blob][1] > size // 3 for blob, (_, size, _) in compiled.items()), (compiled, repaired)
    (cache / "text_embeddings.sqlite").unlink()
    run, scores_again = _openvino_scores(tiny_clap_dir, tone)
    assert run.returncode == 0 and scores_again == pytest.approx(scores, abs=1e-7)
    assert _compiled(cache) == repaired  # complete: imported, not compiled and written again
    assert _cache_leftovers(cache) == []


@openvino_only
def test_openvino_without_a_writable_cache_still_runs(tiny_clap_dir, tone, cache):
    """Where the compiled models cannot be kept (here a file stands where their folder goes), the
    model is compiled each time, with the same scores and no error."""
    export, _ = _cli(["classify", "--backend", "onnx", "--labels", "speech,noise", "--audio-model", str(tiny_clap_dir), str(tone)])
    assert export.returncode == 0, export.stderr
    (directory,) = _exports(cache)
    (directory / backends.OPENVINO_CACHE).write_text("not a folder")
    run, scores = _openvino_scores(tiny_clap_dir, tone)
    assert run.returncode == 0 and "Traceback" not in run.stderr and "WARNING" not in run.stderr, run.stderr
    reference, _ = _cli(["classify", "--format", "json", "--backend", "torch", "--labels", "speech,noise",
                         "--audio-model", str(tiny_clap_dir), str(tone)])
    assert scores == pytest.approx(json.loads(reference.stdout)[0]["scores"], abs=1e-5)
    assert (directory / backends.OPENVINO_CACHE).read_text() == "not a folder"


@openvino_only
def test_processes_compiling_at_once_share_one_complete_cache(tiny_clap_dir, tone, cache):
    """Three processes compile the same model at once into an empty cache: each compiles in a
    folder of its own and renames the finished files in, so none reads a half-written one; all
    score the same, and a fourth process finds complete files (it writes nothing)."""
    export, _ = _cli(["classify", "--backend", "onnx", "--labels", "speech,noise", "--audio-model", str(tiny_clap_dir), str(tone)])
    assert export.returncode == 0, export.stderr
    (cache / "text_embeddings.sqlite").unlink()  # so that the text tower is compiled too
    command = [*_medzero(), "classify", "--format", "json", "--backend", "openvino", "--labels", "speech,noise",
               "--audio-model", str(tiny_clap_dir), str(tone)]
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ)) for _ in range(3)]
    outputs = [p.communicate(timeout=300) for p in processes]
    assert all(p.returncode == 0 for p in processes), [err for _, err in outputs]
    scores = [json.loads(out)[0]["scores"] for out, _ in outputs]
    assert all(s == pytest.approx(scores[0], abs=1e-7) for s in scores)
    compiled = _compiled(cache)
    assert len(compiled) == 2 and _cache_leftovers(cache) == []
    run, fourth = _openvino_scores(tiny_clap_dir, tone)
    assert run.returncode == 0 and fourth == pytest.approx(scores[0], abs=1e-7)
    assert _compiled(cache) == compiled
