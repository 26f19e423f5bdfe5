"""Status records: what ``serve.status()`` returns."""

from __future__ import annotations

from typing import Any

import attrs


@attrs.frozen(kw_only=True)
class ReplicaStatus:
    replica_id: str
    state: str
    pid: int | None


@attrs.frozen(kw_only=True)
class DeploymentStatus:
    name: str
    status: str
    message: str
    target_replicas: int
    running_replicas: int
    replicas: list[ReplicaStatus]


@attrs.frozen(kw_only=True)
class ApplicationStatus:
    name: str
    status: str
    message: str
    route_prefix: str | None
    ingress: str
    deployments: dict[str, DeploymentStatus]


@attrs.frozen(kw_only=True)
class ServeStatus:
    applications: dict[str, ApplicationStatus]

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)
