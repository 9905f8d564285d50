"""What the pages share: the configured models, cached classifiers, the language switch, and result rendering.

Nothing here loads files or scores them: encoders come from :func:`medzero.create_encoder` (which
loads each model once per process: the app keeps no encoder cache of its own), classification from
:class:`medzero.Classifier`, and what is drawn comes from :class:`medzero.Result`. Only medzero's
public names are used.
"""
from __future__ import annotations

import io
import json
import math
import re
import threading
import time
from pathlib import Path
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

import medzero

LANGS = {"en": "English", "zh": "中文"}
CUSTOM_TASK = "__custom__"
#: The verdict of a result a site's conformal rule is not sure about (a public id of the result
#: contract, like ``not_applicable``; the app imports only medzero's public names).
UNCERTAIN = "uncertain"
#: Colours of a task's verdicts, best to worst (Streamlit's named markdown colours).
_VERDICT_COLOURS = ("green", "orange", "red")


def lang() -> str:
    """The display language chosen in the sidebar (``en`` or ``zh``)."""
    return st.session_state.get("lang", "en")


def init_lang() -> str:
    """The session's language, first taken from the page address (``?lang=zh``), so that a reload
    or a shared link keeps it; the sidebar switch changes it from then on (see :func:`keep_lang_in_url`)."""
    if st.session_state.get("lang") not in LANGS:
        asked = st.query_params.get("lang", "en")
        st.session_state["lang"] = asked if asked in LANGS else "en"
    return st.session_state["lang"]


def keep_lang_in_url() -> None:
    """Write the language into the page address (``?lang=``): every run, since moving to another page clears it."""
    if st.query_params.get("lang") != lang():
        st.query_params["lang"] = lang()


def tr(en: str, zh: str) -> str:
    """``en`` or ``zh``, whichever the page is shown in."""
    return zh if lang() == "zh" else en


def app_message(error: "BaseException | str") -> str:
    """A library error as the app shows it, in the page's language: what went wrong, without the
    command-line advice that the same error carries for the terminal (the app gives its own way to
    fix a missing model). On the Chinese page the known messages are translated (the file's name
    kept) and any other is introduced by a Chinese sentence saying what kind of problem it is."""
    text = getattr(error, "reason", None) or str(error)
    parts = [p for p in str(text).split("; ") if "--" not in p and "`medzero " not in p]
    message = "; ".join(parts) or str(text).split("; ")[0]
    if lang() != "zh":
        return message
    translated = zh_text(message)
    if translated != message:
        return translated
    kind = next((zh for cls, zh in _ZH_KIND if isinstance(error, cls)), "出错")
    return f"{kind}：{message}"


#: What kind of problem an untranslated error is, in Chinese (most specific class first).
_ZH_KIND = (
    (medzero.ModelUnavailableError, "模型无法加载"),
    (medzero.BadInputError, "文件无法使用"),
    (medzero.TaskError, "任务设置有误"),
    (medzero.CaseIndexError, "病例索引出错"),
)
_ZH_NOUN = {"audio": "音频", "image": "图像"}
_ZH_FILE = {"an audio recording": "一段录音", "an image": "一张图像"}
#: medzero's messages that the app shows, as (English pattern, Chinese); applied in order, anywhere
#: in a text, so that a message quoted inside another (a signal-only note) is translated too.
_ZH_MESSAGES: list[tuple[str, Any]] = [
    (r"(.+?) is neither audio nor an image \(unrecognised content; expected (.+?)\)",
     lambda m: f"{m[1]} 既不是音频也不是图像（内容无法识别；应为 {m[2].replace(' or ', ' 或 ')}）"),
    (r"(.+?) is not an image \(not DICOM, PNG, JPEG or TIFF by its content\); pass an image file",
     r"\1 不是图像（按内容看不是 DICOM、PNG、JPEG 或 TIFF）；请上传图像文件"),
    (r"(.+?) is empty \(0 bytes\)", r"\1 是空文件（0 字节）"),
    (r"truncated (\w+) file: (.+?) \(the data chunk declares (\d+) bytes but only (\d+) are present; copy or export the file again\)",
     r"\1 文件不完整：\2（数据块声明 \3 字节，实际只有 \4 字节；请重新复制或导出该文件）"),
    (r"(.+?): the DICOM pixel data is incomplete \((.+?)\); the file looks truncated, copy it again",
     r"\1：DICOM 像素数据不完整（\2）；文件似乎被截断，请重新复制"),
    (r"(.+?): cannot parse the DICOM data set \((.+?)\); the file looks truncated or damaged",
     r"\1：无法解析 DICOM 数据集（\2）；文件似乎被截断或已损坏"),
    (r"task (\S+) is for (audio|image), but this file is (an audio recording|an image)",
     lambda m: f"任务 {m[1]} 用于{_ZH_NOUN[m[2]]}，而这个文件是{_ZH_FILE[m[3]]}"),
    (r"\b(audio|image) model directory not found: (.+?) \(it does not exist\)", lambda m: f"找不到{_ZH_NOUN[m[1]]}模型文件夹：{m[2]}（不存在）"),
    (r"\b(audio|image) model folder (.+?) does not exist", lambda m: f"{_ZH_NOUN[m[1]]}模型文件夹 {m[2]} 不存在"),
    (r"\b(audio|image) model (.+?) is not available offline \(", lambda m: f"{_ZH_NOUN[m[1]]}模型 {m[2]} 离线不可用（"),
    (r"\b(audio|image) model (.+?) could not be loaded from (\S+) \(", lambda m: f"{_ZH_NOUN[m[1]]}模型 {m[2]} 无法从 {m[3]} 加载（"),
    (r"its text tower (\S+) is not in the Hugging Face cache", r"Hugging Face 缓存中没有它的文本塔 \1"),
    (r"its weights are not in the Hugging Face cache", "Hugging Face 缓存中没有它的权重"),
    (r"its processor files are not in the Hugging Face cache", "Hugging Face 缓存中没有它的处理器文件"),
    (r"it is not in the Hugging Face cache", "Hugging Face 缓存中没有它"),
    (r", and HF_HUB_OFFLINE is set\)", "，而且设置了 HF_HUB_OFFLINE（离线模式））"),
    (r", and (\S+) cannot be reached \(", r"，而且无法连接 \1（"),
    (r"\b(audio|image) 模型不可用", lambda m: f"{_ZH_NOUN[m[1]]}模型不可用"),  # the signal-only note's own Chinese
]


