"""WeChat/QQ SILK voice notes and raw headerless PCM, from the sniffer to every entry point.

The notes are real SILK v3 streams: espeak-ng speech encoded by pysilk's own encoder (the SDK
WeChat uses), with Tencent's 0x02 byte and without, saved under the names they arrive with
(``.amr``, ``.slk``, ``.aud``). The PCM files are the same speech written raw by sox in each sample
format. Each is classified through the CLI, the Python API, a running REST server and the app.
"""
from __future__ import annotations

import dataclasses
import io
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import audio_samples
import medzero
from medzero.audio.io import AudioLimits, PcmFormat, load_audio
from medzero.cli import main
from medzero.core.errors import BadInputError
from medzero.core.sniff import sniff, sniff_source

pysilk = pytest.importorskip("pysilk")

SILK_RATE = 24_000


def _raw(wav: Path, out: Path, rate: int, *encoding: str, channels: int = 1) -> Path:
    """``wav`` as raw PCM by sox (``encoding``: sox's -e/-b/-L/-B arguments)."""
    audio_samples.sox(wav, "-r", str(rate), "-c", str(channels), *encoding, "-t", "raw", out)
    return out


def _silk(pcm24: bytes, path: Path, *, tencent: bool, dtx: bool = False) -> Path:
    out = io.BytesIO()
    pysilk.encode(io.BytesIO(pcm24), out, SILK_RATE, 24_000, tencent=tencent, use_dtx=dtx)
    path.write_bytes(out.getvalue())
    return path


@pytest.fixture(scope="module")
def voice(tmp_path_factory) -> dict[str, Path]:
    """SILK notes and raw PCM files of the same espeak-ng speech, with 1 s of silence on each side."""
    out = tmp_path_factory.mktemp("silk_pcm")
    speech = audio_samples.speech_wav(out)
    padded = out / "padded.wav"
    audio_samples.sox(speech, padded, "pad", "1", "1")
    files = {"wav": padded}
    pcm24 = _raw(padded, out / "speech24k.raw", SILK_RATE, "-e", "signed", "-b", "16", "-L").read_bytes()
    files["wechat.amr"] = _silk(pcm24, out / "wechat.amr", tencent=True)
    files["qq.slk"] = _silk(pcm24, out / "qq.slk", tencent=False)
    files["note.aud"] = _silk(pcm24, out / "note.aud", tencent=True)
    files["dtx.slk"] = _silk(pcm24, out / "dtx.slk", tencent=True, dtx=True)
    files["voice.pcm"] = _raw(padded, out / "voice.pcm", 16_000, "-e", "signed", "-b", "16", "-L")
    files["voice_8k.pcm"] = _raw(padded, out / "voice_8k.pcm", 8_000, "-e", "signed", "-b", "16", "-L")
    return files


def _lagged_correlation(a: np.ndarray, b: np.ndarray, max_lag: int = 1000) -> float:
    """The best correlation of ``b`` delayed by 0 to ``max_lag`` samples against ``a`` (codecs delay)."""
    n = min(len(a), len(b)) - max_lag
    return max(float(np.corrcoef(a[:n], b[lag : lag + n])[0, 1]) for lag in range(0, max_lag, 5))


# -- sniffing ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["wechat.amr", "qq.slk", "note.aud"])
def test_silk_is_sniffed_by_content_whatever_its_name(voice, name):
    assert sniff_source(voice[name]) == ("audio", "silk")


def test_a_real_amr_is_still_amr(audio_clips):
    assert sniff_source(audio_clips["amr"]) == ("audio", "amr")
    assert load_audio(audio_clips["amr"]).format == "amr"


def test_pcm_is_declared_by_its_name_and_content_still_wins(voice, tmp_path, audio_clips):
    assert sniff_source(voice["voice.pcm"]) == ("audio", "pcm")
    assert sniff(voice["voice.pcm"].read_bytes()) == (None, None)  # bytes alone declare nothing
    wav_named = tmp_path / "wav.pcm"
    wav_named.write_bytes(audio_clips["wav"].read_bytes())
    assert sniff_source(wav_named) == ("audio", "wav")
    assert load_audio(wav_named).format == "wav"
    named = io.BytesIO(voice["voice.pcm"].read_bytes())
    named.name = "upload.pcm"
    assert sniff_source(named) == ("audio", "pcm")


