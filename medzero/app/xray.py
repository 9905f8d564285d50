"""Chest X-ray: windowed display, PHI-safe metadata, and zero-shot findings with a triage level."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image

import medzero
from medzero import WINDOW_PRESETS, read_image
from medzero.app import common, model_check
from medzero.app.common import tr

IMAGE_TYPES = ["dcm", "dicom", "png", "jpg", "jpeg", "tif", "tiff"]
_DEFAULT_TASK = medzero.get_modality("image").default_task
_OWN_WINDOW = "dicom"
_PRESET_ZH = {"lung": "肺窗", "mediastinum": "纵隔窗", "bone": "骨窗"}
#: Display windows for any image that is not a CT (CR, DX, MG, ... and PNG/JPEG): the presets are
#: in Hounsfield units and turn a radiograph black or white, so these work on the image's own values.
_FULL, _CONTRAST = "full", "contrast"
_CONTRAST_PERCENTILES = (1.0, 99.0)

st.title(tr("Chest X-ray", "胸部 X 光"))
st.caption(tr(
    "Upload a DICOM, PNG or JPEG. Findings are scored zero-shot against text descriptions (CheXzero method); "
    "thresholds are uncalibrated starting points. The triage level orders a reading list, it is not a diagnosis.",
    "上传 DICOM、PNG 或 JPEG 图像。各项发现以零样本方式与文字描述比对评分（CheXzero 方法）；"
    "阈值是未经校准的起点。分诊级别用于排列阅片顺序，不是诊断。",
))
model_ready = model_check.banner("image", key="xray", without=tr("Classify is off until then.", "在此之前无法使用“分类”。"))

upload = st.file_uploader(tr("Image (DICOM, PNG, JPEG)", "图像（DICOM、PNG、JPEG）"), type=IMAGE_TYPES, key="xray_file")


@st.cache_data(show_spinner=False, max_entries=16)
def _preview(file_id: str, _data: bytes, name: str, window: str) -> tuple[np.ndarray, dict, str, tuple[int, ...]]:
    """Display pixels (at most 1024 px a side), metadata, format and full shape, through ``read_image``."""
    if window in (_FULL, _CONTRAST):
        pixels, image = _stretched(_data, name, window)
        pil = Image.fromarray(np.rint(pixels * 255.0).astype(np.uint8)).convert("RGB")
    else:
        image = read_image(_data, window=None if window == _OWN_WINDOW else window, name=name)
        pil = image.to_pil()
    pil.thumbnail((1024, 1024))
    return np.asarray(pil), dict(image.metadata), image.format, image.shape


def window_choices(fmt: str, metadata: dict) -> list[str]:
    """The display windows that fit the image: Hounsfield presets for a CT only; for anything else
    (CR, DX, MG, ... and PNG/JPEG) the file's own window, its full range and a contrast stretch."""
    if fmt == "dicom" and str(metadata.get("Modality", "")).strip().upper() == "CT":
        return [_OWN_WINDOW, *WINDOW_PRESETS]
    return [_OWN_WINDOW, _FULL, _CONTRAST]


def _stretched(data: bytes, name: str, window: str):
    """``(pixels, image)``: the image's values linearly onto [0, 1], from its full range (min to
    max) or from the 1st to the 99th percentile.

    A DICOM is read once through a window wide enough to hold every stored value (from BitsStored
    and the rescale), so nothing is clipped before the stretch; other files as stored."""
    image = read_image(data, name=name)
    if image.format == "dicom" and not image.is_color:
        rescale = image.metadata.get("rescale") or {}
        slope, intercept = abs(float(rescale.get("slope", 1.0))) or 1.0, float(rescale.get("intercept", 0.0))
        bits = int(image.metadata.get("BitsStored") or 16)
        image = read_image(data, window=(intercept, slope * 2.0 ** (bits + 1)), name=name)
    values = image.pixels
    low, high = (np.percentile(values, _CONTRAST_PERCENTILES) if window == _CONTRAST else (values.min(), values.max()))
    if high <= low:
        low, high = float(values.min()), float(values.max())
    return np.clip((values - low) / max(float(high - low), 1e-12), 0.0, 1.0).astype(np.float32), image


def _window_label(window: str, fmt: str) -> str:
    if window == _OWN_WINDOW:
        return tr("the file's own window", "文件自带的窗") if fmt == "dicom" else tr("as stored", "按存储原样")
    if window == _FULL:
        return tr("full range (min to max)", "全范围（最小到最大）")
    if window == _CONTRAST:
        return tr("contrast (1st to 99th percentile)", "对比度（第 1 到第 99 百分位）")
    center, width = WINDOW_PRESETS[window]
    return f"{tr(window, _PRESET_ZH.get(window, window))} (C {center:g} / W {width:g} HU)"


def _heatmaps(clf: medzero.Classifier, result: medzero.Result, data: bytes, name: str) -> dict[str, bytes]:
    """The overlay PNG of each finding (``Result.explanations`` drawn on the upload); none for an
    image the task does not judge."""
    if not result.judged:
        return {}
    with st.spinner(tr("Drawing a heatmap per finding…", "正在为每项发现绘制热图……")):
        explained = clf.classify(common.named_buffer(data, name), explain=True)
        result.explanations = explained.explanations
        return medzero.explanation_overlays(result, common.named_buffer(data, name), lang=common.lang())