def zh_text(text: str) -> str:
    """``text`` with every known English medzero message in it put into Chinese."""
    for pattern, replacement in _ZH_MESSAGES:
        text = re.sub(pattern, replacement, text)
    return text


def named_buffer(data: bytes, name: str) -> io.BytesIO:
    """Bytes as a file object that carries the upload's name, so results and errors name the file."""
    buf = io.BytesIO(data)
    buf.name = name
    return buf


# -- models ---------------------------------------------------------------------------------------


#: The variables that choose each modality's model (read by the library; shown on the Models page).
MODEL_ENV = {"audio": "MEDZERO_AUDIO_MODEL", "image": "MEDZERO_IMAGE_MODEL"}


@st.cache_resource(show_spinner=False)
def _model_log() -> dict[str, dict[str, Any]]:
    """Per modality: what the last load attempt gave (the model's fields, or the one-line error)."""
    return {}


def model_ref(modality: str) -> str:
    """The model the library would pick: ``MEDZERO_AUDIO_MODEL`` / ``MEDZERO_IMAGE_MODEL`` or the default."""
    return medzero.default_model(modality)


def load_encoder(modality: str) -> medzero.Encoder:
    """The modality's encoder, through the library (loaded once per process), with a spinner.

    Raises :class:`medzero.ModelUnavailableError` (one line) when the weights are not available.
    """
    ref = model_ref(modality)
    log = _model_log()
    noun = tr(modality, {"audio": "音频", "image": "图像"}.get(modality, modality))
    with st.spinner(tr(f"Loading the {modality} model {ref} (first use only)…", f"正在加载{noun}模型 {ref}（仅首次使用时）……")):
        try:
            enc = medzero.create_encoder(ref, modality=modality)
        except medzero.MedzeroError as exc:
            log[modality] = {"ref": ref, "error": app_message(exc)}
            raise
    log[modality] = {
        "ref": ref,
        "model_id": str(enc.model_id),
        "fingerprint": str(enc.fingerprint),
        "device": str(enc.device),
        "dim": enc.dim,
        "sample_rate": getattr(enc, "sample_rate", None),
    }
    return enc


def model_status() -> dict[str, dict[str, Any]]:
    return dict(_model_log())


@st.cache_resource(show_spinner=False, max_entries=32)
def _classifier(task: str | None, labels: str | None, template: str | None, multilabel: bool,
                audio_ref: str, image_ref: str, calibration: str | None, mos: bool | None) -> medzero.Classifier:
    # The models are left to the library (MEDZERO_*_MODEL, else the default) rather than named here:
    # a named model that cannot be loaded is an error, while a missing *default* audio model still
    # gives a signal-only verdict, as in the CLI. The refs are only the cache key.
    return medzero.Classifier(task, labels=labels, template=template, multilabel=multilabel, calibration=calibration, mos=mos)


