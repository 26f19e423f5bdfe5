"""pick_replica and PackingThreshold: replica choice and its packing threshold (pure, no I/O)."""

from __future__ import annotations

import collections
import itertools
import random
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trioserve._handles.balance import PackingThreshold, pick_replica


def test_pick_replica_no_replicas_returns_none() -> None:
    """With no replicas there is nothing to pick."""
    assert pick_replica([], 5, random.Random(0)) is None


def test_pick_replica_all_full_returns_none() -> None:
    """When every replica is at the limit the request must wait (None)."""
    assert pick_replica([3, 3, 3], 3, random.Random(0)) is None
    assert pick_replica([4] * 20, 3, random.Random(0)) is None


def test_pick_replica_only_replica_with_room_is_chosen() -> None:
    """A replica at its limit is never chosen while another has room."""
    rng = random.Random(1)
    for _ in range(200):
        assert pick_replica([5, 5, 0, 5], 5, rng) == 2


def test_pick_replica_blocked_replica_is_skipped() -> None:
    """A replica that recently refused a request is not chosen while blocked."""
    rng = random.Random(2)
    for _ in range(200):
        assert pick_replica([0, 0, 0], 5, rng, blocked=[True, False, True]) == 1
    assert pick_replica([0, 0], 5, rng, blocked=[True, True]) is None


def test_pick_replica_two_candidates_picks_less_loaded() -> None:
    """Of two replicas with room, the one with fewer requests in flight wins."""
    rng = random.Random(3)
    for _ in range(100):
        assert pick_replica([4, 1], 5, rng) == 1
        assert pick_replica([0, 4], 5, rng) == 0


def test_pick_replica_most_loaded_never_chosen_among_few() -> None:
    """With up to 8 replicas, the single most loaded one with room is never picked."""
    rng = random.Random(4)
    seen = collections.Counter(pick_replica([0, 1, 4], 5, rng) for _ in range(600))
    assert seen[2] == 0
    assert seen[0] > seen[1] > 0


def test_pick_replica_equal_loads_spread_evenly() -> None:
    """Equally loaded replicas each get a fair share of picks."""
    rng = random.Random(5)
    counts = collections.Counter(pick_replica([2, 2, 2], 8, rng) for _ in range(3000))
    assert sorted(counts) == [0, 1, 2]
    assert min(counts.values()) > 800


def test_pick_replica_many_replicas_find_the_one_with_room() -> None:
    """With many replicas (sampling path), the only one with room is still found."""
    rng = random.Random(6)
    loads = [7] * 30
    loads[17] = 6
    for _ in range(100):
        assert pick_replica(loads, 7, rng) == 17
    blocked = [False] * 30
    blocked[17] = True
    assert pick_replica(loads, 7, rng, blocked) is None


def test_pick_replica_same_seed_same_choices() -> None:
    """Choices depend only on the loads and the rng, so runs are reproducible."""
    loads = [1, 0, 2, 0, 3, 1, 0, 2, 1, 0, 0, 4]
    first = [pick_replica(loads, 5, random.Random(42)) for _ in range(5)]
    rng_a, rng_b = random.Random(7), random.Random(7)
    assert [pick_replica(loads, 5, rng_a) for _ in range(50)] == [
        pick_replica(loads, 5, rng_b) for _ in range(50)
    ]
    assert len(set(first)) == 1


