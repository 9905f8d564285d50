"""Classification: the ingest pipeline, the encoders and a task's scores, for any registered modality.

``classify(source)`` and ``Classifier(...).classify_batch(sources)`` take each source through the
one ingest path (:mod:`medzero.core.ingest`): sniffed once, decoded by its modality's plug-in,
embedded by its modality's encoder, scored against the task. Nothing here names a modality: what
differs between audio and images lives in their plug-ins (``medzero/audio/plugin.py``,
``medzero/image/plugin.py``). The CLI, the app, the service and the benchmarks all come through here.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from .core import encoder as _encoders
from .core.errors import BadInputError, MedzeroError, TaskError
from .core.ingest import Pipeline, Prepared, Source, expand
from .core.modality import get_modality
from .core.prompts import Task, load_task, task_from_labels
from .core.results import Result
from .core.scoring import TaskHead, build_head, evaluate

__all__ = ["Classifier", "classify", "expand_sources"]

_logger = logging.getLogger(__name__)


def expand_sources(sources: "Iterable[Any] | Any") -> list[Source]:
    """Every source sniffed once, folders expanded by content (see :func:`medzero.core.ingest.expand`)."""
    return expand(sources)


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
        models: the same for any modality, ``{modality: reference}``.
        device: ``auto``, ``cpu`` or ``cuda``.
        batch_size: items per forward pass.
        window_s, hop_s: the timeline windows of recordings longer than the model's 10 s input.
        top_segments: how many top windows per label a Result lists.
        limits: ``{modality: limits}`` for inputs (default: each modality's, from the environment).
        workers: decoding threads (the next batch decodes while this one embeds).
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
        models: Mapping[str, str | None] | None = None,
        device: str = "auto",
        batch_size: int = 8,
        window_s: float = 10.0,
        hop_s: float = 5.0,
        top_segments: int = 3,
        limits: Mapping[str, Any] | None = None,
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
        self._models = {"audio": audio_model, "image": image_model, **dict(models or {})}
        self.device = device
        self.batch_size = max(1, int(batch_size))
        self.options = {"window_s": float(window_s), "hop_s": float(hop_s), "batch_size": self.batch_size, "top_segments": int(top_segments)}
        self._tasks: dict[str, Task] = {}
        self._heads: dict[str, TaskHead] = {}
        self.pipeline = Pipeline(
            self.encoder,
            limits=limits,
            batch_size=self.batch_size,
            workers=workers,
            array_modality=self._task.modality if self._task is not None else None,
            check=lambda source: self.task_for(source.modality),  # a task of the other modality fails before decoding
        )

    # -- resolution -------------------------------------------------------------------------
    def task_for(self, modality: str) -> Task:
        """The task this classifier applies to ``modality``'s inputs (a one-line error if none fits)."""
        if modality not in self._tasks:
            if self._task is not None:
                if self._task.modality != modality:
                    raise TaskError(
                        f"task {self._task.name} is for {self._task.modality}, but this file is {get_modality(modality).noun}"
                    )
                self._tasks[modality] = self._task
            elif self._labels is not None:
                self._tasks[modality] = task_from_labels(
                    self._labels, modality=modality, template=self._template, multilabel=self._multilabel
                )
            else:
                default = get_modality(modality).default_task
                if default is None:
                    raise TaskError(f"the {modality} modality has no default task; name one")
                self._tasks[modality] = load_task(default)
        return self._tasks[modality]

    def encoder(self, modality: str) -> _encoders.Encoder:
        """The loaded encoder for ``modality`` (once per process, shared with every other user)."""
        return _encoders.create(self._models.get(modality), modality=modality, device=self.device)

    def head(self, modality: str) -> TaskHead:
        """The task's label embeddings for ``modality``'s encoder, built once."""
        if modality not in self._heads:
            self._heads[modality] = build_head(self.task_for(modality), self.encoder(modality))
        return self._heads[modality]

    # -- classification ---------------------------------------------------------------------
    def classify(self, source: Any) -> Result:
        """One source; a problem with it raises its :class:`MedzeroError`."""
        result = self.classify_batch([source])[0]
        if result.exception is not None:
            raise result.exception
        return result

    def classify_batch(self, sources: "Sequence[Any] | Any", *, progress: Callable[[int], None] | None = None) -> list[Result]:
        """Every source (folders expanded) in order; a bad one gets a Result with ``error`` set and the rest go on."""
        results: list[Result] = []
        for batch in self.pipeline.batches(expand(sources)):
            results.extend(self.classify_prepared(batch))
            if progress is not None:
                progress(len(batch))
        return results

    def classify_prepared(self, batch: Sequence[Prepared], vectors: Sequence[np.ndarray | None] | None = None) -> list[Result]:
        """Results for decoded items (embedded here in one pass per modality unless ``vectors`` are given)."""
        if vectors is None:
            vectors = self.pipeline.embed(batch)
        results = []
        for p, vector in zip(batch, vectors):
            if p.error is None and vector is not None:
                try:
                    results.append(self._result(p, vector))
                    continue
                except MedzeroError as exc:
                    p.error = exc
            results.append(Result.failed(p.name, p.error, modality=p.modality))
        return results

    def _result(self, p: Prepared, embedding: np.ndarray) -> Result:
        modality = get_modality(p.modality)
        head = self.head(p.modality)
        task = head.task
        scores = head.as_dict(head.scores(embedding)[0])
        verdict, reasons = evaluate(task, scores, p.metrics, modality.metric_info)
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
        if modality.postprocess is not None:
            modality.postprocess(result, p, self.encoder(p.modality), head, self.options)
        return result


def _verdict_name(task: Task, verdict: str | None) -> dict[str, str] | None:
    if verdict is None:
        return None
    if not task.verdicts:
        label = next((lb for lb in task.labels if lb.id == verdict), None)
        return {"en": label.display("en"), "zh": label.display("zh")} if label else {"en": verdict, "zh": verdict}
    v = task.verdict(verdict)
    return {"en": v.display("en"), "zh": v.display("zh")}


def classify(source: Any, *, task: "str | os.PathLike | Task | None" = None, **options: Any) -> Result:
    """Classify one recording or image (path, bytes, file object, or ``(array, sample_rate)``).

    ``options`` are :class:`Classifier`'s. Models stay loaded for the process, so calling this in
    a loop does not reload them; for many files, :meth:`Classifier.classify_batch` also batches
    the forward passes.
    """
    return Classifier(task, **options).classify(source)
