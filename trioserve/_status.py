"""Status records (what ``serve.status()`` returns) and the states in them.

States are string enums, so they compare equal to their names (``status == "RUNNING"``) and
print as them. The transitions a deployment may make are listed once, in
:data:`DEPLOYMENT_TRANSITIONS`, and :func:`check_transition` enforces them (h11's
``_state.py`` does the same for a connection).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any, TypeVar

import attrs


class ApplicationState(enum.StrEnum):
    """Where an application is in its life."""

    DEPLOYING = "DEPLOYING"
    RUNNING = "RUNNING"
    DEPLOY_FAILED = "DEPLOY_FAILED"
    UNHEALTHY = "UNHEALTHY"  # reported only: running, with an unhealthy deployment
    DELETING = "DELETING"


class DeploymentState(enum.StrEnum):
    """Where one deployment's replica set is."""

    UPDATING = "UPDATING"
    HEALTHY = "HEALTHY"
    UPSCALING = "UPSCALING"
    DOWNSCALING = "DOWNSCALING"
    UNHEALTHY = "UNHEALTHY"
    DEPLOY_FAILED = "DEPLOY_FAILED"


class ReplicaState(enum.StrEnum):
    """Where one replica is, as its deployment sees it."""

    PENDING = "PENDING"  # waiting for resources (the deployment's message says which)
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    STOPPING = "STOPPING"


_D = DeploymentState
#: every change of a deployment's state that the replica set may make (staying is allowed)
DEPLOYMENT_TRANSITIONS: dict[DeploymentState, frozenset[DeploymentState]] = {
    _D.UPDATING: frozenset(
        {_D.HEALTHY, _D.UPSCALING, _D.DOWNSCALING, _D.UNHEALTHY, _D.DEPLOY_FAILED}
    ),
    _D.HEALTHY: frozenset({_D.UPDATING, _D.UPSCALING, _D.DOWNSCALING, _D.UNHEALTHY}),
    _D.UPSCALING: frozenset({_D.HEALTHY, _D.UPDATING, _D.DOWNSCALING, _D.UNHEALTHY}),
    _D.DOWNSCALING: frozenset({_D.HEALTHY, _D.UPDATING, _D.UPSCALING, _D.UNHEALTHY}),
    _D.UNHEALTHY: frozenset({_D.HEALTHY, _D.UPDATING, _D.UPSCALING, _D.DOWNSCALING}),
    # a deployment that failed to deploy only leaves that state by being deployed again
    _D.DEPLOY_FAILED: frozenset({_D.UPDATING}),
}

_A = ApplicationState
#: every change of an application's state the controller may make (staying is allowed)
APPLICATION_TRANSITIONS: dict[ApplicationState, frozenset[ApplicationState]] = {
    _A.DEPLOYING: frozenset({_A.RUNNING, _A.DEPLOY_FAILED, _A.DELETING}),
    _A.RUNNING: frozenset({_A.DEPLOYING, _A.DELETING}),
    _A.DEPLOY_FAILED: frozenset({_A.DELETING}),
    _A.UNHEALTHY: frozenset({_A.DEPLOYING, _A.DELETING, _A.RUNNING}),
    _A.DELETING: frozenset(),
}


S = TypeVar("S", DeploymentState, ApplicationState)


class StateTransitionError(RuntimeError):
    """A state change that the transition table does not allow (a bug, not bad input)."""


def deployment_transition(instance: object, attribute: Any, new: DeploymentState) -> Any:
    """attrs ``on_setattr`` hook: a deployment's state changes only as the table allows."""
    check_transition(DEPLOYMENT_TRANSITIONS, getattr(instance, attribute.name), new)
    return new


def application_transition(instance: object, attribute: Any, new: ApplicationState) -> Any:
    """attrs ``on_setattr`` hook: an application's state changes only as the table allows."""
    check_transition(APPLICATION_TRANSITIONS, getattr(instance, attribute.name), new)
    return new


def check_transition(table: Mapping[S, frozenset[S]], old: S, new: S) -> None:
    """Raise :class:`StateTransitionError` unless ``old -> new`` is in ``table``."""
    if new != old and new not in table.get(old, frozenset()):
        raise StateTransitionError(f"{type(old).__name__} cannot go from {old} to {new}")


@attrs.frozen(kw_only=True)
class ReplicaStatus:
    """One replica of a deployment: its id, state and process id (None when inline)."""

    replica_id: str
    state: ReplicaState
    pid: int | None


@attrs.frozen(kw_only=True)
class DeploymentStatus:
    """One deployment: its state, why (``message``), and its replicas."""

    name: str
    status: DeploymentState
    message: str
    target_replicas: int
    running_replicas: int
    replicas: list[ReplicaStatus]


@attrs.frozen(kw_only=True)
class ApplicationStatus:
    """One application: its state, route, ingress deployment and deployments."""

    name: str
    status: ApplicationState
    message: str
    route_prefix: str | None
    ingress: str
    deployments: dict[str, DeploymentStatus]


@attrs.frozen(kw_only=True)
class ServeStatus:
    """Every application of a serve instance, by name (what ``serve.status()`` returns)."""

    applications: dict[str, ApplicationStatus]
