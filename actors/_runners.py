"""Call runners: the tasks a host runs its calls in, a few for many calls.

A host does not start a task per call. Started calls wait in a queue; a *runner* task
takes them one after another and runs each in a context of its own (a copy of the context
it was started from, as a task of its own would have had), inside the runner's cancel
scope. A call that completes without suspending (most calls of a busy server: a cache hit,
a small computation) costs neither a task nor a cancel scope, and the calls of one
incoming message share one scheduler step. A call that suspends keeps its runner while it
waits; if calls are queued behind it, another runner is woken (or started) first, so a
call never waits behind another one that blocks.

A runner runs one call at a time, so cancelling a running call cancels its runner's scope;
the runner then opens a new scope for its next call. A call cancelled (or past its deadline)
before a runner took it still starts, in a cancelled scope: it is cancelled at its first
checkpoint, as it would have been in a task of its own. A call's deadline becomes the scope's
deadline when the call first suspends: a call that never suspends cannot be interrupted by
a deadline anyway (with a task and a scope of its own, it would have run to its end too).
"""

from __future__ import annotations

import collections
import contextvars
import math
import types
from collections.abc import Callable, Coroutine, Generator
from typing import Any, Literal

import trio

#: idle runners a host keeps parked for the next calls; an idle runner beyond them ends
MAX_IDLE_RUNNERS = 8

#: why a call ended without its own outcome (see :class:`RunnerPool`)
Interruption = Literal["cancelled", "deadline", "stopped"]


class Running:
    """A started call, from the queue to its end: what a caller cancels it through.

    ``body(self)`` is the coroutine that runs the call and sends its outcome; it runs in
    ``context``. ``deadline`` is absolute (Trio time; ``inf`` for none). ``released``: the
    call no longer counts as ongoing at its host.
    """

    __slots__ = (
        "args",
        "body",
        "cancelled",
        "context",
        "credit",
        "deadline",
        "inbox",
        "kwargs",
        "method",
        "payload",
        "released",
        "reply",
        "scope",
        "started",
    )

    def __init__(
        self,
        body: Callable[[Running], Coroutine[Any, Any, None]],
        reply: Any,
        method: str,
        payload: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        deadline: float = math.inf,
        credit: Any = None,
        inbox: Any = None,
    ) -> None:
        self.body = body
        self.reply = reply
        self.method = method
        self.payload = payload
        self.args = args
        self.kwargs = kwargs
        self.deadline = deadline
        self.credit = credit
        self.inbox = inbox
        self.context = contextvars.copy_context()
        self.released = False
        self.cancelled = False
        #: whether a runner took it (its body then ends it)
        self.started = False
        #: the scope of the runner running it, while it runs
        self.scope: trio.CancelScope | None = None

    def cancel(self) -> None:
        """Cancel the call: one still queued never runs, a running one is interrupted."""
        self.cancelled = True
        if self.scope is not None:
            self.scope.cancel()


@types.coroutine
def _run_in_context(running: Running, pool: RunnerPool) -> Generator[Any, Any, bool]:
    """Run ``running.body`` in ``running.context``, step by step, as Trio runs a task's
    coroutine in the task's context: each value Trio sends in is passed on, and each trap
    the body yields is passed out. Before the body first suspends, ``pool`` is told.
    Returns whether it suspended."""
    coro = running.body(running)
    run = running.context.run
    step: Callable[[Any], Any] = coro.send
    arg: Any = None
    suspended = False
    while True:
        try:
            trap = run(step, arg)
        except StopIteration:
            return suspended
        if not suspended:
            suspended = True
            pool.suspending(running)
        try:
            arg = yield trap
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:  # why: thrown in by Trio (a foreign yield): the call gets it
            step, arg = coro.throw, exc
        else:
            step = coro.send


class RunnerPool:
    """Runs started calls in runner tasks (see the module docstring).

    Tasks: runners, in ``nursery`` (the host's): started when calls are queued and no
    runner is free, at most ``MAX_IDLE_RUNNERS`` kept parked when there is nothing to do.
    ``interrupted(running, why)`` is called for a call that ends without its own outcome:
    cancelled before it ran or while it ran (``"cancelled"``), past its deadline
    (``"deadline"``), or because the nursery was cancelled (``"stopped"``; calls still
    queued then are told so too). If the nursery is cancelled midway, nothing remains:
    every runner ends, and every call queued or running has been told.
    """

    def __init__(
        self, nursery: trio.Nursery, interrupted: Callable[[Running, Interruption], None]
    ) -> None:
        self._nursery = nursery
        self._interrupted = interrupted
        self._queue: collections.deque[Running] = collections.deque()
        self._lot = trio.lowlevel.ParkingLot()
        #: runners woken or started that have not looked at the queue yet
        self._looking = 0
        self._idle = 0

    def dispatch(self, running: Running) -> None:
        """Queue a started call; a runner takes it soon."""
        self._queue.append(running)
        if not self._looking:
            self._wake()

    def _wake(self) -> None:
        self._looking += 1
        if self._idle:
            self._lot.unpark()
        else:
            self._nursery.start_soon(self._runner)

    def suspending(self, running: Running) -> None:
        """``running`` is about to suspend its runner for the first time: its deadline
        applies from now on, and the calls queued behind it need another runner."""
        if running.deadline != math.inf and running.scope is not None:
            running.scope.deadline = running.deadline
        if self._queue and not self._looking:
            self._wake()

    async def _runner(self) -> None:
        self._looking -= 1
        queue = self._queue
        while True:
            while not queue:
                if self._idle >= MAX_IDLE_RUNNERS:
                    return
                self._idle += 1
                try:
                    await self._lot.park()
                except trio.Cancelled:  # why: the host stops; queued calls are told; re-raised
                    self._idle -= 1
                    self._stop_queued()
                    raise
                self._idle -= 1
                self._looking -= 1  # unparked: counted by _wake
            await self._run_queued(queue)

    async def _run_queued(self, queue: collections.deque[Running]) -> None:
        """Run queued calls one after another in one cancel scope, until the queue is empty
        or a call was cancelled (its scope cannot be used again)."""
        running: Running | None = None
        #: the time, read once for the calls that run without suspending
        now = -math.inf
        try:
            with trio.CancelScope() as scope:
                while queue:
                    running = queue.popleft()
                    deadline = running.deadline
                    if deadline != math.inf and now == -math.inf:
                        now = trio.current_time()
                    if running.cancelled or deadline <= now:
                        # it starts cancelled, as it would in a scope of its own: cancelled
                        # at its first checkpoint (this scope is not used again)
                        scope.cancel()
                    running.started = True
                    running.scope = scope
                    if await _run_in_context(running, self):
                        now = -math.inf  # it suspended: time has passed
                        if scope.deadline != math.inf:
                            scope.deadline = math.inf
                    running.scope = None
                    running = None
                    if scope.cancel_called:
                        break  # a cancel that came too late for its call
            if running is not None:  # interrupted by this scope
                running.scope = None
                late = running.deadline <= trio.current_time()
                self._interrupted(running, "deadline" if late else "cancelled")
        except trio.Cancelled:  # why: the host is stopping; its callers are told; re-raised
            if running is not None:
                running.scope = None
                self._interrupted(running, "stopped")
            self._stop_queued()
            raise

    def _stop_queued(self) -> None:
        queue = self._queue
        while queue:
            self._interrupted(queue.popleft(), "stopped")
