"""One router for both modalities: a folder mixing recordings and images, each file by its own model."""
from __future__ import annotations

import json
import shutil

import pytest

import medzero
from medzero.cli import main


@pytest.fixture()
def mixed(tmp_path, audio_clips, dicom_files, image_files):
    d = tmp_path / "mixed"
    d.mkdir()
    shutil.copy(audio_clips["speech"], d / "1_visit.wav")
    shutil.copy(audio_clips["amr"], d / "2_voice_note.bin")  # the extension says nothing: content decides
    shutil.copy(dicom_files["phi"], d / "3_chest.dcm")
    shutil.copy(image_files["rgb.png"], d / "4_photo.png")
    return d


@pytest.fixture(autouse=True)
def _models(monkeypatch, tiny_clap_dir, tiny_hf_clip_dir):
    monkeypatch.setenv("MEDZERO_AUDIO_MODEL", str(tiny_clap_dir))
    monkeypatch.setenv("MEDZERO_IMAGE_MODEL", f"local-dir:{tiny_hf_clip_dir}")


def test_mixed_folder_through_the_cli(mixed, capsys):
    assert main(["classify", str(mixed), "--format", "json"]) == 0
    records = {r["path"].rsplit("/", 1)[-1]: r for r in json.loads(capsys.readouterr().out)}
    assert [records[k]["modality"] for k in sorted(records)] == ["audio", "audio", "image", "image"]
    assert records["1_visit.wav"]["task"] == "voice_quality"
    assert records["3_chest.dcm"]["task"] == "chest_xray_findings"
    assert records["3_chest.dcm"]["verdict"] in {"routine", "review", "urgent"}
    assert records["1_visit.wav"]["model"] != records["3_chest.dcm"]["model"]
    findings = medzero.load_task("chest_xray_findings").label_ids()
    assert list(records["3_chest.dcm"]["scores"]) == findings
    meta = records["3_chest.dcm"]["metadata"]
    assert meta["ViewPosition"] == "PA" and "PatientName" not in meta
    assert "metrics" in records["1_visit.wav"] and records["3_chest.dcm"]["metrics"] == {}


def test_a_task_of_the_other_modality_is_a_per_file_error(mixed, capsys):
    code = main(["classify", str(mixed), "--task", "voice_quality", "--format", "json"])
    records = {r["path"].rsplit("/", 1)[-1]: r for r in json.loads(capsys.readouterr().out)}
    assert code == 1
    assert records["1_visit.wav"]["error"] is None and records["2_voice_note.bin"]["error"] is None
    assert records["3_chest.dcm"]["error"] == "task voice_quality is for audio, but this file is an image"


def test_adhoc_labels_follow_each_files_modality(mixed):
    results = medzero.Classifier(labels="normal,abnormal").classify_batch([mixed])
    assert all(r.error is None for r in results)
    assert {r.modality for r in results} == {"audio", "image"}
    assert all(set(r.scores) == {"normal", "abnormal"} for r in results)
