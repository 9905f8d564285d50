"""The case index on the ray engine: vectors computed in the cluster, committed by the one writer.

::

    driver        list files; take the write lock; probe the models; check them against the index;
                  send the sha256s the index holds to the tasks
    Ray tasks     Source.of (sniff) → read once → sha256 → skip known → Pipeline.prepare
    actor pool    Pipeline.embed → l2_normalise (+ the task's scores)
    driver        each streamed batch committed through CaseIndex.writer() (IndexWriter.insert), as
                  CaseIndex.add commits: vector files fsynced, one SQLite transaction, then FAISS
                  (the crash-safe path)

Every row that comes back is one file: ``ok`` (a vector), ``duplicate``, ``error`` (the local
engine's message) or ``fatal`` (the index holds another model's vectors for the file's modality:
the same :class:`CaseIndexError` the local engine raises).
"""
from __future__ import annotations

import functools
import json
import logging
import os
import pickle
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

import numpy as np

from ..core.errors import CaseIndexError, MedzeroError
from ..core.ingest import Pipeline, Prepared
from ..core.modality import get_modality, modality_names
from ..tasks.schema import Task, load_task
from ..tasks.scoring import TaskHead, build_head
from ..core.vectors import l2_normalise
from ..retrieval import AddReport
from ._engine import (
    _DECODE_ARGS, EncoderFacts, RayOptions, _actors, _create_on, _dataset, _Described, _pack, _remote_args,
    _skipped, _source, connect, describe, list_files, require_ray,
)

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

    from ..retrieval import CaseIndex, IndexWriter

__all__ = ["RayAddReport", "add_with_ray"]

_logger = logging.getLogger(__name__)


@dataclass
class RayAddReport(AddReport):
    """:class:`AddReport` plus ``embedded``: how many files the cluster embedded (a re-run embeds
    only those the index does not hold yet)."""

    embedded: int = 0


_DECODED_INDEX = (
    ("order", "int64"), ("path", "string"), ("sha256", "string"), ("modality", "string"),
    ("status", "string"), ("error", "string"), ("prepared", "binary"),
)
_EMBEDDED_INDEX = (
    ("order", "int64"), ("path", "string"), ("sha256", "string"), ("modality", "string"), ("status", "string"),
    ("error", "string"), ("fingerprint", "string"), ("vector", "binary"), ("metadata", "string"),
    ("duration_s", "float64"), ("width", "int64"), ("height", "int64"), ("task", "string"), ("scores", "string"),
)


def _schema(columns):
    import pyarrow as pa

    return pa.schema([(name, getattr(pa, kind)()) for name, kind in columns])


def _decode_for_index(batch: "pa.Table", *, facts: Mapping[str, EncoderFacts], known: Mapping[str, Any]) -> "pa.Table":
    """Sniff, read once, hash, skip what the index holds, decode: CaseIngest's steps, row by row.

    ``status``: ``ok`` (decoded), ``duplicate``, ``error``, or ``fatal`` (the index holds another
    model's vectors for this modality: the whole add is wrong, as in the local engine).
    """
    import pyarrow as pa
    import ray

    known = {m: ray.get(ref) if isinstance(ref, ray.ObjectRef) else ref for m, ref in known.items()}
    described = _Described(facts)
    pipeline = Pipeline(described)
    seen: set[bytes] = set()
    out: dict[str, list[Any]] = {name: [] for name, _ in _DECODED_INDEX}
    for row in batch.to_pylist():
        source = _source(row)
        if _skipped(row, source):
            continue
        status, error, sha, blob = "error", None, None, None
        if source.error is not None:
            error = str(source.error)
        else:
            try:
                limit = getattr(get_modality(source.modality).limits(), "max_bytes", None)
                source = source.read(limit)
                sha = source.sha256()
                described(source.modality)
            except CaseIndexError as exc:
                status, error = "fatal", str(exc)
            except MedzeroError as exc:
                error = str(exc)
            else:
                digest = bytes.fromhex(sha)
                if digest in seen or _holds(known.get(source.modality), digest):
                    status = "duplicate"
                else:
                    seen.add(digest)
                    prepared = pipeline.prepare(source)
                    if prepared.error is not None:
                        error = str(prepared.error)
                    else:
                        status, blob = "ok", _pack(prepared)
        for name, value in zip(
            ("order", "path", "sha256", "modality", "status", "error", "prepared"),
            (row.get("order"), source.name, sha, source.modality, status, error, blob),
        ):
            out[name].append(value)
    return pa.table(out, schema=_schema(_DECODED_INDEX))


