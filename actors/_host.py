"""Hosting an object as an actor: running its methods for callers, local or remote.

``ActorHost`` owns the object and a nursery in which every call runs as its own task, so a
call can be cancelled (by its caller, by its deadline, or by the host stopping) without
touching the others. ``async def`` methods run in the host's Trio loop; plain ``def`` methods
run on worker threads so they never block it; generator methods stream.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import trio

from . import _codec, _wire
from ._future import CallFuture, StreamReceiver, StreamSender
from ._link import Link
from ._methods import Kind, method_kind
from ._runners import Interruption, RunnerPool, Running
from .exceptions import (
    ActorDiedError,
    CallCancelledError,
    DeadlineExceededError,
    RejectedError,
)


class Credit:
    """Reply-stream backpressure: how many more items the caller is ready for. Counted
    here for local calls; a remote call's credit is counted by its connection's protocol
    books (``_session.BookedCredit``)."""

    __slots__ = ("_lot", "available")

    def __init__(self, window: int) -> None:
        self.available = window
        self._lot = trio.lowlevel.ParkingLot()

    def add(self, n: int) -> None:
        self.available += n
        self._lot.unpark_all()

    def wake(self) -> None:
        self._lot.unpark_all()

    def try_take(self) -> bool:
        if self.available <= 0:
            return False
        self.available -= 1
        return True

    async def take(self) -> None:
        while not self.try_take():
            await self._lot.park()


class Reply:
    """Where a call's outcome goes: an envelope on a link, or a local future."""

    def result(self, value: Any) -> None:
        raise NotImplementedError

    def error(self, exc: BaseException) -> None:
        raise NotImplementedError

    def item(self, value: Any) -> None:
        raise NotImplementedError

    def end(self) -> None:
        raise NotImplementedError


class LocalReply(Reply):
    __slots__ = ("target",)

    def __init__(self, target: CallFuture | StreamReceiver) -> None:
        self.target = target

    def result(self, value: Any) -> None:
        assert isinstance(self.target, CallFuture)
        self.target.set_result(value)

    def error(self, exc: BaseException) -> None:
        if isinstance(self.target, CallFuture):
            self.target.set_error(exc)
        else:
            self.target.finish(exc)

    def item(self, value: Any) -> None:
        assert isinstance(self.target, StreamReceiver)
        self.target.push(value)

    def end(self) -> None:
        assert isinstance(self.target, StreamReceiver)
        self.target.finish()


