"""The HTTP/1.1 server at the edges of RFC 9110/9112 and under hostile clients (raw sockets)."""

from __future__ import annotations

import errno
import functools
import logging
from collections.abc import AsyncIterator

import h11
import pytest
import trio
import trio.testing

from trioserve._http.server import HTTPLimits, HTTPReply, HTTPServer, plain
from trioserve._replica.http import Request

from .test_server import TIMEOUT_S, echo, open_server, raw_request, read_to_eof, status_of

Response = tuple[int, bytes, dict[str, str], bytes]


async def read_responses(stream: trio.SocketStream, methods: list[str]) -> list[Response]:
    """The final responses to requests (written raw) with these methods, in order: status,
    reason, headers, body; interim (1xx) responses are skipped."""
    conn = h11.Connection(h11.CLIENT)
    answers: list[Response] = []
    with trio.fail_after(TIMEOUT_S):
        for method in methods:
            if conn.our_state is h11.DONE:
                conn.start_next_cycle()
            # h11 parses a response only to a request it saw; the bytes already went out raw
            conn.send(h11.Request(method=method, target="/", headers=[("host", "test")]))
            conn.send(h11.EndOfMessage())
            status, reason, headers, body = 0, b"", {}, b""
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65536))
                elif isinstance(event, h11.Response):
                    status, reason = event.status_code, bytes(event.reason)
                    headers = {k.decode(): v.decode() for k, v in event.headers}
                elif isinstance(event, h11.Data):
                    body += bytes(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    answers.append((status, reason, headers, body))
                    break
    return answers


def error_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.levelno >= logging.ERROR]