tasks = common.tasks_for("image")
ordered = sorted(tasks, key=lambda t: (not t.name.startswith("chest_xray"), t.name != _DEFAULT_TASK, t.name))
by_name = {t.name: t for t in ordered}
names = list(by_name)

if upload is not None:
    data = upload.getvalue()
    try:
        pixels, metadata, fmt, shape = _preview(upload.file_id, data, upload.name, _OWN_WINDOW)
        windows = window_choices(fmt, metadata)
        left, right = st.columns([3, 2], gap="large")
        with right:
            window = st.radio(
                tr("Window", "窗宽窗位"),
                windows,
                format_func={w: _window_label(w, fmt) for w in windows}.get,  # worked out now, in this run's language
                key="xray_window",
                help=tr("Changes the display only: the model always sees the file's own window.", "只改变显示：模型看到的始终是文件自带的窗。"),
            )
            if window != _OWN_WINDOW:
                pixels, _, _, _ = _preview(upload.file_id, data, upload.name, window)
            st.markdown(tr("**Metadata** (PHI-free: no names, IDs, dates or free text)",
                           "**元数据**（不含受保护的健康信息：没有姓名、编号、日期或自由文本）"))
            field, value = tr("field", "字段"), tr("value", "值")
            st.table(
                pd.DataFrame(
                    [{field: k, value: json.dumps(v) if isinstance(v, (dict, list)) else str(v)} for k, v in metadata.items()]
                ).style.hide(axis="index")
            )
        with left:
            st.image(pixels, caption=f"{upload.name} · {fmt.upper()} · {shape[1]}×{shape[0]} px", width="stretch")
    except medzero.MedzeroError as exc:
        st.error(tr(f"**Could not read {upload.name}.** ", f"**无法读取 {upload.name}。** ") + common.app_message(exc), icon=":material/error:")

choice = st.selectbox(tr("Task", "任务"), names, index=names.index(_DEFAULT_TASK) if _DEFAULT_TASK in names else 0,
                      format_func={n: common.task_label(by_name[n]) for n in names}.get, key="xray_task")
calibration = common.calibration_control(choice, key="xray")
explain = st.checkbox(
    tr("Heatmap per finding (slower: about 50 model passes)", "每项发现的热图（较慢：约 50 次模型计算）"), key="xray_explain",
    help=tr("Shows which region of the image moved each finding's score (occlusion: each region hidden in turn). "
            "It explains the model, it does not localise disease.",
            "显示图像的哪个区域影响了每项发现的评分（遮挡法：依次遮住每个区域）。它解释的是模型，并不定位病灶。"),
)
clicked = st.button(tr("Classify", "分类"), type="primary", disabled=upload is None or not model_ready, key="xray_classify")
request = (getattr(upload, "file_id", None), choice, calibration, explain)

if clicked and upload is not None:
    st.session_state.pop("xray_result", None)
    try:
        clf = common.classifier(choice, calibration=calibration)
        result = common.classify_upload(clf, "image", upload.getvalue(), upload.name)
        pictures = _heatmaps(clf, result, upload.getvalue(), upload.name) if explain else {}
        st.session_state["xray_result"] = (request, result, clf.task_for("image"))
        st.session_state["xray_heatmaps"] = pictures
    except medzero.MedzeroError as exc:
        st.error(tr(f"**Could not classify {upload.name}.** ", f"**无法分类 {upload.name}。** ") + common.app_message(exc), icon=":material/error:")

stored = st.session_state.get("xray_result")
if stored is not None and stored[0] == request and upload is not None:
    _, result, task = stored
    left, right = st.columns([2, 3], gap="large")
    with left:
        common.show_verdict(result, task, heading=f"{tr('Triage level', '分诊级别')} · {result.source} · {tr('task', '任务')} {result.task}")
        common.download_json(result, key="xray_json")
    frame = common.label_frame(result, task)
    with right:
        st.subheader(tr("Findings", "发现"))
        st.table(common.score_table(frame, title=tr("Finding", "发现")))
        st.caption(
            common.not_judged_note() if not result.judged else
            tr("Probability of each finding scored on its own against its negation; highlighted rows are at or above "
               "their threshold, red rows set the triage level.",
               "每项发现单独与其否定描述比较得出概率；高亮的行达到或超过阈值，红色的行决定了分诊级别。")
            if task.mode == "multilabel"
            else tr("Probabilities across the labels sum to 1; highlighted rows are at or above their threshold.",
                    "各标签的概率之和为 1；高亮的行达到或超过阈值。")
        )
    st.altair_chart(common.score_chart(frame), width="stretch")
    pictures = st.session_state.get("xray_heatmaps") or {}
    if pictures:
        st.subheader(tr("Heatmaps", "热图"))
        ranked = [label for label, _ in result.top() if label in pictures]
        names = {label: (result.label_names.get(label) or {}).get(common.lang()) or label for label in ranked}
        shown = st.selectbox(tr("Finding", "发现"), ranked, format_func=lambda label: f"{names[label]} · {result.scores[label]:.2f}",
                             key="xray_heatmap_label")
        st.image(pictures[shown], width="stretch", caption=tr(
            "Brighter: hiding that region lowered this finding's score more. The model's evidence, not a lesion outline; "
            "research use only, not for diagnosis.",
            "越亮：遮住该区域后这项发现的评分下降越多。这是模型的依据，不是病灶轮廓；仅供研究，不用于诊断。"))
    elif explain and not result.judged:
        st.caption(tr("No heatmaps: the task does not judge this image.", "没有热图：该任务不判读这张图像。"))
