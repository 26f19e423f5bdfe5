"""The HTTP/1.1 server alone (``trioserve._http.server``): a small handler, no replicas."""

from __future__ import annotations

import functools
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import h11
import httpx
import pytest
import trio
import trio.testing

from trioserve._http import h1
from trioserve._http.server import (
    BurstWarning,
    Handler,
    HTTPLimits,
    HTTPReply,
    HTTPServer,
    plain,
    reason_phrase,
    request_problem,
    response_headers,
    serve_http,
)
from trioserve._replica.http import Request

TIMEOUT_S = 5.0


@asynccontextmanager
async def open_server(handler: Handler, limits: HTTPLimits | None = None) -> AsyncIterator[int]:
    """Serve ``handler`` on 127.0.0.1 (a free port, yielded) for the block."""
    async with trio.open_nursery() as nursery:
        port = await nursery.start(
            functools.partial(serve_http, handler, host="127.0.0.1", port=0, limits=limits)
        )
        yield port
        nursery.cancel_scope.cancel()


async def echo(request: Request) -> HTTPReply:
    """Answers ``METHOD PATH BODY-LENGTH``."""
    await trio.lowlevel.checkpoint()
    return plain(200, f"{request.method} {request.path} {len(request.body)}")


def raw_request(target: str, *, method: str = "GET", body: bytes = b"") -> bytes:
    head = f"{method} {target} HTTP/1.1\r\nhost: test\r\ncontent-length: {len(body)}\r\n\r\n"
    return head.encode() + body


