"""A site overlay in use: Classifier(calibration=...) applies its thresholds and every Result says where they came from."""
from __future__ import annotations

import csv
import io
import json

import pytest
import yaml

import medzero
from medzero.cli import main


@pytest.fixture()
def overlay(tmp_path):
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump({
        "overlay_for": "voice_quality",
        "method": "youden",
        "labels": {"background_noise": {"threshold": 0.123, "source": "calibrated on 40 rows of site.csv, youden"}},
    }))
    return path


def test_results_say_whether_thresholds_are_calibrated(overlay, audio_clips, tiny_clap_dir):
    plain = medzero.Classifier("voice_quality", audio_model=str(tiny_clap_dir), device="cpu").classify(audio_clips["speech"])
    assert plain.calibration["status"] == "uncalibrated" and "not fitted on local data" in plain.calibration["summary"]
    assert plain.to_dict()["calibration"]["status"] == "uncalibrated"

    site = medzero.Classifier("voice_quality", audio_model=str(tiny_clap_dir), device="cpu", calibration=overlay)
    result = site.classify(audio_clips["speech"])
    assert result.thresholds["background_noise"] == 0.123  # the overlay's, not the task file's
    assert result.thresholds["speech_present"] == plain.thresholds["speech_present"]  # labels it does not name keep theirs
    assert result.calibration["status"] == "calibrated"
    assert result.calibration["sources"]["background_noise"].startswith("calibrated on 40 rows")
    noisy = result.scores["background_noise"] >= 0.123
    assert noisy == any(r.id == "background_noise" for r in result.reasons)


def test_overlay_for_another_task_is_refused(overlay, tiny_clap_dir):
    with pytest.raises(medzero.TaskError, match="is a calibration for task voice_quality, not audio_qc"):
        medzero.Classifier("audio_qc", audio_model=str(tiny_clap_dir), calibration=overlay)
    with pytest.raises(medzero.TaskError, match="goes with a task"):
        medzero.Classifier(labels="a,b", audio_model=str(tiny_clap_dir), calibration=overlay)


def test_cli_classify_with_a_calibration_overlay(overlay, audio_clips, tiny_clap_dir, tmp_path, capsys):
    clip = str(audio_clips["speech"])
    common = ["classify", clip, "--task", "voice_quality", "--audio-model", str(tiny_clap_dir), "--device", "cpu"]
    assert main([*common, "--format", "json", "--calibration", str(overlay)]) == 0
    site = json.loads(capsys.readouterr().out)[0]
    assert site["thresholds"]["background_noise"] == 0.123 and site["calibration"]["status"] == "calibrated"

    assert main([*common, "--format", "csv"]) == 0
    row = next(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert row["calibration"] == "uncalibrated" and row["applicable"] == "true" and row["signal_only"] == "false"

    assert main(common) == 0
    assert "thresholds: uncalibrated" in capsys.readouterr().out  # the table says so too

    assert main(["classify", clip, "--labels", "a,b", "--audio-model", str(tiny_clap_dir), "--calibration", str(overlay)]) == 2
    assert "--calibration goes with the --task" in capsys.readouterr().err
    other = ["classify", clip, "--task", "audio_qc", "--audio-model", str(tiny_clap_dir), "--calibration", str(overlay)]
    assert main(other) == 1
    err = capsys.readouterr().err
    assert "is a calibration for task voice_quality, not audio_qc" in err and len(err.strip().splitlines()) == 1
