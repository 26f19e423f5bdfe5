"""WebSocket upgrades on the HTTP server (``HTTPRequest.websocket``), against
``HTTPServer`` with small handlers: trio-websocket's client for ordinary exchanges, a raw
wsproto client on a Trio socket for frames the other cannot send."""

from __future__ import annotations

import functools
from collections import deque

import pytest
import trio
import trio.testing
import trio_websocket
from wsproto import WSConnection
from wsproto.connection import ConnectionType
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    TextMessage,
)
from wsproto.events import Request as Handshake

from trioserve._http.server import HTTPLimits, HTTPReply, HTTPServer, plain
from trioserve._http.websocket import ServerWebSocket, WebSocketDisconnect
from trioserve._replica.http import Request

from .test_server import TIMEOUT_S, open_server, read_to_eof, status_of
from .test_server_edge_cases import read_responses


class EchoServer:
    """A handler accepting websockets at ``/ws`` (refusing ``/deny`` with 403) and echoing
    every message; it records how its websockets ended."""

    def __init__(self) -> None:
        self.disconnects: list[tuple[int, str]] = []
        self.ended = trio.Event()
        self.requests: list[Request] = []

    async def __call__(self, request: Request) -> HTTPReply:
        self.requests.append(request)
        ws = request.websocket
        if ws is None:
            return plain(200, "plain HTTP")
        assert isinstance(ws, ServerWebSocket)
        if request.path == "/deny":
            return plain(403, "no websockets for you")
        await ws.accept(ws.subprotocols[-1] if ws.subprotocols else None)
        try:
            while True:
                await ws.send(await ws.receive())
        except WebSocketDisconnect as exc:
            self.disconnects.append((exc.code, exc.reason))
        finally:
            self.ended.set()
        return plain(200, "dropped: the websocket was accepted")

    async def wait_ended(self) -> list[tuple[int, str]]:
        with trio.fail_after(TIMEOUT_S):
            await self.ended.wait()
        return self.disconnects


class RawWebSocket:
    """A websocket client on a raw Trio socket, with wsproto doing the frames."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.events: deque[Event] = deque()

    @classmethod
    async def connect(cls, port: int, target: str = "/ws") -> RawWebSocket:
        client = cls(await trio.open_tcp_stream("127.0.0.1", port))
        await client.send(Handshake(host="test", target=target))
        assert isinstance(await client.next_event(), AcceptConnection)
        return client

    async def send(self, event: Event) -> None:
        await self.stream.send_all(self.ws.send(event))

    async def next_event(self) -> Event:
        with trio.fail_after(TIMEOUT_S):
            while not self.events:
                data = await self.stream.receive_some(65536)
                self.ws.receive_data(data or None)
                self.events.extend(self.ws.events())
        return self.events.popleft()


def handshake(version: str = "13", key: str | None = "dGhlIHNhbXBsZSBub25jZQ==") -> bytes:
    lines = [
        "GET /ws HTTP/1.1",
        "host: test",
        "upgrade: websocket",
        "connection: Upgrade",
        f"sec-websocket-version: {version}",
    ]
    if key is not None:
        lines.append(f"sec-websocket-key: {key}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def test_websocket_echoes_text_and_binary_messages() -> None:
    """An accepted websocket carries text as ``str`` and binary as ``bytes``, both ways; the
    request is the upgrade's, with the peer address."""
    echo = EchoServer()
    async with open_server(echo) as port:
        async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/ws?x=1") as ws:
            await ws.send_message("hello")
            assert await ws.get_message() == "hello"
            await ws.send_message(b"\x00\x01binary")
            assert await ws.get_message() == b"\x00\x01binary"
        assert await echo.wait_ended() == [(1000, "")]
    (request,) = echo.requests
    assert (request.method, request.path, request.query_string) == ("GET", "/ws", "x=1")
    assert request.client is not None
    assert request.client[0] == "127.0.0.1"


async def test_websocket_accept_picks_an_offered_subprotocol() -> None:
    """``accept(subprotocol)`` answers with one the client offered."""
    async with open_server(EchoServer()) as port:
        url = f"ws://127.0.0.1:{port}/ws"
        async with trio_websocket.open_websocket_url(url, subprotocols=["one", "two"]) as ws:
            assert ws.subprotocol == "two"


async def test_websocket_joins_a_fragmented_message() -> None:
    """A message sent in fragments reaches the handler whole."""
    async with open_server(EchoServer()) as port:
        client = await RawWebSocket.connect(port)
        await client.send(TextMessage(data="frag", message_finished=False))
        await client.send(TextMessage(data="ments", message_finished=False))
        await client.send(TextMessage(data=" joined", message_finished=True))
        event = await client.next_event()
        assert isinstance(event, TextMessage)
        assert (event.data, event.message_finished) == ("fragments joined", True)
        await client.stream.aclose()


async def test_websocket_answers_ping_with_pong() -> None:
    """A ping is answered with a pong carrying its payload, while the handler receives."""
    async with open_server(EchoServer()) as port:
        client = await RawWebSocket.connect(port)
        await client.send(Ping(payload=b"are you there"))
        event = await client.next_event()
        assert isinstance(event, Pong)
        assert event.payload == b"are you there"
        await client.stream.aclose()


