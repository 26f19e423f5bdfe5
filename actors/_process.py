"""Process actors: spawning a child that connects back, and stopping it for certain.

``open_actor_system()`` owns the instance token and the control listener that children
connect back to. ``system.run_actor(spec)`` (a task for ``nursery.start``) spawns
``python -m actors._child``; the child authenticates, says hello, receives its spec over the
control link, builds the object, serves calls on its own listener and reports its address.
The token reaches the child through its environment only, never its command line.

Children (and the fork server, whose forks inherit its group) run in process groups of
their own, so a terminal's Ctrl-C, sent to its foreground process group, reaches only the
parent: it decides how to stop them (drain, then ``Stop``). A child whose parent dies
anyway ends by itself (its control link closes; a watchdog thread notices the new parent).
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Protocol

import msgspec
import trio

from . import _codec, _wire
from ._forkserver import ForkServer, fork_supported
from ._groups import unwrap_lone_error
from ._inline import run_inline_actor
from ._link import Link
from ._ref import RemoteRef
from ._serve import ENV_TOKEN
from ._spec import Actor, ActorSpec
from ._transport import MAX_CONNECTIONS, connect, serve_links
from ._websocket import WebSocket
from .exceptions import SpawnError

ENV_PARENT = "ACTORS_PARENT"
#: the PID of the child's parent process (the zygote's, for forked children): the child's
#: watchdog ends it when its parent changes
ENV_PARENT_PID = "ACTORS_PARENT_PID"
__all__ = [
    "ENV_CHILD_ID",
    "ENV_PARENT",
    "ENV_PARENT_PID",
    "ENV_TOKEN",
    "ActorSystem",
    "open_actor_system",
]
ENV_CHILD_ID = "ACTORS_CHILD_ID"
START_TIMEOUT_S = 60.0
TERM_TIMEOUT_S = 2.0


class _Slot:
    """The parent's view of one child's control link, filled in as the child says hello."""

    def __init__(self) -> None:
        self.link: Link | None = None
        self.pid: int | None = None
        self.hello = trio.Event()
        self.closed = trio.Event()
        self.send, self.inbox = trio.open_memory_channel[_wire.Envelope](64)

    def deliver(self, env: _wire.Envelope) -> None:
        try:
            self.send.send_nowait(env)
        except trio.WouldBlock:
            if self.link is not None:
                self.link.close("child flooded its control link")


class ActorSystem:
    """Spawns and supervises-by-hand actor processes for one instance token.

    Tasks: the control listener and one task per child's control link, in the nursery of
    :func:`open_actor_system`.
    """

    def __init__(
        self,
        token: str,
        control_address: str,
        child_host: str,
        *,
        nursery: trio.Nursery | None = None,
        spawn_method: str = "exec",
        preload: Sequence[str] = (),
    ) -> None:
        self.token = token
        self.control_address = control_address
        self.child_host = child_host
        self.spawn_method = spawn_method
        self._slots: dict[str, _Slot] = {}
        self._nursery = nursery
        self._preload = tuple(preload)
        self._forkserver: ForkServer | None = None
        self._forkserver_lock = trio.Lock()

    async def _spawn(self, child_id: str, extra_env: Mapping[str, str]) -> ChildProcess:
        child_env = {**extra_env, ENV_CHILD_ID: child_id}
        if self.spawn_method == "fork" and self._nursery is not None:
            async with self._forkserver_lock:
                if self._forkserver is None or self._forkserver.gone:
                    server = ForkServer(
                        {**os.environ, ENV_TOKEN: self.token, ENV_PARENT: self.control_address},
                        self._preload,
                    )
                    await self._nursery.start(server.run)
                    self._forkserver = server
            return await self._forkserver.fork(child_id, child_env)
        env = {**os.environ, ENV_TOKEN: self.token, ENV_PARENT: self.control_address}
        env.update(child_env)
        env[ENV_PARENT_PID] = str(os.getpid())
        # its own process group: a terminal's Ctrl-C (SIGINT to the foreground group) reaches
        # only the driver, which drains and then stops its children itself
        return await trio.lowlevel.open_process(
            [sys.executable, "-P", "-m", "actors._child"],
            env=env,
            stdin=subprocess.DEVNULL,
            process_group=0,
        )

    # -- the control listener's side

    async def _on_control_link(self, ws: WebSocket) -> None:
        slot: _Slot | None = None

        def on_envelope(env: _wire.Envelope) -> None:
            nonlocal slot
            if slot is not None:
                slot.deliver(env)
                return
            if type(env) is _wire.Hello and env.child_id in self._slots:
                slot = self._slots.pop(env.child_id)
                slot.link, slot.pid = link, env.pid
                slot.hello.set()
            elif type(env) is not _wire.Heartbeat:
                link.close("a child must say hello first")

        def on_close(_reason: str) -> None:
            if slot is not None:
                slot.closed.set()

        link = Link(ws, on_envelope, on_close=on_close)
        await link.run()

    # -- spawning

    async def run_actor(
        self, spec: ActorSpec, *, task_status: trio.TaskStatus[Actor] = trio.TASK_STATUS_IGNORED
    ) -> int | None:
        """Run one actor as a task: ``task_status.started(actor)`` once it takes calls.

        Returns the exit code when the process exits by itself (``None`` for inline actors
        stopped by request). If cancelled, the child is stopped for certain: ``Stop`` (it
        drains for ``spec.grace_s``), then SIGTERM, then SIGKILL; this runs shielded and
        bounded. A child that cannot start raises :class:`SpawnError`.
        """
        if spec.placement == "inline":
            await run_inline_actor(spec, task_status=task_status)
            return None
        child_id = secrets.token_hex(8)
        slot = _Slot()
        self._slots[child_id] = slot
        blob = msgspec.msgpack.encode([list(sys.path), _codec.dumps(spec), self.child_host])
        try:
            proc = await self._spawn(child_id, spec.env)
        except BaseException:  # why: forget the slot of a child that never started; re-raised
            self._slots.pop(child_id, None)
            raise
        try:
            host, port = await self._handshake(spec, proc, slot, blob)
            return await self._serve(spec, proc, slot, f"ws://{host}:{port}", task_status)
        finally:
            self._slots.pop(child_id, None)
            await _stop_process(proc, slot, spec.grace_s)

    async def _handshake(
        self, spec: ActorSpec, proc: ChildProcess, slot: _Slot, blob: bytes
    ) -> tuple[str, int]:
        reply: Any = None
        with trio.move_on_after(START_TIMEOUT_S) as timer:
            async with trio.open_nursery() as nursery:

                async def watch_exit() -> None:
                    await proc.wait()
                    nursery.cancel_scope.cancel()

                async def talk() -> None:
                    nonlocal reply
                    await slot.hello.wait()
                    assert slot.link is not None
                    slot.link.send_nowait(_wire.Spec(blob))
                    reply = await slot.inbox.receive()
                    nursery.cancel_scope.cancel()

                nursery.start_soon(watch_exit)
                nursery.start_soon(talk)
        if type(reply) is _wire.Ready:
            return reply.host, reply.port
        if type(reply) is _wire.SpecFailed:
            cause = _codec.decode_error(reply.error)
            raise SpawnError(f"actor {spec.name} failed to start: {cause!r}") from cause
        if timer.cancelled_caught:
            raise SpawnError(f"actor {spec.name} did not start within {START_TIMEOUT_S}s")
        raise SpawnError(f"actor {spec.name} exited during start (exit code {proc.returncode})")

    async def _serve(
        self,
        spec: ActorSpec,
        proc: ChildProcess,
        slot: _Slot,
        address: str,
        task_status: trio.TaskStatus[Actor],
    ) -> int | None:
        # The connection outlives our own cancellation: calls in flight keep it while the
        # child drains; it is closed once the child has exited.
        connection_scope = trio.CancelScope(shield=True)
        connection_done = trio.Event()

        async def run_connection(task_status: trio.TaskStatus[RemoteRef]) -> None:
            with connection_scope:  # why: see above; cancelled explicitly below
                try:
                    await connect(
                        address,
                        token=self.token,
                        name=spec.name,
                        max_message_size=spec.max_message_size,
                        task_status=task_status,
                    )
                finally:
                    connection_done.set()

        async with trio.open_nursery() as nursery:
            ref = await nursery.start(run_connection)
            actor = Actor(
                name=spec.name, ref=ref, pid=proc.pid, placement="process", address=address
            )
            task_status.started(actor)

            async def stop_on_request() -> None:
                await actor.stop_requested.wait()
                if slot.link is not None:
                    slot.link.send_nowait(_wire.Stop(spec.grace_s))

            async def watch_control() -> None:
                await slot.closed.wait()
                with trio.move_on_after(TERM_TIMEOUT_S):
                    await proc.wait()
                if proc.returncode is None:
                    proc.kill()

            nursery.start_soon(stop_on_request)
            nursery.start_soon(watch_control)
            try:
                await proc.wait()
            finally:
                await _stop_process(proc, slot, spec.grace_s)
                # the child flushed its last replies before exiting: read them (the link
                # ends by itself at the socket's end) before closing it, bounded
                with trio.CancelScope(shield=True) as reading:  # why: see above
                    reading.deadline = trio.current_time() + 1.0
                    await connection_done.wait()
                connection_scope.cancel()
                nursery.cancel_scope.cancel()
        return proc.returncode


async def _stop_process(proc: ChildProcess, slot: _Slot, grace_s: float) -> None:
    """Stop ``proc`` for certain: Stop message, wait, SIGTERM, wait, SIGKILL."""
    if proc.returncode is not None:
        return
    with trio.CancelScope(shield=True):  # why: a cancelled owner must still reap its child
        if slot.link is not None and not slot.link.closed:
            slot.link.send_nowait(_wire.Stop(grace_s))
            with trio.move_on_after(grace_s + 1.0):
                await proc.wait()
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            with trio.move_on_after(TERM_TIMEOUT_S):
                await proc.wait()
        if proc.returncode is None:
            proc.kill()
            with trio.move_on_after(TERM_TIMEOUT_S):
                await proc.wait()


class ChildProcess(Protocol):
    """A child process as the system handles it (``trio.Process`` or a forked one)."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    async def wait(self) -> int: ...

    def send_signal(self, sig: int) -> None: ...

    def kill(self) -> None: ...


