"""Statistics over measurement windows, standard library only.

Used by the trioserve workloads (through ``bench_measure``) and by ``ray_reference.py``,
which runs in another virtualenv (Ray's), so this module imports nothing outside the
standard library.

A request figure is measured in several windows; each window gives a throughput and p50/p99
(nearest rank) over the requests that started and finished inside it. The figure reports
the median, min and max of the windows' throughputs, and the median (and min, max) of their
p50 and p99: one window on a shared machine can be far off the others, the median of several
is what a user gets most of the time, and min-max says how far it moves.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any


def percentile(data: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile of ``data`` (nearest rank), or None when it is empty."""
    ordered = sorted(data)
    if not ordered:
        return None
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def window(completed: int, duration_s: float, latencies_s: Sequence[float]) -> dict[str, Any]:
    """One window: throughput (req/s), p50/p99/mean (ms, None without samples), counts."""

    def ms(seconds: float | None) -> float | None:
        return None if seconds is None else round(seconds * 1e3, 4)

    n = len(latencies_s)
    return {
        "throughput": round(completed / duration_s, 1),
        "p50": ms(percentile(latencies_s, 50)),
        "p99": ms(percentile(latencies_s, 99)),
        "mean": ms(sum(latencies_s) / n if n else None),
        "requests": completed,
        "latency_samples": n,
    }


def _spread(values: Sequence[float | None], unit: str, digits: int) -> dict[str, Any]:
    present = [v for v in values if v is not None]
    if not present:
        return {"value": None, "median": None, "min": None, "max": None, "unit": unit}
    median = round(statistics.median(present), digits)
    return {
        # "value" is the median: what older readers of the results (compare.py) take
        "value": median,
        "median": median,
        "min": round(min(present), digits),
        "max": round(max(present), digits),
        "unit": unit,
    }


def summarize(
    windows: Sequence[dict[str, Any]], concurrency: int, window_s: float, **extra: Any
) -> dict[str, Any]:
    """A JSON-ready request figure from its windows (see the module docstring)."""
    return {
        "kind": "requests",
        "concurrency": concurrency,
        "throughput": _spread([w["throughput"] for w in windows], "req/s", 1),
        "p50": _spread([w["p50"] for w in windows], "ms", 4),
        "p99": _spread([w["p99"] for w in windows], "ms", 4),
        "mean": _spread([w.get("mean") for w in windows], "ms", 4),
        "window": {"value": window_s, "unit": "s"},
        "windows_n": len(windows),
        "windows": list(windows),
        "requests_in_windows": sum(w.get("requests") or 0 for w in windows),
        # None when the tool gives percentiles but not its samples (wrk)
        "latency_samples": (
            sum(w["latency_samples"] for w in windows)
            if all("latency_samples" in w for w in windows)
            else None
        ),
        **extra,
    }
