"""Deployment and autoscaling configuration, validated at the edge (sans-IO)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import attrs

Placement = Literal["process", "inline"]


def _positive_int(name: str) -> Any:
    def check(_inst: object, _attr: object, value: object) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")

    return check


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _non_negative(name: str) -> Any:
    def check(_inst: object, _attr: object, value: object) -> None:
        if not _number(value) or value < 0:  # type: ignore[operator]  # why: _number checked it
            raise ValueError(f"{name} must be a number >= 0, got {value!r}")

    return check


def _positive(name: str) -> Any:
    def check(_inst: object, _attr: object, value: object) -> None:
        if not _number(value) or value <= 0:  # type: ignore[operator]  # why: _number checked it
            raise ValueError(f"{name} must be a number > 0, got {value!r}")

    return check


@attrs.frozen(kw_only=True)
class AutoscalingConfig:
    """How many replicas a deployment should have, from the load its handles report."""

    min_replicas: int = attrs.field(default=1, validator=_non_negative("min_replicas"))
    initial_replicas: int | None = None
    max_replicas: int = attrs.field(default=1, validator=_positive_int("max_replicas"))
    target_ongoing_requests: float = attrs.field(
        default=2.0, validator=_positive("target_ongoing_requests")
    )
    upscale_delay_s: float = attrs.field(default=30.0, validator=_non_negative("upscale_delay_s"))
    downscale_delay_s: float = attrs.field(
        default=600.0, validator=_non_negative("downscale_delay_s")
    )
    look_back_period_s: float = attrs.field(default=30.0, validator=_positive("look_back_period_s"))
    metrics_interval_s: float = attrs.field(default=10.0, validator=_positive("metrics_interval_s"))
    smoothing_factor: float = attrs.field(default=1.0, validator=_positive("smoothing_factor"))
    upscaling_factor: float | None = None
    downscaling_factor: float | None = None

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.min_replicas, int) or isinstance(self.min_replicas, bool):
            raise ValueError(f"min_replicas must be an int >= 0, got {self.min_replicas!r}")
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) must be <= max_replicas ({self.max_replicas})"
            )
        init = self.initial_replicas
        if init is not None and (not isinstance(init, int) or isinstance(init, bool)):
            raise ValueError(f"initial_replicas must be an int or None, got {init!r}")
        if init is not None and not (self.min_replicas <= init <= self.max_replicas):
            raise ValueError(
                f"initial_replicas must be between min_replicas and max_replicas, got {init!r}"
            )
        for name in ("upscaling_factor", "downscaling_factor"):
            value = getattr(self, name)
            if value is not None and (not _number(value) or value <= 0):
                raise ValueError(f"{name} must be a number > 0 or None, got {value!r}")

    @classmethod
    def from_value(cls, value: AutoscalingConfig | Mapping[str, Any]) -> AutoscalingConfig:
        """``value`` as an AutoscalingConfig: an instance as it is, or a dict of its fields
        (Ray's ``autoscaling_config={...}``); unknown fields raise ValueError, other types
        TypeError."""
        if isinstance(value, AutoscalingConfig):
            return value
        if not isinstance(value, Mapping):
            raise TypeError(
                f"autoscaling_config must be a dict or AutoscalingConfig, got {value!r}"
            )
        known = {a.name for a in attrs.fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(
                f"unknown autoscaling_config field(s) {unknown}; known: {sorted(known)}"
            )
        return cls(**value)


def _resource_amount(name: str, value: object) -> float:
    if not _number(value) or value < 0:  # type: ignore[operator]  # why: _number checked it
        raise ValueError(f"resources: {name} must be a number >= 0, got {value!r}")
    return float(value)  # type: ignore[arg-type]  # why: _number checked it


@attrs.frozen(kw_only=True)
class Resources:
    """What one replica reserves on its host. CPUs and memory are counted against the
    host's capacity; GPUs are granted by id (``CUDA_VISIBLE_DEVICES``): whole numbers get
    GPUs of their own, a fraction below one shares a GPU. Other names are custom resources
    the host must declare (``open_serve(resources={...})``)."""

    num_cpus: float = 0.0
    num_gpus: float = 0.0
    memory: float = 0.0
    custom: Mapping[str, float] = attrs.field(factory=dict)

    @classmethod
    def from_value(cls, value: Resources | Mapping[str, Any] | None) -> Resources:
        """From ``{"num_cpus": 1, "num_gpus": 0.5, "memory": 2**30, "my_res": 2}`` (Ray's
        ``resources={...}`` nesting is accepted too); bad amounts raise with the value."""
        if value is None:
            return cls()
        if isinstance(value, Resources):
            return value
        if not isinstance(value, Mapping):
            raise TypeError(f"resources must be a dict or Resources, got {value!r}")
        known = {"num_cpus", "num_gpus", "memory"}
        fields = {k: _resource_amount(k, v) for k, v in value.items() if k in known}
        custom: dict[str, float] = {}
        for key, amount in value.items():
            if key == "resources":
                if not isinstance(amount, Mapping):
                    raise TypeError(f"resources['resources'] must be a dict, got {amount!r}")
                custom.update({str(k): _resource_amount(str(k), v) for k, v in amount.items()})
            elif key not in known:
                custom[str(key)] = _resource_amount(str(key), amount)
        gpus = fields.get("num_gpus", 0.0)
        if gpus > 1 and gpus != int(gpus):
            raise ValueError(f"num_gpus above 1 must be a whole number, got {gpus!r}")
        return cls(**fields, custom=custom)

    def is_empty(self) -> bool:
        return not (self.num_cpus or self.num_gpus or self.memory or any(self.custom.values()))


def _to_resources(value: Resources | Mapping[str, Any] | None) -> Resources:
    return Resources.from_value(value)


RAY_ACTOR_OPTION_KEYS = frozenset({"num_cpus", "num_gpus", "memory", "resources", "runtime_env"})


def from_ray_actor_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Ray's ``ray_actor_options`` as trioserve's own ``resources`` and ``env_vars``."""
    if not isinstance(options, Mapping):
        raise TypeError(f"ray_actor_options must be a dict, got {options!r}")
    unknown = sorted(set(options) - RAY_ACTOR_OPTION_KEYS)
    if unknown:
        raise ValueError(
            f"unknown ray_actor_options key(s) {unknown}; supported: "
            f"{sorted(RAY_ACTOR_OPTION_KEYS)}"
        )
    result: dict[str, Any] = {}
    resources = {k: options[k] for k in ("num_cpus", "num_gpus", "memory") if k in options}
    if "resources" in options:
        resources["resources"] = options["resources"]
    if resources:
        result["resources"] = Resources.from_value(resources)
    runtime_env = options.get("runtime_env") or {}
    if not isinstance(runtime_env, Mapping):
        raise TypeError(f"ray_actor_options['runtime_env'] must be a dict, got {runtime_env!r}")
    extra = sorted(set(runtime_env) - {"env_vars"})
    if extra:
        raise ValueError(f"unsupported runtime_env key(s) {extra}; supported: ['env_vars']")
    if "env_vars" in runtime_env:
        result["env_vars"] = runtime_env["env_vars"]
    return result


def _env_vars(value: object) -> Mapping[str, str]:
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ValueError(f"env_vars must be a dict of str to str, got {value!r}")
    return dict(value)


def _message_size(_inst: object, _attr: object, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1024:
        raise ValueError(f"max_message_size must be an int >= 1024 (bytes), got {value!r}")


def _event_loop(_inst: object, _attr: object, value: object) -> None:
    if value not in ("trio", "asyncio"):
        raise ValueError(f"event_loop must be 'trio' or 'asyncio', got {value!r}")


def _num_replicas(_inst: object, _attr: object, value: object) -> None:
    if value == "auto":
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"num_replicas must be an int >= 0 or 'auto', got {value!r}")


def _max_queued(_inst: object, _attr: object, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or (value < 1 and value != -1):
        raise ValueError(f"max_queued_requests must be an int >= 1 or -1 (no limit), got {value!r}")


def _placement(_inst: object, _attr: object, value: object) -> None:
    if value not in ("process", "inline"):
        raise ValueError(f"placement must be 'process' or 'inline', got {value!r}")


@attrs.frozen(kw_only=True)
class DeploymentConfig:
    """A deployment's options (``@serve.deployment(...)`` and ``.options(...)``)."""

    num_replicas: int | Literal["auto"] = attrs.field(default=1, validator=_num_replicas)
    max_ongoing_requests: int = attrs.field(
        default=5, validator=_positive_int("max_ongoing_requests")
    )
    max_queued_requests: int = attrs.field(default=-1, validator=_max_queued)
    autoscaling_config: AutoscalingConfig | None = None
    user_config: Any = None
    health_check_period_s: float = attrs.field(
        default=10.0, validator=_positive("health_check_period_s")
    )
    health_check_timeout_s: float = attrs.field(
        default=30.0, validator=_positive("health_check_timeout_s")
    )
    graceful_shutdown_timeout_s: float = attrs.field(
        default=5.0, validator=_non_negative("graceful_shutdown_timeout_s")
    )
    placement: Placement = attrs.field(default="process", validator=_placement)
    resources: Resources = attrs.field(factory=Resources, converter=_to_resources)
    env_vars: Mapping[str, str] = attrs.field(factory=dict, converter=_env_vars)
    #: the largest message (a request's arguments, a result) its replicas' connections carry
    max_message_size: int = attrs.field(default=64 * 1024 * 1024, validator=_message_size)
    #: what runs the deployment's async methods: Trio (the default) or an asyncio loop
    event_loop: Literal["trio", "asyncio"] = attrs.field(default="trio", validator=_event_loop)

    def __attrs_post_init__(self) -> None:
        if self.num_replicas == "auto" and self.autoscaling_config is None:
            object.__setattr__(
                self, "autoscaling_config", AutoscalingConfig(min_replicas=1, max_replicas=100)
            )

    @property
    def initial_replicas(self) -> int:
        """How many replicas a deploy starts: ``num_replicas``, or with autoscaling its
        ``initial_replicas`` (else ``min_replicas``)."""
        auto = self.autoscaling_config
        if auto is not None:
            if auto.initial_replicas is not None:
                return auto.initial_replicas
            return auto.min_replicas
        assert isinstance(self.num_replicas, int)
        return self.num_replicas


OPTION_NAMES = frozenset(
    {
        "name",
        "num_replicas",
        "max_ongoing_requests",
        "max_queued_requests",
        "autoscaling_config",
        "user_config",
        "health_check_period_s",
        "health_check_timeout_s",
        "graceful_shutdown_timeout_s",
        "placement",
        "resources",
        "env_vars",
        "ray_actor_options",
        "event_loop",
        "max_message_size",
    }
)


def apply_options(config: DeploymentConfig, options: Mapping[str, Any]) -> DeploymentConfig:
    """A new config with ``options`` applied; unknown names raise with the known list."""
    unknown = sorted(set(options) - OPTION_NAMES)
    if unknown:
        raise TypeError(f"unknown deployment option(s) {unknown}; known: {sorted(OPTION_NAMES)}")
    changes = {k: v for k, v in options.items() if k not in ("name", "ray_actor_options")}
    if options.get("ray_actor_options") is not None:
        translated = from_ray_actor_options(options["ray_actor_options"])
        clash = sorted(set(translated) & set(changes))
        if clash:
            raise ValueError(f"give {clash} either directly or in ray_actor_options, not both")
        changes.update(translated)
    if "autoscaling_config" in changes and changes["autoscaling_config"] is not None:
        changes["autoscaling_config"] = AutoscalingConfig.from_value(changes["autoscaling_config"])
    fixed = changes.get("num_replicas", "auto") != "auto"
    if fixed and changes.get("autoscaling_config") is not None:
        raise ValueError(
            f"num_replicas={changes['num_replicas']!r} and autoscaling_config exclude each "
            "other: give num_replicas='auto' (or leave it out) to autoscale"
        )
    if fixed:
        changes["autoscaling_config"] = None  # a fixed count replaces autoscaling
    return attrs.evolve(config, **changes)
