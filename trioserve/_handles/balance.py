"""Replica choice (sans-IO): power of two choices on in-flight counts."""

from __future__ import annotations

import random
from collections.abc import Sequence


def pick_replica(
    loads: Sequence[int], limit: int, rng: random.Random, blocked: Sequence[bool] = ()
) -> int | None:
    """The index of the replica to send to, or None when every replica is full.

    Two replicas with room (``load < limit`` and not ``blocked``) are drawn at random and the
    less loaded one wins; a replica at ``limit`` is never chosen.
    """
    n = len(loads)
    if n == 0:
        return None
    if n <= 8:
        candidates = [i for i in range(n) if loads[i] < limit and not (blocked and blocked[i])]
    else:
        # sample first: with many replicas, most have room and a scan is wasted work
        for _ in range(2):
            a, b = rng.randrange(n), rng.randrange(n)
            ok_a = loads[a] < limit and not (blocked and blocked[a])
            ok_b = loads[b] < limit and not (blocked and blocked[b])
            if ok_a and ok_b:
                return a if loads[a] <= loads[b] else b
            if ok_a:
                return a
            if ok_b:
                return b
        candidates = [i for i in range(n) if loads[i] < limit and not (blocked and blocked[i])]
    if not candidates:
        return None
    if len(candidates) == 1:
        return candidates[0]
    a, b = rng.sample(candidates, 2)
    return a if loads[a] <= loads[b] else b