async def test_http_server_head_answers_headers_only_and_serves_the_next_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``HEAD`` gets the ``GET`` answer's headers (its length too) and no body; a request
    pipelined behind it is answered on the same connection, with nothing logged."""

    async def handler(request: Request) -> HTTPReply:
        await trio.lowlevel.checkpoint()
        return plain(200, f"the resource at {request.path}")

    async with open_server(handler) as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(raw_request("/r", method="HEAD") + raw_request("/r"))
        head, get = await read_responses(stream, ["HEAD", "GET"])
        await stream.aclose()
    assert (head[0], head[3]) == (200, b"")
    assert (get[0], get[3]) == (200, b"the resource at /r")
    assert head[2]["content-length"] == get[2]["content-length"] == str(len(get[3]))
    assert error_records(caplog) == []


async def test_http_server_connect_is_501_and_closes(caplog: pytest.LogCaptureFixture) -> None:
    """``CONNECT`` (no tunnels here) gets 501 and its connection closed, with nothing logged."""
    seen: list[str] = []

    async def handler(request: Request) -> HTTPReply:
        seen.append(request.method)
        return await echo(request)

    async with open_server(handler) as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"CONNECT example.com:443 HTTP/1.1\r\nhost: example.com:443\r\n\r\n")
        raw = await read_to_eof(stream)
        await stream.aclose()
    assert status_of(raw) == 501
    assert b"\r\nconnection: close\r\n" in raw.lower()
    assert seen == []
    assert error_records(caplog) == []


async def test_http_server_refuses_content_length_with_transfer_encoding() -> None:
    """A request framed both ways (request smuggling) gets 400, its connection is closed and
    nothing behind it is served."""
    seen: list[str] = []

    async def handler(request: Request) -> HTTPReply:
        seen.append(request.path)
        return await echo(request)

    async with open_server(handler) as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(
            b"POST /a HTTP/1.1\r\nhost: t\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n"
            b"\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: t\r\n\r\n"
        )
        raw = await read_to_eof(stream)
        await stream.aclose()
    assert status_of(raw) == 400
    assert raw.count(b"HTTP/1.1 ") == 1
    assert seen == []


@pytest.mark.autojump
async def test_http_server_answers_a_client_that_half_closed() -> None:
    """A client that shuts down its sending side after a complete request still gets the
    whole answer (its handler is not cancelled)."""
    finished = trio.Event()

    async def handler(request: Request) -> HTTPReply:
        await trio.sleep(3)  # virtual time: long enough for the server to notice the EOF
        finished.set()
        return plain(200, "still here")

    async with open_server(handler) as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(raw_request("/half"))
        await stream.send_eof()
        raw = await read_to_eof(stream)
        await stream.aclose()
    assert finished.is_set()
    assert b"HTTP/1.1 200 OK\r\n" in raw
    assert raw.endswith(b"still here")


@pytest.mark.autojump
async def test_http_server_head_timeout_applies_to_later_requests() -> None:
    """On a keep-alive connection, a later request's head gets ``header_timeout_s`` from its
    first byte, not the longer idle timeout."""
    limits = HTTPLimits(idle_timeout_s=30, header_timeout_s=10)
    async with open_server(echo, limits) as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(raw_request("/first"))
        assert (await read_responses(stream, ["GET"]))[0][0] == 200
        await trio.sleep(5)  # idle, within the idle timeout
        await stream.send_all(b"GET /second HTTP/1.1\r\nhost: t\r\n")  # never finished
        started = trio.current_time()
        with trio.fail_after(limits.idle_timeout_s):  # virtual time
            assert await stream.receive_some(65536) == b""  # closed without an answer
        waited = trio.current_time() - started
        await stream.aclose()
    assert limits.header_timeout_s <= waited <= limits.header_timeout_s + 1


async def test_http_server_sends_100_continue_before_reading_the_body() -> None:
    """``Expect: 100-continue`` gets ``100 Continue`` before the client sends its body,
    then the final answer."""
    async with open_server(echo) as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(
            b"POST /up HTTP/1.1\r\nhost: t\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n"
        )
        interim = b""
        with trio.fail_after(TIMEOUT_S):
            while not interim.endswith(b"\r\n\r\n"):
                interim += await stream.receive_some(1)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        await stream.send_all(b"12345")
        ((status, _, _, body),) = await read_responses(stream, ["POST"])
        await stream.aclose()
    assert (status, body) == (200, b"POST /up 5")


@pytest.mark.parametrize(
    "head",
    [b"GET / HTTP/9.9\r\nhost: t\r\n\r\n", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"],
    ids=["http-9.9", "h2-preface"],
)
async def test_http_server_unknown_http_version_is_505(head: bytes) -> None:
    """A request in an HTTP version other than 1.x (an HTTP/2 preface too) gets 505 and its
    connection closed."""
    async with open_server(echo) as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(head)
        raw = await read_to_eof(stream)
        await stream.aclose()
    assert status_of(raw) == 505
    assert raw.count(b"\r\n\r\n") == 1  # one answer, then the connection closed


async def test_http_server_error_bodies_are_plain_and_never_reflect_the_request() -> None:
    """A refused request's answer is ``text/plain`` with ``nosniff`` and a fixed text: none
    of the request's bytes come back."""
    async with open_server(echo) as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"GET / HTTP/1.1\r\nhost: t\r\n<script>alert(1)</script>: x\r\n\r\n")
        raw = await read_to_eof(stream)
        await stream.aclose()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert status_of(raw) == 400
    assert b"\r\ncontent-type: text/plain; charset=utf-8" in head
    assert b"\r\nx-content-type-options: nosniff" in head
    assert b"script" not in raw
    assert body == b"bad request"


async def test_http_server_status_lines_carry_reason_phrases() -> None:
    """Status lines read ``HTTP/1.1 200 OK`` (a code without a phrase gets none)."""

    async def handler(request: Request) -> HTTPReply:
        await trio.lowlevel.checkpoint()
        return plain(int(request.path.strip("/")), "")

    async with open_server(handler) as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(raw_request("/200") + raw_request("/404") + raw_request("/599"))
        raw = b""
        with trio.fail_after(TIMEOUT_S):
            while raw.count(b"HTTP/1.1 ") < 3 or not raw.endswith(b"\r\n\r\n"):
                raw += await stream.receive_some(65536)
        await stream.aclose()
    assert b"HTTP/1.1 200 OK\r\n" in raw
    assert b"HTTP/1.1 404 Not Found\r\n" in raw
    assert b"HTTP/1.1 599 \r\n" in raw