def classifier(task: str | None = None, *, labels: str | None = None, template: str | None = None,
               multilabel: bool = False, calibration: str | None = None, mos: bool | None = None) -> medzero.Classifier:
    """A Classifier kept for the process, so task heads (label embeddings) are built once per model.

    ``calibration``: the path of a site overlay (see :func:`calibration_control`); ``mos``: as
    ``medzero.Classifier``'s (the voice page measures DNSMOS for every task)."""
    return _classifier(task, labels, template, multilabel, model_ref("audio"), model_ref("image"), calibration, mos)


# -- site calibration -----------------------------------------------------------------------------

_CALIBRATION_TEXT = {
    "en": {
        "title": "Site calibration",
        "help": "Upload the thresholds file that the evaluation step wrote for this task on your own labelled cases. "
                "Without one, the task's default thresholds are used, and every result says they are uncalibrated.",
        "upload": "Calibration file (YAML)",
        "using": "Using site thresholds from {name}.",
    },
    "zh": {
        "title": "本院校准",
        "help": "上传评估步骤在本院已标注病例上为此任务生成的阈值文件。未上传时使用任务的默认阈值，每个结果都会注明“未校准”。",
        "upload": "校准文件（YAML）",
        "using": "正在使用 {name} 中的本院阈值。",
    },
}


def calibration_control(task: str | None, *, key: str) -> str | None:
    """An expander to upload a site calibration overlay for ``task``; the path of the overlay in use
    (saved once per content under the app's temporary folder), or ``None``. A file that is not an
    overlay for this task is refused here, with a one-line message, before anyone presses Classify."""
    if task is None:
        return None
    text = _CALIBRATION_TEXT[lang()]
    with st.expander(text["title"]):
        st.caption(text["help"])
        upload = st.file_uploader(text["upload"], type=["yaml", "yml"], key=f"{key}_calibration")
        if upload is None:
            return None
        import hashlib
        import tempfile

        data = upload.getvalue()
        folder = Path(tempfile.gettempdir()) / "medzero-app-calibration"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{hashlib.sha256(data).hexdigest()[:16]}-{Path(upload.name).name}"
        if not path.exists():
            path.write_bytes(data)
        try:
            # the overlay is checked against the task without loading a model
            medzero.apply_calibration(medzero.load_task(task), str(path))
        except medzero.MedzeroError as exc:
            st.error(app_message(exc))
            return None
        st.success(text["using"].format(name=upload.name))
        return str(path)


def classify_upload(clf: medzero.Classifier, modality: str, data: bytes, name: str) -> medzero.Result:
    """Load the model (spinner), then classify the uploaded bytes; raises MedzeroError for a bad file.

    A model that cannot be loaded is not an error here: the Classifier decides, as it does for the
    CLI (a signal-only verdict when the default model is missing and the task has measurement
    rules; the model's error otherwise)."""
    try:
        device = str(load_encoder(modality).device)
    except medzero.ModelUnavailableError:
        device = tr("no model: measurements only", "无模型：仅测量")
    with st.spinner(tr(f"Classifying {name}…", f"正在分类 {name}……")):
        start = time.perf_counter()
        result = clf.classify(named_buffer(data, name))
        st.session_state[f"{modality}_timing"] = (time.perf_counter() - start, device)
        return result


# -- tasks ----------------------------------------------------------------------------------------


def tasks_for(modality: str) -> list[medzero.Task]:
    return [t for t in medzero.list_tasks() if t.modality == modality]


def task_label(task: medzero.Task) -> str:
    desc = task.description.get(lang()) if task.description else ""
    return f"{task.name} — {desc}" if desc else task.name


# -- formatting -----------------------------------------------------------------------------------


def verdict_colour(task: medzero.Task, verdict: str | None, *, applicable: bool = True) -> str:
    """Green, orange or red along the task's verdicts, best to worst; grey for an input the task
    does not judge (``not_applicable`` is no triage level, so it must not look like one); violet
    for ``uncertain`` (in scope, but a site's conformal rule is not sure: no level either, and
    not the worst one, which it would read as)."""
    if not applicable:
        return "gray"
    if verdict == UNCERTAIN:
        return "violet"
    if not task.verdicts or verdict is None:
        return "blue"
    rank = task.verdict_rank(verdict) if verdict in [v.id for v in task.verdicts] else len(task.verdicts) - 1
    if len(task.verdicts) == 1:
        return _VERDICT_COLOURS[0]
    step = rank / (len(task.verdicts) - 1)
    return _VERDICT_COLOURS[0] if step == 0 else _VERDICT_COLOURS[2] if step == 1 else _VERDICT_COLOURS[1]


# -- result rendering -----------------------------------------------------------------------------


