"""Call futures: the caller-side record of one call, resolved by whoever runs the call.

A future is resolved from synchronous code (a connection's reader, an inline actor's task),
so resolving never blocks and never needs a task of its own. Awaiting a future that is then
cancelled cancels the call.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Generator
from typing import Any

import trio

from .exceptions import CallCancelledError

_PENDING: Any = object()


class CallFuture:
    """The pending result of one call.

    ``await fut`` returns the value or raises the remote error. If the awaiting task is
    cancelled, the call is cancelled too (a ``Cancel`` goes to the actor). ``add_done_callback``
    runs callbacks synchronously, in the resolving task, once. ``label`` names the call in
    messages; it may be given as a ``(actor, method)`` pair, joined only when a message
    needs it.
    """

    __slots__ = (
        "_callbacks",
        "_canceller",
        "_error",
        "_label",
        "_value",
        "_waiter",
        "_waiters",
        "cancelled_error",
    )

    def __init__(
        self,
        canceller: Callable[[], None] | None = None,
        label: str | tuple[str, str] = "",
        cancelled_error: Callable[[str], BaseException] = CallCancelledError,
    ) -> None:
        self._value: Any = _PENDING
        self._error: BaseException | None = None
        #: the task waiting for the outcome, and any more (rare: one waiter is the rule)
        self._waiter: trio.lowlevel.Task | None = None
        self._waiters: list[trio.lowlevel.Task] | None = None
        self._callbacks: list[Callable[[CallFuture], None]] | None = None
        self._canceller = canceller
        self._label = label
        #: builds the error a cancelled call ends with
        self.cancelled_error = cancelled_error

    @property
    def label(self) -> str:
        """The call's name in messages (``actor.method``)."""
        label = self._label
        return label if isinstance(label, str) else ".".join(label)

    @label.setter
    def label(self, value: str) -> None:
        self._label = value

    # -- resolving (synchronous, from the side that runs the call)

    def set_result(self, value: Any) -> None:
        """Resolve with ``value`` (ignored once done)."""
        if self._value is not _PENDING:
            return
        self._value = value
        self._finish()

    def set_error(self, error: BaseException) -> None:
        """Resolve with ``error`` (ignored once done)."""
        if self._value is not _PENDING:
            return
        self._value = None
        self._error = error
        self._finish()

    def _finish(self) -> None:
        self._canceller = None
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            trio.lowlevel.reschedule(waiter)
            if self._waiters is not None:
                waiters, self._waiters = self._waiters, None
                for task in waiters:
                    trio.lowlevel.reschedule(task)
        callbacks, self._callbacks = self._callbacks, None
        if callbacks:
            for cb in callbacks:
                cb(self)

    # -- observing

    def done(self) -> bool:
        """Whether the call has ended."""
        return self._value is not _PENDING

    def result(self) -> Any:
        """The value of a finished call; raises its error, or ``RuntimeError`` if pending."""
        if self._value is _PENDING:
            raise RuntimeError("call has not finished yet")
        if self._error is not None:
            raise self._error
        return self._value

    def exception(self) -> BaseException | None:
        """The call's error, or None (also while pending)."""
        if self._value is _PENDING:
            raise RuntimeError("call has not finished yet")
        return self._error

    def add_done_callback(self, cb: Callable[[CallFuture], None]) -> None:
        """Call ``cb(self)`` once the call ends (at once if it has), synchronously."""
        if self._value is not _PENDING:
            cb(self)
            return
        if self._callbacks is None:
            self._callbacks = []
        self._callbacks.append(cb)

    async def _park(self) -> None:
        """Wait until the outcome is set (a checkpoint; raises ``Cancelled`` if cancelled)."""
        task = trio.lowlevel.current_task()
        if self._waiter is None:
            self._waiter = task
        else:
            if self._waiters is None:
                self._waiters = []
            self._waiters.append(task)

        def abort(_: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
            if self._waiter is task:
                self._waiter = self._waiters.pop(0) if self._waiters else None
            elif self._waiters is not None:
                self._waiters.remove(task)
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    async def wait_done(self) -> None:
        """Wait until the call has finished, without cancelling it if we are cancelled."""
        if self._value is _PENDING:
            await self._park()

    async def wait(self) -> Any:
        """Wait for the result; cancelling the waiting task cancels the call."""
        if self._value is _PENDING:
            try:
                await self._park()
            except trio.Cancelled:  # why: a cancelled caller cancels the work; re-raised
                self.cancel()
                raise
        else:
            await trio.lowlevel.checkpoint()
        return self.result()

    def __await__(self) -> Generator[Any, None, Any]:
        return self.wait().__await__()

    def cancel(self) -> bool:
        """Cancel the call if it has not finished; returns whether it was still pending.

        The actor is told first, then the future ends: whatever the future's callbacks send
        next reaches the actor after the cancellation.
        """
        if self._value is not _PENDING:
            return False
        canceller, self._canceller = self._canceller, None
        if canceller is not None:
            canceller()
        self.set_error(self.cancelled_error(f"call {self.label} was cancelled by its caller"))
        return True


class StreamReceiver:
    """The caller's end of a streamed call: an async iterator of items with credit-based
    backpressure (the actor sends at most ``window`` items ahead of consumption)."""

    def __init__(
        self,
        *,
        window: int,
        ack: Callable[[int], None],
        canceller: Callable[[], None],
        label: str = "",
    ) -> None:
        self._items: collections.deque[Any] = collections.deque()
        self._end: BaseException | None = None
        self._ended = False
        self._lot = trio.lowlevel.ParkingLot()
        self._window = window
        self._ack = ack
        self._canceller: Callable[[], None] | None = canceller
        self._consumed = 0
        self._callbacks: list[Callable[[StreamReceiver], None]] = []
        self.label = label
        self.end_error: BaseException | None = None
        #: a duplex call's request stream, closed when this stream finishes
        self.sender: StreamSender | None = None

    def push(self, item: Any) -> None:
        """Add an item the actor sent (synchronous)."""
        self._items.append(item)
        self._lot.unpark_all()

    def finish(self, error: BaseException | None = None) -> None:
        """The actor finished sending, with ``error`` or cleanly (idempotent)."""
        if self._ended:
            return
        self._ended = True
        self._end = error
        self.end_error = error
        self._canceller = None
        self._lot.unpark_all()
        if self.sender is not None:
            self.sender.close()
        callbacks, self._callbacks = self._callbacks, []
        for cb in callbacks:
            cb(self)

    def done(self) -> bool:
        """Whether the actor has finished sending (items may still be waiting here)."""
        return self._ended

    def exception(self) -> BaseException | None:
        """The error the stream ended with, or None."""
        return self.end_error

    def add_done_callback(self, cb: Callable[[StreamReceiver], None]) -> None:
        """Call ``cb(self)`` once the actor finished sending (at once if it has)."""
        if self._ended:
            cb(self)
        else:
            self._callbacks.append(cb)

    @property
    def finished(self) -> bool:
        """Whether the stream ended and every item has been read."""
        return self._ended and not self._items

    def __aiter__(self) -> StreamReceiver:
        return self

    async def __anext__(self) -> Any:
        if self._items:
            try:
                await trio.lowlevel.checkpoint()
            except trio.Cancelled:  # why: a cancelled consumer cancels the stream; re-raised
                self.cancel()
                raise
        while not self._items:
            if self._ended:
                if self._end is not None:
                    err, self._end = self._end, None
                    raise err
                raise StopAsyncIteration
            try:
                await self._lot.park()
            except trio.Cancelled:  # why: a cancelled consumer cancels the stream; re-raised
                self.cancel()
                raise
        item = self._items.popleft()
        self._consumed += 1
        if self._consumed * 2 >= self._window and not self._ended:
            self._ack(self._consumed)
            self._consumed = 0
        return item

    def cancel(self) -> None:
        """Stop the stream: the actor's generator is cancelled."""
        if self._ended:
            return
        canceller, self._canceller = self._canceller, None
        if canceller is not None:
            canceller()  # the actor hears of it before anything the callbacks send
        self.finish(CallCancelledError(f"stream {self.label} was cancelled by its caller"))
        self._items.clear()

    async def aclose(self) -> None:
        """Stop the stream, as :meth:`cancel` does."""
        self.cancel()
        await trio.lowlevel.checkpoint()


class StreamSender:
    """The caller's end of a duplex call's request stream: ``await sender.send(item)``
    waits for the actor's credit (so a caller never sends more than the actor is ready
    for), then sends; ``sender.end()`` ends the stream.

    Once the call has ended (its outcome arrived, it was cancelled, or the connection was
    lost), ``send`` raises ``trio.BrokenResourceError``: nobody reads the stream any more.
    """

    __slots__ = ("_closed", "_ended", "_lot", "_send", "_send_end", "label")

    def __init__(
        self,
        *,
        send: Callable[[Any], bool],
        end: Callable[[], None],
        label: str = "",
    ) -> None:
        #: sends one item if the actor's credit allows, and says whether it did (the
        #: credit is counted there); ``grant`` wakes a sender waiting for more
        self._send = send
        self._send_end = end
        self._closed = False
        self._ended = False
        self._lot = trio.lowlevel.ParkingLot()
        self.label = label

    def grant(self) -> None:
        """The actor granted more credit: a waiting ``send`` tries again."""
        self._lot.unpark_all()

    def close(self) -> None:
        """The call ended: senders waiting for credit, and later ones, get
        ``BrokenResourceError``."""
        self._closed = True
        self._lot.unpark_all()

    @property
    def closed(self) -> bool:
        """Whether the call has ended (sends fail)."""
        return self._closed

    async def send(self, item: Any) -> None:
        """Send one item once the actor has credit for it: ``BrokenResourceError`` once
        the call ended, ``ClosedResourceError`` after :meth:`end`."""
        if self._ended:
            raise trio.ClosedResourceError(f"the request stream of {self.label} was ended")
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            if self._closed:
                raise trio.BrokenResourceError(f"{self.label} has ended; nothing reads its stream")
            if self._send(item):
                await trio.lowlevel.cancel_shielded_checkpoint()
                return
            await self._lot.park()

    def end(self) -> None:
        """End the request stream (idempotent; a no-op once the call ended)."""
        if self._ended:
            return
        self._ended = True
        if not self._closed:
            self._send_end()
