"""What an actor is built from, and what a running one looks like to its owner."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

import attrs
import trio

from ._link import DEFAULT_MAX_MESSAGE_SIZE
from ._ref import ActorRef
from ._transport import MAX_CONNECTIONS

Placement = Literal["process", "inline"]


def _check_placement(_inst: object, _attr: object, value: str) -> None:
    if value not in ("process", "inline"):
        raise ValueError(f"placement must be 'process' or 'inline', got {value!r}")


def _check_size(_inst: object, _attr: object, value: int) -> None:
    if value < 1024:
        raise ValueError(f"max_message_size must be >= 1024 bytes, got {value!r}")


def _check_max_connections(_inst: object, _attr: object, value: int) -> None:
    if value < 1:
        raise ValueError(f"max_connections must be >= 1, got {value!r}")


def _check_max_ongoing(_inst: object, _attr: object, value: int | None) -> None:
    if value is not None and value < 1:
        raise ValueError(f"max_ongoing must be >= 1 or None, got {value!r}")


@attrs.frozen(kw_only=True)
class ActorSpec:
    """How to build an actor: ``factory(*args, **kwargs)`` (a class, usually).

    The factory and its arguments are shipped to a child process with cloudpickle when
    ``placement == "process"``. The object is built on a worker thread (a slow constructor
    does not stall the actor's connections); if it has ``async def __actor_start__(self)``,
    that is then awaited in the actor's Trio loop before the actor takes calls.
    """

    factory: Callable[..., object]
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = attrs.field(factory=dict)
    name: str = "actor"
    max_ongoing: int | None = attrs.field(default=None, validator=_check_max_ongoing)
    placement: Placement = attrs.field(default="process", validator=_check_placement)
    grace_s: float = 5.0
    env: Mapping[str, str] = attrs.field(factory=dict)
    #: the largest websocket message the actor's connections accept, in bytes
    max_message_size: int = attrs.field(default=DEFAULT_MAX_MESSAGE_SIZE, validator=_check_size)
    #: how many connections the actor's listener holds open at once (more are closed at
    #: once, before their handshake)
    max_connections: int = attrs.field(default=MAX_CONNECTIONS, validator=_check_max_connections)


@attrs.define(eq=False)
class Actor:
    """A running actor: its reference for calls, and its PID when it is a process."""

    name: str
    ref: ActorRef
    pid: int | None
    placement: Placement
    address: str | None = None
    stop_requested: trio.Event = attrs.field(factory=trio.Event)

    def request_stop(self) -> None:
        """Ask the actor to stop gracefully: it takes no new calls, finishes in-flight ones
        within its spec's ``grace_s``, then exits (its owner's task returns)."""
        self.stop_requested.set()