def show_verdict(result: medzero.Result, task: medzero.Task, *, heading: str) -> None:
    """The verdict in large type, then each reason with its advice."""
    lg = lang()
    name = (result.verdict_name or {}).get(lg) or result.verdict or "—"
    colour = verdict_colour(task, result.verdict, applicable=result.applicable)
    timing = st.session_state.get(f"{result.modality}_timing")
    if timing is not None:
        heading += tr(f" · classified in {timing[0]:.2f} s on {timing[1]}", f" · 分类用时 {timing[0]:.2f} 秒（{timing[1]}）")
    st.caption(heading)
    st.markdown(f"# :{colour}[{name}]")
    if not task.verdicts:
        st.caption(tr("Typed labels have no verdict scheme: the verdict is the top-scoring label.", "自己输入的标签没有结论方案：结论就是得分最高的标签。"))
    elif result.calibration:
        calibrated = result.calibration.get("status") == "calibrated"
        if lg == "zh":
            st.caption("阈值：本院校准" if calibrated else "阈值：未校准（任务默认值，未在本院数据上拟合）")
        else:
            st.caption(result.calibration.get("summary") or ("thresholds: calibrated" if calibrated else "thresholds: uncalibrated"))
    if result.verdict == UNCERTAIN:
        st.caption(tr(f"Not sure: the site's conformal rule (error rate {result.conformal['alpha']:g}) leaves "
                      f"{', '.join(result.uncertain)} undecided. Have a person read this one.",
                      f"不确定：本院的保形规则（错误率 {result.conformal['alpha']:g}）无法判定 {'、'.join(result.uncertain)}，"
                      "请由人工判读。") if result.conformal else tr("Not sure.", "不确定。"))
    if result.reasons:
        st.markdown("**Why**" if lg == "en" else "**原因**")
        for reason in result.reasons:
            advice = (reason.advice or {}).get(lg) or (reason.advice or {}).get("en")
            text = reason.text(lg)
            line = f"- {zh_text(text) if lg == 'zh' else text}"  # a note may quote a library message
            if advice:
                line += f"  \n  *{advice}*"
            st.markdown(line)
    elif task.verdicts:
        st.markdown("No label or measurement is past its limit." if lg == "en" else "所有标签和测量值均在限值内。")


def label_frame(result: medzero.Result, task: medzero.Task) -> pd.DataFrame:
    """One row per label, best score first: name, score, calibrated probability (nan without the
    site's probability maps), threshold, positive, whether a conformal rule is not sure about it,
    and the verdict it set.

    For an input the task does not judge (``not_applicable``) the scores are kept as computed, but
    ``judged`` is false and ``positive`` is ``None``: no finding is called present or absent."""
    lg = lang()
    set_by = {r.id: r for r in result.reasons if r.kind == "label"}
    rows = []
    for label in task.labels:
        score = float(result.scores.get(label.id, float("nan")))
        threshold = float(result.thresholds.get(label.id, label.threshold))
        reason = set_by.get(label.id)
        rows.append(
            {
                "id": label.id,
                "label": result.label_names.get(label.id, {}).get(lg) or label.id,
                "score": score,
                "probability": float(result.probabilities.get(label.id, float("nan"))),
                "threshold": threshold,
                "judged": result.judged,
                "positive": result.positive(label.id),
                "uncertain": label.id in result.uncertain,
                "polarity": label.polarity,
                "problem": reason is not None,
                "sets": (task.verdict(reason.verdict).display(lg) if reason is not None and reason.verdict else ""),
            }
        )
    return pd.DataFrame(rows).sort_values("score", ascending=False, kind="stable").reset_index(drop=True)


def not_judged_note() -> str:
    """Says why a not-applicable result's scores are shown without a call."""
    return tr("The task does not judge this input: the scores are shown as computed, and no label is called positive "
              "or negative against its threshold.",
              "此任务不判读这个输入：分数按计算结果显示，不依据阈值判定任何标签为阳性或阴性。")


def score_chart(frame: pd.DataFrame) -> alt.LayerChart:
    """Horizontal bars sorted by score, each label's threshold drawn as a black tick (none where
    the scores were not judged: a threshold there would invite a call nobody made)."""
    sets, above, below = tr("sets the verdict", "决定结论"), tr("above threshold", "高于阈值"), tr("below threshold", "低于阈值")
    unjudged, unsure = tr("not judged", "未判读"), tr("not sure", "不确定")
    status = frame.apply(lambda r: unjudged if not r.judged else sets if r.problem else unsure if r.uncertain
                         else (above if r.positive else below), axis=1)
    data = frame.assign(status=status)
    order = list(data["label"])
    y = alt.Y("label:N", sort=order, title=None, axis=alt.Axis(labelLimit=260, labelOverlap=False))
    bars = alt.Chart(data).mark_bar().encode(
        x=alt.X("score:Q", scale=alt.Scale(domain=[0, 1]), title=tr("score", "分数")),
        y=y,
        color=alt.Color(
            "status:N",
            scale=alt.Scale(domain=[sets, above, below, unsure, unjudged], range=["#d62728", "#ff9f1c", "#7f9cc6", "#9467bd", "#b0b0b0"]),
            legend=alt.Legend(orient="bottom", title=None),
        ),
        tooltip=[alt.Tooltip("label:N"), alt.Tooltip("score:Q", format=".3f"), alt.Tooltip("threshold:Q", format=".2f")],
    )
    if not frame["judged"].all():
        return bars.properties(height=alt.Step(26))
    ticks = alt.Chart(data).mark_tick(color="black", thickness=2, size=18).encode(x="threshold:Q", y=y)
    return (bars + ticks).properties(height=alt.Step(26))


