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


def pick_replica_for_model(
    loads: Sequence[int],
    limit: int,
    rng: random.Random,
    holds: Sequence[bool],
    blocked: Sequence[bool] = (),
    held: Sequence[int] = (),
) -> int | None:
    """The replica for a request of a multiplexed model: power of two choices among the
    replicas that hold the model and have room; when none does, the replica with room that
    holds the fewest models (``held``), the least loaded among those, so that one replica
    loads the model (not every one) and models spread evenly; None when all are full."""
    n = len(loads)
    free = [i for i in range(n) if loads[i] < limit and not (blocked and blocked[i])]
    holders = [i for i in free if holds[i]]
    if len(holders) == 1:
        return holders[0]
    if holders:
        a, b = rng.sample(holders, 2)
        return a if loads[a] <= loads[b] else b
    if not free:
        return None

    def key(i: int) -> tuple[int, int]:
        return (held[i] if held else 0, loads[i])

    best = min(key(i) for i in free)
    return rng.choice([i for i in free if key(i) == best])
