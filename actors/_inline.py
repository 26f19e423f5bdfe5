"""Inline actors: hosted as Trio tasks in this process, reached without serialisation."""

from __future__ import annotations

from typing import Any

import trio

from ._future import CallFuture, StreamReceiver, StreamSender
from ._host import ActorHost
from ._spec import Actor, ActorSpec


class InlineRef:
    """An ``ActorRef`` to an actor in this process: arguments are passed by reference."""

    def __init__(self, host: ActorHost) -> None:
        self._host = host
        self.name = host.name
        self._stopped = False

    @property
    def alive(self) -> bool:
        """Whether the actor still takes calls."""
        return not self._stopped

    @property
    def in_flight(self) -> int:
        """Calls running on the actor now."""
        return self._host.ongoing

    def submit(
        self,
        method: str,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> CallFuture:
        """Start a call on the actor; its :class:`CallFuture`."""
        return self._host.submit_local(method, args, kwargs or {}, timeout=timeout)

    def submit_stream(
        self,
        method: str,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> StreamReceiver:
        """Start a streaming call on the actor; its :class:`StreamReceiver`."""
        return self._host.submit_local_stream(method, args, kwargs or {}, timeout=timeout)

    def submit_duplex(
        self,
        method: str,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> tuple[StreamReceiver, StreamSender]:
        """Start a duplex call: its reply stream and its request stream's sender."""
        return self._host.submit_local_duplex(method, args, kwargs or {}, timeout=timeout)

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Submit a call and wait for its value (raises its error)."""
        return await self.submit(method, args, kwargs).wait()


async def build_object(spec: ActorSpec) -> object:
    """Build the spec's object on a worker thread, then await its ``__actor_start__``."""
    obj = await trio.to_thread.run_sync(lambda: spec.factory(*spec.args, **spec.kwargs))
    start = getattr(obj, "__actor_start__", None)
    if start is not None:
        await start()
    return obj


async def run_inline_actor(
    spec: ActorSpec, *, task_status: trio.TaskStatus[Actor] = trio.TASK_STATUS_IGNORED
) -> None:
    """Host ``spec`` here; ``task_status.started(actor)`` once it takes calls.

    Tasks: one per call, in this task's nursery. After ``actor.request_stop()`` it takes no
    new calls, lets in-flight ones finish for up to ``spec.grace_s``, cancels the rest and
    returns. Cancelling it cancels in-flight calls at once. A constructor that raises
    propagates before ``started``.
    """
    obj = await build_object(spec)
    async with trio.open_nursery() as nursery:
        host = ActorHost(obj, nursery, name=spec.name, max_ongoing=spec.max_ongoing)
        ref = InlineRef(host)
        actor = Actor(name=spec.name, ref=ref, pid=None, placement="inline")
        task_status.started(actor)
        try:
            await actor.stop_requested.wait()
            host.stop_accepting()
            with trio.move_on_after(spec.grace_s):
                await host.wait_idle()
        finally:
            ref._stopped = True
            host.stop_accepting()
            nursery.cancel_scope.cancel()
