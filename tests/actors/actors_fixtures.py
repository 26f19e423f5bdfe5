"""Actor classes and helpers shared by the actor runtime's tests.

The classes live at module level in an importable module so that cloudpickle ships them to a
child process by reference (the child gets this test run's ``sys.path``).
"""

from __future__ import annotations

import gc
import importlib
import os
import signal
import sys
import threading
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

import psutil
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, wrap_client_stream

import actors
import actors.lowlevel

Placement = Literal["process", "inline"]

#: how long a test actor may take to drain when its test ends (keeps failing tests quick)
GRACE_S = 0.5


class CustomError(Exception):
    """A user exception type importable in the caller: it must arrive as itself."""


class InitError(Exception):
    """Raised by :class:`BrokenInit`'s constructor."""


class Worker:
    """A general-purpose actor: echoes, records what it ran and what was cancelled, streams
    with a progress counter, blocks threads, and can crash its process."""

    def __init__(self, label: str = "worker") -> None:
        self.label = label
        self.started_keys: list[str] = []
        self.cancelled_keys: list[str] = []
        self.produced: dict[str, int] = {}
        self.closed_streams: list[str] = []
        self._changed = trio.Event()
        self._entered = threading.Event()
        self._released = threading.Event()

    # -- plain calls

    async def echo(self, value: Any) -> Any:
        return value

    async def square(self, i: int) -> int:
        await trio.lowlevel.checkpoint()
        return i * i

    async def pid(self) -> int:
        return os.getpid()

    async def frozen_objects(self) -> int:
        """How many objects this process moved out of the garbage collector's reach."""
        return gc.get_freeze_count()

    async def make_bytes(self, n: int) -> bytes:
        return b"x" * n

    async def fail(self, message: str) -> None:
        raise CustomError(message)

    async def raise_from(self, directory: str, module: str, name: str, message: str) -> None:
        """Raise ``module.name(message)``, importing ``module`` from ``directory``: a type
        the caller cannot import (``directory`` is only on this process's path)."""
        if directory not in sys.path:
            sys.path.append(directory)
        raise getattr(importlib.import_module(module), name)(message)

    async def token(self) -> str | None:
        return actors.instance_token()

    async def env(self, name: str) -> str | None:
        return os.environ.get(name)

    async def crash(self, code: int) -> None:
        os._exit(code)

    # -- calls that wait, and what they saw

    async def hang(self, key: str) -> None:
        self._record(self.started_keys, key)
        try:
            await trio.sleep_forever()
        except trio.Cancelled:  # why: record that the cancellation reached this task; re-raised
            self._record(self.cancelled_keys, key)
            raise

    async def slow(self, key: str, seconds: float) -> str:
        self._record(self.started_keys, key)
        await trio.sleep(seconds)  # simulated work, not waiting for a condition
        return key

    def _record(self, keys: list[str], key: str) -> None:
        keys.append(key)
        self._changed.set()
        self._changed = trio.Event()

    async def _wait_for(self, keys: list[str], count: int) -> list[str]:
        with trio.fail_after(5):
            while len(keys) < count:
                await self._changed.wait()
        return list(keys)

    async def wait_started(self, count: int = 1) -> list[str]:
        """The keys of calls that started, once at least ``count`` have."""
        return await self._wait_for(self.started_keys, count)

    async def wait_cancelled(self, count: int = 1) -> list[str]:
        """The keys of calls that saw their cancellation, once at least ``count`` have."""
        return await self._wait_for(self.cancelled_keys, count)

    async def get_started_keys(self) -> list[str]:
        return list(self.started_keys)

    # -- worker threads

    def block_until_released(self) -> tuple[bool, bool]:
        """``(released, ran_on_a_worker_thread)`` once :meth:`release` is called."""
        self._entered.set()
        released = self._released.wait(10)
        return released, threading.current_thread() is not threading.main_thread()

    async def wait_entered(self) -> bool:
        return await trio.to_thread.run_sync(self._entered.wait, 5)

    async def release(self) -> None:
        self._released.set()

    # -- streams

    async def count_async(self, key: str, n: int) -> AsyncIterator[int]:
        try:
            for i in range(n):
                self.produced[key] = i + 1
                yield 2 * i
        finally:
            self._record(self.closed_streams, key)

    def count_sync(self, key: str, n: int) -> Iterator[int]:
        for i in range(n):
            self.produced[key] = i + 1
            yield 2 * i

    @actors.lowlevel.push_stream
    async def count_push(self, emit: Callable[[int], Any], key: str, n: int) -> None:
        for i in range(n):
            self.produced[key] = i + 1
            await emit(2 * i)

    async def hang_stream(self, key: str) -> AsyncIterator[int]:
        await self.hang(key)
        yield 0  # never reached: this makes the method an async generator

    def block_then_yield(self) -> Iterator[str]:
        """A sync generator whose first step blocks until :meth:`release` is called."""
        self._entered.set()
        self._released.wait(10)
        yield "released"

    async def wait_closed_streams(self, count: int = 1) -> list[str]:
        """The keys of async generators that were finalised, once at least ``count`` were."""
        return await self._wait_for(self.closed_streams, count)

    async def get_produced(self, key: str) -> int:
        return self.produced.get(key, 0)

    async def produced_when_idle(self, key: str) -> int:
        """The counter once every task of this actor is blocked (its stream waits for credit);
        the cushion lets a generator step running on a worker thread come back first."""
        import trio.testing  # imports pytest: kept out of every child's start-up

        await trio.testing.wait_all_tasks_blocked(cushion=0.05)
        return self.produced.get(key, 0)


