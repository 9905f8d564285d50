"""`medzero index add | search | remove | stats` through main([...])."""
from __future__ import annotations

import json
import shutil

import pytest

from medzero.cli import main
from test_retrieval import STORES, new_index_target


@pytest.fixture(autouse=True)
def _models(monkeypatch, tiny_clap_dir, tiny_hf_clip_dir):
    monkeypatch.setenv("MEDZERO_AUDIO_MODEL", str(tiny_clap_dir))
    monkeypatch.setenv("MEDZERO_IMAGE_MODEL", f"local-dir:{tiny_hf_clip_dir}")


@pytest.fixture()
def cases(tmp_path, audio_clips, dicom_files):
    d = tmp_path / "cases"
    d.mkdir()
    for key in ("speech", "noisy_0db", "clipped"):
        shutil.copy(audio_clips[key], d / f"{key}.wav")
    shutil.copy(dicom_files["phi"], d / "pa_chest.dcm")
    shutil.copy(dicom_files["ct"], d / "ct.dcm")
    return d


@pytest.fixture(params=STORES)
def idx(request, tmp_path):
    """The INDEX argument: a folder, or the URL of a fresh PostgreSQL database."""
    return new_index_target(request, request.param, tmp_path / "idx")


def test_add_search_remove_stats(cases, idx, capsys):
    assert main(["index", "add", str(idx), str(cases), "--task", "chest_xray_findings"]) == 0
    assert "added 5, skipped 0 duplicate(s), 0 error(s); 5 case(s)" in capsys.readouterr().out

    # Adding again skips every file as a duplicate.
    assert main(["index", "add", str(idx), str(cases)]) == 0
    assert "added 0, skipped 5 duplicate(s)" in capsys.readouterr().out

    assert main(["index", "search", str(idx), "speech with background noise", "--modality", "audio", "-k", "2", "--format", "json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert len(hits) == 2 and all(h["modality"] == "audio" for h in hits)
    assert set(hits[0]) == {"id", "path", "score", "modality", "metadata"}
    assert hits[0]["score"] >= hits[1]["score"]

    assert main(["index", "search", str(idx), "pleural effusion", "--where", "ViewPosition=PA", "--format", "json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert [h["path"].rsplit("/", 1)[-1] for h in hits] == ["pa_chest.dcm"]
    assert "PatientName" not in json.dumps(hits)

    assert main(["index", "search", str(idx), "--like", str(cases / "speech.wav"), "-k", "1", "--format", "json"]) == 0
    [best] = json.loads(capsys.readouterr().out)
    assert best["path"] == str(cases / "speech.wav") and best["score"] == pytest.approx(1.0, abs=1e-4)

    assert main(["index", "remove", str(idx), str(cases / "speech.wav")]) == 0
    assert "removed 1 case(s); 4 left" in capsys.readouterr().out
    assert main(["index", "search", str(idx), "--like", str(cases / "speech.wav"), "-k", "1", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["id"] != best["id"]

    assert main(["index", "stats", str(idx)]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["cases"] == 4 and {s["modality"] for s in stats["spaces"]} == {"audio", "image"}


def test_index_errors_are_one_line(cases, idx, capsys):
    bad = cases / "notes.wav"
    bad.write_text("not audio")
    assert main(["index", "add", str(idx), str(bad), str(cases / "speech.wav")]) == 1
    out, err = capsys.readouterr()
    assert "added 1" in out and err.strip() == f"medzero: error: {bad} is neither audio nor an image (unrecognised content; expected WAV, FLAC, Ogg, MP3, M4A/AAC, AMR, SILK, DICOM, PNG, JPEG or TIFF)"
    assert main(["index", "search", str(idx)]) == 2
    assert "give a text query or --like FILE" in capsys.readouterr().err
    assert main(["index", "remove", str(idx), "999"]) == 1
    assert "none of 999 is in" in capsys.readouterr().err


def test_store_option_and_copy_both_ways(cases, tmp_path, pg_url, pg_server, capsys):
    """--store URL leaves INDEX out; `index copy` moves an index folder -> PostgreSQL -> folder as it is."""
    assert main(["index", "add", "--store", pg_url, str(cases)]) == 0
    out = capsys.readouterr().out
    assert "added 5, skipped 0 duplicate(s), 0 error(s); 5 case(s) in postgresql://postgres:***@" in out
    assert pg_server.password not in out
    assert main(["index", "search", "--store", pg_url, "speech", "--modality", "audio", "-k", "1", "--format", "json"]) == 0
    [hit] = json.loads(capsys.readouterr().out)
    assert hit["modality"] == "audio"

    back = tmp_path / "back"
    assert main(["index", "copy", pg_url, str(back)]) == 0
    assert capsys.readouterr().out.strip() == f"copied 5 case(s), skipped 0 already there; 5 case(s) in {back}"
    assert main(["index", "copy", pg_url, str(back)]) == 0  # again: nothing left to copy
    assert "copied 0 case(s), skipped 5 already there; 5 case(s)" in capsys.readouterr().out
    assert main(["index", "search", str(back), "--like", str(cases / "speech.wav"), "-k", "1", "--format", "json"]) == 0
    [best] = json.loads(capsys.readouterr().out)
    assert best["path"] == str(cases / "speech.wav") and best["score"] == pytest.approx(1.0, abs=1e-4)

    other = pg_server.url(pg_server.create_database())
    try:
        assert main(["index", "copy", str(back), other, "--format", "json"]) == 0
        assert json.loads(capsys.readouterr().out) == {"added": 5, "duplicates": 0, "cases": 5}
        assert main(["index", "stats", "--store", other]) == 0
        out, err = capsys.readouterr()
        stats = json.loads(out)
        assert stats["cases"] == 5 and stats["path"].startswith("postgresql://postgres:***@")
        assert pg_server.password not in out + err
    finally:
        pg_server.drop_database(other.rsplit("/", 1)[1])


def test_store_option_errors(tmp_path, capsys):
    assert main(["index", "stats", "--store", str(tmp_path)]) == 2
    assert "--store takes a postgresql:// URL" in capsys.readouterr().err
    assert main(["index", "stats"]) == 2
    assert "give INDEX" in capsys.readouterr().err
    assert main(["index", "copy", str(tmp_path / "none"), str(tmp_path / "dst")]) == 1
    assert capsys.readouterr().err.strip() == f"medzero: error: {tmp_path / 'none'} is not a case index (no cases.sqlite); add cases to it first"

