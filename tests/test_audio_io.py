"""Audio loading from real encoded speech, arrays, and every input a user can get wrong."""
from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

import audio_samples
from medzero.audio.io import AudioClip, AudioLimits, load_audio
from medzero.core.errors import BadInputError

FORMATS = ["wav", "flac", "ogg", "mp3", "m4a", "amr"]


def sine(freq: float, rate: int, seconds: float, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_frequency(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.argmax(spectrum) * rate / len(samples))


# ---------------------------------------------------------------------------------------------
# Real files


@pytest.mark.parametrize("fmt", FORMATS)
def test_loads_real_speech(audio_clips, fmt):
    source_seconds = audio_samples.duration_s(audio_clips["speech"])
    clip = load_audio(audio_clips[fmt], sample_rate=48000)
    assert clip.format == fmt
    assert clip.samples.dtype == np.float32 and clip.samples.ndim == 1
    assert clip.samples.flags.c_contiguous
    assert clip.sample_rate == 48000
    assert clip.channels == 1
    assert clip.duration == pytest.approx(source_seconds, abs=0.1)
    assert clip.source == str(audio_clips[fmt])
    rms = float(np.sqrt(np.mean(clip.samples.astype(np.float64) ** 2)))
    assert 0.03 < rms < 0.5  # speech at about -20 dBFS, not silence and not noise blown up


def test_source_rate_is_kept_without_sample_rate(audio_clips):
    clip = load_audio(audio_clips["wav"])
    assert clip.sample_rate == clip.source_rate == 22050  # what espeak-ng writes
    assert load_audio(audio_clips["amr"]).sample_rate == 8000
    assert load_audio(audio_clips["amr"], sample_rate=16000).source_rate == 8000


@pytest.mark.parametrize("fmt", FORMATS)
def test_path_bytes_and_file_objects_agree(audio_clips, fmt):
    path = audio_clips[fmt]
    from_path = load_audio(path, sample_rate=48000)
    from_bytes = load_audio(path.read_bytes(), sample_rate=48000)
    from_buffer = load_audio(io.BytesIO(path.read_bytes()), sample_rate=48000)
    with open(path, "rb") as f:
        from_file = load_audio(f, sample_rate=48000)
    for other in (from_bytes, from_buffer, from_file):
        np.testing.assert_array_equal(other.samples, from_path.samples)
        assert other.format == fmt
    assert from_bytes.source == "<bytes>"
    assert from_buffer.source == "<file>"


@pytest.mark.parametrize("fmt", FORMATS)
def test_deterministic(audio_clips, fmt):
    first = load_audio(audio_clips[fmt], sample_rate=48000).samples
    second = load_audio(audio_clips[fmt], sample_rate=48000).samples
    assert first.tobytes() == second.tobytes()


def test_stereo_file_is_the_channel_average(audio_clips, tmp_path):
    speech = audio_clips["speech"]
    noise = audio_samples.noise_only(tmp_path, audio_samples.duration_s(speech))
    both = load_audio(audio_samples.stereo(speech, noise, tmp_path))
    assert both.channels == 2
    expected = (load_audio(speech).samples + load_audio(noise).samples) / 2
    np.testing.assert_allclose(both.samples, expected, atol=1e-6)


def test_hf_datasets_mappings(audio_clips):
    path = audio_clips["flac"]
    reference = load_audio(path).samples
    np.testing.assert_array_equal(load_audio({"bytes": path.read_bytes(), "path": None}).samples, reference)
    np.testing.assert_array_equal(load_audio({"bytes": None, "path": str(path)}).samples, reference)


# ---------------------------------------------------------------------------------------------
# Arrays


def test_array_is_resampled_and_keeps_its_pitch():
    tone = sine(1000, 16000, 1.0)
    clip = load_audio(tone, source_rate=16000, sample_rate=48000)
    assert clip.sample_rate == 48000 and clip.source_rate == 16000
    assert len(clip.samples) == 3 * len(tone)
    assert peak_frequency(clip.samples, 48000) == pytest.approx(1000, abs=2)
    assert np.abs(clip.samples[4800:-4800]).max() == pytest.approx(0.5, abs=0.01)


def test_array_forms_agree():
    tone = sine(440, 16000, 0.5)
    expected = load_audio(tone, source_rate=16000, sample_rate=22050).samples
    as_tuple = load_audio((tone, 16000), sample_rate=22050).samples
    as_dict = load_audio({"array": tone, "sampling_rate": 16000}, sample_rate=22050).samples
    np.testing.assert_array_equal(as_tuple, expected)
    np.testing.assert_array_equal(as_dict, expected)


@pytest.mark.parametrize("layout", ["channels_first", "channels_last"])
def test_stereo_array_is_averaged(layout):
    left, right = sine(300, 16000, 0.5), sine(700, 16000, 0.5, amplitude=0.2)
    stereo = np.stack([left, right]) if layout == "channels_first" else np.stack([left, right], axis=1)
    clip = load_audio(stereo, source_rate=16000)
    assert clip.channels == 2
    np.testing.assert_allclose(clip.samples, (left + right) / 2, atol=1e-7)


def test_int16_array_is_scaled():
    pcm = (sine(500, 8000, 0.5) * 32767).astype(np.int16)
    clip = load_audio(pcm, source_rate=8000)
    assert np.abs(clip.samples).max() == pytest.approx(0.5, abs=1e-3)


def test_resampled_returns_self_at_the_same_rate():
    clip = load_audio(sine(500, 16000, 0.5), source_rate=16000)
    assert clip.resampled(16000) is clip
    assert isinstance(clip.resampled(8000), AudioClip) and len(clip.resampled(8000).samples) == 4000


def test_array_without_rate():
    with pytest.raises(BadInputError, match="source_rate"):
        load_audio(np.zeros(16000, np.float32))


# ---------------------------------------------------------------------------------------------
# Limits


def test_limits_from_env(monkeypatch):
    monkeypatch.setenv("MEDZERO_MAX_AUDIO_BYTES", "1000")
    monkeypatch.setenv("MEDZERO_MAX_AUDIO_SECONDS", "60")
    monkeypatch.setenv("MEDZERO_MIN_AUDIO_SECONDS", "0.5")
    assert AudioLimits.from_env() == AudioLimits(max_bytes=1000, max_duration_s=60.0, min_duration_s=0.5)
    with pytest.raises(BadInputError, match="too long"):
        load_audio(sine(500, 8000, 61), source_rate=8000)  # no limits given: the environment's apply


@pytest.mark.parametrize(
    "var, value",
    [("MEDZERO_MAX_AUDIO_BYTES", "lots"), ("MEDZERO_MAX_AUDIO_BYTES", "1.5"), ("MEDZERO_MAX_AUDIO_SECONDS", "-3"),
     ("MEDZERO_MIN_AUDIO_SECONDS", "nan")],
)
def test_bad_limits_in_env_name_the_variable(monkeypatch, var, value):
    monkeypatch.setenv(var, value)
    with pytest.raises(BadInputError, match=var):
        AudioLimits.from_env()


# ---------------------------------------------------------------------------------------------
# Rejections: each is a BadInputError with one line naming the problem


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (16, 16), 200).save(buffer, format="PNG")
    return buffer.getvalue()


