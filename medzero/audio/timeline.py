"""Timelines of long recordings: window scores and the top segments per label.

A recording longer than the model's input (10 s for CLAP) is scored as a whole from its fused
embedding; its timeline scores windows of ``window_s`` on a grid every ``hop_s`` (plus one window
flush with the end), embedded ``batch_size`` windows at a time so memory does not grow with the
length. The verdict comes from the whole-recording scores, never from the timeline.

The windows' forward passes are most of the cost of a long recording (119 for 10 minutes), so by
default the timeline is scored in two passes (``refine``):

1. a coarse pass, every ``window_s`` on the grid (windows side by side, so every second of the
   recording is in one), and the last window;
2. a refinement: for the top window of every label, and for every top window of the labels that
   decide the verdict (a label among the result's reasons), the grid windows between it and the
   better of its two coarse neighbours: where a stretch that straddles two coarse windows is
   heard whole.

A task may also skip the windows in which the VAD heard no speech (``timeline: {skip_without_speech:
true}``, voice_quality's choice: a silent stretch cannot be judged on the voice). The timeline lists
every window it reports in time order; a skipped window has ``None`` scores and its index in
``skipped``, a refined one its index in ``refined``. ``MEDZERO_TIMELINE=full`` scores every window
of the grid, as medzero did before the two passes.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..core.errors import BadInputError
from ..core.ingest import map_ahead
from ..core.results import Result, Segment

__all__ = ["window_starts", "timeline", "add_timeline", "MODES"]

log = logging.getLogger(__name__)

#: ``refine`` (the default: a coarse pass, then refinement around the top windows) or ``full``
#: (every window of the grid), from ``options["timeline"]`` or ``MEDZERO_TIMELINE``.
MODES = ("refine", "full")
#: Grids shorter than this (recordings under about a minute) are scored whole: two passes would
#: save a few windows (0.1 s each on 2 cores) and the full pass leaves nothing to miss.
MIN_REFINE_WINDOWS = 12


def window_starts(n_samples: int, rate: int, window_s: float, hop_s: float) -> list[int]:
    """Window start samples every ``hop_s``, plus one window flush with the end so the tail is covered."""
    width, hop = int(round(window_s * rate)), max(1, int(round(hop_s * rate)))
    if n_samples <= width:
        return [0]
    starts = list(range(0, n_samples - width + 1, hop))
    if starts[-1] + width < n_samples:
        starts.append(n_samples - width)
    return starts


def coarse_indices(n_windows: int, step: int) -> list[int]:
    """Every ``step``-th grid window and the last one: windows side by side that cover the recording."""
    chosen = list(range(0, n_windows, max(1, step)))
    if chosen[-1] != n_windows - 1:
        chosen.append(n_windows - 1)
    return chosen


def silent_indices(starts: Sequence[int], width: int, rate: int, speech: Iterable[tuple[float, float]]) -> set[int]:
    """The windows that overlap no speech segment (start, end seconds) at all."""
    spans = [(float(a) * rate, float(b) * rate) for a, b in speech]
    return {i for i, s in enumerate(starts) if not any(a < s + width and b > s for a, b in spans)}


def refine_indices(
    scores: Mapping[int, np.ndarray], focus: Sequence[int], n_labels: int, top_segments: int, width_windows: int
) -> list[int]:
    """Grid windows to score next: between each top coarse window and its better coarse neighbour.

    ``scores`` maps the scored grid indices to their score rows; every label's top window is
    refined, and each of the ``top_segments`` top windows of the labels in ``focus`` (their
    columns). ``width_windows`` grid steps make one window width (top windows closer than half of
    it overlap, as :func:`_top_windows` counts them)."""
    scored = sorted(scores)
    wanted: set[int] = set()
    for j in range(n_labels):
        column = {i: float(scores[i][j]) for i in scored}
        count = top_segments if j in focus else 1
        for top in _top_windows(scored, column, count, width_windows):
            position = scored.index(top)
            neighbours = [scored[p] for p in (position - 1, position + 1) if 0 <= p < len(scored)]
            if not neighbours:
                continue
            better = max(neighbours, key=lambda i: column[i])
            wanted.update(range(min(top, better) + 1, max(top, better)))
    return sorted(wanted - set(scored))


def _top_windows(indices: Sequence[int], column: Mapping[int, float], count: int, width_windows: int) -> list[int]:
    """The ``count`` best windows that do not overlap by half a window (in time order of the grid)."""
    chosen: list[int] = []
    for i in sorted(indices, key=lambda i: (-column[i], i)):
        if all(abs(i - c) * 2 >= width_windows for c in chosen):
            chosen.append(i)
        if len(chosen) == count:
            break
    return chosen


def timeline(
    samples: np.ndarray, encoder, head, *, window_s: float, hop_s: float, batch_size: int, top_segments: int,
    whole: Any = None, mode: str = "refine", focus: Iterable[str] = (), speech: Iterable[tuple[float, float]] | None = None,
) -> tuple[dict[str, Any], list[Segment]]:
    """Window scores over a long recording and the top non-overlapping windows per label.

    ``whole`` is the recording's model input (what the encoder's ``prepare_input`` returned), which
    an encoder with ``window_inputs`` cuts the windows' features from; ``mode`` and ``focus`` (label
    ids that decide the verdict) steer the two passes (module docstring); ``speech`` (VAD segments,
    seconds), when given, skips the windows without any.
    """
    if mode not in MODES:
        raise BadInputError(f"timeline mode {mode!r} is not one of {', '.join(MODES)}")
    rate = encoder.sample_rate
    starts = window_starts(len(samples), rate, window_s, hop_s)
    width = int(round(window_s * rate))
    skipped = silent_indices(starts, width, rate, speech) if speech is not None else set()
    label_ids = head.task.label_ids()
    steps = window_s / hop_s
    two_pass = (mode == "refine" and steps >= 2 and abs(steps - round(steps)) < 1e-9
                and len(starts) >= MIN_REFINE_WINDOWS)
    first = coarse_indices(len(starts), int(round(steps))) if two_pass else list(range(len(starts)))
    scores = _score(samples, starts, width, [i for i in first if i not in skipped], encoder, head, batch_size, whole)
    refined: list[int] = []
    if two_pass:
        focus_columns = [j for j, label_id in enumerate(label_ids) if label_id in set(focus)]
        wanted = refine_indices(scores, focus_columns, len(label_ids), top_segments, int(round(steps)))
        refined = [i for i in wanted if i not in skipped]
        scores.update(_score(samples, starts, width, refined, encoder, head, batch_size, whole))
    reported = sorted(set(scores) | skipped)
    times = {i: (starts[i] / rate, min(starts[i] + width, len(samples)) / rate) for i in reported}
    result = {
        "window_s": window_s,
        "hop_s": hop_s,
        "mode": "refine" if two_pass else "full",
        "start": [round(times[i][0], 3) for i in reported],
        "end": [round(times[i][1], 3) for i in reported],
        "scores": {
            label_id: [float(scores[i][j]) if i in scores else None for i in reported] for j, label_id in enumerate(label_ids)
        },
        "skipped": [k for k, i in enumerate(reported) if i in skipped],
        "refined": [k for k, i in enumerate(reported) if i in set(refined)],
    }
    if two_pass:
        result["coarse_hop_s"] = window_s
    log.debug("timeline: %d windows scored of %d on the grid (%d skipped without speech)", len(scores), len(starts), len(skipped))
    segments = []
    scored = sorted(scores)
    for j, label_id in enumerate(label_ids):
        column = {i: float(scores[i][j]) for i in scored}
        for i in _top_segment_windows(scored, column, starts, width, top_segments):
            segments.append(Segment(label_id, round(times[i][0], 3), round(times[i][1], 3), column[i]))
    return result, segments


def _top_segment_windows(scored: Sequence[int], column: Mapping[int, float], starts: Sequence[int], width: int, count: int) -> list[int]:
    """The top ``count`` windows of a label whose starts are at least half a window apart."""
    chosen: list[int] = []
    for i in sorted(scored, key=lambda i: (-column[i], i)):
        if all(abs(starts[i] - starts[c]) >= width // 2 for c in chosen):
            chosen.append(i)
        if len(chosen) == count:
            break
    return chosen


def _score(
    samples: np.ndarray, starts: Sequence[int], width: int, indices: Sequence[int], encoder, head, batch_size: int, whole: Any
) -> dict[int, np.ndarray]:
    """Score rows of the windows ``indices``, a batch at a time, the next batch's features made ahead."""
    if not indices:
        return {}
    cut = getattr(encoder, "window_inputs", None)
    prepare = getattr(encoder, "prepare_input", None)

    def inputs(batch: list[int]) -> list[Any]:  # the next batch's features, in a worker thread
        if cut is not None:
            return cut(samples, [starts[i] for i in batch], width, whole)
        windows = [samples[starts[i] : starts[i] + width] for i in batch]
        return [prepare(w) for w in windows] if prepare is not None else windows

    batches = [list(indices[b : b + batch_size]) for b in range(0, len(indices), batch_size)]
    rows = np.concatenate([head.scores(encoder.embed(ready)) for ready in map_ahead(inputs, batches)])
    return dict(zip(indices, rows))


def _mode(options: Mapping[str, Any]) -> str:
    mode = str(options.get("timeline") or os.environ.get("MEDZERO_TIMELINE") or "refine").strip().lower()
    if mode not in MODES:
        raise BadInputError(f"MEDZERO_TIMELINE={mode!r} is not one of {', '.join(MODES)}")
    return mode


def _speech_to_skip(prepared, task) -> list[tuple[float, float]] | None:
    """The VAD's segments when the task skips windows without speech and the VAD ran, else ``None``."""
    settings = getattr(task, "timeline", None)
    if settings is None or not settings.skip_without_speech:
        return None
    if "vad" not in (prepared.metadata or {}).get("quality_models", {}):
        return None  # without the VAD nothing can tell a silent window: every window is scored
    return list(prepared.speech_segments)


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
            whole=prepared.input,
            mode=_mode(options),
            focus=[r.id for r in result.reasons if r.kind == "label"],
            speech=_speech_to_skip(prepared, head.task),
        )
