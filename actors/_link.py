"""A link: one authenticated websocket carrying batches of envelopes in both directions.

Outgoing envelopes are encoded when queued (so an oversized or unencodable message fails at
the caller) and written from synchronous code, without a task switch, in three ways:

* the first envelope queued since the last incoming message, when nothing waits before it,
  is written at once (an answer, or a call after an answer: one message, no delay);
* the next ones wait for the writer task, woken by the first of them: it runs once every
  task that was runnable with the one that woke it has run, and writes all they queued as
  one message (``COALESCE_BYTES`` at most);
* but once ``COALESCE_ENVELOPES`` wait, the task queueing the last one writes them.

What the socket does not take at once waits, in order, for the writer. One reader task
drains the socket and hands each envelope to a synchronous callback, so the socket is always
drained.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Protocol

import msgspec
import trio
from trio_websocket import ConnectionClosed

from . import _wire
from .exceptions import MessageTooLargeError

DEFAULT_MAX_MESSAGE_SIZE = 64 * 1024 * 1024
HEARTBEAT_INTERVAL_S = 1.0
HEARTBEAT_TIMEOUT_S = 10.0
_HEARTBEAT = _wire.encode_envelope(_wire.Heartbeat())
_FRAME_OVERHEAD = 16
#: envelopes queued together share a websocket message up to this size; a larger envelope
#: travels alone. Small envelopes gain from sharing (one frame, one syscall); large ones
#: only lose: the peer cannot start on the first until the whole message has arrived.
COALESCE_BYTES = 64 * 1024
#: once this many envelopes are queued, the task queueing the last one writes them at once
#: (one message), instead of leaving them for the writer: the peer starts on them while this
#: process goes on producing, so the two work at the same time rather than in turns
COALESCE_ENVELOPES = 8


class LinkSocket(Protocol):
    """What a link needs of a websocket (``actors._websocket.WebSocket``, or the in-memory
    one of ``actors._memory``); every method raises ``ConnectionClosed`` once it is closed."""

    def write_message(self, message: bytes) -> bool:
        """Send ``message`` now if the socket takes it; False: the rest waits for
        :meth:`flush`, in order."""

    async def flush(self) -> None:
        """Wait until everything written has been handed to the socket."""

    async def get_message(self) -> bytes | str:
        """The next message."""

    async def aclose(self, code: int = 1000, reason: str | None = None) -> None:
        """Close (a close handshake, bounded by the caller)."""


class Link:
    """Frames envelopes over ``ws``.

    ``run()`` starts three tasks in its own nursery -- reader, writer, heartbeat -- and
    returns once the connection is closed by either side or the peer stops answering for
    ``heartbeat_timeout`` seconds; ``on_close(reason)`` is called exactly once then. If
    cancelled midway, the websocket is closed and nothing remains.

    After each incoming message has been handed over, the reader calls ``after_batch()``;
    an awaitable it returns is awaited before the next message is read (an actor's host
    acknowledges the calls it read this way, see :meth:`send_now`).
    """

    def __init__(
        self,
        ws: LinkSocket,
        on_envelope: Callable[[_wire.Envelope], None],
        *,
        on_close: Callable[[str], None] | None = None,
        after_batch: Callable[[], Awaitable[None] | None] | None = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        heartbeat_interval: float = HEARTBEAT_INTERVAL_S,
        heartbeat_timeout: float = HEARTBEAT_TIMEOUT_S,
    ) -> None:
        self.ws = ws
        self._on_envelope = on_envelope
        self._on_close = on_close
        self._after_batch = after_batch
        self.max_message_size = max_message_size
        self._heartbeat_interval = heartbeat_interval
        self._heartbeat_timeout = heartbeat_timeout
        self._outbox: list[bytes] = []
        self._outbox_bytes = 0
        self._lot = trio.lowlevel.ParkingLot()
        #: whether the writer waits in ``_lot`` for envelopes (and must be woken)
        self._writer_parked = False
        #: whether the first envelope since the last incoming message was written already
        self._wrote_first = False
        #: whether bytes written wait in the websocket for the socket to take them
        self._unflushed = False
        self._limit = min(max_message_size - _FRAME_OVERHEAD, COALESCE_BYTES)
        self._flushed = trio.lowlevel.ParkingLot()
        self._decoder = _wire.BatchDecoder()
        self._last_seen = 0.0
        self._last_sent = 0.0
        self.closed = False
        self.close_reason = ""
        self._cancel_scope: trio.CancelScope | None = None
        self._close_code = 1000

    @property
    def read_at(self) -> float:
        """When the last incoming message was read (Trio time)."""
        return self._last_seen

    # -- sending

    def send_nowait(self, envelope: _wire.Envelope) -> None:
        """Queue ``envelope`` for the writer. Raises ``MessageTooLargeError`` if it can never
        fit in one websocket message; silently drops it if the link is closed."""
        self.send_encoded_nowait(_wire.encode_envelope(envelope))

    def send_encoded_nowait(self, data: bytes) -> None:
        """:meth:`send_nowait` for an envelope encoded already (``_codec.encode_call``)."""
        size = len(data)
        if size + _FRAME_OVERHEAD > self.max_message_size:
            raise MessageTooLargeError(size, self.max_message_size)
        if self.closed:
            return
        outbox = self._outbox
        if not outbox and not self._wrote_first and not self._unflushed:
            self._wrote_first = True
            self._write([data])
            return
        outbox.append(data)
        self._outbox_bytes += size
        if len(outbox) >= COALESCE_ENVELOPES and not self._unflushed:
            self._write_outbox()
        elif self._writer_parked:
            self._writer_parked = False
            self._lot.unpark()

    def _write(self, batch: list[bytes]) -> None:
        """Write one message now; what the socket does not take waits for the writer."""
        try:
            written = self.ws.write_message(_wire.frame(batch))
        except ConnectionClosed as exc:
            # the link's own tasks end it (and tell ``on_close``), never a caller's task in
            # the middle of queueing something
            if not self.close_reason:
                self.close_reason = _closed_reason(exc)
            if self._cancel_scope is not None:
                self._cancel_scope.cancel()
            return
        self._last_sent = trio.current_time()
        if not written:
            self._unflushed = True
            if self._writer_parked:
                self._writer_parked = False
                self._lot.unpark()

    def _write_outbox(self) -> None:
        """Write everything queued, in messages of ``COALESCE_BYTES`` at most."""
        while self._outbox and not self.closed:
            batch = self._outbox
            if self._outbox_bytes <= self._limit:
                self._outbox = []
                self._outbox_bytes = 0
            else:
                cut, size = _wire.batch_cut(batch, self._limit)
                self._outbox = batch[cut:]
                self._outbox_bytes -= size
                batch = batch[:cut]
            self._write(batch)
        if self._flushed and not self._unflushed:
            self._flushed.unpark_all()

    async def send_now(self, envelope: _wire.Envelope) -> None:
        """Send one small envelope at once, ahead of the queue: once this returns it has
        been handed to the socket. Raises ``ConnectionClosed`` if the link is gone."""
        if not self.ws.write_message(_wire.frame([_wire.encode_envelope(envelope)])):
            await self.ws.flush()  # the socket is full: wait until it took this too
        self._last_sent = trio.current_time()

    def close(self, reason: str, *, protocol_error: bool = False) -> None:
        """Close from synchronous code: the link's tasks end soon after. A protocol error
        closes the websocket with code 1002 (the peer broke the protocol)."""
        if protocol_error:
            self._close_code = 1002
            reason = f"protocol error: {reason}"
        self._mark_closed(reason)
        if self._cancel_scope is not None:
            self._cancel_scope.cancel()

    def _mark_closed(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        self._outbox.clear()
        self._flushed.unpark_all()
        if self._on_close is not None:
            self._on_close(reason)

    async def flush(self) -> None:
        """Wait until everything queued so far has been handed to the socket."""
        while (self._outbox or self._unflushed) and not self.closed:
            await self._flushed.park()

    async def _writer(self) -> None:
        while True:
            while not self._outbox and not self._unflushed:
                self._writer_parked = True
                try:
                    await self._lot.park()
                finally:
                    self._writer_parked = False
            # woken by the first envelope queued, the writer runs after every task that
            # was runnable with the one that queued it: one message carries what they queued
            self._wrote_first = False
            self._write_outbox()
            if self._unflushed:
                await self.ws.flush()  # the socket is full: wait until it takes the rest
                self._unflushed = False
                self._flushed.unpark_all()

    # -- receiving

    async def _reader(self) -> None:
        ws = self.ws
        decode = self._decoder.decode
        on_envelope = self._on_envelope
        after_batch = self._after_batch
        while True:
            message = await ws.get_message()
            self._wrote_first = False
            self._last_seen = trio.current_time()
            if isinstance(message, str):
                await self._protocol_error("text frames are not part of the protocol")
                return
            try:
                batch = decode(message)
            except msgspec.MsgspecError as exc:
                await self._protocol_error(f"malformed message: {exc}")
                return
            heartbeat = _wire.Heartbeat
            for envelope in batch:
                if type(envelope) is not heartbeat:
                    on_envelope(envelope)
            if after_batch is not None:
                pending = after_batch()
                if pending is not None:
                    await pending

    async def _protocol_error(self, reason: str) -> None:
        self._mark_closed(f"protocol error: {reason}")
        with trio.move_on_after(1):
            await self.ws.aclose(code=1002, reason=reason[:120])

    async def _heartbeat(self) -> None:
        while True:
            await trio.sleep(self._heartbeat_interval)
            now = trio.current_time()
            if now - self._last_seen > self._heartbeat_timeout:
                self._mark_closed(f"peer silent for {self._heartbeat_timeout:.1f}s")
                return
            if not self._outbox and now - self._last_sent >= self._heartbeat_interval:
                self._outbox.append(_HEARTBEAT)
                self._writer_parked = False
                self._lot.unpark()

    async def run(self) -> None:
        self._last_seen = self._last_sent = trio.current_time()
        try:
            async with trio.open_nursery() as nursery:
                self._cancel_scope = nursery.cancel_scope
                if self.closed:  # closed before it ran
                    nursery.cancel_scope.cancel()
                nursery.start_soon(self._watch, self._reader, nursery)
                nursery.start_soon(self._watch, self._writer, nursery)
                nursery.start_soon(self._watch, self._heartbeat, nursery)
        finally:
            self._mark_closed(self.close_reason or "connection closed")
            cancelled = trio.current_effective_deadline() == -math.inf
            if not cancelled:
                # A close handshake waits for the peer's answer: a link whose owner is
                # cancelled does not wait (its owner closes the socket on the way out).
                with trio.move_on_after(1) as cleanup:
                    cleanup.shield = True  # why: a closing link says goodbye, bounded
                    await self.ws.aclose(code=self._close_code, reason=self.close_reason[:120])

    async def _watch(self, fn: Callable[[], object], nursery: trio.Nursery) -> None:
        try:
            await fn()  # type: ignore[misc]  # why: fn is one of the link's own async loops
        except ConnectionClosed as exc:
            self._mark_closed(_closed_reason(exc))
        finally:
            nursery.cancel_scope.cancel()


def _closed_reason(exc: ConnectionClosed) -> str:
    reason = exc.reason
    if reason is None:
        return "connection closed"
    return f"connection closed ({reason.code} {reason.reason or ''})".strip()
