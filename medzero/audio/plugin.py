"""The audio modality as core sees it: one :class:`~medzero.core.modality.Modality` row, and the
``speech`` check a voice task may name in its ``applies_to`` block.

Decoding (PyAV, libsndfile) is imported when the first recording is prepared, not when the
modality registers, so listing models or tasks never needs the decoders.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..core.ingest import Prepared, Source
from ..core.modality import Modality, register_modality
from ..tasks.schema import NOT_APPLICABLE, register_applies_to
from ..core.results import Reason, format_values
from .quality import METRIC_INFO
from .timeline import add_timeline

__all__ = ["AUDIO", "SpeechCheck"]


def _limits():
    from .io import AudioLimits

    return AudioLimits.from_env()


def _prepare(source: Source, encoder, limits) -> Prepared:
    from .io import load_audio
    from .quality import compute_metrics

    # encoder None: decoded for the measurements alone (a signal-only verdict, the model missing).
    clip = load_audio(source.data, limits=limits, name=source.name, fmt=source.format)
    metrics = compute_metrics(clip.samples, clip.sample_rate, channels=clip.channels)
    metadata = {
        "format": clip.format,
        "duration_s": round(clip.duration, 3),
        "sample_rate": clip.source_rate,
        "channels": clip.channels,
    }
    return Prepared(
        source,
        item=clip.resampled(encoder.sample_rate, limits=limits, name=source.name) if encoder is not None else clip,
        metrics=metrics,
        metadata=metadata,
        columns={"duration_s": metadata["duration_s"]},
    )


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

    Reads the ``speech_ratio`` measurement (:func:`medzero.audio.quality.compute_metrics`: the
    share of 20 ms frames that are loud, voice-band and harmonic), so it works without the model.
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