class RawClient:
    """A client on a raw Trio socket; h11 parses what the server answers."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    async def read_response(self) -> tuple[int, dict[str, str], bytes]:
        """The next response (for a request written raw): status, headers, whole body."""
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        # h11 only parses a response to a request it saw; the bytes already went out raw
        self.conn.send(h11.Request(method="GET", target="/", headers=[("host", "test")]))
        self.conn.send(h11.EndOfMessage())
        status = 0
        headers: dict[str, str] = {}
        body = b""
        while True:
            event = await self.next_event()
            if isinstance(event, h11.Response):
                status = event.status_code
                headers = {k.decode(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                body += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return status, headers, body

    async def next_event(self) -> object:
        with trio.fail_after(TIMEOUT_S):
            while True:
                event = self.conn.next_event()
                if event is not h11.NEED_DATA:
                    return event
                self.conn.receive_data(await self.stream.receive_some(65536))


async def read_to_eof(stream: trio.SocketStream) -> bytes:
    """Everything the server sends until it closes the connection."""
    data = b""
    with trio.fail_after(TIMEOUT_S):
        while chunk := await stream.receive_some(65536):
            data += chunk
    return data


def status_of(raw: bytes) -> int:
    assert raw.startswith(b"HTTP/1.1 "), raw
    return int(raw.split(b" ", 2)[1])


async def test_serve_http_keeps_connection_alive() -> None:
    """Several requests on one connection each get their answer; the connection stays open."""
    async with open_server(echo) as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        client = RawClient(stream)
        for i in range(3):
            await stream.send_all(raw_request(f"/ka/{i}", method="POST", body=b"x" * i))
            status, headers, body = await client.read_response()
            assert (status, body) == (200, f"POST /ka/{i} {i}".encode())
            assert headers.get("connection") != "close"
        await stream.aclose()


async def test_serve_http_answers_pipelined_requests_in_order() -> None:
    """Two requests written back to back get two responses, in order, one at a time."""
    order: list[str] = []
    running = 0
    most_running = 0

    async def handler(request: Request) -> HTTPReply:
        nonlocal running, most_running
        running += 1
        most_running = max(most_running, running)
        order.append(request.path)
        await trio.lowlevel.checkpoint()
        running -= 1
        return plain(200, f"answer to {request.path}")

    async with open_server(handler) as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        client = RawClient(stream)
        await stream.send_all(raw_request("/first") + raw_request("/second"))
        first = await client.read_response()
        second = await client.read_response()
        await stream.aclose()
    assert (first[0], first[2]) == (200, b"answer to /first")
    assert (second[0], second[2]) == (200, b"answer to /second")
    assert order == ["/first", "/second"]
    assert most_running == 1


async def test_serve_http_rejects_malformed_request_and_keeps_serving() -> None:
    """Garbage gets a 400 and its connection closed; the next client is served normally."""
    seen: list[str] = []

    async def handler(request: Request) -> HTTPReply:
        seen.append(request.path)
        return await echo(request)

    async with open_server(handler) as port:
        bad = await trio.open_tcp_stream("127.0.0.1", port)
        await bad.send_all(b"THIS IS NOT HTTP\r\n\r\n")
        raw = await read_to_eof(bad)
        await bad.aclose()
        assert status_of(raw) == 400
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            response = await http.get("/after")
        assert (response.status_code, response.text) == (200, "GET /after 0")
    assert seen == ["/after"]


async def test_serve_http_rejects_headers_past_the_limit() -> None:
    """A header block that keeps growing past ``max_header_bytes`` is refused (431/400)."""
    seen: list[str] = []

    async def handler(request: Request) -> HTTPReply:
        seen.append(request.path)
        return await echo(request)

    async with open_server(handler, HTTPLimits(max_header_bytes=1024)) as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        # no blank line: the block is never complete, only too long
        await stream.send_all(b"GET /big HTTP/1.1\r\nhost: test\r\nx-big: " + b"a" * 2000)
        raw = await read_to_eof(stream)
        await stream.aclose()
    assert status_of(raw) in (431, 400)
    assert seen == []


async def test_serve_http_rejects_complete_header_block_past_the_limit() -> None:
    """A complete header block larger than ``max_header_bytes`` is refused (431/400)."""
    seen: list[str] = []

    async def handler(request: Request) -> HTTPReply:
        seen.append(request.path)
        return await echo(request)

    async with open_server(handler, HTTPLimits(max_header_bytes=1024)) as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(
            b"GET /big HTTP/1.1\r\nhost: test\r\nx-big: "
            + b"a" * 2000
            + b"\r\nconnection: close\r\n\r\n"
        )
        raw = await read_to_eof(stream)
        await stream.aclose()
    assert seen == []
    assert status_of(raw) in (431, 400)


async def test_serve_http_rejects_body_past_the_limit() -> None:
    """A body over ``max_body_bytes`` gets 413 (declared or chunked); one at the limit is read."""
    seen: list[str] = []

    async def handler(request: Request) -> HTTPReply:
        seen.append(request.path)
        return await echo(request)

    async with open_server(handler, HTTPLimits(max_body_bytes=100)) as port:
        declared = await trio.open_tcp_stream("127.0.0.1", port)
        await declared.send_all(raw_request("/declared", method="POST", body=b"a" * 101))
        raw_declared = await read_to_eof(declared)
        await declared.aclose()

        chunked = await trio.open_tcp_stream("127.0.0.1", port)
        await chunked.send_all(
            b"POST /chunked HTTP/1.1\r\nhost: test\r\ntransfer-encoding: chunked\r\n\r\n"
            + b"64\r\n" + b"a" * 100 + b"\r\n"  # 100 bytes: at the limit so far
            + b"1\r\na\r\n0\r\n\r\n"  # one more: past it
        )  # fmt: skip
        raw_chunked = await read_to_eof(chunked)
        await chunked.aclose()

        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            response = await http.post("/at-limit", content=b"a" * 100)
    assert status_of(raw_declared) == 413
    assert status_of(raw_chunked) == 413
    assert (response.status_code, response.text) == (200, "POST /at-limit 100")
    assert seen == ["/at-limit"]


async def test_serve_http_streams_chunks_as_produced() -> None:
    """An async-iterator body goes out chunked; the first chunk arrives before the next exists."""
    go_on = trio.Event()

    async def chunks() -> AsyncIterator[bytes]:
        yield b"one;"
        await go_on.wait()
        yield b"two"

    async def handler(request: Request) -> HTTPReply:
        await trio.lowlevel.checkpoint()
        return HTTPReply(200, [("content-type", "text/plain")], chunks())

    async with open_server(handler) as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        client = RawClient(stream)
        await stream.send_all(raw_request("/stream"))
        client.conn.send(h11.Request(method="GET", target="/", headers=[("host", "test")]))
        client.conn.send(h11.EndOfMessage())
        head = await client.next_event()
        assert isinstance(head, h11.Response)
        assert head.status_code == 200
        assert (b"transfer-encoding", b"chunked") in list(head.headers)
        first = await client.next_event()
        assert isinstance(first, h11.Data)
        assert bytes(first.data) == b"one;"
        assert not go_on.is_set()
        go_on.set()
        second = await client.next_event()
        assert isinstance(second, h11.Data)
        assert bytes(second.data) == b"two"
        assert isinstance(await client.next_event(), h11.EndOfMessage)
        await stream.aclose()


async def test_serve_http_body_error_ends_only_that_response() -> None:
    """A body iterator that raises cuts its own response short (no final chunk); the server
    keeps serving."""

    async def broken() -> AsyncIterator[bytes]:
        yield b"partial"
        raise RuntimeError("the producer broke")

    async def handler(request: Request) -> HTTPReply:
        await trio.lowlevel.checkpoint()
        if request.path == "/broken":
            return HTTPReply(200, [("content-type", "text/plain")], broken())
        return plain(200, "fine")

    async with open_server(handler) as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(raw_request("/broken"))
        raw = await read_to_eof(stream)
        await stream.aclose()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            after = await http.get("/after")
    assert status_of(raw) == 200
    assert b"partial" in raw
    assert not raw.endswith(b"0\r\n\r\n")  # the client can tell the body is incomplete
    assert (after.status_code, after.text) == (200, "fine")


async def test_serve_http_cancels_handler_when_client_disconnects() -> None:
    """A client that goes away mid-request (closes its socket) cancels its handler (no work
    for nobody): the server's probe after the EOF finds the connection reset."""
    started = trio.Event()
    cancelled = trio.Event()

    async def handler(request: Request) -> HTTPReply:
        started.set()
        try:
            await trio.sleep_forever()
        except trio.Cancelled:  # why: the test observes the cancellation; re-raised
            cancelled.set()
            raise

    async with open_server(handler) as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(raw_request("/wait"))
        with trio.fail_after(TIMEOUT_S):
            await started.wait()
        await stream.aclose()
        with trio.fail_after(TIMEOUT_S):
            await cancelled.wait()


