"""Quality metrics on real speech, noisy, clipped and telephone-band versions of it, and edge cases."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from medzero.audio.io import load_audio
from medzero.audio.quality import METRIC_INFO, METRIC_NAMES, MOS_NAMES, compute_metrics


def metrics_of(path, **kwargs) -> dict:
    clip = load_audio(path, **kwargs)
    return compute_metrics(clip.samples, clip.sample_rate, channels=clip.channels)


def assert_json_safe(metrics: dict) -> None:
    assert tuple(metrics) == METRIC_NAMES
    for name, value in metrics.items():
        assert type(value) in (int, float), name
        assert math.isfinite(value), name
    json.dumps(metrics, allow_nan=False)


def test_snr_separates_clean_from_noisy(audio_clips):
    clean = metrics_of(audio_clips["speech"])["snr_db"]
    noisy = {snr: metrics_of(audio_clips[f"noisy_{snr}db"])["snr_db"] for snr in (0, 10, 20)}
    assert clean > noisy[0] + 20
    assert noisy[0] < 10
    assert noisy[0] < noisy[10] < noisy[20] < clean


def test_pure_noise_has_low_snr(audio_clips):
    assert metrics_of(audio_clips["noise"])["snr_db"] < 6


def test_clipping(audio_clips):
    assert metrics_of(audio_clips["clipped"])["clipping_ratio"] > 0.01
    assert metrics_of(audio_clips["speech"])["clipping_ratio"] < 1e-4
    assert metrics_of(audio_clips["clipped"])["peak_dbfs"] == pytest.approx(0.0, abs=0.01)


def test_bandwidth_tells_telephone_from_wideband(audio_clips):
    assert metrics_of(audio_clips["telephone"])["bandwidth_hz"] < 4500
    # Saved at 48 kHz, telephone audio is still narrow-band: the metric reads content, not the rate.
    telephone_48k = metrics_of(audio_clips["telephone_48k"])
    assert telephone_48k["sample_rate"] == 48000 and telephone_48k["bandwidth_hz"] < 4500
    assert metrics_of(audio_clips["speech"])["bandwidth_hz"] > 6000  # 22050 Hz from espeak-ng
    assert metrics_of(audio_clips["speech"], sample_rate=48000)["bandwidth_hz"] > 6000


def test_levels_of_speech(audio_clips):
    metrics = metrics_of(audio_clips["speech"])
    assert -30 < metrics["rms_dbfs"] < metrics["peak_dbfs"] < 0
    assert metrics["duration_s"] == pytest.approx(len(load_audio(audio_clips["speech"]).samples) / 22050)
    assert_json_safe(metrics)


def test_digital_silence():
    metrics = compute_metrics(np.zeros(48000, np.float32), 48000)
    assert metrics["silence_ratio"] == 1.0
    assert metrics["rms_dbfs"] == metrics["peak_dbfs"] == -120.0
    assert metrics["bandwidth_hz"] == 0.0 and metrics["clipping_ratio"] == 0.0
    assert_json_safe(metrics)


def test_half_silence(audio_clips):
    noise = load_audio(audio_clips["noise"])
    samples = np.concatenate([noise.samples, np.zeros_like(noise.samples)])
    assert compute_metrics(samples, noise.sample_rate)["silence_ratio"] == pytest.approx(0.5, abs=0.02)


def test_speech_pauses_count_as_silence(audio_clips):
    speech = metrics_of(audio_clips["speech"])["silence_ratio"]
    assert 0.05 < speech < 0.5
    assert metrics_of(audio_clips["noisy_0db"])["silence_ratio"] < speech


def test_dc_offset(audio_clips):
    clip = load_audio(audio_clips["speech"])
    assert abs(compute_metrics(clip.samples, clip.sample_rate)["dc_offset"]) < 0.01
    shifted = compute_metrics(clip.samples + np.float32(0.1), clip.sample_rate)
    assert shifted["dc_offset"] == pytest.approx(0.1, abs=0.005)


def test_channels_are_reported(audio_clips):
    assert compute_metrics(np.zeros(800, np.float32), 8000, channels=2)["channels"] == 2


@pytest.mark.parametrize("n", [0, 1, 100])
def test_tiny_inputs_are_finite(n):
    assert_json_safe(compute_metrics(np.full(n, 0.25, np.float32), 16000))


def test_ten_minutes_at_48k():
    rng = np.random.default_rng(0)
    rate = 48000
    samples = (0.05 * rng.standard_normal(rate * 600)).astype(np.float32)
    samples[: rate * 60] *= 10  # one loud minute
    metrics = compute_metrics(samples, rate)
    assert_json_safe(metrics)
    assert metrics["duration_s"] == 600.0
    assert metrics["bandwidth_hz"] > 20000  # white noise fills the band


def test_rejects_multichannel_arrays():
    with pytest.raises(ValueError, match="1-D"):
        compute_metrics(np.zeros((2, 100), np.float32), 8000)


def test_rejects_integer_pcm():
    with pytest.raises(ValueError, match="float"):
        compute_metrics(np.zeros(100, np.int16), 8000)


def test_metric_info():
    assert set(METRIC_INFO) == set(METRIC_NAMES) | set(MOS_NAMES)
    for info in METRIC_INFO.values():
        assert info["en"] and info["zh"] and "unit" in info
    assert METRIC_INFO["snr_db"]["zh"] == "信噪比"
    assert METRIC_INFO["clipping_ratio"]["zh"] == "削波比例"
    assert METRIC_INFO["bandwidth_hz"]["unit"] == "Hz"
