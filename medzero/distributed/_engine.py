"""The Ray Data engine: the library's own ingest path, spread over a cluster.

::

    driver              list files (folders walked as core.ingest.expand walks them)
      │ ray.data.from_items
      ▼
    Ray tasks           Source.of (sniff) → [index: read once, sha256, skip known] → Pipeline.prepare
      │ pickled Prepared, one row per file
      ▼
    actor pool          Pipeline.embed (encoders from the registry, loaded once per actor)
      │                 classify: Classifier.classify_prepared → result rows
      ▼                 index:    normalised vectors (+ task scores) → case rows
    driver              classify: Arrow tables, sorted into input order
                        index:    each batch committed as CaseIndex.add commits (one transaction), under the write lock

Decode tasks never load a model. What a modality's ``prepare`` reads from its encoder (audio: the
model's sample rate) comes from :class:`EncoderFacts`: from the driver's own encoder when it has
already loaded it, else found once per run by a probe task that loads the model on CPU in a worker
of its own (which then exits) on a cluster node, so the driver needs neither the weights nor the
memory for them.
"""
from __future__ import annotations

import copy
import logging
import math
import os
import pickle
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

from ..encoders.backends import is_onnx
from ..encoders.factory import create as create_encoder
from ..core.errors import BadInputError, MedzeroError, ModelUnavailableError, one_line
from ..core.ingest import Pipeline, Prepared, Source
from ..core.modality import get_modality, modality_names
from ._tables import result_schema, results_table

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa
    import ray.data

    from ..classifier import Classifier

__all__ = [
    "EXTRA_MESSAGE",
    "RayOptions",
    "ListedFile",
    "EncoderFacts",
    "require_ray",
    "connect",
    "list_files",
    "describe",
    "result_columns",
    "classify_dataset",
    "classify_files",
]

_logger = logging.getLogger(__name__)

EXTRA_MESSAGE = "the ray engine needs the ray extra: pip install 'medzero[ray]'"
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
#: Most blocks the listing is cut into (each decode task takes one block at a time).
_MAX_BLOCKS = 10_000


