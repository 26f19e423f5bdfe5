"""Request bodies that stream to the replica, and WebSockets through the proxy -- real
replica processes, real sockets."""

from __future__ import annotations

import os
import sys
import textwrap
from typing import Any

import psutil
import pytest
import trio
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    RejectConnection,
    TextMessage,
)
from wsproto.events import Request as Handshake

import trioserve as serve
from trioserve._http.server import HTTPLimits

from . import http_fixtures as fx
from ._http.test_proxy import TIMEOUT_S, open_client
from ._http.test_websocket import RawWebSocket

pytestmark = pytest.mark.slow


def _port(instance: serve.ServeInstance) -> int:
    assert instance.http_port is not None
    return instance.http_port


async def _read_until(stream: trio.SocketStream, buffer: bytearray, marker: bytes) -> bytes:
    """Read from ``stream`` into ``buffer`` until it holds ``marker``; what precedes it."""
    with trio.fail_after(TIMEOUT_S):
        while marker not in buffer:
            data = await stream.receive_some(65536)
            assert data, f"connection closed before {marker!r}; got {bytes(buffer)!r}"
            buffer += data
    head, _, rest = bytes(buffer).partition(marker)
    buffer[:] = rest
    return head


async def test_streamed_body_reaches_the_replica_while_the_client_still_sends() -> None:
    """A chunked upload is echoed chunk by chunk: each chunk comes back before the client
    sends the next, so the replica reads the body as it arrives (nothing buffers it
    whole), and its response streams at the same time."""
    async with serve.open_serve(http_port=0) as instance:
        await instance.run(fx.Uploads.bind(), name="up", route_prefix="/up")
        stream = await trio.open_tcp_stream("127.0.0.1", _port(instance))
        async with stream:
            await stream.send_all(
                b"POST /up/echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            buffer = bytearray()
            for word in [b"first", b"second", b"third"]:
                await stream.send_all(b"%x\r\n%s\r\n" % (len(word), word))
                if word == b"first":
                    head = await _read_until(stream, buffer, b"\r\n\r\n")
                    assert head.startswith(b"HTTP/1.1 200 ")
                echoed = await _read_until(stream, buffer, word)
                assert echoed.endswith(b"\r\n")  # the chunk's size line
            await stream.send_all(b"0\r\n\r\n")
            await _read_until(stream, buffer, b"0\r\n\r\n")


async def test_large_body_is_counted_by_the_replica_in_chunks() -> None:
    async with serve.open_serve(http_port=0) as instance:
        await instance.run(fx.Uploads.bind(), name="up", route_prefix="/up")
        async with open_client(instance) as http:
            body = os.urandom(1024) * 1024 * 3  # 3 MiB with a content-length
            response = await http.post("/up/count", content=body)
            small = await http.post("/up/count", content=b"tiny")
    assert response.status_code == 200
    assert response.json()["size"] == len(body)
    assert response.json()["chunks"] > 1
    assert small.json() == {"size": 4, "chunks": 1}


CLIENT = textwrap.dedent(
    """
    import http.client, sys
    port, total = int(sys.argv[1]), int(sys.argv[2])
    block = b"x" * 65536
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    def body():
        for _ in range(total // len(block)):
            yield block
    conn.request("POST", "/up/count", body=body(), encode_chunked=True,
                 headers={"Transfer-Encoding": "chunked"})
    response = conn.getresponse()
    print(response.status, response.read().decode())
    """
)


async def test_fifty_mebibyte_upload_keeps_the_proxy_memory_flat() -> None:
    """A 50 MiB upload streams through the proxy to the replica: the serve process (this
    one: it runs the proxy) grows by at most 10 MiB while it passes."""
    total = 50 * 1024 * 1024
    me = psutil.Process()
    async with serve.open_serve(http_port=0) as instance:
        await instance.run(fx.Uploads.bind(), name="up", route_prefix="/up")
        async with open_client(instance) as http:  # warm: the route and the replica's link
            assert (await http.post("/up/count", content=b"x" * 100_000)).status_code == 200
        baseline = me.memory_info().rss
        peak = baseline
        done = trio.Event()

        async def watch() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, me.memory_info().rss)
                with trio.move_on_after(0.005):  # why: sampling interval of the RSS watch
                    await done.wait()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            result = await trio.run_process(
                [sys.executable, "-c", CLIENT, str(_port(instance)), str(total)],
                capture_stdout=True,
            )
            done.set()
    status, _, body = result.stdout.decode().partition(" ")
    assert status == "200", result.stdout
    assert f'"size":{total}' in body
    growth_mib = (peak - baseline) / 2**20
    assert growth_mib <= 10, f"the proxy grew by {growth_mib:.1f} MiB for a 50 MiB upload"


