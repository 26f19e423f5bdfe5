"""Replica choice (sans-IO): pack requests onto replicas that hold work, up to a measured
threshold, and spread beyond it by power of two choices.

A request sent to a replica that holds no work wakes a sleeping OS process; requests that
reach a replica while it is busy share its wake and, often, one websocket message. So a
request goes first to the most loaded replica that holds work and whose load is under the
*packing threshold* (``pack_below``); when none qualifies, to the replica that went idle
last (its process is the warmest); when every replica is busy at the threshold, by power
of two choices. With a threshold of 1 nothing packs: plain power of two choices.

What the threshold should be depends on what the replicas do and on the machines under
them, neither of which the router can see: a replica that runs its calls one at a time on
a core of its own should not get a second call while another replica idles, while a
hundred replicas on two cores serve more when a few of them hold all the work. So
:class:`PackingThreshold` measures: it tries thresholds on the router's own requests and
keeps the one under which they finish soonest.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import attrs

#: requests per epoch of :class:`PackingThreshold`
PACK_EPOCH = 256
#: how much lower a probed threshold's mean latency must be to be adopted
PACK_MARGIN = 0.1
#: the most base epochs between two probes
PACK_MAX_WAIT = 64


def pick_replica(
    loads: Sequence[int],
    limit: int,
    rng: random.Random,
    blocked: Sequence[bool] = (),
    *,
    pack_below: int = 1,
    recency: Callable[[int], int] | None = None,
) -> int | None:
    """The index of the replica to send to, or None when every replica is full.

    A replica has room when ``load < limit`` and it is not ``blocked``; one without room is
    never chosen. With ``pack_below > 1``, the most loaded replica with room that holds
    work under ``pack_below`` is chosen (ties: the first from a random start); when there
    is none, the replica without work that finished a request last (``recency(i)`` grows
    each time replica ``i`` finishes one; read only when needed). Otherwise, or with
    ``pack_below <= 1``: two replicas with room are drawn at random and the less loaded
    one wins.
    """
    n = len(loads)
    if n <= 1:
        return 0 if n and loads[0] < limit and not (blocked and blocked[0]) else None
    if pack_below > 1:
        packed = _fullest_under(loads, min(pack_below, limit), rng, blocked)
        if packed is None and recency is not None:
            packed = _last_idle(loads, limit, blocked, recency)
        if packed is not None:
            return packed
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


def _fullest_under(
    loads: Sequence[int], below: int, rng: random.Random, blocked: Sequence[bool]
) -> int | None:
    """The most loaded replica that holds work under ``below`` (best fit: the others drain
    and sleep), the first found from a random start among equals; or None."""
    if blocked:
        loads = [0 if no else load for load, no in zip(loads, blocked, strict=True)]
    top = max(loads)  # the builtins scan: this runs for every request while packing
    if top >= below:
        loads = [load if load < below else 0 for load in loads]
        top = max(loads)
    if top == 0:
        return None
    start = rng.randrange(len(loads))
    try:
        return loads.index(top, start)
    except ValueError:
        return loads.index(top)


def _last_idle(
    loads: Sequence[int], limit: int, blocked: Sequence[bool], recency: Callable[[int], int]
) -> int | None:
    """The replica with room and no work that finished a request last; or None."""
    best, when = None, -1
    for i, load in enumerate(loads):
        if load == 0 < limit and not (blocked and blocked[i]):
            done = recency(i)
            if done > when:
                best, when = i, done
    return best


@attrs.define
class PackingThreshold:
    """One router's packing threshold, found by trying the alternatives on its requests.

    Requests are sent in *epochs*. An epoch ends when ``epoch_size`` of the requests sent
    in it have finished (:meth:`observe`, given the epoch each was sent in: requests still
    in flight from an earlier epoch do not count), and its mean latency is its figure.
    Base epochs use the threshold adopted so far (:attr:`adopted`); now and then one
    *probe* epoch uses the next one up (at least twice it, and at least the load the
    replicas held in the last base epoch, below which a threshold would change nothing;
    only when that load reached half the threshold) or down (half of it), directions taking
    turns. A probe up is adopted when its mean latency is below the mean of the base epochs
    before and after it by ``margin`` (the two sides cancel a steady drift of the load), a
    probe down when it is not above it: when in doubt, pack less. Then the next probe goes
    the same way after one base epoch. After a probe that loses,
    the next one waits twice as many base epochs as the last, up to ``max_wait``: where the
    threshold is right, one epoch in ``max_wait`` runs at a neighbour. A base epoch whose
    mean latency is under half or over twice the previous one's (the load changed) makes
    the next probe come after one base epoch again.

    It starts at 1, plain power of two choices. :attr:`value` is the threshold to pick
    with now, :attr:`epoch` the epoch a request sent now belongs to.
    """

    epoch_size: int = PACK_EPOCH
    margin: float = PACK_MARGIN
    max_wait: int = PACK_MAX_WAIT
    value: int = 1
    epoch: int = 0
    adopted: int = 1
    _probing: bool = False  # whether the current epoch is a probe
    _judging: bool = False  # whether it is the base epoch after a probe
    _count: int = 0
    _sum_latency: float = 0.0
    _sum_load: int = 0
    _before: float = 0.0  # the mean latency of the last base epoch
    _before_load: float = 0.0  # the mean load the requests of that epoch found
    _probe_mean: float = 0.0
    _up: bool = True  # the direction of the next probe
    _wait: int = 1  # base epochs until the next probe
    _backoff: int = 1  # the wait after the next probe that loses

    def observe(self, epoch: int, latency_s: float, load: int) -> None:
        """A request sent in ``epoch`` to a replica that then held ``load`` requests (itself
        included) finished after ``latency_s``."""
        if epoch != self.epoch:
            return
        self._count += 1
        self._sum_latency += latency_s
        self._sum_load += load
        if self._count >= self.epoch_size:
            self._end_epoch()

    def _end_epoch(self) -> None:
        mean = self._sum_latency / self._count
        load = self._sum_load / self._count
        self._count, self._sum_latency, self._sum_load = 0, 0.0, 0
        self.epoch += 1
        if self._probing:
            self._probing, self._judging = False, True
            self._probe_mean, self.value = mean, self.adopted
            return
        if self._judging:
            self._judging = False
            # up must pay by the margin, down only must not cost: when in doubt, spread
            bar = (self._before + mean) / 2 * ((1 - self.margin) if self._up else 1.0)
            if self._probe_mean <= bar:
                self.adopted = self.value = self._probed()
                self._wait = self._backoff = 1  # measure the new base, then go on that way
                return
            self._wait, self._backoff = self._backoff, min(self.max_wait, 2 * self._backoff)
            self._up = not self._up
        elif self._before and not self._before / 2 <= mean <= 2 * self._before:
            self._wait = self._backoff = 1  # the load changed: look again soon
        self._before, self._before_load = mean, load
        self._wait -= 1
        if self._wait <= 0:
            self._start_probe()

    def _start_probe(self) -> None:
        can_up = self._before_load >= self.adopted / 2
        can_down = self.adopted > 1
        if not (can_up or can_down):
            self._wait = 1
            return
        if not (can_up and can_down):
            self._up = can_up
        self._probing = True
        self.value = self._probed()

    def _probed(self) -> int:
        """The threshold the probe in direction ``_up`` tries."""
        if not self._up:
            return max(1, self.adopted // 2)
        held = 1 << max(0, round(self._before_load) - 1).bit_length()  # power of 2, >= load
        return max(2 * self.adopted, held)


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
