"""Authenticated websocket endpoints: listening for links, and connecting to an actor.

Every endpoint requires the instance token in the handshake (header ``x-actors-token``)
and the protocol version as the websocket subprotocol; a wrong or missing token is refused
with HTTP 401 before any message is read. Tokens are compared in constant time.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import NoReturn

import trio
from trio_websocket import (
    ConnectionRejected,
    HandshakeError,
    WebSocketConnection,
    WebSocketRequest,
    WebSocketServer,
    open_websocket_url,
    serve_websocket,
)

from ._groups import unwrap_lone_error
from ._link import DEFAULT_MAX_MESSAGE_SIZE, Link
from ._ref import RemoteRef
from ._wire import PROTOCOL
from .exceptions import ActorDiedError, AuthenticationError, ProtocolError

TOKEN_HEADER = b"x-actors-token"
RECEIVE_BUFFER_SIZE = 256 * 1024


def _token_bytes(token: str | bytes) -> bytes:
    return token.encode() if isinstance(token, str) else token


async def serve_links(
    on_link: Callable[[WebSocketConnection], Awaitable[None]],
    *,
    token: str | bytes,
    host: str = "127.0.0.1",
    port: int = 0,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Listen on ``host:port``; run ``on_link(ws)`` for each authenticated connection.

    Tasks: the listener and one handler task per connection, in this task's nursery;
    ``task_status.started((host, port))`` once listening. Cancelling closes everything.
    """
    secret = _token_bytes(token)

    async def handler(request: WebSocketRequest) -> None:
        supplied = b""
        for key, value in request.headers:
            if key.lower() == TOKEN_HEADER:
                supplied = value
        if not hmac.compare_digest(supplied, secret):
            await _refuse(request, 401, b"missing or wrong instance token")
            return
        if PROTOCOL not in request.proposed_subprotocols:
            await _refuse(request, 400, f"subprotocol {PROTOCOL} required".encode())
            return
        ws = await request.accept(subprotocol=PROTOCOL)
        await on_link(ws)

    async def run(task_status: trio.TaskStatus[WebSocketServer]) -> None:
        await serve_websocket(
            handler,
            host,
            port,
            None,
            max_message_size=max_message_size,
            receive_buffer_size=RECEIVE_BUFFER_SIZE,
            task_status=task_status,
        )

    async with trio.open_nursery() as nursery:
        server: WebSocketServer = await nursery.start(run)
        task_status.started((host, server.port))
        await trio.sleep_forever()
    raise AssertionError("unreachable")


async def _refuse(request: WebSocketRequest, status: int, body: bytes) -> None:
    """Answer the handshake with ``status`` and hang up. trio-websocket leaves a refused
    connection's socket open until the client closes it; an unauthenticated client must
    not be able to hold connections, so the stream is closed here (through the request's
    connection, which trio-websocket does not expose publicly)."""
    await request.reject(status, body=body)
    stream = getattr(getattr(request, "_connection", None), "_stream", None)
    if stream is not None:
        await trio.aclose_forcefully(stream)


@asynccontextmanager
async def open_raw_link(
    address: str, *, token: str | bytes, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
) -> AsyncIterator[WebSocketConnection]:
    """Open an authenticated websocket to ``address`` (``ws://host:port``)."""
    try:
        async with open_websocket_url(
            address,
            subprotocols=[PROTOCOL],
            extra_headers=[(TOKEN_HEADER, _token_bytes(token))],
            max_message_size=max_message_size,
            receive_buffer_size=RECEIVE_BUFFER_SIZE,
            connect_timeout=10,
            disconnect_timeout=2,
        ) as ws:
            if ws.subprotocol != PROTOCOL:
                raise ProtocolError(f"{address} does not speak {PROTOCOL}")
            yield ws
    except ConnectionRejected as exc:
        if exc.status_code == 401:
            raise AuthenticationError(f"{address} refused the instance token") from None
        raise ProtocolError(f"{address} refused the connection: {exc.status_code}") from None
    except HandshakeError as exc:
        raise ActorDiedError(f"cannot connect to {address}: {exc!r}") from exc


async def connect(
    address: str,
    *,
    token: str | bytes,
    name: str | None = None,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    task_status: trio.TaskStatus[RemoteRef] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Connect to the actor at ``address``; ``task_status.started(ref)`` once connected.

    Tasks: the link's reader, writer and heartbeat, in this task's nursery. Returns when the
    connection closes (pending calls then fail with ``ActorDiedError``); cancelling closes it.
    """
    ref = RemoteRef(name or address)
    async with open_raw_link(address, token=token, max_message_size=max_message_size) as ws:
        link = Link(ws, ref.on_envelope, on_close=ref.on_close, max_message_size=max_message_size)
        ref.attach(link)
        task_status.started(ref)
        await link.run()


@asynccontextmanager
async def open_connection(
    address: str, *, token: str | bytes, name: str | None = None
) -> AsyncIterator[RemoteRef]:
    """``async with open_connection(addr, token=t) as ref:`` -- a connection for this block.

    Errors from the block (or from connecting) are raised unwrapped, as they are the only
    error the block can end with.
    """
    with unwrap_lone_error():
        async with trio.open_nursery() as nursery:
            ref: RemoteRef = await nursery.start(
                lambda task_status: connect(
                    address, token=token, name=name, task_status=task_status
                )
            )
            try:
                yield ref
            finally:
                nursery.cancel_scope.cancel()
