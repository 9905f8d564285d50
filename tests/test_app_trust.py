"""The trust features in the app: a site calibration uploaded on the page, and inputs a task does not judge.

Through ``streamlit.testing.v1.AppTest`` with the tiny test checkpoints, like tests/test_app.py.
"""
from __future__ import annotations

import pytest
import yaml

pytest.importorskip("streamlit")
from pydicom.data import get_testdata_file  # noqa: E402
from streamlit.testing.v1 import AppTest  # noqa: E402

from test_app import _app  # noqa: E402 - AppTest of the app entry; app_env comes from conftest


def _classify(at: AppTest) -> None:
    next(b for b in at.button if b.label == "Classify").click()
    at.run()
    assert not at.exception, at.exception


def _text(at: AppTest) -> str:
    return "\n".join(str(m.value) for m in [*at.markdown, *at.caption, *at.success, *at.error])


def _overlay(task: str, threshold: float) -> bytes:
    return yaml.safe_dump({
        "overlay_for": task,
        "method": "youden",
        "labels": {"background_noise": {"threshold": threshold, "source": "calibrated on 40 rows of site.csv, youden"}},
    }).encode()


def test_voice_page_uses_an_uploaded_site_calibration(app_env, audio_clips):
    at = _app()
    at.file_uploader(key="voice_file").set_value(("speech.wav", audio_clips["speech"].read_bytes(), "audio/wav"))
    at.run()
    _classify(at)
    plain = at.session_state["voice_result"][1]
    assert plain.calibration["status"] == "uncalibrated"
    assert "uncalibrated" in _text(at)  # the page says so beside the verdict

    at.file_uploader(key="voice_calibration").set_value(("site.yaml", _overlay("voice_quality", 0.123), "application/x-yaml"))
    at.run()
    assert not at.error and "site.yaml" in _text(at)
    _classify(at)
    site = at.session_state["voice_result"][1]
    assert site.thresholds["background_noise"] == 0.123 and site.calibration["status"] == "calibrated"
    assert site.scores == plain.scores  # the same scores, judged against the site's thresholds


def test_voice_page_refuses_a_calibration_of_another_task(app_env, audio_clips):
    at = _app()
    at.file_uploader(key="voice_calibration").set_value(("qc.yaml", _overlay("audio_qc", 0.2), "application/x-yaml"))
    at.run()
    assert len(at.error) == 1 and "is a calibration for task audio_qc, not voice_quality" in at.error[0].value
    at.file_uploader(key="voice_file").set_value(("speech.wav", audio_clips["speech"].read_bytes(), "audio/wav"))
    at.run()
    _classify(at)
    assert at.session_state["voice_result"][1].calibration["status"] == "uncalibrated"


def test_xray_page_does_not_triage_a_ct_slice(app_env):
    at = _app("xray.py")
    ct = get_testdata_file("CT_small.dcm")
    with open(ct, "rb") as f:
        at.file_uploader(key="xray_file").set_value(("ct.dcm", f.read(), "application/dicom"))
    at.run()
    _classify(at)
    result = at.session_state["xray_result"][1]
    assert result.verdict == "not_applicable" and not result.applicable
    text = _text(at)
    assert f":gray[{result.verdict_name['en']}]" in text  # no triage colour for an input the task does not judge
    assert ":red[" not in text and ":green[" not in text and ":orange[" not in text
    assert any("CT" in r.text("en") for r in result.reasons)
