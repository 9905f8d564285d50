"""Voice quality: is a recording good enough for a clinician to hear, or should it be recorded again?"""
from __future__ import annotations

import dataclasses
import os

import numpy as np
import pandas as pd
import streamlit as st

import medzero
from medzero.app import common, model_check
from medzero.app.common import tr

AUDIO_TYPES = ["wav", "mp3", "flac", "ogg", "m4a", "amr", "slk", "silk", "aud", "pcm"]
_MIME = {"wav": "audio/wav", "mp3": "audio/mpeg", "flac": "audio/flac", "ogg": "audio/ogg", "m4a": "audio/mp4", "amr": "audio/amr"}
#: Uploads a browser cannot play (SILK voice notes, raw PCM, WeChat's .amr that may hold SILK): the
#: player gets the library's decoded copy instead.
_DECODED_PLAYBACK = {"slk", "silk", "aud", "pcm", "amr"}
_PCM_RATES = [8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000]
#: Waveform and spectrogram are drawn from a copy at this rate (display only; scoring uses the library's own).
_DISPLAY_RATE = 16000
#: Where the default task and the template for typed labels come from.
AUDIO = medzero.get_modality("audio")

st.title(tr("Voice quality", "语音质量"))
st.caption(tr(
    "Upload or record a patient's voice message. CLAP scores how it sounds (noise, music, crowd, wind, hum…) "
    "and the waveform is measured directly (SNR, clipping, silence, bandwidth). It does not understand the words.",
    "上传或录制患者的语音留言。CLAP 评估它听起来如何（噪声、音乐、人声嘈杂、风声、嗡嗡声……），"
    "并直接测量波形（信噪比、削波、静音、带宽）。它不理解说话的内容。",
))
# Only a missing *default* model falls back to the measurements; a model the app was started with
# (MEDZERO_AUDIO_MODEL) that cannot be found is an error, as in the CLI, and Classify is off.
model_named = bool(os.environ.get(common.MODEL_ENV["audio"]))
model_ready = model_check.banner("audio", key="voice", without=tr(
    "Classify is off until then." if model_named else
    "Until it is installed, Classify judges a recording by its waveform measurements alone (tasks with measurement "
    "rules; typed labels need the model).",
    "在此之前无法使用“分类”。" if model_named else "安装之前，“分类”只依据波形测量结果做出判断（适用于有测量规则的任务；自己输入的标签需要模型）。",
))

_MODES = {"Upload a file": "上传文件", "Record in the browser": "在浏览器中录音"}
# Labels are worked out now, in this run's language (a format_func may be called outside the run).
mode = st.radio("Recording", list(_MODES), horizontal=True, label_visibility="collapsed",
                format_func={m: tr(m, zh) for m, zh in _MODES.items()}.get)
if mode == "Upload a file":
    upload = st.file_uploader(tr("Recording (WAV, MP3, FLAC, Ogg, M4A, AMR, WeChat/QQ SILK, raw PCM; up to 200 MB)",
                                 "录音（WAV、MP3、FLAC、Ogg、M4A、AMR、微信/QQ SILK、原始 PCM；最大 200 MB）"),
                              type=AUDIO_TYPES, key="voice_file")
else:
    upload = st.audio_input(tr("Record a voice message", "录制语音留言"), sample_rate=48000, key="voice_mic")

tasks = common.tasks_for("audio")
names = [t.name for t in tasks]
options = names + [common.CUSTOM_TASK]
by_name = {t.name: t for t in tasks}
choice = st.selectbox(
    tr("Task", "任务"),
    options,
    index=options.index(AUDIO.default_task) if AUDIO.default_task in options else 0,
    format_func={n: tr("Type my own labels…", "自己输入标签……") if n == common.CUSTOM_TASK else common.task_label(by_name[n])
                 for n in options}.get,
    key="voice_task",
)
labels = template = None
multilabel = False
if choice == common.CUSTOM_TASK:
    labels = st.text_input(tr("Labels, comma-separated", "标签，用逗号分隔"), "a person speaking, background noise, music, silence", key="voice_labels")
    template = st.text_input(tr("Template ({} is replaced by each label)", "模板（{} 会被替换为每个标签）"), AUDIO.default_template, key="voice_template")
    multilabel = st.checkbox(tr("Score each label on its own (multilabel)", "每个标签单独评分（多标签）"), key="voice_multilabel")