def _score_and_threshold(score: float, threshold: float) -> tuple[str, str]:
    """``0.503`` and ``0.50`` as usual; more digits where those would print the wrong side."""
    shown = f"{score:.3f}", f"{threshold:.2f}"
    if (float(shown[0]) > float(shown[1])) - (float(shown[0]) < float(shown[1])) == (score > threshold) - (score < threshold):
        return shown
    return medzero.format_values(score, threshold)


def score_table(frame: pd.DataFrame, *, title: str | None = None):
    """The label rows as a styled table: positives highlighted, the ones that set the verdict in red.

    Score and threshold are printed with enough digits to show on which side of it the score lies
    (``0.4996`` against ``0.5000``, not ``0.500`` against ``0.50`` with "no"). Rows that were not
    judged show no threshold and "not judged" instead of yes or no; a label a conformal rule is not
    sure about shows "not sure". With the site's probability maps, a Probability column follows
    the raw score."""
    yes, no, unjudged, unsure = tr("yes", "是"), tr("no", "否"), tr("not judged", "未判读"), tr("not sure", "不确定")
    scores, thresholds = [], []
    for row in frame.itertuples():
        if not row.judged or row.score != row.score:  # not judged, or no score (nan)
            scores.append("–" if row.score != row.score else f"{row.score:.3f}")
            thresholds.append("–")
            continue
        score, threshold = _score_and_threshold(row.score, row.threshold)
        scores.append(score)
        thresholds.append(threshold)
    columns = {title or tr("Label", "标签"): frame["label"], tr("Score", "分数"): scores}
    if frame["probability"].notna().any():
        columns[tr("Probability", "概率")] = frame["probability"].map(lambda p: "–" if p != p else f"{p:.2f}")
    columns[tr("Threshold", "阈值")] = thresholds
    columns[tr("Positive", "阳性")] = [unsure if u else unjudged if v is None else yes if v else no
                                       for v, u in zip(frame["positive"], frame["uncertain"])]
    columns[tr("Sets verdict", "决定结论")] = frame["sets"]
    shown = pd.DataFrame(columns)

    def colour(row: pd.Series) -> list[str]:
        f = frame.loc[row.name]
        if f.problem:
            style = "background-color: #fde2e1; font-weight: 600"
        elif f.positive is True:
            style = "background-color: #fff3d6"
        else:
            style = ""
        return [style] * len(row)

    return shown.style.apply(colour, axis=1).hide(axis="index")


def download_json(result: medzero.Result, *, key: str) -> None:
    stem = Path(result.source).stem or "result"
    st.download_button(
        tr("Download JSON", "下载 JSON"),
        data=json.dumps(result.to_dict(), ensure_ascii=False, indent=2),
        file_name=f"{stem}.medzero.json",
        mime="application/json",
        key=key,
        on_click="ignore",
    )


def metric_frame(result: medzero.Result, task: medzero.Task) -> pd.DataFrame:
    """Waveform metrics with the task's limits and whether each is within them."""
    lg = lang()
    problems = {r.id for r in result.reasons if r.kind == "metric"}
    metric_info = medzero.get_modality(result.modality).metric_info
    rows = []
    for metric, value in result.metrics.items():
        info = metric_info.get(metric, {"en": metric, "zh": metric, "unit": ""})
        unit = info.get("unit", "")
        rule = task.metrics.get(metric)
        shown, limits = medzero.format_value(float(value), unit), []
        for sign, bound in (("≥", rule.min), ("≤", rule.max)) if rule is not None else ():
            if bound is not None:  # printed apart from the value, so "outside the limit" reads true
                apart, limit = medzero.format_values(float(value), bound, unit)
                shown = apart if len(apart) > len(shown) else shown
                limits.append(f"{sign} {limit}")
        if rule is None:
            status = ""
        elif metric in problems:
            status = "outside the limit" if lg == "en" else "超出限值"
        else:
            status = "ok" if lg == "en" else "正常"
        rows.append({tr("Measurement", "测量项"): info.get(lg) or info["en"], tr("Value", "数值"): shown,
                     tr("Limit", "限值"): tr(" and ", " 且 ").join(limits), tr("Status", "状态"): status})
    return pd.DataFrame(rows)


