"""An HTTP/1.1 server on Trio streams (the protocol, sans-IO, in ``h1.py``).

Keep-alive and pipelining-safe (one request at a time per connection, in order), limits on
header and body size, idle, request-head, body and send timeouts, a bound on open
connections, and a client whose connection breaks cancels its request's handler. A client
that only half-closes (shuts down its sending side after a complete request) still gets its
answer. Malformed HTTP gets a 400 (an unsupported HTTP version 505, ``CONNECT`` 501) and
closes only that connection; error bodies are fixed texts, never the request's bytes.
Draining stops accepting connections, closes idle ones, and lets requests in flight finish;
open websockets are closed (1001).

A body with a ``content-length`` up to ``inline_body_bytes`` is read before the handler runs
(``HTTPRequest.body``); a larger or chunked one is streamed (``HTTPRequest.body_stream``, a
:class:`RequestBody`): read from the socket only as the handler asks, so a handler that does
not read holds the client back. A websocket upgrade gets ``HTTPRequest.websocket`` (see
``websocket.py``).

The pure parts (what is wrong with a request head, which headers frame a response, when to
log a warning again) are plain functions and classes below; the tasks and sockets are
:class:`_Connection` and :class:`HTTPServer`.
"""

from __future__ import annotations

import contextlib
import errno
import http
import logging
import math
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, NoReturn, Protocol

import attrs
import trio

from .._replica.http import Request
from . import h1
from .websocket import (
    ServerWebSocket,
    WebSocketDisconnect,
    handshake_problem,
    is_websocket_upgrade,
    offered_subprotocols,
)

RECEIVE_SIZE = 64 * 1024
#: the most a streamed body's ``read()`` returns at once
READ_SIZE = 64 * 1024
#: body events parsed from data already received, between two checkpoints (1-byte chunks)
EVENTS_PER_CHECKPOINT = 64
#: warnings about refused connections or failing accepts: at most one line per this
WARNING_INTERVAL_S = 10.0
ACCEPT_BACKOFF_MIN_S = 0.1
ACCEPT_BACKOFF_MAX_S = 1.0
#: accept errors that mean "out of file descriptors or memory" (as in trio.serve_listeners)
ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
#: how long cleanup (closing a socket, a response body) may take once cancelled
CLEANUP_S = 1.0
#: reading a body of known length, wake up only once this much of it (or its end) is in:
#: a client writing 1 byte at a time does not cost a wake-up per byte (``SO_RCVLOWAT``)
BODY_LOW_WATER = 16 * 1024
#: after a client's EOF, the pause before the next ``100 Continue`` probe (doubling up to
#: the maximum): a peer that closed for good answers the first with a reset, so the second
#: fails (one round trip), while a half-closed peer takes them and waits for its answer
PROBE_FIRST_DELAY_S = 0.01
PROBE_MAX_DELAY_S = 1.0
#: closing after an answer that left the request body unread, what of the rest the client
#: still sends is dropped for this long (or this much) first, so that the close does not
#: reset the connection under the answer before the client read it (a lingering close)
LINGER_S = 1.0
LINGER_BYTES = 1024 * 1024
logger = logging.getLogger("trioserve.http")


