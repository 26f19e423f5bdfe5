"""Security properties users rely on: the instance token (constant-time comparison, never
logged, never on a command line, never in an error message), loopback-only listeners, no
unpickling before authentication or from HTTP, and limits that hold against oversized
messages and slow clients."""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
import pickle
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import msgspec
import psutil
import pytest
import trio

import actors
import trioserve as serve
from actors import _codec, _transport, _wire
from actors.testing import connected, serving
from tests.actors.actors_fixtures import open_raw_websocket, wait_closed

TOKEN = "security-test-token-0123456789abcdef"
TOKEN_HEADER = b"x-actors-token"
TIMEOUT_S = 10.0


# -- what the tests serve


class Small:
    """An actor with one plain method."""

    async def square(self, i: int) -> int:
        return i * i

    async def size(self, value: Any) -> int:
        return len(value) if isinstance(value, bytes) else -1


@serve.deployment(num_replicas=2)
class TokenHolder:
    """Tells what a replica process knows: its instance token and its PID."""

    async def __call__(self, _request: Any = None) -> dict[str, Any]:
        await trio.lowlevel.checkpoint()
        return {"token": actors.instance_token(), "pid": os.getpid()}


@serve.deployment
class BodySize:
    """An HTTP ingress that only measures the body it receives."""

    async def __call__(self, request: serve.Request) -> dict[str, int]:
        await trio.lowlevel.checkpoint()
        return {"size": len(await request.body())}


class FileCreator:
    """Unpickling it creates ``path`` (``Path.touch``, found by name in the standard library,
    so any process would run it): a stand-in for a hostile pickle."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[Path]]:
        return Path.touch, (Path(self.path),)


def descendants() -> list[psutil.Process]:
    return psutil.Process().children(recursive=True)


# -- the instance token


async def test_token_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """The listener checks tokens with hmac.compare_digest; a wrong token of the right length
    and one of another length are both refused with AuthenticationError."""
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def recording(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(_transport.hmac, "compare_digest", recording)
    same_length = "x" * len(TOKEN)
    async with serving(Small(), token=TOKEN) as address:
        for wrong in (same_length, TOKEN[:-1], TOKEN + "!"):
            with trio.fail_after(TIMEOUT_S), pytest.raises(actors.AuthenticationError):
                await actors.connect(address, token=wrong)
        async with connected(address, token=TOKEN) as ref:
            assert await ref.call("square", 4) == 16
    offered = [same_length, TOKEN[:-1], TOKEN + "!", TOKEN]
    assert compared == [(token.encode(), TOKEN.encode()) for token in offered]


async def test_token_is_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    """With every logger at DEBUG, a run with refused and accepted connections logs neither
    the instance token nor the wrong one a client offered."""
    wrong = "wrong-token-" + "z" * 20
    caplog.set_level(logging.DEBUG)
    async with serving(Small(), token=TOKEN) as address:
        with trio.fail_after(TIMEOUT_S), pytest.raises(actors.AuthenticationError):
            await actors.connect(address, token=wrong)
        async with connected(address, token=TOKEN) as ref:
            assert await ref.call("square", 5) == 25
    assert caplog.records, "the run should have logged something at DEBUG"
    logged = (
        "\n".join(f"{r.getMessage()} {r.args!r} {r.exc_text or ''}" for r in caplog.records)
        + caplog.text
    )
    assert TOKEN not in logged
    assert wrong not in logged


async def test_token_is_never_in_an_exception_message() -> None:
    """The AuthenticationError a refused client gets (message, repr, traceback) holds neither
    the token it offered nor the instance token."""
    wrong = "offered-token-" + "q" * 20
    async with serving(Small(), token=TOKEN) as address:
        with trio.fail_after(TIMEOUT_S), pytest.raises(actors.AuthenticationError) as info:
            await actors.connect(address, token=wrong)
    text = "".join(traceback.format_exception(info.value)) + repr(info.value)
    assert "refused" in text
    assert wrong not in text
    assert TOKEN not in text


@pytest.mark.slow
async def test_token_is_never_on_a_command_line() -> None:
    """No process of a serve instance (replicas, helpers) has the token in its argv."""
    async with serve.open_serve(http_port=None) as instance:
        handle = await instance.run(TokenHolder.bind(), name="token")
        seen = [await handle.remote() for _ in range(8)]
        tokens = {answer["token"] for answer in seen}
        assert len(tokens) == 1
        token = tokens.pop()
        assert isinstance(token, str)
        assert len(token) >= 32
        status = await instance.status()
        replica_pids = {
            r.pid for r in status.applications["token"].deployments["TokenHolder"].replicas
        }
        assert len(replica_pids) == 2
        processes = descendants()
        assert replica_pids <= {p.pid for p in processes}
        for proc in [psutil.Process(), *processes]:
            cmdline = await trio.Path(f"/proc/{proc.pid}/cmdline").read_bytes()
            assert token.encode() not in cmdline, proc.pid


# -- listeners


@pytest.mark.slow
async def test_listeners_bind_loopback_by_default() -> None:
    """Every listening socket of the serve process and of its replicas is on 127.0.0.1."""
    async with serve.open_serve(http_port=0) as instance:
        await instance.run(TokenHolder.bind(), name="token")
        listening: dict[int, list[str]] = {}
        for proc in [psutil.Process(), *descendants()]:
            for conn in proc.net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN:
                    listening.setdefault(proc.pid, []).append(conn.laddr.ip)
        status = await instance.status()
        replica_pids = {
            r.pid for r in status.applications["token"].deployments["TokenHolder"].replicas
        }
    # the driver listens for its children, for the controller's API and for HTTP
    assert len(listening.pop(os.getpid(), [])) >= 3
    assert replica_pids <= set(listening)  # each replica listens for calls
    for pid, addresses in listening.items():
        assert set(addresses) == {"127.0.0.1"}, (pid, addresses)


# -- pickles


def _masked_frame(payload: bytes) -> bytes:
    """A client's binary websocket frame (RFC 6455: clients mask)."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        length = bytes([0x80 | n])
    elif n < 65536:
        length = bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        length = bytes([0x80 | 127]) + n.to_bytes(8, "big")
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return b"\x82" + length + mask + masked


