"""The service's dynamic batcher on its own: gathering, bounds, cancellation and failures.

``run`` here is a plain function that records the batches it is given; the model-backed path is
covered against a real server in ``test_service.py``.
"""
from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from medzero.service.batching import Batcher, QueueFull


class Recorder:
    def __init__(self, delay: float = 0.0, fail_on=None):
        self.calls: list[list] = []
        self.threads: set[str] = set()
        self.delay, self.fail_on = delay, fail_on

    def __call__(self, items: list) -> list:
        self.calls.append(list(items))
        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay)
        if self.fail_on is not None and self.fail_on in items:
            raise RuntimeError("boom")
        return [ValueError(f"bad {x}") if x == "bad" else f"<{x}>" for x in items]


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


@pytest.fixture()
def pool():
    with ThreadPoolExecutor(1, thread_name_prefix="compute") as executor:
        yield executor


def test_concurrent_submissions_share_one_call_in_order(pool):
    rec = Recorder()
    batcher = Batcher(rec, max_batch=8, window_s=0.2, capacity=16, executor=pool)

    async def main():
        return await asyncio.gather(*(batcher.submit([i]) for i in range(5)), batcher.submit([5, 6]))

    out = run(main())
    assert [r for group in out for r, _ in group] == [f"<{i}>" for i in range(7)]
    assert rec.calls == [[0, 1, 2, 3, 4, 5, 6]]
    assert {size for group in out for _, size in group} == {7}
    assert rec.threads == {"compute_0"} and batcher.stats.largest == 7 and batcher.idle


def test_max_batch_splits_and_later_arrivals_wait_for_the_next_pass(pool):
    rec = Recorder(delay=0.1)
    batcher = Batcher(rec, max_batch=2, window_s=0.05, capacity=16, executor=pool)

    async def main():
        return await asyncio.gather(*(batcher.submit([i]) for i in range(5)))

    out = run(main())
    assert [group[0][0] for group in out] == [f"<{i}>" for i in range(5)]
    assert rec.calls == [[0, 1], [2, 3], [4]]


def test_a_batch_of_one_is_a_window_of_nothing(pool):
    rec = Recorder()
    batcher = Batcher(rec, max_batch=1, window_s=5.0, capacity=4, executor=pool)
    started = time.monotonic()
    assert run(batcher.submit(["a"])) == [("<a>", 1)]
    assert time.monotonic() - started < 2


def test_admission_is_bounded_and_all_or_nothing(pool):
    rec = Recorder()
    batcher = Batcher(rec, max_batch=8, window_s=0.3, capacity=2, executor=pool)

    async def main():
        with pytest.raises(QueueFull):
            batcher.enqueue([1, 2, 3])
        assert batcher.waiting == 0
        first = asyncio.ensure_future(batcher.submit([1, 2]))
        await asyncio.sleep(0.05)
        with pytest.raises(QueueFull):
            await batcher.submit([3])
        assert await first == [("<1>", 2), ("<2>", 2)]
        assert await batcher.submit([3]) == [("<3>", 1)]  # room again once the pass started

    run(main())


def test_a_caller_that_gives_up_frees_its_place_and_is_skipped(pool):
    rec = Recorder()
    batcher = Batcher(rec, max_batch=8, window_s=0.5, capacity=1, executor=pool)

    async def main():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(batcher.submit(["late"]), 0.1)
        assert batcher.waiting == 0
        assert await batcher.submit(["next"]) == [("<next>", 1)]

    run(main())
    assert rec.calls == [["next"]]


def test_failures_reach_only_their_callers_and_the_batcher_goes_on(pool):
    rec = Recorder(fail_on="x")
    batcher = Batcher(rec, max_batch=8, window_s=0.1, capacity=8, executor=pool)

    async def main():
        results = await asyncio.gather(batcher.submit(["x"]), batcher.submit(["y"]), return_exceptions=True)
        assert all(isinstance(r, RuntimeError) for r in results)  # run() failed as a whole
        results = await asyncio.gather(batcher.submit(["bad"]), batcher.submit(["ok"]), return_exceptions=True)
        assert isinstance(results[0], ValueError) and results[1] == [("<ok>", 2)]
        assert await batcher.submit(["after"]) == [("<after>", 1)]
        await batcher.close()

    run(main())


def test_bad_settings_are_refused(pool):
    for kwargs in ({"max_batch": 0}, {"capacity": 0}, {"window_s": -1}):
        settings = {"max_batch": 2, "window_s": 0.0, "capacity": 2, **kwargs}
        with pytest.raises(ValueError):
            Batcher(Recorder(), executor=pool, **settings)
