"""The autoscaling policy on numbers (sans-IO): desired counts, delays, the look-back window,
and the validation of autoscaling settings."""

from __future__ import annotations

import math
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import trioserve as serve
from trioserve._control.autoscaling import (
    LoadWindow,
    ScalingState,
    decide_replicas,
    desired_replicas,
)


class Plain:
    def __call__(self) -> None:
        pass


def _config(**overrides: Any) -> serve.AutoscalingConfig:
    settings: dict[str, Any] = {
        "min_replicas": 1,
        "max_replicas": 10,
        "target_ongoing_requests": 1.0,
        "upscale_delay_s": 5.0,
        "downscale_delay_s": 10.0,
        "look_back_period_s": 3.0,
        "metrics_interval_s": 1.0,
    }
    settings.update(overrides)
    return serve.AutoscalingConfig(**settings)


def _decide_each(
    config: serve.AutoscalingConfig, current: int, samples: list[tuple[float, float]]
) -> list[int]:
    """The count after each ``(now, load)`` sample, applying every decision at once."""
    state = ScalingState()
    counts = []
    for now, load in samples:
        current = decide_replicas(config, state, current=current, load=load, now=now)
        counts.append(current)
    return counts


def _windowed_each(
    config: serve.AutoscalingConfig, current: int, samples: list[tuple[float, float]]
) -> list[int]:
    """Like :func:`_decide_each`, but the policy sees the look-back average (as it runs)."""
    state = ScalingState()
    window = LoadWindow(config.look_back_period_s)
    counts = []
    for now, load in samples:
        window.add(now, load)
        current = decide_replicas(config, state, current=current, load=window.average(), now=now)
        counts.append(current)
    return counts


def _steady(load: float, start: int, stop: int) -> list[tuple[float, float]]:
    return [(float(t), load) for t in range(start, stop)]


# -- desired_replicas


@pytest.mark.parametrize(
    ("load", "expected"),
    [(4.0, 2), (5.0, 3), (6.0, 3), (2.0, 1), (0.5, 1), (4.000_000_1, 2)],
)
def test_desired_replicas_is_load_over_target_rounded_up(load: float, expected: int) -> None:
    """The load asks for ``ceil(load / target_ongoing_requests)`` replicas."""
    config = _config(target_ongoing_requests=2.0)
    assert desired_replicas(config, current=2, load=load) == expected


@pytest.mark.parametrize(
    ("current", "load", "expected"),
    [(2, 100.0, 5), (4, 0.0, 3), (0, 100.0, 5), (0, 0.0, 3), (5, 1000.0, 5)],
)
def test_desired_replicas_clamped_to_min_and_max(current: int, load: float, expected: int) -> None:
    """However high or low the load, the count stays within min_replicas..max_replicas."""
    config = _config(min_replicas=3, max_replicas=5)
    assert desired_replicas(config, current=current, load=load) == expected


def test_desired_replicas_from_zero_ignores_smoothing() -> None:
    """From zero replicas, any load asks for its full count at once, unsmoothed."""
    config = _config(min_replicas=0, target_ongoing_requests=2.0, smoothing_factor=0.1)
    assert desired_replicas(config, current=0, load=5.0) == 3
    assert desired_replicas(config, current=0, load=0.1) == 1
    assert desired_replicas(config, current=0, load=0.0) == 0


@pytest.mark.parametrize(
    ("factors", "expected"),
    [
        ({"upscaling_factor": 0.5}, 6),
        ({"smoothing_factor": 0.5}, 6),
        ({"smoothing_factor": 1.0, "upscaling_factor": 0.25}, 4),
        ({"downscaling_factor": 0.1}, 10),
    ],
)
def test_desired_replicas_upscaling_moves_part_way(
    factors: dict[str, float], expected: int
) -> None:
    """Upscaling covers ``factor`` of the gap (upscaling_factor, else smoothing_factor)."""
    config = _config(max_replicas=20, **factors)
    # 10 wanted, 2 running: a factor of 0.5 goes half way, to 6
    assert desired_replicas(config, current=2, load=10.0) == expected


@pytest.mark.parametrize(
    ("factors", "expected"),
    [
        ({"downscaling_factor": 0.5}, 4),
        ({"smoothing_factor": 0.25}, 6),
        ({"smoothing_factor": 0.5, "downscaling_factor": 0.75}, 2),
        ({"upscaling_factor": 0.1}, 0),
    ],
)
def test_desired_replicas_downscaling_moves_part_way(
    factors: dict[str, float], expected: int
) -> None:
    """Downscaling covers ``factor`` of the gap (downscaling_factor, else smoothing_factor)."""
    config = _config(min_replicas=0, **factors)
    assert desired_replicas(config, current=8, load=0.0) == expected


