"""Helpers for testing actors: an actor for the length of a block, an object served in this
process at an authenticated listener, and a connection to it.

    async with actors.testing.running_actor(ActorSpec(factory=Counter)) as actor:
        assert await actor.ref.call("add", 2) == 2

Each is an async context manager that owns its tasks and ends them (and any process it
started) when the block ends.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from ._host import ActorHost
from ._inline import run_inline_actor
from ._process import open_actor_system
from ._ref import RemoteRef
from ._serve import serve_host
from ._spec import Actor, ActorSpec
from ._transport import connect

__all__ = ["connected", "running_actor", "serving"]


@asynccontextmanager
async def running_actor(spec: ActorSpec) -> AsyncIterator[Actor]:
    """Run ``spec`` for the block: as a process under an actor system of its own, or inline
    (``placement="inline"``) as tasks in this process. Leaving the block stops it (a process
    is stopped for certain: drain, SIGTERM, SIGKILL)."""
    if spec.placement == "inline":
        async with trio.open_nursery() as nursery:
            yield await nursery.start(run_inline_actor, spec)
            nursery.cancel_scope.cancel()
    else:
        async with open_actor_system() as system, trio.open_nursery() as nursery:
            yield await nursery.start(system.run_actor, spec)
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def serving(obj: object, *, token: str | bytes, **options: Any) -> AsyncIterator[str]:
    """Serve ``obj`` from this process at an authenticated listener for the block; yields its
    address (``ws://127.0.0.1:PORT``). ``options`` go to :func:`actors.serve_host`
    (``max_message_size``, ``bind``, ``port``)."""
    async with trio.open_nursery() as nursery:
        host = ActorHost(obj, nursery)
        bound, port = await nursery.start(
            functools.partial(serve_host, host, token=token, **options)
        )
        yield f"ws://{bound}:{port}"
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def connected(
    address: str, *, token: str | bytes, **options: Any
) -> AsyncIterator[RemoteRef]:
    """A connection to the actor at ``address`` for the block. Leaving the block closes its
    link at once (no close handshake to wait for). ``options`` go to :func:`actors.connect`
    (``name``, ``max_message_size``)."""
    async with trio.open_nursery() as nursery:
        ref: RemoteRef = await nursery.start(
            functools.partial(connect, address, token=token, **options)
        )
        try:
            yield ref
        finally:
            if ref.link is not None:
                ref.link.close("the block ended")
