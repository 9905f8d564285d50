"""The public classification API: one router for both modalities.

``classify(source)`` and ``Classifier(...).classify_batch(sources)`` sniff each source's modality
from its content, load it with that modality's loader, embed it with that modality's encoder, and
score it against the task. The CLI, the Streamlit app and the benchmarks all come through here.
"""
from __future__ import annotations

import logging
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from .core import encoder as _encoders
from .core.errors import BadInputError, MedzeroError, TaskError
from .core.prompts import Task, load_task, task_from_labels
from .core.results import Result, Segment
from .core.scoring import TaskHead, build_head, evaluate
from .core.sniff import sniff_source

__all__ = ["Classifier", "Loaded", "classify", "expand_sources", "sniff_modality", "source_name", "DEFAULT_TASKS"]

_logger = logging.getLogger(__name__)

#: The task used for a modality when the caller names neither a task nor labels.
DEFAULT_TASKS = {"audio": "voice_quality", "image": "chest_xray_findings"}
_MODALITY_WORDS = {"audio": "an audio recording", "image": "an image"}


def expand_sources(sources: "Iterable[Any] | Any") -> list[Any]:
    """Paths, with every directory replaced by the audio and image files under it (sorted, by content).

    Files named explicitly are kept whatever they hold, so that a bad file gets its own error row;
    files found inside a directory are kept only when their first bytes say audio or image.
    """
    if isinstance(sources, (str, os.PathLike)) or not isinstance(sources, (list, tuple)):
        sources = [sources]
    out: list[Any] = []
    for source in sources:
        if isinstance(source, (str, os.PathLike)) and os.path.isdir(source):
            for path in sorted(Path(source).rglob("*")):
                if path.is_file() and not any(part.startswith(".") for part in path.relative_to(source).parts):
                    try:
                        modality, _ = sniff_source(path)
                    except MedzeroError:
                        continue
                    if modality in ("audio", "image"):
                        out.append(str(path))
        else:
            out.append(source)
    return out


def source_name(source: Any) -> str:
    """How results and errors call a source: its path, else ``<bytes>``, ``<array>``, a stream's name or ``<file>``."""
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "<bytes>"
    if isinstance(source, (np.ndarray, tuple, dict)):
        return "<array>"
    return getattr(source, "name", None) or "<file>"


def sniff_modality(source: Any, name: str | None = None) -> str:
    """``"audio"``, ``"image"`` or ``"array"`` from the content; anything else is a one-line error."""
    modality, _ = sniff_source(source)
    if modality is None:
        raise BadInputError(
            f"{name or source_name(source)} is neither audio nor an image (unrecognised content; expected WAV, FLAC, "
            "Ogg, MP3, M4A/AAC, AMR, DICOM, PNG, JPEG or TIFF)"
        )
    return modality


@dataclass
class Loaded:
    """A source decoded and ready to embed, or the one-line error that stopped it.

    ``item`` is an AudioClip at the audio model's rate or a LoadedImage; ``metrics`` are the
    waveform metrics of a recording; ``metadata`` is PHI-safe.
    """

    name: str
    modality: str | None = None
    item: Any = None  # AudioClip at the model rate, or LoadedImage
    metrics: dict[str, float] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    error: MedzeroError | None = None