async def test_serve_http_slow_client_does_not_block_others() -> None:
    """A client that never finishes its headers does not delay another client."""
    seen: list[str] = []

    async def handler(request: Request) -> HTTPReply:
        seen.append(request.path)
        return await echo(request)

    async with open_server(handler) as port:
        slow = await trio.open_tcp_stream("127.0.0.1", port)
        await slow.send_all(b"GET /slow HTTP/1.1\r\nhost: test\r\n")  # and nothing more
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            with trio.fail_after(TIMEOUT_S):
                response = await http.get("/fast")
        assert (response.status_code, response.text) == (200, "GET /fast 0")
        await slow.aclose()
    assert seen == ["/fast"]


@pytest.mark.autojump
async def test_serve_http_closes_connection_stalled_in_headers() -> None:
    """A client stuck in its headers past ``header_timeout_s`` is disconnected."""
    async with open_server(echo, HTTPLimits(header_timeout_s=0.1)) as port:
        slow = await trio.open_tcp_stream("127.0.0.1", port)
        await slow.send_all(b"GET /slow HTTP/1.1\r\nhost: test\r\n")
        assert await read_to_eof(slow) == b""
        await slow.aclose()


@pytest.mark.autojump
async def test_serve_http_closes_keep_alive_connection_idle_past_its_timeout() -> None:
    """A keep-alive connection with no next request is closed after ``idle_timeout_s``,
    not before; one that sends its next request in time is served."""
    limits = HTTPLimits(idle_timeout_s=TIMEOUT_S / 2)
    async with open_server(echo, limits) as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        client = RawClient(stream)
        await stream.send_all(raw_request("/first"))
        assert (await client.read_response())[0] == 200
        await trio.sleep(limits.idle_timeout_s - 1)  # virtual time: idle, still in time
        await stream.send_all(raw_request("/second"))
        assert (await client.read_response())[2] == b"GET /second 0"
        idle_from = trio.current_time()
        assert await read_to_eof(stream) == b""
        assert limits.idle_timeout_s <= trio.current_time() - idle_from <= limits.idle_timeout_s + 1
        await stream.aclose()


