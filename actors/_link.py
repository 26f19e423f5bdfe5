"""A link: one authenticated websocket carrying batches of envelopes in both directions.

Outgoing envelopes are encoded when queued (so an oversized or unencodable message fails at
the caller) and coalesced by one writer task into as few websocket messages as possible.
One reader task drains the socket and hands each envelope to a synchronous callback, so the
socket is always drained (trio-websocket stalls its pings while its message queue is full).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable

import msgspec
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

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
        ws: WebSocketConnection,
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
        self._sending = False
        self._flushed = trio.lowlevel.ParkingLot()
        self._decoder = _wire.BatchDecoder()
        self._last_seen = 0.0
        self._last_sent = 0.0
        self.closed = False
        self.close_reason = ""
        self._cancel_scope: trio.CancelScope | None = None
        self._close_code = 1000

    # -- sending

    def send_nowait(self, envelope: _wire.Envelope) -> None:
        """Queue ``envelope`` for the writer. Raises ``MessageTooLargeError`` if it can never
        fit in one websocket message; silently drops it if the link is closed."""
        data = _wire.encode_envelope(envelope)
        if len(data) + _FRAME_OVERHEAD > self.max_message_size:
            raise MessageTooLargeError(len(data), self.max_message_size)
        if self.closed:
            return
        self._outbox.append(data)
        self._outbox_bytes += len(data)
        self._lot.unpark()

    async def send_now(self, envelope: _wire.Envelope) -> None:
        """Send one small envelope at once, ahead of the queue: once this returns it has
        been handed to the socket. Raises ``ConnectionClosed`` if the link is gone."""
        await self.ws.send_message(_wire.frame([_wire.encode_envelope(envelope)]))
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
        while (self._outbox or self._sending) and not self.closed:
            await self._flushed.park()

    async def _writer(self) -> None:
        ws = self.ws
        limit = min(self.max_message_size - _FRAME_OVERHEAD, COALESCE_BYTES)
        while True:
            while not self._outbox:
                await self._lot.park()
            # let the tasks that are runnable now queue their envelopes too: one
            # websocket message (and one syscall) carries them all
            await trio.lowlevel.cancel_shielded_checkpoint()
            batch = self._outbox
            if self._outbox_bytes <= limit:
                self._outbox = []
                self._outbox_bytes = 0
            else:
                cut, size = _wire.batch_cut(batch, limit)
                self._outbox = batch[cut:]
                self._outbox_bytes -= size
                batch = batch[:cut]
            self._sending = True
            try:
                await ws.send_message(_wire.frame(batch))
            finally:
                self._sending = False
            self._last_sent = trio.current_time()
            if not self._outbox:
                self._flushed.unpark_all()

    # -- receiving

    async def _reader(self) -> None:
        ws = self.ws
        decode = self._decoder.decode
        on_envelope = self._on_envelope
        after_batch = self._after_batch
        while True:
            message = await ws.get_message()
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
                # A close handshake needs trio-websocket's reader, which our owner's
                # cancellation would have stopped too: only attempt it when not cancelled
                # (trio-websocket closes the socket itself on the way out then).
                with trio.move_on_after(1) as cleanup:
                    cleanup.shield = True  # why: a closing link says goodbye, bounded
                    await self.ws.aclose(code=self._close_code, reason=self.close_reason[:120])

    async def _watch(self, fn: Callable[[], object], nursery: trio.Nursery) -> None:
        try:
            await fn()  # type: ignore[misc]  # why: fn is one of the link's own async loops
        except ConnectionClosed as exc:
            reason = exc.reason
            self._mark_closed(
                f"connection closed ({reason.code} {reason.reason or ''})".strip()
                if reason
                else "connection closed"
            )
        finally:
            nursery.cancel_scope.cancel()
