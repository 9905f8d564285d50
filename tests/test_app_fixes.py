"""What the app shows agrees with itself and with the CLI (``streamlit.testing.v1.AppTest``, tiny
checkpoints, like tests/test_app.py):

- an input the task does not judge shows its scores as not judged (no positive, no threshold);
- a score and its threshold are printed apart when they are close;
- without the default audio model the voice page gives the CLI's signal-only verdict;
- the Chinese page shows medzero's errors in Chinese;
- the X-ray page offers Hounsfield presets for a CT only;
- a case search over both modalities ranks within each modality and says so.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("streamlit")
from pydicom.data import get_testdata_file  # noqa: E402
from streamlit.testing.v1 import AppTest  # noqa: E402

from fixtures_image import write_dicom  # noqa: E402
from medzero.cli import main  # noqa: E402
from test_app import _app  # noqa: E402 - AppTest of the app entry; app_env comes from conftest


def _text(at: AppTest) -> str:
    parts = [e.value for kind in ("markdown", "title", "subheader", "caption", "error", "warning", "info", "success") for e in getattr(at, kind)]
    parts += [table.value.to_string() for table in at.table]
    return "\n".join(str(p) for p in parts)


def _classify(at: AppTest) -> None:
    next(b for b in at.button if b.label in ("Classify", "分类")).click()
    at.run()
    assert not at.exception, at.exception


def _upload_ct(at: AppTest) -> None:
    with open(get_testdata_file("CT_small.dcm"), "rb") as f:
        at.file_uploader(key="xray_file").set_value(("ct.dcm", f.read(), "application/dicom"))
    at.run()


# -- 1. not_applicable: scores not judged -----------------------------------------------------------


@pytest.mark.parametrize("lang,positive,not_judged,yes", [("en", "Positive", "not judged", "yes"), ("zh", "阳性", "未判读", "是")])
def test_a_ct_slice_on_the_xray_page_lists_no_positive_finding(app_env, lang, positive, not_judged, yes):
    at = _app("xray.py", lang=lang)
    _upload_ct(at)
    _classify(at)
    result = at.session_state["xray_result"][1]
    assert result.verdict == "not_applicable" and result.scores  # the raw scores are there
    findings = at.table[-1].value
    assert set(findings[positive]) == {not_judged}  # no finding called positive or negative
    assert yes not in set(findings[positive])
    assert set(findings[findings.columns[2]]) == {"–"}  # no threshold was applied
    text = _text(at)
    assert ("does not judge this input" if lang == "en" else "此任务不判读这个输入") in text
    assert not at.error


def test_noise_on_the_voice_page_lists_no_positive_label(app_env, audio_clips):
    at = _app()
    at.file_uploader(key="voice_file").set_value(("noise.wav", audio_clips["noise"].read_bytes(), "audio/wav"))
    at.run()
    _classify(at)
    result = at.session_state["voice_result"][1]
    assert result.verdict == "not_applicable"
    table = next(t.value for t in at.table if "Positive" in t.value.columns)
    assert set(table["Positive"]) == {"not judged"}


# -- 2. a score and its threshold printed apart ------------------------------------------------------


def test_a_score_just_under_a_site_threshold_is_printed_apart_from_it(app_env, audio_clips):
    at = _app()
    at.file_uploader(key="voice_file").set_value(("speech.wav", audio_clips["speech"].read_bytes(), "audio/wav"))
    at.run()
    _classify(at)
    plain = at.session_state["voice_result"][1]

    def misleading(score: float, threshold: float) -> bool:  # "0.495" against "0.49" reads as over it
        return float(f"{score:.3f}") >= float(f"{threshold:.2f}")

    # a site threshold just over a score, where three decimals against two would read the other way
    label, score = next((lid, s) for lid, s in plain.scores.items() if misleading(s, s + 1e-5))
    threshold = score + 1e-5
    overlay = yaml.safe_dump({"overlay_for": "voice_quality", "method": "youden",
                              "labels": {label: {"threshold": threshold, "source": "test"}}}).encode()
    at.file_uploader(key="voice_calibration").set_value(("site.yaml", overlay, "application/x-yaml"))
    at.run()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _classify(at)
    result = at.session_state["voice_result"][1]
    assert result.scores[label] < result.thresholds[label] == threshold
    table = next(t.value for t in at.table if "Positive" in t.value.columns)
    row = table[table["Label"] == result.label_names[label]["en"]].iloc[0]
    assert row["Positive"] == "no" and float(row["Score"]) < float(row["Threshold"]), row.to_dict()


def test_a_measurement_just_under_its_limit_is_printed_apart_from_it():
    import medzero
    from medzero.app import common

    task = medzero.load_task("voice_quality")
    result = medzero.Result("a.wav", "audio", task.name, "", {}, "re-record", metrics={"snr_db": task.metrics["snr_db"].min - 0.12, "clipping_ratio": 0.0104})
    frame = common.metric_frame(result, task)
    rows = {r["Measurement"]: r for r in frame.to_dict("records")}
    snr = next(r for name, r in rows.items() if "noise" in name.lower())
    assert task.metrics["snr_db"].min == 15.7  # the shipped limit: 15.58 and 15.7 both round to 16 dB
    assert (snr["Value"], snr["Limit"]) == ("15.6 dB", "≥ 15.7 dB")  # not "16 dB" against "≥ 16 dB"
    clipping = next(r for name, r in rows.items() if "clip" in name.lower())
    assert (clipping["Value"], clipping["Limit"]) == ("1.04%", "≤ 1.00%")


# -- 4. the default audio model missing: the CLI's signal-only verdict -------------------------------


def _cli_json(capsys, path) -> dict:
    assert main(["classify", str(path), "--format", "json", "--device", "cpu"]) == 0
    (record,) = json.loads(capsys.readouterr().out)
    return record


@pytest.mark.parametrize("clip", ["clipped", "speech"])
def test_voice_page_without_the_default_model_gives_the_cli_verdict(default_models_missing, audio_clips, capsys, clip):
    cli = _cli_json(capsys, audio_clips[clip])
    assert cli["signal_only"] is True
    at = _app()
    assert "waveform measurements alone" in _text(at)  # what the banner promises ...
    at.file_uploader(key="voice_file").set_value((f"{clip}.wav", audio_clips[clip].read_bytes(), "audio/wav"))
    at.run()
    _classify(at)
    assert not [e.value for e in at.error if "Could not classify" in e.value]  # ... is what Classify does
    result = at.session_state["voice_result"][1]
    assert result.signal_only and result.scores == {}
    assert result.verdict == cli["verdict"]
    assert [r.text("en") for r in result.reasons] == [r["text"]["en"] for r in cli["reasons"]]
    text = _text(at)
    assert f"[{result.verdict_name['en']}]" in text and "No label scores" in text


def test_chinese_voice_page_without_the_model_says_so_in_chinese(default_models_missing, audio_clips):
    at = _app(lang="zh")
    at.file_uploader(key="voice_file").set_value(("speech.wav", audio_clips["speech"].read_bytes(), "audio/wav"))
    at.run()
    _classify(at)
    result = at.session_state["voice_result"][1]
    assert result.signal_only
    text = _text(at)
    assert f"[{result.verdict_name['zh']}]" in text
    assert "音频模型不可用" in text and "离线不可用" in text
    assert "not available offline" not in text and "not in the Hugging Face cache" not in text


def test_typed_labels_without_the_model_are_a_chinese_error(default_models_missing, audio_clips):
    at = _app(lang="zh")
    at.selectbox(key="voice_task").set_value("__custom__")
    at.file_uploader(key="voice_file").set_value(("speech.wav", audio_clips["speech"].read_bytes(), "audio/wav"))
    at.run()
    _classify(at)
    assert len(at.error) >= 1
    message = at.error[-1].value
    assert "无法分类 speech.wav" in message and "音频模型" in message and "离线不可用" in message
    assert "not available offline" not in message and "--audio-model" not in message


def test_a_named_model_that_is_missing_turns_classify_off(monkeypatch, default_models_missing, audio_clips):
    monkeypatch.setenv("MEDZERO_AUDIO_MODEL", str(default_models_missing / "no-such-model"))
    at = _app()
    text = _text(at)
    assert "Classify is off until then" in text and "waveform measurements alone" not in text
    at.file_uploader(key="voice_file").set_value(("speech.wav", audio_clips["speech"].read_bytes(), "audio/wav"))
    at.run()
    assert next(b for b in at.button if b.label == "Classify").disabled


# -- 4. Chinese error bodies ----------------------------------------------------------------------


def test_chinese_pages_show_bad_files_in_chinese(app_env, image_files):
    at = _app(lang="zh")
    at.file_uploader(key="voice_file").set_value(("notes.wav", b"Patient notes, not audio at all.\n" * 40, "audio/wav"))
    at.run()
    _classify(at)
    (error,) = at.error
    assert "notes.wav" in error.value and "既不是音频也不是图像" in error.value
    assert "neither audio nor an image" not in error.value

    at = _app("xray.py", lang="zh")
    at.file_uploader(key="xray_file").set_value(("notes.png", image_files["text.txt"].read_bytes(), "image/png"))
    at.run()
    assert at.error and "无法读取 notes.png" in at.error[0].value and "不是图像（按内容看不是 DICOM" in at.error[0].value
    assert "is not an image" not in at.error[0].value


# -- 5. display windows that fit the modality -------------------------------------------------------


@pytest.fixture(scope="module")
def cr_film(tmp_path_factory) -> Path:
    y, x = np.mgrid[0:96, 0:96]
    pixels = ((x * 29 + y * 13) % 4096).astype(np.uint16)
    path = tmp_path_factory.mktemp("cr") / "cr.dcm"
    return write_dicom(path, pixels, bits_stored=12, modality="CR", BodyPartExamined="CHEST", ViewPosition="PA")


def test_a_cr_film_gets_its_own_window_full_range_and_contrast_not_ct_presets(app_env, cr_film):
    at = _app("xray.py")
    at.file_uploader(key="xray_file").set_value(("cr.dcm", cr_film.read_bytes(), "application/dicom"))
    at.run()
    assert not at.exception and not at.error
    radio = at.radio(key="xray_window")
    assert radio.options == ["the file's own window", "full range (min to max)", "contrast (1st to 99th percentile)"]
    assert not any("HU" in o for o in radio.options) and not any(o.startswith("lung") for o in radio.options)
    for window in ("full", "contrast"):
        at.radio(key="xray_window").set_value(window)
        at.run()
        assert not at.exception and not at.error


def test_a_ct_slice_keeps_the_hounsfield_presets(app_env):
    at = _app("xray.py")
    _upload_ct(at)
    options = at.radio(key="xray_window").options
    assert [o.split(" ")[0] for o in options[1:]] == ["lung", "mediastinum", "bone"]
    assert "lung (C -600 / W 1500 HU)" in options


def test_a_png_gets_full_range_and_contrast_in_chinese_too(app_env, image_files):
    at = _app("xray.py", lang="zh")
    at.file_uploader(key="xray_file").set_value(("gray8.png", image_files["gray8.png"].read_bytes(), "image/png"))
    at.run()
    options = at.radio(key="xray_window").options
    assert options[0] == "按存储原样" and options[1].startswith("全范围") and options[2].startswith("对比度")
    assert not any("HU" in o for o in options)


# -- 6. case search: ranked within each modality ------------------------------------------------------


def test_search_over_both_modalities_groups_and_ranks_within_each(app_env, audio_clips, dicom_files):
    at = _app("search.py")
    at.text_input(key="search_new_name").set_value("mixed")
    at.run()
    at.file_uploader(key="search_uploads").set_value(
        [("speech.wav", audio_clips["speech"].read_bytes(), "audio/wav"),
         ("noisy.wav", audio_clips["noisy_10db"].read_bytes(), "audio/wav"),
         ("phi.dcm", dicom_files["phi"].read_bytes(), "application/dicom"),
         ("mono2.dcm", dicom_files["mono2"].read_bytes(), "application/dicom")]
    )
    at.run()
    next(b for b in at.button if b.label == "Add uploaded files").click()
    at.run()
    assert not at.exception and not at.error
    at.text_input(key="search_text").set_value("a person speaking")
    at.run()
    next(b for b in at.button if b.label == "Search").click()
    at.run()
    assert not at.exception and not at.error
    hits = at.session_state["search_hits"][1]
    assert {h.modality for h in hits} == {"audio", "image"}
    text = _text(at)
    assert "ranked within each modality" in text and "not comparable" in text
    assert "**Audio cases** (2, ranked by the audio model's score)" in text
    assert "**Image cases** (2, ranked by the image model's score)" in text
    cards = [m.value for m in at.markdown if " · score " in m.value]
    for modality, noun in (("audio", "audio"), ("image", "image")):
        mine = [c for c in cards if c.endswith(f"· {noun}")]
        assert [c.split("\n")[-1].split(" · ")[0] for c in mine] == ["#1", "#2"]
        shown = [float(c.split(" · score ")[1].split(" ")[0]) for c in mine]
        assert shown == sorted(shown, reverse=True)  # best first within the modality
