"""Signal-quality metrics of a recording, computed from its samples with numpy alone.

Pass the samples at the rate they were recorded, i.e. ``load_audio(path).samples`` with no
``sample_rate``: resampling low-passes the signal and smooths clipped peaks, which would hide what
these metrics look for.

All work is done in 20 ms frames (level, silence, SNR, DC, voice activity) and in Hann-windowed FFT
frames of about 43 ms (bandwidth), a block of frames at a time, so a 10-minute 48 kHz clip takes well under a second
and no copy of the whole clip is made. Results are plain Python numbers with no NaN or infinity:
levels of digital silence read :data:`SILENCE_DBFS` and SNR is clamped to :data:`SNR_RANGE_DB`.

``METRIC_INFO`` gives display names and units (also of the DNSMOS scores the audio plug-in adds,
:data:`MOS_NAMES`). Ratios are fractions in [0, 1]; their unit ``"%"``
says they are shown as percentages (multiply by 100).
"""
from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import numpy as np

__all__ = [
    "METRIC_NAMES",
    "METRIC_INFO",
    "MOS_NAMES",
    "SILENCE_DBFS",
    "SNR_RANGE_DB",
    "compute_metrics",
    "wada_snr",
    "speech_snr_db",
    "dropout_runs",
]

log = logging.getLogger(__name__)

METRIC_NAMES = (
    "duration_s",
    "sample_rate",
    "channels",
    "rms_dbfs",
    "peak_dbfs",
    "clipping_ratio",
    "silence_ratio",
    "snr_db",
    "bandwidth_hz",
    "dc_offset",
    "speech_ratio",
    "dropout_ratio",
    "dropouts",
)

METRIC_INFO: dict[str, dict[str, str]] = {
    "duration_s": {"en": "Duration", "zh": "时长", "unit": "s"},
    "sample_rate": {"en": "Sample rate", "zh": "采样率", "unit": "Hz"},
    "channels": {"en": "Channels", "zh": "声道数", "unit": ""},
    "rms_dbfs": {"en": "Average level", "zh": "平均电平", "unit": "dBFS"},
    "peak_dbfs": {"en": "Peak level", "zh": "峰值电平", "unit": "dBFS"},
    "clipping_ratio": {"en": "Clipping", "zh": "削波比例", "unit": "%"},
    "silence_ratio": {"en": "Silence", "zh": "静音比例", "unit": "%"},
    "snr_db": {"en": "Signal-to-noise ratio", "zh": "信噪比", "unit": "dB"},
    "bandwidth_hz": {"en": "Effective bandwidth", "zh": "有效带宽", "unit": "Hz"},
    "dc_offset": {"en": "DC offset", "zh": "直流偏移", "unit": ""},
    "speech_ratio": {"en": "Voice activity", "zh": "人声活动比例", "unit": "%"},
    "dropout_ratio": {"en": "Dropouts (lost audio)", "zh": "丢音比例", "unit": "%"},
    "dropouts": {"en": "Dropout count", "zh": "丢音次数", "unit": ""},
    # DNSMOS P.835 (medzero.audio.mos), measured by the audio plug-in beside these when installed: 1-5.
    "mos_sig": {"en": "Speech quality (MOS)", "zh": "语音质量（MOS）", "unit": ""},
    "mos_bak": {"en": "Background (MOS)", "zh": "背景噪声（MOS）", "unit": ""},
    "mos_ovrl": {"en": "Overall quality (MOS)", "zh": "总体质量（MOS）", "unit": ""},
}
#: The metrics of :data:`METRIC_INFO` that :func:`compute_metrics` does not give: the plug-in adds
#: them from DNSMOS when ``speechmos`` is installed.
MOS_NAMES = ("mos_sig", "mos_bak", "mos_ovrl")