@pytest.mark.autojump
async def test_serve_http_body_sent_too_slowly_gets_408() -> None:
    """A body that does not arrive within ``body_timeout_s`` gets 408 and the connection
    is closed."""
    async with open_server(echo, HTTPLimits(body_timeout_s=TIMEOUT_S / 2)) as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(
            b"POST /upload HTTP/1.1\r\nhost: test\r\ncontent-length: 10\r\n\r\n12"
        )
        raw = await read_to_eof(stream)
        await stream.aclose()
    assert status_of(raw) == 408
    assert raw.endswith(b"request body timed out")


@pytest.mark.autojump
async def test_serve_http_slow_handler_outlives_header_timeout() -> None:
    """A handler may take longer than ``header_timeout_s``: that limit is for the headers."""

    async def handler(request: Request) -> HTTPReply:
        await trio.sleep(0.5)  # virtual time: work longer than the header timeout below
        return plain(200, "worth the wait")

    async with open_server(handler, HTTPLimits(header_timeout_s=0.1)) as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"GET /slow HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n")
        raw = await read_to_eof(stream)
        await stream.aclose()
    assert status_of(raw) == 200
    assert raw.endswith(b"worth the wait")


async def test_http_server_drain_answers_requests_in_flight_and_closes_the_rest() -> None:
    """Draining refuses new connections and closes idle keep-alive ones at once, while a
    request in flight still gets its whole answer (saying ``connection: close``); the
    drain ends when that answer has gone."""
    started = trio.Event()
    release = trio.Event()

    async def slow(request: Request) -> HTTPReply:
        started.set()
        await release.wait()
        return plain(200, f"finished {request.path}")

    server = HTTPServer(slow)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(functools.partial(server.serve, host="127.0.0.1", port=0))
        idle = await trio.open_tcp_stream("127.0.0.1", port)
        busy = await trio.open_tcp_stream("127.0.0.1", port)
        await busy.send_all(raw_request("/busy"))
        await started.wait()
        await trio.testing.wait_all_tasks_blocked()  # the idle connection waits for a request

        drained = trio.Event()

        async def drain() -> None:
            await server.drain(TIMEOUT_S)
            drained.set()

        nursery.start_soon(drain)
        assert await read_to_eof(idle) == b""  # closed without an answer
        with pytest.raises(OSError, match="all attempts to connect"):
            await trio.open_tcp_stream("127.0.0.1", port)
        assert not drained.is_set()
        release.set()
        status, headers, body = await RawClient(busy).read_response()
        assert (status, body, headers["connection"]) == (200, b"finished /busy", "close")
        assert await read_to_eof(busy) == b""
        with trio.fail_after(TIMEOUT_S):
            await drained.wait()
        await idle.aclose()
        await busy.aclose()
    # serve() returned by itself once drained: the nursery closed without a cancel


@pytest.mark.autojump
async def test_http_server_drain_gives_up_after_its_timeout() -> None:
    """A request that outlasts the drain timeout does not hold the drain up."""

    async def forever(_request: Request) -> HTTPReply:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    server = HTTPServer(forever)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(functools.partial(server.serve, host="127.0.0.1", port=0))
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(raw_request("/forever"))
        await trio.testing.wait_all_tasks_blocked()
        with trio.fail_after(TIMEOUT_S):
            await server.drain(0.2)
        nursery.cancel_scope.cancel()
    await stream.aclose()


