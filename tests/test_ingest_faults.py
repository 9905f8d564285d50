"""What the ingest layer does with inputs that are not plain good files: nothing hangs, nothing is
skipped without a word, and a decoder's fault costs one source, never the batch.

Real files and the real ``medzero`` command (in a subprocess where a hang must be caught).
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from medzero.cli import main
from medzero.core import modality as modality_registry
from medzero.core.errors import BadInputError
from medzero.core.ingest import Pipeline, Source, expand


@pytest.fixture(autouse=True)
def _models(tiny_clap_dir, tiny_hf_clip_dir, monkeypatch):
    monkeypatch.setenv("MEDZERO_AUDIO_MODEL", str(tiny_clap_dir))
    monkeypatch.setenv("MEDZERO_IMAGE_MODEL", f"local-dir:{tiny_hf_clip_dir}")


def _cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """The installed ``medzero`` command, in a process of its own (a hang fails the test, not the run)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "medzero.cli", *args], capture_output=True, text=True, timeout=timeout, env=env)


def test_a_fifo_named_as_a_file_is_refused_at_once(tmp_path, audio_clips):
    fifo = tmp_path / "stream.wav"
    os.mkfifo(fifo)  # nobody writes to it: opening it for reading would block forever
    start = time.monotonic()
    run = _cli("classify", str(fifo), str(audio_clips["speech"]), "--format", "json", "--device", "cpu")
    assert time.monotonic() - start < 200
    assert run.returncode == 1, run.stderr
    rows = json.loads(run.stdout)
    assert [r["error"] is None for r in rows] == [False, True]  # the batch went on to the good file
    assert "is a FIFO (named pipe), not a regular file" in rows[0]["error"]
    assert "Traceback" not in run.stderr
    assert [line for line in run.stderr.splitlines() if "FIFO" in line] == [f"medzero: error: {rows[0]['error']}"]


def test_a_fifo_inside_a_folder_is_reported_as_skipped(tmp_path, audio_clips):
    folder = tmp_path / "visit"
    folder.mkdir()
    shutil.copy(audio_clips["speech"], folder / "a.wav")
    os.mkfifo(folder / "b.wav")
    run = _cli("classify", str(folder), "--format", "json", "--device", "cpu", timeout=200)
    assert run.returncode == 0, run.stderr
    assert [os.path.basename(r["path"]) for r in json.loads(run.stdout)] == ["a.wav"]
    assert "skipped 1 file that is neither audio nor an image: b.wav (not a regular file)" in run.stderr


def test_every_file_in_a_folder_is_classified_reported_as_an_error_or_said_skipped(tmp_path, audio_clips, capsys, caplog):
    folder = tmp_path / "visits"
    folder.mkdir()
    shutil.copy(audio_clips["speech"], folder / "a_good.wav")
    (folder / "b_empty.wav").write_bytes(b"")
    (folder / "c_text.wav").write_text("a text file saved as .wav")
    (folder / "d_notes.txt").write_text("notes on the visit")
    (folder / "e_empty.bin").write_bytes(b"")
    (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")  # hidden: not an input anybody meant
    code = main(["classify", str(folder), "--format", "json", "--device", "cpu"])
    out, err = capsys.readouterr()
    rows = {os.path.basename(r["path"]): r for r in json.loads(out)}
    assert code == 1
    assert list(rows) == ["a_good.wav", "b_empty.wav", "c_text.wav"]
    assert rows["a_good.wav"]["error"] is None
    assert rows["b_empty.wav"]["error"].endswith("b_empty.wav is empty (0 bytes)")
    assert "c_text.wav is neither audio nor an image" in rows["c_text.wav"]["error"]
    # the warning goes to stderr in the real command (the subprocess test above); pytest captures the log here
    assert "skipped 2 files that are neither audio nor an image: d_notes.txt, e_empty.bin" in caplog.text
    assert ".DS_Store" not in err + caplog.text


def test_an_empty_folder_is_an_error_not_a_silent_success(tmp_path, audio_clips, capsys):
    empty = tmp_path / "x.dcm"
    empty.mkdir()
    code = main(["classify", str(empty), str(audio_clips["speech"]), "--format", "json", "--device", "cpu"])
    out, err = capsys.readouterr()
    rows = json.loads(out)
    assert code == 1
    assert rows[0]["error"] == f"{empty}: no recordings or images in this folder"
    assert rows[1]["error"] is None
    assert f"medzero: error: {empty}: no recordings or images in this folder" in err


def test_index_add_reports_an_empty_folder_too(tmp_path, capsys):
    empty = tmp_path / "scans"
    empty.mkdir()
    (empty / "readme.txt").write_text("nothing here")
    code = main(["index", "add", str(tmp_path / "idx"), str(empty), "--device", "cpu"])
    out, err = capsys.readouterr()
    assert code == 1
    assert "no recordings or images in this folder (1 other file skipped)" in out + err


def test_expand_names_the_empty_folder_by_its_absolute_path_for_an_index(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    [source] = expand(["empty"], absolute=True)
    assert source.name == str(tmp_path / "empty") and isinstance(source.error, BadInputError)


@pytest.fixture
def faulty_image_plugin(monkeypatch):
    """The image modality with a decoder bug: a non-medzero exception for one file, whose message
    quotes patient data (as library exceptions may quote the bytes they choke on)."""
    real = modality_registry.get_modality("image")

    def prepare(source, encoder, limits):
        if source.name.endswith("MR_small.dcm"):
            raise TypeError("cannot handle PatientName=PLANTED^PATIENT^NAME")
        return real.prepare(source, encoder, limits)

    modality_registry.register_modality(dataclasses.replace(real, prepare=prepare))
    yield
    modality_registry.register_modality(real)


def test_a_decoder_exception_becomes_one_error_row_and_the_batch_goes_on(faulty_image_plugin, tmp_path, capsys, caplog):
    from pydicom.data import get_testdata_file

    files = [get_testdata_file("CT_small.dcm"), get_testdata_file("MR_small.dcm"), get_testdata_file("CT_small.dcm")]
    caplog.set_level("DEBUG")
    code = main(["classify", *files, "--task", "chest_xray_findings", "--format", "json", "--device", "cpu"])
    out, err = capsys.readouterr()
    rows = json.loads(out)
    assert code == 1
    assert [r["error"] is None for r in rows] == [True, False, True]
    assert rows[1]["error"] == (
        f"{files[1]} cannot be decoded as an image: the file is damaged or malformed (TypeError in the decoder)"
    )
    assert "Traceback" not in err
    everything = out + err + caplog.text
    assert "PLANTED" not in everything  # the exception's own text may quote the file: it is never shown


def test_pipeline_prepare_never_raises_for_a_decoder_fault(faulty_image_plugin, tiny_hf_clip_dir):
    from pydicom.data import get_testdata_file

    from medzero.encoders import factory as encoders

    pipeline = Pipeline(lambda m: encoders.create(f"local-dir:{tiny_hf_clip_dir}", modality=m, device="cpu"))
    prepared = pipeline.prepare(Source.of(get_testdata_file("MR_small.dcm")))
    assert not prepared.ok and isinstance(prepared.error, BadInputError)