def _holds(digests: np.ndarray | None, digest: bytes) -> bool:
    if digests is None or len(digests) == 0:
        return False
    # an S32 array drops its items' trailing zero bytes: a digest ending in 0x00 is compared as held
    key = np.bytes_(digest.rstrip(b"\x00"))
    i = int(np.searchsorted(digests, key))
    return i < len(digests) and digests[i] == key


class _IndexActor:
    """Embeds decoded cases (and scores them against the task, if any), one forward pass per modality."""

    def __init__(self, refs: Mapping[str, str | None], device: str, backend: str | None, task: Task | None):
        self.encoder = functools.partial(_create_on, dict(refs), device, backend)
        self.pipeline = Pipeline(self.encoder)
        self.task = task
        self.heads: dict[str, TaskHead | None] = {}

    def head(self, modality: str) -> TaskHead | None:
        if modality not in self.heads:
            fits = self.task is not None and self.task.modality == modality
            self.heads[modality] = build_head(self.task, self.encoder(modality)) if fits else None
        return self.heads[modality]

    def __call__(self, batch: "pa.Table") -> "pa.Table":
        import pyarrow as pa

        rows = batch.to_pylist()
        ready = [r for r in rows if r["status"] == "ok"]
        prepared = [pickle.loads(r["prepared"]) for r in ready]
        vectors = self.pipeline.embed(prepared)
        out: dict[str, list[Any]] = {name: [] for name, _ in _EMBEDDED_INDEX}
        done: dict[int, dict[str, Any]] = {}
        for row, p, vector in zip(ready, prepared, vectors):
            done[id(row)] = self._case(row, p, vector)
        for row in rows:
            case = done.get(id(row), {})
            values = {**{k: row.get(k) for k in ("order", "path", "sha256", "modality", "status", "error")}, **case}
            for name, _ in _EMBEDDED_INDEX:
                out[name].append(values.get(name))
        return pa.table(out, schema=_schema(_EMBEDDED_INDEX))

    def _case(self, row: Mapping[str, Any], p: Prepared, vector: np.ndarray | None) -> dict[str, Any]:
        if vector is None:
            return {"status": "error", "error": str(p.error)}
        try:
            emb = l2_normalise(vector, strict=True)
        except ValueError:
            return {"status": "error", "error": f"{row['path']}: the embedding is zero or not finite"}
        head = self.head(p.modality)
        return {
            "fingerprint": self.encoder(p.modality).fingerprint,
            "vector": emb[0].tobytes(),
            "metadata": json.dumps(dict(p.metadata), default=str, ensure_ascii=False),
            "duration_s": p.columns.get("duration_s"),
            "width": p.columns.get("width"),
            "height": p.columns.get("height"),
            "task": head.task.name if head is not None else None,
            "scores": json.dumps(head.as_dict(head.scores(emb)[0])) if head is not None else None,
        }


def _checked(writer: "IndexWriter", facts: EncoderFacts, model_ref: str | None) -> EncoderFacts:
    """The facts, carrying the index's CaseIndexError when its space holds another model's vectors
    (the check every add makes: model and dimension against the modality's space)."""
    if facts.error is not None:
        return facts
    try:
        writer.space_row(facts.modality, facts.fingerprint, facts.dim, model_ref)
    except CaseIndexError as exc:
        return replace(facts, error=exc)
    return facts