def _head(method: str, version: str, headers: list[tuple[str, str]]) -> h11.Request:
    return h11.Request(method=method, target="/", headers=headers, http_version=version)


def test_request_problem_refuses_what_h11_lets_through() -> None:
    """Heads h11 parses but the server must refuse: non-1.x versions (505), both framings or
    chunked HTTP/1.0 (400), ``CONNECT`` (501); HTTP/1.2 is served as 1.1."""
    host = [("host", "t")]
    assert request_problem(_head("GET", "1.1", host), 1024) is None
    assert request_problem(_head("GET", "1.2", host), 1024) is None
    assert request_problem(_head("GET", "9.9", host), 1024) == (505, ANY_TEXT)
    assert request_problem(_head("PRI", "2.0", []), 1024) == (505, ANY_TEXT)
    both = [*host, ("content-length", "3"), ("transfer-encoding", "chunked")]
    assert request_problem(_head("POST", "1.1", both), 1024) == (400, ANY_TEXT)
    chunked_10 = [("transfer-encoding", "chunked")]
    assert request_problem(_head("POST", "1.0", chunked_10), 1024) == (400, ANY_TEXT)
    assert request_problem(_head("CONNECT", "1.1", host), 1024) == (501, ANY_TEXT)
    big = [*host, ("x-big", "a" * 2000)]
    assert request_problem(_head("GET", "1.1", big), 1024) == (431, ANY_TEXT)


class _AnyText(str):
    def __eq__(self, other: object) -> bool:
        return isinstance(other, str)

    __hash__ = str.__hash__


ANY_TEXT = _AnyText()


def test_reason_phrase_names_known_codes() -> None:
    """Status lines get the standard phrase; a code without one gets an empty phrase."""
    assert reason_phrase(200) == b"OK"
    assert reason_phrase(503) == b"Service Unavailable"
    assert reason_phrase(599) == b""


def test_response_headers_frame_the_body() -> None:
    """The server frames the body itself (a handler's framing headers are dropped), except a
    ``HEAD`` answer's own length with an empty body."""
    reply = HTTPReply(200, [("content-length", "99"), ("x-a", "1")], b"abc")
    assert response_headers(reply, head=False, close=False) == [
        ("x-a", "1"),
        ("content-length", "3"),
    ]
    head = HTTPReply(200, [("Content-Length", "99")], b"")
    assert response_headers(head, head=True, close=True) == [
        ("Content-Length", "99"),
        ("connection", "close"),
    ]


def test_burst_warning_is_due_once_per_interval() -> None:
    """A burst logs one line per interval, the next one counting what was held back."""
    warning = BurstWarning(interval_s=10)
    assert warning.due(100.0) == 0
    assert [warning.due(100.0 + i) for i in range(1, 4)] == [None, None, None]
    assert warning.due(110.0) == 3
    assert warning.due(125.0) == 0


@pytest.mark.parametrize("field", ["send_timeout_s", "max_connections"])
def test_http_limits_rejects_non_positive_bounds(field: str) -> None:
    """``send_timeout_s`` and ``max_connections`` must be positive; the message shows the value."""
    with pytest.raises(ValueError, match=f"{field} must be > 0, got 0"):
        HTTPLimits(**{field: 0})


def _server_connections() -> int:
    return sum(1 for o in gc.get_objects() if isinstance(o, h1.ServerConnection))


async def test_serve_http_leaves_no_garbage_cycle_per_connection() -> None:
    """A closed connection's state is freed as soon as the connection ends, not at the next
    full garbage collection (which, on a busy server, is a pause of tens of ms)."""
    gc.disable()
    try:
        async with open_server(echo) as port:
            before = _server_connections()
            for i in range(3):
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                await stream.send_all(
                    f"GET /{i} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n".encode()
                )
                assert status_of(await read_to_eof(stream)) == 200
                await stream.aclose()
            await trio.testing.wait_all_tasks_blocked()
            assert _server_connections() == before
    finally:
        gc.enable()