def test_quiet_pcm_that_starts_like_an_mp3_frame_is_still_pcm(tmp_path, audio_clips):
    """s16le -1, 0 is ``ff ff 00 00``: one MPEG frame header; a real MP3 has the next frames too."""
    quiet = tmp_path / "quiet.pcm"
    quiet.write_bytes(np.array([-1, 0, 0, 1] * 4000, "<i2").tobytes())
    assert sniff_source(quiet) == ("audio", "pcm")
    mp3 = tmp_path / "bare.mp3"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(audio_clips["speech"]), "-c:a", "libmp3lame",
                    "-b:a", "320k", "-id3v2_version", "0", "-write_xing", "0", str(mp3)], check=True)
    bare = tmp_path / "bare.pcm"
    bare.write_bytes(mp3.read_bytes())
    assert not bare.read_bytes().startswith(b"ID3")
    assert sniff_source(bare) == ("audio", "mp3")
    assert load_audio(bare).format == "mp3"


# -- SILK decoding -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["wechat.amr", "qq.slk", "note.aud", "dtx.slk"])
def test_silk_decodes_to_the_speech_that_was_encoded(voice, name):
    clip = load_audio(voice[name])
    reference, rate = sf.read(voice["wav"], dtype="float32")
    assert (clip.format, clip.sample_rate, clip.channels) == ("silk", SILK_RATE, 1)
    assert clip.duration == pytest.approx(len(reference) / rate, abs=0.05)
    original = load_audio(voice["wav"], sample_rate=SILK_RATE).samples
    assert _lagged_correlation(original, clip.samples) > 0.8


def test_silk_end_mark_ends_the_stream(voice):
    data = voice["qq.slk"].read_bytes()
    clip = load_audio(data + b"\xff\xff" + b"trailing bytes", name="marked.slk")
    assert clip.duration == pytest.approx(load_audio(data).duration)


@pytest.mark.parametrize("cut", ["half", "header"])
def test_truncated_silk_is_one_line_naming_the_file(voice, cut):
    data = voice["wechat.amr"].read_bytes()
    data = data[: len(data) // 2 + 1] if cut == "half" else data[:13]
    with pytest.raises(BadInputError) as err:
        load_audio(data, name="wechat_note.amr")
    message = str(err.value)
    assert "\n" not in message and "wechat_note.amr" in message and "truncated SILK" in message


def test_damaged_silk_payload_is_one_line(voice):
    data = bytearray(voice["wechat.amr"].read_bytes())
    data[12] = 0xFF  # the first packet's length high byte: 0xFF?? is a length pysilk cannot hold
    data[11] = 0x7F
    with pytest.raises(BadInputError, match=r"^corrupt SILK file: bad\.amr \(packet 1 declares"):
        load_audio(bytes(data), name="bad.amr")


def test_silk_is_bounded_by_the_sample_limit_before_decoding(voice):
    with pytest.raises(BadInputError, match=r"audio too long: long\.slk .*in its SILK packets"):
        load_audio(voice["qq.slk"], limits=AudioLimits(max_samples=SILK_RATE), name="long.slk")


# -- raw PCM -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pcm, sox_args, tolerance",
    [
        (PcmFormat(16_000, "s16le", 1), ("-e", "signed", "-b", "16", "-L"), 1e-6),
        (PcmFormat(16_000, "s16be", 1), ("-e", "signed", "-b", "16", "-B"), 1e-6),
        (PcmFormat(16_000, "s24le", 1), ("-e", "signed", "-b", "24", "-L"), 1e-6),
        (PcmFormat(16_000, "s32le", 2), ("-e", "signed", "-b", "32", "-L"), 1e-6),
        (PcmFormat(16_000, "f32le", 1), ("-e", "floating-point", "-b", "32", "-L"), 1e-6),
        (PcmFormat(8_000, "u8", 1), ("-e", "unsigned", "-b", "8"), 1e-6),
    ],
    ids=lambda v: v.sample_format + f"-{v.channels}ch" if isinstance(v, PcmFormat) else None,
)
def test_pcm_decodes_as_declared(voice, tmp_path, pcm, sox_args, tolerance):
    raw = _raw(voice["wav"], tmp_path / "x.pcm", pcm.rate, *sox_args, channels=pcm.channels)
    reference = tmp_path / "ref.wav"
    audio_samples.sox("-t", "raw", "-r", str(pcm.rate), "-c", str(pcm.channels), *sox_args, raw, reference)
    expected = load_audio(reference)
    clip = load_audio(raw, pcm=pcm)
    assert (clip.format, clip.sample_rate, clip.channels) == ("pcm", pcm.rate, pcm.channels)
    np.testing.assert_allclose(clip.samples, expected.samples, atol=tolerance)


