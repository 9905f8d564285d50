"""The audio modality as core sees it: one :class:`~medzero.core.modality.Modality` row.

Decoding (PyAV, libsndfile) is imported when the first recording is prepared, not when the
modality registers, so listing models or tasks never needs the decoders.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..core.ingest import Prepared, Source
from ..core.modality import Modality, register_modality
from .quality import METRIC_INFO
from .timeline import add_timeline

__all__ = ["AUDIO"]


def _limits():
    from .io import AudioLimits

    return AudioLimits.from_env()


def _prepare(source: Source, encoder, limits) -> Prepared:
    from .io import load_audio
    from .quality import compute_metrics

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
        item=clip.resampled(encoder.sample_rate),
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
        formats=("wav", "flac", "ogg", "mp3", "aac", "m4a", "amr", "aiff", "webm", "mkv"),
        format_words=("WAV", "FLAC", "Ogg", "MP3", "M4A/AAC", "AMR"),
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
