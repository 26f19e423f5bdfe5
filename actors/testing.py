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
from ._link import Link
from ._memory import memory_websocket_pair
from ._process import open_actor_system
from ._ref import RemoteRef
from ._serve import serve_host
from ._session import HostSession
from ._spec import Actor, ActorSpec
from ._transport import connect

__all__ = ["connected", "in_memory", "running_actor", "serving"]


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
    address (``ws://127.0.0.1:PORT``). ``options`` go to :func:`actors.lowlevel.serve_host`
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


@asynccontextmanager
async def in_memory(obj: object, **host_options: Any) -> AsyncIterator[RemoteRef]:
    """Host ``obj`` in this process and yield a :class:`RemoteRef` to it over an in-memory
    link pair: the whole protocol (envelopes, acknowledgements, credit, cancellation) runs,
    without sockets or authentication. ``host_options`` go to :class:`ActorHost`.

    Tasks: both links' tasks and the calls, in a nursery of this block; leaving the block
    closes the connection and cancels the calls still running."""
    caller_ws, host_ws = memory_websocket_pair()
    ref = RemoteRef(type(obj).__name__)
    async with trio.open_nursery() as nursery:
        host = ActorHost(obj, nursery, **host_options)
        holder: list[HostSession] = []
        host_link = Link(
            host_ws,
            lambda env: holder[0].on_envelope(env),
            after_batch=lambda: holder[0].after_batch(),
        )
        holder.append(HostSession(host, host_link))
        caller_link = Link(
            caller_ws,
            ref.on_envelope,
            on_close=ref.on_close,
        )
        ref.attach(caller_link)

        async def run_host() -> None:
            try:
                await host_link.run()
            finally:
                holder[0].close()

        nursery.start_soon(run_host)
        nursery.start_soon(caller_link.run)
        try:
            yield ref
        finally:
            nursery.cancel_scope.cancel()
