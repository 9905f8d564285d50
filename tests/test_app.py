"""Smoke tests of every page of the Streamlit app through ``streamlit.testing.v1.AppTest``.

The app runs in this process with the tiny test checkpoints (``MEDZERO_AUDIO_MODEL`` /
``MEDZERO_IMAGE_MODEL``); uploads go through AppTest's own file-uploader support.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

import medzero  # noqa: E402
import medzero.app  # noqa: E402

ENTRY = str(medzero.app.ENTRY)
TIMEOUT = 120



def _app(page: str | None = None, lang: str | None = None) -> AppTest:
    at = AppTest.from_file(ENTRY, default_timeout=TIMEOUT)
    if lang is not None:
        at.query_params["lang"] = lang  # as a link to the app with ?lang=... would
    at.run()
    assert not at.exception, at.exception
    if page is not None:
        at.switch_page(page)
        at.run()
        assert not at.exception, at.exception
    return at


def _text(at: AppTest) -> str:
    """Everything the page shows as text: markdown, headings, captions, alerts, and tables."""
    parts = [e.value for kind in ("markdown", "title", "subheader", "caption", "error", "warning", "info", "success") for e in getattr(at, kind)]
    for table in at.table:
        parts.append(table.value.to_string())
    return "\n".join(str(p) for p in parts)


def _button(at: AppTest, label: str):
    return next(b for b in at.button if b.label == label)


def test_banner_and_voice_page_by_default(app_env):
    at = _app()
    assert "Research tool, not a diagnosis" in at.warning[0].value
    assert "not what was said" in at.warning[0].value
    assert at.title[0].value == "Voice quality"
    assert at.selectbox(key="voice_task").value == "voice_quality"
    assert _button(at, "Classify").disabled  # nothing uploaded yet


def test_voice_classify_shows_verdict_labels_metrics_and_json(app_env, audio_clips):
    at = _app()
    at.file_uploader(key="voice_file").set_value(("speech.wav", audio_clips["speech"].read_bytes(), "audio/wav"))
    at.run()
    _button(at, "Classify").click()
    at.run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    result = at.session_state["voice_result"][1]
    assert result.source == "speech.wav"
    text = _text(at)
    assert f"[{result.verdict_name['en']}]" in text  # the verdict, in large coloured type
    task = medzero.load_task("voice_quality")
    for label in task.labels:
        assert label.display("en") in text
    for reason in result.reasons:
        assert reason.text("en") in text
    assert "Signal-to-noise ratio" in text and f"≥ {medzero.format_value(task.metrics['snr_db'].min, 'dB')}" in text  # a metric with its limit
    assert at.get("download_button"), "no JSON download"
    assert json.loads(json.dumps(result.to_dict()))["path"] == "speech.wav"

    at.sidebar.radio(key="lang").set_value("zh")
    at.run()
    text = _text(at)
    assert f"[{result.verdict_name['zh']}]" in text
    for label in task.labels:
        assert label.display("zh") in text
    for reason in result.reasons:
        assert reason.text("zh") in text


def test_voice_typed_labels(app_env, audio_clips):
    at = _app()
    at.selectbox(key="voice_task").set_value("__custom__")
    at.run()
    at.text_input(key="voice_labels").set_value("a person speaking, music, traffic noise")
    at.file_uploader(key="voice_file").set_value(("speech.flac", audio_clips["flac"].read_bytes(), "audio/flac"))
    at.run()
    _button(at, "Classify").click()
    at.run()
    assert not at.exception and not at.error
    result = at.session_state["voice_result"][1]
    assert set(result.scores) == {"a person speaking", "music", "traffic noise"}
    assert result.verdict == result.top(1)[0][0]


def test_voice_bad_file_shows_error_then_recovers(app_env, audio_clips):
    at = _app()
    at.file_uploader(key="voice_file").set_value(("notes.wav", b"Patient notes, not audio at all.\n" * 40, "audio/wav"))
    at.run()
    _button(at, "Classify").click()
    at.run()
    assert not at.exception
    assert len(at.error) == 1 and "notes.wav" in at.error[0].value
    at.file_uploader(key="voice_file").set_value(("speech.wav", audio_clips["speech"].read_bytes(), "audio/wav"))
    at.run()
    _button(at, "Classify").click()
    at.run()
    assert not at.exception and not at.error
    assert at.session_state["voice_result"][1].ok


def test_xray_page_window_metadata_and_findings(app_env, dicom_files):
    at = _app("xray.py")
    assert at.title[0].value == "Chest X-ray"
    assert at.selectbox(key="xray_task").value == "chest_xray_findings"
    at.file_uploader(key="xray_file").set_value(("phi.dcm", dicom_files["phi"].read_bytes(), "application/dicom"))
    at.run()
    assert not at.exception and not at.error
    shown = at.radio(key="xray_window").options  # the labels the radio shows
    assert len(shown) == 3 and shown[0] == "the file's own window"
    assert [o.split(" ")[0] for o in shown[1:]] == ["full", "contrast"]  # a DX film: no CT (HU) presets
    text = _text(at)
    assert "ViewPosition" in text or "view_position" in text.lower()
    for secret in ("Doe", "MRN-99812345", "Saint Example", "19510317"):
        assert secret not in text  # PHI never reaches the page
    at.radio(key="xray_window").set_value("contrast")
    at.run()
    assert not at.exception and not at.error
    _button(at, "Classify").click()
    at.run()
    assert not at.exception and not at.error
    result = at.session_state["xray_result"][1]
    assert result.verdict in ("routine", "review", "urgent")
    text = _text(at)
    assert f"[{result.verdict_name['en']}]" in text
    findings = at.table[-1].value
    task = medzero.load_task("chest_xray_findings")
    assert set(findings["Finding"]) == {lb.display("en") for lb in task.labels}


def test_xray_other_task_and_bad_file(app_env, image_files):
    at = _app("xray.py")
    at.file_uploader(key="xray_file").set_value(("notes.png", image_files["text.txt"].read_bytes(), "image/png"))
    at.run()
    assert not at.exception
    assert at.error and "notes.png" in at.error[0].value
    at.file_uploader(key="xray_file").set_value(("gray8.png", image_files["gray8.png"].read_bytes(), "image/png"))
    at.selectbox(key="xray_task").set_value("chest_xray_quality")
    at.run()
    shown = at.radio(key="xray_window").options
    assert shown[0] == "as stored" and not any("HU" in o for o in shown)  # presets are Hounsfield units: CT only
    _button(at, "Classify").click()
    at.run()
    assert not at.exception and not at.error
    assert at.session_state["xray_result"][1].task == "chest_xray_quality"


def test_models_page_lists_loaded_models(app_env, tiny_clap_dir):
    at = _app("models.py")
    assert at.title[0].value == "Models"
    if any(b.label == "Load the audio model now" for b in at.button):  # not loaded by an earlier test
        _button(at, "Load the audio model now").click()
        at.run()
    assert not at.exception
    text = _text(at)
    enc = medzero.create_encoder(str(tiny_clap_dir), modality="audio", device="cpu")
    assert enc.fingerprint in text
    assert "clap-htsat-fused" in text  # the registered models table


def test_models_page_shows_unavailable_model(app_env, monkeypatch, tmp_path):
    monkeypatch.setenv("MEDZERO_IMAGE_MODEL", f"local-dir:{tmp_path / 'no-such-model'}")
    at = _app("models.py")
    _button(at, "Load the image model now").click()
    at.run()
    assert not at.exception
    assert at.error, "the model error is not shown"
    assert "What to do" in _text(at)


def test_search_add_uploads_and_search_by_text_and_example(app_env, audio_clips, dicom_files):
    at = _app("search.py")
    assert at.title[0].value == "Case search"
    assert at.selectbox(key="search_index").value == "__new__"  # a fresh cache has no index yet
    at.text_input(key="search_new_name").set_value("ward7")
    at.run()
    at.file_uploader(key="search_uploads").set_value(
        [("speech.wav", audio_clips["speech"].read_bytes(), "audio/wav"),
         ("phi.dcm", dicom_files["phi"].read_bytes(), "application/dicom")]
    )
    at.run()
    _button(at, "Add uploaded files").click()
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert "Added 2" in at.success[0].value
    assert "**2 cases**" in _text(at)
    index_dir = app_env / "cache" / "indexes" / "ward7"
    assert (index_dir / "cases.sqlite").exists()

    at.text_input(key="search_text").set_value("a person speaking")
    at.run()
    _button(at, "Search").click()
    at.run()
    assert not at.exception and not at.error
    hits = at.session_state["search_hits"][1]
    assert {h.modality for h in hits} == {"audio", "image"}
    text = _text(at)
    assert "2 hit(s)" in text
    for hit in hits:
        assert Path(hit.path).name in text and f"score {hit.score:.3f}" in text

    at.radio(key="search_by").set_value("An example file")
    at.run()
    at.file_uploader(key="search_example").set_value(("query.wav", audio_clips["noisy_20db"].read_bytes(), "audio/wav"))
    at.run()
    _button(at, "Search").click()
    at.run()
    assert not at.exception and not at.error
    hits = at.session_state["search_hits"][1]
    assert [h.modality for h in hits] == ["audio"]  # an example searches its own modality's space


def test_search_missing_folder_is_an_error_box(app_env):
    at = _app("search.py")
    at.text_input(key="search_folder").set_value("/no/such/folder")
    at.run()
    _button(at, "Add folder").click()
    at.run()
    assert not at.exception
    assert "No such folder" in at.error[0].value
