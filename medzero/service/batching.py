"""Dynamic batching: concurrent requests for the same models share one forward pass.

The service has one :class:`Batcher` (the models are the server's): requests submit their decoded
uploads from the event loop, whatever their task, labels or calibration; a gatherer task takes the
first waiting source, waits up to ``window_s`` for more (at most ``max_batch``), and hands the
gathered sources to ``run`` — one forward pass per modality, then each source scored by its own
classifier — on the compute executor, a thread, so the event loop keeps accepting and decoding
requests meanwhile. Sources that arrive while a pass runs wait for the next one.

Admission is bounded: ``capacity`` sources may wait for a forward pass at once (gathered or queued);
a submission that does not fit raises :class:`QueueFull` at once (the service answers 503 with
``Retry-After``), so memory and latency stay bounded under overload. A caller that gives up
(timeout, cancellation) frees its place straight away and its source is skipped.

Scores do not depend on what a source is batched with: medzero's CLAP features are computed per
clip (no random crops, every clip marked ``is_longer``), and the task head scores each embedding
on its own.

The service's ``run`` is :func:`embed_and_score`: the library's shared forward pass
(:func:`medzero.classifier.classify_prepared_many`) with a fault that is not a medzero error
isolated to the one source that causes it.
"""
from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from medzero.classifier import Classifier, classify_prepared_many
from medzero.core.ingest import Prepared
from medzero.core.results import Result

from .errors import InternalError, fault

__all__ = ["Batcher", "QueueFull", "BatchStats", "embed_and_score"]

_logger = logging.getLogger(__name__)
_service_logger = logging.getLogger("medzero.service")  # the service's log lines keep one logger name


class QueueFull(Exception):
    """No room for the submission: too many sources already wait for a forward pass."""


@dataclass
class BatchStats:
    batches: int = 0
    items: int = 0
    largest: int = 0


@dataclass(eq=False)
class _Job:
    source: Any
    future: asyncio.Future
    #: Still counted as waiting (cleared when its pass starts or when its caller gives up).
    waiting: bool = True
    #: Filled in when its pass ends: how many sources that pass held.
    batch_size: int = field(default=0)


class Batcher:
    """Gathers sources from concurrent callers into batches for ``run``.

    Args:
        run: called in ``executor`` with a list of sources; returns one result per source, in order.
        max_batch: the most sources in one call of ``run`` (1 disables batching).
        window_s: how long the first source of a batch waits for company.
        capacity: the most sources waiting for a forward pass at once.
        executor: where ``run`` executes (one thread: passes run one after another).
    """

    def __init__(
        self,
        run: Callable[[list[Any]], Sequence[Any]],
        *,
        max_batch: int,
        window_s: float,
        capacity: int,
        executor: Executor,
    ):
        if max_batch < 1 or capacity < 1 or window_s < 0:
            raise ValueError("max_batch and capacity must be at least 1 and window_s not negative")
        self._run = run
        self.max_batch = int(max_batch)
        self.window_s = float(window_s)
        self.capacity = int(capacity)
        self._executor = executor
        self._queue: asyncio.Queue[_Job] | None = None
        self._task: asyncio.Task | None = None
        self._waiting = 0
        self._busy = False
        self.stats = BatchStats()

    @property
    def waiting(self) -> int:
        """Sources admitted and not yet in a forward pass."""
        return self._waiting

    @property
    def idle(self) -> bool:
        return self._waiting == 0 and not self._busy

    async def submit(self, sources: Sequence[Any]) -> list[tuple[Any, int]]:
        """Results for ``sources`` in order, each with the size of the pass it ran in.

        All of ``sources`` are admitted or none: :class:`QueueFull` when they do not fit. A
        failure of ``run`` itself is raised here (only for the sources it concerned).
        """
        jobs = self.enqueue(sources)
        try:
            await asyncio.gather(*(job.future for job in jobs))
        except BaseException:
            self.cancel(jobs)
            raise
        return [(job.future.result(), job.batch_size) for job in jobs]

    def enqueue(self, sources: Sequence[Any]) -> list[_Job]:
        """Admit ``sources`` (all or none) and return their jobs; call from the event loop."""
        if self._waiting + len(sources) > self.capacity:
            raise QueueFull(f"{self._waiting} waiting, room for {self.capacity}")
        loop = asyncio.get_running_loop()
        if self._queue is None:
            self._queue = asyncio.Queue()
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._gather_forever(), name="medzero-batcher")
        jobs = [_Job(source, loop.create_future()) for source in sources]
        for job in jobs:
            job.future.add_done_callback(lambda _f, job=job: self._release(job))
            self._waiting += 1
            self._queue.put_nowait(job)
        return jobs

    @staticmethod
    def cancel(jobs: Sequence[_Job]) -> None:
        for job in jobs:
            if not job.future.done():
                job.future.cancel()

    def _release(self, job: _Job) -> None:
        # A caller gave up (its future was cancelled) before its pass started: free its place now.
        if job.waiting and job.future.cancelled():
            job.waiting = False
            self._waiting -= 1

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        while self._queue is not None and not self._queue.empty():
            self.cancel([self._queue.get_nowait()])

    async def _next_batch(self) -> list[_Job]:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        batch = [await self._queue.get()]
        deadline = loop.time() + self.window_s
        while len(batch) < self.max_batch:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        return batch

    async def _gather_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            live = []
            for job in batch:
                if job.waiting:
                    job.waiting = False
                    self._waiting -= 1
                if not job.future.done():
                    live.append(job)
            if not live:
                continue
            self._busy = True
            try:
                results = await loop.run_in_executor(self._executor, self._run, [job.source for job in live])
            except asyncio.CancelledError:
                self.cancel(live)
                raise
            except BaseException as exc:  # run() failed as a whole: every caller in the pass gets the error
                for job in live:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            finally:
                self._busy = False
            self.stats.batches += 1
            self.stats.items += len(live)
            self.stats.largest = max(self.stats.largest, len(live))
            if len(results) != len(live):  # pragma: no cover - a broken run()
                error = RuntimeError(f"the batch function returned {len(results)} results for {len(live)} sources")
                for job in live:
                    if not job.future.done():
                        job.future.set_exception(error)
                continue
            for job, result in zip(live, results):
                job.batch_size = len(live)
                if not job.future.done():
                    if isinstance(result, BaseException):
                        job.future.set_exception(result)
                    else:
                        job.future.set_result(result)


def embed_and_score(items: list[tuple[Classifier, Prepared]]) -> list[Result]:
    """One forward pass per modality for decoded uploads ``(classifier, prepared)`` of any configuration,
    then each scored by its own classifier. Runs on the compute thread.

    Every classifier of a server uses the server's models, so any one's encoders embed them all
    (:func:`~medzero.classifier.classify_prepared_many`). A failure that is not a :class:`MedzeroError`
    (a bug) is isolated: the items are embedded and scored one by one, and only the one that fails
    again gets an internal error.
    """
    try:
        return classify_prepared_many(items)
    except Exception as exc:  # noqa: BLE001 - not a MedzeroError: isolate it to its source
        if len(items) == 1:
            _service_logger.error("classification failed: %s", fault(exc))
            prepared = items[0][1]
            return [Result.failed(prepared.name, InternalError("internal error"), modality=prepared.modality)]
    results = []
    for item in items:
        try:
            results.extend(classify_prepared_many([item]))
        except Exception as exc:  # noqa: BLE001
            _service_logger.error("classification failed: %s", fault(exc))
            results.append(Result.failed(item[1].name, InternalError("internal error"), modality=item[1].modality))
    return results
