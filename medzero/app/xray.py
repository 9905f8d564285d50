"""Chest X-ray: windowed display, PHI-safe metadata, and zero-shot findings with a triage level."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import streamlit as st

import medzero
from medzero import WINDOW_PRESETS, read_image
from medzero.app import common

IMAGE_TYPES = ["dcm", "dicom", "png", "jpg", "jpeg", "tif", "tiff"]
_DEFAULT_TASK = medzero.get_modality("image").default_task
_OWN_WINDOW = "dicom"

st.title("Chest X-ray")
st.caption(
    "Upload a DICOM, PNG or JPEG. Findings are scored zero-shot against text descriptions (CheXzero method); "
    "thresholds are uncalibrated starting points. The triage level orders a reading list, it is not a diagnosis."
)

upload = st.file_uploader("Image (DICOM, PNG, JPEG)", type=IMAGE_TYPES, key="xray_file")


@st.cache_data(show_spinner=False, max_entries=16)
def _preview(file_id: str, _data: bytes, name: str, window: str) -> tuple[np.ndarray, dict, str, tuple[int, ...]]:
    """Display pixels (at most 1024 px a side), metadata, format and full shape, through ``read_image``."""
    image = read_image(_data, window=None if window == _OWN_WINDOW else window, name=name)
    pil = image.to_pil()
    pil.thumbnail((1024, 1024))
    return np.asarray(pil), dict(image.metadata), image.format, image.shape


tasks = common.tasks_for("image")
ordered = sorted(tasks, key=lambda t: (not t.name.startswith("chest_xray"), t.name != _DEFAULT_TASK, t.name))
by_name = {t.name: t for t in ordered}
names = list(by_name)

if upload is not None:
    data = upload.getvalue()
    try:
        pixels, metadata, fmt, shape = _preview(upload.file_id, data, upload.name, _OWN_WINDOW)
        windows = [_OWN_WINDOW, *WINDOW_PRESETS] if fmt == "dicom" else [_OWN_WINDOW]
        left, right = st.columns([3, 2], gap="large")
        with right:
            window = st.radio(
                "Window",
                windows,
                format_func=lambda w: ("the file's own window" if fmt == "dicom" else "as stored")
                if w == _OWN_WINDOW
                else f"{w} (C {WINDOW_PRESETS[w][0]:g} / W {WINDOW_PRESETS[w][1]:g} HU)",
                key="xray_window",
                help="Changes the display only: the model always sees the file's own window.",
            )
            if window != _OWN_WINDOW:
                pixels, _, _, _ = _preview(upload.file_id, data, upload.name, window)
            st.markdown("**Metadata** (PHI-free: no names, IDs, dates or free text)")
            st.table(
                pd.DataFrame(
                    [{"field": k, "value": json.dumps(v) if isinstance(v, (dict, list)) else str(v)} for k, v in metadata.items()]
                ).style.hide(axis="index")
            )
        with left:
            st.image(pixels, caption=f"{upload.name} · {fmt.upper()} · {shape[1]}×{shape[0]} px", width="stretch")
    except medzero.MedzeroError as exc:
        st.error(f"**Could not read {upload.name}.** {exc}", icon=":material/error:")

choice = st.selectbox("Task", names, index=names.index(_DEFAULT_TASK) if _DEFAULT_TASK in names else 0,
                      format_func=lambda n: common.task_label(by_name[n]), key="xray_task")
calibration = common.calibration_control(choice, key="xray")
clicked = st.button("Classify", type="primary", disabled=upload is None, key="xray_classify")
request = (getattr(upload, "file_id", None), choice, calibration)

if clicked and upload is not None:
    st.session_state.pop("xray_result", None)
    try:
        clf = common.classifier(choice, calibration=calibration)
        result = common.classify_upload(clf, "image", upload.getvalue(), upload.name)
        st.session_state["xray_result"] = (request, result, clf.task_for("image"))
    except medzero.MedzeroError as exc:
        st.error(f"**Could not classify {upload.name}.** {exc}", icon=":material/error:")

stored = st.session_state.get("xray_result")
if stored is not None and stored[0] == request and upload is not None:
    _, result, task = stored
    left, right = st.columns([2, 3], gap="large")
    with left:
        common.show_verdict(result, task, heading=f"Triage level · {result.source} · task {result.task}")
        common.download_json(result, key="xray_json")
    frame = common.label_frame(result, task)
    with right:
        st.subheader("Findings")
        st.table(common.score_table(frame, title="Finding"))
        st.caption(
            "Probability of each finding scored on its own against its negation; highlighted rows are at or above "
            "their threshold, red rows set the triage level."
            if task.mode == "multilabel"
            else "Probabilities across the labels sum to 1; highlighted rows are at or above their threshold."
        )
    st.altair_chart(common.score_chart(frame), width="stretch")