class ActorHost:
    """Runs calls on ``obj``.

    Tasks: call runners, in ``nursery`` (the host's owner's): a few for many calls, one
    more for each call that is waiting on something (see ``actors._runners``). At most
    ``max_ongoing`` calls run at once across all callers; beyond that a call is refused
    with ``Rejected`` and never starts. ``stop_accepting()`` then ``await wait_idle()``
    drains; cancelling the nursery ends every call (their callers are told the actor
    stopped).
    """

    def __init__(
        self,
        obj: object,
        nursery: trio.Nursery,
        *,
        name: str = "actor",
        max_ongoing: int | None = None,
    ) -> None:
        self.obj = obj
        self.name = name
        self.max_ongoing = max_ongoing if max_ongoing is not None else math.inf
        self._runners = RunnerPool(nursery, self._interrupted)
        self._methods: dict[str, tuple[Callable[..., Any], Kind]] = {}
        self.ongoing = 0
        self.accepting = True
        #: the links of remote callers currently connected (for flushing on stop)
        self.links: set[Link] = set()
        self._idle = trio.lowlevel.ParkingLot()
        dispatch = getattr(obj, "__actor_dispatch__", None)
        self._dispatch: Callable[[str], Callable[..., Any]] | None = dispatch
        #: called as ``observer(method, seconds, ok)`` after every call, if set
        self.observer: Callable[[str, float, bool], None] | None = None
        #: called with the exception a call raised, before it is sent to the caller (to add
        #: notes, say); nothing runs on the success path
        self.on_error: Callable[[BaseException], None] | None = None
        #: methods admitted even at ``max_ongoing`` and not counted (health checks and the
        #: like must reach a busy actor)
        self.control_methods: frozenset[str] = frozenset()
        attach = getattr(obj, "__actor_attach__", None)
        if attach is not None:
            attach(self)

    # -- method lookup

    def resolve(self, name: str) -> tuple[Callable[..., Any], Kind]:
        """The method called ``name`` and its kind (``AttributeError`` if there is none)."""
        cached = self._methods.get(name)
        if cached is not None:
            return cached
        fn: Callable[..., Any]
        if self._dispatch is not None:
            fn = self._dispatch(name)
        else:
            if name.startswith("_") and name != "__call__":
                raise AttributeError(f"{self.name} has no public method {name!r}")
            found = getattr(self.obj, name, None)
            if found is None or not callable(found):
                raise AttributeError(f"{self.name} has no method {name!r}")
            fn = found
        entry = (fn, method_kind(fn))
        self._methods[name] = entry
        return entry

    # -- admission

    def try_admit(self, method: str | None = None) -> str | None:
        """Count a new call in, or return why it is refused (``"control"`` methods are
        admitted uncounted)."""
        if method in self.control_methods:
            return None
        if not self.accepting:
            return f"{self.name} is stopping and takes no new calls"
        if self.ongoing >= self.max_ongoing:
            return f"{self.name} is at max_ongoing={self.max_ongoing}"
        self.ongoing += 1
        return None

    def _release(self) -> None:
        self.ongoing -= 1
        if self.ongoing == 0:
            self._idle.unpark_all()

    def cancel(self, running: Running) -> None:
        """Cancel a call and stop counting it at once: a call the caller sends right after
        cancelling is admitted even though the cancelled one has not unwound yet."""
        running.cancel()
        if not running.released:
            running.released = True
            self._release()

    def stop_accepting(self) -> None:
        """Refuse new calls from now on (running ones go on)."""
        self.accepting = False

    async def wait_idle(self) -> None:
        """Wait until no counted call is running."""
        while self.ongoing:
            await self._idle.park()

    async def flush(self) -> None:
        """Wait until every reply queued so far has been handed to its socket."""
        for link in list(self.links):
            await link.flush()

    # -- running

    def start(
        self,
        reply: Reply,
        method: str,
        payload: bytes | _wire.Raw | None,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        timeout: float | None,
        credit: Credit | None,
        inbox: StreamReceiver | None = None,
        dispatch: bool = True,
        now: float | None = None,
    ) -> Running:
        """Start one admitted call; returns its handle for :meth:`cancel`. A streaming call
        has ``credit`` (a duplex one also its caller's ``inbox``). Without ``dispatch``,
        the call waits until it is given to :meth:`dispatch` (a remote call waits until its
        caller has been told it was received). It runs in a copy of the current context.
        ``timeout`` counts from ``now`` (when the call was read; the current time if None)."""
        deadline = math.inf
        if timeout is not None:
            deadline = (trio.current_time() if now is None else now) + max(timeout, 0.0)
        running = Running(
            self._run,
            reply,
            method,
            payload,
            args,
            kwargs,
            deadline=deadline,
            credit=credit,
            inbox=inbox,
        )
        if method in self.control_methods:
            running.released = True  # never counted
        if dispatch:
            self._runners.dispatch(running)
        return running

    def dispatch(self, running: Running) -> None:
        """Let a call started with ``dispatch=False`` run (a cancelled one never does)."""
        self._runners.dispatch(running)

    async def _run(self, running: Running) -> None:
        """A call's body, run by a runner in the call's context: its outcome goes to its
        reply. Cancellation (by the caller, the deadline or the host stopping) propagates
        to the runner, which tells the caller (:meth:`_interrupted`)."""
        observer = self.observer
        started = trio.current_time() if observer is not None else 0.0
        reply = running.reply
        ok = False
        try:
            try:
                args, kwargs = running.args, running.kwargs
                if running.payload is not None:
                    args, kwargs = _codec.decode_args(running.payload)
                fn, kind = self._methods.get(running.method) or self.resolve(running.method)
                credit = running.credit
                if credit is None:
                    if kind == "async":
                        value = await fn(*args, **kwargs)
                    else:
                        value = await self._invoke(fn, kind, args, kwargs)
                    ok = True
                    reply.result(value)
                else:
                    await drive_stream(reply, fn, kind, args, kwargs, credit, running.inbox)
                    ok = True
                    reply.end()
            except Exception as exc:
                if self.on_error is not None:
                    self.on_error(exc)
                reply.error(exc)
        except Exception:  # why: the link may be gone; the caller is told by its loss instead
            pass
        finally:
            self._ended(running)
            if observer is not None:
                observer(running.method, trio.current_time() - started, ok)

    def _ended(self, running: Running) -> None:
        if not running.released:
            running.released = True
            self._release()
        if running.inbox is not None:
            running.inbox.finish()  # nothing reads it any more: its sender stops

    def _interrupted(self, running: Running, why: Interruption) -> None:
        """``running`` ended without its own outcome (see ``actors._runners``)."""
        method = running.method
        error: BaseException
        if why == "deadline":
            error = DeadlineExceededError(f"{self.name}.{method} passed its deadline")
        elif why == "cancelled":
            error = CallCancelledError(f"{self.name}.{method} was cancelled")
        else:
            error = ActorDiedError(f"{self.name} stopped while running {method}")
        with contextlib.suppress(Exception):  # why: the link may be gone; its loss tells the caller
            running.reply.error(error)
        if not running.started:  # its body never ran to say so
            self._ended(running)
            if self.observer is not None:
                self.observer(method, 0.0, False)

    @staticmethod
    async def _invoke(
        fn: Callable[..., Any], kind: Kind, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        if kind == "async":
            return await fn(*args, **kwargs)
        if kind == "sync":
            return await trio.to_thread.run_sync(
                lambda: fn(*args, **kwargs), abandon_on_cancel=True
            )
        raise TypeError(f"{fn.__name__} is a generator; call it as a stream")

    # -- local (inline) calls

    def submit_local(
        self,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        timeout: float | None = None,
    ) -> CallFuture:
        """Run a call here (arguments by reference); its :class:`CallFuture`."""
        fut = CallFuture(label=f"{self.name}.{method}")
        refused = self.try_admit(method)
        if refused is not None:
            fut.set_error(RejectedError(refused, actor=self.name))
            return fut
        running = self.start(
            LocalReply(fut), method, None, args, kwargs, timeout=timeout, credit=None
        )
        fut._canceller = lambda: self.cancel(running)
        return fut

    def submit_local_stream(
        self,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        timeout: float | None = None,
        window: int = 16,
    ) -> StreamReceiver:
        """Run a streaming call here; its :class:`StreamReceiver`."""
        return self._submit_local_streaming(method, args, kwargs, timeout, window, False)[0]

    def submit_local_duplex(
        self,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        timeout: float | None = None,
        window: int = 16,
    ) -> tuple[StreamReceiver, StreamSender]:
        """A duplex call run here: its reply stream and its request stream's sender (items
        pass by reference, ``window`` at most ahead of the method's reading)."""
        receiver, sender = self._submit_local_streaming(method, args, kwargs, timeout, window, True)
        assert sender is not None
        return receiver, sender

    def _submit_local_streaming(
        self,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
        window: int,
        duplex: bool,
    ) -> tuple[StreamReceiver, StreamSender | None]:
        credit = Credit(window)
        scope_holder: list[Running] = []
        label = f"{self.name}.{method}"
        receiver = StreamReceiver(
            window=window,
            ack=credit.add,
            canceller=lambda: self.cancel(scope_holder[0]),
            label=label,
        )
        sender = inbox = None
        if duplex:
            inbox, sender = local_pipe(window, label)
            receiver.sender = sender
        refused = self.try_admit(method)
        if refused is not None:
            receiver.finish(RejectedError(refused, actor=self.name))
            return receiver, sender
        scope_holder.append(
            self.start(
                LocalReply(receiver),
                method,
                None,
                args,
                kwargs,
                timeout=timeout,
                credit=credit,
                inbox=inbox,
            )
        )
        return receiver, sender


def local_pipe(window: int, label: str) -> tuple[StreamReceiver, StreamSender]:
    """A request stream within this process: what the sender sends, the inbox yields, at
    most ``window`` items ahead of the reading."""
    room = [window]

    def send(item: Any) -> bool:
        if room[0] <= 0:
            return False
        room[0] -= 1
        inbox.push(item)
        return True

    def ack(n: int) -> None:
        room[0] += n
        sender.grant()

    inbox = StreamReceiver(window=window, ack=ack, canceller=lambda: None, label=label)
    sender = StreamSender(send=send, end=inbox.finish, label=label)
    return inbox, sender


def _empty_inbox() -> StreamReceiver:
    inbox = StreamReceiver(window=1, ack=lambda n: None, canceller=lambda: None)
    inbox.finish()
    return inbox


async def drive_stream(
    reply: Reply,
    fn: Callable[..., Any],
    kind: Kind,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    credit: Credit,
    inbox: StreamReceiver | None = None,
) -> None:
    """Run a streaming method, sending each item it produces once the caller has credit
    for it (generators through :func:`pump_generator`)."""
    if kind in ("push", "duplex"):

        async def emit(item: Any) -> None:
            await credit.take()
            reply.item(item)

        if kind == "duplex":
            await fn(emit, inbox if inbox is not None else _empty_inbox(), *args, **kwargs)
        else:
            await fn(emit, *args, **kwargs)
    elif kind in ("asyncgen", "syncgen"):

        async def send(item: Any) -> None:
            await credit.take()
            reply.item(item)

        await pump_generator(fn(*args, **kwargs), kind, send)
    else:
        raise TypeError(f"{getattr(fn, '__name__', fn)} is not a generator; call it plainly")


async def pump_generator(
    items: Any, kind: Literal["asyncgen", "syncgen"], send: Callable[[Any], Awaitable[None]]
) -> None:
    """``await send(item)`` for each item of a generator (``kind`` says which sort it is),
    closing it when this ends however it ends.

    An async generator is closed shielded and bounded (5 s), so its ``finally`` runs even
    when the stream is cancelled. A sync generator's ``next()`` runs on a worker thread
    with ``abandon_on_cancel=True``: user code cannot be interrupted mid-``next``, so a
    cancelled stream abandons that thread (it finishes its step on its own) rather than
    leave the caller waiting for a step that may never end; such a generator cannot be
    closed while it runs, and is left to finish."""
    if kind == "asyncgen":
        try:
            async for item in items:
                await send(item)
        finally:
            with trio.CancelScope(shield=True):  # why: finalise the user's generator
                with trio.move_on_after(5):
                    await items.aclose()
        return
    done = object()
    try:
        while True:
            item = await trio.to_thread.run_sync(next, items, done, abandon_on_cancel=True)
            if item is done:
                break
            await send(item)
    finally:
        with contextlib.suppress(ValueError):  # why: still running on an abandoned thread
            items.close()