ext = upload.name.rsplit(".", 1)[-1].lower() if upload is not None and "." in upload.name else ""
pcm = None  # the declared layout of a raw .pcm upload, which no header tells
if ext == "pcm":
    st.caption(tr("Raw PCM has no header: say how it was recorded (a WAV or MP3 named .pcm is read as what it is).",
                  "原始 PCM 没有文件头：请说明它的录制方式（命名为 .pcm 的 WAV 或 MP3 会按其实际格式读取）。"))
    rate_col, format_col, channels_col = st.columns(3)
    pcm = medzero.PcmFormat(
        rate_col.selectbox(tr("Sample rate (Hz)", "采样率（Hz）"), _PCM_RATES, index=_PCM_RATES.index(16000), key="voice_pcm_rate"),
        format_col.selectbox(tr("Sample format", "采样格式"), list(medzero.PcmFormat.SAMPLE_FORMATS),
                             index=list(medzero.PcmFormat.SAMPLE_FORMATS).index("s16le"), key="voice_pcm_format"),
        int(channels_col.number_input(tr("Channels", "声道数"), min_value=1, max_value=8, value=1, step=1, key="voice_pcm_channels")),
    )
pcm_key = None if pcm is None else (pcm.rate, pcm.sample_format, pcm.channels)


@st.cache_data(show_spinner=False, max_entries=8)

def timeline_heading(tl: dict) -> str:
    """What the timeline chart shows: the window grid and, for the two-pass timeline, how many of
    its windows were scored and how many were skipped for want of speech (points are drawn only
    where a window was scored)."""
    total = len(tl["start"])
    skipped = len(tl.get("skipped") or ())
    scored = sum(1 for v in zip(*tl["scores"].values()) if v and v[0] is not None) if tl["scores"] else total
    if tl.get("mode", "full") == "full" and not skipped:
        return tr(f"**Timeline** ({tl['window_s']:g} s windows every {tl['hop_s']:g} s)",
                  f"**时间线**（{tl['window_s']:g} 秒窗口，每 {tl['hop_s']:g} 秒一个）")
    coarse = tl.get("coarse_hop_s", tl["window_s"])
    en = (f"**Timeline** ({tl['window_s']:g} s windows every {coarse:g} s, refined every {tl['hop_s']:g} s "
          f"around the top windows: {scored} of {total} scored")
    zh = f"**时间线**（{tl['window_s']:g} 秒窗口，每 {coarse:g} 秒一个，最高分窗口附近每 {tl['hop_s']:g} 秒细化：{total} 个中评分 {scored} 个"
    if skipped:
        en += f", {skipped} skipped without speech"
        zh += f"，{skipped} 个无人声已跳过"
    return tr(en + ")", zh + "）")

def _display_audio(file_id: str, _data: bytes, name: str, pcm_key: tuple | None = None) -> tuple[np.ndarray, int]:
    """A mono copy at the display rate, through the library's loader (cached per upload and PCM layout)."""
    clip = medzero.load_audio(common.named_buffer(_data, name), sample_rate=_DISPLAY_RATE, name=name,
                              pcm=medzero.PcmFormat(*pcm_key) if pcm_key else None)
    return clip.samples, clip.sample_rate


@st.cache_resource(show_spinner=False, max_entries=8)
def _pcm_classifier(task, labels, template, multilabel, calibration, pcm_key, audio_ref, image_ref) -> medzero.Classifier:
    """A Classifier whose audio limits carry the declared PCM layout (kept per layout, as common.classifier
    keeps the others; the model refs are only the cache key)."""
    limits = dataclasses.replace(AUDIO.limits(), pcm=medzero.PcmFormat(*pcm_key))
    return medzero.Classifier(task, labels=labels, template=template, multilabel=multilabel, calibration=calibration,
                              limits={"audio": limits}, mos=True)


if upload is not None:
    if ext in _DECODED_PLAYBACK:
        try:
            play, play_rate = _display_audio(upload.file_id, upload.getvalue(), upload.name, pcm_key)
            st.audio(play, sample_rate=play_rate)
        except medzero.MedzeroError:  # said once, by Classify
            pass
    else:
        st.audio(upload.getvalue(), format=upload.type or _MIME.get(ext, "audio/wav"))

calibration = common.calibration_control(None if choice == common.CUSTOM_TASK else choice, key="voice")

clicked = st.button(tr("Classify", "分类"), type="primary", disabled=upload is None or (model_named and not model_ready),
                    key="voice_classify")
request = (getattr(upload, "file_id", None), choice, labels, template, multilabel, calibration, pcm_key)