def test_desired_replicas_smoothing_above_one_overshoots_within_max() -> None:
    """A smoothing factor above 1 overshoots the load's count, but never past max_replicas."""
    assert desired_replicas(_config(smoothing_factor=2.0), current=2, load=4.0) == 6
    assert desired_replicas(_config(smoothing_factor=2.0, max_replicas=5), current=2, load=4.0) == 5


@pytest.mark.parametrize(
    ("current", "load", "min_replicas", "expected"),
    [
        pytest.param(3, 1.5, 1, 2),
        (1, 0.0, 0, 0),
        pytest.param(4, 2.2, 1, 3),
        (8, 0.0, 1, 1),
    ],
)
def test_desired_replicas_downscaling_factor_still_reaches_wanted_count(
    current: int, load: float, min_replicas: int, expected: int
) -> None:
    """With a downscaling factor below 1, repeated decisions settle on the load's count."""
    config = _config(min_replicas=min_replicas, downscaling_factor=0.5)
    counts = []
    for _ in range(20):
        current = desired_replicas(config, current=current, load=load)
        counts.append(current)
    assert counts[-5:] == [expected] * 5


@pytest.mark.parametrize(
    ("current", "load", "min_replicas"),
    [
        pytest.param(2, 1.5, 1),
        pytest.param(2, 1.99, 1),
        pytest.param(1, 0.5, 0),
        (2, 2.0, 1),
    ],
)
def test_decide_replicas_steady_load_the_count_serves_keeps_it(
    current: int, load: float, min_replicas: int
) -> None:
    """A steady load that needs exactly the current count never changes it."""
    config = _config(min_replicas=min_replicas, upscale_delay_s=3.0, downscale_delay_s=3.0)
    assert set(_decide_each(config, current, _steady(load, 0, 100))) == {current}


# -- decide_replicas: delays


def test_decide_replicas_scales_up_only_after_upscale_delay() -> None:
    """Sustained load adds replicas only once it has lasted upscale_delay_s."""
    counts = _decide_each(_config(upscale_delay_s=5.0), 2, _steady(4.0, 0, 8))
    assert counts == [2, 2, 2, 2, 2, 4, 4, 4]


def test_decide_replicas_scales_down_only_after_downscale_delay() -> None:
    """Replicas are removed only once the low load has lasted downscale_delay_s."""
    counts = _decide_each(_config(downscale_delay_s=10.0), 4, _steady(1.0, 0, 13))
    assert counts == [4] * 10 + [1, 1, 1]


def test_decide_replicas_zero_delays_act_at_once() -> None:
    """With both delays at 0 the count follows the load at every decision."""
    config = _config(upscale_delay_s=0.0, downscale_delay_s=0.0)
    assert _decide_each(config, 2, [(0.0, 4.0), (1.0, 0.0), (2.0, 7.0)]) == [4, 1, 7]


@pytest.mark.parametrize(("high", "low"), [(2.6, 1.4), (2.6, 0.9), (2.01, 1.99), (9.0, 0.0)])
def test_decide_replicas_load_alternating_around_threshold_keeps_count(
    high: float, low: float
) -> None:
    """Load flickering around the threshold never changes the count (no flapping)."""
    config = _config(upscale_delay_s=3.0, downscale_delay_s=3.0)
    samples = [(float(t), high if t % 2 else low) for t in range(60)]
    assert set(_decide_each(config, 2, samples)) == {2}


def test_decide_replicas_lapsed_pressure_restarts_upscale_delay() -> None:
    """One sample without pressure restarts the upscale delay from the next pressure."""
    samples = [*_steady(4.0, 0, 4), (4.0, 2.0), *_steady(4.0, 5, 12)]
    counts = _decide_each(_config(upscale_delay_s=5.0), 2, samples)
    assert counts == [2] * 10 + [4, 4]  # scaled at t=10, five seconds after t=5


def test_decide_replicas_upward_pressure_restarts_downscale_delay() -> None:
    """A moment of upward pressure restarts the downscale delay (and the reverse)."""
    config = _config(upscale_delay_s=5.0, downscale_delay_s=10.0)
    state = ScalingState()
    for t in range(9):
        assert decide_replicas(config, state, current=4, load=1.0, now=float(t)) == 4
    assert state.downscale_since == 0.0
    assert decide_replicas(config, state, current=4, load=8.0, now=9.0) == 4
    assert state == ScalingState(upscale_since=9.0, downscale_since=None)
    counts = [
        decide_replicas(config, state, current=4, load=1.0, now=float(t)) for t in range(10, 21)
    ]
    assert counts == [4] * 10 + [1]  # ten seconds after t=10, not after t=0


