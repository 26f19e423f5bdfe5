"""Typed messages that cross process boundaries: between routers and the controller, and a
replica's metrics for the proxy.

They are msgspec Structs, so the runtime's codec carries them as their own type; new fields
get defaults and are only appended.
"""

from __future__ import annotations

from typing import Any

import msgspec

#: a call for a multiplexed model names its method as ``method + MODEL_SEP + model_id``
MODEL_SEP = "\x1fmodel="


class Membership(msgspec.Struct, frozen=True, kw_only=True):
    """The replicas of one deployment, pushed by the controller to every router.

    ``replicas`` holds ``(replica_id, address)`` pairs (address None for an inline replica,
    which processes other than the serve process cannot reach). ``error`` set means the
    deployment cannot serve at all; routers fail its requests with that reason."""

    replicas: list[tuple[str, str | None]] = []
    max_ongoing: int = 1
    max_queued: int = -1
    report_interval_s: float | None = None
    error: str | None = None
    #: the multiplexed model ids each replica holds, by replica id
    models: dict[str, list[str]] = {}
    #: the largest message a connection to these replicas carries
    max_message_size: int = 64 * 1024 * 1024


class LoadReport(msgspec.Struct, frozen=True, kw_only=True):
    """Queued plus in-flight requests one router sees for a deployment (for autoscaling)."""

    app: str
    deployment: str
    router_id: str
    load: float


class ModelReport(msgspec.Struct, frozen=True, kw_only=True):
    """The multiplexed model ids one replica holds, sent after every load and eviction."""

    app: str
    deployment: str
    replica_id: str
    model_ids: list[str]


class MethodLatency(msgspec.Struct, frozen=True, kw_only=True):
    """One method's latency histogram in a replica: per-bucket counts, sum and count."""

    method: str
    counts: list[int]
    total: float
    n: int


class ModelCacheCounters(msgspec.Struct, frozen=True, kw_only=True):
    """A replica's ``@serve.multiplexed`` model cache."""

    hits: int = 0
    misses: int = 0
    loads: int = 0
    load_seconds: float = 0.0
    loaded: int = 0


class ReplicaMetricsSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """What a replica answers ``__serve_metrics__`` with (for ``/-/metrics``)."""

    requests: dict[str, int] = {}
    errors: dict[str, int] = {}
    latency: list[MethodLatency] = []
    ongoing: int = 0
    multiplex: ModelCacheCounters | None = None
    #: ``@serve.batch`` figures of the replica's process (``BatchMetrics`` records)
    batches: list[Any] = []
