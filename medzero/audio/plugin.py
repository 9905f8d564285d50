"""The audio modality as core sees it: one :class:`~medzero.core.modality.Modality` row, and the
``speech`` check a voice task may name in its ``applies_to`` block.

Decoding (PyAV, libsndfile) is imported when the first recording is prepared, not when the
modality registers, so listing models or tasks never needs the decoders.
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..core.errors import BadInputError
from ..core.ingest import Prepared, Source
from ..core.modality import Modality, register_modality
from ..tasks.schema import NOT_APPLICABLE, register_applies_to
from ..core.results import Reason, format_values
from .quality import METRIC_INFO
from .timeline import add_timeline

__all__ = ["AUDIO", "SpeechCheck", "Ears", "listen"]

log = logging.getLogger(__name__)


def _limits():
    from .io import AudioLimits

    return AudioLimits.from_env()


def _prepare(source: Source, encoder, limits) -> Prepared:
    from .io import load_audio
    from .quality import compute_metrics

    # encoder None: decoded for the measurements alone (a signal-only verdict, the model missing).
    clip = load_audio(source.data, limits=limits, name=source.name, fmt=source.format)
    ears = listen(clip.samples, clip.sample_rate, mos=bool(getattr(limits, "mos", None)))
    metrics = compute_metrics(clip.samples, clip.sample_rate, channels=clip.channels, speech_segments=ears.segments)
    metrics.update(ears.mos)
    metadata = {
        "format": clip.format,
        "duration_s": round(clip.duration, 3),
        "sample_rate": clip.source_rate,
        "channels": clip.channels,
        "quality_models": ears.models,
    }
    if ears.notes:
        metadata["quality_notes"] = ears.notes
    return Prepared(
        source,
        item=clip.resampled(encoder.sample_rate, limits=limits, name=source.name) if encoder is not None else clip,
        metrics=metrics,
        metadata=metadata,
        columns={"duration_s": metadata["duration_s"]},
        speech_segments=ears.segments or [],
    )


#: DNSMOS windows (9.01 s each) per recording at most: a window costs about 0.1 s on 2 cores, so a
#: 10-minute consultation costs 1.2 s, not 3.4 s for the 34 the reference bound allows.
MOS_WINDOWS = 12


@dataclass
class Ears:
    """What the trained speech models heard in one recording (:func:`listen`)."""

    #: Silero VAD's speech segments (start, end seconds); ``None`` when the VAD is not installed.
    segments: list[tuple[float, float]] | None = None
    #: ``mos_sig``, ``mos_bak``, ``mos_ovrl`` (DNSMOS P.835); empty when it is not installed.
    mos: dict[str, float] = field(default_factory=dict)
    #: Fingerprint of each model that ran: ``{"vad": ..., "mos": ...}``.
    models: dict[str, str] = field(default_factory=dict)
    #: For each model that did not run, why and what stood in for it, ``{"en", "zh"}``.
    notes: dict[str, dict[str, str]] = field(default_factory=dict)


#: What a result says when a model's wheel is missing (the measurement falls back, never fails).
_FALLBACK_NOTES = {
    "vad": {
        "en": "voice activity from a spectral heuristic (tones and music may count as voice) and SNR from "
        "WADA-SNR: Silero VAD is not installed (pip install 'medzero[voice]')",
        "zh": "人声活动由频谱启发式估计（音调和音乐可能被当作人声），信噪比由 WADA-SNR 估计：未安装 Silero VAD"
        "（pip install 'medzero[voice]'）",
    },
    "mos": {
        "en": "no speech quality scores (MOS): DNSMOS is not installed (pip install 'medzero[voice]')",
        "zh": "无语音质量评分（MOS）：未安装 DNSMOS（pip install 'medzero[voice]'）",
    },
}


def listen(samples: np.ndarray, sample_rate: int, *, mos: bool = True) -> Ears:
    """Run the speech models that are installed on a mono recording: Silero VAD (segments) and,
    with ``mos``, DNSMOS P.835 (MOS), both on ONNX Runtime from their wheels, on one 16 kHz copy of
    it. A model that is not installed is left out with a note; one too short for DNSMOS gives no MOS."""
    from . import vad

    ears = Ears()
    rate = vad.RATE
    at_16k = _at_16k(samples, sample_rate)
    if not vad.available():
        ears.notes["vad"] = _FALLBACK_NOTES["vad"]
        if mos:
            _listen_mos(ears, at_16k, rate)
        return ears
    if not mos or len(at_16k) < BESIDE_MIN_SECONDS * rate:
        ears.segments = vad.speech_segments(at_16k, rate)
        if mos:
            _listen_mos(ears, at_16k, rate)
    else:
        # The VAD is a chain of small sequential calls on one thread (2 s for 10 minutes): DNSMOS
        # runs beside it, on the cores it leaves idle, instead of after it.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="medzero-vad") as pool:
            segments = pool.submit(vad.speech_segments, at_16k, rate)
            _listen_mos(ears, at_16k, rate)
            ears.segments = segments.result()
    ears.models = {"vad": vad.fingerprint(), **ears.models}
    return ears


#: Recordings at least this long run DNSMOS beside the VAD, in a second thread (the 10-minute
#: case: the VAD's 2 s overlap DNSMOS). Shorter ones run them one after the other: there the VAD
#: costs tens of milliseconds, and the service, which decodes many uploads at once, would start
#: and stop a thread per upload for nothing.
BESIDE_MIN_SECONDS = 120.0


def _listen_mos(ears: Ears, at_16k: np.ndarray, rate: int) -> None:
    """DNSMOS into ``ears`` (or the note saying it is not installed)."""
    mos = _mos_module()
    if mos is not None and mos.available():
        try:
            # each stretch heard once (a window per 9.01 s), not the reference's window every second;
            # a long recording sampled by MOS_WINDOWS spread evenly over it (108 s of a 10-minute one)
            windows = mos.covering_windows(len(at_16k), max_windows=MOS_WINDOWS)
            ears.mos = mos.measure(at_16k, rate, max_windows=windows)
            ears.models["mos"] = mos.fingerprint()
        except BadInputError as exc:
            log.debug("no MOS for this recording (%s)", type(exc).__name__)
    else:
        ears.notes["mos"] = _FALLBACK_NOTES["mos"]


def _at_16k(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """One 16 kHz copy for both models (soxr HQ, as the loader resamples)."""
    from . import vad

    x = np.ascontiguousarray(samples, dtype=np.float32)
    if sample_rate == vad.RATE or len(x) == 0:
        return x
    import soxr

    return soxr.resample(x, sample_rate, vad.RATE, quality="HQ").astype(np.float32, copy=False)


def _mos_module():
    try:
        from . import mos
    except ImportError:  # pragma: no cover - the module ships with the package
        return None
    return mos


def _accepts_array(obj: Any) -> bool:
    # (samples, rate) pairs and datasets rows carry a rate; a bare 1-D array is a waveform.
    if isinstance(obj, (tuple, dict)):
        return True
    return isinstance(obj, np.ndarray) and obj.ndim == 1


AUDIO = register_modality(
    Modality(
        name="audio",
        noun="an audio recording",
        word="audio",
        formats=("wav", "flac", "ogg", "mp3", "aac", "m4a", "amr", "silk", "aiff", "webm", "mkv", "pcm"),
        format_words=("WAV", "FLAC", "Ogg", "MP3", "M4A/AAC", "AMR", "SILK"),
        prepare=_prepare,
        limits=_limits,
        accepts_array=_accepts_array,
        default_task="voice_quality",
        default_template="This is a sound of {}.",
        default_negative="other sounds",
        metric_info=METRIC_INFO,
        postprocess=add_timeline,
    )
)


class SpeechCheck(BaseModel):
    """``applies_to: {speech: {min_speech_ratio: 0.05}}``: the recording must hold a voice.

    Reads the ``speech_ratio`` measurement, so it works without the CLAP model: the share of the
    recording inside Silero VAD's speech segments (a tone or music is not speech), or, when the
    VAD is not installed, the spectral heuristic of :func:`medzero.audio.quality.compute_metrics`
    (the result's ``metadata["quality_notes"]["vad"]`` then says so).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_speech_ratio: float = Field(default=0.05, ge=0.0, le=1.0)


def _check_speech(
    params: SpeechCheck, metadata: Mapping[str, Any], metrics: Mapping[str, float], what: Mapping[str, str]
) -> tuple[bool | None, list[Reason]]:
    ratio = metrics.get("speech_ratio")
    if ratio is None:
        return None, []
    if ratio >= params.min_speech_ratio:
        return True, []
    info = METRIC_INFO["speech_ratio"]
    value, limit = format_values(ratio, params.min_speech_ratio, "%")  # printed apart: the sentence stays true
    reason = Reason(
        kind="applicability",
        id="speech",
        name={"en": info["en"], "zh": info["zh"]},
        value=float(ratio),
        limit=params.min_speech_ratio,
        direction="below",
        verdict=NOT_APPLICABLE.id,
        unit="%",
        message={
            "en": f"{info['en']} {value} below {limit}: no speech heard, not {what['en']}",
            "zh": f"{info['zh']} {value} 低于 {limit}：未检测到人声，不是{what['zh']}",
        },
    )
    return False, [reason]


register_applies_to("audio", "speech", SpeechCheck, _check_speech)
