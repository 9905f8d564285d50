"""Voice metrics with the real speech models from their wheels (Silero VAD, DNSMOS) on real
espeak-ng speech mixed by sox: SNR against the mixing SNR and WADA-SNR, hum against babble,
dropouts from lost packets, tones no longer voice, no torch, and the fallback without silero."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import audio_samples
from conftest import default_models_missing_env
from medzero.audio import mos, vad
from medzero.audio.quality import _WADA_DB, _WADA_G, compute_metrics, wada_snr

needs_vad = pytest.mark.skipif(not vad.available(), reason="silero-vad is not installed (pip install 'medzero[voice]')")
REPO = Path(__file__).resolve().parents[1]
BABBLE = [
    ("en-us+m3", "Please take two tablets every morning with water and call us tomorrow."),
    ("en+f2", "The weather has been cold and the clinic opens at nine on Monday."),
    ("en-gb+m5", "I have had a headache since last week and it gets worse at night."),
]


def _mix(speech: Path, noise: Path, out: Path, snr_db: float) -> Path:
    """``speech`` plus ``noise`` (looped to its length) with noise RMS ``snr_db`` below the speech's."""
    looped = out / f"{noise.stem}_looped.wav"
    audio_samples.sox(noise, looped, "repeat", "5", "trim", "0", str(audio_samples.duration_s(speech)))
    gain = 10 ** ((audio_samples.rms_db(speech) - snr_db - audio_samples.rms_db(looped)) / 20)
    path = out / f"{speech.stem}_{noise.stem}_{snr_db:g}dB.wav"
    audio_samples.sox("-m", "-v", "0.5", speech, "-v", f"{0.5 * gain:.6f}", looped, "-b", "16", path)
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("voice_metrics")
    speech = audio_samples.speech_wav(out)
    clips = {"speech": speech}
    for snr in (0, 10, 20):
        clips[f"pink_{snr}"] = audio_samples.mix_noise(speech, out, snr)
    hum = out / "hum.wav"  # 50 Hz mains hum and its 2nd and 3rd harmonics
    audio_samples.sox("-n", "-r", "22050", "-c", "1", "-b", "16", hum, "synth", "3", "sine", "50", "sine", "100", "sine",
                      "150", "remix", "-", "vol", "0.3")
    talkers = []
    for i, (voice, text) in enumerate(BABBLE):
        talker = out / f"talker{i}.wav"
        audio_samples._run("espeak-ng", "-v", voice, "-s", "190", "-w", talker, text)
        talkers.append(talker)
    babble = out / "babble.wav"
    audio_samples.sox("-m", *talkers, babble)
    clips["hum_0"] = _mix(speech, hum, out, 0)
    clips["babble_0"] = _mix(speech, babble, out, 0)
    tone = out / "tone.wav"
    audio_samples.sox("-n", "-r", "22050", "-b", "16", tone, "synth", "4", "sine", "440", "vol", "0.3")
    clips["tone"] = tone
    return clips


def _read(path: Path) -> tuple[np.ndarray, int]:
    samples, rate = sf.read(path, dtype="float32")
    return samples, rate


def _metrics(samples: np.ndarray, rate: int) -> dict:
    return compute_metrics(samples, rate, speech_segments=vad.speech_segments(samples, rate))


@needs_vad
def test_snr_follows_the_mixing_snr_closer_than_wada(clips):
    errors, wada_errors = [], []
    for snr in (0, 10, 20):
        samples, rate = _read(clips[f"pink_{snr}"])
        estimate = _metrics(samples, rate)["snr_db"]
        assert estimate == pytest.approx(snr, abs=3), snr
        errors.append(abs(estimate - snr))
        wada_errors.append(abs(wada_snr(samples) - snr))
    assert np.mean(errors) < np.mean(wada_errors), (errors, wada_errors)


@needs_vad
def test_hum_below_the_voice_does_not_lower_the_snr_like_babble(clips):
    hum = _metrics(*_read(clips["hum_0"]))["snr_db"]
    babble = _metrics(*_read(clips["babble_0"]))["snr_db"]
    pink = _metrics(*_read(clips["pink_0"]))["snr_db"]
    assert hum > 30  # mixed at 0 dB, but all of it under 300 Hz
    assert babble < 15 and pink < 3
    # WADA-SNR cannot tell them apart that way
    assert wada_snr(_read(clips["hum_0"])[0]) < 15


