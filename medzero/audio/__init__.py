"""Audio: decoding (io), waveform quality metrics (quality), timelines and the CLAP encoder (clap).

Importing this package registers the ``audio`` modality (:mod:`.plugin`) and the CLAP model
family; the decoders (PyAV, libsndfile) load with the first recording.
"""
from __future__ import annotations

from . import clap  # noqa: F401  (registers the "clap" family)
from .plugin import AUDIO
from .quality import METRIC_INFO, METRIC_NAMES, compute_metrics

__all__ = ["AUDIO", "AudioClip", "AudioLimits", "load_audio", "compute_metrics", "METRIC_NAMES", "METRIC_INFO"]


def __getattr__(name: str):
    if name in ("AudioClip", "AudioLimits", "load_audio"):
        from . import io

        return getattr(io, name)
    raise AttributeError(f"module 'medzero.audio' has no attribute {name!r}")