def test_pcm_layout_comes_from_the_limits_and_the_environment(voice):
    clip = load_audio(voice["voice_8k.pcm"], limits=AudioLimits(pcm=PcmFormat(8_000)))
    assert clip.sample_rate == 8_000
    env = {"MEDZERO_PCM_RATE": "8000", "MEDZERO_PCM_FORMAT": "s16le", "MEDZERO_PCM_CHANNELS": "1"}
    assert AudioLimits.from_env(env).pcm == PcmFormat(8_000)
    with pytest.raises(BadInputError, match="MEDZERO_PCM_FORMAT"):
        AudioLimits.from_env({"MEDZERO_PCM_FORMAT": "mp3"})


@pytest.mark.parametrize(
    "content, declared, expected",
    [
        (b"Patient notes: dry cough for three days.\n" * 50, PcmFormat(), r"not raw PCM: notes\.pcm \(it holds text"),
        (b"\x01\x02\x03", PcmFormat(), r"not raw PCM as declared: notes\.pcm \(3 bytes is not a whole number of 2-byte"),
        (b"PK\x03\x04" + bytes(400), PcmFormat(), r"not raw PCM: notes\.pcm \(it is a ZIP archive"),
        (None, PcmFormat(16_000, "f32le"), r"not raw PCM as declared: notes\.pcm \(read as declared 16000 Hz f32le mono"),
    ],
    ids=["text", "partial-frame", "zip", "s16-read-as-f32"],
)
def test_implausible_pcm_is_refused_in_one_line(voice, content, declared, expected):
    data = voice["voice.pcm"].read_bytes() if content is None else content
    with pytest.raises(BadInputError, match=expected) as err:
        load_audio(data, name="notes.pcm", pcm=declared)
    assert "\n" not in str(err.value)


def test_pcm_is_bounded_by_the_sample_limit_before_reading(voice):
    with pytest.raises(BadInputError, match=r"audio too long: .*voice\.pcm"):
        load_audio(voice["voice.pcm"], limits=AudioLimits(max_samples=16_000))


# -- entry points ------------------------------------------------------------------------------------


@pytest.fixture
def tiny_model(tiny_clap_dir, monkeypatch):
    monkeypatch.setenv("MEDZERO_AUDIO_MODEL", str(tiny_clap_dir))
    return tiny_clap_dir


def test_cli_classifies_silk_notes_and_pcm(voice, tmp_path, tiny_model, capsys):
    notes = tmp_path / "notes.txt.pcm"
    notes.write_text("not audio\n" * 20)
    files = [voice["wechat.amr"], voice["qq.slk"], voice["note.aud"], voice["voice_8k.pcm"], notes]
    code = main(["classify", *map(str, files), "--pcm-rate", "8000", "--format", "json", "--device", "cpu"])
    captured = capsys.readouterr()
    rows = {Path(r["path"]).name: r for r in json.loads(captured.out)}
    assert code == 1  # the text file; the others still classified
    for name in ("wechat.amr", "qq.slk", "note.aud"):
        assert rows[name]["verdict"] and rows[name]["metadata"]["format"] == "silk"
        assert rows[name]["metadata"]["sample_rate"] == SILK_RATE
    assert rows["voice_8k.pcm"]["verdict"] and rows["voice_8k.pcm"]["metadata"]["sample_rate"] == 8_000
    assert rows["notes.txt.pcm"]["error"].startswith("not raw PCM: ")
    assert captured.err.count("\n") == 1 and "notes.txt.pcm" in captured.err

    code = main(["classify", str(voice["voice.pcm"]), str(voice["wechat.amr"]), "--format", "json", "--device", "cpu"])
    assert code == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["metadata"]["sample_rate"] for r in rows] == [16_000, SILK_RATE]  # the default layout


def test_cli_refuses_an_unknown_pcm_format(voice, capsys):
    assert main(["classify", str(voice["voice.pcm"]), "--pcm-format", "mp3"]) == 2
    assert "--pcm-format" in capsys.readouterr().err


