"""pick_replica: power of two choices on in-flight counts (pure, no I/O)."""

from __future__ import annotations

import collections
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trioserve._handles.balance import pick_replica


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