_LOCKS: dict[str, threading.Lock] = {}


def lock_for(key: str) -> threading.Lock:
    """One lock per key for the process (e.g. one writer per case index)."""
    return _LOCKS.setdefault(key, threading.Lock())


# -- voice charts ---------------------------------------------------------------------------------
#
# Built here rather than in the page so that their specs can be tested without a browser. Fields
# another part adds to results (``Result.speech_segments``, the ``mos_*`` metrics) are read with a
# default: a result without them draws what it has and shows nothing in their place.

#: Autosize for charts with a legend: fit the width, grow the height to what is drawn. Streamlit's
#: default (``fit``) squeezes everything into the chart's height and cuts off a legend taller than it.
_GROW_DOWN = alt.AutoSizeParams(type="fit-x", contains="padding")
_SPEECH_COLOUR, _WINDOW_COLOUR = "#2ca02c", "#d62728"


def speech_kind() -> str:
    """The legend entry of the VAD's speech spans."""
    return tr("speech (VAD)", "人声（VAD）")


def speech_spans(result: medzero.Result) -> list[tuple[float, float]]:
    """The voice activity detector's speech segments as ``(start, end)`` seconds; none when the
    result has no such field (no VAD ran, or a result from before it)."""
    spans = []
    for seg in getattr(result, "speech_segments", None) or ():
        start, end = (seg.get("start"), seg.get("end")) if isinstance(seg, dict) else tuple(seg)[:2]
        if start is not None and end is not None and end > start:
            spans.append((float(start), float(end)))
    return spans


def waveform_chart(samples, rate: int, windows: pd.DataFrame, speech: list[tuple[float, float]]) -> alt.LayerChart:
    """The waveform as a min/max envelope, the VAD's speech spans shaded green and the chosen label's
    top windows red (``windows``: label, start, end, score), with a legend naming both."""
    import numpy as np

    bins = max(1, min(1500, len(samples)))
    edges = np.linspace(0, len(samples), bins + 1).astype(int)
    lo = np.array([samples[a:b].min() if b > a else 0.0 for a, b in zip(edges[:-1], edges[1:])])
    hi = np.array([samples[a:b].max() if b > a else 0.0 for a, b in zip(edges[:-1], edges[1:])])
    wave = pd.DataFrame({"t": edges[:-1] / rate, "lo": lo, "hi": hi})
    x = alt.X("t:Q", title=tr("time (s)", "时间（秒）"), scale=alt.Scale(domain=[0, len(samples) / rate], nice=False))
    chart = alt.Chart(wave).mark_area(color="#4c78a8").encode(
        x=x, y=alt.Y("lo:Q", title=tr("amplitude", "振幅"), scale=alt.Scale(domain=[-1, 1])), y2="hi:Q"
    )
    spans = [{"kind": speech_kind(), "start": a, "end": b, "score": None} for a, b in speech]
    if len(windows):
        kind = tr(f"top windows: {windows['label'].iloc[0]}", f"得分最高的窗口：{windows['label'].iloc[0]}")
        spans += [{"kind": kind, "start": r.start, "end": r.end, "score": r.score} for r in windows.itertuples()]
    if not spans:
        return chart.properties(height=160)
    data = pd.DataFrame(spans)
    kinds = list(dict.fromkeys(data["kind"]))
    colours = [_SPEECH_COLOUR if k == speech_kind() else _WINDOW_COLOUR for k in kinds]
    shade = alt.Chart(data).mark_rect(opacity=0.25).encode(
        x=alt.X("start:Q"), x2="end:Q",
        color=alt.Color("kind:N", scale=alt.Scale(domain=kinds, range=colours),
                        legend=alt.Legend(orient="top", title=None, symbolType="square", labelLimit=0, symbolLimit=0)),
        tooltip=[alt.Tooltip("kind:N", title=tr("span", "区段")), alt.Tooltip("start:Q", format=".2f"),
                 alt.Tooltip("end:Q", format=".2f"), alt.Tooltip("score:Q", format=".3f")],
    )
    return (shade + chart).properties(height=160, autosize=_GROW_DOWN)


def _hz_label(hz: float) -> str:
    return f"{hz / 1000:g}k" if hz >= 1000 else f"{hz:g}"


