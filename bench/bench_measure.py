"""Closed-loop load generation and its statistics, shared by every request workload.

``N`` Trio tasks each issue requests back to back. The clock starts after ``warmup_s``; for
``duration_s`` we count completed requests (throughput) and record the latency of each
request that both started and finished inside the window (``time.perf_counter``). When the
window ends, every task finishes the request it has in flight and stops: nothing is
cancelled.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio


@attrs.frozen
class LoadResult:
    concurrency: int
    duration_s: float
    completed: int
    latencies_s: list[float]

    @property
    def throughput(self) -> float:
        return self.completed / self.duration_s

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile of the latencies (nearest rank), in seconds."""
        data = sorted(self.latencies_s)
        if not data:
            return float("nan")
        rank = max(1, min(len(data), round(q / 100 * len(data) + 0.5)))
        return data[rank - 1]

    def figure(self, **extra: Any) -> dict[str, Any]:
        """The result as a JSON-ready figure, every value with its unit (latencies are None
        when no request both started and finished in the window)."""
        n = len(self.latencies_s)

        def ms(seconds: float) -> float | None:
            return round(seconds * 1e3, 4) if n else None

        return {
            "kind": "requests",
            "concurrency": self.concurrency,
            "throughput": {"value": round(self.throughput, 1), "unit": "req/s"},
            "p50": {"value": ms(self.percentile(50)), "unit": "ms"},
            "p99": {"value": ms(self.percentile(99)), "unit": "ms"},
            "mean": {"value": ms(sum(self.latencies_s) / max(1, n)), "unit": "ms"},
            "requests_in_window": self.completed,
            "latency_samples": len(self.latencies_s),
            "window": {"value": self.duration_s, "unit": "s"},
            **extra,
        }


async def closed_loop(
    call: Callable[[int], Awaitable[object]],
    concurrency: int,
    *,
    warmup_s: float,
    duration_s: float,
) -> LoadResult:
    """Run ``concurrency`` tasks calling ``call(i)`` back to back (distinct ``i`` per call)."""
    perf = time.perf_counter
    start = perf()
    window_start = start + warmup_s
    window_end = window_start + duration_s
    latencies: list[float] = []
    completed = 0

    async def worker(first: int) -> None:
        nonlocal completed
        i = first
        while True:
            t0 = perf()
            if t0 >= window_end:
                return
            await call(i)
            t1 = perf()
            if window_start <= t1 <= window_end:
                completed += 1
                if t0 >= window_start:
                    latencies.append(t1 - t0)
            i += concurrency

    async with trio.open_nursery() as nursery:
        for k in range(concurrency):
            nursery.start_soon(worker, k)
    return LoadResult(concurrency, duration_s, completed, latencies)


def closed_loop_sync(
    call: Callable[[int], object], *, warmup_s: float, duration_s: float
) -> LoadResult:
    """The same measurement for one plain thread calling ``call(i)`` back to back."""
    perf = time.perf_counter
    start = perf()
    window_start = start + warmup_s
    window_end = window_start + duration_s
    latencies: list[float] = []
    completed = 0
    i = 0
    while True:
        t0 = perf()
        if t0 >= window_end:
            break
        call(i)
        t1 = perf()
        if window_start <= t1 <= window_end:
            completed += 1
            if t0 >= window_start:
                latencies.append(t1 - t0)
        i += 1
    return LoadResult(1, duration_s, completed, latencies)