class BrokenInit:
    """An actor whose constructor raises."""

    def __init__(self, message: str) -> None:
        raise InitError(message)


class Stubborn:
    """An actor that ignores SIGTERM and can freeze its own Trio loop (a badly behaved
    actor): only SIGKILL stops it then."""

    def __actor_attach__(self, host: actors.lowlevel.ActorHost) -> None:
        self._host = host

    async def __actor_start__(self) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)

    @actors.lowlevel.push_stream
    async def freeze(self, emit: Callable[[str], Any]) -> None:
        """Send one item, make sure it left, then block the loop (no Stop is ever read)."""
        await emit("frozen")
        await self._host.flush()
        time.sleep(30)  # noqa: ASYNC251 -- deliberately blocks the loop: only SIGKILL ends it


class SlowRestart:
    """An actor whose constructor, from its second run on, says so (a ``restarting`` file)
    and then waits until released (a ``release`` file): a restart that stays in progress
    while a test acts. Its PID is written to ``pid-<n>`` for every build."""

    def __init__(self, folder: str) -> None:
        base = Path(folder)
        runs = len(list(base.glob("pid-*")))
        (base / f"pid-{runs}").write_text(str(os.getpid()))
        if runs:
            (base / "restarting").touch()
            deadline = time.monotonic() + 30
            while not (base / "release").exists() and time.monotonic() < deadline:
                time.sleep(0.01)  # a file cannot be awaited; bounded by the deadline

    async def ping(self) -> str:
        await trio.lowlevel.checkpoint()
        return "pong"


def worker_spec(placement: Placement = "process", **options: Any) -> actors.ActorSpec:
    """A :class:`Worker` spec that drains quickly when its test ends."""
    options.setdefault("grace_s", GRACE_S)
    return actors.ActorSpec(factory=Worker, placement=placement, **options)


async def call_when_admitted(ref: actors.ActorRef, method: str, *args: Any) -> Any:
    """Call ``method``, retrying while the actor is still at ``max_ongoing`` (each attempt is
    a full round trip, so the actor's cancelled calls get to finish in between)."""
    with trio.fail_after(5):
        while True:
            try:
                return await ref.call(method, *args)
            except actors.RejectedError:
                continue


def descendants(pid: int | None = None) -> list[psutil.Process]:
    """Every live process below ``pid`` (this process by default), however spawned."""
    return [p for p in psutil.Process(pid).children(recursive=True) if not process_gone(p)]


def process_gone(proc: psutil.Process) -> bool:
    """Whether ``proc`` has exited (a zombie waiting for its parent counts as gone)."""
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def wait_process_gone(proc: psutil.Process, timeout: float = 10) -> None:
    """Poll a real OS process until it has exited, bounded by ``timeout``."""
    with trio.fail_after(timeout):
        while not process_gone(proc):  # noqa: ASYNC110 -- an OS process has no event to wait on
            await trio.sleep(0.02)  # polling a real process's exit, bounded by the deadline


@asynccontextmanager
async def open_raw_websocket(
    address: str,
    *,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
    subprotocols: Sequence[str] = (actors.PROTOCOL,),
) -> AsyncIterator[WebSocketConnection]:
    """A plain trio-websocket client of ``address`` (``ws://host:port``) for the block, for
    tests that send what they like; a refused handshake raises ConnectionRejected. Unlike
    trio-websocket 0.12.2's ``open_websocket_url``, it closes its TCP connection when the
    server refused or closed first (that one leaves the socket to be garbage-collected
    unclosed)."""
    url = urllib.parse.urlsplit(address)
    assert url.hostname is not None
    assert url.port is not None
    stream = await trio.open_tcp_stream(url.hostname, url.port)
    with actors.unwrap_lone_error():  # the block's own error comes out as itself
        async with stream, trio.open_nursery() as nursery:
            ws = await wrap_client_stream(
                nursery,
                stream,
                url.hostname,
                url.path or "/",
                subprotocols=list(subprotocols),
                extra_headers=extra_headers,
            )
            try:
                yield ws
            finally:
                try:
                    await ws.aclose()
                finally:
                    await trio.aclose_forcefully(stream)  # also ends the reader task


async def wait_closed(ws: WebSocketConnection, timeout: float = 10) -> ConnectionClosed:
    """Read (and drop) messages until the peer closes the connection (bounded)."""
    with trio.fail_after(timeout):
        while True:
            try:
                await ws.get_message()
            except ConnectionClosed as exc:
                return exc


class ChangeLog:
    """A supervisor's ``on_change`` callback that records every report; tests wait on it."""

    def __init__(self) -> None:
        self.events: list[tuple[str, actors.Actor | None]] = []
        self._changed = trio.Event()

    def __call__(self, child_id: str, actor: actors.Actor | None) -> None:
        self.events.append((child_id, actor))
        self._changed.set()
        self._changed = trio.Event()

    def since(self, mark: int, child_id: str) -> list[actors.Actor | None]:
        return [actor for cid, actor in self.events[mark:] if cid == child_id]

    async def wait_until(self, condition: Callable[[], bool], timeout: float = 10) -> None:
        with trio.fail_after(timeout):
            while not condition():
                await self._changed.wait()
