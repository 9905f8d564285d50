"""DNSMOS P.835 (medzero.audio.mos): the real model from the speechmos wheel on real espeak-ng speech.

The reference is ``speechmos.dnsmos.run`` itself (librosa, which it imports, is a medzero dependency).
"""
from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import audio_samples
from medzero.audio import mos
from medzero.audio.io import load_audio
from medzero.core.errors import BadInputError

KEYS = ("mos_sig", "mos_bak", "mos_ovrl")


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> dict[str, Path]:
    """espeak-ng speech (7.3 s at 22050 Hz), the same with pink noise at 5 and 0 dB SNR, 40 s of it."""
    missing = audio_samples.missing_tools()
    if missing:
        pytest.fail(f"making test audio needs {', '.join(missing)} (make test installs them with apt)")
    out = tmp_path_factory.mktemp("mos")
    clean = audio_samples.speech_wav(out)
    return {
        "clean": clean,
        "pink_5db": audio_samples.mix_noise(clean, out, 5),
        "pink_0db": audio_samples.mix_noise(clean, out, 0),
        "long_40s": audio_samples.long_speech(out, 40, speech=clean),
    }


def samples_16k(path: Path) -> np.ndarray:
    return load_audio(path, sample_rate=mos.SAMPLE_RATE).samples


def reference(samples: np.ndarray) -> dict[str, float]:
    """Microsoft's algorithm as speechmos ships it (imports librosa; loads its own ORT sessions)."""
    from speechmos import dnsmos

    result = dnsmos.run(samples, mos.SAMPLE_RATE)
    return {"mos_sig": result["sig_mos"], "mos_bak": result["bak_mos"], "mos_ovrl": result["ovrl_mos"]}


@pytest.mark.parametrize(
    "name, seconds",
    [("clean", None), ("pink_5db", None), ("clean", 1.5), ("long_40s", None)],
    ids=["clean", "pink-5dB", "1.5s-shorter-than-a-window", "40s-with-skipped-windows"],
)
def test_equals_speechmos_reference(speech, name, seconds):
    """Same SIG/BAK/OVRL as speechmos.dnsmos.run to 1e-4: the filling of short clips, the 1 s hop
    and the windows the reference skips (i = 7..23 in the 40 s clip) are reproduced."""
    samples = samples_16k(speech[name])
    if seconds is not None:
        samples = samples[: int(seconds * mos.SAMPLE_RATE)]
    ours = mos.measure(samples, mos.SAMPLE_RATE)
    assert set(ours) == set(KEYS)
    expected = reference(samples)
    for key in KEYS:
        assert ours[key] == pytest.approx(expected[key], abs=1e-4), key


@pytest.mark.parametrize("name", ["clean", "pink_5db", "pink_0db", "long_40s"])
def test_covering_windows_stay_near_the_reference(speech, name):
    """What the audio plug-in runs: a window per 9.01 s of the recording (one for a 7.3 s clip,
    five for 40 s) instead of one a second; the scores stay within 0.08 of the reference."""
    samples = samples_16k(speech[name])
    windows = mos.covering_windows(len(samples))
    assert windows == (5 if name == "long_40s" else 1)
    got, full = mos.measure(samples, mos.SAMPLE_RATE, max_windows=windows), mos.measure(samples, mos.SAMPLE_RATE)
    for key in ("mos_sig", "mos_bak", "mos_ovrl"):
        assert abs(got[key] - full[key]) <= 0.08, (key, got[key], full[key])


def test_noise_lowers_background_and_overall_mos(speech):
    """Clean speech > the same speech with pink noise at 5 dB > at 0 dB, for BAK and OVRL; every
    score a float on the 1-5 scale."""
    scores = {name: mos.measure(samples_16k(speech[name]), mos.SAMPLE_RATE) for name in ("clean", "pink_5db", "pink_0db")}
    for key in ("mos_bak", "mos_ovrl"):
        assert scores["clean"][key] > scores["pink_5db"][key] > scores["pink_0db"][key], (key, scores)
    assert scores["clean"]["mos_bak"] - scores["pink_0db"]["mos_bak"] > 1.0, scores
    for result in scores.values():
        assert all(type(result[key]) is float and 1.0 <= result[key] <= 5.0 for key in KEYS), result


def test_source_rate_is_resampled(speech):
    """A clip at its source rate (22050 Hz) scores as the same clip resampled to 16 kHz first."""
    clip = load_audio(speech["clean"])
    assert clip.sample_rate == 22050
    at_source = mos.measure(clip.samples, clip.sample_rate)
    at_16k = mos.measure(samples_16k(speech["clean"]), mos.SAMPLE_RATE)
    for key in KEYS:
        assert at_source[key] == pytest.approx(at_16k[key], abs=1e-4)


_CHILD = """
import json, sys
from medzero.audio import mos
from medzero.audio.io import load_audio
clip = load_audio(sys.argv[1])
scores = mos.measure(clip.samples, clip.sample_rate)
print(json.dumps({"scores": scores, "torch": "torch" in sys.modules, "librosa": "librosa" in sys.modules,
                  "speechmos": "speechmos" in sys.modules}))
"""