def _pickle_call(path: Path) -> bytes:
    """A batch holding one Call whose argument is a pickle that creates ``path``."""
    payload = _codec.encode_args((FileCreator(str(path)),), {})
    assert msgspec.msgpack.decode(payload, ext_hook=lambda code, _data: code) == [[1], {}]
    return _wire.frame([_wire.encode_envelope(_wire.Call(1, "size", _wire.Raw(payload)))])


async def _open_upgrade(address: str, token: bytes | None, message: bytes) -> trio.SocketStream:
    """A raw websocket upgrade (with ``token``, if any) immediately followed by ``message``
    as a frame, without waiting for the server's answer."""
    host, port = address.removeprefix("ws://").split(":")
    head = (
        f"GET / HTTP/1.1\r\nhost: {host}:{port}\r\nupgrade: websocket\r\n"
        "connection: Upgrade\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        f"sec-websocket-version: 13\r\nsec-websocket-protocol: {actors.PROTOCOL}\r\n"
    ).encode()
    if token is not None:
        head += TOKEN_HEADER + b": " + token + b"\r\n"
    stream = await trio.open_tcp_stream(host, int(port))
    await stream.send_all(head + b"\r\n" + _masked_frame(message))
    return stream


async def _read_refusal(stream: trio.SocketStream) -> tuple[bytes, bytes]:
    """The server's whole answer to a refused handshake: (head, body)."""
    data = b""
    with trio.fail_after(TIMEOUT_S):
        while b"\r\n\r\n" not in data:
            data += await stream.receive_some(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        while len(body) < length:
            body += await stream.receive_some(65536)
    return head, body


async def test_pickles_are_not_decoded_before_authentication(tmp_path: Path) -> None:
    """A pickle-bearing call sent right behind a handshake without the token (or with a
    wrong one) is never read: the handshake is refused with 401 and the pickle's side effect
    never happens. The same call on an authenticated connection is decoded (the control)."""
    target = tmp_path / "unpickled"
    message = _pickle_call(target)
    async with serving(Small(), token=TOKEN) as address:
        for token in (None, b"wrong-" + b"t" * 30):
            async with await _open_upgrade(address, token, message) as stream:
                head, body = await _read_refusal(stream)
            assert head.startswith(b"HTTP/1.1 401 "), head
            assert body == b"missing or wrong instance token"
            assert not target.exists()
        # control: with the token the very same bytes are decoded, and the file appears
        async with open_raw_websocket(
            address, extra_headers=[(TOKEN_HEADER, TOKEN.encode())]
        ) as ws:
            await ws.send_message(message)
            decoder = _wire.BatchDecoder()
            results: list[_wire.Result] = []
            with trio.fail_after(TIMEOUT_S):
                while not results:  # after the acknowledgement (Received) comes the result
                    batch = decoder.decode(await ws.get_message())
                    results = [env for env in batch if type(env) is _wire.Result]
        (result,) = results
        assert _codec.decode_value(result.value) == -1
    assert target.exists()


@pytest.mark.slow
async def test_http_proxy_never_unpickles_request_bodies(tmp_path: Path) -> None:
    """Bodies POSTed over HTTP that hold pickles (raw, or in a msgpack pickle extension) reach
    the deployment as bytes; nothing anywhere unpickles them."""
    target = tmp_path / "unpickled-over-http"
    hostile = pickle.dumps(FileCreator(str(target)))
    bodies = {
        "application/python-pickle": hostile,
        "application/octet-stream": hostile,
        "application/msgpack": msgspec.msgpack.encode(msgspec.msgpack.Ext(1, hostile)),
        "application/x-actors": _pickle_call(target),
    }
    async with serve.open_serve(http_port=0) as instance:
        await instance.run(BodySize.bind(), name="bodies")
        async with httpx.AsyncClient(base_url=instance.http_url or "") as http:
            for content_type, body in bodies.items():
                with trio.fail_after(TIMEOUT_S):
                    response = await http.post(
                        "/", content=body, headers={"content-type": content_type}
                    )
                assert response.status_code == 200, response.text
                assert response.json() == {"size": len(body)}
    assert not target.exists()


async def test_refused_handshake_closes_the_connection() -> None:
    """After refusing a handshake (401) the listener closes that TCP connection."""
    async with (
        serving(Small(), token=TOKEN) as address,
        await _open_upgrade(address, None, b"") as stream,
    ):
        head, _body = await _read_refusal(stream)
        assert head.startswith(b"HTTP/1.1 401 ")
        with trio.fail_after(2):
            assert await stream.receive_some(65536) == b""


# -- limits


async def test_oversized_websocket_message_closes_with_1009() -> None:
    """A message over the listener's max message size closes that connection with 1009; a
    sender whose own limit is smaller gets MessageTooLargeError and keeps its connection."""
    assert actors.DEFAULT_MAX_MESSAGE_SIZE == 64 * 1024 * 1024
    limit = 64 * 1024
    async with serving(Small(), token=TOKEN, max_message_size=limit) as address:
        async with open_raw_websocket(
            address, extra_headers=[(TOKEN_HEADER, TOKEN.encode())]
        ) as ws:
            big = _wire.Call(1, "size", _wire.Raw(_codec.encode_args((b"x" * 2 * limit,), {})))
            await ws.send_message(_wire.frame([_wire.encode_envelope(big)]))
            closed = await wait_closed(ws)
            assert closed.reason.code == 1009
        async with connected(address, token=TOKEN, max_message_size=limit) as ref:
            with pytest.raises(actors.MessageTooLargeError):
                await ref.call("size", b"x" * 2 * limit)
            assert await ref.call("size", b"x" * (limit // 2)) == limit // 2


async def test_http_limits_refuse_large_headers_and_bodies() -> None:
    """With the default limits, a header block over 64 KiB gets 431 and a declared body over
    64 MiB gets 413, before any of it is read."""
    limits = serve.HTTPLimits()
    async with serve.open_serve(http_port=0) as instance:
        assert instance.http_port is not None
        port = instance.http_port
        huge_header = b"x-filler: " + b"a" * (limits.max_header_bytes + 1024) + b"\r\n"
        reply = await _raw_http(port, b"GET / HTTP/1.1\r\nhost: t\r\n" + huge_header + b"\r\n")
        assert reply.startswith(b"HTTP/1.1 431 "), reply[:80]
        declared = limits.max_body_bytes + 1
        head = f"POST / HTTP/1.1\r\nhost: t\r\ncontent-length: {declared}\r\n\r\n".encode()
        reply = await _raw_http(port, head + b"only a little")
        assert reply.startswith(b"HTTP/1.1 413 "), reply[:80]
        assert str(limits.max_body_bytes).encode() in reply


async def _raw_http(port: int, request: bytes) -> bytes:
    """Send ``request`` raw; everything the server answers until it closes."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    reply = b""
    async with stream:
        with contextlib.suppress(trio.BrokenResourceError):  # refused while still sending
            await stream.send_all(request)
        with trio.fail_after(TIMEOUT_S), contextlib.suppress(trio.BrokenResourceError):
            while chunk := await stream.receive_some(65536):
                reply += chunk
    return reply


SLOWLORIS_CLIENTS = 20
SLOWLORIS_BYTE_INTERVAL_S = 0.5


@pytest.mark.slow
async def test_slowloris_clients_do_not_delay_others() -> None:
    """Clients that trickle their headers one byte every 0.5 s do not stop other clients
    from being answered promptly, and are cut off once ``header_timeout_s`` passes."""
    header_timeout_s = 2.0
    limits = serve.HTTPLimits(header_timeout_s=header_timeout_s)
    cut_off: list[float] = []

    async def slowloris(port: int, started: float) -> None:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            for byte in b"GET / HTTP/1.1\r\nhost: t\r\nx-slow: " + b"a" * 1000:
                try:
                    await stream.send_all(bytes([byte]))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    break
                await trio.sleep(SLOWLORIS_BYTE_INTERVAL_S)  # the attack's pace, not a wait
            cut_off.append(trio.current_time() - started)

    async with serve.open_serve(http_port=0, http_limits=limits) as instance:
        assert instance.http_port is not None
        with trio.fail_after(header_timeout_s + TIMEOUT_S):
            async with trio.open_nursery() as nursery:
                started = trio.current_time()
                for _ in range(SLOWLORIS_CLIENTS):
                    nursery.start_soon(slowloris, instance.http_port, started)
                async with httpx.AsyncClient(base_url=instance.http_url or "") as http:
                    while trio.current_time() - started < header_timeout_s + 1.0:
                        with trio.fail_after(0.5):  # promptly, while the slow clients hang on
                            response = await http.get("/-/routes")
                        assert response.status_code == 200
            # leaving the nursery waited for every slow client to be cut off
    assert len(cut_off) == SLOWLORIS_CLIENTS
    assert max(cut_off) < header_timeout_s + 2 * SLOWLORIS_BYTE_INTERVAL_S + 1.0
