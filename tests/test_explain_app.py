"""The X-ray page's heatmap per finding, through streamlit's AppTest with the tiny models."""
from __future__ import annotations

import io

import pytest

pytest.importorskip("streamlit")

from test_app import _app, _button  # noqa: E402


def test_xray_page_shows_a_heatmap_per_finding(app_env, dicom_files):
    from PIL import Image

    at = _app("xray.py")
    at.file_uploader(key="xray_file").set_value(("phi.dcm", dicom_files["phi"].read_bytes(), "application/dicom"))
    at.run()
    at.checkbox(key="xray_explain").check()
    _button(at, "Classify").click()
    at.run()
    assert not at.exception and not at.error
    result = at.session_state["xray_result"][1]
    pictures = at.session_state["xray_heatmaps"]
    assert set(pictures) == set(result.scores) and set(result.explanations) == set(result.scores)
    picker = at.selectbox(key="xray_heatmap_label")
    assert picker.options[0].startswith(result.label_names[result.top(1)[0][0]]["en"])  # best first
    assert Image.open(io.BytesIO(pictures[picker.value])).format == "PNG"
    assert any("Heatmaps" == h.value for h in at.subheader)
    last = picker.options[-1]
    picker.set_value(result.top()[-1][0])
    at.run()
    assert not at.exception and at.selectbox(key="xray_heatmap_label").value == result.top()[-1][0] and last


def test_xray_page_without_the_box_draws_no_heatmap(app_env, dicom_files):
    at = _app("xray.py")
    at.file_uploader(key="xray_file").set_value(("phi.dcm", dicom_files["phi"].read_bytes(), "application/dicom"))
    at.run()
    _button(at, "Classify").click()
    at.run()
    assert not at.exception and not at.session_state["xray_heatmaps"]
    assert not [s for s in at.selectbox if s.key == "xray_heatmap_label"]
