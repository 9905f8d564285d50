"""Voice activity: Silero VAD (v6, MIT) on ONNX Runtime with numpy alone, never torch.

The model is the ``silero_vad.onnx`` file inside the ``silero-vad`` wheel, found through
``importlib.util.find_spec`` without importing the package (its ``__init__`` imports torch). It
reads 32 ms frames at 16 kHz: each call takes 64 samples of context (the end of the previous
frame) and 512 new samples, the LSTM ``state`` [2, 1, 128] of the previous call and ``sr``, and
returns the frame's speech probability and the next state, exactly as ``silero_vad.utils_vad.
OnnxWrapper`` feeds it. Segments come from those probabilities by the state machine of
``get_speech_timestamps`` with its defaults: speech starts at a probability >= 0.5, ends after
100 ms under 0.35, segments under 250 ms are dropped, and each is padded by 30 ms.

Without the package :func:`available` is False and callers fall back to the spectral heuristic of
:mod:`medzero.audio.quality`. One ONNX session per process, made on first use, one thread.
"""
from __future__ import annotations

import hashlib
import importlib.util
import logging
import threading
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import numpy as np

__all__ = ["RATE", "FRAME", "available", "fingerprint", "speech_probabilities", "speech_segments"]

log = logging.getLogger(__name__)

#: The model's sample rate and frame (32 ms), and the context it keeps from the previous frame.
RATE = 16000
FRAME = 512
CONTEXT = 64
#: ``get_speech_timestamps`` defaults.
THRESHOLD = 0.5
NEG_THRESHOLD = THRESHOLD - 0.15
MIN_SPEECH_S = 0.250
MIN_SILENCE_S = 0.100
SPEECH_PAD_S = 0.030

_lock = threading.Lock()
_session = None


@lru_cache(maxsize=1)
def _model_path() -> Path | None:
    """The ONNX file inside the installed wheel, or None; the package itself is not imported."""
    try:
        spec = importlib.util.find_spec("silero_vad")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location) / "data" / "silero_vad.onnx"
        if path.is_file():
            return path
    return None


def available() -> bool:
    """Whether the Silero VAD model is installed (the ``silero-vad`` wheel) and ONNX Runtime with it."""
    return _model_path() is not None and importlib.util.find_spec("onnxruntime") is not None


@lru_cache(maxsize=1)
def fingerprint() -> str:
    """``silero-vad <version> sha256:<16 hex of the ONNX file>``: what measured the speech."""
    path = _model_path()
    if path is None:
        return ""
    try:
        version = metadata.version("silero-vad")
    except metadata.PackageNotFoundError:
        version = "unknown"
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return f"silero-vad {version} sha256:{digest}"


def _get_session():
    """The process's one session (ONNX Runtime's ``run`` is thread-safe), one thread of its own."""
    global _session
    with _lock:
        if _session is None:
            import onnxruntime as ort

            path = _model_path()
            if path is None:
                raise RuntimeError("Silero VAD is not installed (pip install silero-vad)")
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            options.inter_op_num_threads = 1
            options.log_severity_level = 3
            _session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
            log.debug("Silero VAD loaded from %s", path)
        return _session


def _at_16k(samples: np.ndarray, rate: int) -> np.ndarray:
    """Mono float32 at 16 kHz (soxr HQ, as the audio loader resamples), C-contiguous."""
    x = np.ascontiguousarray(samples, dtype=np.float32)
    if rate != RATE and len(x):
        import soxr

        x = soxr.resample(x, rate, RATE, quality="HQ").astype(np.float32, copy=False)
    return x


def speech_probabilities(samples: np.ndarray, rate: int) -> np.ndarray:
    """Speech probability of each 32 ms frame of the recording at 16 kHz (the last one zero-padded).

    Frame ``i`` covers ``[i * 0.032, (i + 1) * 0.032)`` seconds."""
    x = _at_16k(samples, rate)
    n_frames = -(-len(x) // FRAME)
    if n_frames == 0:
        return np.zeros(0, np.float32)
    padded = np.zeros(n_frames * FRAME + CONTEXT, np.float32)
    padded[CONTEXT : CONTEXT + len(x)] = x  # the first frame's context is zeros, as in OnnxWrapper
    session = _get_session()
    state = np.zeros((2, 1, 128), np.float32)
    sr = np.array(RATE, dtype=np.int64)
    probs = np.empty(n_frames, np.float32)
    window = FRAME + CONTEXT
    for i in range(n_frames):
        start = i * FRAME
        chunk = padded[start : start + window][None, :]
        out, state = session.run(None, {"input": chunk, "state": state, "sr": sr})
        probs[i] = out.reshape(-1)[0]
    return probs


def speech_segments(samples: np.ndarray, rate: int) -> list[tuple[float, float]]:
    """Speech segments ``(start, end)`` in seconds of the recording, in order, never overlapping."""
    n = len(samples)
    if n == 0:
        return []
    probs = speech_probabilities(samples, rate)
    length = round(n * RATE / rate)
    return [(round(s / RATE, 3), round(e / RATE, 3)) for s, e in segments_from_probabilities(probs, length)]


def segments_from_probabilities(probs: np.ndarray, length: int) -> list[tuple[int, int]]:
    """``get_speech_timestamps_from_probs`` with its defaults and no maximum speech length, in samples
    at 16 kHz: the hysteresis (enter at 0.5, leave after 100 ms under 0.35), 250 ms minimum, 30 ms padding."""
    min_speech, min_silence, pad = RATE * MIN_SPEECH_S, RATE * MIN_SILENCE_S, RATE * SPEECH_PAD_S
    speeches: list[list[int]] = []
    triggered, start, temp_end = False, 0, 0
    for i, p in enumerate(probs.tolist()):
        cur = FRAME * i
        if p >= THRESHOLD and temp_end:
            temp_end = 0
        if p >= THRESHOLD and not triggered:
            triggered, start = True, cur
            continue
        if p < NEG_THRESHOLD and triggered:
            if not temp_end:
                temp_end = cur
            if cur - temp_end < min_silence:
                continue
            if temp_end - start > min_speech:
                speeches.append([start, temp_end])
            triggered, temp_end = False, 0
    if triggered and length - start > min_speech:
        speeches.append([start, length])
    return _padded(speeches, length, pad)


def _padded(speeches: list[list[int]], length: int, pad: float) -> list[tuple[int, int]]:
    """Each segment widened by ``pad`` samples; two closer than twice that meet halfway."""
    for i, speech in enumerate(speeches):
        if i == 0:
            speech[0] = int(max(0, speech[0] - pad))
        if i != len(speeches) - 1:
            gap = speeches[i + 1][0] - speech[1]
            if gap < 2 * pad:
                speech[1] += int(gap // 2)
                speeches[i + 1][0] = int(max(0, speeches[i + 1][0] - gap // 2))
            else:
                speech[1] = int(min(length, speech[1] + pad))
                speeches[i + 1][0] = int(max(0, speeches[i + 1][0] - pad))
        else:
            speech[1] = int(min(length, speech[1] + pad))
    return [(s, e) for s, e in speeches]
