"""Restart decisions (sans-IO): which children to restart, whether, and after how long.

Erlang/OTP semantics. Pure functions and a small record of restart times; no Trio here.
"""

from __future__ import annotations

import collections
import random
from typing import Literal

Strategy = Literal["one_for_one", "one_for_all", "rest_for_one"]
RestartType = Literal["permanent", "transient", "temporary"]
STRATEGIES: tuple[Strategy, ...] = ("one_for_one", "one_for_all", "rest_for_one")
RESTART_TYPES: tuple[RestartType, ...] = ("permanent", "transient", "temporary")


def should_restart(restart: RestartType, *, normal_exit: bool) -> bool:
    """permanent: always; transient: only after an abnormal exit; temporary: never."""
    if restart == "permanent":
        return True
    if restart == "transient":
        return not normal_exit
    return False


def restart_group(strategy: Strategy, order: list[str], failed: str) -> list[str]:
    """The children to restart (in start order) when ``failed`` exits.

    one_for_one: just it; one_for_all: every child; rest_for_one: it and those started
    after it.
    """
    if strategy == "one_for_one":
        return [failed]
    if strategy == "one_for_all":
        return list(order)
    return order[order.index(failed) :]


class RestartIntensity:
    """At most ``max_restarts`` restarts in any ``period_s`` window."""

    def __init__(self, max_restarts: int, period_s: float) -> None:
        if max_restarts < 0:
            raise ValueError(f"max_restarts must be >= 0, got {max_restarts}")
        if period_s <= 0:
            raise ValueError(f"period_s must be > 0, got {period_s}")
        self.max_restarts = max_restarts
        self.period_s = period_s
        self._times: collections.deque[float] = collections.deque()

    def recent(self, now: float) -> int:
        while self._times and now - self._times[0] >= self.period_s:
            self._times.popleft()
        return len(self._times)

    def record(self, now: float) -> bool:
        """Count a restart at ``now``; False if it would exceed the intensity."""
        if self.recent(now) >= self.max_restarts:
            return False
        self._times.append(now)
        return True


def backoff_delay(
    attempt: int, rng: random.Random, *, base_s: float = 0.05, cap_s: float = 2.0
) -> float:
    """Exponential backoff with jitter: attempt 1 waits about ``base_s``, doubling, capped,
    scaled by a random factor in [0.5, 1.0] so restarts of many children do not align."""
    if attempt <= 0:
        return 0.0
    return float(min(cap_s, base_s * 2 ** (attempt - 1)) * rng.uniform(0.5, 1.0))
