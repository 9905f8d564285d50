"""Audio: decoding (io), waveform quality metrics (quality) and the CLAP encoder (clap).

Importing this package registers the CLAP model family and its named models.
"""
from . import clap  # noqa: F401  (registers the "clap" family)
from .io import AudioClip, AudioLimits, load_audio
from .quality import METRIC_INFO, METRIC_NAMES, compute_metrics

__all__ = ["AudioClip", "AudioLimits", "load_audio", "compute_metrics", "METRIC_NAMES", "METRIC_INFO"]