async def test_websocket_message_past_the_limit_is_closed_1009() -> None:
    """A message (its fragments together) past ``max_websocket_message_bytes`` closes the
    websocket with 1009; ``receive()`` raises it; the connection is closed after."""
    echo = EchoServer()
    async with open_server(echo, HTTPLimits(max_websocket_message_bytes=1000)) as port:
        client = await RawWebSocket.connect(port)
        await client.send(BytesMessage(data=b"a" * 600, message_finished=False))
        await client.send(BytesMessage(data=b"b" * 600, message_finished=True))
        event = await client.next_event()
        assert isinstance(event, CloseConnection)
        assert (event.code, event.reason) == (1009, "message too big")
        await client.send(event.response())
        assert await read_to_eof(client.stream) == b""
        await client.stream.aclose()
        assert await echo.wait_ended() == [(1009, "message too big")]


async def test_websocket_client_close_reaches_the_handler() -> None:
    """The client closing makes ``receive()`` raise with the client's code and reason."""
    echo = EchoServer()
    async with open_server(echo) as port:
        async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/ws") as ws:
            await ws.aclose(4001, "done for today")
        assert await echo.wait_ended() == [(4001, "done for today")]


async def test_websocket_handler_refusing_sends_its_http_answer() -> None:
    """A handler returning an ``HTTPReply`` without accepting refuses the handshake: the
    client gets that answer, and the connection is closed after it."""
    async with open_server(EchoServer()) as port:
        client = RawWebSocket(await trio.open_tcp_stream("127.0.0.1", port))
        await client.send(Handshake(host="test", target="/deny"))
        rejected = await client.next_event()
        assert isinstance(rejected, RejectConnection)
        body = b""
        finished = not rejected.has_body
        while not finished:
            event = await client.next_event()
            assert isinstance(event, RejectData)
            body += event.data
            finished = event.body_finished
        assert await read_to_eof(client.stream) == b""
        await client.stream.aclose()
    assert rejected.status_code == 403
    assert (b"connection", b"close") in rejected.headers
    assert body == b"no websockets for you"


@pytest.mark.parametrize(
    ("request_bytes", "status", "header"),
    [
        (handshake(version="8"), 426, b"\r\nsec-websocket-version: 13\r\n"),
        (handshake(key=None), 400, b"\r\nconnection: close\r\n"),
        (handshake(key="too short"), 400, b"\r\nconnection: close\r\n"),
    ],
    ids=["wrong-version", "no-key", "bad-key"],
)
async def test_websocket_bad_handshake_is_refused_before_the_handler(
    request_bytes: bytes, status: int, header: bytes
) -> None:
    """A wrong version gets 426 naming version 13, a missing or malformed key 400, from the
    server itself: the handler never runs."""
    echo = EchoServer()
    async with open_server(echo) as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(request_bytes)
        raw = await read_to_eof(stream)
        await stream.aclose()
    assert status_of(raw) == status
    assert header in raw.lower()
    assert echo.requests == []


@pytest.mark.autojump
async def test_websocket_idle_past_its_timeout_is_closed_1001() -> None:
    """A client silent for ``websocket_idle_timeout_s`` while the handler waits for a
    message is closed with 1001."""
    echo = EchoServer()
    limits = HTTPLimits(websocket_idle_timeout_s=3)
    async with open_server(echo, limits) as port:
        client = await RawWebSocket.connect(port)
        started = trio.current_time()
        event = await client.next_event()
        waited = trio.current_time() - started
        assert isinstance(event, CloseConnection)
        assert (event.code, event.reason) == (1001, "idle timeout")
        await client.send(event.response())
        assert await read_to_eof(client.stream) == b""
        await client.stream.aclose()
        assert await echo.wait_ended() == [(1001, "idle timeout")]
    assert 3 <= waited <= 4


async def test_websocket_is_closed_1001_when_the_server_drains() -> None:
    """Draining closes an open websocket with 1001 (it is no idle keep-alive connection to
    drop); the drain ends once its handler is done."""
    echo = EchoServer()
    server = HTTPServer(echo)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(functools.partial(server.serve, host="127.0.0.1", port=0))
        client = await RawWebSocket.connect(port)
        await client.send(TextMessage(data="before"))
        event = await client.next_event()
        assert isinstance(event, TextMessage)
        assert event.data == "before"
        drained = trio.Event()

        async def drain() -> None:
            await server.drain(TIMEOUT_S)
            drained.set()

        nursery.start_soon(drain)
        event = await client.next_event()
        assert isinstance(event, CloseConnection)
        assert (event.code, event.reason) == (1001, "server shutting down")
        await client.send(event.response())
        assert await read_to_eof(client.stream) == b""
        await client.stream.aclose()
        with trio.fail_after(TIMEOUT_S):
            await drained.wait()
    # serve() returned by itself once drained
    assert echo.disconnects == [(1001, "server shutting down")]


async def test_plain_request_has_no_websocket() -> None:
    """A request that does not ask for an upgrade is ordinary HTTP."""
    echo = EchoServer()
    async with open_server(echo) as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"GET /ws HTTP/1.1\r\nhost: t\r\nupgrade: websocket\r\n\r\n")
        ((status, _, _, body),) = await read_responses(stream, ["GET"])
        await stream.aclose()
    assert (status, body) == (200, b"plain HTTP")
