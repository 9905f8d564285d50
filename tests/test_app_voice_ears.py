"""What the voice page shows of the recording's "real ears" (issue 21, item 7), through
``streamlit.testing.v1.AppTest`` with the tiny CLAP checkpoint and real espeak-ng recordings, as
tests/test_app.py does; the VAD (Silero) and the quality model (DNSMOS P.835) are the real ones
from their wheels:

- the waveform chart shades the speech segments the VAD found, with a legend entry for them;
- the three DNSMOS scores are shown on their 1-5 scale with what each rates and a band, in en and zh;
- the timeline of a long recording has a legend that lists every label (none cut off);
- the mel spectrogram has axes: time in s, frequency in Hz on the mel scale, a colour bar in dB.

What the spec alone cannot show (a legend cut off by the chart's height) is checked in a real
browser in tests/test_browser.py.
"""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("streamlit")
import pyarrow as pa  # noqa: E402

import audio_samples  # noqa: E402
import medzero  # noqa: E402
from medzero.app import common  # noqa: E402
from test_app import _app  # noqa: E402 - AppTest of the app entry; app_env comes from conftest

MOS = ("mos_sig", "mos_bak", "mos_ovrl")


# -- helpers ----------------------------------------------------------------------------------------


def _classify(at, name: str, data: bytes) -> medzero.Result:
    at.file_uploader(key="voice_file").set_value((name, data, "audio/wav"))
    at.run()
    next(b for b in at.button if b.label in ("Classify", "分类")).click()
    at.run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    return at.session_state["voice_result"][1]


def _to_zh(at) -> None:
    at.sidebar.radio(key="lang").set_value("zh")
    at.run()
    assert not at.exception, at.exception


def _charts(at) -> list[tuple[dict, dict[str, pd.DataFrame]]]:
    """Every Altair chart on the page: its Vega-Lite spec (as Streamlit sends it) and its data sets."""
    charts = []
    for element in at.get("vega_lite_chart"):
        proto = element.proto
        data = {d.name: pa.ipc.open_stream(d.data.data).read_pandas() for d in proto.datasets}
        charts.append((json.loads(proto.spec), data))
    return charts


def _views(spec: dict) -> list[dict]:
    """The single views of a chart: itself, or each of its layers."""
    return spec.get("layer", [spec])


def _data(view: dict, spec: dict, data: dict[str, pd.DataFrame]) -> pd.DataFrame:
    return data[(view.get("data") or spec["data"])["name"]]


def _chart(at, field: str, channel: str = "x") -> tuple[dict, dict[str, pd.DataFrame]]:
    """The chart one of whose views encodes ``field`` on ``channel``."""
    found = [(s, d) for s, d in _charts(at) if any(v.get("encoding", {}).get(channel, {}).get("field") == field for v in _views(s))]
    assert len(found) == 1, [json.dumps(s)[:300] for s, _ in _charts(at)]
    return found[0]


def _text(at) -> str:
    parts = [e.value for kind in ("markdown", "subheader", "caption") for e in getattr(at, kind)]
    return "\n".join(str(p) for p in parts)


def _speech_layer(at) -> tuple[dict, pd.DataFrame]:
    """The waveform chart's shaded spans (the layer coloured by ``kind``) and their rows."""
    spec, data = _chart(at, "t")
    shaded = [v for v in _views(spec) if v.get("encoding", {}).get("color", {}).get("field") == "kind"]
    assert len(shaded) == 1, "the waveform chart shades no span"
    return shaded[0], _data(shaded[0], spec, data)


# -- VAD speech segments on the waveform -------------------------------------------------------------


