"""Where handles find their routers (the serve instance, or a replica's process context),
and which replica, if any, this process hosts (``serve.get_replica_context()``)."""

from __future__ import annotations

import socket
import weakref
from typing import TYPE_CHECKING, Any, Protocol

import attrs
import trio

from ..exceptions import DeploymentUnavailableError, ServeShutdownError

if TYPE_CHECKING:
    from .router import Router


class ServeContext(Protocol):
    """A Trio loop in which routers live: the instance's, or a replica process's."""

    trio_token: trio.lowlevel.TrioToken

    def router(self, app: str, deployment: str) -> Router: ...


_current: ServeContext | None = None


def set_current(context: ServeContext | None) -> None:
    global _current
    _current = context


def current() -> ServeContext:
    if _current is None:
        raise DeploymentUnavailableError(
            "no serve instance is running in this process: start one with serve.run(...) "
            "or `async with serve.open_serve()`"
        )
    return _current


def current_or_none() -> ServeContext | None:
    return _current


# -- loops that ended with an error (the script API's serve loop crashed)

_crashes: weakref.WeakKeyDictionary[trio.lowlevel.TrioToken, BaseException] = (
    weakref.WeakKeyDictionary()
)


def set_crash(token: trio.lowlevel.TrioToken, error: BaseException) -> None:
    """Record that the loop of ``token`` ended with ``error``, for its handles to say."""
    _crashes[token] = error


def raise_if_crashed(token: trio.lowlevel.TrioToken, what: str) -> None:
    """Raise ServeShutdownError, from the error, if the loop of ``token`` ended with one;
    ``what`` names the call that needed the loop."""
    crash = _crashes.get(token)
    if crash is not None:
        raise ServeShutdownError(
            f"{what}: the serve instance stopped with an error: {crash!r} (its traceback is "
            "logged on the 'trioserve' logger); call serve.shutdown(), then serve.run() "
            "starts a new instance"
        ) from crash


# -- the replica this process hosts


@attrs.frozen(kw_only=True)
class ReplicaContext:
    """Who the calling code runs as, from ``serve.get_replica_context()`` in a replica."""

    #: the application the replica belongs to
    app_name: str
    #: the deployment the replica belongs to
    deployment: str
    #: unique among the deployment's replicas, past and present (``"Model#2"``)
    replica_id: str
    #: the host the replica runs on
    node_name: str
    #: the user's object (the instance of the deployment's class, or its function); None
    #: while that object is being built. Any: it is whatever the user deployed.
    servable_object: Any = attrs.field(default=None, eq=False, repr=False)


class ReplicaIdentity(Protocol):
    """What a replica knows of itself (``trioserve._replica.replica.ReplicaInfo``)."""

    @property
    def app(self) -> str: ...
    @property
    def deployment(self) -> str: ...
    @property
    def replica_id(self) -> str: ...


class HostedReplica(Protocol):
    """The replica object a replica process hosts; its user object is read from its
    ``user`` attribute when asked for (absent while being built)."""

    @property
    def info(self) -> ReplicaIdentity: ...


_hosted: HostedReplica | None = None


def set_replica_context(replica: HostedReplica | None) -> None:
    """Record the replica this process hosts (a replica process hosts exactly one; the
    serve process, whose inline replicas are many, records none)."""
    global _hosted
    _hosted = replica


def replica_context_or_none() -> ReplicaContext | None:
    hosted = _hosted
    if hosted is None:
        return None
    info = hosted.info
    return ReplicaContext(
        app_name=info.app,
        deployment=info.deployment,
        replica_id=info.replica_id,
        node_name=socket.gethostname(),
        servable_object=getattr(hosted, "user", None),
    )


def get_replica_context() -> ReplicaContext:
    """The application, deployment and id of the replica this code runs in, its node and
    the user object; raises RuntimeError anywhere else."""
    context = replica_context_or_none()
    if context is None:
        raise RuntimeError(
            "serve.get_replica_context() was called outside a replica; call it in a "
            "deployment's __init__ or methods (replicas placed 'inline' in the serve "
            "process have no replica context yet)"
        )
    return context