@pytest.mark.autojump
async def test_http_server_send_timeout_frees_a_client_that_does_not_read() -> None:
    """A client that never reads a large answer is disconnected after ``send_timeout_s``;
    the body's producer is closed (its ``finally`` runs)."""
    closed = trio.Event()

    async def endless() -> AsyncIterator[bytes]:
        chunk = b"x" * 65536
        try:
            while True:
                yield chunk
        finally:
            closed.set()

    async def handler(request: Request) -> HTTPReply:
        await trio.lowlevel.checkpoint()
        return HTTPReply(200, [("content-type", "application/octet-stream")], endless())

    limits = HTTPLimits(send_timeout_s=5)
    async with open_server(handler, limits) as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(raw_request("/big"))
        started = trio.current_time()
        with trio.fail_after(limits.send_timeout_s * 2):
            await closed.wait()
        assert trio.current_time() - started >= limits.send_timeout_s
        with trio.fail_after(TIMEOUT_S):
            while await stream.receive_some(1 << 20):  # what the kernel held, then EOF
                pass
        await stream.aclose()


async def test_http_server_answers_503_past_max_connections_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Past ``max_connections`` a new connection gets 503 and is closed at once; a burst of
    them logs one warning; once a connection closes, a new one is served."""
    caplog.set_level(logging.WARNING, logger="trioserve")
    async with open_server(echo, HTTPLimits(max_connections=2)) as port:
        held = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(2)]
        await trio.testing.wait_all_tasks_blocked()  # both accepted, waiting for a request
        for _ in range(4):
            extra = await trio.open_tcp_stream("127.0.0.1", port)
            raw = await read_to_eof(extra)
            await extra.aclose()
            assert status_of(raw) == 503
            assert b"\r\nconnection: close\r\n" in raw.lower()
        await held[0].aclose()
        await trio.testing.wait_all_tasks_blocked()  # its connection task ended
        again = await trio.open_tcp_stream("127.0.0.1", port)
        await again.send_all(raw_request("/again"))
        ((status, _, _, body),) = await read_responses(again, ["GET"])
        await again.aclose()
        await held[1].aclose()
    assert (status, body) == (200, b"GET /again 0")
    warnings = [r for r in caplog.records if "max_connections" in r.getMessage()]
    assert len(warnings) == 1


class FailingListener(trio.abc.Listener[trio.SocketStream]):
    """A listener whose first ``failures`` accepts fail with ``EMFILE``."""

    def __init__(self, inner: trio.SocketListener, failures: int) -> None:
        self.inner = inner
        self.failures = failures

    async def accept(self) -> trio.SocketStream:
        await trio.lowlevel.checkpoint()
        if self.failures:
            self.failures -= 1
            raise OSError(errno.EMFILE, "Too many open files")
        return await self.inner.accept()

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.mark.autojump
async def test_http_server_backs_off_when_out_of_file_descriptors(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Accepts failing with ``EMFILE`` log one warning (no traceback) and back off; serving
    resumes once they succeed."""
    caplog.set_level(logging.WARNING, logger="trioserve")
    (inner,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = inner.socket.getsockname()[1]
    server = HTTPServer(echo)
    async with trio.open_nursery() as nursery:
        started = trio.current_time()
        await nursery.start(functools.partial(server.serve_listeners, [FailingListener(inner, 4)]))
        stream = await trio.open_tcp_stream("127.0.0.1", port)  # waits in the backlog
        await stream.send_all(raw_request("/after"))
        ((status, _, _, body),) = await read_responses(stream, ["GET"])
        waited = trio.current_time() - started
        await stream.aclose()
        nursery.cancel_scope.cancel()
    assert (status, body) == (200, b"GET /after 0")
    assert waited >= 0.1 + 0.2 + 0.4 + 0.8  # backed off, doubling
    (warning,) = [r for r in caplog.records if r.name.startswith("trioserve")]
    assert "cannot accept" in warning.getMessage()
    assert warning.exc_info is None


async def test_http_server_reads_bodies_written_in_pieces() -> None:
    """A body of known length written in uneven pieces (the last one tiny), and a chunked
    body of 1-byte chunks, are read whole."""
    async with open_server(echo) as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"POST /pieces HTTP/1.1\r\nhost: t\r\ncontent-length: 20001\r\n\r\n")
        for piece in (b"a" * 10000, b"b" * 10000, b"c"):
            await stream.send_all(piece)
            await trio.testing.wait_all_tasks_blocked()
        await stream.send_all(
            b"POST /tiny HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n"
            + b"1\r\nx\r\n" * 1000
            + b"0\r\n\r\n"
        )
        pieces, tiny = await read_responses(stream, ["POST", "POST"])
        await stream.aclose()
    assert pieces[3] == b"POST /pieces 20001"
    assert tiny[3] == b"POST /tiny 1000"
