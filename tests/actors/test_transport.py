"""Authenticated websocket endpoints: tokens, malformed bytes, oversized messages, and a
listener that keeps serving good clients through all of them."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import msgspec
import pytest
import trio
from trio_websocket import ConnectionClosed, ConnectionRejected, WebSocketConnection

import actors
from actors import _codec, _wire
from actors.testing import connected, running_actor, serving

from .actors_fixtures import Worker, open_raw_websocket, wait_closed, worker_spec

TOKEN = "the-instance-token"
TOKEN_HEADER = b"x-actors-token"


async def _assert_serves(address: str) -> None:
    """A well-behaved client can connect and call."""
    async with connected(address, token=TOKEN) as ref:
        assert await ref.call("square", 12) == 144


@asynccontextmanager
async def _raw_client(address: str) -> AsyncIterator[WebSocketConnection]:
    """A websocket that passes the handshake (right token and subprotocol) but then speaks
    whatever the test sends."""
    async with open_raw_websocket(address, extra_headers=[(TOKEN_HEADER, TOKEN.encode())]) as ws:
        yield ws


async def _receive_envelope(ws: WebSocketConnection, call_id: int) -> _wire.Envelope:
    """The next envelope about ``call_id`` (heartbeats and others are skipped)."""
    decoder = _wire.BatchDecoder()
    with trio.fail_after(5):
        while True:
            message = await ws.get_message()
            assert isinstance(message, bytes)
            for env in decoder.decode(message):
                if getattr(env, "id", None) == call_id:
                    return env


async def test_transport_wrong_token_is_refused() -> None:
    """Connecting with a wrong or empty token raises AuthenticationError; the listener keeps
    serving clients with the right token."""
    async with serving(Worker(), token=TOKEN) as address:
        for wrong in ("not-the-token", "", TOKEN + "x", TOKEN.encode()[:-1]):
            with trio.fail_after(5), pytest.raises(actors.AuthenticationError):
                await actors.connect(address, token=wrong)
        await _assert_serves(address)


async def test_transport_open_connection_wrong_token_raises_authentication_error() -> None:
    """``open_connection`` with a wrong token raises AuthenticationError itself."""
    async with serving(Worker(), token=TOKEN) as address:
        with trio.fail_after(5), pytest.raises(actors.AuthenticationError):
            async with actors.open_connection(address, token="not-the-token"):
                pass


async def test_transport_open_connection_reraises_body_error_unwrapped() -> None:
    """An error raised inside ``async with open_connection(...)`` comes out as itself."""
    async with serving(Worker(), token=TOKEN) as address:
        with pytest.raises(LookupError, match="from the body"):
            async with actors.open_connection(address, token=TOKEN):
                raise LookupError("from the body")


async def test_transport_open_connection_closes_promptly() -> None:
    """Leaving ``async with open_connection(...)`` does not stall its owner."""
    async with serving(Worker(), token=TOKEN) as address:
        started = trio.current_time()
        async with actors.open_connection(address, token=TOKEN) as ref:
            assert await ref.call("square", 2) == 4
        assert trio.current_time() - started < 0.5


async def test_transport_serve_host_stops_promptly_with_clients_connected() -> None:
    """Cancelling a listener with a client connected does not stall its owner."""
    async with trio.open_nursery() as nursery:
        async with serving(Worker(), token=TOKEN) as address:
            ref = await nursery.start(functools.partial(actors.connect, address, token=TOKEN))
            assert await ref.call("square", 2) == 4
            started = trio.current_time()
        assert trio.current_time() - started < 0.5


async def test_transport_missing_token_or_subprotocol_is_refused_before_any_message() -> None:
    """The handshake is refused with 401 without the token header, and with 400 without the
    protocol's subprotocol; good clients are served afterwards."""
    async with serving(Worker(), token=TOKEN) as address:
        with trio.fail_after(5), pytest.raises(ConnectionRejected) as no_token:
            async with open_raw_websocket(address):
                pass
        assert no_token.value.status_code == 401
        with trio.fail_after(5), pytest.raises(ConnectionRejected) as no_protocol:
            async with open_raw_websocket(
                address, extra_headers=[(TOKEN_HEADER, TOKEN.encode())], subprotocols=()
            ):
                pass
        assert no_protocol.value.status_code == 400
        await _assert_serves(address)


async def test_transport_refused_connection_raises_actor_died_error() -> None:
    """Connecting to an address where nothing listens raises ActorDiedError."""
    async with serving(Worker(), token=TOKEN) as address:
        pass  # the listener is closed now: its port is free
    with trio.fail_after(15), pytest.raises(actors.ActorDiedError, match="cannot connect"):
        await actors.connect(address, token=TOKEN)


@pytest.mark.parametrize(
    "garbage",
    [
        b"\xc1 is never valid msgpack",
        msgspec.msgpack.encode({"not": "an envelope batch"}),
        msgspec.msgpack.encode([[99, 1, 2]]),
        "a text frame",
    ],
    ids=["bytes", "wrong-shape", "unknown-tag", "text"],
)
async def test_transport_malformed_message_closes_only_that_connection(
    garbage: bytes | str,
) -> None:
    """A client that sends bytes breaking the protocol has its connection closed with a
    protocol error (1002); other connections, and new ones, are served as before."""
    async with serving(Worker(), token=TOKEN) as address:
        async with connected(address, token=TOKEN) as bystander:
            async with _raw_client(address) as ws:
                await ws.send_message(garbage)
                closed = await wait_closed(ws)
                assert closed.reason.code == 1002
                assert closed.reason.reason
            assert await bystander.call("square", 3) == 9
        await _assert_serves(address)