def require_ray():
    """The ``ray`` module (with Ray Data and pyarrow), or a one-line error naming the extra."""
    try:
        import pyarrow  # noqa: F401
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise MedzeroError(EXTRA_MESSAGE) from None
    return ray


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide the ray engine runs.

    Args:
        address: the cluster: ``None`` (``RAY_ADDRESS`` if set, else a Ray started on this
            machine for the run), ``"auto"`` (the cluster this machine belongs to) or
            ``"ray://head:10001"`` (Ray Client).
        actors: embedding actors (default: one per GPU when the cluster has GPUs, else one per
            two CPUs, so decoding keeps the other half).
        gpus_per_actor: GPUs each actor reserves (default 1 when the cluster has GPUs and the
            device is not ``cpu``, else 0); 0.5 packs two actors on a GPU.
        cpus_per_actor: CPUs each actor reserves (and torch's threads in it).
    """

    address: str | None = None
    actors: int | None = None
    gpus_per_actor: float | None = None
    cpus_per_actor: float = 1.0


#: Settings that stay on this machine: the cache folder is per machine, and an index URL (which
#: may carry a password) would be shown by Ray's dashboard among the runtime environment's
#: variables; actors get the index as ``CaseIndex.location``, which never prints the password.
_LOCAL_ONLY = frozenset({"MEDZERO_CACHE_DIR", "MEDZERO_INDEX_STORE", "MEDZERO_SERVICE_CONFIG"})


def connect(address: str | None = None) -> bool:
    """Join (or start) a Ray cluster unless this process already has; True when this call did.

    The ``MEDZERO_*`` settings that change results (models, revisions, input limits) and
    ``HF_HUB_OFFLINE`` travel to the workers of a cluster this call joins (not the cache folder,
    nor an index URL: :data:`_LOCAL_ONLY`); a Ray started here inherits the whole environment.
    """
    ray = require_ray()
    if ray.is_initialized():
        return False
    joining = address is not None or bool(os.environ.get("RAY_ADDRESS"))
    env = {
        k: v for k, v in os.environ.items()
        if (k.startswith("MEDZERO_") and k not in _LOCAL_ONLY) or k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    }
    try:
        ray.init(address=address, runtime_env={"env_vars": env} if joining and env else None, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise MedzeroError(f"cannot reach the Ray cluster {address or os.environ.get('RAY_ADDRESS') or ''}: {one_line(exc)}") from None
    return True


# -- listing -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ListedFile:
    """One file to send to the cluster: ``name`` (how results call it), ``path`` (absolute, read on
    the node that decodes it) and ``listed`` (found inside a folder: kept only when its content is
    of a registered modality; a file named explicitly always gets a row, an error row if need be)."""

    name: str
    path: str
    listed: bool = False


def list_files(sources: "Iterable[Any] | Any", *, absolute: bool = False) -> list[ListedFile]:
    """Files and folders as :class:`ListedFile` rows, folders walked as :func:`core.ingest.expand`
    walks them (sorted, hidden entries skipped). Nothing is opened here: sniffing, like reading
    and decoding, happens in the cluster's tasks. ``absolute`` names files by absolute path (a
    case index points at them)."""
    if isinstance(sources, (str, os.PathLike, ListedFile, Source)) or not isinstance(sources, (list, tuple)):
        sources = [sources]
    out: list[ListedFile] = []
    for obj in sources:
        if isinstance(obj, ListedFile):
            out.append(obj)
            continue
        if isinstance(obj, Source) and obj.is_path:
            obj = obj.data
        if not isinstance(obj, (str, os.PathLike)):
            raise BadInputError(f"the ray engine reads files and folders, not {type(obj).__name__}; use the local engine for data in memory")
        path = os.fspath(obj)
        if _SCHEME.match(path) and not os.path.exists(path):
            raise BadInputError(f"{path}: the ray engine reads files and folders; use the local engine for {path.split('://')[0]}:// sources")
        if os.path.isdir(path):
            root = Path(path)
            for found in sorted(root.rglob("*")):
                if found.is_file() and not any(part.startswith(".") for part in found.relative_to(root).parts):
                    name = str(found)
                    out.append(ListedFile(os.path.abspath(name) if absolute else name, os.path.abspath(name), True))
        else:
            out.append(ListedFile(os.path.abspath(path) if absolute else path, os.path.abspath(path)))
    return out


def _dataset(files: Sequence[ListedFile], rows_per_block: int) -> "ray.data.Dataset":
    ray = require_ray()
    items = [{"order": i, "path": f.name, "file": f.path, "listed": f.listed} for i, f in enumerate(files)]
    blocks = max(1, min(_MAX_BLOCKS, math.ceil(len(items) / max(1, rows_per_block))))
    return ray.data.from_items(items, override_num_blocks=blocks)


# -- what decode tasks know of the encoders --------------------------------------------------------


@dataclass(frozen=True)
class EncoderFacts:
    """An encoder's plain attributes, or the error that stopped it loading (``error``).

    A decode task passes these to the modality's ``prepare`` in place of the encoder: plug-ins read
    an encoder's attributes there (audio: ``sample_rate``) and embed nothing.
    """

    modality: str
    fingerprint: str = ""
    dim: int = 0
    model_id: str = ""
    logit_scale: float = 0.0
    device: str = "cpu"
    sample_rate: int | None = None
    max_samples: int | None = None
    error: MedzeroError | None = None

    @classmethod
    def of(cls, encoder: Any) -> "EncoderFacts":
        return cls(
            modality=encoder.modality, fingerprint=encoder.fingerprint, dim=int(encoder.dim), model_id=str(encoder.model_id),
            logit_scale=float(encoder.logit_scale), device=str(encoder.device),
            sample_rate=getattr(encoder, "sample_rate", None), max_samples=getattr(encoder, "max_samples", None),
        )


class _Described:
    """``encoder(modality)`` for a decode task: the probed facts, or the probe's error raised again."""

    def __init__(self, facts: Mapping[str, EncoderFacts]):
        self.facts = dict(facts)

    def __call__(self, modality: str) -> EncoderFacts:
        facts = self.facts.get(modality)
        if facts is None:
            raise ModelUnavailableError(f"no {modality} model was asked for in this run")
        if facts.error is not None:
            raise facts.error
        return facts


def _probe(encoder_for: Callable[[str], Any], modalities: Sequence[str]) -> dict[str, EncoderFacts]:
    facts = {}
    for modality in modalities:
        try:
            facts[modality] = EncoderFacts.of(encoder_for(modality))
        except MedzeroError as exc:
            facts[modality] = EncoderFacts(modality, error=exc)
    return facts


def describe(
    encoder_for: Callable[[str], Any], modalities: Sequence[str], loaded: Mapping[str, Any] | None = None
) -> dict[str, EncoderFacts]:
    """Each modality's :class:`EncoderFacts`: from ``loaded`` (encoders this process already holds),
    else found by one task on the cluster that loads the models on CPU in a worker of its own
    (``max_calls=1``: the worker exits, and its memory with it)."""
    loaded = dict(loaded or {})
    facts = {m: EncoderFacts.of(loaded[m]) for m in modalities if m in loaded}
    missing = [m for m in modalities if m not in facts]
    if missing:
        ray = require_ray()
        probe = ray.remote(num_cpus=1, max_calls=1)(_probe)
        facts.update(ray.get(probe.remote(encoder_for, missing)))
    return {m: facts[m] for m in modalities}