def _packet_loss(samples: np.ndarray, rate: int, share: float, seed: int = 1) -> np.ndarray:
    """``share`` of the 20 ms packets zeroed, as a VoIP decoder without concealment leaves them (16-bit)."""
    lost = samples.copy()
    packet = int(0.02 * rate)
    drop = np.random.default_rng(seed).random(len(samples) // packet) < share
    for i in np.flatnonzero(drop):
        lost[i * packet : (i + 1) * packet] = 0
    return (np.round(lost * 32767) / 32767).astype(np.float32)


@pytest.mark.parametrize("with_vad", [True, False], ids=["vad", "no-vad"])
def test_dropouts_from_lost_packets_and_none_in_clean_speech(clips, with_vad):
    if with_vad and not vad.available():
        pytest.skip("silero-vad is not installed")
    samples, rate = _read(clips["speech"])
    measure = _metrics if with_vad else (lambda x, r: compute_metrics(x, r))
    clean = measure(samples, rate)
    assert clean["dropouts"] == 0 and clean["dropout_ratio"] == 0.0
    lossy = measure(_packet_loss(samples, rate, 0.35), rate)
    assert lossy["dropouts"] >= 10 and lossy["dropout_ratio"] > 0.15
    some = measure(_packet_loss(samples, rate, 0.10), rate)
    assert 0 < some["dropout_ratio"] < lossy["dropout_ratio"]


@needs_vad
def test_a_tone_is_not_voice_any_more(clips, tmp_path, monkeypatch):
    samples, rate = _read(clips["tone"])
    assert compute_metrics(samples, rate)["speech_ratio"] > 0.5  # the spectral fallback still calls it voice
    for key, value in default_models_missing_env(tmp_path).items():
        monkeypatch.delenv(key, raising=False) if value is None else monkeypatch.setenv(key, value)
    import medzero

    result = medzero.classify(clips["tone"], task="voice_quality")
    assert result.signal_only and result.verdict == "not_applicable", result.summary()
    assert result.metrics["speech_ratio"] == 0.0 and result.speech_segments == []


def test_wada_table_is_kim_and_stern_model():
    """Re-simulate G(SNR) = log E|z| - E log|z| for gamma (shape 0.4) speech in Gaussian noise."""
    rng = np.random.default_rng(7)
    speech = rng.gamma(0.4, 1.0, 400_000) * rng.choice([-1.0, 1.0], 400_000)
    noise = rng.standard_normal(400_000)
    for db in (-10, 0, 10, 20, 40):
        z = np.abs(np.sqrt(10 ** (db / 10) / (0.4 * 1.4)) * speech + noise)
        g = np.log(z.mean()) - np.log(z).mean()
        assert g == pytest.approx(float(_WADA_G[_WADA_DB == db][0]), abs=0.01), db
    mixed = (0.05 * (np.sqrt(10 / (0.4 * 1.4)) * speech + noise) / np.sqrt(11)).astype(np.float32)
    assert wada_snr(mixed) == pytest.approx(10, abs=0.5)
    assert wada_snr(np.zeros(100, np.float32)) == -20.0  # no signal at all: the lower clamp


def _child(code: str, env: dict) -> dict:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _child_env(tmp_path: Path) -> dict:
    env = dict(os.environ)
    for key, value in default_models_missing_env(tmp_path).items():
        env.pop(key, None) if value is None else env.__setitem__(key, value)
    env["MEDZERO_CACHE_DIR"] = str(tmp_path / "cache")
    return env


CLASSIFY = (
    "import json, sys\n{prelude}\n"
    "import medzero\n"
    "r = medzero.classify(sys.argv[1] if len(sys.argv) > 1 else {path!r}, task='voice_quality')\n"
    "print(json.dumps({{'result': r.to_dict(), 'torch': 'torch' in sys.modules}}))\n"
)


@needs_vad
def test_signal_only_classify_runs_the_speech_models_without_torch(clips, tmp_path):
    out = _child(CLASSIFY.format(prelude="", path=str(clips["speech"])), _child_env(tmp_path))
    result = out["result"]
    assert out["torch"] is False
    assert result["signal_only"] and result["error"] is None
    assert result["speech_segments"] and all(0 <= s < e <= result["metrics"]["duration_s"] for s, e in result["speech_segments"])
    assert result["metadata"]["quality_models"]["vad"] == vad.fingerprint()
    assert "quality_notes" not in result["metadata"] or "vad" not in result["metadata"]["quality_notes"]
    if mos.available():
        assert result["metadata"]["quality_models"]["mos"] == mos.fingerprint()
        assert all(1.0 <= result["metrics"][k] <= 5.0 for k in ("mos_sig", "mos_bak", "mos_ovrl"))


def test_without_silero_the_result_says_it_fell_back(clips, tmp_path):
    prelude = "sys.modules['silero_vad'] = None"
    out = _child(CLASSIFY.format(prelude=prelude, path=str(clips["speech"])), _child_env(tmp_path))
    result = out["result"]
    assert result["error"] is None and result["speech_segments"] == []
    assert "vad" not in result["metadata"]["quality_models"]
    note = result["metadata"]["quality_notes"]["vad"]
    assert "heuristic" in note["en"] and "Silero VAD is not installed" in note["en"] and "启发式" in note["zh"]
    samples, _ = _read(clips["speech"])
    assert result["metrics"]["snr_db"] == pytest.approx(wada_snr(samples), abs=1e-6)
    assert result["metrics"]["speech_ratio"] > 0.05  # the heuristic still hears this voice


# -- DNSMOS where it is used ------------------------------------------------------------------------

MOS = {"mos_sig", "mos_bak", "mos_ovrl"}


@needs_vad
@pytest.mark.skipif(not mos.available(), reason="speechmos is not installed (pip install 'medzero[voice]')")
def test_dnsmos_measures_a_recording_only_where_it_is_used(clips, tiny_clap_dir):
    """DNSMOS costs more CPU than CLAP itself (bench/bench_audio.py: 16 clips of 8 s took 4.3 s with
    it and 1.9 s without), so it runs when the task's rules use a mos_* metric (voice_quality's, also
    as the audio default task) or when asked, and not for ad-hoc labels; the VAD-based metrics stay."""
    import medzero

    kw = dict(audio_model=str(tiny_clap_dir), device="cpu")
    speech = clips["pink_20"]
    task = medzero.classify(speech, task="voice_quality", **kw)
    default = medzero.Classifier(**kw).classify(speech)  # no task, no labels: the audio default task
    labels = medzero.classify(speech, labels="speech,noise", **kw)
    asked = medzero.classify(speech, labels="speech,noise", mos=True, **kw)
    declined = medzero.classify(speech, task="voice_quality", mos=False, **kw)
    for result in (task, default, asked):
        assert MOS <= set(result.metrics) and "mos" in result.metadata["quality_models"], result.metrics
        assert {k: result.metrics[k] for k in MOS} == {k: task.metrics[k] for k in MOS}  # one measurement
    for result in (labels, declined):
        assert not MOS & set(result.metrics) and "mos" not in result.metadata["quality_models"], result.metrics
        assert "mos" not in result.metadata.get("quality_notes", {})  # not asked is not "not installed"
        assert result.metrics["speech_ratio"] == task.metrics["speech_ratio"] and result.speech_segments == task.speech_segments


@needs_vad
@pytest.mark.skipif(not mos.available(), reason="speechmos is not installed (pip install 'medzero[voice]')")
def test_the_cli_mos_flag(clips, tiny_clap_dir):
    from click.testing import CliRunner

    from medzero.cli import cli

    def metrics(*flags: str) -> set[str]:
        run = CliRunner().invoke(cli, ["classify", "--format", "json", "--labels", "speech,noise", "--audio-model",
                                        str(tiny_clap_dir), *flags, str(clips["speech"])])
        assert run.exit_code == 0, run.output
        return set(json.loads(run.output)[0]["metrics"])

    assert MOS <= metrics("--mos") and not MOS & metrics() and not MOS & metrics("--no-mos")
