"""CLAP's log-mel features without the per-frame Python loop, and without torch or transformers' processor.

:class:`MelFeatures` computes what ``ClapFeatureExtractor._np_extract_fbank_features`` computes
(the same Hann window, reflect padding, float64 FFT stored as complex64, power, mel filters, floor
and dB conversion, in the same order), but frames a block of the waveform at once and runs one FFT
and one filter-bank product per block instead of one FFT per frame. The result equals the
extractor's to float32 rounding, not always bit for bit: the filter-bank product goes through BLAS
with other matrix shapes, whose summation order depends on the CPU's kernels, and a float64 value
one unit apart can round to the neighbouring complex64 or float32 value. Tests bound the difference
(one float32 unit in the last place, plus 5.2e-7 dB from the complex64 rounding). It carries the
extractor's settings and both filter banks, which it can save beside an ONNX export and load
without importing transformers (whose feature-extraction module imports torch). The periodic Hann
window and the dB conversion are transformers' ``window_function`` and ``power_to_db`` written out.

:func:`shrink_rows` is ``torch.nn.functional.interpolate(..., mode="bilinear", align_corners=False)``
along the frame axis, the "shrink" of a long clip's whole mel to the model's input length. It
equals torch's to float32 rounding, not bit for bit: torch's CPU kernels round the source
positions once or twice depending on the instruction set they were built for (a fused
multiply-add or not), which moves a weight by up to a float32 unit of the position.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["MelFeatures", "shrink_rows"]

#: The extractor settings medzero uses (and records in model packs).
SETTINGS = (
    "sampling_rate", "feature_size", "fft_window_size", "hop_length", "max_length_s", "nb_max_samples",
    "padding", "truncation", "frequency_min", "frequency_max", "top_db",
)
_BLOCK = 256  # frames per FFT call: 256 × 1024 float64 samples = 2 MB, each of the few temporaries of a block
# (a 1024-frame block had 30 MB of them, the most a decoding thread of the service held)


class MelFeatures:
    """A CLAP feature extractor's settings and filter banks, with a vectorised log-mel spectrogram."""

    def __init__(self, settings: dict[str, Any], mel_filters: np.ndarray, mel_filters_slaney: np.ndarray):
        for key in SETTINGS:
            setattr(self, key, settings.get(key))
        self.mel_filters = np.asarray(mel_filters, dtype=np.float64)
        self.mel_filters_slaney = np.asarray(mel_filters_slaney, dtype=np.float64)
        self._window: np.ndarray | None = None

    @classmethod
    def of(cls, extractor: Any) -> "MelFeatures":
        """From a transformers ``ClapFeatureExtractor``."""
        return cls({key: getattr(extractor, key, None) for key in SETTINGS}, extractor.mel_filters, extractor.mel_filters_slaney)

    def save(self, directory: Path) -> list[str]:
        (directory / "mel_features.json").write_text(json.dumps({key: getattr(self, key) for key in SETTINGS}), encoding="utf-8")
        np.savez(directory / "mel_filters.npz", mel_filters=self.mel_filters, mel_filters_slaney=self.mel_filters_slaney)
        return ["mel_features.json", "mel_filters.npz"]

    @classmethod
    def load(cls, directory: Path) -> "MelFeatures":
        settings = json.loads((directory / "mel_features.json").read_text(encoding="utf-8"))
        with np.load(directory / "mel_filters.npz") as filters:
            return cls(settings, filters["mel_filters"], filters["mel_filters_slaney"])

    def window(self) -> np.ndarray:
        if self._window is None:  # transformers' window_function(n, "hann"), periodic
            self._window = np.hanning(int(self.fft_window_size) + 1)[:-1].astype(np.float64)
        return self._window

    def _np_extract_fbank_features(self, waveform: np.ndarray, mel_filters: np.ndarray) -> np.ndarray:
        """(frames, mels) float32 log-mel spectrogram, equal to the extractor's to float32 rounding (see the module docstring).

        Each block of frames is framed from its own float64 copy of the samples it spans (reflected at
        the ends, as ``np.pad(mode="reflect")`` pads): a 10-minute recording at 48 kHz never gets a
        whole float64 copy, whose 230 MB of fresh pages cost more than the FFTs (0.5-1 s)."""
        n, hop = int(self.fft_window_size), int(self.hop_length)
        x = np.asarray(waveform)
        if x.size <= n // 2:  # too short to reflect without repeating: numpy's own padding
            return self._mel_blocks(np.pad(x.astype(np.float64), (n // 2, n // 2), mode="reflect"), 0, mel_filters)
        frames = 1 + x.size // hop  # of the padded signal: 1 + (size + n - n) // hop
        return self._mel_blocks(x, frames, mel_filters)

    def _mel_blocks(self, x: np.ndarray, frames: int, mel_filters: np.ndarray) -> np.ndarray:
        """The log-mel frames of ``x``: ``frames`` > 0 pads ``x`` block by block, 0 means ``x`` is padded already."""
        n, hop = int(self.fft_window_size), int(self.hop_length)
        padded = frames == 0
        if padded:
            frames = 1 + (x.size - n) // hop
        filters_t = np.ascontiguousarray(np.asarray(mel_filters, dtype=np.float64).T)
        window = self.window()
        out = np.empty((frames, filters_t.shape[0]), dtype=np.float32)
        for start in range(0, frames, _BLOCK):
            count = min(_BLOCK, frames - start)
            lo, hi = start * hop, (start + count - 1) * hop + n  # padded-signal samples of these frames
            piece = x[lo:hi].astype(np.float64, copy=False) if padded else _reflected(x, lo - n // 2, hi - n // 2)
            view = np.lib.stride_tricks.sliding_window_view(piece, n)[::hop]
            spectrum = np.fft.rfft(view * window, axis=-1).astype(np.complex64)
            power = np.abs(spectrum, dtype=np.float64) ** 2.0
            mel = np.maximum(1e-10, np.dot(filters_t, power.T)).T
            # transformers' power_to_db(mel, reference=1.0, min_value=1e-10, db_range=None), block by
            # block (elementwise, so equal), into float32: no whole float64 spectrogram is ever held
            out[start : start + count] = 10.0 * (np.log10(np.clip(mel, a_min=1e-10, a_max=None)) - np.log10(1.0))
        return out


def _reflected(x: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """``x[lo:hi]`` as float64, indices outside ``x`` reflected as ``np.pad(mode="reflect")`` does
    (``-i`` before the start, ``2 * (size - 1) - i`` past the end; the padding is shorter than ``x``)."""
    size = x.size
    if lo >= 0 and hi <= size:
        return x[lo:hi].astype(np.float64)
    index = np.arange(lo, hi)
    index = np.where(index < 0, -index, index)
    index = np.where(index >= size, 2 * (size - 1) - index, index)
    return x[index].astype(np.float64)


def shrink_rows(mel: np.ndarray, rows: int) -> np.ndarray:
    """``mel`` (frames, mels) resized to ``rows`` frames as torch's bilinear interpolation with
    ``align_corners=False`` does it, in the input's precision; the mel axis keeps its size, so it
    is left as it is.

    For float32 input each source position ``scale * (i + 0.5) - 0.5`` is rounded to float32 once,
    as torch's vectorised x86 kernels compute it (one fused multiply-add); torch's generic kernel
    rounds twice, which moves a position by at most one float32 unit of the frame count. For
    float64 input everything is float64.
    """
    mel = np.asarray(mel)
    real = mel.dtype.type if mel.dtype in (np.float32, np.float64) else np.float64
    size = mel.shape[0]
    scale = real(size) / real(rows)  # rounded to the input's precision, as torch computes it
    # Exact in float64 for float32 operands (a 24-bit by 24-bit product), then one rounding.
    exact = np.float64(scale) * (np.arange(rows, dtype=np.float64) + 0.5) - 0.5
    source = np.maximum(exact.astype(real), real(0))
    lower = source.astype(np.int64)
    upper = lower + (lower < size - 1)
    weight_upper = np.clip(source - lower.astype(real), real(0), real(1))[:, None]
    return (real(1) - weight_upper) * mel[lower] + weight_upper * mel[upper]