async def test_transport_bad_payload_fails_only_its_call() -> None:
    """A well-formed envelope whose payload is not ``[args, kwargs]`` fails that call with
    ProtocolError; the same connection then runs a good call."""
    async with serving(Worker(), token=TOKEN) as address, _raw_client(address) as ws:
        bad = _wire.Call(7, "square", _wire.Raw(msgspec.msgpack.encode("not [args, kwargs]")))
        await ws.send_message(_wire.frame([_wire.encode_envelope(bad)]))
        failure = await _receive_envelope(ws, 7)
        assert isinstance(failure, _wire.Failure)
        assert isinstance(_codec.decode_error(failure.error), actors.ProtocolError)

        good = _wire.Call(8, "square", _wire.Raw(_codec.encode_args((5,), {})))
        await ws.send_message(_wire.frame([_wire.encode_envelope(good)]))
        result = await _receive_envelope(ws, 8)
        assert isinstance(result, _wire.Result)
        assert _codec.decode_value(result.value) == 25


async def test_transport_oversized_message_fails_only_that_call() -> None:
    """An argument bigger than the connection's max message size fails that call (or stream)
    with MessageTooLargeError saying the size and the limit; the connection stays usable."""
    limit = 64 * 1024
    async with (
        serving(Worker(), token=TOKEN) as address,
        connected(address, token=TOKEN, max_message_size=limit) as ref,
    ):
        fut = ref.submit("echo", (b"x" * (2 * limit),))
        with pytest.raises(actors.MessageTooLargeError) as info:
            await fut
        assert info.value.limit == limit
        assert info.value.size > 2 * limit
        assert str(limit) in str(info.value)
        stream = ref.submit_stream("count_async", ("big", 3, "y" * (2 * limit)))
        with pytest.raises(actors.MessageTooLargeError):
            await stream.__anext__()

        assert ref.alive
        assert await ref.call("echo", b"x" * (limit // 2)) == b"x" * (limit // 2)
        await _assert_serves(address)


async def test_transport_oversized_result_fails_only_that_call() -> None:
    """A result bigger than the listener's max message size fails that call with
    MessageTooLargeError; the connection stays usable."""
    limit = 64 * 1024
    async with (
        serving(Worker(), token=TOKEN, max_message_size=limit) as address,
        connected(address, token=TOKEN, max_message_size=limit) as ref,
    ):
        with pytest.raises(actors.MessageTooLargeError) as info:
            await ref.call("make_bytes", 2 * limit)
        assert info.value.limit == limit
        assert await ref.call("make_bytes", limit // 2) == b"x" * (limit // 2)


@pytest.mark.slow
async def test_transport_process_actor_max_message_size_bounds_arguments() -> None:
    """A process actor's ``max_message_size`` applies to its callers' connection: a bigger
    argument fails only its own call; a result over the limit fails its call too."""
    limit = 64 * 1024
    async with running_actor(worker_spec(max_message_size=limit)) as actor:
        with pytest.raises(actors.MessageTooLargeError):
            await actor.ref.call("echo", b"x" * (2 * limit))
        with pytest.raises(actors.MessageTooLargeError, match="max_message_size=65536"):
            await actor.ref.call("make_bytes", 2 * limit)
        assert await actor.ref.call("make_bytes", limit // 2) == b"x" * (limit // 2)


async def test_transport_caller_disconnect_cancels_its_calls() -> None:
    """When a caller's connection closes, the actor cancels the calls it had in flight."""
    worker = Worker()
    async with serving(worker, token=TOKEN) as address:
        async with actors.open_connection(address, token=TOKEN) as ref:
            ref.submit("hang", ("orphaned",))
            assert await ref.call("wait_started") == ["orphaned"]
        assert await worker.wait_cancelled() == ["orphaned"]
        await _assert_serves(address)


async def test_transport_connection_loss_fails_pending_calls() -> None:
    """When the actor's end goes away, every pending call fails with ActorDiedError."""
    async with trio.open_nursery() as nursery:
        async with serving(Worker(), token=TOKEN) as address:
            ref = await nursery.start(functools.partial(actors.connect, address, token=TOKEN))
            pending = [ref.submit("hang", (str(i),)) for i in range(3)]
            assert sorted(await ref.call("wait_started", 3)) == ["0", "1", "2"]
        with trio.fail_after(5):
            for fut in pending:
                with pytest.raises(actors.ActorDiedError):
                    await fut
        assert not ref.alive


@pytest.mark.autojump
async def test_transport_silent_peer_is_disconnected_after_heartbeat_timeout() -> None:
    """A peer that sends nothing (a frozen process) is disconnected once the heartbeat
    timeout passes, not before; an idle caller that is alive stays connected meanwhile."""
    timeout = actors.HEARTBEAT_TIMEOUT_S
    async with (
        serving(Worker(), token=TOKEN) as address,
        connected(address, token=TOKEN) as live,
        _raw_client(address) as silent,
    ):
        started = trio.current_time()
        with trio.fail_after(timeout + 5):
            while True:
                try:
                    await silent.get_message()  # the listener's heartbeats: read, never answered
                except ConnectionClosed:
                    break
        assert timeout <= trio.current_time() - started <= timeout + 2
        await trio.sleep(3 * timeout)  # virtual time: the live caller idles through timeouts
        assert live.alive
        assert await live.call("square", 3) == 9
