"""Timelines of long recordings: window scores and the top segments per label.

A recording longer than the model's input (10 s for CLAP) is scored as a whole from its fused
embedding; its timeline scores windows of ``window_s`` every ``hop_s`` (plus one window flush with
the end), embedded ``batch_size`` windows at a time so memory does not grow with the length.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ..core.ingest import map_ahead
from ..core.results import Result, Segment

__all__ = ["window_starts", "timeline", "add_timeline"]


def window_starts(n_samples: int, rate: int, window_s: float, hop_s: float) -> list[int]:
    """Window start samples every ``hop_s``, plus one window flush with the end so the tail is covered."""
    width, hop = int(round(window_s * rate)), max(1, int(round(hop_s * rate)))
    if n_samples <= width:
        return [0]
    starts = list(range(0, n_samples - width + 1, hop))
    if starts[-1] + width < n_samples:
        starts.append(n_samples - width)
    return starts


def timeline(
    samples: np.ndarray, encoder, head, *, window_s: float, hop_s: float, batch_size: int, top_segments: int
) -> tuple[dict[str, Any], list[Segment]]:
    """Window scores over a long recording and the top non-overlapping windows per label."""
    rate = encoder.sample_rate
    starts = window_starts(len(samples), rate, window_s, hop_s)
    width = int(round(window_s * rate))
    prepare = getattr(encoder, "prepare_input", None)

    def inputs(batch: list[int]) -> list[Any]:  # the next batch's features, in a worker thread
        windows = [samples[s : s + width] for s in batch]
        return [prepare(w) for w in windows] if prepare is not None else windows

    batches = [starts[b : b + batch_size] for b in range(0, len(starts), batch_size)]
    scores = np.concatenate([head.scores(encoder.embed(ready)) for ready in map_ahead(inputs, batches)])
    times = [(s / rate, min(s + width, len(samples)) / rate) for s in starts]
    label_ids = head.task.label_ids()
    result = {
        "window_s": window_s,
        "hop_s": hop_s,
        "start": [round(t[0], 3) for t in times],
        "end": [round(t[1], 3) for t in times],
        "scores": {label_id: [float(v) for v in scores[:, j]] for j, label_id in enumerate(label_ids)},
    }
    segments = []
    for j, label_id in enumerate(label_ids):
        chosen: list[int] = []
        for w in np.argsort(-scores[:, j], kind="stable"):
            if all(abs(starts[w] - starts[c]) >= width // 2 for c in chosen):
                chosen.append(int(w))
            if len(chosen) == top_segments:
                break
        segments += [Segment(label_id, round(times[c][0], 3), round(times[c][1], 3), float(scores[c, j])) for c in chosen]
    return result, segments


def add_timeline(result: Result, prepared, encoder, head, options: Mapping[str, Any]) -> None:
    """The audio modality's post-processing: a timeline for recordings longer than the model input."""
    samples = prepared.item.samples
    if len(samples) > encoder.max_samples:
        result.timeline, result.segments = timeline(
            samples,
            encoder,
            head,
            window_s=float(options.get("window_s", 10.0)),
            hop_s=float(options.get("hop_s", 5.0)),
            batch_size=int(options.get("batch_size", 8)),
            top_segments=int(options.get("top_segments", 3)),
        )
