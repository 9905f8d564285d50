"""The `medzero` command through main([...]), as a user runs it."""
from __future__ import annotations

import csv
import io
import json
import shutil

import pytest

import medzero
from medzero.cli import main


@pytest.fixture()
def folder(tmp_path, audio_clips):
    d = tmp_path / "visits"
    d.mkdir()
    shutil.copy(audio_clips["speech"], d / "a_speech.wav")
    shutil.copy(audio_clips["m4a"], d / "b_voice_note.m4a")
    shutil.copy(audio_clips["amr"], d / "c_wechat.amr")
    (d / "README.txt").write_text("not a recording")  # inside a folder: skipped by content
    return d


@pytest.fixture(autouse=True)
def _model(tiny_clap_dir, monkeypatch):
    monkeypatch.setenv("MEDZERO_AUDIO_MODEL", str(tiny_clap_dir))


def test_json_batch_goes_on_past_a_bad_file_and_exits_non_zero(folder, tmp_path, capsys):
    bad = tmp_path / "renamed.wav"
    bad.write_text("this is a text file named .wav")
    code = main(["classify", str(folder), str(bad), "--format", "json", "--device", "cpu"])
    out, err = capsys.readouterr()
    records = json.loads(out)
    assert code == 1
    assert [r["path"].rsplit("/", 1)[-1] for r in records] == ["a_speech.wav", "b_voice_note.m4a", "c_wechat.amr", "renamed.wav"]
    for r in records[:3]:
        assert r["error"] is None and r["modality"] == "audio" and r["verdict"] in {"accept", "review", "re-record"}
        assert set(r["scores"]) == set(json.loads(json.dumps(records[0]["scores"])))
        assert all(0.0 <= p <= 1.0 for p in r["scores"].values())
    assert records[3]["error"].startswith(str(bad)) and records[3]["scores"] == {}
    assert err.strip().splitlines() == [f"medzero: error: {records[3]['error']}"]


def test_adhoc_labels_csv_and_output_file(folder, tmp_path, capsys):
    target = tmp_path / "out.csv"
    code = main(["classify", str(folder / "a_speech.wav"), "--labels", "speech,music,dog", "--format", "csv", "-o", str(target)])
    assert code == 0 and capsys.readouterr().out == ""
    rows = list(csv.DictReader(io.StringIO(target.read_text())))
    assert len(rows) == 1 and rows[0]["task"] == "ad-hoc"
    scores = {k: float(rows[0][k]) for k in ("speech", "music", "dog")}
    assert sum(scores.values()) == pytest.approx(1.0, abs=1e-5)
    assert rows[0]["verdict"] == max(scores, key=scores.get)


def test_multilabel_jsonl_and_template(folder, capsys):
    code = main(["classify", str(folder / "a_speech.wav"), "--labels", "speech,music", "--multilabel", "--template", "{}", "--format", "jsonl"])
    record = json.loads(capsys.readouterr().out)
    assert code == 0 and set(record["scores"]) == {"speech", "music"}
    assert sum(record["scores"].values()) != pytest.approx(1.0)


def test_table_in_chinese(folder, capsys):
    assert main(["classify", str(folder / "a_speech.wav"), "--lang", "zh"]) == 0
    out = capsys.readouterr().out
    assert "a_speech.wav" in out and any(word in out for word in ("可以接受", "建议复录", "基本可用"))


def test_own_prompt_file(folder, tmp_path, capsys):
    prompts = tmp_path / "mine.yaml"
    prompts.write_text(
        "name: mine\nmodality: audio\nmode: multiclass\nlabels:\n"
        "  - {id: calm, prompts: [a calm voice]}\n  - {id: upset, prompts: [an upset voice]}\n",
        encoding="utf-8",
    )
    assert main(["classify", str(folder / "a_speech.wav"), "--prompts", str(prompts), "--format", "json"]) == 0
    record = json.loads(capsys.readouterr().out)[0]
    assert record["task"] == "mine" and set(record["scores"]) == {"calm", "upset"}


@pytest.mark.parametrize(
    "args, message",
    [
        (["--task", "nope"], "unknown task 'nope'"),
        (["--labels", "only-one"], "at least two labels"),
        (["--task", "voice_quality", "--labels", "a,b"], "give one of --task, --prompts and --labels"),
        (["--template", "{}"], "--template and --multilabel go with --labels"),
    ],
)
def test_usage_errors_are_one_line(folder, capsys, args, message):
    code = main(["classify", str(folder / "a_speech.wav"), *args])
    err = capsys.readouterr().err
    assert code != 0 and message in err and len(err.strip().splitlines()) == 1


def test_model_unavailable_is_reported(folder, capsys, default_models_missing):
    # Ad-hoc labels need the model: an error row and exit 1.
    code = main(["classify", str(folder / "a_speech.wav"), "--labels", "speech,noise", "--format", "json"])
    out, err = capsys.readouterr()
    assert code == 1 and "(laion/clap-htsat-fused) is not available offline" in json.loads(out)[0]["error"]
    # A task with waveform rules still gives a verdict from the signal alone, and says why.
    code = main(["classify", str(folder / "a_speech.wav"), "--format", "json"])
    record = json.loads(capsys.readouterr().out)[0]
    assert code == 0 and record["signal_only"] is True and record["verdict"] in ("accept", "review", "re-record")
    assert "(laion/clap-htsat-fused) is not available offline" in json.dumps(record)


@pytest.mark.parametrize("option", ["--audio-model", "--image-model"])
def test_a_named_model_that_cannot_be_found_fails_every_file_with_one_line(folder, capsys, option, tmp_path):
    """A mistyped model path is an error for audio and images alike (it was a signal-only 'accept', exit 0)."""
    from pydicom.data import get_testdata_file

    source = str(folder / "a_speech.wav") if option == "--audio-model" else get_testdata_file("CT_small.dcm")
    missing = str(tmp_path / "typo-model-dir")
    code = main(["classify", source, option, missing, "--format", "json"])
    out, err = capsys.readouterr()
    record = json.loads(out)[0]
    assert code == 1
    assert record["signal_only"] is False and record["verdict"] is None
    assert f"model directory not found: {missing} (it does not exist)" in record["error"]
    assert err.count("medzero: error: ") == 1 and missing in err


def test_tasks_and_models_listings(capsys):
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    snr_limit = medzero.load_task("voice_quality").metrics["snr_db"].min  # the shipped limit
    assert "voice_quality" in out and "background_noise" in out and f"snr_db: min {snr_limit:g}" in out
    assert main(["tasks", "--format", "json", "--lang", "zh"]) == 0
    assert any(t["name"] == "respiratory_sounds" for t in json.loads(capsys.readouterr().out))
    assert main(["models", "--modality", "audio"]) == 0
    assert "laion/clap-htsat-fused" in capsys.readouterr().out
