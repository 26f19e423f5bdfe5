"""The HTTP server's streamed request bodies (``HTTPRequest.body_stream``) and the peer
address, against ``HTTPServer`` with small handlers on real sockets."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import AsyncIterator

import httpx
import pytest
import trio
import trio.testing

from trioserve._http.server import (
    READ_SIZE,
    BodyRefusedError,
    HTTPLimits,
    HTTPReply,
    RequestBody,
    plain,
)
from trioserve._replica.http import Request

from .test_server import TIMEOUT_S, open_server, raw_request, read_to_eof, status_of
from .test_server_edge_cases import read_responses

#: bodies past a few bytes are streamed
STREAMING = HTTPLimits(inline_body_bytes=16)


def chunked_head(target: str, *extra: str) -> bytes:
    lines = [f"POST {target} HTTP/1.1", "host: test", "transfer-encoding: chunked", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


LAST_CHUNK = b"0\r\n\r\n"


def nothing_received(stream: trio.SocketStream) -> bool:
    """Whether no byte from the server waits on ``stream`` (a peek that does not block)."""
    with socket.socket(fileno=os.dup(stream.socket.fileno())) as peek:
        try:
            peek.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)  # a byte, or EOF
        except BlockingIOError:
            return True
        return False


async def read_all(body: RequestBody) -> bytes:
    return b"".join([part async for part in body])


async def echo_streamed(request: Request) -> HTTPReply:
    """Answers the body it read from the stream (``inline:`` + the body when it came whole)."""
    if request.body_stream is None:
        return plain(200, f"inline:{request.body.decode()}")
    return plain(200, f"streamed:{(await read_all(request.body_stream)).decode()}")


async def test_request_body_stream_yields_chunks_before_the_rest_is_sent() -> None:
    """A chunked upload reaches the handler chunk by chunk: it sees the first before the
    client has sent the second."""
    seen_send, seen = trio.open_memory_channel[bytes](10)

    async def handler(request: Request) -> HTTPReply:
        assert request.body == b""
        assert isinstance(request.body_stream, RequestBody)
        parts = []
        async for part in request.body_stream:
            parts.append(part)
            await seen_send.send(part)
        return plain(200, "|".join(p.decode() for p in parts))

    async with open_server(handler) as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(chunked_head("/up") + chunk(b"first"))
        with trio.fail_after(TIMEOUT_S):
            assert await seen.receive() == b"first"
        await stream.send_all(chunk(b"second"))
        with trio.fail_after(TIMEOUT_S):
            assert await seen.receive() == b"second"
        await stream.send_all(LAST_CHUNK)
        ((status, _, headers, body),) = await read_responses(stream, ["POST"])
        await stream.aclose()
    assert (status, body) == (200, b"first|second")
    assert headers.get("connection") != "close"


async def test_request_body_stream_large_content_length_is_streamed() -> None:
    """A body with a content-length past ``inline_body_bytes`` is streamed, in chunks of
    at most 64 KiB, whole in the end."""
    data = os.urandom(300 * 1024)
    sizes: list[int] = []

    async def handler(request: Request) -> HTTPReply:
        assert request.body == b""
        assert request.body_stream is not None
        received = bytearray()
        while (part := await request.body_stream.read()) is not None:
            sizes.append(len(part))
            received += part
        assert await request.body_stream.read() is None  # the end stays the end
        return HTTPReply(200, [], bytes(received))

    limits = HTTPLimits(inline_body_bytes=1024)
    async with (
        open_server(handler, limits) as port,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http,
    ):
        response = await http.post("/big", content=data)
    assert response.status_code == 200
    assert response.content == data
    assert len(sizes) >= len(data) // READ_SIZE
    assert all(0 < size <= READ_SIZE for size in sizes)


async def test_small_body_still_arrives_inline() -> None:
    """A body with a content-length up to ``inline_body_bytes`` is read before the handler
    runs: ``body`` holds it, there is no stream."""
    async with (
        open_server(echo_streamed) as port,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http,
    ):
        small = await http.post("/small", content=b"a small body")
        empty = await http.get("/empty")
    assert (small.status_code, small.text) == (200, "inline:a small body")
    assert (empty.status_code, empty.text) == (200, "inline:")


async def test_chunked_body_received_whole_with_its_head_arrives_inline() -> None:
    """A small chunked body the server already received with its head is not streamed."""
    async with open_server(echo_streamed) as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(chunked_head("/whole") + chunk(b"all") + chunk(b" here") + LAST_CHUNK)
        ((status, _, _, body),) = await read_responses(stream, ["POST"])
        await stream.aclose()
    assert (status, body) == (200, b"inline:all here")


async def test_streamed_body_past_max_body_bytes_is_413_and_closes() -> None:
    """A streamed body growing past ``max_body_bytes`` makes ``read()`` raise 413; the
    client gets 413 with ``connection: close`` whatever the handler answers, then EOF."""
    refused: list[BodyRefusedError] = []
    first = trio.Event()

    async def handler(request: Request) -> HTTPReply:
        assert request.body_stream is not None
        assert await request.body_stream.read() == b"a" * 60
        first.set()
        try:
            await request.body_stream.read()
        except BodyRefusedError as exc:
            refused.append(exc)
        return plain(200, "the handler's own answer")

    limits = HTTPLimits(inline_body_bytes=16, max_body_bytes=100)
    async with open_server(handler, limits) as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(chunked_head("/up") + chunk(b"a" * 60))
        with trio.fail_after(TIMEOUT_S):
            await first.wait()
        await stream.send_all(chunk(b"b" * 60))
        raw = await read_to_eof(stream)
        await stream.aclose()
    assert status_of(raw) == 413
    assert b"\r\nconnection: close\r\n" in raw.lower()
    assert raw.endswith(b"body exceeds 100 bytes")
    assert [(e.status, e.text) for e in refused] == [(413, "body exceeds 100 bytes")]


async def test_malformed_chunked_body_mid_stream_is_400() -> None:
    """A chunked body that turns malformed after the handler began reading gets 400."""
    first = trio.Event()
    refused: list[int] = []

    async def handler(request: Request) -> HTTPReply:
        assert request.body_stream is not None
        await request.body_stream.read()
        first.set()
        try:
            await request.body_stream.read()
        except BodyRefusedError as exc:
            refused.append(exc.status)
            raise
        raise AssertionError("unreachable")

    async with open_server(handler, STREAMING) as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(chunked_head("/up") + chunk(b"fine"))
        with trio.fail_after(TIMEOUT_S):
            await first.wait()
        await stream.send_all(b"zz\r\nnot a chunk\r\n")
        raw = await read_to_eof(stream)
        await stream.aclose()
    assert status_of(raw) == 400
    assert refused == [400]


@pytest.mark.autojump
async def test_stalled_streamed_body_is_408() -> None:
    """A streamed body that stops coming for ``body_timeout_s`` makes ``read()`` raise 408,
    answered 408 with the connection closed."""
    statuses: list[int] = []
    parts: list[bytes] = []

    async def handler(request: Request) -> HTTPReply:
        assert request.body_stream is not None
        try:
            async for part in request.body_stream:
                parts.append(part)
        except BodyRefusedError as exc:
            statuses.append(exc.status)
            raise
        return plain(200, "complete")

    async with open_server(handler, HTTPLimits(inline_body_bytes=16, body_timeout_s=2)) as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(chunked_head("/up") + chunk(b"and then nothing"))
        started = trio.current_time()
        raw = await read_to_eof(stream)
        waited = trio.current_time() - started
        await stream.aclose()
    assert status_of(raw) == 408
    assert raw.endswith(b"request body timed out")
    assert (parts, statuses) == ([b"and then nothing"], [408])
    assert 2 <= waited <= 3


@pytest.mark.autojump
async def test_streamed_body_that_keeps_coming_outlives_body_timeout() -> None:
    """``body_timeout_s`` bounds each wait for more of a streamed body, not the whole: an
    upload longer than it that keeps sending is read to its end."""
    limits = HTTPLimits(inline_body_bytes=16, body_timeout_s=5)
    async with open_server(echo_streamed, limits) as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(chunked_head("/slow"))
        for n in range(4):
            await stream.send_all(chunk(f"{n};".encode()))
            await trio.sleep(3)  # virtual time: a slow client, in time for each wait
        await stream.send_all(LAST_CHUNK)
        ((status, _, _, body),) = await read_responses(stream, ["POST"])
        await stream.aclose()
    assert (status, body) == (200, b"streamed:0;1;2;3;")


async def test_100_continue_is_sent_at_the_first_read() -> None:
    """``Expect: 100-continue`` on a streamed body: no ``100`` before the handler reads; a
    handler refusing without reading sends its answer and never invites the body."""
    started = trio.Event()
    go = trio.Event()

    async def handler(request: Request) -> HTTPReply:
        if request.path == "/deny":
            return plain(403, "not from you")
        started.set()
        await go.wait()
        assert request.body_stream is not None
        return plain(200, f"read {len(await read_all(request.body_stream))}")

    head = "POST {} HTTP/1.1\r\nhost: t\r\ncontent-length: 100000\r\nexpect: 100-continue\r\n\r\n"
    async with open_server(handler, STREAMING) as port:
        denied = await trio.open_tcp_stream("127.0.0.1", port)
        await denied.send_all(head.format("/deny").encode())
        raw = await read_to_eof(denied)
        await denied.aclose()
        assert raw.startswith(b"HTTP/1.1 403 Forbidden\r\n")
        assert b"100 Continue" not in raw
        assert b"\r\nconnection: close\r\n" in raw.lower()

        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(head.format("/read").encode())
        with trio.fail_after(TIMEOUT_S):
            await started.wait()
        await trio.testing.wait_all_tasks_blocked()
        assert nothing_received(stream)  # the handler runs, and no 100 went out
        go.set()
        interim = b""
        with trio.fail_after(TIMEOUT_S):
            while not interim.endswith(b"\r\n\r\n"):
                interim += await stream.receive_some(1)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        await stream.send_all(b"x" * 100000)
        ((status, _, _, body),) = await read_responses(stream, ["POST"])
        await stream.aclose()
    assert (status, body) == (200, b"read 100000")


async def test_client_leaving_mid_body_cancels_the_handler() -> None:
    """A client that closes its connection before its streamed body's end cancels the
    handler reading it."""
    first = trio.Event()
    cancelled = trio.Event()

    async def handler(request: Request) -> HTTPReply:
        assert request.body_stream is not None
        await request.body_stream.read()
        first.set()
        try:
            await request.body_stream.read()
        except trio.Cancelled:  # why: the test observes the cancellation; re-raised
            cancelled.set()
            raise
        raise AssertionError("the read was not cancelled")

    async with open_server(handler, STREAMING) as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(chunked_head("/up") + chunk(b"part of it"))
        with trio.fail_after(TIMEOUT_S):
            await first.wait()
        await stream.aclose()
        with trio.fail_after(TIMEOUT_S):
            await cancelled.wait()


async def test_unread_streamed_body_closes_the_connection_after_the_reply() -> None:
    """A handler that answers without reading its streamed body gets its answer out with
    ``connection: close`` (an iterator answer: closed after), then the connection closes;
    the body is not read to reuse it."""

    async def parts() -> AsyncIterator[bytes]:
        yield b"streamed "
        yield b"answer"

    async def handler(request: Request) -> HTTPReply:
        await trio.lowlevel.checkpoint()
        if request.path == "/iterator":
            return HTTPReply(200, [], parts())
        return plain(200, "did not read it")

    async with open_server(handler, STREAMING) as port:
        for target in ("/bytes", "/iterator"):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            # a head promising more than is sent: reading it all would hang
            await stream.send_all(
                f"POST {target} HTTP/1.1\r\nhost: t\r\ncontent-length: 1000000\r\n\r\n".encode()
                + b"x" * 1000
            )
            raw = await read_to_eof(stream)
            await stream.aclose()
            assert status_of(raw) == 200
            closing = b"\r\nconnection: close\r\n" in raw.lower()
            if target == "/bytes":
                assert closing
                assert raw.endswith(b"did not read it")
            else:
                assert not closing
                assert raw.endswith(b"0\r\n\r\n")  # the whole answer, then EOF


async def test_body_read_by_another_task_ends_with_its_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A body read by a task of its own (as a proxy forwarding it does) that is still
    waiting when the handler's answer has gone fails with ``ClosedResourceError`` as the
    connection closes; nothing is logged as an error."""
    outcome: list[str] = []

    async with trio.open_nursery() as readers:

        async def read_rest(body: RequestBody) -> None:
            try:
                await read_all(body)
                outcome.append("read to its end")
            except trio.ClosedResourceError:
                outcome.append("closed")

        async def handler(request: Request) -> HTTPReply:
            readers.start_soon(read_rest, request.body_stream)
            await trio.testing.wait_all_tasks_blocked()  # the reader waits for more
            return plain(200, "answered before the body's end")

        async with open_server(handler, STREAMING) as port:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(chunked_head("/early") + chunk(b"the start"))
            raw = await read_to_eof(stream)
            await stream.aclose()
    assert status_of(raw) == 200
    assert raw.endswith(b"answered before the body's end")
    assert outcome == ["closed"]
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_fully_read_streamed_body_keeps_the_connection_alive() -> None:
    """A connection whose streamed body was read to its end serves the next request."""
    async with open_server(echo_streamed, STREAMING) as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(raw_request("/one", method="POST", body=b"1" * 1000))
        ((status, _, headers, body),) = await read_responses(stream, ["POST"])
        assert (status, body) == (200, b"streamed:" + b"1" * 1000)
        assert headers.get("connection") != "close"
        await stream.send_all(raw_request("/two", method="POST", body=b"2" * 1000))
        ((status, _, _, body),) = await read_responses(stream, ["POST"])
        await stream.aclose()
    assert (status, body) == (200, b"streamed:" + b"2" * 1000)