@asynccontextmanager
async def open_actor_system(
    *,
    token: str | None = None,
    host: str = "127.0.0.1",
    spawn_method: str | None = None,
    preload: Sequence[str] = (),
    max_connections: int = MAX_CONNECTIONS,
) -> AsyncIterator[ActorSystem]:
    """Open an actor system: an instance token and the control listener on ``host``.

    ``spawn_method`` is ``"fork"`` (the default where the platform has pidfds: children
    are forked from a fork server that has imported the runtime, and the modules named in
    ``preload``, once) or ``"exec"`` (a fresh ``python -m actors._child`` per child).
    ``max_connections`` bounds the control listener as :func:`actors.serve_links` says; every
    running child holds one of its connections (its control link).

    Tasks: the control listener and the fork server, in this block's nursery. Actors run with
    ``nursery.start(system.run_actor, spec)`` in nurseries of the caller's choosing, which
    must close before this block does. Leaving the block closes the listener.
    """
    token = token or secrets.token_urlsafe(32)
    with unwrap_lone_error():
        async with trio.open_nursery() as nursery:
            holder: list[ActorSystem] = []

            async def on_link(ws: WebSocket) -> None:
                await holder[0]._on_control_link(ws)

            bound_host, port = await nursery.start(
                lambda task_status: serve_links(
                    on_link,
                    token=token,
                    host=host,
                    port=0,
                    max_connections=max_connections,
                    task_status=task_status,
                )
            )
            if spawn_method is None:
                spawn_method = "fork" if fork_supported() else "exec"
            if spawn_method not in ("fork", "exec"):
                raise ValueError(f"spawn_method must be 'fork' or 'exec', got {spawn_method!r}")
            system = ActorSystem(
                token,
                f"ws://{bound_host}:{port}",
                host,
                nursery=nursery,
                spawn_method=spawn_method,
                preload=preload,
            )
            holder.append(system)
            try:
                yield system
            finally:
                nursery.cancel_scope.cancel()
