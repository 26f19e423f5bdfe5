"""``@serve.batch``: the cut decision (sans-IO) and batching under Trio and asyncio."""

from __future__ import annotations

import asyncio
import pickle
import re
from collections.abc import AsyncIterator
from typing import Any

import attrs
import cloudpickle
import pytest
import trio
import trio.testing

from trioserve._metrics import Histogram
from trioserve._replica.batch_policy import BatchPolicy, BatchQueue
from trioserve._replica.batching import (
    BATCH_SIZE_BUCKETS,
    BatchedFunction,
    batch,
    snapshot_batch_metrics,
)

# -- the cut decision (pure)


def _queue(n: int, since: float = 0.0) -> BatchQueue[int]:
    queue: BatchQueue[int] = BatchQueue()
    for i in range(n):
        queue.put(i, since)
    return queue


def test_next_batch_full_batch_cut_immediately() -> None:
    """A batch holding max_batch_size items starts at once, oldest first."""
    queue = _queue(5)
    policy = BatchPolicy(max_batch_size=3, batch_wait_timeout_s=10.0)
    assert queue.wake_at(policy) == 0.0
    assert queue.next_batch(0.0, policy) == [0, 1, 2]
    assert len(queue) == 2


def test_next_batch_partial_batch_waits_for_timeout() -> None:
    """A partial batch starts batch_wait_timeout_s after its first item, not before."""
    queue = _queue(2, since=1.0)
    policy = BatchPolicy(max_batch_size=4, batch_wait_timeout_s=0.5)
    assert queue.next_batch(1.49, policy) is None
    assert queue.wake_at(policy) == 1.5
    assert queue.next_batch(1.5, policy) == [0, 1]
    assert queue.wake_at(policy) is None


def test_next_batch_respects_max_concurrent_batches() -> None:
    """No batch starts while max_concurrent_batches run; one does after batch_done()."""
    queue = _queue(6)
    policy = BatchPolicy(max_batch_size=2, max_concurrent_batches=2)
    assert queue.next_batch(0.0, policy) == [0, 1]
    assert queue.next_batch(0.0, policy) == [2, 3]
    assert queue.next_batch(0.0, policy) is None
    assert queue.wake_at(policy) is None
    queue.batch_done()
    assert queue.next_batch(0.0, policy) == [4, 5]


def test_next_batch_uses_changed_max_batch_size() -> None:
    """A policy with a new max_batch_size applies to items already waiting."""
    queue = _queue(3)
    policy = BatchPolicy(max_batch_size=4, batch_wait_timeout_s=1.0)
    assert queue.next_batch(0.0, policy) is None
    smaller = attrs.evolve(policy, max_batch_size=2)
    assert queue.next_batch(0.0, smaller) == [0, 1]


