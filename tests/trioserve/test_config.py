"""DeploymentConfig and AutoscalingConfig: defaults and validation at the edge (sans-IO)."""

from __future__ import annotations

import re
from typing import Any

import attrs
import pytest

import trioserve as serve


def test_deployment_config_defaults() -> None:
    """A deployment without options gets one process replica taking 5 requests at once."""
    config = serve.DeploymentConfig()
    assert config.num_replicas == 1
    assert config.max_ongoing_requests == 5
    assert config.max_queued_requests == -1
    assert config.autoscaling_config is None
    assert config.user_config is None
    assert config.placement == "process"
    assert config.initial_replicas == 1


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("max_ongoing_requests", 0, "max_ongoing_requests must be an int >= 1, got 0"),
        ("max_ongoing_requests", -3, "max_ongoing_requests must be an int >= 1, got -3"),
        ("max_ongoing_requests", 2.5, "max_ongoing_requests must be an int >= 1, got 2.5"),
        ("max_ongoing_requests", True, "max_ongoing_requests must be an int >= 1, got True"),
        ("max_ongoing_requests", "8", "max_ongoing_requests must be an int >= 1, got '8'"),
        ("num_replicas", -1, "num_replicas must be an int >= 0 or 'auto', got -1"),
        ("num_replicas", "many", "num_replicas must be an int >= 0 or 'auto', got 'many'"),
        ("num_replicas", 1.0, "num_replicas must be an int >= 0 or 'auto', got 1.0"),
        ("max_queued_requests", 0, "must be an int >= 1 or -1 (no limit), got 0"),
        ("max_queued_requests", -2, "got -2"),
        ("health_check_period_s", 0, "health_check_period_s must be a number > 0, got 0"),
        ("health_check_timeout_s", -1.5, "health_check_timeout_s must be a number > 0, got -1.5"),
        ("graceful_shutdown_timeout_s", -1, "graceful_shutdown_timeout_s must be a number >= 0"),
        ("placement", "thread", "placement must be 'process' or 'inline', got 'thread'"),
    ],
)
def test_deployment_config_rejects_bad_value_showing_it(
    field: str, value: Any, message: str
) -> None:
    """A bad option fails at once with a message naming the option and the bad value."""
    with pytest.raises(ValueError, match=re.escape(message)):
        serve.DeploymentConfig(**{field: value})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("num_replicas", 0),
        ("num_replicas", "auto"),
        ("max_queued_requests", -1),
        ("max_queued_requests", 1),
        ("max_ongoing_requests", 1),
        ("graceful_shutdown_timeout_s", 0),
        ("health_check_period_s", 0.5),
        ("placement", "inline"),
    ],
)
def test_deployment_config_accepts_boundary_values(field: str, value: Any) -> None:
    """Values at the edge of each allowed range are accepted and kept as given."""
    config = serve.DeploymentConfig(**{field: value})
    assert getattr(config, field) == value


def test_deployment_config_is_frozen() -> None:
    """A config cannot be changed in place (options() makes a new one)."""
    config = serve.DeploymentConfig()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        config.max_ongoing_requests = 10  # type: ignore[misc]


def test_deployment_config_auto_replicas_get_default_autoscaling() -> None:
    """num_replicas='auto' autoscales between 1 and 100 replicas, starting at 1."""
    config = serve.DeploymentConfig(num_replicas="auto")
    assert config.autoscaling_config == serve.AutoscalingConfig(min_replicas=1, max_replicas=100)
    assert config.initial_replicas == 1


def test_deployment_config_initial_replicas_follow_autoscaling() -> None:
    """With autoscaling, a deployment starts at initial_replicas, else at min_replicas."""
    start_at_min = serve.DeploymentConfig(
        num_replicas="auto",
        autoscaling_config=serve.AutoscalingConfig(min_replicas=2, max_replicas=5),
    )
    assert start_at_min.initial_replicas == 2
    explicit = serve.DeploymentConfig(
        autoscaling_config=serve.AutoscalingConfig(
            min_replicas=0, initial_replicas=3, max_replicas=5
        )
    )
    assert explicit.initial_replicas == 3
    assert serve.DeploymentConfig(num_replicas=4).initial_replicas == 4


def test_autoscaling_config_defaults() -> None:
    """Autoscaling defaults mirror Ray Serve's: target 2 ongoing, slow downscale."""
    auto = serve.AutoscalingConfig()
    assert (auto.min_replicas, auto.max_replicas) == (1, 1)
    assert auto.target_ongoing_requests == 2.0
    assert auto.upscale_delay_s == 30.0
    assert auto.downscale_delay_s == 600.0
    assert auto.initial_replicas is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_replicas": 3, "max_replicas": 2}, "min_replicas (3) must be <= max_replicas (2)"),
        ({"min_replicas": -1}, "min_replicas must be a number >= 0, got -1"),
        ({"min_replicas": 0.5}, "min_replicas must be an int >= 0, got 0.5"),
        ({"max_replicas": 0}, "max_replicas must be an int >= 1, got 0"),
        ({"target_ongoing_requests": 0}, "target_ongoing_requests must be a number > 0, got 0"),
        ({"upscale_delay_s": -1}, "upscale_delay_s must be a number >= 0, got -1"),
        ({"look_back_period_s": 0}, "look_back_period_s must be a number > 0, got 0"),
        (
            {"min_replicas": 1, "max_replicas": 4, "initial_replicas": 5},
            "initial_replicas must be between min_replicas and max_replicas, got 5",
        ),
        ({"upscaling_factor": 0}, "upscaling_factor must be a number > 0 or None, got 0"),
        ({"downscaling_factor": -2.0}, "downscaling_factor must be a number > 0 or None, got -2.0"),
    ],
)
def test_autoscaling_config_rejects_bad_value_showing_it(
    kwargs: dict[str, Any], message: str
) -> None:
    """A bad autoscaling setting fails with a message that shows the bad value."""
    with pytest.raises(ValueError, match=re.escape(message)):
        serve.AutoscalingConfig(**kwargs)


def test_autoscaling_config_from_dict() -> None:
    """A plain dict is accepted wherever an AutoscalingConfig is."""
    auto = serve.AutoscalingConfig.from_value({"min_replicas": 2, "max_replicas": 6})
    assert auto == serve.AutoscalingConfig(min_replicas=2, max_replicas=6)
    same = serve.AutoscalingConfig(max_replicas=3)
    assert serve.AutoscalingConfig.from_value(same) is same


def test_autoscaling_config_from_dict_refuses_unknown_fields() -> None:
    """A misspelt autoscaling field is refused and the known fields are listed."""
    with pytest.raises(
        ValueError, match=r"unknown autoscaling_config field\(s\) \['max_replica'\]"
    ):
        serve.AutoscalingConfig.from_value({"max_replica": 3})
    with pytest.raises(TypeError, match="must be a dict or AutoscalingConfig, got 7"):
        serve.AutoscalingConfig.from_value(7)  # type: ignore[arg-type]


def test_autoscaling_config_rejects_fractional_initial_replicas() -> None:
    """A non-integer initial replica count is refused at the edge, showing the value."""
    with pytest.raises(ValueError, match=re.escape("initial_replicas must be an int")):
        serve.AutoscalingConfig(min_replicas=1, max_replicas=3, initial_replicas=1.5)  # type: ignore[arg-type]