def _create_on(refs: Mapping[str, str | None], device: str, backend: str | None, modality: str):
    return create_encoder(refs.get(modality), modality=modality, device=device, backend=backend)


# -- shared pieces of the stages ---------------------------------------------------------------------


def _actors(options: RayOptions, device: str, backend: str | None = None) -> tuple[int, float, float]:
    """(pool size, GPUs per actor, CPUs per actor) for this cluster (no GPU for a CPU device or an
    ONNX backend, which runs on the CPU)."""
    ray = require_ray()
    resources = ray.cluster_resources()
    gpus, cpus = float(resources.get("GPU", 0)), float(resources.get("CPU", 1))
    per_gpu = options.gpus_per_actor
    if per_gpu is None:
        per_gpu = 1.0 if gpus >= 1 and device != "cpu" and not is_onnx(backend or "torch") else 0.0
    per_cpu = float(options.cpus_per_actor)
    if options.actors:
        size = int(options.actors)
    elif per_gpu > 0:
        size = max(1, int(gpus // per_gpu))
    else:
        size = max(1, int(cpus // (2 * max(per_cpu, 1e-3))))
    return size, float(per_gpu), per_cpu


def _source(row: Mapping[str, Any]) -> Source:
    """The row's file, sniffed: ``bytes`` when the dataset carries them, else ``file`` or ``path``."""
    name = str(row["path"])
    if row.get("bytes") is not None:
        return Source.of(bytes(row["bytes"]), name=name)
    return Source.of(str(row.get("file") or name), name=name)


def _skipped(row: Mapping[str, Any], source: Source) -> bool:
    """A file found in a folder whose content is of no registered modality is not an input (expand's rule)."""
    return bool(row.get("listed")) and (source.error is not None or source.modality not in modality_names())


def _pack(prepared: Prepared) -> bytes:
    """A Prepared for the trip to an actor, without the file's bytes: the actor needs the decoded item.
    They stay when the model is unavailable, since a signal-only verdict decodes the file again."""
    source = prepared.source
    if isinstance(source.data, (bytes, bytearray)) and not isinstance(prepared.error, ModelUnavailableError):
        prepared = replace(prepared, source=replace(source, data=source.name))
    return pickle.dumps(prepared, protocol=pickle.HIGHEST_PROTOCOL)


def _remote_args(gpus: float, cpus: float) -> dict[str, Any]:
    return {"num_gpus": gpus, "num_cpus": cpus} if gpus > 0 else {"num_cpus": cpus}


#: What one decode task reserves: a CPU, and memory for the study it holds decoded (a 3000×3000
#: float32 radiograph is 36 MB; a decoder's working buffers are several times that), so that a
#: node runs no more decodes than its memory takes. The reservation also keeps Ray from fusing
#: decoding into the embedding actors (it fuses only operators that reserve alike): decoding stays
#: in tasks, spread over the nodes, in parallel with the actors.
_DECODE_ARGS = {"num_cpus": 1, "memory": 512 * 2**20}


# -- classification ------------------------------------------------------------------------------------


def _decode_for_classifier(batch: "pa.Table", *, classifier: "Classifier", facts: Mapping[str, EncoderFacts]) -> "pa.Table":
    import pyarrow as pa

    base = classifier.pipeline
    pipeline = Pipeline(_Described(facts), limits=base.limits, array_modality=base.array_modality, check=base.check,
                        settings=base.settings)
    out: dict[str, list[Any]] = {"order": [], "path": [], "prepared": []}
    for row in batch.to_pylist():
        source = _source(row)
        if _skipped(row, source):
            continue
        out["order"].append(row.get("order"))
        out["path"].append(source.name)
        out["prepared"].append(_pack(pipeline.prepare(source)))
    return pa.table(out, schema=pa.schema([("order", pa.int64()), ("path", pa.string()), ("prepared", pa.binary())]))


class _ClassifyActor:
    """Holds the classifier (its models load once, on first use, through the registry)."""

    def __init__(self, classifier: "Classifier", labels: Sequence[str], metrics: Sequence[str]):
        self.classifier = classifier
        self.labels = list(labels)
        self.metrics = list(metrics)

    def __call__(self, batch: "pa.Table") -> "pa.Table":
        prepared = [pickle.loads(blob) for blob in batch.column("prepared").to_pylist()]
        vectors = self.classifier.pipeline.embed(prepared)
        results = self.classifier.classify_prepared(prepared, vectors)
        return results_table(results, self.labels, self.metrics, order=batch.column("order").to_pylist())


def _task_modalities(classifier: "Classifier") -> list[str]:
    """The modalities the classifier has a task for (a task names one; labels and defaults fit all)."""
    found = []
    for modality in modality_names():
        try:
            classifier.task_for(modality)
        except MedzeroError:
            continue
        found.append(modality)
    return found


def result_columns(classifier: "Classifier") -> tuple[list[str], list[str]]:
    """(label ids, metric names): the score and metric columns of the classifier's results."""
    labels: dict[str, None] = {}
    metrics: dict[str, None] = {}
    for modality in _task_modalities(classifier):
        labels.update(dict.fromkeys(label.id for label in classifier.task_for(modality).labels))
        metrics.update(dict.fromkeys(get_modality(modality).metric_info or {}))
    return list(labels), list(metrics)


def classify_dataset(
    classifier: "Classifier", dataset: "ray.data.Dataset", *, batch_size: int | None = None, options: RayOptions | None = None
) -> "ray.data.Dataset":
    """Results for every file of a Ray Dataset, as a (lazy) Dataset of result rows.

    ``dataset`` has a ``path`` column: a file that every node can read, or the file's name when a
    ``bytes`` column holds its content (``ray.data.read_binary_files(..., include_paths=True)``,
    which reads from S3 and the like as well). The rows that come back have the columns of
    :func:`medzero.distributed.result_schema` (with ``order``, null unless the input had one):
    a failed file keeps its row with ``error`` set. Scores are the local engine's: the same
    ``Pipeline.prepare`` decodes in Ray tasks, and an actor pool embeds with ``Pipeline.embed`` and
    scores with ``classifier.classify_prepared``.
    """
    require_ray()
    from ray.data import ActorPoolStrategy

    options = options or RayOptions()
    batch_size = max(1, int(batch_size or classifier.batch_size))
    modalities = _task_modalities(classifier)
    labels, metrics = result_columns(classifier)
    probe = copy.copy(classifier)
    probe.device = "cpu"  # facts do not depend on the device; the probe worker may have no GPU
    held = {m: classifier.encoder(m) for m in modalities if m in classifier.head_modalities()}  # loaded here already: no probe
    facts = describe(probe.encoder, modalities, held)
    size, gpus, cpus = _actors(options, classifier.device, getattr(classifier, "backend", None))
    _logger.info("ray engine: %d actor(s) with %g GPU and %g CPU each, batches of %d", size, gpus, cpus, batch_size)
    decoded = dataset.map_batches(
        _decode_for_classifier, batch_format="pyarrow", batch_size=batch_size,
        fn_kwargs={"classifier": classifier, "facts": facts}, **_DECODE_ARGS,
    )
    return decoded.map_batches(
        _ClassifyActor, batch_format="pyarrow", batch_size=batch_size, compute=ActorPoolStrategy(size=size),
        fn_constructor_kwargs={"classifier": classifier, "labels": labels, "metrics": metrics}, **_remote_args(gpus, cpus),
    )


def classify_files(
    classifier: "Classifier",
    sources: "Iterable[Any] | Any",
    *,
    batch_size: int | None = None,
    options: RayOptions | None = None,
    progress: Callable[[int], None] | None = None,
) -> "pa.Table":
    """Classify files and folders on a Ray cluster; one row per file, in input order.

    Results stream back as they are ready (``progress(n)`` after each block); the table has the
    columns of :func:`result_schema` (``path, modality, task, model, verdict, error, score.*,
    metric.*, result``). Write it with :func:`write_parquet`.
    """
    import pyarrow as pa

    options = options or RayOptions()
    files = list_files(sources)
    labels, metrics = result_columns(classifier)
    if not files:
        return result_schema(labels, metrics).empty_table()
    connect(options.address)
    batch_size = max(1, int(batch_size or classifier.batch_size))
    results = classify_dataset(classifier, _dataset(files, batch_size), batch_size=batch_size, options=options)
    tables, seen = [], 0
    for table in results.iter_batches(batch_size=None, batch_format="pyarrow"):
        tables.append(table)
        seen += table.num_rows
        if progress is not None:
            progress(table.num_rows)
    if progress is not None and seen < len(files):
        progress(len(files) - seen)  # files in folders that held no audio or image
    if not tables:
        return result_schema(labels, metrics).empty_table()
    return pa.concat_tables(tables).sort_by("order").drop_columns(["order"])
