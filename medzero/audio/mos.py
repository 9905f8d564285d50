"""DNSMOS P.835: a trained, non-intrusive speech quality predictor (SIG, BAK, OVRL on a 1-5 scale).

Microsoft's DNSMOS P.835 (Reddy et al., ICASSP 2022) predicts what listeners would rate a recording
under ITU-T P.835: ``mos_sig`` the speech signal itself (distortion), ``mos_bak`` the background
(noise intrusiveness), ``mos_ovrl`` the overall quality. No clean reference is needed. The model is
``dnsmos_models/sig_bak_ovr.onnx`` as the ``speechmos`` wheel ships it (package MIT, model CC BY 4.0);
it is read from the installed package and never copied. Pin ``speechmos`` (the ``voice`` extra
does): :func:`fingerprint` names the file's sha256, so a different file gives a different
fingerprint.

Why not ``speechmos.dnsmos.run``: importing ``speechmos`` imports librosa and requests, and its
``run`` also computes P.808 from a librosa mel spectrogram. Here the same ONNX graph runs on ONNX
Runtime with numpy only; the package is found with :func:`importlib.util.find_spec` without being
imported, and torch is never imported.

The algorithm is Microsoft's (``dnsmos_local.py``, ``speechmos/dnsmos.py``), reproduced exactly:

* audio at 16 kHz (resampled with soxr "HQ", as :mod:`medzero.audio.io` does);
* a clip shorter than one 9.01 s window is doubled (``np.append(audio, audio)``) until it fills one;
* windows of ``int(9.01 * 16000)`` samples every second, ``int(floor(seconds) - 9.01) + 1`` of them;
  a window whose float end ``int((i + 9.01) * 16000)`` truncates one sample short is skipped, as
  the official loop skips it (i = 7..23, 119..., a quirk of the reference kept so that scores match);
* each window's raw outputs mapped by the non-personalised polynomials, then averaged.

The one departure bounds the work on long recordings: at most :data:`MAX_WINDOWS` windows, chosen
evenly (first and last included) among the official ones, are scored. The official score is the
mean over windows; an even spread samples the beginning, middle and end alike, so a noisy stretch
anywhere weighs in proportion to its length, while the cost stays at ``MAX_WINDOWS`` windows
however long the recording. With 34 windows the score is exactly the official one for recordings
up to 60 s (the longest WeChat voice note has 34 official windows); a 10-minute recording costs
what a 60 s one does.

One ONNX Runtime session per process, created on first use under a lock; ``InferenceSession.run``
is thread-safe, so :func:`measure` may be called from several threads.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import logging
import math
import threading
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import soxr

from medzero.core.errors import BadInputError, ModelUnavailableError, one_line
from medzero.encoders.backends import cpu_session

__all__ = [
    "MAX_WINDOWS",
    "SAMPLE_RATE",
    "WINDOW_SAMPLES",
    "available",
    "fingerprint",
    "measure",
    "covering_windows",
    "model_path",
    "require",
    "window_starts",
]

log = logging.getLogger(__name__)

#: The rate DNSMOS was trained at.
SAMPLE_RATE = 16_000
#: Window length in seconds, as the reference writes it (the float matters: see window_starts).
INPUT_LENGTH_S = 9.01
#: Samples per window: ``int(9.01 * 16000)`` = 144,160.
WINDOW_SAMPLES = int(INPUT_LENGTH_S * SAMPLE_RATE)
#: Most windows scored per recording; more official windows are subsampled evenly.
MAX_WINDOWS = 34

_PACKAGE = "speechmos"
_MODEL_FILE = ("dnsmos_models", "sig_bak_ovr.onnx")
_INSTALL_HINT = "pip install 'medzero[voice]'"

# The reference's non-personalised P.835 mappings from raw network output to MOS (highest power first).
_POLY_SIG = (-0.08397278, 1.22083953, 0.0052439)
_POLY_BAK = (-0.13166888, 1.60915514, -0.39604546)
_POLY_OVRL = (-0.06766283, 1.11546468, 0.04602535)

_LOCK = threading.Lock()
_SESSION: Any = None
_FINGERPRINT: Optional[str] = None


def model_path() -> Optional[Path]:
    """The installed ``speechmos`` package's ``dnsmos_models/sig_bak_ovr.onnx``, or None.

    Found through the import system's spec without importing the package (its ``__init__`` is
    harmless but ``speechmos.dnsmos`` imports librosa and requests)."""
    try:
        spec = importlib.util.find_spec(_PACKAGE)
    except (ImportError, ValueError):  # a broken install, or sys.modules["speechmos"] is None
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder).joinpath(*_MODEL_FILE)
        if path.is_file():
            return path
    return None


def available() -> bool:
    """Whether DNSMOS can run here: ``speechmos`` installed with its model file, and ONNX Runtime."""
    return model_path() is not None and importlib.util.find_spec("onnxruntime") is not None


def require() -> Path:
    """The model file; raises :class:`ModelUnavailableError` (one line, with the install command)
    when DNSMOS cannot run, for callers that need the MOS rather than skipping it."""
    path = model_path()
    if path is None:
        raise ModelUnavailableError(f"DNSMOS P.835 needs the speechmos package and its model file: {_INSTALL_HINT}")
    if importlib.util.find_spec("onnxruntime") is None:
        raise ModelUnavailableError(f"DNSMOS P.835 needs onnxruntime: {_INSTALL_HINT}")
    return path


def fingerprint() -> str:
    """``dnsmos-p835 speechmos-<version> sha256:<first 16 hex of the ONNX file's sha256>``.

    Goes into a result's model fingerprint, so scores from another model file are told apart."""
    global _FINGERPRINT
    if _FINGERPRINT is None:
        path = require()
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        try:
            version = importlib.metadata.version(_PACKAGE)
        except importlib.metadata.PackageNotFoundError:  # files present without metadata
            version = "unknown"
        _FINGERPRINT = f"dnsmos-p835 {_PACKAGE}-{version} sha256:{digest}"
    return _FINGERPRINT


