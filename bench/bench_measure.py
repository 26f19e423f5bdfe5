"""Closed-loop load generation, shared by every request workload.

``N`` Trio tasks each issue requests back to back. After ``warmup_s``, ``windows``
consecutive windows of ``window_s`` each open one after the other while the load keeps
running (no pause, no drain between them). A request counts for the window in which it
finished (throughput), and its latency (``time.perf_counter``) is recorded for that window
when it also started in it. When the last window ends, every task finishes the request it
has in flight and stops: nothing is cancelled. ``bench_stats`` turns the windows into a
figure (median, min, max).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import bench_stats
import trio


@attrs.frozen
class LoadResult:
    concurrency: int
    window_s: float
    #: per window: requests completed in it, latencies of those that also started in it
    completed: list[int]
    latencies_s: list[list[float]]

    def windows(self) -> list[dict[str, Any]]:
        return [
            bench_stats.window(n, self.window_s, lat)
            for n, lat in zip(self.completed, self.latencies_s, strict=True)
        ]

    @property
    def throughput(self) -> float:
        """The median throughput of the windows."""
        value = bench_stats.summarize(self.windows(), self.concurrency, self.window_s)
        return float(value["throughput"]["value"] or 0.0)

    def figure(self, **extra: Any) -> dict[str, Any]:
        """The result as a JSON-ready figure, every value with its unit."""
        return bench_stats.summarize(self.windows(), self.concurrency, self.window_s, **extra)


class _Windows:
    def __init__(self, start: float, warmup_s: float, window_s: float, windows: int) -> None:
        self.first = start + warmup_s
        self.window_s = window_s
        self.n = windows
        self.end = self.first + windows * window_s
        self.completed = [0] * windows
        self.latencies: list[list[float]] = [[] for _ in range(windows)]

    def index(self, t: float) -> int | None:
        if t < self.first or t > self.end:
            return None
        return min(self.n - 1, int((t - self.first) / self.window_s))

    def record(self, t0: float, t1: float) -> None:
        k = self.index(t1)
        if k is None:
            return
        self.completed[k] += 1
        if self.index(t0) == k:
            self.latencies[k].append(t1 - t0)

    def result(self, concurrency: int) -> LoadResult:
        return LoadResult(concurrency, self.window_s, self.completed, self.latencies)


async def closed_loop(
    call: Callable[[int], Awaitable[object]],
    concurrency: int,
    *,
    warmup_s: float,
    window_s: float,
    windows: int = 1,
) -> LoadResult:
    """Run ``concurrency`` tasks calling ``call(i)`` back to back (distinct ``i`` per call)."""
    perf = time.perf_counter
    w = _Windows(perf(), warmup_s, window_s, windows)
    end = w.end

    async def worker(first: int) -> None:
        i = first
        while True:
            t0 = perf()
            if t0 >= end:
                return
            await call(i)
            w.record(t0, perf())
            i += concurrency

    async with trio.open_nursery() as nursery:
        for k in range(concurrency):
            nursery.start_soon(worker, k)
    return w.result(concurrency)


def closed_loop_sync(
    call: Callable[[int], object], *, warmup_s: float, window_s: float, windows: int = 1
) -> LoadResult:
    """The same measurement for one plain thread calling ``call(i)`` back to back."""
    perf = time.perf_counter
    w = _Windows(perf(), warmup_s, window_s, windows)
    i = 0
    while True:
        t0 = perf()
        if t0 >= w.end:
            break
        call(i)
        w.record(t0, perf())
        i += 1
    return w.result(1)
