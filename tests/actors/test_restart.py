"""Restart decisions (sans-IO): whether, which children, how often, and after how long."""

from __future__ import annotations

import itertools
import random

import pytest

from actors._restart import (
    RestartIntensity,
    backoff_delay,
    restart_group,
    should_restart,
)


def test_should_restart_permanent_always() -> None:
    """A permanent child is restarted whether it exited normally or crashed."""
    assert should_restart("permanent", normal_exit=True)
    assert should_restart("permanent", normal_exit=False)


def test_should_restart_transient_only_after_abnormal_exit() -> None:
    """A transient child is restarted after a crash, not after a normal exit."""
    assert should_restart("transient", normal_exit=False)
    assert not should_restart("transient", normal_exit=True)


def test_should_restart_temporary_never() -> None:
    """A temporary child is never restarted."""
    assert not should_restart("temporary", normal_exit=False)
    assert not should_restart("temporary", normal_exit=True)


ORDER = ["a", "b", "c", "d"]


@pytest.mark.parametrize("failed", ORDER)
def test_restart_group_one_for_one_is_just_the_failed_child(failed: str) -> None:
    """one_for_one restarts only the child that exited."""
    assert restart_group("one_for_one", ORDER, failed) == [failed]


@pytest.mark.parametrize("failed", ORDER)
def test_restart_group_one_for_all_is_every_child_in_start_order(failed: str) -> None:
    """one_for_all restarts every child, in the order they were started."""
    group = restart_group("one_for_all", ORDER, failed)
    assert group == ORDER
    assert group is not ORDER  # the caller's list is not handed back to be mutated


@pytest.mark.parametrize("failed", ORDER)
def test_restart_group_rest_for_one_is_failed_child_and_later_ones(failed: str) -> None:
    """rest_for_one restarts the failed child and every child started after it."""
    group = restart_group("rest_for_one", ORDER, failed)
    assert group[0] == failed
    assert group == ORDER[ORDER.index(failed) :]
    assert not set(group) & set(ORDER[: ORDER.index(failed)])


def test_restart_intensity_allows_max_restarts_per_window() -> None:
    """Up to max_restarts restarts are allowed inside one window; the next one is refused."""
    intensity = RestartIntensity(3, 10.0)
    assert [intensity.record(t) for t in (0.0, 1.0, 2.0)] == [True, True, True]
    assert not intensity.record(3.0)
    assert intensity.recent(3.0) == 3  # a refused restart is not counted


def test_restart_intensity_window_slides() -> None:
    """A restart stops counting once period_s has passed since it happened."""
    intensity = RestartIntensity(2, 10.0)
    assert intensity.record(0.0)
    assert intensity.record(5.0)
    assert not intensity.record(9.99)
    assert intensity.recent(10.0) == 1  # the restart at 0.0 has left the window
    assert intensity.record(10.0)
    assert not intensity.record(14.0)
    assert intensity.recent(15.0) == 1
    assert intensity.recent(100.0) == 0


def test_restart_intensity_zero_never_restarts() -> None:
    """max_restarts=0 means the first exit already exceeds the intensity."""
    intensity = RestartIntensity(0, 1.0)
    assert not intensity.record(0.0)
    assert not intensity.record(1000.0)


@pytest.mark.parametrize(("max_restarts", "period_s"), [(-1, 1.0), (1, 0.0), (1, -2.0)])
def test_restart_intensity_rejects_bad_limits(max_restarts: int, period_s: float) -> None:
    """Invalid limits are refused with a message that shows the bad value."""
    with pytest.raises(ValueError, match=r"must be") as info:
        RestartIntensity(max_restarts, period_s)
    assert str(max_restarts if max_restarts < 0 else period_s) in str(info.value)


def test_backoff_delay_no_delay_before_first_attempt() -> None:
    """Attempt 0 (or less) waits nothing."""
    rng = random.Random(1)
    assert backoff_delay(0, rng) == 0.0
    assert backoff_delay(-3, rng) == 0.0


@pytest.mark.parametrize("seed", [0, 1, 2, 12345])
def test_backoff_delay_within_jittered_bounds(seed: int) -> None:
    """Attempt n waits between half and all of min(cap, base * 2**(n-1))."""
    rng = random.Random(seed)
    base, cap = 0.05, 2.0
    for attempt in range(1, 20):
        full = min(cap, base * 2 ** (attempt - 1))
        delay = backoff_delay(attempt, rng, base_s=base, cap_s=cap)
        assert 0.5 * full <= delay <= full


@pytest.mark.parametrize("seed", [0, 7, 99])
def test_backoff_delay_grows_until_the_cap(seed: int) -> None:
    """Each attempt waits at least as long as the one before (jitter never undoes the
    doubling), and the delay reaches the cap and stays under it."""
    rng = random.Random(seed)
    delays = [backoff_delay(attempt, rng, base_s=0.01, cap_s=1.0) for attempt in range(1, 12)]
    uncapped = [d for a, d in enumerate(delays, start=1) if 0.01 * 2 ** (a - 1) <= 1.0]
    assert all(later >= earlier for earlier, later in itertools.pairwise(uncapped))
    assert delays[-1] > 10 * delays[0]
    assert max(delays) <= 1.0
    assert delays[-1] >= 0.5


def test_backoff_delay_is_reproducible_and_jittered() -> None:
    """The same seed gives the same delays; different draws differ, so children restarted
    together do not retry in lockstep."""
    first = [backoff_delay(3, random.Random(42)) for _ in range(3)]
    assert first[0] == first[1] == first[2]
    rng = random.Random(42)
    draws = {backoff_delay(3, rng) for _ in range(20)}
    assert len(draws) > 1