def test_batch_queue_remove_and_idle() -> None:
    """A removed item is never cut; the queue is idle when nothing waits or runs."""
    queue = _queue(2)
    assert queue.remove(0)
    assert not queue.remove(0)
    assert queue.next_batch(1.0, BatchPolicy()) == [1]
    assert not queue.idle
    queue.batch_done()
    assert queue.idle


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"max_batch_size": 0}, ValueError, "max_batch_size must be >= 1, got 0"),
        ({"batch_wait_timeout_s": -1}, ValueError, "batch_wait_timeout_s must be >= 0, got -1"),
        ({"max_concurrent_batches": 0}, ValueError, "max_concurrent_batches must be >= 1, got 0"),
        ({"max_batch_size": 2.5}, TypeError, "max_batch_size must be an int, got 2.5"),
    ],
)
def test_batch_validates_settings_at_decoration(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    """Bad settings fail when decorating, with the bad value in the message."""
    with pytest.raises(error, match=re.escape(message)):
        batch(**kwargs)


def test_batch_rejects_sync_function() -> None:
    """Decorating a plain ``def`` says @serve.batch needs an ``async def`` function."""

    def handle(xs: list[int]) -> list[int]:
        return xs

    with pytest.raises(TypeError, match=re.escape("@serve.batch needs an `async def` function")):
        batch(handle)


def test_set_max_batch_size_validates() -> None:
    """A bad value at run time is refused with the same message."""

    @batch
    async def double(xs: list[int]) -> list[int]:
        return [2 * x for x in xs]

    with pytest.raises(ValueError, match=re.escape("max_batch_size must be >= 1, got 0")):
        double.set_max_batch_size(0)
    double.set_batch_wait_timeout_s(0.5)
    assert double._get_max_batch_size() == 10
    assert double._get_batch_wait_timeout_s() == 0.5


def test_batched_function_pickles_without_its_queues() -> None:
    """A decorated function survives cloudpickle (as deployments are shipped) with settings."""

    @batch(max_batch_size=3)
    async def double(xs: list[int]) -> list[int]:
        return [2 * x for x in xs]

    copy = pickle.loads(cloudpickle.dumps(double))
    assert isinstance(copy, BatchedFunction)
    assert copy._get_max_batch_size() == 3


# -- Trio


class Model:
    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    @batch(max_batch_size=4, batch_wait_timeout_s=1.0)
    async def handle(self, xs: list[int]) -> list[int]:
        self.batches.append(xs)
        await trio.sleep(0.1)
        return [x * 10 for x in xs]


def _sorted(batches: list[list[int]]) -> list[list[int]]:
    """Batches with their items sorted (Trio starts sibling tasks in no fixed order)."""
    return [sorted(b) for b in batches]


async def _gather(fn: Any, items: list[Any]) -> list[Any]:
    results: list[Any] = [None] * len(items)

    async def one(i: int) -> None:
        results[i] = await fn(items[i])

    async with trio.open_nursery() as nursery:
        for i in range(len(items)):
            nursery.start_soon(one, i)
    return results


@pytest.mark.autojump
async def test_batch_full_batch_starts_without_waiting() -> None:
    """max_batch_size callers are served in one batch before the timeout; each gets its own."""
    model = Model()
    start = trio.current_time()
    assert await _gather(model.handle, [1, 2, 3, 4]) == [10, 20, 30, 40]
    assert _sorted(model.batches) == [[1, 2, 3, 4]]
    assert trio.current_time() - start == pytest.approx(0.1)


@pytest.mark.autojump
async def test_batch_partial_batch_starts_at_timeout() -> None:
    """Fewer than max_batch_size callers wait batch_wait_timeout_s, then run together."""
    model = Model()
    start = trio.current_time()
    assert await _gather(model.handle, [1, 2]) == [10, 20]
    assert _sorted(model.batches) == [[1, 2]]
    assert trio.current_time() - start == pytest.approx(1.1)


@pytest.mark.autojump
async def test_batch_splits_into_batches_of_max_size() -> None:
    """Six callers with max_batch_size=4 make a batch of 4, then one of 2 (one at a time)."""
    model = Model()
    assert await _gather(model.handle, list(range(6))) == [x * 10 for x in range(6)]
    assert [len(b) for b in model.batches] == [4, 2]
    assert sorted(x for b in model.batches for x in b) == list(range(6))


@pytest.mark.autojump
async def test_batch_max_concurrent_batches_run_together() -> None:
    """With max_concurrent_batches=2, two full batches overlap; a third waits for one."""
    running = 0
    peak = 0

    @batch(max_batch_size=2, batch_wait_timeout_s=0.0, max_concurrent_batches=2)
    async def work(xs: list[int]) -> list[int]:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await trio.sleep(1.0)
        running -= 1
        return xs

    start = trio.current_time()
    assert await _gather(work, list(range(6))) == list(range(6))
    assert peak == 2
    assert trio.current_time() - start == pytest.approx(2.0)


@pytest.mark.autojump
async def test_batch_exception_reaches_every_caller() -> None:
    """An exception in the batch is raised, with its type, in each caller of that batch."""

    class ModelError(Exception):
        pass

    @batch(max_batch_size=3)
    async def fail(xs: list[int]) -> list[int]:
        raise ModelError("bad batch")

    caught: list[BaseException] = []

    async def one(x: int) -> None:
        with pytest.raises(ModelError, match="bad batch") as info:
            await fail(x)
        caught.append(info.value)

    async with trio.open_nursery() as nursery:
        for x in range(3):
            nursery.start_soon(one, x)
    assert len(caught) == 3


@pytest.mark.autojump
async def test_batch_wrong_result_length_is_an_error() -> None:
    """A result list of the wrong length fails every caller with a message giving both sizes."""

    @batch(max_batch_size=4)
    async def short(xs: list[int]) -> list[int]:
        return xs[:3]

    errors: list[str] = []

    async def one(x: int) -> None:
        with pytest.raises(ValueError, match="returned 3 results for a batch of 4") as info:
            await short(x)
        errors.append(str(info.value))

    async with trio.open_nursery() as nursery:
        for x in range(4):
            nursery.start_soon(one, x)
    assert len(errors) == 4


@pytest.mark.autojump
async def test_batch_non_list_result_is_an_error() -> None:
    """Returning something other than a list fails the caller with a TypeError."""

    @batch
    async def wrong(xs: list[int]) -> Any:
        return tuple(xs)

    with pytest.raises(TypeError, match="returned a tuple, not a list"):
        await wrong(1)


@pytest.mark.autojump
async def test_batch_generator_streams_to_each_caller() -> None:
    """An async generator yielding lists gives each caller its own stream of items."""

    @batch(max_batch_size=2)
    async def count(starts: list[int]) -> AsyncIterator[list[int]]:
        for step in range(3):
            await trio.sleep(0.1)
            yield [start + step for start in starts]

    got: dict[int, list[int]] = {}

    async def one(start: int) -> None:
        got[start] = [item async for item in count(start)]

    async with trio.open_nursery() as nursery:
        nursery.start_soon(one, 0)
        nursery.start_soon(one, 100)
    assert got == {0: [0, 1, 2], 100: [100, 101, 102]}


@pytest.mark.autojump
async def test_batch_generator_stop_iteration_ends_one_stream() -> None:
    """``StopIteration`` in a caller's place ends that caller's stream only."""

    @batch(max_batch_size=2)
    async def count(limits: list[int]) -> AsyncIterator[list[Any]]:
        for step in range(3):
            yield [step if step < limit else StopIteration for limit in limits]

    got: dict[int, list[int]] = {}

    async def one(limit: int) -> None:
        got[limit] = [item async for item in count(limit)]

    async with trio.open_nursery() as nursery:
        nursery.start_soon(one, 1)
        nursery.start_soon(one, 3)
    assert got == {1: [0], 3: [0, 1, 2]}


@pytest.mark.autojump
async def test_batch_caller_cancelled_before_start_leaves_queue() -> None:
    """A caller cancelled while queued is removed: the function sees one fewer item."""
    model = Model()
    results: dict[int, int] = {}

    async def one(x: int) -> None:
        results[x] = await model.handle(x)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(one, 1)
        with trio.move_on_after(0.5):
            await model.handle(2)
        nursery.start_soon(one, 3)
    assert _sorted(model.batches) == [[1, 3]]
    assert results == {1: 10, 3: 30}


@pytest.mark.autojump
async def test_batch_cancelling_one_caller_spares_the_batch() -> None:
    """Cancelling one caller while its batch runs leaves the others' results intact."""
    model = Model()
    results: dict[int, int] = {}

    async def one(x: int) -> None:
        results[x] = await model.handle(x)

    async with trio.open_nursery() as nursery:
        for x in (1, 2, 3):
            nursery.start_soon(one, x)
        with trio.move_on_after(1.05):  # the batch starts at 1.0 and runs for 0.1
            await model.handle(4)
    assert _sorted(model.batches) == [[1, 2, 3, 4]]
    assert results == {1: 10, 2: 20, 3: 30}


@pytest.mark.autojump
async def test_batch_all_callers_gone_cancels_the_batch() -> None:
    """When every caller of a running batch has left, the batch is cancelled."""
    finished = False

    @batch(max_batch_size=1)
    async def slow(xs: list[int]) -> list[int]:
        nonlocal finished
        await trio.sleep(10.0)
        finished = True
        return xs

    with trio.move_on_after(1.0):
        await slow(1)
    await trio.sleep(20.0)
    assert not finished
    assert await slow(2) == 2


@pytest.mark.autojump
async def test_batch_kwargs_batched_per_name() -> None:
    """Keyword arguments arrive as one list per name; positional and keyword spellings mix."""
    seen: list[tuple[list[int], list[str]]] = []

    @batch(max_batch_size=3)
    async def label(values: list[int], *, names: list[str]) -> list[str]:
        seen.append((values, names))
        return [f"{n}={v}" for v, n in zip(values, names, strict=True)]

    async def one(v: int) -> str:
        if v == 2:
            return str(await label(values=v, names=f"n{v}"))
        return str(await label(v, names=f"n{v}"))

    assert await _gather(one, [1, 2, 3]) == ["n1=1", "n2=2", "n3=3"]
    ((values, names),) = seen
    assert sorted(zip(values, names, strict=True)) == [(1, "n1"), (2, "n2"), (3, "n3")]


class Tunable:
    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def reconfigure(self, config: dict[str, int]) -> None:
        self.handle.set_max_batch_size(config["max_batch_size"])

    @batch(max_batch_size=10, batch_wait_timeout_s=5.0)
    async def handle(self, xs: list[int]) -> list[int]:
        self.batches.append(xs)
        return xs


@pytest.mark.autojump
async def test_set_max_batch_size_from_a_method() -> None:
    """``self.handle.set_max_batch_size(n)`` in reconfigure changes that instance's batches."""
    tuned, other = Tunable(), Tunable()
    tuned.reconfigure({"max_batch_size": 2})
    assert tuned.handle._get_max_batch_size() == 2
    assert other.handle._get_max_batch_size() == 10
    start = trio.current_time()
    assert await _gather(tuned.handle, [1, 2]) == [1, 2]
    assert trio.current_time() == start  # full at 2, no wait for the 5 s timeout
    assert _sorted(tuned.batches) == [[1, 2]]


@pytest.mark.autojump
async def test_set_max_batch_size_applies_to_waiting_items() -> None:
    """Lowering max_batch_size while items wait cuts them at once."""
    tuned = Tunable()

    async with trio.open_nursery() as nursery:
        for x in (1, 2, 3):
            nursery.start_soon(tuned.handle, x)
        await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
        tuned.handle.set_max_batch_size(3)
    assert _sorted(tuned.batches) == [[1, 2, 3]]
    assert trio.current_time() == start


@pytest.mark.autojump
async def test_batch_queues_are_per_instance() -> None:
    """Two instances never share a batch, each method sees its own ``self``."""
    a, b = Model(), Model()

    async def both() -> None:
        async with trio.open_nursery() as nursery:
            for x in (1, 2):
                nursery.start_soon(a.handle, x)
                nursery.start_soon(b.handle, x + 100)

    await both()
    assert _sorted(a.batches) == [[1, 2]]
    assert _sorted(b.batches) == [[101, 102]]


def test_batch_runner_not_reused_across_trio_runs() -> None:
    """A decorated function works in one ``trio.run`` after another (no stale runner)."""

    @batch(max_batch_size=2, batch_wait_timeout_s=0.0)
    async def double(xs: list[int]) -> list[int]:
        return [2 * x for x in xs]

    async def main() -> list[int]:
        return await _gather(double, [1, 2, 3])

    for _ in range(2):
        assert trio.run(main) == [2, 4, 6]
        assert double._state.runners == {}


@pytest.mark.autojump
async def test_snapshot_batch_metrics_reports_sizes_and_waits() -> None:
    """Batch sizes and per-item waits are readable per function and merge into Histograms."""

    @batch(max_batch_size=4, batch_wait_timeout_s=0.5)
    async def metered(xs: list[int]) -> list[int]:
        return xs

    await _gather(metered, [1, 2, 3, 4])  # full: no wait
    await _gather(metered, [5])  # partial: waits 0.5 s
    name = metered.__qualname__
    (found,) = [m for m in snapshot_batch_metrics() if m.function == name]
    assert found.size_count == 2
    assert found.size_sum == 5
    assert found.size_counts[BATCH_SIZE_BUCKETS.index(4)] == 1
    assert found.wait_count == 5
    assert found.wait_sum_s == pytest.approx(0.5)
    sizes = Histogram("trioserve_batch_size", "sizes", found.size_buckets)
    waits = Histogram("trioserve_batch_wait_seconds", "waits", found.wait_buckets_s)
    found.merge_into(sizes, waits, (("deployment", "d"),))
    assert sizes.values[(("deployment", "d"),)][2] == 2
    snapshot_batch_metrics(reset=True)
    assert [m for m in snapshot_batch_metrics() if m.function == name] == []


# -- asyncio


def test_batch_works_under_asyncio() -> None:
    """Under asyncio the same decorator batches callers, streams, and removes cancelled ones."""
    model_batches: list[list[int]] = []

    @batch(max_batch_size=3, batch_wait_timeout_s=0.01)
    async def triple(xs: list[int]) -> list[int]:
        model_batches.append(xs)
        return [3 * x for x in xs]

    @batch(max_batch_size=2)
    async def count(starts: list[int]) -> AsyncIterator[list[int]]:
        for step in range(2):
            yield [s + step for s in starts]

    async def collect(start: int) -> list[int]:
        return [item async for item in count(start)]

    async def main() -> None:
        assert await asyncio.gather(*(triple(x) for x in (1, 2, 3))) == [3, 6, 9]
        queued = asyncio.ensure_future(triple(4))
        await asyncio.sleep(0)
        queued.cancel()
        assert await triple(5) == 15
        assert list(await asyncio.gather(collect(0), collect(10))) == [[0, 1], [10, 11]]

    asyncio.run(main())
    assert model_batches == [[1, 2, 3], [5]]
    assert triple._state.runners == {}