def window_starts(n_samples: int, max_windows: int = MAX_WINDOWS) -> list[int]:
    """Start samples of the windows scored for a 16 kHz signal of ``n_samples`` (after filling).

    The official windows are ``audio[int(i * 16000) : int((i + 9.01) * 16000)]`` for
    ``i < int(floor(n / 16000) - 9.01) + 1``, minus those one sample short, which the reference
    skips. More than ``max_windows`` of them are thinned to ``max_windows`` evenly spread ones."""
    if max_windows < 1:
        raise ValueError(f"max_windows must be at least 1, not {max_windows}")
    num_hops = int(np.floor(n_samples / SAMPLE_RATE) - INPUT_LENGTH_S) + 1
    starts = [
        int(i * SAMPLE_RATE)
        for i in range(num_hops)
        if min(int((i + INPUT_LENGTH_S) * SAMPLE_RATE), n_samples) - int(i * SAMPLE_RATE) >= WINDOW_SAMPLES
    ]
    if len(starts) <= max_windows:
        return starts
    picks = np.unique(np.round(np.linspace(0, len(starts) - 1, max_windows)).astype(int))
    return [starts[k] for k in picks]


def covering_windows(n_samples: int, max_windows: int = MAX_WINDOWS) -> int:
    """How many windows hear every stretch of a 16 kHz recording of ``n_samples`` once: one per
    9.01 s of it, at least one, at most ``max_windows``.

    The reference scores a window every second, so a clip is heard about nine times over (and a
    clip under 9.01 s, repeated to fill a window, up to seven times over); those windows overlap
    and average to nearly the same score. On the clips of tests/test_mos.py (7.3 s clean and in
    pink noise, 40 s) this moves SIG, BAK and OVRL by at most 0.08 on the 1-5 scale and costs a
    seventh of the time for a short clip: what the audio plug-in runs on every recording.
    :func:`measure` with its default is the reference."""
    return max(1, min(max_windows, math.ceil(n_samples / WINDOW_SAMPLES)))