# -- WebSockets


async def _exchange(client: RawWebSocket, message: TextMessage | BytesMessage) -> Any:
    await client.send(message)
    return await client.next_event()


async def test_websocket_echo_through_the_proxy() -> None:
    """A FastAPI ``@app.websocket`` route under a route prefix: text and bytes both ways,
    the subprotocol negotiated, and the app's close code reaching the client."""
    async with serve.open_serve(http_port=0) as instance:
        await instance.run(fx.Sockets.bind(), name="ws", route_prefix="/ws")
        client = RawWebSocket(await trio.open_tcp_stream("127.0.0.1", _port(instance)))
        async with client.stream:
            await client.send(Handshake(host="t", target="/ws/echo", subprotocols=["chat"]))
            accepted = await client.next_event()
            assert isinstance(accepted, AcceptConnection)
            assert accepted.subprotocol == "chat"
            text = await _exchange(client, TextMessage(data="hello"))
            assert isinstance(text, TextMessage)
            assert text.data == "echo: hello"
            data = await _exchange(client, BytesMessage(data=b"\x00\x01"))
            assert isinstance(data, BytesMessage)
            assert data.data == b"\x00\x01"
            closed = await _exchange(client, TextMessage(data="bye"))
    assert isinstance(closed, CloseConnection)
    assert (closed.code, closed.reason) == (4001, "goodbye")


async def test_websocket_message_over_the_limit_closes_with_1009() -> None:
    """A message past the proxy's limit closes the session with 1009; the proxy and the
    deployment go on serving WebSockets."""
    limits = HTTPLimits(max_websocket_message_bytes=1024)
    async with serve.open_serve(http_port=0, http_limits=limits) as instance:
        await instance.run(fx.Sockets.bind(), name="ws", route_prefix="/ws")
        client = await RawWebSocket.connect(_port(instance), "/ws/echo")
        async with client.stream:
            await client.send(TextMessage(data="small"))
            reply = await client.next_event()
            assert isinstance(reply, TextMessage)
            assert reply.data == "echo: small"
            await client.send(TextMessage(data="x" * 2048))
            closed = await client.next_event()
            assert isinstance(closed, CloseConnection)
            assert closed.code == 1009
        client = await RawWebSocket.connect(_port(instance), "/ws/echo")
        async with client.stream:
            again = await _exchange(client, TextMessage(data="again"))
            assert isinstance(again, TextMessage)
            assert again.data == "echo: again"


@pytest.mark.parametrize(
    ("path", "status"), [("/ws/refuse", 403), ("/nothing/here", 404), ("/plain", 403)]
)
async def test_websocket_refused_handshakes_get_an_http_status(path: str, status: int) -> None:
    """An app closing before it accepts (403), no application (404), and a deployment
    without an ASGI app (403) refuse the handshake with an HTTP answer."""
    async with serve.open_serve(http_port=0) as instance:
        await instance.run(fx.Sockets.bind(), name="ws", route_prefix="/ws")
        await instance.run(fx.Uploads.bind(), name="plain", route_prefix="/plain")
        client = RawWebSocket(await trio.open_tcp_stream("127.0.0.1", _port(instance)))
        async with client.stream:
            await client.send(Handshake(host="test", target=path))
            refused = await client.next_event()
    assert isinstance(refused, RejectConnection)
    assert refused.status_code == status


async def test_websocket_class_based_fastapi_route_gets_self() -> None:
    async with serve.open_serve(http_port=0) as instance:
        await instance.run(fx.Chat.bind("hi"), name="chat", route_prefix="/chat")
        client = await RawWebSocket.connect(_port(instance), "/chat/talk")
        async with client.stream:
            reply = await _exchange(client, TextMessage(data="there"))
    assert isinstance(reply, TextMessage)
    assert reply.data == "hi: there"