def _positive(_instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value > 0:
        raise ValueError(f"HTTPLimits.{attribute.name} must be > 0, got {value}")


def _not_negative(_instance: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if value < 0:
        raise ValueError(f"HTTPLimits.{attribute.name} must be >= 0, got {value}")


def _positive_or_none(
    instance: object, attribute: attrs.Attribute[Any], value: float | None
) -> None:
    if value is not None:
        _positive(instance, attribute, value)


@attrs.frozen(kw_only=True)
class HTTPLimits:
    """Bounds on what one HTTP client may cost the server (see README, "Security model")."""

    max_header_bytes: int = 64 * 1024
    max_body_bytes: int = 64 * 1024 * 1024
    #: keep-alive: time allowed between a response and the first byte of the next request
    idle_timeout_s: float = 30.0
    #: time allowed for a request head, from the connection's start (first request) or
    #: from the head's first byte (later requests on a keep-alive connection)
    header_timeout_s: float = 10.0
    #: a body read before the handler runs must be in within this time; a streamed one
    #: bounds each wait for more of it inside ``RequestBody.read()`` instead (a long upload
    #: that keeps sending is never cut off, one that stalls this long is: 408)
    body_timeout_s: float = 60.0
    #: a body with a ``content-length`` up to this is read whole before the handler runs
    #: (``HTTPRequest.body``); a larger or chunked one is streamed (``body_stream``)
    inline_body_bytes: int = attrs.field(default=64 * 1024, validator=_not_negative)
    #: time allowed for each write to the client; a client that stops reading is cut off
    send_timeout_s: float = attrs.field(default=30.0, validator=_positive)
    #: open connections at most; beyond it a new one gets 503 at once. 512 leaves half of
    #: the usual default file-descriptor limit (1024) for replica links, listeners and logs
    max_connections: int = attrs.field(default=512, validator=_positive)
    #: a websocket message from a client (all its fragments) at most; past it, close 1009
    max_websocket_message_bytes: int = attrs.field(default=16 * 1024 * 1024, validator=_positive)
    #: a websocket whose client sends nothing for this long while the handler waits for a
    #: message is closed (1001); ``None``: never
    websocket_idle_timeout_s: float | None = attrs.field(default=None, validator=_positive_or_none)


@attrs.define
class HTTPReply:
    """What a handler answers: status, headers, and a body (bytes or an async iterator).

    The server frames the body itself (``content-length`` for bytes, chunked otherwise) and
    closes an async-iterator body (``aclose()``) once it is sent, abandoned or cancelled."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes | AsyncIterator[bytes] = b""


Handler = Callable[[Request], Awaitable[HTTPReply]]


class _ClientGone(Exception):
    """The client cannot be talked to any more: its connection broke, it stopped reading,
    or it closed its side before its request was complete."""


class BodyRefusedError(Exception):
    """A streamed request body was refused (:meth:`RequestBody.read`): past
    ``max_body_bytes`` (413), stalled past ``body_timeout_s`` (408), malformed (400). The
    server answers ``status`` with ``connection: close`` (if no answer has begun), whatever
    the handler returns."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(status, text)
        self.status = status
        #: the answer's fixed text
        self.text = text

    def __str__(self) -> str:
        return f"{self.status}: {self.text}"


# -- the pure parts


def plain(status: int, text: str, extra: list[tuple[str, str]] | None = None) -> HTTPReply:
    headers = [
        ("content-type", "text/plain; charset=utf-8"),
        ("x-content-type-options", "nosniff"),
        *(extra or []),
    ]
    return HTTPReply(status, headers, text.encode())


def reason_phrase(status: int) -> bytes:
    """The status line's reason phrase (``OK`` for 200); empty for a code with none."""
    try:
        return http.HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b""


def peer_address(stream: trio.abc.Stream) -> tuple[str, int] | None:
    """The ``(host, port)`` a socket stream is connected to; ``None`` for other streams."""
    if not isinstance(stream, trio.SocketStream):
        return None
    try:
        address = stream.socket.getpeername()
    except OSError:  # already reset by the peer
        return None
    if isinstance(address, tuple) and len(address) >= 2:
        return str(address[0]), int(address[1])
    return None


class RequestHead(Protocol):
    """What :func:`request_problem` reads of a request head (``h1.Request``, or h11's)."""

    @property
    def method(self) -> bytes: ...
    @property
    def target(self) -> bytes: ...
    @property
    def http_version(self) -> bytes: ...
    @property
    def headers(self) -> Sequence[tuple[bytes, bytes]]: ...


def header_map(event: h1.Request) -> dict[str, str]:
    """A request's headers by (lowercase) name; repeated ones joined with ``", "``."""
    headers: dict[str, str] = {}
    for name, value in event.headers:
        key = name.decode("latin-1")
        text = value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return headers


def _head_size(event: RequestHead) -> int:
    return len(event.target) + sum(len(k) + len(v) + 4 for k, v in event.headers)


def request_problem(event: RequestHead, max_header_bytes: int) -> tuple[int, str] | None:
    """Why a request head the parser accepted must still be refused (status and a fixed
    text, never the request's own bytes), or ``None``. Every refusal closes the connection."""
    major = event.http_version.split(b".", 1)[0]
    if major != b"1":  # RFC 9112 §2.3: 1.x with a higher minor is handled as 1.1
        return 505, "only HTTP/1.0 and HTTP/1.1 are supported"
    if _head_size(event) > max_header_bytes:
        return 431, "request header fields too large"
    names = {name for name, _ in event.headers}  # lowercase, as parsed
    if b"host" not in names and event.http_version != b"1.0":  # RFC 9112 §3.2
        return 400, "missing host header"
    if b"transfer-encoding" in names:
        if b"content-length" in names:  # RFC 9112 §6.1: a smuggling attempt, or broken
            return 400, "both content-length and transfer-encoding"
        if event.http_version == b"1.0":  # RFC 9112 §6.1: framing is faulty
            return 400, "transfer-encoding in an HTTP/1.0 request"
    if event.method == b"CONNECT":
        return 501, "CONNECT is not supported"
    return None


def protocol_error_status(exc: h1.RemoteProtocolError) -> int:
    """The status for a request that could not be parsed (its hint for a client error)."""
    hint = exc.error_status_hint
    return hint if hint in (400, 413, 414, 431, 501, 505) else 400


_FRAMING = frozenset({"content-length", "transfer-encoding"})


def response_headers(reply: HTTPReply, *, head: bool, close: bool) -> list[tuple[str, str]]:
    """``reply``'s headers with the server's framing: ``content-length`` for a bytes body,
    chunked for an iterator. Answering ``HEAD``, a handler's own ``content-length`` with an
    empty body stands (the length a ``GET`` would have)."""
    body = reply.body
    keep_length = head and body == b""
    headers = [
        (name, value)
        for name, value in reply.headers
        if name.lower() not in _FRAMING or (keep_length and name.lower() == "content-length")
    ]
    if isinstance(body, bytes):
        if not any(name.lower() == "content-length" for name, _ in headers):
            headers.append(("content-length", str(len(body))))
    else:
        headers.append(("transfer-encoding", "chunked"))
    if close:
        headers.append(("connection", "close"))
    return headers


@attrs.define
class BurstWarning:
    """Says when to log a warning that may repeat in bursts: at most once per
    ``interval_s``, with the number of occurrences held back since the last line."""

    interval_s: float = WARNING_INTERVAL_S
    _last: float = -math.inf
    _held: int = 0

    def due(self, now: float) -> int | None:
        """Record one occurrence; the number held back before it when a line is due now,
        ``None`` when this one is to be held back."""
        if now - self._last < self.interval_s:
            self._held += 1
            return None
        held, self._held, self._last = self._held, 0, now
        return held


def _overloaded_response() -> bytes:
    conn = h1.ServerConnection()
    reply = plain(503, "too many connections", [("retry-after", "1")])
    headers = response_headers(reply, head=False, close=True)
    assert isinstance(reply.body, bytes)
    return b"".join(
        conn.send(event) or b""
        for event in (
            h1.Response(status_code=503, headers=headers, reason=reason_phrase(503)),
            h1.Data(data=reply.body),
            h1.EndOfMessage(),
        )
    )


OVERLOADED_RESPONSE = _overloaded_response()


async def _close_body(body: AsyncIterator[bytes]) -> None:
    """Close a response body (an async generator's ``finally`` runs), even when cancelled."""
    aclose = getattr(body, "aclose", None)
    if aclose is None:
        return
    with trio.move_on_after(CLEANUP_S) as cleanup:
        cleanup.shield = True  # why: the producer must be told it is abandoned, cancelled or not
        try:
            await aclose()
        except Exception:  # a producer failing to close must not fail the connection
            logger.exception("closing an HTTP response body failed")


async def _close_stream(stream: trio.abc.Stream) -> None:
    with trio.move_on_after(CLEANUP_S) as cleanup:
        cleanup.shield = True  # why: close the socket even when cancelled
        await stream.aclose()


# -- one connection


def _write_now(stream: trio.abc.Stream, data: bytes) -> int:
    """Write what a socket stream's kernel buffer takes now, without waiting: the number
    of bytes written (0 for another stream; the caller sends the rest with ``send_all``).
    Raises ``OSError`` when the connection is broken."""
    if not isinstance(stream, trio.SocketStream):
        return 0
    fd = stream.socket.fileno()
    if fd < 0:
        return 0
    try:
        return os.write(fd, data)
    except BlockingIOError:
        return 0


class RequestBody:
    """A request body read as it arrives (``HTTPRequest.body_stream``): ``await read()``
    or ``async for chunk in body``.

    Nothing is read from the connection but in :meth:`read`, so a handler that does not
    read leaves the rest in the kernel and the client waiting (backpressure). A client
    waiting for ``100 Continue`` is sent it at the first :meth:`read`. No tasks; one task
    reads at a time; once its request is answered, the body can no longer be read. A body
    left unread closes the connection after the answer."""

    def __init__(self, connection: _Connection) -> None:
        self._connection = connection
        self._pending = bytearray()
        self._received = 0
        #: the body's end was read from the connection
        self.ended = False
        #: why the body was refused, once it was
        self.refused: BodyRefusedError | None = None
        self._reading = False
        self._closed = False

    @property
    def reading(self) -> bool:
        """Whether a task is in :meth:`read` (it may be waiting on the connection)."""
        return self._reading

    def __aiter__(self) -> RequestBody:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self.read()
        if chunk is None:
            raise StopAsyncIteration
        return chunk

    async def read(self) -> bytes | None:
        """The next part of the body received so far (1 byte to 64 KiB, small chunks
        joined), waiting for one if need be; ``None`` once the body ended.

        Raises :class:`BodyRefusedError`: 413 past ``max_body_bytes``, 408 when no more of
        it came within ``body_timeout_s``, 400 for a malformed chunked body. A client that
        leaves before its body's end cancels the handler (as a broken connection does)."""
        if self.refused is not None:
            raise BodyRefusedError(self.refused.status, self.refused.text)
        if self._closed:
            raise trio.ClosedResourceError("the request was answered: its body is gone")
        if self._reading:
            raise trio.BusyResourceError("another task is already reading this request body")
        self._reading = True
        try:
            return await self._read()
        except _ClientGone as exc:
            if self._closed:  # the connection was closed under a read outlasting its request
                raise trio.ClosedResourceError("the request was answered") from exc
            await self._connection.client_left()
        finally:
            self._reading = False

    def close(self) -> None:
        """The request was answered: later reads fail."""
        self._closed = True

    async def take_buffered(self, upto: int) -> bytes | None:
        """Parse what the connection already received, without waiting: the whole body if
        it ended within ``upto`` bytes, else ``None`` (what was parsed is read first)."""
        await self._parse(upto + 1)
        if self.ended:
            return self._take(len(self._pending))
        return None

    async def _read(self) -> bytes | None:
        if not self.ended and not self._pending:
            await self._connection.invite_body()
        while not self.ended and len(self._pending) < READ_SIZE:
            if await self._parse(READ_SIZE):
                if self._pending:
                    break  # what is in so far
                await self._wait_for_data()
        if not self._pending:
            return None
        return self._take(READ_SIZE)

    def _take(self, size: int) -> bytes:
        if len(self._pending) <= size:
            chunk = bytes(self._pending)
            self._pending.clear()
        else:
            chunk = bytes(self._pending[:size])
            del self._pending[:size]
        return chunk

    def _refuse(self, status: int, text: str) -> BodyRefusedError:
        self.refused = BodyRefusedError(status, text)
        return BodyRefusedError(status, text)

    async def _parse(self, upto: int) -> bool:
        """Move the body's data parsed from what was received into the pending chunk, until
        ``upto`` bytes are pending or the body ended; whether more data is needed. A
        checkpoint every few events parsed (a body of 1-byte chunks)."""
        connection = self._connection
        limit = connection.limits.max_body_bytes
        parsed = 0
        while len(self._pending) < upto:
            try:
                event = connection.conn.next_event()
            except h1.RemoteProtocolError as exc:
                if connection.eof:
                    raise _ClientGone from exc  # it closed before its body's end
                logger.debug("bad HTTP request body: %r", exc)
                raise self._refuse(400, "malformed request body") from exc
            if event is h1.NEED_DATA:
                return True
            if not isinstance(event, h1.Data):  # EndOfMessage: nothing else comes mid-body
                self.ended = True
                connection.body_ended()
                return False
            self._received += len(event.data)
            if self._received > limit:
                raise self._refuse(413, f"body exceeds {limit} bytes")
            self._pending += event.data
            parsed += 1
            if parsed >= EVENTS_PER_CHECKPOINT:
                await trio.lowlevel.checkpoint()
                parsed = 0
        return False

    async def _wait_for_data(self) -> None:
        connection = self._connection
        if connection.eof:
            raise _ClientGone
        with trio.move_on_after(connection.limits.body_timeout_s) as waiting:
            try:
                await connection.receive()
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise _ClientGone from exc
        if waiting.cancelled_caught:
            raise self._refuse(408, "request body timed out")


@attrs.define(eq=False)
class _Job:
    """One request, handed from the connection's task to its worker task."""

    request: Request
    head: bool
    body: RequestBody | None
    #: the handler's: cancelled when the connection breaks
    scope: trio.CancelScope = attrs.Factory(trio.CancelScope)
    #: set when a streamed body was read to its end, or the answer is out
    body_in: trio.Event = attrs.Factory(trio.Event)
    #: set when the answer is out (or the handler was cancelled)
    finished: trio.Event = attrs.Factory(trio.Event)
    done: bool = False
    #: whether the answer went out whole and the connection may serve another request
    go_on: bool = False
    #: the connection task's read ahead, while it reads for this request
    reading: trio.CancelScope | None = None
    #: after the answer, no next request came within the idle timeout (or none may come)
    idle_out: bool = False


class _Connection:
    """One client connection, served in the task that calls :meth:`serve`. It reads the
    requests; a worker task of its own runs each one's handler and sends the answer,
    while the connection's task reads ahead to notice a broken connection and goes on
    reading the next request (no task per request). After a websocket was accepted, a task
    closes it when the server drains. Cancelled midway, nothing remains: the handler is
    cancelled and a response body is closed (the caller closes the stream)."""

    def __init__(self, stream: trio.abc.Stream, server: HTTPServer) -> None:
        self.stream = stream
        self.server = server
        self.handler = server.handler
        self.limits = server.limits
        self.conn = h1.ServerConnection(max_incomplete_event_size=self.limits.max_header_bytes)
        #: the client sent EOF: it half-closed (answers can still go out) or left
        self.eof = False
        #: the connection broke while a handler ran (the handler was cancelled)
        self.broken = False
        #: the answer in progress has an iterator body (its producer may wait for long)
        self.streaming = False
        self._sending = trio.Lock()
        self._low_water = 1
        #: the peer's address, for every request on this connection
        self.client = peer_address(stream)
        #: the nursery of a websocket's tasks, while its handler runs
        self._exchange: trio.Nursery | None = None
        #: the connection's nursery: its worker task runs the handlers
        self._nursery: trio.Nursery
        self._working = False
        self._job: _Job | None = None
        self._job_ready = trio.Event()
        #: the current (or last) request's streamed body
        self._body: RequestBody | None = None
        self._probes = True

    async def receive(self) -> None:
        data = await self.stream.receive_some(RECEIVE_SIZE)
        if not data:
            self.eof = True
        self.conn.receive_data(bytes(data) if isinstance(data, bytearray) else data)

    async def next_event(self) -> object:
        while True:
            event = self.conn.next_event()
            if event is not h1.NEED_DATA:
                return event
            if self.eof:
                raise _ClientGone
            await self.receive()

    async def send(self, *events: h1.Outgoing) -> None:
        try:
            self._sending.acquire_nowait()  # why: uncontended, taking it costs no trip
        except trio.WouldBlock:  # through the scheduler; the send itself checkpoints
            await self._sending.acquire()
        try:
            await self._send_locked(*events)
        finally:
            self._sending.release()

    async def _send_locked(self, *events: h1.Outgoing) -> None:
        """Send ``events`` in one write (a whole answer: one syscall, one wake-up of the
        client)."""
        if len(events) == 1:
            data = self.conn.send(events[0])
        else:
            data = b"".join(self.conn.send(event) or b"" for event in events)
        if not data:
            return
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            sent = _write_now(self.stream, data)
        except OSError as exc:
            raise _ClientGone from exc
        if sent == len(data):
            return
        data = data[sent:]
        with trio.move_on_after(self.limits.send_timeout_s) as timer:
            try:
                await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise _ClientGone from exc
        if timer.cancelled_caught:
            raise _ClientGone(f"not reading: a send took over {self.limits.send_timeout_s}s")

    async def serve(self) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await self._serve()
            nursery.cancel_scope.cancel()  # the worker, waiting for a next request

    async def _serve(self) -> None:
        first = True
        while not self.server.draining:
            try:
                event = await self._read_head(first)
            except h1.RemoteProtocolError as exc:
                logger.debug("bad HTTP request: %r", exc)
                status = protocol_error_status(exc)
                await self._refuse(status, http.HTTPStatus(status).phrase.lower())
                return
            except _ClientGone:
                return
            if not isinstance(event, h1.Request):
                return  # closed, or an idle / head timeout: close quietly
            problem = request_problem(event, self.limits.max_header_bytes)
            if problem is not None:
                await self._refuse(*problem)
                return
            if not await self._handle(event):
                return
            if self.conn.our_state is h1.MUST_CLOSE:
                return
            try:
                self.conn.start_next_cycle()
            except h1.LocalProtocolError:
                return
            first = False

    async def linger(self) -> None:
        """After an answer that left the request body unread (the client may still be
        sending it): send EOF, then drop what comes for a while (``LINGER_S``,
        ``LINGER_BYTES``), so closing does not reset the connection under the answer."""
        if self._body is not None and self._body.reading:
            return  # a task (not the handler: it returned) still waits for it; closing ends it
        if self.broken or self.eof or not self._body_unread():
            return
        if self.conn.our_state not in (h1.DONE, h1.MUST_CLOSE):
            return
        if not isinstance(self.stream, trio.abc.HalfCloseableStream):
            return
        dropped = 0
        with trio.move_on_after(LINGER_S):
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await self.stream.send_eof()
                while dropped < LINGER_BYTES:
                    data = await self.stream.receive_some(RECEIVE_SIZE)
                    if not data:
                        return
                    dropped += len(data)

    def _body_unread(self) -> bool:
        """Whether more of the request's body may still come (its end was not received)."""
        if self.conn.their_state is not h1.SEND_BODY:
            return False
        try:
            while isinstance(event := self.conn.next_event(), h1.Data):
                pass  # received, and dropped: the answer went out
        except h1.RemoteProtocolError:
            return False
        return event is h1.NEED_DATA

    async def _read_head(self, first: bool) -> object:
        """The next request head (or ``ConnectionClosed``); ``None`` on a timeout. The first
        has ``header_timeout_s`` from the start; a later one ``idle_timeout_s`` until its
        first byte, then ``header_timeout_s`` from that byte."""
        if not first and self.conn.trailing_data[0]:
            event = self.conn.next_event()  # read ahead already, often whole: no timer needed
            if event is not h1.NEED_DATA:
                return event
        limits = self.limits
        idle = self.server.idle
        with trio.move_on_after(
            limits.header_timeout_s if first else limits.idle_timeout_s
        ) as waiting:
            idle.add(waiting)  # until a request comes, draining may close the connection
            try:
                if not first:
                    while not self.eof and not self.conn.trailing_data[0]:
                        await self.receive()
                    waiting.deadline = trio.current_time() + limits.header_timeout_s
                return await self.next_event()
            finally:
                idle.discard(waiting)
        return None

    async def _refuse(self, status: int, text: str) -> None:
        """Answer ``status`` with a fixed ``text`` and ``connection: close``, if an answer
        can still go out."""
        if self.conn.our_state not in (h1.IDLE, h1.SEND_RESPONSE):
            return
        reply = plain(status, text, [("connection", "close")])
        with contextlib.suppress(h1.LocalProtocolError, _ClientGone):
            await self._send_reply(reply, head=False)

    async def _read_body(self, declared: int | None, chunked: bool) -> bytes | None:
        """The request body, or ``None`` once refused (413, 408) or the client left."""
        limit = self.limits.max_body_bytes
        if declared is not None and declared > limit:
            await self._refuse(413, f"body exceeds {limit} bytes")
            return None
        if not chunked and not declared:
            # no body: its end was parsed with the head (llhttp), nothing to wait for
            if isinstance(self.conn.next_event(), h1.EndOfMessage):
                return b""
            raise h1.RemoteProtocolError("a body where the head declared none")
        if self.conn.they_are_waiting_for_100_continue:
            await self.send(
                h1.InformationalResponse(status_code=100, headers=[], reason=b"Continue")
            )
        outcome: bytes | int = 408
        try:
            with trio.move_on_after(self.limits.body_timeout_s):
                outcome = await self._receive_body(limit, declared)
        finally:
            self._set_low_water(1)
        if isinstance(outcome, bytes):
            return outcome
        if outcome == 413:
            await self._refuse(413, f"body exceeds {limit} bytes")
        elif outcome == 408:
            await self._refuse(408, "request body timed out")
        return None

    def _set_low_water(self, size: int) -> None:
        if size == self._low_water:
            return
        self._low_water = size
        setsockopt = getattr(self.stream, "setsockopt", None)  # a socket stream's
        if setsockopt is not None:
            with contextlib.suppress(OSError):  # an optimisation where it is supported
                setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, size)

    async def _receive_body(self, limit: int, declared: int | None) -> bytes | int:
        """The body's bytes, or the status refusing it (0: the request ended otherwise).
        Data events are joined into one buffer (a body of 1-byte chunks costs no object per
        byte), with a checkpoint every few events parsed without waiting for the network."""
        body = bytearray()
        parsed = 0
        while True:
            event = self.conn.next_event()
            if event is h1.NEED_DATA:
                if self.eof:
                    raise _ClientGone
                if declared is not None:
                    self._set_low_water(max(1, min(declared - len(body), BODY_LOW_WATER)))
                await self.receive()
                parsed = 0
            elif isinstance(event, h1.Data):
                body += event.data
                if len(body) > limit:
                    return 413
                parsed += 1
                if parsed >= EVENTS_PER_CHECKPOINT:
                    await trio.lowlevel.checkpoint()
                    parsed = 0
            elif isinstance(event, h1.EndOfMessage):
                return bytes(body)
            else:
                return 0

    async def _handle(self, event: h1.Request) -> bool:
        """Read the body (or open it as a stream), run the handler, send its answer; whether
        the connection goes on."""
        headers = header_map(event)
        head = event.method == b"HEAD"
        if self.server.gate is not None and not await self._pass_gate(headers, head=head):
            return False
        if "upgrade" in headers and is_websocket_upgrade(event.method.decode("ascii"), headers):
            await self._handle_upgrade(event, headers)
            return False
        declared = headers.get("content-length")
        length = int(declared) if declared else None
        chunked = "transfer-encoding" in headers
        stream: RequestBody | None = None
        try:
            if chunked or (length or 0) > self.limits.inline_body_bytes:
                body, stream = await self._open_body(length)
            else:
                body = await self._read_body(length, chunked)
        except h1.RemoteProtocolError as exc:
            logger.debug("bad HTTP request body: %r", exc)
            status = protocol_error_status(exc)
            await self._refuse(status, http.HTTPStatus(status).phrase.lower())
            return False
        except _ClientGone:
            return False
        if body is None:
            return False
        request = self._request(event, headers, body=body, body_stream=stream)
        return await self._exchange_http(request, event.http_version, head=head, body=stream)

    def _request(self, event: h1.Request, headers: dict[str, str], **body: Any) -> Request:
        target = event.target.decode("latin-1")
        path, _, query = target.partition("?")
        return Request(
            method=event.method.decode("ascii"),
            path=path,
            query_string=query,
            headers=headers,
            client=self.client,
            **body,
        )

    async def _pass_gate(self, headers: dict[str, str], *, head: bool) -> bool:
        assert self.server.gate is not None
        refused = self.server.gate(headers)
        if refused is None:
            return True
        # answered before the body is read: the connection cannot be reused
        with contextlib.suppress(h1.LocalProtocolError, _ClientGone):
            await self._send_reply(refused, head=head, close=True)
        return False

    async def _open_body(self, declared: int | None) -> tuple[bytes | None, RequestBody | None]:
        """A body to stream: ``(b"", its stream)``; ``(the bytes, None)`` for a chunked body
        already received whole within ``inline_body_bytes``; ``(None, None)`` once refused."""
        limit = self.limits.max_body_bytes
        if declared is not None and declared > limit:
            await self._refuse(413, f"body exceeds {limit} bytes")
            return None, None
        stream = RequestBody(self)
        if declared is None:
            try:
                whole = await stream.take_buffered(self.limits.inline_body_bytes)
            except BodyRefusedError as exc:
                await self._refuse(exc.status, exc.text)
                return None, None
            if whole is not None:
                return whole, None
        return b"", stream

    async def _exchange_http(
        self, request: Request, http_version: bytes, *, head: bool, body: RequestBody | None
    ) -> bool:
        """Run the handler (in the connection's worker task) and send its answer, while this
        task reads ahead once the request's body is all in; whether the connection goes on."""
        self._probes = http_version != b"1.0"  # an HTTP/1.0 client takes no 1xx
        self._body = body
        job = _Job(request, head, body)
        self._job = job
        if not self._working:
            self._working = True
            self._nursery.start_soon(self._work)
        self._job_ready.set()
        try:
            if body is not None:
                await job.body_in.wait()  # the handler reads it; once it is in, read ahead
            if not job.done:
                await self._read_ahead(job)
            await job.finished.wait()
        finally:
            self._job = None
            if body is not None:
                body.close()
        return job.go_on and not self.broken and not job.idle_out

    async def _work(self) -> None:
        """The worker: runs each request's handler and sends its answer, one at a time."""
        while True:
            await self._job_ready.wait()
            self._job_ready = trio.Event()
            job = self._job
            assert job is not None
            with job.scope:
                job.go_on = await self._answer(job.request, head=job.head, body=job.body)
            self._finish(job)

    def _finish(self, job: _Job) -> None:
        """The answer is out (or the handler cancelled): the reader, if it reads ahead, now
        waits for the next request under the idle timeout, or stops if none can come."""
        job.done = True
        job.body_in.set()
        job.finished.set()
        reading = job.reading
        if reading is None:
            return
        if (
            self.broken
            or not job.go_on
            or self.conn.our_state is not h1.DONE
            or self.server.draining
            or self.conn.trailing_data[0]  # the next request is in already: serve it
        ):
            reading.cancel()
        else:
            reading.deadline = trio.current_time() + self.limits.idle_timeout_s
            self.server.idle.add(reading)  # draining may close the connection now

    async def _read_ahead(self, job: _Job) -> None:
        """Read while the handler runs (its request's body all in): a connection that broke
        cancels it, and what comes is the next request, kept for its turn. Once the answer
        is out this read goes on as the wait for the next request (``idle_timeout_s``,
        closed when draining) instead of ending: no task per request. See
        :meth:`_watch_disconnect` for a client that sent EOF."""
        with trio.CancelScope() as reading:
            job.reading = reading
            try:
                while not self.eof:
                    if len(self.conn.trailing_data[0]) > self.limits.max_header_bytes:
                        await job.finished.wait()  # enough pipelined; read on after the answer
                        return
                    await self.receive()
                    if job.done:
                        return
                if not job.done:
                    await self._after_eof()
            except (trio.BrokenResourceError, trio.ClosedResourceError, _ClientGone):
                self.broken = True
                job.scope.cancel()
            finally:
                job.reading = None
                self.server.idle.discard(reading)
        if reading.cancelled_caught and job.done and not self.conn.trailing_data[0]:
            job.idle_out = True  # idle past its timeout, draining, or no next request

    def body_ended(self) -> None:
        """A streamed body was read to its end: read ahead from now on (the next request,
        or the connection breaking) while the handler runs."""
        if self._job is not None:
            self._job.body_in.set()

    async def client_left(self) -> NoReturn:
        """The client left before its streamed body's end: cancel the handler, as a broken
        connection does."""
        self.broken = True
        if self._job is not None:
            self._job.scope.cancel()
        await trio.lowlevel.checkpoint()  # the handler's own read is cancelled here
        raise BodyRefusedError(400, "request body cut short")  # read outside the handler

    async def invite_body(self) -> None:
        """Send ``100 Continue`` if the client waits for it before sending its body."""
        if not self.conn.they_are_waiting_for_100_continue:
            return
        async with self._sending:
            if self.conn.our_state is h1.SEND_RESPONSE:
                await self._send_locked(
                    h1.InformationalResponse(status_code=100, headers=[], reason=b"Continue")
                )

    async def _call(self, request: Request, body: RequestBody | None) -> HTTPReply:
        try:
            return await self.handler(request)
        except Exception as exc:  # a handler's bug fails its request, not the connection's peer
            if not (isinstance(exc, BodyRefusedError) and body is not None and body.refused):
                logger.exception("HTTP handler failed on %s %s", request.method, request.path)
            return plain(500, "internal server error", [("connection", "close")])

    async def _answer(self, request: Request, *, head: bool, body: RequestBody | None) -> bool:
        reply = await self._call(request, body)
        if body is not None and body.refused is not None:
            if not isinstance(reply.body, bytes):
                await _close_body(reply.body)
            await self._refuse(body.refused.status, body.refused.text)
            return False
        unread = body is not None and not body.ended
        try:
            # an unread body closes the connection: say so now when the answer is all known
            sent = await self._send_reply(
                reply, head=head, close=unread and isinstance(reply.body, bytes)
            )
        except _ClientGone:
            return False
        except h1.LocalProtocolError:
            logger.exception("invalid HTTP response (status %d)", reply.status)
            return False
        return sent and (body is None or body.ended)

    # -- websockets

    async def _handle_upgrade(self, event: h1.Request, headers: dict[str, str]) -> None:
        """A websocket upgrade request: refused by the server if its handshake is bad, else
        the handler's."""
        problem = handshake_problem(event.http_version.decode("ascii"), headers)
        if problem is not None:
            status, text, extra = problem
            with contextlib.suppress(h1.LocalProtocolError, _ClientGone):
                await self._send_reply(plain(status, text, extra), head=False, close=True)
            return
        try:
            if await self._read_body(None, False) is None:  # the request's end
                return
        except (h1.RemoteProtocolError, _ClientGone):
            return
        await self._exchange_websocket(event, headers)

    async def _exchange_websocket(self, event: h1.Request, headers: dict[str, str]) -> None:
        """Run a websocket handler. Until it accepts, a task reads ahead to notice the client
        leaving (which cancels the handler), and a refusal is sent as an HTTP answer; once
        it accepts, the websocket owns the connection, a task closes it (1001) when the
        server drains, and what the handler returns is dropped. Both tasks run in the
        exchange nursery; the connection closes after."""
        async with trio.open_nursery() as nursery:
            self._exchange = nursery
            self._probes = False  # EOF before the 101: the client is gone
            watching = trio.CancelScope()
            watched = trio.Event()
            nursery.start_soon(self._watch_until_accept, nursery.cancel_scope, watching, watched)

            async def switch(response_headers: list[tuple[str, str]]) -> tuple[bytes, bool]:
                watching.cancel()
                await watched.wait()  # what it read ahead is the trailing data
                response = h1.InformationalResponse(
                    status_code=101, headers=response_headers, reason=b"Switching Protocols"
                )
                try:
                    await self.send(response)
                except _ClientGone as exc:
                    raise WebSocketDisconnect(1006, "connection lost") from exc
                nursery.start_soon(self._close_on_drain, websocket)
                return self.conn.trailing_data

            websocket = ServerWebSocket(
                self.stream,
                key=headers.get("sec-websocket-key", ""),
                subprotocols=offered_subprotocols(headers),
                switch=switch,
                max_message_bytes=self.limits.max_websocket_message_bytes,
                idle_timeout_s=self.limits.websocket_idle_timeout_s,
                send_timeout_s=self.limits.send_timeout_s,
            )
            request = self._request(event, headers, websocket=websocket)
            try:
                await self._answer_websocket(request, websocket)
            finally:
                self._exchange = None
            nursery.cancel_scope.cancel()

    async def _answer_websocket(self, request: Request, websocket: ServerWebSocket) -> None:
        reply: HTTPReply | None = None
        failed = False
        try:
            reply = await self.handler(request)
        except WebSocketDisconnect:
            pass  # the client left; nothing to answer
        except Exception:  # a handler's bug fails its websocket, not the server
            logger.exception("HTTP handler failed on websocket %s", request.path)
            failed = True
        if websocket.accepted:
            if reply is not None and not isinstance(reply.body, bytes):
                await _close_body(reply.body)
            await websocket.close(1011 if failed else 1000, "internal error" if failed else "")
            return
        if reply is None:
            reply = plain(500, "internal server error")
        with contextlib.suppress(h1.LocalProtocolError, _ClientGone):
            await self._send_reply(reply, head=False, close=True)

    async def _watch_until_accept(
        self, scope: trio.CancelScope, watching: trio.CancelScope, watched: trio.Event
    ) -> None:
        """:meth:`_watch_disconnect` until ``watching`` is cancelled (the handler accepts);
        ``watched`` is set once it stopped reading."""
        try:
            with watching:
                await self._watch_disconnect(scope)
        finally:
            watched.set()

    async def _close_on_drain(self, websocket: ServerWebSocket) -> None:
        await self.server.drain_begun.wait()
        await websocket.close(1001, "server shutting down")

    async def _watch_disconnect(self, scope: trio.CancelScope) -> None:
        """Read ahead while the handler runs (its request's body all in); a connection that
        broke cancels it.

        EOF may be a half-close: the client may still read its answer. Before the answer's
        head, the client (HTTP/1.1) is probed with ``100 Continue`` until the head goes
        out: a client that closed for good resets the connection, a probe fails, and the
        handler is cancelled. EOF once a streamed answer is under way (no more probes can
        go), from an HTTP/1.0 client (which takes no 1xx) or before a websocket's ``101``
        cancels the handler at once.
        """
        try:
            while not self.eof:
                if len(self.conn.trailing_data[0]) > self.limits.max_header_bytes:
                    return  # enough pipelined data buffered; stop reading until we answer
                await self.receive()
            await self._after_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError, _ClientGone):
            self.broken = True
            scope.cancel()

    async def _after_eof(self) -> None:
        """The client sent EOF while its handler runs: probe it (HTTP/1.1), or raise
        :class:`_ClientGone` at once when it cannot be probed."""
        if not self._probes:
            raise _ClientGone
        await self._probe()

    async def _probe(self) -> None:
        """Send ``100 Continue`` probes until the answer's head is out; raises
        :class:`_ClientGone` when one fails or a stream began before any was sent."""
        delay = PROBE_FIRST_DELAY_S
        probed = False
        while True:
            async with self._sending:
                if self.conn.our_state is not h1.SEND_RESPONSE:
                    if self.streaming and not probed:
                        raise _ClientGone  # hung up mid-stream: nothing can tell us otherwise
                    return  # the answer's own sends tell whether the client is still there
                await self._send_locked(
                    h1.InformationalResponse(status_code=100, headers=[], reason=b"Continue")
                )
            probed = True
            await trio.sleep(delay)
            delay = min(delay * 2, PROBE_MAX_DELAY_S)

    async def _send_reply(self, reply: HTTPReply, *, head: bool, close: bool = False) -> bool:
        """Send ``reply`` (only its head when answering ``HEAD``; with ``connection: close``
        when ``close`` or draining); whether it went out whole. An iterator body is closed
        however this ends. Raises :class:`_ClientGone`."""
        body = reply.body
        headers = response_headers(reply, head=head, close=close or self.server.draining)
        response = h1.Response(
            status_code=reply.status, headers=headers, reason=reason_phrase(reply.status)
        )
        self.streaming = not isinstance(body, bytes) and not head
        try:
            if isinstance(body, bytes):
                if body and not head:
                    await self.send(response, h1.Data(data=body), h1.EndOfMessage())
                else:
                    await self.send(response, h1.EndOfMessage())
                return True
            await self.send(response)
            if not head and not await self._send_chunks(body):
                return False
            await self.send(h1.EndOfMessage())
            return True
        finally:
            if not isinstance(body, bytes):
                await _close_body(body)

    async def _send_chunks(self, body: AsyncIterator[bytes]) -> bool:
        """Send ``body`` as it is produced; ``False`` when the producer failed."""
        chunks = aiter(body)
        while True:
            try:
                chunk = await anext(chunks)
            except StopAsyncIteration:
                return True
            except Exception:
                # the status is sent; all a client can be told now is that the body is cut
                # short: end the connection without the final chunk
                logger.debug("HTTP response body failed", exc_info=True)
                return False
            if chunk:
                await self.send(h1.Data(data=chunk))