def test_the_waveform_shades_the_speech_the_vad_found(app_env, audio_clips):
    at = _app()
    result = _classify(at, "speech.wav", audio_clips["speech"].read_bytes())
    segments = [tuple(s) for s in result.speech_segments]
    assert segments and all(0 <= a < b <= result.metrics["duration_s"] + 0.01 for a, b in segments)
    for lang, name in (("en", "speech (VAD)"), ("zh", "人声（VAD）")):
        if lang == "zh":
            _to_zh(at)
        view, rows = _speech_layer(at)
        speech = rows[rows["kind"] == name]
        assert [(round(a, 3), round(b, 3)) for a, b in zip(speech["start"], speech["end"])] == \
            [(round(a, 3), round(b, 3)) for a, b in segments]
        assert name in view["encoding"]["color"]["scale"]["domain"]  # the legend names it
        assert view["encoding"]["color"].get("legend") is not None
    assert f"语音活动检测（Silero VAD）找到的 {len(segments)} 个人声片段" in _text(at)


def test_noise_alone_shades_no_speech(app_env, audio_clips):
    at = _app()
    result = _classify(at, "noise.wav", audio_clips["noise"].read_bytes())
    assert list(result.speech_segments) == []
    spec, _ = _chart(at, "t")
    for view in _views(spec):  # no span, no legend entry for speech
        assert "speech (VAD)" not in json.dumps(view, ensure_ascii=False)
    assert "voice activity detector" not in _text(at)


def test_a_result_without_speech_segments_draws_the_waveform_alone():
    """A result from before the VAD (or one without it) draws what it has: no span, no legend."""
    samples = np.sin(np.linspace(0, 200, 16000)).astype(np.float32)
    old = SimpleNamespace(metrics={})
    assert common.speech_spans(old) == []
    windows = pd.DataFrame(columns=["label", "start", "end", "score"])
    spec = common.waveform_chart(samples, 16000, windows, common.speech_spans(old)).to_dict()
    assert "layer" not in spec and "color" not in spec["encoding"]
    # the spans as the result gives them, or as its JSON does
    assert common.speech_spans(SimpleNamespace(speech_segments=[(0.2, 0.7), [0.9, 1.0]])) == [(0.2, 0.7), (0.9, 1.0)]
    assert common.speech_spans(SimpleNamespace(speech_segments=[{"start": 0.2, "end": 0.7}])) == [(0.2, 0.7)]


# -- DNSMOS with what it means ---------------------------------------------------------------------


def test_mos_scores_are_shown_with_what_they_mean_in_both_languages(app_env, audio_clips):
    at = _app()
    result = _classify(at, "speech.wav", audio_clips["speech"].read_bytes())
    scores = {m: result.metrics[m] for m in MOS}
    assert all(1.0 <= v <= 5.0 for v in scores.values()), scores
    expected = {
        "en": ({"SIG": "the voice itself", "BAK": "the background", "OVRL": "overall"}, "Speech quality (DNSMOS P.835, 1–5)",
               "are medzero's", {"good", "fair", "poor"}),
        "zh": ({"SIG": "语音本身", "BAK": "背景", "OVRL": "整体"}, "语音质量（DNSMOS P.835，1–5 分）",
               "是 medzero 为便于快速阅读而设的", {"好", "一般", "差"}),
    }
    for lang, (meanings, heading, note, bands) in expected.items():
        if lang == "zh":
            _to_zh(at)
        assert heading in [s.value for s in at.subheader]
        table = next(t.value for t in at.table if t.value.columns[0] in ("Score", "评分"))
        assert list(table.iloc[:, 0]) == ["SIG", "BAK", "OVRL"]
        for (short, meaning), metric in zip(meanings.items(), MOS):
            row = table[table.iloc[:, 0] == short].iloc[0]
            assert float(row.iloc[1]) == pytest.approx(scores[metric], abs=0.005)
            assert row.iloc[2] in bands and row.iloc[3] and row.iloc[4].startswith(meaning), row.to_dict()
            low = 3.5 if row.iloc[2] in ("good", "好") else 2.5 if row.iloc[2] in ("fair", "一般") else -math.inf
            assert scores[metric] >= low
        assert note in _text(at)


