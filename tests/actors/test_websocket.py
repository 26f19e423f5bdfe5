"""The websocket under a link: written from synchronous code, read by its reader, and
speaking plain RFC 6455 to other clients (trio-websocket's here)."""

from __future__ import annotations

import functools
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
import trio
from trio_websocket import ConnectionClosed

import actors
from actors._transport import open_raw_link
from actors._websocket import WebSocket

from .actors_fixtures import open_raw_websocket

TOKEN = "websocket-test-token"
TOKEN_HEADER = b"x-actors-token"


async def _echo(ws: WebSocket) -> None:
    try:
        while True:
            await ws.send_message(await ws.get_message())
    except ConnectionClosed:
        pass


@asynccontextmanager
async def _listening(
    on_link: Callable[[WebSocket], Awaitable[None]] = _echo,
    max_message_size: int = actors.DEFAULT_MAX_MESSAGE_SIZE,
) -> AsyncIterator[str]:
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(
            functools.partial(
                actors.serve_links, on_link, token=TOKEN, max_message_size=max_message_size
            )
        )
        yield f"ws://{host}:{port}"
        nursery.cancel_scope.cancel()


async def test_websocket_small_messages_are_written_at_once_and_arrive_in_order() -> None:
    """A small message is handed to the socket by ``write_message`` itself; messages
    written right after the handshake, before anything is read, all arrive in order."""
    async with _listening() as address, open_raw_link(address, token=TOKEN) as ws:
        assert all(ws.write_message(f"m{i}".encode()) for i in range(50))
        with trio.fail_after(5):
            assert [await ws.get_message() for _ in range(50)] == [
                f"m{i}".encode() for i in range(50)
            ]


async def test_websocket_what_the_socket_cannot_take_waits_for_flush() -> None:
    """A message larger than the socket takes at once waits, in order, until ``flush``
    has written it; the peer gets every byte."""
    big = os.urandom(8 * 1024 * 1024)
    async with _listening() as address, open_raw_link(address, token=TOKEN) as ws:
        written = ws.write_message(big)
        assert not ws.write_message(b"after")  # behind the rest of the big one
        assert not written
        assert ws.pending
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ws.flush)
                assert await ws.get_message() == big
                assert await ws.get_message() == b"after"
        assert not ws.pending


async def test_websocket_answers_pings_from_other_clients() -> None:
    """A plain client's ping is answered with a pong while the link reads."""
    async with (
        _listening() as address,
        open_raw_websocket(address, extra_headers=[(TOKEN_HEADER, TOKEN.encode())]) as client,
    ):
        with trio.fail_after(5):
            await client.ping(b"are you there")
            await client.send_message(b"hello")
            assert await client.get_message() == b"hello"


async def test_websocket_too_large_a_message_closes_with_1009() -> None:
    """A message over ``max_message_size`` closes the connection with code 1009."""
    async with (
        _listening(max_message_size=1024) as address,
        open_raw_websocket(address, extra_headers=[(TOKEN_HEADER, TOKEN.encode())]) as client,
    ):
        await client.send_message(b"x" * 4096)
        with trio.fail_after(5), pytest.raises(ConnectionClosed) as closed:
            await client.get_message()
        assert closed.value.reason is not None
        assert closed.value.reason.code == 1009


async def test_websocket_close_handshake_carries_the_code_both_ways() -> None:
    """Closing one side ends the other's reads with the code and reason given."""

    async def close_after_one(ws: WebSocket) -> None:
        await ws.get_message()
        await ws.aclose(code=4001, reason="enough")

    async with _listening(close_after_one) as address, open_raw_link(address, token=TOKEN) as ws:
        ws.write_message(b"one")
        with trio.fail_after(5), pytest.raises(ConnectionClosed) as closed:
            await ws.get_message()
    reason = closed.value.reason
    assert reason is not None
    assert (reason.code, reason.reason) == (4001, "enough")


async def test_websocket_peer_hanging_up_is_an_abnormal_closure() -> None:
    """A peer that closes its TCP connection without a close frame ends reads with 1006."""
    async with _listening() as address, open_raw_link(address, token=TOKEN) as ws:

        async def hang_up(server: WebSocket) -> None:
            await trio.aclose_forcefully(server._stream)

        async with _listening(hang_up) as other, open_raw_link(other, token=TOKEN) as lost:
            with trio.fail_after(5), pytest.raises(ConnectionClosed) as closed:
                await lost.get_message()
        assert closed.value.reason is not None
        assert closed.value.reason.code == 1006
        ws.write_message(b"still here")
        assert await ws.get_message() == b"still here"