#: Level reported for digital silence, in dBFS.
SILENCE_DBFS = -120.0
#: Estimated SNR is clamped to this range, in dB.
SNR_RANGE_DB = (-20.0, 100.0)
#: A sample at or above this magnitude counts as clipped.
CLIP_LEVEL = 0.999
#: A 20 ms frame whose RMS is below this level counts as silent, in dBFS.
SILENT_FRAME_DBFS = -50.0
#: Share of the long-term spectral energy that lies below the effective bandwidth.
BANDWIDTH_ENERGY = 0.999
#: The voice band (telephone speech), in Hz: a voice-like frame has most of its energy here...
VOICE_BAND_HZ = (300.0, 3400.0)
#: ... at least this share of it ...
VOICE_BAND_SHARE = 0.5
#: ... and a spectrum in that band peaked (harmonic) rather than flat (noise-like): its spectral
#: flatness (geometric over arithmetic mean of the power spectrum) is under this value. Noise reads
#: about 0.5 (white) and 0.4 (pink) on 20 ms frames; voiced speech reads under 0.1.
VOICE_MAX_FLATNESS = 0.3

#: Mains hum (50/60 Hz lines and harmonics) below this frequency is left out of the noise.
HUM_MAX_HZ = 300.0
#: The VAD's SNR needs at least this much non-speech (pauses) to see the noise; else WADA-SNR.
MIN_PAUSE_S = 0.2
#: Frames this close to a speech segment count as neither speech nor pause (the VAD's edges).
PAUSE_MARGIN_S = 0.02
#: A dropout: a run of digital silence (a repeated sample value, or within one 16-bit step of
#: zero) at least this long inside the speech span ...
DROPOUT_MIN_S = 0.020
#: ... that cuts the voice off: the 5 ms before it are louder than this ...
DROPOUT_EDGE_DBFS = -35.0
#: ... and its last sample is still at least this share of their RMS level. A voice that stops
#: (a pause, the closure of a "t") fades to zero; a lost packet cuts it at any phase.
DROPOUT_CUT = 0.3
_DEAD_LEVEL = 2.0**-15

_FRAME_S = 0.020
_BLOCK_SAMPLES = 1 << 20  # work on about 1M samples (4 MB of float32) at a time


