"""Silero VAD from its wheel on ONNX Runtime: real model, real espeak-ng speech made with sox."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import audio_samples
from medzero.audio import vad

pytestmark = pytest.mark.skipif(not vad.available(), reason="silero-vad is not installed (pip install 'medzero[voice]')")

REPO = Path(__file__).resolve().parents[1]
FIRST = "Please describe the pain in your chest"
SECOND = "It started three days ago after dinner"
GAP_S = 1.0


def _trimmed(out: Path, text: str, name: str) -> Path:
    """espeak-ng speech with its leading and trailing silence cut by sox."""
    raw = audio_samples.speech_wav(out, text, name=f"{name}_raw")
    path = out / f"{name}.wav"
    audio_samples.sox(raw, path, "silence", "1", "0.01", "0.1%", "reverse", "silence", "1", "0.01", "0.1%", "reverse")
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("vad")
    first, second = _trimmed(out, FIRST, "first"), _trimmed(out, SECOND, "second")
    joined = out / "two_utterances.wav"
    # 0.5 s of silence before, GAP_S between, 0.5 s after: sox puts the silence where we say
    audio_samples.sox(first, joined, "pad", "0.5", f"{GAP_S}")
    tail = out / "tail.wav"
    audio_samples.sox(second, tail, "pad", "0", "0.5")
    both = out / "speech_with_pause.wav"
    audio_samples.sox(joined, tail, both)
    rate = 22050
    tone, music = out / "tone.wav", out / "music.wav"
    audio_samples.sox("-n", "-r", str(rate), "-b", "16", tone, "synth", "4", "sine", "440", "vol", "0.3")
    notes = [out / f"note{i}.wav" for i in range(4)]
    for path, chord in zip(notes, (("C4", "E4", "G4"), ("F4", "A4", "C5"), ("G4", "B4", "D5"), ("C4", "E4", "G4"))):
        plucks = [word for note in chord for word in ("pluck", note)]
        audio_samples.sox("-n", "-r", str(rate), "-b", "16", path, "synth", "1", *plucks, "remix", "-", "vol", "0.3")
    audio_samples.sox(*notes, music)
    return {
        "speech": both,
        "first_s": audio_samples.duration_s(first),
        "second_s": audio_samples.duration_s(second),
        "pink": audio_samples.noise_only(out, 4, level=0.1),
        "tone": tone,
        "music": music,
    }


def _segments(path: Path) -> list[tuple[float, float]]:
    samples, rate = sf.read(path, dtype="float32")
    return vad.speech_segments(samples, rate)


def test_segments_fall_where_sox_put_the_speech(clips):
    """Within 0.1 s of the edges sox made, once the 30 ms the detector pads each segment by is taken off."""
    found = [(start + vad.SPEECH_PAD_S, end - vad.SPEECH_PAD_S) for start, end in _segments(clips["speech"])]
    first, second = clips["first_s"], clips["second_s"]
    speech = [(0.5, 0.5 + first), (0.5 + first + GAP_S, 0.5 + first + GAP_S + second)]
    # espeak's short pauses inside a sentence may split it; the long gap sox made may not be crossed
    assert found[0][0] == pytest.approx(speech[0][0], abs=0.1)
    assert found[-1][1] == pytest.approx(speech[1][1], abs=0.1)
    gaps = [(end, nxt) for (_, end), (nxt, _) in zip(found, found[1:]) if nxt - end > 0.5]
    assert len(gaps) == 1, found
    assert gaps[0][0] == pytest.approx(speech[0][1], abs=0.1) and gaps[0][1] == pytest.approx(speech[1][0], abs=0.1)


@pytest.mark.parametrize("name", ["pink", "tone", "music"])
def test_no_speech_in_noise_tones_or_music(clips, name):
    assert _segments(clips[name]) == []


def test_probabilities_equal_the_packages_own_pipeline(clips, tmp_path):
    """The reference: silero_vad's OnnxWrapper and get_speech_timestamps (torch, in a child process)."""
    pytest.importorskip("torch")
    samples, rate = sf.read(clips["speech"], dtype="float32")
    import soxr

    at_16k = soxr.resample(samples, rate, 16000, quality="HQ").astype(np.float32)
    np.save(tmp_path / "x.npy", at_16k)
    code = (
        "import json, sys, numpy as np, torch\n"
        "from silero_vad import load_silero_vad, get_speech_timestamps\n"
        f"x = torch.from_numpy(np.load({str(tmp_path / 'x.npy')!r}))\n"
        "m = load_silero_vad(onnx=True)\n"
        "p = m.audio_forward(x, 16000).numpy().ravel().tolist()\n"
        "s = [(d['start'], d['end']) for d in get_speech_timestamps(x, m)]\n"
        "print(json.dumps({'p': p, 's': s}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    reference = json.loads(done.stdout.strip().splitlines()[-1])
    ours = vad.speech_probabilities(at_16k, 16000)
    np.testing.assert_allclose(ours, np.array(reference["p"], np.float32), atol=1e-6)
    assert [list(s) for s in vad.segments_from_probabilities(ours, len(at_16k))] == reference["s"]


def test_fingerprint_names_version_and_file():
    fp = vad.fingerprint()
    assert fp.startswith("silero-vad 6.") and len(fp.split("sha256:")[1]) == 16


def test_empty_and_tiny_inputs():
    assert vad.speech_segments(np.zeros(0, np.float32), 16000) == []
    assert vad.speech_segments(np.zeros(10, np.float32), 8000) == []
    assert len(vad.speech_probabilities(np.zeros(513, np.float32), 16000)) == 2