def reject(source, *, match: str, **kwargs) -> str:
    with pytest.raises(BadInputError, match=match) as info:
        load_audio(source, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_file(tmp_path):
    message = reject(tmp_path / "visit-12.wav", match="file not found")
    assert "visit-12.wav" in message


def test_empty_file(tmp_path):
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    assert reject(path, match="is empty") == f"{path} is empty (0 bytes)"
    assert reject(b"", match="is empty") == "<bytes> is empty (0 bytes)"


def test_text_named_wav(tmp_path):
    path = tmp_path / "notes.wav"
    path.write_text("Patient reports chest pain since this morning.\n")
    message = reject(path, match="not an audio file")
    assert "notes.wav" in message and "WAV" in message


def test_random_bytes_are_not_audio():
    noise = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    reject(noise, match="not an audio file")


@pytest.mark.parametrize("as_path", [True, False])
def test_image_is_not_audio(tmp_path, as_path):
    data = png_bytes()
    path = tmp_path / "scan.wav"
    path.write_bytes(data)
    message = reject(path if as_path else data, match="is an image")
    assert "not audio" in message and "PNG" in message


def test_truncated_wav(audio_clips, tmp_path):
    data = audio_clips["wav"].read_bytes()
    path = tmp_path / "cut.wav"
    path.write_bytes(data[: len(data) // 2])
    assert "cut.wav" in reject(path, match="truncated WAV")
    reject(data[: len(data) // 2], match="truncated WAV")


def test_truncated_m4a(audio_clips):
    data = audio_clips["m4a"].read_bytes()
    reject(data[: len(data) // 2], match="truncated or corrupt M4A")


def test_nan_array():
    samples = sine(500, 8000, 0.5)
    samples[[10, 20, 30]] = [np.nan, np.inf, -np.inf]
    message = reject(samples, source_rate=8000, match="NaN")
    assert "3 of 4000" in message


def test_wav_without_samples(tmp_path):
    path = tmp_path / "header-only.wav"
    sf.write(path, np.zeros((0, 1), np.float32), 16000, subtype="PCM_16")
    assert path.stat().st_size > 0
    assert "header-only.wav" in reject(path, match="no audio samples")


def test_empty_array():
    reject(np.zeros(0, np.float32), source_rate=8000, match="no audio samples")


def test_too_short(tmp_path):
    reject(sine(500, 16000, 0.05), source_rate=16000, match="too short")
    path = audio_samples.noise_only(tmp_path, 0.05)
    assert "0.050 s" in reject(path, match="too short")


@pytest.mark.parametrize("fmt", ["wav", "m4a"])  # libsndfile and PyAV
def test_too_large(audio_clips, fmt):
    path = audio_clips[fmt]
    limits = AudioLimits(max_bytes=1000)
    message = reject(path, limits=limits, match="too large")
    assert "MEDZERO_MAX_AUDIO_BYTES" in message
    reject(path.read_bytes(), limits=limits, match="too large")
    with open(path, "rb") as f:
        assert path.name in reject(f, limits=limits, match="too large")  # named after the open file


@pytest.mark.parametrize("fmt", ["wav", "mp3", "m4a", "amr"])
def test_too_long(audio_clips, fmt):
    message = reject(audio_clips[fmt], limits=AudioLimits(max_duration_s=2.0), match="too long")
    assert "MEDZERO_MAX_AUDIO_SECONDS" in message
    reject(sine(500, 8000, 3.0), source_rate=8000, limits=AudioLimits(max_duration_s=2.0), match="too long")