def compute_metrics(
    samples: np.ndarray,
    sample_rate: int,
    *,
    channels: int = 1,
    speech_segments: Sequence[tuple[float, float]] | None = None,
) -> dict[str, float]:
    """Quality metrics of a mono recording.

    Args:
        samples: 1-D mono samples at the source rate, nominally in [-1, 1].
        sample_rate: rate of ``samples`` in Hz.
        channels: channel count of the original recording, reported as is.
        speech_segments: where a voice activity detector heard speech, ``(start, end)`` seconds
            (:func:`medzero.audio.vad.speech_segments`; an empty list: none heard). ``None`` when
            no detector ran: voice activity then comes from the spectral heuristic below and the
            SNR from WADA-SNR.

    Returns:
        A dict keyed by :data:`METRIC_NAMES`:

        * ``duration_s``, ``sample_rate``, ``channels``: as given.
        * ``rms_dbfs``, ``peak_dbfs``: overall RMS and peak magnitude in dB re full scale (1.0).
        * ``clipping_ratio``: fraction of samples with ``|x| >= 0.999``. Clipping that happened
          before a later gain reduction (flat tops below full scale) is not detected.
        * ``silence_ratio``: fraction of 20 ms frames whose RMS is below -50 dBFS.
        * ``snr_db``: with speech segments and at least 0.2 s of pauses, :func:`speech_snr_db`:
          the speech-band (300-3400 Hz) power of the speech frames against that of the pauses,
          so rumble and mains hum below the voice count for little. Otherwise (no detector, no
          pauses, no speech) :func:`wada_snr` of the whole recording. Clamped to
          :data:`SNR_RANGE_DB`; digital silence in the pauses gives the upper clamp (100).
        * ``bandwidth_hz``: the frequency below which 99.9 % of the long-term average power
          spectrum of the non-silent frames lies (Hann-windowed FFT of about 43 ms, 2048 points
          at 48 kHz; each frame's mean removed). Speech puts most of its energy below 1 kHz, so
          the share is set high enough to reach the fricatives: telephone audio (300-3400 Hz)
          reads about 3.4 kHz whatever its sample rate, wideband speech 7 kHz and more. Noise
          counts as content, so hiss above -30 dB relative to the signal raises it.
        * ``dc_offset``: the mean sample value.
        * ``speech_ratio``: with speech segments, the share of the recording inside them. Without
          (the fallback), the fraction of 20 ms frames that sound like voiced speech: above the
          silence floor (-50 dBFS), with at least half their energy in 300-3400 Hz and a harmonic
          spectrum there (spectral flatness under 0.3). The fallback is no speech recogniser: a
          tone, singing or music in the voice band counts as voice; the VAD's segments do not.
        * ``dropout_ratio``, ``dropouts``: the share of the speech span (first to last speech
          segment, or to the last non-silent frame without segments) lost to dropouts, and their
          count; see :func:`dropout_runs`.

        Values are Python floats (``sample_rate``, ``channels`` and ``dropouts`` ints), finite and JSON-safe.
    """
    x = np.asarray(samples)
    if x.ndim != 1:
        raise ValueError(f"compute_metrics expects 1-D mono samples, got shape {x.shape}")
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    if x.dtype.kind != "f":
        raise ValueError(f"compute_metrics expects float samples in [-1, 1], got {x.dtype}; use load_audio")
    n = len(x)

    metrics = {
        "duration_s": n / sample_rate,
        "sample_rate": int(sample_rate),
        "channels": int(channels),
        "rms_dbfs": SILENCE_DBFS,
        "peak_dbfs": SILENCE_DBFS,
        "clipping_ratio": 0.0,
        "silence_ratio": 1.0,
        "snr_db": SNR_RANGE_DB[0],
        "bandwidth_hz": 0.0,
        "dc_offset": 0.0,
        "speech_ratio": 0.0,
        "dropout_ratio": 0.0,
        "dropouts": 0,
    }
    if n == 0:
        return metrics

    frame = max(1, round(_FRAME_S * sample_rate))
    power, total, clipped, energy = _frame_stats(x, frame)
    peak = max(float(x.max()), -float(x.min()))
    if not (np.isfinite(peak) and np.isfinite(energy)):
        raise ValueError("samples contain NaN or infinite values")
    segments = None if speech_segments is None else _clean_segments(speech_segments, n / sample_rate)
    snr = None if segments is None else speech_snr_db(x, sample_rate, segments)
    span = _speech_span(segments, power, frame, n)
    runs = dropout_runs(x, sample_rate, span)
    lost = sum(stop - start for start, stop in runs)
    metrics.update(
        rms_dbfs=_db(energy / n),
        peak_dbfs=_db(peak * peak),
        clipping_ratio=clipped / n,
        silence_ratio=float(np.mean(power < 10 ** (SILENT_FRAME_DBFS / 10))),
        snr_db=wada_snr(x) if snr is None else snr,
        bandwidth_hz=_bandwidth_hz(x, sample_rate),
        dc_offset=total / n,
        speech_ratio=_speech_ratio(x, sample_rate, frame) if segments is None else _covered(segments) * sample_rate / n,
        dropout_ratio=lost / (span[1] - span[0]) if span[1] > span[0] else 0.0,
        dropouts=len(runs),
    )
    if not all(np.isfinite(v) for v in metrics.values()):
        raise ValueError("samples contain NaN or infinite values")
    return {k: (v if isinstance(v, int) else float(v)) for k, v in metrics.items()}


def _clean_segments(segments: Sequence[tuple[float, float]], duration: float) -> list[tuple[float, float]]:
    """Segments inside the recording, in order, without overlaps (a caller's list is not trusted)."""
    out: list[tuple[float, float]] = []
    for start, end in sorted((max(0.0, float(s)), min(duration, float(e))) for s, e in segments):
        if end <= start:
            continue
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def _covered(segments: list[tuple[float, float]]) -> float:
    return float(sum(end - start for start, end in segments))


