"""Classification: the ingest pipeline, the encoders and a task's scores, for any registered modality.

``classify(source)`` and ``Classifier(...).classify_batch(sources)`` take each source through the
one ingest path (:mod:`medzero.core.ingest`): sniffed once, decoded by its modality's plug-in,
embedded by its modality's encoder, scored against the task. Nothing here names a modality: what
differs between audio and images lives in their plug-ins (``medzero/audio/plugin.py``,
``medzero/image/plugin.py``). The CLI, the app, the service and the benchmarks all come through here.

Two outcomes besides a triage verdict:

- an input outside what the task judges (its ``applies_to`` block: a CT slice given to a chest
  X-ray task, a recording with no voice given to a voice task) gets ``not_applicable``, with reasons;
- when a modality's default model is not on this machine, a task with measurement rules
  (``metrics``) on a modality that reports measurements still gets a verdict from those rules
  alone, marked ``signal_only``; the source is then decoded again with no encoder
  (``prepare(source, None, limits)``), in the calling thread. Any other task gives an error row,
  and so does a model the caller named (argument or environment variable) that cannot be loaded:
  a mistyped path must never pass as a verdict.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from .encoders import backends as _backends
from .encoders import factory as _encoders
from .core.engines import Engine, resolve_engine
from .core.errors import BadInputError, MedzeroError, ModelUnavailableError, TaskError, one_line
from .core.ingest import Pipeline, Prepared, Source, expand, iter_expand
from .core.modality import get_modality
from .tasks.schema import NOT_APPLICABLE, Task, load_task, task_from_labels
from .core.results import Reason, Result
from .tasks.scoring import Applicability, TaskHead, applicability, build_head, evaluate

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
        backend: ``auto`` (the measured best per model: on a CPU, OpenVINO where installed, else
            ONNX Runtime, for CLAP and torch for open_clip; torch on a GPU), ``torch``, ``onnx`` (ONNX Runtime on the CPU),
            ``openvino`` (OpenVINO on the CPU; needs ``medzero[openvino]``) or ``onnx-int8`` (ONNX
            Runtime with an int8-quantised audio/image tower); ``None``: ``MEDZERO_BACKEND``, else ``auto``.
        batch_size: items per forward pass.
        window_s, hop_s: the timeline windows of recordings longer than the model's 10 s input.
        top_segments: how many top windows per label a Result lists.
        limits: ``{modality: limits}`` for inputs (default: each modality's, from the environment).
        workers: decoding threads (the next batch decodes while this one embeds).
        calibration: a site overlay from ``medzero calibrate`` (a path or a loaded ``Calibration``):
            its thresholds replace the task's. Without one, every Result says it is uncalibrated.
        mos: measure speech quality with DNSMOS P.835 (the ``mos_sig``, ``mos_bak`` and
            ``mos_ovrl`` metrics of audio results): ``None`` (default) when the task's rules use
            one of them (``voice_quality`` does; ad-hoc labels do not), ``True`` always, ``False``
            never. It costs about 0.24 s of CPU per 9 s of audio (at most 12 windows a recording),
            more than CLAP itself, so it runs only where it is used.
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
        backend: str | None = None,
        batch_size: int = 8,
        window_s: float = 10.0,
        hop_s: float = 5.0,
        top_segments: int = 3,
        limits: Mapping[str, Any] | None = None,
        workers: int = 2,
        calibration: Any = None,
        mos: bool | None = None,
    ):
        if task is not None and labels is not None:
            raise TaskError("give either a task or labels, not both")
        if window_s <= 0 or hop_s <= 0:
            raise BadInputError("window and hop must be positive numbers of seconds")
        self._task = load_task(task) if task is not None else None
        self.calibration = None
        if calibration is not None:
            from .tasks.overlay import apply_calibration

            if self._task is None:
                raise TaskError("a calibration overlay goes with a task; name one")
            self._task, self.calibration = apply_calibration(self._task, calibration)
        if labels is not None:  # fail on bad labels now, not once per file
            task_from_labels(labels, modality="audio", template=template, multilabel=multilabel)
        self._labels = labels
        self._template = template
        self._multilabel = multilabel
        self._models = {"audio": audio_model, "image": image_model, **dict(models or {})}
        self.device = device
        self.backend = _backends.checked(backend, device)
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
            # asked when audio is prepared, not here: an image run need not load the audio task
            settings={"audio": {"mos": self._uses_mos if mos is None else bool(mos)}},
        )

    def _uses_mos(self) -> bool:
        """Whether the task this classifier applies to audio (its own, or the audio default when it
        names neither a task nor labels) has a rule on a DNSMOS metric (``mos_*``)."""
        if self._labels is not None or (self._task is not None and self._task.modality != "audio"):
            return False
        try:
            task = self.task_for("audio")
        except MedzeroError:
            return False
        return any(name.startswith("mos_") for name in task.metrics)

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
        return _encoders.create(self._models.get(modality), modality=modality, device=self.device, backend=self.backend)

    def head(self, modality: str) -> TaskHead:
        """The task's label embeddings for ``modality``'s encoder, built once."""
        if modality not in self._heads:
            self._heads[modality] = build_head(self.task_for(modality), self.encoder(modality))
            if self.calibration is not None:
                from .tasks.overlay import check_model

                check_model(self.calibration, self._heads[modality].fingerprint)  # warns when fitted on another model
        return self._heads[modality]

    def head_modalities(self) -> list[str]:
        """The modalities whose head is built already, so whose encoder this process holds loaded:
        an engine reads their facts from them instead of loading the models again."""
        return list(self._heads)

    # -- classification ---------------------------------------------------------------------
    def classify(self, source: Any, *, explain: "bool | str" = False) -> Result:
        """One source; a problem with it raises its :class:`MedzeroError`. ``explain``: see :meth:`classify_batch`."""
        result = self.classify_batch([source], explain=explain)[0]
        if result.exception is not None:
            raise result.exception
        return result

    def classify_batch(
        self, sources: "Sequence[Any] | Any", *, progress: Callable[[int], None] | None = None, explain: "bool | str" = False
    ) -> list[Result]:
        """Every source (folders expanded) in order; a bad one gets a Result with ``error`` set and the rest go on.

        ``explain``: ``True`` (or a method, ``"occlusion"`` / ``"gradient"``) adds a heatmap per
        label to each applicable result of a modality that explains (images:
        ``Result.explanations``, see :mod:`medzero.image.explain`); others get none. It costs
        about 50 image-tower passes per image (occlusion), so it is off by default."""
        explain = checked_explain(explain)
        results: list[Result] = []
        for batch in self.pipeline.batches(iter_expand(sources)):
            results.extend(self.classify_prepared(batch, explain=explain))
            if progress is not None:
                progress(len(batch))
        return results

    def classify_dataset(
        self, dataset: Any, *, batch_size: int | None = None, engine: "str | Engine" = "ray", ray_options: Any = None
    ) -> Any:
        """Results for every file of a Ray Dataset, as a lazy Dataset of result rows (needs ``medzero[ray]``).

        ``dataset`` has a ``path`` column, and a ``bytes`` column when it carries the files'
        content (``ray.data.read_binary_files(..., include_paths=True)``); each row that comes back
        has ``path, modality, task, model, verdict, error``, ``score.<label>``, ``metric.<name>``
        and ``result`` (the whole Result as JSON), an error row for a file that failed. ``engine``
        runs it: ``medzero.distributed.RayEngine(options)``, or ``"ray"`` by name with
        ``ray_options`` (a :class:`medzero.distributed.RayOptions`). Decoding runs in Ray tasks and
        embedding in an actor pool; scores equal :meth:`classify_batch`'s.
        """
        runner = resolve_engine(engine, ray_options)
        if runner is None:
            raise BadInputError("classify_dataset runs on an engine for datasets (ray), not the local one; use classify_batch")
        return runner.classify_dataset(self, dataset, batch_size=batch_size)

    def classify_prepared(
        self, batch: Sequence[Prepared], vectors: Sequence[np.ndarray | None] | None = None, *, explain: "bool | str" = False
    ) -> list[Result]:
        """Results for decoded items (embedded here in one pass per modality unless ``vectors`` are
        given); ``explain`` as in :meth:`classify_batch`."""
        explain = checked_explain(explain)
        if vectors is None:
            vectors = self.pipeline.embed(batch)
        results = []
        for p, vector in zip(batch, vectors):
            try:
                if p.error is None and vector is not None:
                    results.append(self._result(p, vector, explain))
                    continue
                if isinstance(p.error, ModelUnavailableError) and self._signal_only_possible(p.modality) and not self.model_named(p.modality):
                    results.append(self._signal_only_result(p, p.error))
                    continue
            except MedzeroError as exc:
                p.error = exc
            except Exception as exc:  # noqa: BLE001 - one source's fault never stops the batch
                _logger.error("scoring a %s input failed (%s)", p.modality, type(exc).__name__)
                p.error = MedzeroError(f"{p.name}: scoring failed ({type(exc).__name__}); see the log")
            results.append(Result.failed(p.name, p.error, modality=p.modality))
        return results

    def _result(self, p: Prepared, embedding: np.ndarray, explain: str | None = None) -> Result:
        modality = get_modality(p.modality)
        head = self.head(p.modality)
        task = head.task
        scores = head.as_dict(head.scores(embedding)[0])
        gate = head.gate_scores(embedding)
        scope = applicability(task, p.metadata, p.metrics, None if gate is None else float(gate[0]))
        result = self._judged(p, task, scores, scope, model=head.fingerprint)
        if modality.postprocess is not None and result.applicable:
            options = self.options if explain is None else {**self.options, "explain": explain}
            modality.postprocess(result, p, self.encoder(p.modality), head, options)
        if self.calibration is not None:  # probabilities and conformal decisions from the site overlay
            self.calibration.annotate(result, task, modality.metric_info)
        return result

    def _judged(self, p: Prepared, task: Task, scores: dict[str, float], scope: Applicability | None, *, model: str) -> Result:
        """The Result of a prepared input: not applicable, or the verdict of the scores and metrics."""
        if scope is not None and not scope.applicable:
            verdict, reasons = NOT_APPLICABLE.id, list(scope.reasons)
        else:
            verdict, reasons = evaluate(task, scores, p.metrics, get_modality(p.modality).metric_info)
        return Result(
            source=p.name,
            modality=p.modality,
            task=task.name,
            model=model,
            scores=scores,
            verdict=verdict,
            reasons=reasons,
            verdict_name=_verdict_name(task, verdict),
            label_names={lb.id: {"en": lb.display("en"), "zh": lb.display("zh")} for lb in task.labels},
            thresholds={lb.id: lb.threshold for lb in task.labels},
            metrics=p.metrics,
            metadata=p.metadata,
            speech_segments=list(p.speech_segments),
            applicable=scope is None or scope.applicable,
            applicability=None if scope is None else scope.detail,
            calibration=self._calibration_info(),
        )

    def _calibration_info(self) -> dict[str, Any]:
        if self.calibration is not None:
            return {"status": "calibrated", **self.calibration.result_info()}
        from .tasks.overlay import UNCALIBRATED

        return {"status": "uncalibrated", "summary": UNCALIBRATED}

    # -- without the model --------------------------------------------------------------------
    def model_named(self, modality: str) -> bool:
        """Whether ``modality``'s model was named (an argument, or ``MEDZERO_AUDIO_MODEL`` /
        ``MEDZERO_IMAGE_MODEL``) rather than left to the default. A named model that cannot be
        found is an error, always (a mistyped path must not pass as a signal-only verdict); only a
        default model that is not on this machine falls back to the measurements."""
        return self._models.get(modality) is not None or _encoders.configured_model(modality) is not None

    def _signal_only_possible(self, modality: str) -> bool:
        """A verdict without the model needs a task with measurement rules and a modality that measures."""
        task = self.task_for(modality)
        return bool(task.verdicts and task.metrics and get_modality(modality).metric_info)

    def _signal_only_result(self, p: Prepared, error: ModelUnavailableError) -> Result:
        """The verdict of the measurement rules alone (no scores), marked ``signal_only``."""
        modality = get_modality(p.modality)
        if not p.metrics:  # the encoder failed before decoding: decode for the measurements alone
            p = modality.prepare(p.source, None, self.pipeline.limits_for(modality))
        task = self.task_for(p.modality)
        result = self._judged(p, task, {}, applicability(task, p.metadata, p.metrics), model="")
        line = one_line(str(error).split("; ")[0], limit=160)  # what failed; the how-to stays in the error
        result.reasons.append(
            Reason(
                kind="note",
                id="signal_only",
                name={"en": "Signal-only verdict", "zh": "仅依据信号指标"},
                value=None,
                limit=None,
                direction="",
                verdict=None,
                message={
                    "en": f"signal-only verdict: the {modality.name} model is not available ({line})",
                    "zh": f"仅依据信号指标得出结论：{modality.name} 模型不可用（{line}）",
                },
            )
        )
        result.signal_only = True
        return result

    # -- a forward pass shared with other classifiers (see classify_prepared_many) ----------------
    def prepare(self, source: Any) -> Prepared:
        """One source decoded as this classifier decodes it (its task's modality check, its input
        limits, the encoder's input preparation), ready for :meth:`classify_prepared` or
        :func:`classify_prepared_many`; a problem lands in ``Prepared.error``, never raised.

        For callers that decode and embed at different places (the REST service decodes uploads in
        threads, then batches them across requests); :meth:`classify_batch` does both itself."""
        return self.pipeline.prepare(source)

    def embed(self, batch: Sequence[Prepared]) -> list[np.ndarray | None]:
        """Each decoded item's embedding, ``None`` for a failed one: one forward pass per modality
        through this classifier's encoders. An encoder failure becomes the error of the items it had."""
        return self.pipeline.embed(batch)


#: What ``explain=`` takes besides ``True``/``False`` (the image plug-in's methods; "auto" picks its default).
EXPLAIN_METHODS = ("auto", "occlusion", "gradient")


def checked_explain(explain: "bool | str | None") -> str | None:
    """``explain=`` as the plug-ins read it (``options["explain"]``): a method name, or ``None`` for no heatmaps."""
    if explain is None or explain is False:
        return None
    if explain is True:
        return "auto"
    if isinstance(explain, str) and explain.strip().lower() in EXPLAIN_METHODS:
        return explain.strip().lower()
    raise BadInputError(f"unknown explanation method {str(explain)[:40]!r} (use one of: {', '.join(EXPLAIN_METHODS)})")


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


def classify_prepared_many(items: Sequence[tuple[Classifier, Prepared]]) -> list[Result]:
    """Results for decoded items of several classifiers, in order: one forward pass per modality for
    all of them, then each item scored by its own classifier (the items of one classifier together).

    An embedding does not depend on the task that scores it, so classifiers with different tasks,
    labels or overlays share a pass, provided they use the same models (same model references,
    device and backend): the first item's classifier embeds them all. Each item comes from its own
    classifier's :meth:`Classifier.prepare`. The REST service batches concurrent requests this way.
    """
    if not items:
        return []
    vectors = items[0][0].embed([p for _, p in items])
    results: list[Any] = [None] * len(items)
    groups: dict[int, list[int]] = {}
    for i, (classifier, _) in enumerate(items):
        groups.setdefault(id(classifier), []).append(i)
    for indices in groups.values():
        classifier = items[indices[0]][0]
        scored = classifier.classify_prepared([items[i][1] for i in indices], [vectors[i] for i in indices])
        for i, result in zip(indices, scored):
            results[i] = result
    return results
