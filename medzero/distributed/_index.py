"""The case index on the ray engine: vectors computed in the cluster, written by whoever may write.

::

    driver        list files; probe the models; check them against the index; send the sha256s
                  the index holds to the tasks
    Ray tasks     Source.of (sniff) → read once → sha256 → skip known → Pipeline.prepare
    actor pool    Pipeline.embed → l2_normalise (+ the task's scores)
      index folder (one writer): the driver holds the write lock for the run and commits each
                  streamed batch through CaseIndex.writer() (IndexWriter.insert), as CaseIndex.add
                  commits: vector files fsynced, one SQLite transaction, then FAISS
      PostgreSQL (many writers): each actor opens its own connection (CaseIndex.location, whose
                  repr hides the password) and inserts its batch in one transaction; the
                  database's UNIQUE (space, sha256) refuses what another writer committed first;
                  the driver only collects the actors' report rows

Every row that comes back is one file: ``ok`` (a vector), ``duplicate``, ``error`` (the local
engine's message) or ``fatal`` (the index holds another model's vectors for the file's modality:
the same :class:`CaseIndexError` the local engine raises); from a writing actor, ``added`` (with
its id) in place of ``ok``.
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

    Who writes depends on the store. An index folder has one writer: the driver takes the
    index's write lock for the whole run and commits the vectors the cluster computed as they
    stream back, each batch of ``batch_size`` files in one transaction through the path
    :meth:`CaseIndex.add` commits by (vector files fsynced, then SQLite, then FAISS;
    :meth:`CaseIndex.writer`). A PostgreSQL index takes many writers: each embedding actor opens
    its own connection (:attr:`CaseIndex.location`) and inserts its batches itself, one
    transaction each, while other servers and jobs write too; the database refuses a second copy
    of a file in a space, and the driver only collects the actors' reports.

    Either way a killed run leaves every committed batch and an index that opens consistent;
    running the same add again skips the files already indexed before they are decoded or
    embedded (the cluster gets the sha256s the index holds), so only the missing ones are
    computed. Returns the local engine's report, plus ``embedded``: how many files the cluster
    embedded.
    """
    require_ray()
    options = options or RayOptions()
    batch_size = max(1, int(batch_size))
    report = RayAddReport()
    files = list_files(sources, absolute=True)
    if not files:
        return report
    task_obj = load_task(task) if task is not None else None
    connect(options.address)
    location = getattr(index, "location", None)
    if location is not None and location.many_writers:
        with index.writer() as writer:  # holds nothing on a database; the facts and sha256s of the run's start
            plan = _plan(index, writer, files, options, batch_size)
        rows = _embedded(plan, batch_size, _WritingActor, {"location": location, "task": task_obj})
        for table in rows.iter_batches(batch_size=batch_size, batch_format="pyarrow"):
            _collect(table.to_pylist(), report)
            _progressed(progress, table.num_rows)
    else:
        with index.writer() as writer:  # one writer for the whole run, and the sha256s we skip stay true
            plan = _plan(index, writer, files, options, batch_size)
            rows = _embedded(plan, batch_size, _IndexActor, {"task": task_obj})
            for table in rows.iter_batches(batch_size=batch_size, batch_format="pyarrow"):
                _commit(writer, table.to_pylist(), plan.refs, report)
                _progressed(progress, table.num_rows)
            writer.save()
    seen = len(report.added) + len(report.duplicates) + len(report.errors)
    if progress is not None and seen < len(files):
        progress(len(files) - seen)  # files in folders that are not studies
    return report


@dataclass
class _Plan:
    """What the driver settles before the cluster starts: the files as a dataset decoded in Ray
    tasks, each modality's model reference, and the actor pool's shape."""

    decoded: Any
    refs: dict[str, str | None]
    device: str
    backend: str | None
    size: int
    gpus: float
    cpus: float


def _plan(index: "CaseIndex", writer: "IndexWriter", files: list, options: RayOptions, batch_size: int) -> _Plan:
    """Probe the models, check them against the index (the local engine's errors), send the
    sha256s the index holds to the decode tasks, and size the actor pool."""
    ray = require_ray()
    refs = {m: writer.model_ref(m) for m in modality_names()}
    backend = getattr(index, "backend", None)
    facts = describe(functools.partial(_create_on, refs, "cpu", backend), list(refs), writer.loaded_encoders())
    facts = {m: _checked(writer, f, refs[m]) for m, f in facts.items()}
    known = {m: ray.put(writer.digests(f.fingerprint)) for m, f in facts.items() if f.error is None}
    size, gpus, cpus = _actors(options, index.device, backend)
    _logger.info("ray engine: %d actor(s) with %g GPU and %g CPU each, batches of %d", size, gpus, cpus, batch_size)
    decoded = _dataset(files, batch_size).map_batches(
        _decode_for_index, batch_format="pyarrow", batch_size=batch_size, fn_kwargs={"facts": facts, "known": known}, **_DECODE_ARGS
    )
    return _Plan(decoded, refs, index.device, backend, size, gpus, cpus)


def _embedded(plan: _Plan, batch_size: int, actor: type, kwargs: Mapping[str, Any]) -> Any:
    """The decoded files through a pool of ``actor``: embedded (and, for a :class:`_WritingActor`, written)."""
    from ray.data import ActorPoolStrategy

    return plan.decoded.map_batches(
        actor, batch_format="pyarrow", batch_size=batch_size, compute=ActorPoolStrategy(size=plan.size),
        fn_constructor_kwargs={"refs": plan.refs, "device": plan.device, "backend": plan.backend, **kwargs},
        **_remote_args(plan.gpus, plan.cpus),
    )