def test_mos_bands_and_scale_words(monkeypatch):
    task_metrics = {"mos_sig": 4.6, "mos_bak": 3.5, "mos_ovrl": 2.49}
    result = medzero.Result("a.wav", "audio", "voice_quality", "", {}, "accept", metrics=task_metrics)
    frame = common.mos_frame(result)
    assert frame.to_dict("list") == {
        "Score": ["SIG", "BAK", "OVRL"],
        "Value (1–5)": ["4.60", "3.50", "2.49"],
        "Band": ["good", "good", "poor"],
        "P.835 scale": ["not distorted", "slightly noticeable", "poor"],
        "What it rates": [m[2]["en"] for m in common.MOS_SCORES],
    }
    monkeypatch.setattr(common, "lang", lambda: "zh")
    frame = common.mos_frame(medzero.Result("a.wav", "audio", "voice_quality", "", {}, "accept", metrics={"mos_bak": 2.5}))
    assert frame.to_dict("records") == [{"评分": "BAK", "数值（1–5）": "2.50", "等级": "一般", "P.835 量表": "可察觉但不干扰",
                                         "评价内容": "背景：语音背后的噪声干扰有多小"}]
    # a result without the quality model's scores shows no table
    assert common.mos_frame(medzero.Result("a.wav", "audio", "voice_quality", "", {}, "accept", metrics={"snr_db": 20.0})) is None


# -- the timeline's legend lists every label ---------------------------------------------------------


def test_the_timeline_legend_of_a_long_recording_lists_every_label(app_env, audio_clips, tmp_path):
    long = audio_samples.long_speech(tmp_path, 60, speech=audio_clips["speech"])
    at = _app()
    result = _classify(at, "long.wav", long.read_bytes())
    assert result.timeline and len(result.timeline["start"]) > 1
    task = medzero.load_task("voice_quality")
    for lang in ("en", "zh"):
        if lang == "zh":
            _to_zh(at)
        spec, data = _chart(at, "label", channel="color")
        names = [label.display(lang) for label in task.labels]
        color = spec["encoding"]["color"]
        assert color["scale"]["domain"] == names  # every label, in the task's order
        assert set(_data(spec, spec, data)["label"]) == set(names)
        legend = color["legend"]
        assert legend["symbolLimit"] == 0 and legend["labelLimit"] == 0  # no entry dropped, no name cut
        assert legend["orient"] == "bottom"
        # the chart grows to hold its legend: Streamlit's default ("fit") squeezes it into 220 px
        assert spec["autosize"]["type"] == "fit-x"


# -- the spectrogram's axes ----------------------------------------------------------------------------


def test_the_mel_spectrogram_has_time_frequency_and_db_axes(app_env, audio_clips):
    at = _app()
    _classify(at, "speech.wav", audio_clips["speech"].read_bytes())
    titles = {"en": ("time (s)", "frequency (Hz, mel scale)", "dB re max"), "zh": ("时间（秒）", "频率（Hz，梅尔刻度）", "dB（相对最大值）")}
    for lang, (x_title, y_title, colour_title) in titles.items():
        if lang == "zh":
            _to_zh(at)
        spec, data = _chart(at, "db", channel="color")
        heat = next(v for v in _views(spec) if v.get("encoding", {}).get("color", {}).get("field") == "db")
        enc = heat["encoding"]
        assert (enc["x"]["title"], enc["y"]["title"], enc["color"]["title"]) == (x_title, y_title, colour_title)
        assert enc["x"]["scale"]["domain"][1] == pytest.approx(7.34, abs=0.05)  # the clip's length, in seconds
        assert enc["color"]["scale"]["domain"] == [-80, 0]
        cells = _data(heat, spec, data)
        assert cells["db"].between(-80.01, 0.01).all() and cells["db"].max() == pytest.approx(0.0, abs=1e-3)
        # frequency ticks at the mel positions of round frequencies in Hz, labelled in Hz
        axis = enc["y"]["axis"]
        assert "'1k'" in axis["labelExpr"] and len(axis["values"]) >= 4
        assert cells["hz"].max() < 8000  # the display copy is at 16 kHz