def test_decide_replicas_new_pressure_after_scaling_waits_full_delay() -> None:
    """After a scale-up the state is clear: the next scale-up waits a whole delay again."""
    config = _config(upscale_delay_s=5.0, max_replicas=20)
    state = ScalingState()
    current = 2
    counts = []
    for t, load in [*_steady(4.0, 0, 6), *_steady(8.0, 6, 12)]:
        current = decide_replicas(config, state, current=current, load=load, now=float(t))
        counts.append(current)
        if t == 5:
            assert state == ScalingState()
    assert counts == [2, 2, 2, 2, 2, 4, 4, 4, 4, 4, 4, 8]


def test_decide_replicas_at_max_under_heavy_load_keeps_no_timer() -> None:
    """At max_replicas, more load is not pressure: nothing is pending when it drops."""
    config = _config(max_replicas=3)
    state = ScalingState()
    assert decide_replicas(config, state, current=3, load=100.0, now=0.0) == 3
    assert state == ScalingState()


# -- decide_replicas: zero


def test_decide_replicas_scales_from_zero_at_once() -> None:
    """A request waiting at zero replicas starts replicas now, whatever the upscale delay."""
    config = _config(min_replicas=0, upscale_delay_s=1000.0, target_ongoing_requests=2.0)
    state = ScalingState(upscale_since=None, downscale_since=3.0)
    assert decide_replicas(config, state, current=0, load=0.1, now=5.0) == 1
    assert state == ScalingState()
    assert decide_replicas(config, ScalingState(), current=0, load=7.0, now=5.0) == 4


def test_decide_replicas_at_zero_without_load_stays_at_zero() -> None:
    """A deployment scaled to zero stays there while nothing asks for it."""
    config = _config(min_replicas=0, upscale_delay_s=0.0)
    state = ScalingState()
    for t in range(30):
        assert decide_replicas(config, state, current=0, load=0.0, now=float(t)) == 0
    assert state == ScalingState()


def test_decide_replicas_scales_to_zero_after_downscale_delay() -> None:
    """With min_replicas=0, an idle deployment drops to zero after downscale_delay_s."""
    counts = _decide_each(_config(min_replicas=0, downscale_delay_s=10.0), 1, _steady(0.0, 0, 12))
    assert counts == [1] * 10 + [0, 0]


# -- the look-back window


def test_load_window_averages_samples_within_look_back() -> None:
    """The load is the mean of the samples at most look_back_period_s old."""
    window = LoadWindow(3.0)
    assert window.average() == 0.0
    window.add(0.0, 6.0)
    window.add(1.0, 3.0)
    window.add(2.0, 0.0)
    assert window.average() == 3.0
    window.add(4.0, 3.0)  # drops the sample from t=0; t=1 is exactly 3 s old and stays
    assert window.average() == 2.0
    window.add(10.0, 5.0)
    assert window.average() == 5.0


def test_load_window_ignores_single_spike_but_follows_sustained_load() -> None:
    """A one-sample spike does not add replicas; the same load, sustained, does."""
    config = _config(
        target_ongoing_requests=2.0,
        upscale_delay_s=3.0,
        downscale_delay_s=1000.0,
        look_back_period_s=10.0,
    )
    samples = [*_steady(3.0, 0, 10), (10.0, 10.0), *_steady(3.0, 11, 20), *_steady(10.0, 20, 40)]
    counts = _windowed_each(config, 2, samples)
    assert set(counts[:23]) == {2}
    assert counts[23] == 3
    assert counts == sorted(counts)
    assert counts[-1] == 5


@given(
    loads=st.lists(st.floats(min_value=0.0, max_value=50.0), min_size=1, max_size=80),
    gaps=st.lists(st.floats(min_value=0.01, max_value=3.0), min_size=80, max_size=80),
    start=st.integers(min_value=1, max_value=6),
)
@pytest.mark.slow
def test_decide_replicas_never_flaps_faster_than_the_delays(
    loads: list[float], gaps: list[float], start: int
) -> None:
    """Whatever the load, counts stay in bounds and change at most once per delay."""
    config = _config(min_replicas=1, max_replicas=6, upscale_delay_s=2.0, downscale_delay_s=4.0)
    state = ScalingState()
    current, now, last_change = start, 0.0, -math.inf
    for load, gap in zip(loads, gaps, strict=False):
        now += gap
        new = decide_replicas(config, state, current=current, load=load, now=now)
        assert 1 <= new <= 6
        if new != current:
            assert now - last_change >= 2.0
            last_change = now
        current = new