def wada_snr(samples: np.ndarray) -> float:
    """Blind SNR of speech in noise by waveform amplitude distribution analysis (WADA-SNR).

    Kim & Stern, "Robust signal-to-noise ratio estimation based on waveform amplitude
    distribution analysis", Interspeech 2008. Clean speech amplitudes are modelled as
    gamma-distributed (shape 0.4) and noise as Gaussian; the statistic
    ``G = log(mean|z|) - mean(log|z|)`` of the noisy signal ``z`` grows with the SNR, and the SNR
    is read off :data:`_WADA_G` (``G`` tabulated from -20 to 100 dB) by linear interpolation.
    As in the authors' code, magnitudes under 1e-10 count as 1e-10, so digital silence reads
    high, and the result is clamped to [-20, 100] dB. One value for the whole recording: no
    pauses are needed, but noise that is not Gaussian (babble, music) is misread.
    """
    x = np.asarray(samples)
    if x.ndim != 1 or len(x) == 0:
        return SNR_RANGE_DB[0]
    abs_sum = log_sum = 0.0
    for start in range(0, len(x), _BLOCK_SAMPLES):
        a = np.abs(x[start : start + _BLOCK_SAMPLES].astype(np.float64))
        np.maximum(a, _WADA_EPS, out=a)
        abs_sum += float(a.sum())
        log_sum += float(np.log(a).sum())
    g = np.log(max(_WADA_EPS, abs_sum / len(x))) - log_sum / len(x)
    below = np.flatnonzero(_WADA_G < g)
    if len(below) == 0:
        return float(_WADA_DB[0])
    i = int(below[-1])
    if i == len(_WADA_DB) - 1:
        return float(_WADA_DB[-1])
    fraction = (g - _WADA_G[i]) / (_WADA_G[i + 1] - _WADA_G[i])
    return float(_WADA_DB[i] + fraction * (_WADA_DB[i + 1] - _WADA_DB[i]))


_WADA_EPS = 1e-10
_WADA_DB = np.arange(-20.0, 101.0)
#: ``G(SNR)`` of WADA-SNR at -20, -19, ... 100 dB: Kim & Stern's model (speech amplitudes
#: gamma-distributed with shape 0.4, random sign; Gaussian noise; SNR as the ratio of their powers)
#: evaluated by simulation with 10 million samples per SNR (common random numbers, seed 2008),
#: made non-decreasing. ``tests/test_voice_metrics.py`` re-simulates points of it.
_WADA_G = np.array([
    0.4095, 0.4095, 0.4095, 0.4095, 0.4096, 0.4098, 0.4100, 0.4104, 0.4108, 0.4115,
    0.4124, 0.4136, 0.4153, 0.4174, 0.4203, 0.4240, 0.4287, 0.4347, 0.4422, 0.4514,
    0.4622, 0.4747, 0.4894, 0.5057, 0.5240, 0.5439, 0.5658, 0.5890, 0.6138, 0.6399,
    0.6672, 0.6952, 0.7240, 0.7531, 0.7823, 0.8120, 0.8413, 0.8705, 0.8994, 0.9276,
    0.9555, 0.9826, 1.0092, 1.0350, 1.0601, 1.0844, 1.1079, 1.1305, 1.1523, 1.1734,
    1.1937, 1.2132, 1.2321, 1.2502, 1.2675, 1.2840, 1.2999, 1.3151, 1.3297, 1.3436,
    1.3571, 1.3699, 1.3822, 1.3940, 1.4051, 1.4159, 1.4262, 1.4359, 1.4453, 1.4542,
    1.4628, 1.4710, 1.4788, 1.4863, 1.4934, 1.5002, 1.5067, 1.5129, 1.5189, 1.5245,
    1.5299, 1.5351, 1.5401, 1.5448, 1.5493, 1.5536, 1.5577, 1.5616, 1.5654, 1.5690,
    1.5725, 1.5757, 1.5788, 1.5818, 1.5846, 1.5874, 1.5900, 1.5925, 1.5948, 1.5971,
    1.5992, 1.6013, 1.6033, 1.6052, 1.6070, 1.6086, 1.6103, 1.6118, 1.6133, 1.6148,
    1.6161, 1.6174, 1.6187, 1.6199, 1.6210, 1.6221, 1.6231, 1.6240, 1.6250, 1.6259,
    1.6268,
])