class Classifier:
    """Keeps models and task heads loaded; classifies one source or many.

    Args:
        task: a shipped task name, a YAML path or a :class:`Task`. ``None`` with no ``labels``: the
            default task of each file's modality (``voice_quality``, ``chest_xray_findings``).
        labels: ad-hoc labels (a list, or a comma-separated string); the label id is the text.
        template: the template for ad-hoc labels (default per modality, e.g. ``This is a sound of {}.``).
        multilabel: score ad-hoc labels each on its own against a neutral negative.
        audio_model, image_model: a registered name, a local directory or a hub id (default: the
            ``MEDZERO_AUDIO_MODEL`` / ``MEDZERO_IMAGE_MODEL`` variables, else the registered default).
        device: ``auto``, ``cpu`` or ``cuda``.
        batch_size: items per forward pass.
        window_s, hop_s: the timeline windows of recordings longer than the model's 10 s input.
        top_segments: how many top windows per label a Result lists.
    """

    def __init__(
        self,
        task: "str | os.PathLike | Task | None" = None,
        *,
        labels: "str | Sequence[str] | None" = None,
        template: str | None = None,
        multilabel: bool = False,
        audio_model: str | None = None,
        image_model: str | None = None,
        device: str = "auto",
        batch_size: int = 8,
        window_s: float = 10.0,
        hop_s: float = 5.0,
        top_segments: int = 3,
        audio_limits=None,
        image_limits=None,
        workers: int = 2,
    ):
        if task is not None and labels is not None:
            raise TaskError("give either a task or labels, not both")
        if window_s <= 0 or hop_s <= 0:
            raise BadInputError("window and hop must be positive numbers of seconds")
        self._task = load_task(task) if task is not None else None
        if labels is not None:  # fail on bad labels now, not once per file
            task_from_labels(labels, modality="audio", template=template, multilabel=multilabel)
        self._labels = labels
        self._template = template
        self._multilabel = multilabel
        self._models = {"audio": audio_model, "image": image_model}
        self.device = device
        self.batch_size = max(1, int(batch_size))
        self.window_s, self.hop_s = float(window_s), float(hop_s)
        self.top_segments = int(top_segments)
        self.workers = max(1, int(workers))
        self._audio_limits = audio_limits
        self._image_limits = image_limits
        self._tasks: dict[str, Task] = {}
        self._heads: dict[str, TaskHead] = {}

    # -- resolution -------------------------------------------------------------------------
    def task_for(self, modality: str) -> Task:
        if modality not in self._tasks:
            if self._task is not None:
                if self._task.modality != modality:
                    raise TaskError(
                        f"task {self._task.name} is for {self._task.modality}, but this file is {_MODALITY_WORDS[modality]}"
                    )
                self._tasks[modality] = self._task
            elif self._labels is not None:
                self._tasks[modality] = task_from_labels(
                    self._labels, modality=modality, template=self._template, multilabel=self._multilabel
                )
            else:
                self._tasks[modality] = load_task(DEFAULT_TASKS[modality])
        return self._tasks[modality]

    def encoder(self, modality: str) -> _encoders.Encoder:
        return _encoders.create(self._models[modality], modality=modality, device=self.device)

    def head(self, modality: str) -> TaskHead:
        if modality not in self._heads:
            self._heads[modality] = build_head(self.task_for(modality), self.encoder(modality))
        return self._heads[modality]

    # -- loading ----------------------------------------------------------------------------
    def load(self, source: Any, *, check_task: bool = True) -> Loaded:
        """Sniff and decode one source for its modality's encoder; errors land in ``Loaded.error``."""
        name = source_name(source)
        prepared = Loaded(name)
        try:
            modality = sniff_modality(source, name)
            if modality == "array":
                modality = "image" if self._task is not None and self._task.modality == "image" else "audio"
            prepared.modality = modality
            if check_task:
                self.task_for(modality)  # a task of the other modality fails before any decoding
            if modality == "audio":
                self._prepare_audio(source, prepared)
            else:
                self._prepare_image(source, prepared)
        except MedzeroError as exc:
            prepared.error = exc
        return prepared

    def _prepare_audio(self, source: Any, prepared: Loaded) -> None:
        from .audio.io import AudioLimits, load_audio
        from .audio.quality import compute_metrics

        limits = self._audio_limits or AudioLimits.from_env()
        clip = load_audio(source, limits=limits, name=prepared.name)
        prepared.metrics = compute_metrics(clip.samples, clip.sample_rate, channels=clip.channels)
        prepared.metadata = {
            "format": clip.format,
            "duration_s": round(clip.duration, 3),
            "sample_rate": clip.source_rate,
            "channels": clip.channels,
        }
        prepared.item = clip.resampled(self.encoder("audio").sample_rate)

    def _prepare_image(self, source: Any, prepared: Loaded) -> None:
        from .image import ImageLimits, read_image

        limits = self._image_limits or ImageLimits.from_env()
        image = read_image(source, limits=limits, name=prepared.name)
        prepared.metadata = dict(image.metadata)
        prepared.item = image

    def _prepared_stream(self, sources: Sequence[Any]) -> Iterator[list[Loaded]]:
        """Chunks of prepared sources; the next chunk decodes in threads while the caller embeds this one."""
        chunks = [sources[i : i + self.batch_size] for i in range(0, len(sources), self.batch_size)]
        if not chunks:
            return
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="medzero-load") as pool:
            pending: list[Future] = [pool.submit(self.load, s) for s in chunks[0]]
            for index in range(len(chunks)):
                ready = [f.result() for f in pending]
                pending = [pool.submit(self.load, s) for s in chunks[index + 1]] if index + 1 < len(chunks) else []
                yield ready

    # -- classification ---------------------------------------------------------------------
    def classify(self, source: Any) -> Result:
        """One source; a problem with it raises its :class:`MedzeroError`."""
        result = self.classify_batch([source])[0]
        if result.exception is not None:
            raise result.exception
        return result

    def classify_batch(self, sources: "Sequence[Any] | Any", *, progress: Callable[[int], None] | None = None) -> list[Result]:
        """Every source (folders expanded) in order; a bad one gets a Result with ``error`` set and the rest go on."""
        sources = expand_sources(sources)
        results: list[Result] = []
        for chunk in self._prepared_stream(sources):
            results.extend(self._classify_chunk(chunk))
            if progress is not None:
                progress(len(chunk))
        return results

    def _classify_chunk(self, chunk: list[Loaded]) -> list[Result]:
        by_modality: dict[str, list[int]] = {}
        for i, p in enumerate(chunk):
            if p.error is None:
                by_modality.setdefault(p.modality, []).append(i)
        embeddings: dict[int, np.ndarray] = {}
        for modality, indices in by_modality.items():
            try:
                vectors = self.encoder(modality).embed([chunk[i].item for i in indices])
            except MedzeroError as exc:
                for i in indices:
                    chunk[i].error = exc
                continue
            embeddings.update(zip(indices, vectors))
        results = []
        for i, p in enumerate(chunk):
            if p.error is not None:
                results.append(Result.failed(p.name, p.error, modality=p.modality))
                continue
            try:
                results.append(self._result(p, embeddings[i]))
            except MedzeroError as exc:
                results.append(Result.failed(p.name, exc, modality=p.modality))
        return results

    def _result(self, p: Loaded, embedding: np.ndarray) -> Result:
        from .audio.quality import METRIC_INFO

        head = self.head(p.modality)
        task = head.task
        scores = head.as_dict(head.scores(embedding)[0])
        verdict, reasons = evaluate(task, scores, p.metrics, METRIC_INFO)
        result = Result(
            source=p.name,
            modality=p.modality,
            task=task.name,
            model=head.fingerprint,
            scores=scores,
            verdict=verdict,
            reasons=reasons,
            verdict_name=_verdict_name(task, verdict),
            label_names={lb.id: {"en": lb.display("en"), "zh": lb.display("zh")} for lb in task.labels},
            thresholds={lb.id: lb.threshold for lb in task.labels},
            metrics=p.metrics,
            metadata=p.metadata,
        )
        if p.modality == "audio":
            encoder = self.encoder("audio")
            if len(p.item.samples) > encoder.max_samples:
                result.timeline, result.segments = self._timeline(p.item.samples, encoder, head)
        return result

    # -- long recordings --------------------------------------------------------------------
    def _timeline(self, samples: np.ndarray, encoder, head: TaskHead) -> tuple[dict[str, Any], list[Segment]]:
        """Window scores over a long recording, embedded a batch at a time so memory stays bounded."""
        rate = encoder.sample_rate
        starts = window_starts(len(samples), rate, self.window_s, self.hop_s)
        width = int(round(self.window_s * rate))
        rows = []
        for b in range(0, len(starts), self.batch_size):
            windows = [samples[s : s + width] for s in starts[b : b + self.batch_size]]
            rows.append(head.scores(encoder.embed(windows)))
        scores = np.concatenate(rows)
        times = [(s / rate, min(s + width, len(samples)) / rate) for s in starts]
        timeline = {
            "window_s": self.window_s,
            "hop_s": self.hop_s,
            "start": [round(t[0], 3) for t in times],
            "end": [round(t[1], 3) for t in times],
            "scores": {label_id: [float(v) for v in scores[:, j]] for j, label_id in enumerate(head.task.label_ids())},
        }
        segments = []
        for j, label_id in enumerate(head.task.label_ids()):
            chosen: list[int] = []
            for w in np.argsort(-scores[:, j], kind="stable"):
                if all(abs(starts[w] - starts[c]) >= width // 2 for c in chosen):
                    chosen.append(int(w))
                if len(chosen) == self.top_segments:
                    break
            segments += [Segment(label_id, round(times[c][0], 3), round(times[c][1], 3), float(scores[c, j])) for c in chosen]
        return timeline, segments


def window_starts(n_samples: int, rate: int, window_s: float, hop_s: float) -> list[int]:
    """Window start samples every ``hop_s``, plus one window flush with the end so the tail is covered."""
    width, hop = int(round(window_s * rate)), max(1, int(round(hop_s * rate)))
    if n_samples <= width:
        return [0]
    starts = list(range(0, n_samples - width + 1, hop))
    if starts[-1] + width < n_samples:
        starts.append(n_samples - width)
    return starts


def _verdict_name(task: Task, verdict: str | None) -> dict[str, str] | None:
    if verdict is None:
        return None
    if not task.verdicts:
        label = next((lb for lb in task.labels if lb.id == verdict), None)
        return {"en": label.display("en"), "zh": label.display("zh")} if label else {"en": verdict, "zh": verdict}
    v = task.verdict(verdict)
    return {"en": v.display("en"), "zh": v.display("zh")}


def classify(
    source: Any,
    *,
    task: "str | os.PathLike | Task | None" = None,
    labels: "str | Sequence[str] | None" = None,
    template: str | None = None,
    multilabel: bool = False,
    audio_model: str | None = None,
    image_model: str | None = None,
    device: str = "auto",
    **options: Any,
) -> Result:
    """Classify one recording or image (path, bytes, file object, or ``(array, sample_rate)``).

    Models stay loaded for the process, so calling this in a loop does not reload them; for many
    files, :meth:`Classifier.classify_batch` also batches the forward passes.
    """
    classifier = Classifier(
        task,
        labels=labels,
        template=template,
        multilabel=multilabel,
        audio_model=audio_model,
        image_model=image_model,
        device=device,
        **options,
    )
    return classifier.classify(source)