# -- validation of autoscaling settings


def _assert_shows(message: str, *shown: str) -> None:
    for text in shown:
        assert text in message, f"{text!r} not in {message!r}"


@pytest.mark.parametrize(
    ("kwargs", "field", "shown"),
    [
        ({"downscale_delay_s": -0.5}, "downscale_delay_s", "-0.5"),
        ({"metrics_interval_s": 0}, "metrics_interval_s", "0"),
        ({"smoothing_factor": 0}, "smoothing_factor", "0"),
        ({"target_ongoing_requests": -1.0}, "target_ongoing_requests", "-1.0"),
        ({"target_ongoing_requests": math.nan}, "target_ongoing_requests", "nan"),
        ({"smoothing_factor": math.inf}, "smoothing_factor", "inf"),
        ({"max_replicas": True}, "max_replicas", "True"),
        ({"max_replicas": 2.5}, "max_replicas", "2.5"),
        ({"min_replicas": "1"}, "min_replicas", "'1'"),
        ({"look_back_period_s": "30"}, "look_back_period_s", "'30'"),
        ({"initial_replicas": True}, "initial_replicas", "True"),
        ({"min_replicas": 2, "max_replicas": 4, "initial_replicas": 1}, "initial_replicas", "1"),
        ({"upscaling_factor": "fast"}, "upscaling_factor", "'fast'"),
        ({"downscaling_factor": math.nan}, "downscaling_factor", "nan"),
    ],
)
def test_autoscaling_config_error_names_field_and_value(
    kwargs: dict[str, Any], field: str, shown: str
) -> None:
    """A bad autoscaling setting (NaN and infinity too) fails at once, naming the setting
    and showing its value."""
    with pytest.raises(ValueError, match=re.escape(field)) as info:
        serve.AutoscalingConfig(**kwargs)
    _assert_shows(str(info.value), f"got {shown}")


def test_autoscaling_config_errors_surface_through_deployment_options() -> None:
    """A bad autoscaling_config dict fails in @deployment and .options(), naming the field."""
    with pytest.raises(ValueError, match="min_replicas") as info:
        serve.deployment(autoscaling_config={"min_replicas": 4, "max_replicas": 2})(Plain)
    _assert_shows(str(info.value), "min_replicas (4)", "max_replicas (2)")
    dep = serve.deployment(Plain)
    with pytest.raises(ValueError, match="target_ongoing_requests") as info:
        dep.options(autoscaling_config={"target_ongoing_requests": 0})
    _assert_shows(str(info.value), "got 0")


def test_num_replicas_auto_autoscales_with_given_or_default_config() -> None:
    """num_replicas='auto' autoscales: with the given config, else between 1 and 100."""
    default = serve.deployment(num_replicas="auto")(Plain).config
    assert default.autoscaling_config == serve.AutoscalingConfig(min_replicas=1, max_replicas=100)
    given_config = serve.deployment(
        num_replicas="auto", autoscaling_config={"min_replicas": 2, "max_replicas": 6}
    )(Plain).config
    assert given_config.autoscaling_config == serve.AutoscalingConfig(
        min_replicas=2, max_replicas=6
    )
    assert given_config.initial_replicas == 2
    with pytest.raises(
        ValueError, match=re.escape("num_replicas must be an int >= 0 or 'auto', got 'Auto'")
    ):
        serve.deployment(num_replicas="Auto")(Plain)


def test_num_replicas_int_option_overrides_auto() -> None:
    """``.options(num_replicas=3)`` on an 'auto' deployment gives three fixed replicas."""
    config = serve.deployment(num_replicas="auto")(Plain).options(num_replicas=3).config
    assert config.autoscaling_config is None
    assert config.initial_replicas == 3


def test_num_replicas_int_with_autoscaling_config_is_refused() -> None:
    """A fixed num_replicas together with an autoscaling_config is refused, naming both."""
    with pytest.raises(ValueError, match="num_replicas=3") as info:
        serve.deployment(num_replicas=3, autoscaling_config={"max_replicas": 5})(Plain)
    _assert_shows(str(info.value), "autoscaling_config")