def speech_snr_db(x: np.ndarray, sample_rate: int, segments: Sequence[tuple[float, float]]) -> float | None:
    """SNR of speech against the noise in its pauses, with mains hum left out.

    20 ms frames inside speech segments give the speech-plus-noise power ``S``; frames at least
    20 ms away from any segment give the noise power ``N`` (each the mean of the frames' power,
    DC removed). Mains hum (lines at 50 or 60 Hz and their harmonics below 300 Hz, found in the
    pauses' spectrum, :func:`_hum_share`) sits under the voice band and masks little of it, so its
    power ``H`` is taken out of both: ``snr = 10*log10((S - N) / (N - H))``, the SNR of the active
    speech. ``None`` when there is no speech or under :data:`MIN_PAUSE_S` of pauses: the caller
    then uses :func:`wada_snr`. Clamped to :data:`SNR_RANGE_DB`.
    """
    frame = max(1, round(_FRAME_S * sample_rate))
    n_frames = len(x) // frame
    if n_frames == 0:
        return None
    centres = (np.arange(n_frames) + 0.5) * frame / sample_rate
    inside = np.zeros(n_frames, bool)
    near = np.zeros(n_frames, bool)
    for start, end in segments:
        inside |= (centres >= start) & (centres < end)
        near |= (centres >= start - PAUSE_MARGIN_S - _FRAME_S / 2) & (centres < end + PAUSE_MARGIN_S + _FRAME_S / 2)
    pause = ~near
    if not inside.any() or pause.sum() * frame < MIN_PAUSE_S * sample_rate:
        return None
    dc = float(np.mean(x, dtype=np.float64))
    power = _frame_power(x, frame, dc)
    speech, noise = float(power[inside].mean()), float(power[pause].mean())
    lo, hi = SNR_RANGE_DB
    if speech <= 0:
        return lo
    if noise <= 0:
        return hi
    if speech <= noise:
        return lo
    noise_left = noise * (1.0 - _hum_share(x, sample_rate, frame, pause, dc))
    if noise_left <= 0:
        return hi
    return float(np.clip(10 * np.log10((speech - noise) / noise_left), lo, hi))


def _frame_power(x: np.ndarray, frame: int, dc: float) -> np.ndarray:
    """Each whole frame's mean power about ``dc``, float64."""
    out = []
    for block in _frames(x, frame):
        if block.shape[1] != frame:
            continue  # the partial tail
        b = block.astype(np.float64) - dc
        out.append(np.einsum("ij,ij->i", b, b) / frame)
    return np.concatenate(out) if out else np.zeros(0)