def measure(samples: np.ndarray, sample_rate: int, *, max_windows: int = MAX_WINDOWS) -> dict[str, float]:
    """DNSMOS P.835 of a mono recording: ``{"mos_sig", "mos_bak", "mos_ovrl"}``, each about 1-5.

    ``samples`` are float in [-1, 1] (values outside are clipped, as a decoder would) at
    ``sample_rate`` Hz; they are resampled to 16 kHz. Raises :class:`BadInputError` for an empty,
    non-finite or multi-channel array or a bad rate, :class:`ModelUnavailableError` when
    ``speechmos`` is not installed."""
    audio = _as_16k(samples, sample_rate)
    session = _session()
    started = time.perf_counter()
    audio = _fill(audio)
    starts = window_starts(len(audio), max_windows)
    raw = np.stack([_run_window(session, audio[s : s + WINDOW_SAMPLES]) for s in starts]).astype(np.float64)
    scores = {
        "mos_sig": float(np.mean(np.polyval(_POLY_SIG, raw[:, 0]))),
        "mos_bak": float(np.mean(np.polyval(_POLY_BAK, raw[:, 1]))),
        "mos_ovrl": float(np.mean(np.polyval(_POLY_OVRL, raw[:, 2]))),
    }
    log.debug("DNSMOS: %d windows of %.1f s audio in %.2f s", len(starts), len(audio) / SAMPLE_RATE, time.perf_counter() - started)
    return scores


def _as_16k(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """The clip as float32 at 16 kHz in [-1, 1]; a one-line BadInputError for what cannot be scored."""
    audio = np.asarray(samples)
    if audio.ndim != 1 or audio.size == 0:
        raise BadInputError(f"DNSMOS needs a non-empty mono signal, got an array of shape {audio.shape}")
    if not np.issubdtype(audio.dtype, np.floating):
        raise BadInputError(f"DNSMOS needs float samples in [-1, 1], got {audio.dtype}")
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or not 0 < sample_rate <= 768_000:
        raise BadInputError(f"DNSMOS needs an integer sample rate between 1 and 768000 Hz, got {sample_rate!r}")
    if not np.isfinite(audio).all():
        raise BadInputError("DNSMOS cannot score a signal with NaN or infinite samples")
    audio = audio.astype(np.float32, copy=False)
    if sample_rate != SAMPLE_RATE:
        audio = soxr.resample(audio, int(sample_rate), SAMPLE_RATE, quality="HQ").astype(np.float32, copy=False)
        if audio.size == 0:
            raise BadInputError(f"DNSMOS: {len(samples)} samples at {sample_rate} Hz are too short to resample")
    return np.clip(audio, -1.0, 1.0)


def _fill(audio: np.ndarray) -> np.ndarray:
    """A clip shorter than one window, doubled until it fills one (the reference's loop)."""
    repeats = 0
    while len(audio) * 2**repeats < WINDOW_SAMPLES:
        repeats += 1
    return np.tile(audio, 2**repeats) if repeats else audio


def _run_window(session: Any, window: np.ndarray) -> np.ndarray:
    """The network's raw (SIG, BAK, OVRL) for one window of WINDOW_SAMPLES samples."""
    return session.run(None, {"input_1": window[np.newaxis, :]})[0][0]


def _session() -> Any:
    """The process's one ONNX Runtime session, created on first use (double-checked under a lock)."""
    global _SESSION
    if _SESSION is None:
        with _LOCK:
            if _SESSION is None:
                _SESSION = _open(require())
    return _SESSION


def _open(path: Path) -> Any:
    try:
        session = cpu_session(path)
    except Exception as e:  # a truncated or foreign file: ORT raises its own exception types
        raise ModelUnavailableError(f"DNSMOS P.835 model {path.name} cannot be loaded: {one_line(e)}") from None
    log.info("DNSMOS P.835 loaded from %s", path)
    return session

