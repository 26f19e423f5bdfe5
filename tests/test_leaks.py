"""Leaks: a long run of requests through one handle to one process replica leaves memory,
file descriptors and Trio tasks where they were."""

from __future__ import annotations

import gc
import time

import psutil
import pytest
import trio
import trio.lowlevel

import trioserve as serve

WARM_UP = 5_000
#: one replica answers ~7,000 requests/s from 32 concurrent callers on a 2-CPU machine:
#: about 15 s for these (about 40 s when other test runs share the machine)
REQUESTS = 100_000
CONCURRENCY = 32
RSS_GROWTH_LIMIT = 10 * 1024 * 1024


@serve.deployment(max_ongoing_requests=CONCURRENCY)
class Counter:
    """Adds one; ``usage`` reports this replica's RSS and open file descriptors."""

    async def __call__(self, x: int) -> int:
        return x + 1

    def usage(self) -> tuple[int, int]:
        gc.collect()
        me = psutil.Process()
        return me.memory_info().rss, me.num_fds()

    async def tasks(self) -> int:
        """The Trio tasks running in this replica process (this call's own task included)."""
        await trio.lowlevel.checkpoint()
        return count_tasks()


def count_tasks() -> int:
    """Every task of this Trio run, found by walking the task tree from the root."""
    pending = [trio.lowlevel.current_root_task()]
    total = 0
    while pending:
        task = pending.pop()
        total += 1
        for nursery in task.child_nurseries:
            pending.extend(nursery.child_tasks)
    return total


def driver_usage() -> tuple[int, int]:
    gc.collect()
    me = psutil.Process()
    return me.memory_info().rss, me.num_fds()


async def send(handle: serve.DeploymentHandle, n: int) -> None:
    """``n`` requests from CONCURRENCY tasks, each answer checked."""

    async def worker(start: int) -> None:
        for x in range(start, n, CONCURRENCY):
            assert await handle.remote(x) == x + 1

    async with trio.open_nursery() as nursery:
        for start in range(CONCURRENCY):
            nursery.start_soon(worker, start)


@pytest.mark.slow
async def test_leaks_many_requests_keep_memory_fds_and_tasks_flat() -> None:
    """After REQUESTS requests through an async handle to one process replica, neither the
    driver's nor the replica's RSS grew by 10 MB, file descriptors are back to where they
    were, and no Trio task was left behind."""
    async with serve.open_serve(http_port=None) as instance:
        handle = await instance.run(Counter.bind(), name="leaks")
        await send(handle, WARM_UP)
        replica_before = await handle.usage.remote()
        replica_tasks_before = await handle.tasks.remote()
        driver_before = driver_usage()
        tasks_before = count_tasks()

        started = time.monotonic()
        await send(handle, REQUESTS)
        elapsed = time.monotonic() - started

        replica_after = await handle.usage.remote()
        replica_tasks_after = await handle.tasks.remote()
        driver_after = driver_usage()
        tasks_after = count_tasks()
    print(
        f"{REQUESTS} requests in {elapsed:.1f}s ({REQUESTS / elapsed:.0f}/s); "
        f"RSS growth: driver {(driver_after[0] - driver_before[0]) / 2**20:.2f} MiB, "
        f"replica {(replica_after[0] - replica_before[0]) / 2**20:.2f} MiB; "
        f"fds: driver {driver_before[1]} -> {driver_after[1]}, "
        f"replica {replica_before[1]} -> {replica_after[1]}; "
        f"tasks: driver {tasks_before} -> {tasks_after}, "
        f"replica {replica_tasks_before} -> {replica_tasks_after}"
    )
    assert driver_after[0] - driver_before[0] < RSS_GROWTH_LIMIT
    assert replica_after[0] - replica_before[0] < RSS_GROWTH_LIMIT
    assert driver_after[1] == driver_before[1]
    assert replica_after[1] == replica_before[1]
    assert tasks_after == tasks_before
    assert replica_tasks_after == replica_tasks_before
