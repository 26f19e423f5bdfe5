"""Metrics (sans-IO): counters and histograms with labels, rendered as Prometheus text."""

from __future__ import annotations

import bisect
from collections.abc import Iterable

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

Labels = tuple[tuple[str, str], ...]


def _fmt_labels(labels: Labels, extra: tuple[tuple[str, str], ...] = ()) -> str:
    items = labels + extra
    if not items:
        return ""
    inner = ",".join(
        f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
        for k, v in items
    )
    return "{" + inner + "}"


def _fmt_value(value: float) -> str:
    if value == int(value):
        return str(int(value))
    return repr(value)


class Counter:
    def __init__(self, name: str, help_text: str) -> None:
        self.name = name
        self.help = help_text
        self.values: dict[Labels, float] = {}

    def inc(self, labels: Labels, amount: float = 1.0) -> None:
        self.values[labels] = self.values.get(labels, 0.0) + amount

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} counter"
        for labels, value in sorted(self.values.items()):
            yield f"{self.name}{_fmt_labels(labels)} {_fmt_value(value)}"


class Gauge(Counter):
    def set(self, labels: Labels, value: float) -> None:
        self.values[labels] = value

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} gauge"
        for labels, value in sorted(self.values.items()):
            yield f"{self.name}{_fmt_labels(labels)} {_fmt_value(value)}"


class Histogram:
    def __init__(
        self, name: str, help_text: str, buckets: tuple[float, ...] = LATENCY_BUCKETS_S
    ) -> None:
        self.name = name
        self.help = help_text
        self.buckets = buckets
        self.values: dict[Labels, tuple[list[int], float, int]] = {}

    def observe(self, labels: Labels, value: float) -> None:
        entry = self.values.get(labels)
        if entry is None:
            entry = ([0] * len(self.buckets), 0.0, 0)
        counts, total, n = entry
        index = bisect.bisect_left(self.buckets, value)
        if index < len(counts):
            counts[index] += 1
        self.values[labels] = (counts, total + value, n + 1)

    def merge(self, labels: Labels, counts: list[int], total: float, n: int) -> None:
        entry = self.values.get(labels)
        if entry is None:
            self.values[labels] = (list(counts), total, n)
        else:
            mine, t, m = entry
            self.values[labels] = (
                [a + b for a, b in zip(mine, counts, strict=True)],
                t + total,
                m + n,
            )

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} histogram"
        for labels, (counts, total, n) in sorted(self.values.items()):
            running = 0
            for bound, count in zip(self.buckets, counts, strict=True):
                running += count
                yield f"{self.name}_bucket{_fmt_labels(labels, (('le', repr(bound)),))} {running}"
            yield f"{self.name}_bucket{_fmt_labels(labels, (('le', '+Inf'),))} {n}"
            yield f"{self.name}_sum{_fmt_labels(labels)} {total!r}"
            yield f"{self.name}_count{_fmt_labels(labels)} {n}"


def render(metrics: Iterable[Counter | Histogram]) -> str:
    lines: list[str] = []
    for metric in metrics:
        lines.extend(metric.render())
    return "\n".join(lines) + "\n"