def add_with_ray(
    index: "CaseIndex",
    sources: "Iterable[Any] | Any",
    task: "str | os.PathLike | Task | None" = None,
    *,
    batch_size: int = 64,
    options: RayOptions | None = None,
    progress: Callable[[int], None] | None = None,
) -> RayAddReport:
    """``CaseIndex.add`` with the reading, decoding and embedding done on a Ray cluster.

    The one-writer rule holds: the driver takes the index's write lock for the whole run, and
    commits the vectors the cluster computed as they stream back, each batch of ``batch_size``
    files in one transaction through the path :meth:`CaseIndex.add` commits by (vector files
    fsynced, then SQLite, then FAISS; :meth:`CaseIndex.writer`). A driver killed mid-way leaves every committed batch and an
    index that opens consistent; running the same add again skips the files already indexed
    before they are decoded or embedded (the cluster gets the sha256s the index holds), so only
    the missing ones are computed. Returns the local engine's report, plus ``embedded``: how many
    files the cluster embedded.
    """
    ray = require_ray()
    from ray.data import ActorPoolStrategy

    options = options or RayOptions()
    batch_size = max(1, int(batch_size))
    report = RayAddReport()
    files = list_files(sources, absolute=True)
    if not files:
        return report
    task_obj = load_task(task) if task is not None else None
    connect(options.address)
    with index.writer() as writer:  # one writer for the whole run, and the sha256s we skip stay true
        refs = {m: writer.model_ref(m) for m in modality_names()}
        backend = getattr(index, "backend", None)
        facts = describe(functools.partial(_create_on, refs, "cpu", backend), list(refs), writer.loaded_encoders())
        facts = {m: _checked(writer, f, refs[m]) for m, f in facts.items()}
        known = {m: ray.put(writer.digests(f.fingerprint)) for m, f in facts.items() if f.error is None}
        size, gpus, cpus = _actors(options, index.device, backend)
        _logger.info("ray engine: %d actor(s) with %g GPU and %g CPU each, batches of %d", size, gpus, cpus, batch_size)
        cases = (
            _dataset(files, batch_size)
            .map_batches(_decode_for_index, batch_format="pyarrow", batch_size=batch_size, fn_kwargs={"facts": facts, "known": known}, **_DECODE_ARGS)
            .map_batches(
                _IndexActor, batch_format="pyarrow", batch_size=batch_size, compute=ActorPoolStrategy(size=size),
                fn_constructor_kwargs={"refs": refs, "device": index.device, "backend": backend, "task": task_obj}, **_remote_args(gpus, cpus),
            )
        )
        seen = 0
        for table in cases.iter_batches(batch_size=batch_size, batch_format="pyarrow"):
            _commit(writer, table.to_pylist(), refs, report)
            seen += table.num_rows
            if progress is not None:
                progress(table.num_rows)
        writer.save()
        if progress is not None and seen < len(files):
            progress(len(files) - seen)
    return report


def _commit(writer: "IndexWriter", rows: list[dict[str, Any]], refs: Mapping[str, str | None], report: RayAddReport) -> None:
    """One streamed batch into the index, through the path ``CaseIndex.add`` commits by
    (:meth:`IndexWriter.insert <medzero.retrieval.IndexWriter.insert>`): vector files written and
    fsynced, then one SQLite transaction for the whole batch, then FAISS, saved at the index's
    checkpoints. Files the index already holds (or that came twice) are duplicates, checked here
    too, since the cluster's tasks only knew the cases of the run's start."""
    groups: dict[str, tuple[Any, list[dict[str, Any]]]] = {}
    for row in rows:
        if row["status"] == "fatal":
            raise CaseIndexError(row["error"])
        if row["status"] == "duplicate":
            report.duplicates.append(row["path"])
        elif row["status"] == "error":
            report.errors.append((row["path"], row["error"]))
        else:
            report.embedded += 1
            vector = np.frombuffer(row["vector"], dtype=np.float32)
            space_row = writer.space_row(row["modality"], row["fingerprint"], len(vector), refs.get(row["modality"]))
            groups.setdefault(space_row.space, (space_row, []))[1].append({**row, "vector": vector})
    inserts = []
    for key, (space_row, group) in groups.items():
        known = writer.known_sha256(key, [r["sha256"] for r in group])
        for r in group:
            if r["sha256"] in known:
                report.duplicates.append(r["path"])
                continue
            known.add(r["sha256"])
            case = dict(
                path=r["path"], sha256=r["sha256"], vector=r["vector"], metadata=json.loads(r["metadata"]), task=r["task"],
                scores=json.loads(r["scores"]) if r["scores"] is not None else None,
                duration_s=r["duration_s"], width=r["width"], height=r["height"],
            )
            inserts.append((space_row, case))
    if inserts:
        report.added.extend(writer.insert(inserts))