def test_api_classifies_silk_and_pcm_with_a_declared_layout(voice, tiny_model):
    limits = {"audio": dataclasses.replace(AudioLimits.from_env(), pcm=medzero.PcmFormat(8_000))}
    clf = medzero.Classifier("voice_quality", limits=limits)
    silk, pcm = clf.classify_batch([voice["note.aud"], voice["voice_8k.pcm"]])
    assert silk.ok and silk.verdict and silk.metadata["format"] == "silk"
    assert pcm.ok and pcm.verdict and pcm.metadata["sample_rate"] == 8_000
    assert pcm.metadata["duration_s"] == pytest.approx(load_audio(voice["wav"]).duration, abs=0.01)


@pytest.fixture(scope="module")
def server(tiny_clap_dir, tiny_hf_clip_dir, tmp_path_factory):
    from test_service import start_server, stop_server

    env = dict(__import__("os").environ)
    env.update(MEDZERO_AUDIO_MODEL=str(tiny_clap_dir), MEDZERO_IMAGE_MODEL=f"local-dir:{tiny_hf_clip_dir}",
               MEDZERO_CACHE_DIR=str(tmp_path_factory.mktemp("server-cache")), HF_HUB_OFFLINE="1",
               PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    env.pop("MEDZERO_API_KEYS", None)
    srv = start_server(tmp_path_factory.mktemp("silk-service"), ["--insecure-no-auth", "--preload", "audio"], env)
    yield srv
    stop_server(srv)


def test_rest_classifies_silk_and_declared_pcm(server, voice):
    import httpx

    with httpx.Client(base_url=server.base, timeout=120) as client:
        silk = client.post("/v1/classify", content=voice["wechat.amr"].read_bytes())
        assert silk.status_code == 200, silk.text
        assert silk.json()["result"]["verdict"] and silk.json()["result"]["metadata"]["format"] == "silk"

        pcm = client.post("/v1/classify", params={"pcm_rate": 8000}, content=voice["voice_8k.pcm"].read_bytes())
        assert pcm.status_code == 200, pcm.text
        result = pcm.json()["result"]
        assert result["verdict"] and result["metadata"]["sample_rate"] == 8_000 and result["path"] == "upload.pcm"

        form = client.post("/v1/classify", data={"pcm_rate": "8000", "pcm_format": "s16le"},
                           files={"file": ("x.pcm", voice["voice_8k.pcm"].read_bytes())})
        assert form.status_code == 200 and form.json()["result"]["metadata"]["sample_rate"] == 8_000

        undeclared = client.post("/v1/classify", content=voice["voice_8k.pcm"].read_bytes())
        assert undeclared.status_code in (400, 415)  # no header and no declaration: not audio

        text = client.post("/v1/classify", params={"pcm_rate": 8000}, content=b"Patient notes.\n" * 40)
        assert text.status_code == 400 and text.json()["detail"].startswith("not raw PCM: upload.pcm")

        bad = client.post("/v1/classify", params={"pcm_format": "mp3"}, content=voice["voice_8k.pcm"].read_bytes())
        assert bad.status_code == 422


def test_app_classifies_a_silk_note_and_a_pcm_with_its_options(app_env, voice):
    pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest

    import medzero.app

    at = AppTest.from_file(str(medzero.app.ENTRY), default_timeout=120)
    at.run()
    at.file_uploader(key="voice_file").set_value(("wechat.amr", voice["wechat.amr"].read_bytes(), "audio/amr"))
    at.run()
    assert not [s for s in at.selectbox if s.key == "voice_pcm_rate"]  # PCM options only for .pcm
    next(b for b in at.button if b.label == "Classify").click()
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    result = at.session_state["voice_result"][1]
    assert result.ok and result.verdict and result.metadata["format"] == "silk"

    at.file_uploader(key="voice_file").set_value(("voice_8k.pcm", voice["voice_8k.pcm"].read_bytes(), "application/octet-stream"))
    at.run()
    at.selectbox(key="voice_pcm_rate").set_value(8000)
    at.run()
    next(b for b in at.button if b.label == "Classify").click()
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    result = at.session_state["voice_result"][1]
    assert result.ok and result.verdict and result.metadata["sample_rate"] == 8_000