async def test_request_pipelined_behind_a_streamed_one_is_answered() -> None:
    """A request written right behind a streamed body is answered after it, in order."""
    async with open_server(echo_streamed, STREAMING) as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(
            raw_request("/streamed", method="POST", body=b"s" * 5000) + raw_request("/next")
        )
        streamed, following = await read_responses(stream, ["POST", "GET"])
        await stream.aclose()
    assert (streamed[0], streamed[3]) == (200, b"streamed:" + b"s" * 5000)
    assert (following[0], following[3]) == (200, b"inline:")


async def test_request_client_is_the_peer_address() -> None:
    """``HTTPRequest.client`` is the ``(host, port)`` the connection comes from."""
    clients: list[tuple[str, int] | None] = []

    async def handler(request: Request) -> HTTPReply:
        await trio.lowlevel.checkpoint()
        clients.append(request.client)
        return plain(200, "seen")

    async with open_server(handler) as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(raw_request("/a") + raw_request("/b", method="POST", body=b"x"))
        await read_responses(stream, ["GET", "POST"])
        here = stream.socket.getsockname()
        await stream.aclose()
    assert clients == [("127.0.0.1", here[1])] * 2


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("inline_body_bytes", -1, "must be >= 0, got -1"),
        ("max_websocket_message_bytes", 0, "must be > 0, got 0"),
        ("websocket_idle_timeout_s", 0, "must be > 0, got 0"),
    ],
)
def test_http_limits_rejects_bad_streaming_bounds(field: str, value: int, message: str) -> None:
    """The new bounds are checked where they are set; the message shows the value."""
    with pytest.raises(ValueError, match=f"{field} {message}"):
        HTTPLimits(**{field: value})