def _hum_share(x: np.ndarray, sample_rate: int, frame: int, pause: np.ndarray, dc: float) -> float:
    """The share of the pauses' power in mains-hum lines (50 or 60 Hz and harmonics under
    :data:`HUM_MAX_HZ`): Welch spectrum of up to 8 s of pause frames, 0.5 s segments (0.2 s when
    the pauses are short); a line's power is what its +-3 Hz stands above the median of the 50 Hz
    around it."""
    index = np.flatnonzero(pause)[: int(8 / _FRAME_S)]
    seg = min(int(sample_rate / 2), len(index) * frame)
    if seg < MIN_PAUSE_S * sample_rate:
        return 0.0
    y = np.concatenate([x[i * frame : (i + 1) * frame] for i in index]).astype(np.float64) - dc
    window = np.hanning(seg)
    psd = np.zeros(seg // 2 + 1)
    for s in range(0, len(y) - seg + 1, max(1, seg // 2)):
        spec = np.fft.rfft(y[s : s + seg] * window)
        psd += spec.real**2 + spec.imag**2
    total = float(psd[1:].sum())
    if total <= 0:
        return 0.0
    bin_hz = sample_rate / seg
    half, around = max(1, round(3 / bin_hz)), max(3, round(25 / bin_hz))
    best = 0.0
    for mains in (50.0, 60.0):
        lines = 0.0
        for k in range(1, int(HUM_MAX_HZ // mains) + 1):
            centre = round(k * mains / bin_hz)
            peak = psd[max(1, centre - half) : centre + half + 1]
            floor = float(np.median(psd[max(1, centre - around) : centre + around + 1]))
            lines += max(0.0, float(peak.sum()) - len(peak) * floor)
        best = max(best, lines / total)
    return min(1.0, best)


def _speech_span(segments: list[tuple[float, float]] | None, power: np.ndarray, frame: int, n: int) -> tuple[int, int]:
    """Samples from the first to the last speech (segments; else non-silent 20 ms frames)."""
    if segments is not None:
        if not segments:
            return 0, 0
        rate = frame / _FRAME_S
        return int(segments[0][0] * rate), min(n, int(round(segments[-1][1] * rate)))
    loud = np.flatnonzero(power >= 10 ** (SILENT_FRAME_DBFS / 10))
    if len(loud) == 0:
        return 0, 0
    return int(loud[0]) * frame, min(n, (int(loud[-1]) + 1) * frame)


def dropout_runs(x: np.ndarray, sample_rate: int, span: tuple[int, int] | None = None) -> list[tuple[int, int]]:
    """Dropouts in ``x[span[0]:span[1]]`` (the whole recording by default), as ``(start, stop)`` samples.

    A dropout is what a lost packet leaves in decoded speech: a run of digital silence (each sample
    repeats the previous one, or lies within one 16-bit step of zero) of at least
    :data:`DROPOUT_MIN_S` that cuts the voice off: the 5 ms before it hold sound above
    :data:`DROPOUT_EDGE_DBFS` and their last sample is not near zero (:data:`DROPOUT_CUT`). A
    pause in speech fades out and is no dropout, nor is a silent lead-in or tail (outside the
    span). A cut that happens to fall on a zero crossing is missed, so the count is a lower bound. A decoder that conceals lost packets (fills them with
    comfort noise or repeated pitch) leaves nothing this finds.
    """
    start, stop = (0, len(x)) if span is None else (max(0, span[0]), min(len(x), span[1]))
    min_len = max(2, round(DROPOUT_MIN_S * sample_rate))
    edge = max(1, round(0.005 * sample_rate))
    floor = 10 ** (DROPOUT_EDGE_DBFS / 20)
    runs = []
    for a, b in _dead_runs(x, start, stop, min_len):
        before = x[max(0, a - edge) : a].astype(np.float64)
        if len(before) == 0:
            continue
        level = float(np.sqrt(np.mean(before * before)))
        if level >= floor and abs(float(before[-1])) >= DROPOUT_CUT * level:
            runs.append((a, b))
    return runs


def _dead_runs(x: np.ndarray, start: int, stop: int, min_len: int) -> Iterator[tuple[int, int]]:
    """Runs of at least ``min_len`` dead samples (repeated value, or near zero) in ``x[start:stop]``,
    a block at a time; a run may cross blocks."""
    run_start = None
    for a in range(start, stop, _BLOCK_SAMPLES):
        b = min(stop, a + _BLOCK_SAMPLES)
        block = x[a:b]
        previous = x[a - 1 : b - 1] if a > 0 else np.concatenate([[np.nan], x[a : b - 1]]).astype(x.dtype)
        dead = (block == previous) | (np.abs(block) < _DEAD_LEVEL)
        edges = np.flatnonzero(np.diff(dead.astype(np.int8), prepend=np.int8(0), append=np.int8(0)))
        rises, falls = edges[0::2], edges[1::2]  # dead[rise:fall] is a run inside this block
        for rise, fall in zip(rises.tolist(), falls.tolist()):
            if rise == 0 and run_start is not None:
                begin = run_start
            else:
                if run_start is not None and run_start + min_len <= a:
                    yield run_start, a  # the run that was open ended at this block's start
                begin = a + rise
            run_start = None
            if fall == b - a and b < stop:
                run_start = begin  # open: it may go on in the next block
            elif a + fall - begin >= min_len:
                yield begin, a + fall
        if not len(rises) and run_start is not None:
            if a - run_start >= min_len:
                yield run_start, a
            run_start = None
    if run_start is not None and stop - run_start >= min_len:
        yield run_start, stop


def _frames(x: np.ndarray, frame: int) -> Iterator[np.ndarray]:
    """Consecutive non-overlapping frames as 2-D views, a block at a time; a short tail is its own block."""
    n_full = len(x) // frame
    step = max(1, _BLOCK_SAMPLES // frame)
    for start in range(0, n_full, step):
        stop = min(start + step, n_full)
        yield x[start * frame : stop * frame].reshape(stop - start, frame)
    if len(x) % frame:
        yield x[n_full * frame :][None, :]


def _frame_stats(x: np.ndarray, frame: int) -> tuple[np.ndarray, float, int, float]:
    """Per-frame mean power, and the clip's sum, clipped-sample count and energy (float64)."""
    powers, total, clipped, energy = [], 0.0, 0, 0.0
    for block in _frames(x, frame):
        b = block.astype(np.float64)
        sq = np.einsum("ij,ij->i", b, b)
        powers.append(sq / block.shape[1])
        energy += float(sq.sum())
        total += float(b.sum())
        clipped += int(np.count_nonzero(np.abs(block) >= CLIP_LEVEL))
    power = np.concatenate(powers)
    if len(power) > 1 and len(x) % frame:
        power = power[:-1]  # a partial last frame would skew percentiles; it still counts above
    return power, total, clipped, energy


def _bandwidth_hz(x: np.ndarray, sample_rate: int) -> float:
    """Frequency below which :data:`BANDWIDTH_ENERGY` of the non-silent frames' power lies."""
    n_fft = int(np.clip(2 ** round(np.log2(0.043 * sample_rate)), 256, 4096))
    if len(x) < n_fft:
        x = np.pad(x, (0, n_fft - len(x)))
    window = np.hanning(n_fft).astype(np.float32)
    threshold = 10 ** (SILENT_FRAME_DBFS / 10)
    spectrum = np.zeros(n_fft // 2 + 1)
    for block in _frames(x, n_fft):
        if block.shape[1] != n_fft:
            continue  # the partial tail
        frames = block - block.mean(axis=1, keepdims=True, dtype=np.float32)
        loud = np.einsum("ij,ij->i", frames, frames) / n_fft >= threshold
        if loud.any():
            spec = np.fft.rfft(frames[loud] * window, axis=1)
            spectrum += (spec.real.astype(np.float64) ** 2 + spec.imag.astype(np.float64) ** 2).sum(axis=0)
    cumulative = np.cumsum(spectrum)
    if cumulative[-1] <= 0:
        return 0.0
    index = int(np.searchsorted(cumulative, BANDWIDTH_ENERGY * cumulative[-1]))
    return float(index * sample_rate / n_fft)


def _speech_ratio(x: np.ndarray, sample_rate: int, frame: int) -> float:
    """Fraction of ``frame``-sample frames that are loud, voice-band and harmonic (see compute_metrics)."""
    n_fft = 1 << max(int(np.ceil(np.log2(frame))), 4)
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    band = np.flatnonzero((freqs >= VOICE_BAND_HZ[0]) & (freqs <= VOICE_BAND_HZ[1]))
    if len(band) == 0:
        return 0.0
    lo, hi = band[0], band[-1] + 1
    window = np.hanning(frame).astype(np.float32)
    floor = 10 ** (SILENT_FRAME_DBFS / 10)
    voiced = counted = 0
    for block in _frames(x, frame):
        if block.shape[1] != frame:
            continue  # the partial tail
        counted += len(block)
        b = block - block.mean(axis=1, keepdims=True, dtype=np.float32)
        loud = np.einsum("ij,ij->i", b, b) / frame >= floor
        if not loud.any():
            continue
        spec = np.fft.rfft(b[loud] * window, n_fft, axis=1)
        power = spec.real**2 + spec.imag**2
        in_band = power[:, lo:hi] + np.float32(1e-20)
        share = in_band.sum(axis=1, dtype=np.float64) / np.maximum(power.sum(axis=1, dtype=np.float64), 1e-30)
        flatness = np.exp(np.log(in_band).mean(axis=1, dtype=np.float64)) / in_band.mean(axis=1, dtype=np.float64)
        voiced += int(np.count_nonzero((share >= VOICE_BAND_SHARE) & (flatness < VOICE_MAX_FLATNESS)))
    return voiced / counted if counted else 0.0


def _db(power: float) -> float:
    return float(max(SILENCE_DBFS, 10 * np.log10(power))) if power > 0 else SILENCE_DBFS