# -- the server


class HTTPServer:
    """Serves HTTP (and websockets) with ``handler`` until drained or cancelled.

    Tasks (inside :meth:`serve` / :meth:`serve_listeners`): one accept loop per listener,
    and one task per connection, in a nursery of their own. Beyond
    ``limits.max_connections`` open connections a new one is answered 503 by the accept
    loop and closed, with no task. :meth:`drain` stops accepting, closes idle connections
    and open websockets (1001), and waits (bounded) for the requests in flight, whose
    answers close their connections;
    cancelling :meth:`serve` closes every connection and listener (requests in flight are
    cancelled, their response bodies closed).
    """

    def __init__(
        self,
        handler: Handler,
        limits: HTTPLimits | None = None,
        *,
        gate: Callable[[Mapping[str, str]], HTTPReply | None] | None = None,
    ) -> None:
        self.handler = handler
        self.limits = limits or HTTPLimits()
        #: sees each request's headers before its body is read; a reply it returns is sent
        #: instead of calling the handler (the control endpoint refuses a missing token so)
        self.gate = gate
        self.draining = False
        #: set when draining begins (open websockets are closed then)
        self.drain_begun = trio.Event()
        #: the cancel scopes of connections waiting for their next request
        self.idle: set[trio.CancelScope] = set()
        self._connections = 0
        self._closed = trio.lowlevel.ParkingLot()
        self._listening = trio.CancelScope()
        self._refusing = BurstWarning()
        self._failing_accepts = BurstWarning()

    async def serve(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 8000,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``host:port`` (``task_status.started(port)``); returns once drained and
        every connection is closed."""
        listeners = await trio.open_tcp_listeners(port, host=host)
        bound: int = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            await nursery.start(self.serve_listeners, listeners)
            task_status.started(bound)

    async def serve_listeners(
        self,
        listeners: Sequence[trio.abc.Listener[trio.abc.Stream]],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept on ``listeners`` (closed when this ends); returns once drained and every
        connection is closed."""
        async with trio.open_nursery() as connections:
            with self._listening:
                async with trio.open_nursery() as accepting:
                    for listener in listeners:
                        accepting.start_soon(self._accept_loop, listener, connections)
                    task_status.started()

    async def drain(self, timeout_s: float) -> None:
        """Stop taking connections and requests; wait up to ``timeout_s`` for the requests
        in flight to be answered."""
        self.draining = True
        self.drain_begun.set()
        self._listening.cancel()
        for waiting in list(self.idle):
            waiting.cancel()
        with trio.move_on_after(timeout_s):
            while self._connections:
                await self._closed.park()

    async def _accept_loop(
        self, listener: trio.abc.Listener[trio.abc.Stream], connections: trio.Nursery
    ) -> None:
        """Accept until cancelled: out of file descriptors (or memory), back off (0.1 s,
        doubling up to 1 s) with one warning per burst; at the connection bound, answer 503."""
        backoff = ACCEPT_BACKOFF_MIN_S
        async with listener:
            while True:
                try:
                    stream = await listener.accept()
                except OSError as exc:
                    if exc.errno not in ACCEPT_CAPACITY_ERRNOS:
                        raise
                    held = self._failing_accepts.due(trio.current_time())
                    if held is not None:
                        logger.warning(
                            "HTTP: cannot accept connections (%s); retrying with backoff "
                            "(%d more failures since the last warning)",
                            os.strerror(exc.errno or 0),
                            held,
                        )
                    await trio.sleep(backoff)
                    backoff = min(backoff * 2, ACCEPT_BACKOFF_MAX_S)
                    continue
                backoff = ACCEPT_BACKOFF_MIN_S
                if self._connections >= self.limits.max_connections:
                    await self._turn_away(stream)
                    continue
                self._connections += 1
                connections.start_soon(self._on_connection, stream)

    async def _turn_away(self, stream: trio.abc.Stream) -> None:
        """Answer 503 on a connection past the bound and close it (no task, no reading)."""
        held = self._refusing.due(trio.current_time())
        if held is not None:
            logger.warning(
                "HTTP: %d connections open, at max_connections; answering new ones 503 "
                "(%d more refused since the last warning)",
                self._connections,
                held,
            )
        # a fresh connection's send buffer takes the few bytes at once: the bound is a guard
        with trio.move_on_after(CLEANUP_S):
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await stream.send_all(OVERLOADED_RESPONSE)
        await _close_stream(stream)

    async def _on_connection(self, stream: trio.abc.Stream) -> None:
        connection = _Connection(stream, self)
        try:
            await connection.serve()
            await connection.linger()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception:  # why: one connection's failure must not stop the server
            logger.exception("HTTP connection failed")
        finally:
            connection.conn.release()
            await _close_stream(stream)
            self._connections -= 1
            self._closed.unpark_all()


async def serve_http(
    handler: Handler,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    limits: HTTPLimits | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve HTTP on ``host:port`` until cancelled; ``task_status.started(port)`` once
    listening (an :class:`HTTPServer` nobody drains)."""
    await HTTPServer(handler, limits).serve(host=host, port=port, task_status=task_status)
