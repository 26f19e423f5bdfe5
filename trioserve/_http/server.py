"""An HTTP/1.1 server on Trio streams, with h11 doing the protocol.

Keep-alive and pipelining-safe (one request at a time per connection, in order), limits on
header and body size, idle, request-head, body and send timeouts, a bound on open
connections, and a client whose connection breaks cancels its request's handler. A client
that only half-closes (shuts down its sending side after a complete request) still gets its
answer. Malformed HTTP gets a 400 (an unsupported HTTP version 505, ``CONNECT`` 501) and
closes only that connection; error bodies are fixed texts, never the request's bytes.
Draining stops accepting connections, closes idle ones, and lets requests in flight finish.

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
from typing import Any

import attrs
import h11
import trio

from .._replica.http import Request

RECEIVE_SIZE = 64 * 1024
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
#: after a client's EOF, the pause before the next ``100 Continue`` probe (doubling up to
#: the maximum): a peer that closed for good answers the first with a reset, so the second
#: fails (one round trip), while a half-closed peer takes them and waits for its answer
#: reading a body of known length, wake up only once this much of it (or its end) is in:
#: a client writing 1 byte at a time does not cost a wake-up per byte (``SO_RCVLOWAT``)
BODY_LOW_WATER = 16 * 1024
PROBE_FIRST_DELAY_S = 0.01
PROBE_MAX_DELAY_S = 1.0
logger = logging.getLogger("trioserve.http")


def _positive(_instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value > 0:
        raise ValueError(f"HTTPLimits.{attribute.name} must be > 0, got {value}")


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
    body_timeout_s: float = 60.0
    #: time allowed for each write to the client; a client that stops reading is cut off
    send_timeout_s: float = attrs.field(default=30.0, validator=_positive)
    #: open connections at most; beyond it a new one gets 503 at once. 512 leaves half of
    #: the usual default file-descriptor limit (1024) for replica links, listeners and logs
    max_connections: int = attrs.field(default=512, validator=_positive)


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


def _head_size(event: h11.Request) -> int:
    return len(event.target) + sum(len(k) + len(v) + 4 for k, v in event.headers)


def request_problem(event: h11.Request, max_header_bytes: int) -> tuple[int, str] | None:
    """Why a request head h11 accepted must still be refused (status and a fixed text, never
    the request's own bytes), or ``None``. Every refusal closes the connection."""
    major = event.http_version.split(b".", 1)[0]
    if major != b"1":  # RFC 9112 §2.3: 1.x with a higher minor is handled as 1.1
        return 505, "only HTTP/1.0 and HTTP/1.1 are supported"
    if _head_size(event) > max_header_bytes:
        return 431, "request header fields too large"
    names = {name for name, _ in event.headers}  # h11 lowercases header names
    if b"transfer-encoding" in names:
        if b"content-length" in names:  # RFC 9112 §6.1: a smuggling attempt, or broken
            return 400, "both content-length and transfer-encoding"
        if event.http_version == b"1.0":  # RFC 9112 §6.1: framing is faulty
            return 400, "transfer-encoding in an HTTP/1.0 request"
    if event.method == b"CONNECT":
        return 501, "CONNECT is not supported"
    return None


def protocol_error_status(exc: h11.RemoteProtocolError) -> int:
    """The status for a request h11 could not parse (its hint when it is a client error)."""
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
    conn = h11.Connection(h11.SERVER)
    reply = plain(503, "too many connections", [("retry-after", "1")])
    headers = response_headers(reply, head=False, close=True)
    assert isinstance(reply.body, bytes)
    return b"".join(
        conn.send(event) or b""
        for event in (
            h11.Response(status_code=503, headers=headers, reason=reason_phrase(503)),
            h11.Data(data=reply.body),
            h11.EndOfMessage(),
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


class _Connection:
    """One client connection, served in the task that calls :meth:`serve`; while a handler
    runs, a second task (in a nursery of that task) reads ahead to notice a broken
    connection. Cancelled midway, nothing remains: the handler is cancelled and a response
    body is closed (the caller closes the stream)."""

    def __init__(self, stream: trio.abc.Stream, server: HTTPServer) -> None:
        self.stream = stream
        self.server = server
        self.handler = server.handler
        self.limits = server.limits
        self.conn = h11.Connection(
            h11.SERVER, max_incomplete_event_size=self.limits.max_header_bytes
        )
        #: the client sent EOF: it half-closed (answers can still go out) or left
        self.eof = False
        #: the connection broke while a handler ran (the handler was cancelled)
        self.broken = False
        #: the answer in progress has an iterator body (its producer may wait for long)
        self.streaming = False
        self._sending = trio.Lock()
        self._low_water = 1

    async def _receive(self) -> None:
        data = await self.stream.receive_some(RECEIVE_SIZE)
        if not data:
            self.eof = True
        self.conn.receive_data(bytes(data) if isinstance(data, bytearray) else data)

    async def next_event(self) -> object:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            if self.eof:
                raise _ClientGone
            await self._receive()

    async def send(self, event: h11.Event) -> None:
        async with self._sending:
            await self._send_locked(event)

    async def _send_locked(self, event: h11.Event) -> None:
        data = self.conn.send(event)
        if not data:
            return
        with trio.move_on_after(self.limits.send_timeout_s) as timer:
            try:
                await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise _ClientGone from exc
        if timer.cancelled_caught:
            raise _ClientGone(f"not reading: a send took over {self.limits.send_timeout_s}s")

    async def serve(self) -> None:
        first = True
        while not self.server.draining:
            try:
                event = await self._read_head(first)
            except h11.RemoteProtocolError as exc:
                logger.debug("bad HTTP request: %r", exc)
                status = protocol_error_status(exc)
                await self._refuse(status, http.HTTPStatus(status).phrase.lower())
                return
            except _ClientGone:
                return
            if not isinstance(event, h11.Request):
                return  # closed, or an idle / head timeout: close quietly
            problem = request_problem(event, self.limits.max_header_bytes)
            if problem is not None:
                await self._refuse(*problem)
                return
            if not await self._handle(event):
                return
            if self.conn.our_state is h11.MUST_CLOSE:
                return
            try:
                self.conn.start_next_cycle()
            except h11.LocalProtocolError:
                return
            first = False

    async def _read_head(self, first: bool) -> object:
        """The next request head (or ``ConnectionClosed``); ``None`` on a timeout. The first
        has ``header_timeout_s`` from the start; a later one ``idle_timeout_s`` until its
        first byte, then ``header_timeout_s`` from that byte."""
        limits = self.limits
        idle = self.server.idle
        with trio.move_on_after(
            limits.header_timeout_s if first else limits.idle_timeout_s
        ) as waiting:
            idle.add(waiting)  # until a request comes, draining may close the connection
            try:
                if not first:
                    while not self.eof and not self.conn.trailing_data[0]:
                        await self._receive()
                    waiting.deadline = trio.current_time() + limits.header_timeout_s
                return await self.next_event()
            finally:
                idle.discard(waiting)
        return None

    async def _refuse(self, status: int, text: str) -> None:
        """Answer ``status`` with a fixed ``text`` and ``connection: close``, if an answer
        can still go out."""
        if self.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        reply = plain(status, text, [("connection", "close")])
        with contextlib.suppress(h11.LocalProtocolError, _ClientGone):
            await self._send_reply(reply, head=False)

    async def _read_body(self, declared: int | None, chunked: bool) -> bytes | None:
        """The request body, or ``None`` once refused (413, 408) or the client left."""
        limit = self.limits.max_body_bytes
        if declared is not None and declared > limit:
            await self._refuse(413, f"body exceeds {limit} bytes")
            return None
        if self.conn.they_are_waiting_for_100_continue and (chunked or (declared or 0) > 0):
            await self.send(
                h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue")
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
            if event is h11.NEED_DATA:
                if self.eof:
                    raise _ClientGone
                if declared is not None:
                    self._set_low_water(max(1, min(declared - len(body), BODY_LOW_WATER)))
                await self._receive()
                parsed = 0
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > limit:
                    return 413
                parsed += 1
                if parsed >= EVENTS_PER_CHECKPOINT:
                    await trio.lowlevel.checkpoint()
                    parsed = 0
            elif isinstance(event, h11.EndOfMessage):
                return bytes(body)
            else:
                return 0

    async def _handle(self, event: h11.Request) -> bool:
        """Read the body, run the handler, send its answer; whether the connection goes on."""
        headers: dict[str, str] = {}
        for name, value in event.headers:
            key = name.decode("latin-1")
            text = value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        declared = headers.get("content-length")
        gate = self.server.gate
        if gate is not None:
            refused = gate(headers)
            if refused is not None:
                # answered before the body is read: the connection cannot be reused
                refused.headers = [*refused.headers, ("connection", "close")]
                with contextlib.suppress(h11.LocalProtocolError, _ClientGone):
                    await self._send_reply(refused, head=event.method == b"HEAD")
                return False
        try:
            body = await self._read_body(
                int(declared) if declared else None, "transfer-encoding" in headers
            )
        except h11.RemoteProtocolError as exc:
            logger.debug("bad HTTP request body: %r", exc)
            status = protocol_error_status(exc)
            await self._refuse(status, http.HTTPStatus(status).phrase.lower())
            return False
        except _ClientGone:
            return False
        if body is None:
            return False
        target = event.target.decode("latin-1")
        path, _, query = target.partition("?")
        request = Request(
            method=event.method.decode("ascii"),
            path=path,
            query_string=query,
            headers=headers,
            body=body,
        )
        go_on = False
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_disconnect, nursery.cancel_scope, event.http_version)
            go_on = await self._answer(request, head=event.method == b"HEAD")
            nursery.cancel_scope.cancel()
        return go_on and not self.broken

    async def _answer(self, request: Request, *, head: bool) -> bool:
        try:
            reply = await self.handler(request)
        except Exception:  # a handler's bug fails its request, not the connection's peer
            logger.exception("HTTP handler failed on %s %s", request.method, request.path)
            reply = plain(500, "internal server error", [("connection", "close")])
        try:
            return await self._send_reply(reply, head=head)
        except _ClientGone:
            return False
        except h11.LocalProtocolError:
            logger.exception("invalid HTTP response (status %d)", reply.status)
            return False

    async def _watch_disconnect(self, scope: trio.CancelScope, http_version: bytes) -> None:
        """Read ahead while the handler runs; a connection that broke cancels it.

        EOF may be a half-close: the client may still read its answer. Before the answer's
        head, the client (HTTP/1.1) is probed with ``100 Continue`` until the head goes
        out: a client that closed for good resets the connection, a probe fails, and the
        handler is cancelled. EOF once a streamed answer is under way (no more probes can
        go) or from an HTTP/1.0 client (which takes no 1xx) cancels the handler at once.
        """
        try:
            while not self.eof:
                if len(self.conn.trailing_data[0]) > self.limits.max_header_bytes:
                    return  # enough pipelined data buffered; stop reading until we answer
                await self._receive()
            if http_version == b"1.0":
                raise _ClientGone
            await self._probe()
        except (trio.BrokenResourceError, trio.ClosedResourceError, _ClientGone):
            self.broken = True
            scope.cancel()

    async def _probe(self) -> None:
        """Send ``100 Continue`` probes until the answer's head is out; raises
        :class:`_ClientGone` when one fails or a stream began before any was sent."""
        delay = PROBE_FIRST_DELAY_S
        probed = False
        while True:
            async with self._sending:
                if self.conn.our_state is not h11.SEND_RESPONSE:
                    if self.streaming and not probed:
                        raise _ClientGone  # hung up mid-stream: nothing can tell us otherwise
                    return  # the answer's own sends tell whether the client is still there
                await self._send_locked(
                    h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue")
                )
            probed = True
            await trio.sleep(delay)
            delay = min(delay * 2, PROBE_MAX_DELAY_S)

    async def _send_reply(self, reply: HTTPReply, *, head: bool) -> bool:
        """Send ``reply`` (only its head when answering ``HEAD``); whether it went out whole.
        An iterator body is closed however this ends. Raises :class:`_ClientGone`."""
        body = reply.body
        headers = response_headers(reply, head=head, close=self.server.draining)
        response = h11.Response(
            status_code=reply.status, headers=headers, reason=reason_phrase(reply.status)
        )
        self.streaming = not isinstance(body, bytes) and not head
        try:
            await self.send(response)
            if isinstance(body, bytes):
                if body and not head:
                    await self.send(h11.Data(data=body))
            elif not head and not await self._send_chunks(body):
                return False
            await self.send(h11.EndOfMessage())
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
                await self.send(h11.Data(data=chunk))


# -- the server


class HTTPServer:
    """Serves HTTP with ``handler`` until drained or cancelled.

    Tasks (inside :meth:`serve` / :meth:`serve_listeners`): one accept loop per listener,
    and one task per connection, in a nursery of their own. Beyond
    ``limits.max_connections`` open connections a new one is answered 503 by the accept
    loop and closed, with no task. :meth:`drain` stops accepting, closes idle connections
    and waits (bounded) for the requests in flight, whose answers close their connections;
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
        try:
            await _Connection(stream, self).serve()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception:  # why: one connection's failure must not stop the server
            logger.exception("HTTP connection failed")
        finally:
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