def _progressed(progress: Callable[[int], None] | None, n: int) -> None:
    if progress is not None:
        progress(n)


class _StoreWriter:
    """An actor's own connection to a many-writer store, with the three calls :func:`_commit` makes
    (:class:`~medzero.retrieval.IndexWriter`'s names). ``insert`` answers per case: its new id,
    or ``None`` where another writer committed the same content to the space first."""

    def __init__(self, store: Any):
        self.store = store

    def space_row(self, modality: str, fingerprint: str, dim: int, model_ref: str | None):
        return self.store.row_for(modality, fingerprint, dim, model_ref)

    def known_sha256(self, space: str, shas: list[str]) -> set[str]:
        return self.store.known_sha(space, shas)

    def insert(self, cases: list) -> list[int | None]:
        return self.store.insert(cases)


class _WritingActor(_IndexActor):
    """An :class:`_IndexActor` that also writes: each batch it embeds goes into the index in one
    transaction over a connection of its own, and what comes back is one report row per file
    (``added`` with its id, ``duplicate``, ``error`` or ``fatal``), no vectors."""

    def __init__(self, location: Any, refs: Mapping[str, str | None], device: str, backend: str | None, task: Task | None):
        super().__init__(refs, device, backend, task)
        self.refs = dict(refs)
        self.location = location
        self.writer: _StoreWriter | None = None

    def _writer(self) -> _StoreWriter:
        if self.writer is None:  # opened on the first batch: an actor that gets none holds no connection
            self.writer = _StoreWriter(self.location.open_store())
        return self.writer

    def __call__(self, batch: "pa.Table") -> "pa.Table":
        import pyarrow as pa

        rows = super().__call__(batch).to_pylist()
        done: dict[int, tuple[str, int | None]] = {}
        if not any(r["status"] == "fatal" for r in rows):  # a fatal row: the whole run stops, nothing is written
            try:
                done = _commit(self._writer(), rows, self.refs, RayAddReport())
            except MedzeroError as exc:  # the store refused (connection, rights, another model): one line for the driver
                rows = [{**r, "status": "fatal", "error": str(exc)} for r in rows]
        out: dict[str, list[Any]] = {name: [] for name, _ in _WRITTEN}
        for i, row in enumerate(rows):
            status, case_id = done.get(i, (row["status"], None))
            values = {"order": row["order"], "path": row["path"], "status": status, "error": row["error"], "id": case_id,
                      "embedded": row["status"] == "ok"}
            for name, _ in _WRITTEN:
                out[name].append(values[name])
        return pa.table(out, schema=_schema(_WRITTEN))


#: What a writing actor sends back per file: its outcome, and the new case's id.
_WRITTEN = (("order", "int64"), ("path", "string"), ("status", "string"), ("error", "string"), ("id", "int64"), ("embedded", "bool_"))


def _collect(rows: list[dict[str, Any]], report: RayAddReport) -> None:
    """The actors' report rows into the run's report (a ``fatal`` row ends the run, as in the local engine)."""
    for row in rows:
        status = row["status"]
        if status == "fatal":
            raise CaseIndexError(row["error"])
        report.embedded += bool(row["embedded"])
        if status == "added":
            report.added.append(int(row["id"]))
        elif status == "duplicate":
            report.duplicates.append(row["path"])
        elif status == "error":
            report.errors.append((row["path"], row["error"]))


def _commit(writer: Any, rows: list[dict[str, Any]], refs: Mapping[str, str | None], report: RayAddReport) -> dict[int, tuple[str, int | None]]:
    """One streamed batch into the index in one transaction (``IndexWriter.insert``, or an actor's
    :class:`_StoreWriter`), noted in ``report``; returns, by position in ``rows``, what became of
    each embedded row: ``("added", id)`` or ``("duplicate", None)``.

    Files the index already holds (or that came twice) are duplicates, checked here too, since
    the cluster's tasks only knew the cases of the run's start; over a database the insert itself
    refuses what another writer committed since (a ``None`` id: a duplicate too)."""
    groups: dict[str, tuple[Any, list[tuple[int, dict[str, Any]]]]] = {}
    for i, row in enumerate(rows):
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
            groups.setdefault(space_row.space, (space_row, []))[1].append((i, {**row, "vector": vector}))
    done: dict[int, tuple[str, int | None]] = {}
    inserts, positions = [], []
    for key, (space_row, group) in groups.items():
        known = writer.known_sha256(key, [r["sha256"] for _, r in group])
        for i, r in group:
            if r["sha256"] in known:
                report.duplicates.append(r["path"])
                done[i] = ("duplicate", None)
                continue
            known.add(r["sha256"])
            case = dict(
                path=r["path"], sha256=r["sha256"], vector=r["vector"], metadata=json.loads(r["metadata"]), task=r["task"],
                scores=json.loads(r["scores"]) if r["scores"] is not None else None,
                duration_s=r["duration_s"], width=r["width"], height=r["height"],
            )
            inserts.append((space_row, case))
            positions.append(i)
    if inserts:
        # per case an id, or None where another writer committed the content first (IndexWriter
        # leaves those out, and its local store, with one writer, never has any)
        ids = list(writer.insert(inserts))
        report.record(inserts, ids)
        for i, case_id in zip(positions, ids):
            done[i] = ("added", case_id) if case_id is not None else ("duplicate", None)
    return done