@pytest.mark.slow
@given(
    loads=st.lists(st.integers(min_value=0, max_value=6), max_size=24),
    limit=st.integers(min_value=1, max_value=6),
    blocked_bits=st.lists(st.booleans(), min_size=24, max_size=24),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_pick_replica_never_exceeds_limit(
    loads: list[int], limit: int, blocked_bits: list[bool], seed: int
) -> None:
    """The pick always has room and is not blocked; None only when no replica qualifies."""
    blocked = blocked_bits[: len(loads)]
    index = pick_replica(loads, limit, random.Random(seed), blocked)
    eligible = [i for i, load in enumerate(loads) if load < limit and not blocked[i]]
    if index is None:
        assert eligible == []
    else:
        assert index in eligible


# -- packing onto replicas that hold work


def _recency(values: list[int]) -> Callable[[int], int]:
    return values.__getitem__


def test_pick_replica_pack_below_one_changes_nothing() -> None:
    """A packing threshold of 1 is plain power of two choices, pick for pick."""
    loads = [1, 0, 2, 0, 3, 1, 0, 2, 1, 0, 0, 4]
    rng_a, rng_b = random.Random(8), random.Random(8)
    for _ in range(100):
        assert pick_replica(loads, 5, rng_a) == pick_replica(
            loads, 5, rng_b, pack_below=1, recency=_recency([0] * 12)
        )


def test_pick_replica_packs_onto_fullest_replica_under_threshold() -> None:
    """Under the threshold, the most loaded replica that holds work takes the request."""
    rng = random.Random(9)
    for _ in range(100):
        assert pick_replica([0, 3, 5, 2, 0], 100, rng, pack_below=6) == 2
        assert pick_replica([0, 3, 5, 2, 0], 100, rng, pack_below=5) == 1
        assert pick_replica([0, 3, 5, 2, 0], 100, rng, pack_below=3) == 3


def test_pick_replica_packing_spreads_equals() -> None:
    """Among equally loaded replicas under the threshold, each gets its share."""
    rng = random.Random(10)
    counts = collections.Counter(
        pick_replica([2, 2, 2], 100, rng, pack_below=8) for _ in range(900)
    )
    assert sorted(counts) == [0, 1, 2]
    assert min(counts.values()) > 200


def test_pick_replica_beyond_threshold_wakes_the_replica_idle_last() -> None:
    """When every replica with work is at the threshold, the one that went idle last
    (the warmest process) takes the request."""
    rng = random.Random(11)
    for _ in range(100):
        assert (
            pick_replica([4, 0, 0, 4, 0], 100, rng, pack_below=4, recency=_recency([9, 3, 7, 9, 5]))
            == 2
        )


def test_pick_replica_beyond_threshold_everywhere_is_power_of_two_choices() -> None:
    """With no idle replica and all at the threshold, the less loaded of two wins."""
    rng = random.Random(12)
    seen = collections.Counter(
        pick_replica([4, 6, 9], 100, rng, pack_below=4, recency=_recency([0, 0, 0]))
        for _ in range(600)
    )
    assert seen[2] == 0
    assert seen[0] > seen[1] > 0


def test_pick_replica_packing_never_exceeds_limit_nor_picks_blocked() -> None:
    """A threshold above max_ongoing still never fills a replica past it; a replica that
    refused a request is not packed onto while blocked."""
    rng = random.Random(13)
    for _ in range(100):
        assert pick_replica([5, 1, 0], 5, rng, pack_below=100, recency=_recency([0, 0, 0])) == 1
        assert pick_replica([5, 1, 0], 5, rng, [False, True, False], pack_below=100) == 2
    assert pick_replica([5, 5], 5, rng, pack_below=100, recency=_recency([0, 0])) is None


@pytest.mark.slow
@given(
    loads=st.lists(st.integers(min_value=0, max_value=6), max_size=24),
    limit=st.integers(min_value=1, max_value=6),
    pack_below=st.integers(min_value=1, max_value=9),
    blocked_bits=st.lists(st.booleans(), min_size=24, max_size=24),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_pick_replica_packing_never_exceeds_limit(
    loads: list[int], limit: int, pack_below: int, blocked_bits: list[bool], seed: int
) -> None:
    """With packing too, the pick has room and is not blocked; None only when none has."""
    blocked = blocked_bits[: len(loads)]
    recency = list(range(len(loads)))
    index = pick_replica(
        loads,
        limit,
        random.Random(seed),
        blocked,
        pack_below=pack_below,
        recency=_recency(recency),
    )
    eligible = [i for i, load in enumerate(loads) if load < limit and not blocked[i]]
    if index is None:
        assert eligible == []
    else:
        assert index in eligible


# -- the packing threshold, tuned on latencies


def _drive(
    threshold: PackingThreshold,
    latency_of: Callable[[int], float],
    epochs: int,
    rng: random.Random | None = None,
    noise: float = 0.0,
) -> list[int]:
    """Send the requests of ``epochs`` epochs one after the other, each taking what the
    model says for the threshold it was sent with (times a random factor per epoch within
    ``noise``, when given); the threshold of each epoch."""
    used = []
    for _ in range(epochs):
        epoch, k = threshold.epoch, threshold.value
        factor = 1.0 + noise * (2 * rng.random() - 1) if rng else 1.0
        used.append(k)
        while threshold.epoch == epoch:
            threshold.observe(epoch, latency_of(k) * factor, min(k, 16))
    return used


def _pays_up_to_16(k: int) -> float:
    """Packing saves wakes until 16 requests share a replica, then changes nothing."""
    return 0.040 / min(k, 16)


def _queues(k: int) -> float:
    """Replicas that run one call at a time, each on a core of its own: every request
    packed behind another waits for it."""
    return 0.001 * k


def test_packing_threshold_starts_by_spreading() -> None:
    """A new router packs nothing: power of two choices until it has measured."""
    threshold = PackingThreshold()
    assert (threshold.value, threshold.adopted, threshold.epoch) == (1, 1, 0)


def test_packing_threshold_climbs_while_packing_pays() -> None:
    """Where packing makes requests faster, the threshold climbs to where it stops paying
    and stays there."""
    threshold = PackingThreshold()
    used = _drive(threshold, _pays_up_to_16, 40)
    assert threshold.adopted == 16
    assert used.index(16) < 20  # found within 20 epochs
    _drive(threshold, _pays_up_to_16, 200)
    assert threshold.adopted == 16


def test_packing_threshold_finds_the_bottom_of_a_valley() -> None:
    """When too much packing costs again, the threshold settles where latency is lowest."""
    threshold = PackingThreshold()
    _drive(threshold, lambda k: 0.001 * (16 / k + k / 16), 300)
    assert threshold.adopted == 16


def test_packing_threshold_never_adopts_packing_that_queues() -> None:
    """Replicas that run one call at a time, each with a core, are never packed onto:
    probes lose, and they grow rare (at most one epoch in ``max_wait`` in the long run)."""
    threshold = PackingThreshold()
    used = _drive(threshold, _queues, 600)
    assert threshold.adopted == 1
    probes = [i for i, k in enumerate(used) if k > 1]
    gaps = [b - a for a, b in itertools.pairwise(probes)]
    assert gaps == sorted(gaps)  # each loss makes the next probe wait longer
    assert max(gaps) <= threshold.max_wait + 2
    late = [i for i in probes if i >= 200]
    assert len(late) <= 400 / threshold.max_wait + 1


def test_packing_threshold_holds_under_noise() -> None:
    """Epochs that differ by up to 20% for reasons of their own neither stop the climb
    nor make queueing look good."""
    rng = random.Random(14)
    climbing = PackingThreshold()
    _drive(climbing, _pays_up_to_16, 200, rng, noise=0.2)
    assert climbing.adopted in (16, 32)
    spreading = PackingThreshold()
    used = _drive(spreading, _queues, 400, rng, noise=0.2)
    assert spreading.adopted == 1
    assert sum(k > 1 for k in used) < 30


def test_packing_threshold_comes_back_when_the_work_changes() -> None:
    """A threshold climbed on cheap calls comes back down soon after the calls start to
    queue behind each other."""
    threshold = PackingThreshold()
    _drive(threshold, _pays_up_to_16, 300)
    assert threshold.adopted == 16
    used = _drive(threshold, _queues, 40)
    assert threshold.adopted == 1
    assert used.index(1) < 25


def test_packing_threshold_counts_only_requests_of_its_epoch() -> None:
    """A request sent before the current epoch began says nothing about the current one."""
    threshold = PackingThreshold(epoch_size=2)
    threshold.observe(0, 0.001, 1)
    threshold.observe(0, 0.001, 1)
    assert threshold.epoch == 1
    for _ in range(10):
        threshold.observe(0, 0.001, 1)
        threshold.observe(5, 0.001, 1)
    assert threshold.epoch == 1