if clicked and upload is not None:
    st.session_state.pop("voice_result", None)
    try:
        task_name = None if choice == common.CUSTOM_TASK else choice
        if pcm_key is None:
            clf = common.classifier(task_name, labels=labels, template=template, multilabel=multilabel, calibration=calibration,
                                    mos=True)  # this page shows speech quality whatever the task
        else:
            clf = _pcm_classifier(task_name, labels, template, multilabel, calibration, pcm_key,
                                  common.model_ref("audio"), common.model_ref("image"))
        result = common.classify_upload(clf, "audio", upload.getvalue(), upload.name)
        st.session_state["voice_result"] = (request, result, clf.task_for("audio"))
    except medzero.MedzeroError as exc:
        st.error(tr(f"**Could not classify {upload.name}.** ", f"**无法分类 {upload.name}。** ") + common.app_message(exc), icon=":material/error:")


stored = st.session_state.get("voice_result")
if stored is not None and stored[0] == request and upload is not None:
    _, result, task = stored
    lg = common.lang()
    left, right = st.columns([2, 3], gap="large")
    with left:
        common.show_verdict(result, task, heading=f"{result.source} · {tr('task', '任务')} {result.task}")
        common.download_json(result, key="voice_json")
    frame = common.label_frame(result, task)
    with right:
        st.subheader(tr("Label scores", "标签分数"))
        if result.signal_only:  # no model, no scores: the verdict comes from the measurements below
            st.info(tr("No label scores: the audio model is not on this machine, so the verdict comes from the waveform "
                       "measurements alone.", "没有标签分数：本机没有音频模型，结论只依据下面的波形测量结果。"))
        else:
            st.altair_chart(common.score_chart(frame), width="stretch")
            st.caption(common.not_judged_note() if not result.judged else
                       tr("Black tick: the label's threshold. Red: the label set the verdict.", "黑色刻度：该标签的阈值。红色：该标签决定了结论。"))
    if not result.signal_only:
        st.table(common.score_table(frame))

    st.subheader(tr("Waveform measurements", "波形测量"))
    st.table(common.metric_frame(result, task).style.hide(axis="index"))

    mos = common.mos_frame(result)
    if mos is not None:  # only where the quality model ran
        st.subheader(tr("Speech quality (DNSMOS P.835, 1–5)", "语音质量（DNSMOS P.835，1–5 分）"))
        st.table(common.mos_table(mos))
        st.caption(common.mos_note())

    st.subheader(tr("Waveform and mel spectrogram", "波形和梅尔频谱图"))
    try:
        samples, rate = _display_audio(upload.file_id, upload.getvalue(), upload.name, pcm_key)
    except medzero.MedzeroError as exc:
        st.error(common.app_message(exc))
    else:
        segs = pd.DataFrame([s.to_dict() for s in result.segments], columns=["label", "start", "end", "score"])
        if len(segs):
            label_ids = list(dict.fromkeys(segs["label"]))
            first_problem = next((r.id for r in result.reasons if r.kind == "label" and r.id in label_ids), None)
            default = first_problem or result.top(1)[0][0]
            shade = st.selectbox(
                tr("Shade the top windows of", "标出得分最高的窗口："),
                label_ids,
                index=label_ids.index(default) if default in label_ids else 0,
                format_func=lambda i: result.label_names.get(i, {}).get(lg, i),
                key="voice_shade",
            )
            segs = segs[segs["label"] == shade].assign(label=lambda d: d["label"].map(lambda i: result.label_names.get(i, {}).get(lg, i)))
        else:
            st.caption(tr(
                "Recordings longer than the model's 10 s input are scored in windows; their top windows are shaded here. "
                "This one fits in a single window.",
                "长于模型 10 秒输入的录音按窗口评分，得分最高的窗口会在这里标出。这段录音只有一个窗口。",
            ))
        speech = common.speech_spans(result)
        st.altair_chart(common.waveform_chart(samples, rate, segs, speech), width="stretch")
        if speech:
            st.caption(tr(f"Green: the {len(speech)} speech segments the voice activity detector (Silero VAD) found.",
                          f"绿色：语音活动检测（Silero VAD）找到的 {len(speech)} 个人声片段。"))
        st.altair_chart(common.mel_chart(samples, rate, segs), width="stretch")
        st.caption(tr(f"Mel spectrogram (0–{rate // 2000} kHz, display copy at {rate} Hz)",
                      f"梅尔频谱图（0–{rate // 2000} kHz，显示用副本 {rate} Hz）"))
        if result.timeline:
            tl = result.timeline
            st.markdown(timeline_heading(tl))
            st.altair_chart(common.timeline_chart(result), width="stretch")