def mel_chart(samples, rate: int, windows: pd.DataFrame, *, columns: int = 200, bands: int = 64) -> alt.LayerChart:
    """A mel spectrogram with axes: time in seconds, frequency in Hz on the mel scale, and a colour
    bar in dB below the loudest cell; the chosen label's top windows outlined in red.

    The power is averaged into at most ``columns`` × ``bands`` cells, so the chart's data stays
    small (about 13,000 cells) however long the recording."""
    import librosa
    import numpy as np

    duration = len(samples) / rate
    hop = max(256, len(samples) // 1200)
    power = librosa.feature.melspectrogram(y=samples, sr=rate, n_fft=1024, hop_length=hop, n_mels=bands, fmax=rate / 2)
    n = power.shape[1]
    cuts = np.linspace(0, n, min(columns, n) + 1).astype(int)
    pooled = np.stack([power[:, a:b].mean(axis=1) for a, b in zip(cuts[:-1], cuts[1:])], axis=1)
    peak = float(pooled.max()) if pooled.size and pooled.max() > 0 else 1.0
    db = librosa.power_to_db(pooled, ref=peak, top_db=80.0)
    mels = librosa.hz_to_mel(librosa.mel_frequencies(bands + 2, fmin=0.0, fmax=rate / 2))
    half = (mels[1] - mels[0]) / 2
    centres = mels[1:-1]
    t0, t1 = cuts[:-1] / n * duration, cuts[1:] / n * duration
    # each cell reaches a little into the next one: edge to edge, anti-aliased seams draw a grid
    t1, top = np.minimum(t1 + 0.3 * (t1 - t0), duration), 1.6 * half
    band, col = np.meshgrid(np.arange(bands), np.arange(len(t0)), indexing="ij")
    cells = pd.DataFrame({
        "t0": t0[col].ravel().astype(np.float32), "t1": t1[col].ravel().astype(np.float32),
        "m0": (centres[band] - half).ravel().astype(np.float32), "m1": np.minimum(centres[band] + top, centres[-1] + half).ravel().astype(np.float32),
        "hz": np.round(librosa.mel_to_hz(centres[band])).ravel().astype(np.float32),
        "db": db.ravel().astype(np.float32),
    })
    ticks = [hz for hz in (100, 250, 500, 1000, 2000, 4000, 8000, 16000) if hz < rate / 2]
    at = [float(librosa.hz_to_mel(hz)) for hz in ticks]
    label = " : ".join(f"abs(datum.value - {m!r}) < 1e-6 ? '{_hz_label(hz)}'" for m, hz in zip(at, ticks)) + " : ''"
    x = alt.X("t0:Q", title=tr("time (s)", "时间（秒）"), scale=alt.Scale(domain=[0, duration], nice=False))
    y = alt.Y("m0:Q", title=tr("frequency (Hz, mel scale)", "频率（Hz，梅尔刻度）"),
              scale=alt.Scale(domain=[float(centres[0] - half), float(centres[-1] + half)], nice=False, zero=False),
              axis=alt.Axis(values=at, labelExpr=label, labelOverlap="greedy"))
    scale = alt.Scale(scheme="viridis", domain=[-80, 0])
    heat = alt.Chart(cells).mark_rect().encode(
        x=x, x2="t1:Q", y=y, y2="m1:Q",
        color=alt.Color("db:Q", title=tr("dB re max", "dB（相对最大值）"), scale=scale,
                        legend=alt.Legend(orient="top", direction="horizontal", gradientLength=220)),
        tooltip=[alt.Tooltip("t0:Q", title=tr("time (s)", "时间（秒）"), format=".2f"),
                 alt.Tooltip("hz:Q", title="Hz", format=".0f"), alt.Tooltip("db:Q", title="dB", format=".1f")],
    )
    if not len(windows):
        return heat.properties(height=220, autosize=_GROW_DOWN)
    outline = alt.Chart(windows).mark_rect(fillOpacity=0, stroke=_WINDOW_COLOUR, strokeWidth=2).encode(x="start:Q", x2="end:Q")
    return (heat + outline).properties(height=220, autosize=_GROW_DOWN)


def timeline_chart(result: medzero.Result) -> alt.Chart:
    """Every label's score per window of a long recording, one line each, and a legend that lists
    every label in full: below the chart, in columns, with no limit on entries or label length
    (a legend beside a fixed-height chart was cut off after about seven labels)."""
    lg, tl = lang(), result.timeline
    names: list[str] = []
    for lab in tl["scores"]:  # two labels shown alike would share a line: keep them apart
        name = result.label_names.get(lab, {}).get(lg) or lab
        names.append(name if name not in names else f"{name} ({lab})")
    rows = pd.DataFrame([
        {"start": s, "label": name, "score": v}
        for name, values in zip(names, tl["scores"].values())
        for s, v in zip(tl["start"], values)
        if v is not None  # a window the two-pass timeline did not score, or skipped (no speech)
    ], columns=["start", "label", "score"])
    scale = alt.Scale(domain=names, scheme="tableau20") if len(names) > 10 else alt.Scale(domain=names)
    legend = alt.Legend(orient="bottom", columns=min(3, max(1, len(names))), symbolLimit=0, labelLimit=0, title=None)
    return alt.Chart(rows).mark_line(point=True).encode(
        x=alt.X("start:Q", title=tr("window start (s)", "窗口起点（秒）")),
        y=alt.Y("score:Q", title=tr("score", "分数"), scale=alt.Scale(domain=[0, 1])),
        color=alt.Color("label:N", title=tr("label", "标签"), scale=scale, sort=names, legend=legend),
        tooltip=["label:N", alt.Tooltip("start:Q", format=".1f"), alt.Tooltip("score:Q", format=".3f")],
    ).properties(height=220, autosize=_GROW_DOWN)


# -- speech quality (DNSMOS) ----------------------------------------------------------------------

#: The three DNSMOS P.835 scores: the metric, its P.835 name, what it rates, and the label ITU-T
#: P.835's rating scale gives each whole score (5 first).
MOS_SCORES = (
    ("mos_sig", "SIG",
     {"en": "the voice itself: how natural and undistorted the speech sounds",
      "zh": "语音本身：说话声是否自然、没有失真"},
     {"en": ("not distorted", "slightly distorted", "somewhat distorted", "fairly distorted", "very distorted"),
      "zh": ("无失真", "轻微失真", "有些失真", "明显失真", "严重失真")}),
    ("mos_bak", "BAK",
     {"en": "the background: how little the noise behind the voice intrudes",
      "zh": "背景：语音背后的噪声干扰有多小"},
     {"en": ("not noticeable", "slightly noticeable", "noticeable but not intrusive", "somewhat intrusive", "very intrusive"),
      "zh": ("察觉不到", "稍可察觉", "可察觉但不干扰", "有些干扰", "严重干扰")}),
    ("mos_ovrl", "OVRL",
     {"en": "overall: the recording as a listener hears it, voice and background together",
      "zh": "整体：听者对语音和背景合起来的整体感受"},
     {"en": ("excellent", "good", "fair", "poor", "bad"), "zh": ("优", "良", "中", "差", "劣")}),
)
#: medzero's bands for reading a 1-5 score at a glance (DNSMOS defines none): lower bound, name, colour.
MOS_BANDS = ((3.5, {"en": "good", "zh": "好"}, "#dff3e3"), (2.5, {"en": "fair", "zh": "一般"}, "#fff3d6"),
             (float("-inf"), {"en": "poor", "zh": "差"}, "#fde2e1"))


def mos_band(score: float) -> tuple[str, str]:
    """The band ``score`` falls in (in the page's language) and its cell colour."""
    lg = lang()
    for low, name, colour in MOS_BANDS:
        if score >= low:
            return name[lg], colour
    return MOS_BANDS[-1][1][lg], MOS_BANDS[-1][2]  # nan


def mos_frame(result: medzero.Result) -> pd.DataFrame | None:
    """One row per DNSMOS score the result has: value on the 1-5 scale, medzero's band, the P.835
    scale's word at the nearest whole score, and what the score rates; ``None`` when it has none."""
    lg = lang()
    rows = []
    for metric, short, meaning, scale in MOS_SCORES:
        value = result.metrics.get(metric)
        if value is None or float(value) != float(value):
            continue
        value = float(value)
        word = scale[lg][5 - int(min(5, max(1, math.floor(value + 0.5))))]  # halves up
        rows.append({tr("Score", "评分"): short, tr("Value (1–5)", "数值（1–5）"): f"{value:.2f}",
                     tr("Band", "等级"): mos_band(value)[0], tr("P.835 scale", "P.835 量表"): word,
                     tr("What it rates", "评价内容"): meaning[lg]})
    return pd.DataFrame(rows) if rows else None


def mos_note() -> str:
    """Where the words and the bands of the MOS table come from."""
    return tr(
        "DNSMOS P.835 predicts what listeners would answer on ITU-T P.835's 1–5 scales (5 best); the scale's word "
        "is its label at the nearest whole score. The bands (good ≥ 3.5, fair 2.5–3.5, poor < 2.5) are medzero's, "
        "for reading the scores at a glance: DNSMOS defines none. The verdict uses the task's limits shown in the "
        "measurements above.",
        "DNSMOS P.835 预测听者在 ITU-T P.835 的 1–5 分量表上会给出的评分（5 分最好）；量表一栏是最接近的整数分对应的"
        "量表描述。等级（好 ≥ 3.5，一般 2.5–3.5，差 < 2.5）是 medzero 为便于快速阅读而设的，DNSMOS 本身没有规定。"
        "结论依据的是上面测量表中任务的限值。",
    )


def mos_table(frame: pd.DataFrame):
    """The MOS rows as a styled table, the band cell coloured by its band."""
    band = frame.columns[2]
    colours = {name[lang()]: colour for _, name, colour in MOS_BANDS}
    return frame.style.apply(lambda col: [f"background-color: {colours.get(v, '')}" for v in col], subset=[band]).hide(axis="index")
