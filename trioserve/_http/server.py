"""An HTTP/1.1 server on Trio streams, with h11 doing the protocol.

Keep-alive and pipelining-safe (one request at a time per connection, in order), limits on
header and body size, idle and request timeouts, and a client that disconnects cancels its
request's handler. Malformed HTTP gets a 400 and closes only that connection. Draining stops
accepting connections, closes idle ones, and lets requests in flight finish.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

import attrs
import h11
import trio

from .._replica.http import Request

RECEIVE_SIZE = 64 * 1024
logger = logging.getLogger("trioserve.http")


@attrs.frozen(kw_only=True)
class HTTPLimits:
    max_header_bytes: int = 64 * 1024
    max_body_bytes: int = 64 * 1024 * 1024
    idle_timeout_s: float = 30.0
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0


@attrs.define
class HTTPReply:
    """What a handler answers: status, headers, and a body (bytes or an async iterator)."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes | AsyncIterator[bytes] = b""


Handler = Callable[[Request], Awaitable[HTTPReply]]


class _ClientGone(Exception):
    pass


def _head_size(event: h11.Request) -> int:
    return len(event.target) + sum(len(k) + len(v) + 4 for k, v in event.headers)


def plain(status: int, text: str, extra: list[tuple[str, str]] | None = None) -> HTTPReply:
    headers = [("content-type", "text/plain; charset=utf-8"), *(extra or [])]
    return HTTPReply(status, headers, text.encode())


class _Connection:
    def __init__(self, stream: trio.SocketStream, server: HTTPServer) -> None:
        self.stream = stream
        self.server = server
        self.handler = server.handler
        self.limits = server.limits
        self.conn = h11.Connection(
            h11.SERVER, max_incomplete_event_size=self.limits.max_header_bytes
        )
        self.eof = False

    async def _fill(self) -> None:
        if self.eof:
            raise _ClientGone
        data = await self.stream.receive_some(RECEIVE_SIZE)
        if not data:
            self.eof = True
        self.conn.receive_data(data)

    async def next_event(self) -> object:
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                await self._fill()
                continue
            return event

    async def send(self, event: h11.Event) -> None:
        data = self.conn.send(event)
        if data:
            await self.stream.send_all(data)

    async def serve(self) -> None:
        timeout = self.limits.header_timeout_s
        idle = self.server.idle
        while not self.server.draining:
            event: object = None
            with trio.move_on_after(timeout) as waiting:
                idle.add(waiting)  # until a request comes, draining may close the connection
                try:
                    event = await self.next_event()
                except h11.RemoteProtocolError as exc:
                    await self._refuse(exc.error_status_hint, f"bad request: {exc}")
                    return
                except _ClientGone:
                    return
                finally:
                    idle.discard(waiting)
            if not isinstance(event, h11.Request):
                return  # closed, or idle / header timeout: close quietly
            if _head_size(event) > self.limits.max_header_bytes:
                await self._refuse(431, "request header fields too large")
                return
            if not await self._handle(event):
                return
            if self.conn.our_state is h11.MUST_CLOSE or self.eof:
                return
            try:
                self.conn.start_next_cycle()
            except h11.LocalProtocolError:
                return
            timeout = self.limits.idle_timeout_s

    async def _refuse(self, status: int, text: str) -> None:
        if self.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        reply = plain(status, text, [("connection", "close")])
        with contextlib.suppress(
            h11.LocalProtocolError, trio.BrokenResourceError, trio.ClosedResourceError
        ):
            await self._send_reply(reply)

    async def _read_body(self, declared: int | None) -> bytes | None:
        if declared is not None and declared > self.limits.max_body_bytes:
            await self._refuse(413, f"body exceeds {self.limits.max_body_bytes} bytes")
            return None
        parts: list[bytes] = []
        size = 0
        with trio.move_on_after(self.limits.body_timeout_s):
            while True:
                event = await self.next_event()
                if isinstance(event, h11.Data):
                    size += len(event.data)
                    if size > self.limits.max_body_bytes:
                        await self._refuse(413, f"body exceeds {self.limits.max_body_bytes} bytes")
                        return None
                    parts.append(bytes(event.data))
                elif isinstance(event, h11.EndOfMessage):
                    return b"".join(parts)
                else:
                    return None
        await self._refuse(408, "request body timed out")
        return None

    async def _handle(self, event: h11.Request) -> bool:
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
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await self._send_reply(refused)
                return False
        try:
            body = await self._read_body(int(declared) if declared else None)
        except h11.RemoteProtocolError as exc:
            await self._refuse(exc.error_status_hint, f"bad request: {exc}")
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
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_disconnect, nursery.cancel_scope)
            try:
                reply = await self.handler(request)
                await self._send_reply(reply)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.eof = True
            nursery.cancel_scope.cancel()
        return not self.eof

    async def _watch_disconnect(self, scope: trio.CancelScope) -> None:
        """Read ahead while the handler runs; EOF means the client left: cancel it."""
        try:
            while not self.eof:
                if self.conn.trailing_data[0] and len(self.conn.trailing_data[0]) > (
                    self.limits.max_header_bytes
                ):
                    return  # enough pipelined data buffered; stop reading until we answer
                data = await self.stream.receive_some(RECEIVE_SIZE)
                if not data:
                    self.eof = True
                    scope.cancel()
                    return
                self.conn.receive_data(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.eof = True
            scope.cancel()

    async def _send_reply(self, reply: HTTPReply) -> None:
        headers = list(reply.headers)
        if self.server.draining:
            headers.append(("connection", "close"))  # the last answer on this connection
        if isinstance(reply.body, bytes):
            headers.append(("content-length", str(len(reply.body))))
            await self.send(h11.Response(status_code=reply.status, headers=headers))
            if reply.body:
                await self.send(h11.Data(data=reply.body))
        else:
            headers.append(("transfer-encoding", "chunked"))
            await self.send(h11.Response(status_code=reply.status, headers=headers))
            try:
                async for chunk in reply.body:
                    if chunk:
                        await self.send(h11.Data(data=chunk))
            except Exception:
                # the status is sent; all a client can be told now is that the body is cut
                # short: end the connection without the final chunk
                self.eof = True
                return
        await self.send(h11.EndOfMessage())


class HTTPServer:
    """Serves HTTP with ``handler`` until drained or cancelled.

    Tasks (inside :meth:`serve`): the listeners and one task per connection, in its own
    nursery. :meth:`drain` stops accepting, closes idle connections and waits (bounded) for
    the requests in flight, whose answers close their connections; cancelling :meth:`serve`
    closes every connection (requests in flight are cancelled).
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
            task_status.started(bound)
            with self._listening:
                await trio.serve_listeners(self._on_connection, listeners, handler_nursery=nursery)

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

    async def _on_connection(self, stream: trio.SocketStream) -> None:
        self._connections += 1
        try:
            await _Connection(stream, self).serve()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception:  # why: one connection's failure must not stop the server
            logger.exception("HTTP connection failed")
        finally:
            with trio.move_on_after(1) as cleanup:
                cleanup.shield = True  # why: close the socket even when cancelled
                await stream.aclose()
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
