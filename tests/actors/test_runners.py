"""Call runners: a host runs many calls in few tasks, each call as if it had a task of its
own (its context, its cancellation, its deadline)."""

from __future__ import annotations

import contextvars
from typing import Any

import pytest
import trio
import trio.testing

import actors
import actors.lowlevel
from actors import _runners

_seen: contextvars.ContextVar[str] = contextvars.ContextVar("seen", default="unset")


class Calls:
    """Methods that return at once, block, or look at their context."""

    def __init__(self) -> None:
        self.release = trio.Event()
        self.started: list[str] = []
        self.cancelled: list[str] = []

    async def echo(self, value: Any) -> Any:
        return value

    async def block(self, key: str) -> str:
        self.started.append(key)
        try:
            await self.release.wait()
        except trio.Cancelled:
            self.cancelled.append(key)
            raise
        return key

    async def mark(self, value: str) -> str:
        before = _seen.get()
        _seen.set(value)  # never reset: a call of its own must not leak it
        await trio.lowlevel.checkpoint()
        return before

    async def checkpoint_then(self, key: str) -> str:
        self.started.append(key)
        try:
            await trio.lowlevel.checkpoint()
        except trio.Cancelled:
            self.cancelled.append(key)
            raise
        return key


class Spawns(trio.abc.Instrument):
    def __init__(self) -> None:
        self.count = 0

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        self.count += 1


async def test_runners_calls_that_never_suspend_share_one_task() -> None:
    """A hundred calls that return at once cost a runner or two, not a task each."""
    async with trio.open_nursery() as nursery:
        host = actors.lowlevel.ActorHost(Calls(), nursery)
        spawns = Spawns()
        trio.lowlevel.add_instrument(spawns)
        try:
            futures = [host.submit_local("echo", (i,), {}) for i in range(100)]
            assert [await f for f in futures] == list(range(100))
        finally:
            trio.lowlevel.remove_instrument(spawns)
        assert spawns.count <= 2
        nursery.cancel_scope.cancel()


async def test_runners_a_blocked_call_does_not_hold_up_the_ones_behind_it() -> None:
    """Calls queued behind one that waits run meanwhile (another runner takes them)."""
    async with trio.open_nursery() as nursery:
        obj = Calls()
        host = actors.lowlevel.ActorHost(obj, nursery)
        blocked = [host.submit_local("block", (f"b{i}",), {}) for i in range(3)]
        quick = host.submit_local("echo", ("quick",), {})
        with trio.fail_after(5):
            assert await quick == "quick"
        await trio.testing.wait_all_tasks_blocked()
        assert sorted(obj.started) == ["b0", "b1", "b2"]
        obj.release.set()
        assert [await f for f in blocked] == ["b0", "b1", "b2"]
        nursery.cancel_scope.cancel()


async def test_runners_each_call_has_its_own_context() -> None:
    """A context variable a call sets (and never resets) is not seen by the next call run
    by the same runner: each call runs in a copy of the context it was started from."""
    async with trio.open_nursery() as nursery:
        host = actors.lowlevel.ActorHost(Calls(), nursery)
        _seen.set("caller")
        first = host.submit_local("mark", ("first",), {})
        second = host.submit_local("mark", ("second",), {})
        assert await first == "caller"
        assert await second == "caller"
        assert _seen.get() == "caller"
        nursery.cancel_scope.cancel()


async def test_runners_cancelling_a_running_call_cancels_only_it() -> None:
    """Cancelling a call that waits interrupts that call; the others of its runner go on."""
    async with trio.open_nursery() as nursery:
        obj = Calls()
        host = actors.lowlevel.ActorHost(obj, nursery)
        doomed = host.submit_local("block", ("doomed",), {})
        kept = host.submit_local("block", ("kept",), {})
        await trio.testing.wait_all_tasks_blocked()
        doomed.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert obj.cancelled == ["doomed"]
        obj.release.set()
        assert await kept == "kept"
        assert await host.submit_local("echo", (2,), {}) == 2
        nursery.cancel_scope.cancel()


async def test_runners_a_call_cancelled_before_it_starts_starts_cancelled() -> None:
    """A call cancelled while queued still starts, and is cancelled at its first
    checkpoint, as it would be in a task of its own."""
    async with trio.open_nursery() as nursery:
        obj = Calls()
        host = actors.lowlevel.ActorHost(obj, nursery)
        future = host.submit_local("checkpoint_then", ("early",), {})
        future.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert obj.started == ["early"]
        assert obj.cancelled == ["early"]
        assert host.ongoing == 0
        assert await host.submit_local("echo", ("after",), {}) == "after"
        nursery.cancel_scope.cancel()


async def test_runners_a_deadline_interrupts_a_call_that_waits() -> None:
    """A call waiting past its deadline ends with DeadlineExceededError."""
    async with trio.open_nursery() as nursery:
        obj = Calls()
        host = actors.lowlevel.ActorHost(obj, nursery)
        future = host.submit_local("block", ("slow",), {}, timeout=0.05)
        with trio.fail_after(5), pytest.raises(actors.DeadlineExceededError):
            await future
        assert obj.cancelled == ["slow"]
        assert await host.submit_local("echo", ("next",), {}) == "next"
        nursery.cancel_scope.cancel()


async def test_runners_stopping_the_host_tells_running_and_queued_calls() -> None:
    """When the host's nursery is cancelled, the running calls and those still queued end
    with ActorDiedError; none is left pending."""
    outer = trio.CancelScope()
    futures: list[actors.CallFuture] = []
    with outer:
        async with trio.open_nursery() as nursery:
            host = actors.lowlevel.ActorHost(Calls(), nursery)
            futures = [host.submit_local("block", (f"k{i}",), {}) for i in range(3)]
            await trio.testing.wait_all_tasks_blocked()
            futures.append(host.submit_local("echo", ("queued",), {}))
            nursery.cancel_scope.cancel()
    for future in futures[:3]:
        assert future.done()
        assert isinstance(future.exception(), actors.ActorDiedError)
    assert futures[3].done()


async def test_runners_idle_runners_beyond_the_limit_end() -> None:
    """After a burst of waiting calls, at most MAX_IDLE_RUNNERS runners stay parked."""
    async with trio.open_nursery() as nursery:
        obj = Calls()
        host = actors.lowlevel.ActorHost(obj, nursery)
        futures = [host.submit_local("block", (f"k{i}",), {}) for i in range(20)]
        await trio.testing.wait_all_tasks_blocked()
        obj.release.set()
        for future in futures:
            await future
        await trio.testing.wait_all_tasks_blocked()
        tasks = len(nursery.child_tasks)
        assert tasks <= _runners.MAX_IDLE_RUNNERS
        nursery.cancel_scope.cancel()