def test_deterministic_across_runs_and_processes_without_torch(speech):
    """Bit-identical scores twice in this process and in a fresh one, which imports neither torch,
    librosa nor the speechmos package (only its model file is read)."""
    clip = load_audio(speech["pink_5db"])
    first = mos.measure(clip.samples, clip.sample_rate)
    assert mos.measure(clip.samples, clip.sample_rate) == first
    done = subprocess.run([sys.executable, "-c", _CHILD, str(speech["pink_5db"])], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    child = json.loads(done.stdout.strip().splitlines()[-1])
    assert child["scores"] == first
    assert not child["torch"] and not child["librosa"] and not child["speechmos"], child


def test_very_short_clip_is_filled():
    """A 0.2 s clip (shorter than one 9.01 s window) is repeated to fill one and still scored."""
    rng = np.random.default_rng(0)
    tone = (0.3 * np.sin(2 * np.pi * 220 * np.arange(3200) / 16000) + 0.01 * rng.standard_normal(3200)).astype(np.float32)
    scores = mos.measure(tone, 16000)
    assert all(1.0 <= scores[key] <= 5.0 for key in KEYS)


def test_ten_minute_recording_is_bounded(tmp_path, speech):
    """A 10-minute recording scores MAX_WINDOWS windows spread from its start to its end (not 570),
    within a time bound; up to 60 s every official window is scored."""
    long_path = audio_samples.long_speech(tmp_path, 600, speech=speech["clean"])
    clip = load_audio(long_path)
    assert clip.duration == pytest.approx(600, abs=0.1)
    n16 = int(clip.duration * mos.SAMPLE_RATE)
    every = mos.window_starts(n16, max_windows=10**6)
    picked = mos.window_starts(n16)
    assert len(every) > 500 and len(picked) == mos.MAX_WINDOWS
    assert picked[0] == every[0] and picked[-1] == every[-1] and set(picked) <= set(every)
    assert mos.window_starts(60 * mos.SAMPLE_RATE) == mos.window_starts(60 * mos.SAMPLE_RATE, max_windows=10**6)
    started = time.perf_counter()
    scores = mos.measure(clip.samples, clip.sample_rate)
    elapsed = time.perf_counter() - started
    assert elapsed < 60, f"10-minute recording took {elapsed:.1f} s"
    assert all(1.0 <= scores[key] <= 5.0 for key in KEYS)
    # what the audio plug-in scores: MOS_WINDOWS windows spread over it, near the 34-window score
    from medzero.audio import plugin

    heard = plugin.listen(clip.samples, clip.sample_rate).mos
    assert mos.covering_windows(n16, max_windows=plugin.MOS_WINDOWS) == plugin.MOS_WINDOWS == 12
    for key in KEYS:
        assert abs(heard[key] - scores[key]) <= 0.05, (key, heard[key], scores[key])


def test_one_session_shared_by_threads(speech, monkeypatch):
    """Four threads asking at once create one ORT session and get the same scores."""
    import onnxruntime as ort

    created = []
    real = ort.InferenceSession

    def counting(*args, **kwargs):
        created.append(1)
        time.sleep(0.2)  # widen the window in which a second thread could race
        return real(*args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", counting)
    monkeypatch.setattr(mos, "_SESSION", None)
    samples = samples_16k(speech["clean"])
    barrier = threading.Barrier(4)
    results: list[dict] = []

    def worker():
        barrier.wait()
        results.append(mos.measure(samples, mos.SAMPLE_RATE))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(created) == 1
    assert len(results) == 4 and all(result == results[0] for result in results)


def test_fingerprint_names_package_version_and_file_hash():
    path = mos.model_path()
    assert path is not None and path.parts[-2:] == ("dnsmos_models", "sig_bak_ovr.onnx")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    assert re.fullmatch(r"dnsmos-p835 speechmos-\S+ sha256:[0-9a-f]{16}", mos.fingerprint())
    assert mos.fingerprint().endswith(f"sha256:{digest}")
    assert "speechmos-0.0.1.1 " in mos.fingerprint()  # the version the voice extra pins


@pytest.mark.parametrize(
    "samples, rate, words",
    [
        (np.zeros(0, np.float32), 16000, "non-empty mono"),
        (np.zeros((2, 16000), np.float32), 16000, "mono"),
        (np.array([0.1, np.nan] * 8000, np.float32), 16000, "NaN"),
        (np.zeros(16000, np.int16), 16000, "float samples"),
        (np.zeros(16000, np.float32), 0, "sample rate"),
    ],
    ids=["empty", "stereo", "nan", "int16", "rate-0"],
)
def test_bad_input_is_one_line(samples, rate, words):
    with pytest.raises(BadInputError, match=words) as caught:
        mos.measure(samples, rate)
    assert "\n" not in str(caught.value)


_WITHOUT = """
import sys
sys.modules["speechmos"] = None  # as if the package were not installed
from medzero.audio import mos
from medzero.core.errors import ModelUnavailableError
import numpy as np
assert mos.available() is False and mos.model_path() is None
for call in (lambda: mos.measure(np.zeros(16000, np.float32), 16000), mos.fingerprint, mos.require):
    try:
        call()
    except ModelUnavailableError as e:
        print(e)
    else:
        raise SystemExit("no error")
"""


def test_unavailable_without_speechmos():
    """Without speechmos, available() is False and callers who need the MOS get one line naming
    the install command (never an ImportError or a traceback)."""
    done = subprocess.run([sys.executable, "-c", _WITHOUT], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 3
    for line in lines:
        assert "speechmos" in line and "pip install 'medzero[voice]'" in line
