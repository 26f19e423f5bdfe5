"""WebSockets on the HTTP server's connections, with wsproto doing the framing.

A ``GET`` asking to upgrade (``Upgrade: websocket``, ``Connection: upgrade``) reaches the
handler with a :class:`ServerWebSocket` (``HTTPRequest.websocket``) once its handshake is
sound (:func:`handshake_problem`: the server answers a bad one itself). The handler either
answers an ordinary ``HTTPReply`` (the handshake is refused) or accepts, then receives and
sends whole messages. No extension is negotiated (no compression).

Nothing is read from the client but when :meth:`ServerWebSocket.receive` asks (or a close
handshake needs the client's answer), so a client writing to a handler that does not
receive waits on its own socket instead of filling the server's memory.

The pure parts (is it an upgrade, what is wrong with the handshake, the 101's headers) are
plain functions; :class:`ServerWebSocket` does the I/O.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence

import trio
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, generate_accept_token

RECEIVE_SIZE = 64 * 1024
#: how long a close handshake may wait for the client's answer before the connection is cut
CLOSE_TIMEOUT_S = 2.0
#: how long closing the connection may take once cancelled
CLEANUP_S = 1.0
#: the close code when the connection ended without a close handshake (RFC 6455 §7.1.5)
ABNORMAL_CLOSURE = 1006
#: headers of the 101 the server sets itself; a handler's own are dropped
_HANDSHAKE_HEADERS = frozenset(
    {
        "upgrade",
        "connection",
        "sec-websocket-accept",
        "sec-websocket-protocol",
        "sec-websocket-extensions",
        "content-length",
        "transfer-encoding",
    }
)

#: sends the ``101 Switching Protocols`` with these headers; the bytes the client sent
#: after its request, and whether it had already closed its side
Switch = Callable[[list[tuple[str, str]]], Awaitable[tuple[bytes, bool]]]


class WebSocketDisconnect(Exception):
    """The websocket is closed: by the client (its code and reason), by this side (a
    message too big, 1009; the idle timeout, 1001; :meth:`ServerWebSocket.close`), or the
    connection broke (1006)."""

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason


# -- the pure parts


def _tokens(value: str) -> set[str]:
    return {token.strip().lower() for token in value.split(",")}


def is_websocket_upgrade(method: str, headers: Mapping[str, str]) -> bool:
    """Whether a request asks for a websocket (RFC 6455 §4.2.1); ``headers`` have lowercase
    names, repeated ones joined with ``", "``."""
    upgrade = headers.get("upgrade")
    return (
        upgrade is not None
        and method == "GET"
        and "websocket" in _tokens(upgrade)
        and "upgrade" in _tokens(headers.get("connection", ""))
    )


def handshake_problem(
    http_version: str, headers: Mapping[str, str]
) -> tuple[int, str, list[tuple[str, str]]] | None:
    """Why a websocket upgrade request must be refused (status, a fixed text, headers to
    add), or ``None``: an unknown version gets 426 naming the one spoken here (§4.4)."""
    version = headers.get("sec-websocket-version")
    if version is None:
        return 400, "missing sec-websocket-version", []
    if version.strip() != "13":
        return 426, "websocket version 13 is required", [("sec-websocket-version", "13")]
    if http_version == "1.0":
        return 400, "a websocket handshake needs HTTP/1.1", []
    try:
        key = base64.b64decode(headers.get("sec-websocket-key", "").strip(), validate=True)
    except binascii.Error:
        key = b""
    if len(key) != 16:
        return 400, "missing or malformed sec-websocket-key", []
    if "transfer-encoding" in headers or headers.get("content-length", "0") != "0":
        return 400, "a websocket handshake has no body", []
    return None


def offered_subprotocols(headers: Mapping[str, str]) -> list[str]:
    """The subprotocols the client offers, in its order of preference."""
    offered = headers.get("sec-websocket-protocol", "").split(",")
    return [name.strip() for name in offered if name.strip()]


def accept_headers(
    key: str, subprotocol: str | None, extra: Sequence[tuple[str, str]]
) -> list[tuple[str, str]]:
    """The headers of the 101 accepting the handshake with ``key``; of ``extra``, those
    the handshake does not own."""
    headers = [
        ("upgrade", "websocket"),
        ("connection", "Upgrade"),
        ("sec-websocket-accept", generate_accept_token(key.strip().encode("ascii")).decode()),
    ]
    if subprotocol is not None:
        headers.append(("sec-websocket-protocol", subprotocol))
    headers.extend((name, value) for name, value in extra if name.lower() not in _HANDSHAKE_HEADERS)
    return headers


def _size(data: str | bytes | bytearray) -> int:
    return len(data.encode("utf-8")) if isinstance(data, str) else len(data)


# -- the I/O


async def _close_stream(stream: trio.abc.Stream) -> None:
    with trio.move_on_after(CLEANUP_S) as cleanup:
        cleanup.shield = True  # why: the connection must be closed even when cancelled
        await stream.aclose()


class ServerWebSocket:
    """The server's end of one websocket, for the handler of its upgrade request.

    Until :meth:`accept` the connection is still HTTP (a handler refusing returns an
    ``HTTPReply``); from then on this object owns the stream. It starts no tasks: reading
    happens in :meth:`receive` (or in a close handshake waiting for the client's answer),
    one task at a time, and pings are answered then; a :meth:`receive` waiting longer than
    ``idle_timeout_s`` for the client's next bytes closes the websocket (1001). Sends are
    serialised and bounded by ``send_timeout_s`` (a client that stops reading has its
    connection cut). A send cancelled midway may leave a frame cut short: the websocket is
    then as unusable as a broken connection; the server closes the stream.
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        key: str,
        subprotocols: Sequence[str],
        switch: Switch,
        max_message_bytes: int,
        idle_timeout_s: float | None,
        send_timeout_s: float,
    ) -> None:
        self._stream = stream
        self._key = key
        #: the subprotocols the client offered, in its order of preference
        self.subprotocols = list(subprotocols)
        self._switch = switch
        self._max_message_bytes = max_message_bytes
        self._idle_timeout_s = math.inf if idle_timeout_s is None else idle_timeout_s
        self._send_timeout_s = send_timeout_s
        self._ws: Connection | None = None
        self._accepting = False
        self._sending = trio.Lock()
        self._reading = trio.Lock()
        self._messages: deque[str | bytes] = deque()
        self._text: list[str] = []
        self._binary: list[bytes] = []
        self._message_bytes = 0
        #: why the websocket ended (the first reason: ours when we closed first)
        self._closure: tuple[int, str] | None = None
        #: nothing more is to be read or sent: the close handshake is over or was given up
        self._over = trio.Event()

    @property
    def accepted(self) -> bool:
        """Whether the handler accepted (the 101 went out): the HTTP answer is void."""
        return self._ws is not None

    async def accept(
        self, subprotocol: str | None = None, headers: list[tuple[str, str]] | None = None
    ) -> None:
        """Send the ``101`` (with ``subprotocol``, which must be one the client offered, and
        ``headers``); raises :class:`WebSocketDisconnect` (1006) if the client is gone."""
        if self._accepting:
            raise RuntimeError("accept() was already called on this websocket")
        if subprotocol is not None and subprotocol not in self.subprotocols:
            raise ValueError(
                f"subprotocol {subprotocol!r} was not offered by the client; "
                f"choose one of {self.subprotocols} or None"
            )
        self._accepting = True
        received, closed = await self._switch(accept_headers(self._key, subprotocol, headers or []))
        self._ws = Connection(ConnectionType.SERVER, trailing_data=received)
        if closed:
            self._ws.receive_data(None)

    def _open(self, operation: str) -> Connection:
        if self._ws is None:
            raise RuntimeError(
                f"{operation}() before accept(): accept the websocket first, or return an "
                "HTTPReply to refuse it"
            )
        return self._ws

    def _disconnect(self) -> WebSocketDisconnect:
        code, reason = self._closure or (ABNORMAL_CLOSURE, "connection lost")
        return WebSocketDisconnect(code, reason)

    async def receive(self) -> str | bytes:
        """The client's next whole message (``str`` for text, ``bytes`` for binary), its
        fragments joined; pings are answered meanwhile. Raises :class:`WebSocketDisconnect`
        once the websocket is closed, whichever side closed it or if the connection broke,
        after the messages that came before the close."""
        self._open("receive")
        async with self._reading:
            while not self._messages:
                if self._closure is not None or self._over.is_set():
                    raise self._disconnect()
                await self._read_more(self._idle_timeout_s)
            return self._messages.popleft()

    async def send(self, data: str | bytes) -> None:
        """Send one message (text for ``str``, binary for ``bytes``); raises
        :class:`WebSocketDisconnect` once the websocket is closed."""
        ws = self._open("send")
        if self._closure is not None or ws.state is not ConnectionState.OPEN:
            raise self._disconnect()
        message: TextMessage | BytesMessage
        message = TextMessage(data=data) if isinstance(data, str) else BytesMessage(data=data)
        if not await self._transmit(message):
            raise self._disconnect()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the websocket with ``code`` and ``reason``, wait (up to
        ``CLOSE_TIMEOUT_S``) for the client's answer, then close the connection. Does
        nothing more once the websocket is closed."""
        ws = self._open("close")
        if ws.state is ConnectionState.OPEN:
            self._end(code, reason)
            await self._transmit(CloseConnection(code=code, reason=reason))
        await self._finish_closing()

    # -- inside

    def _end(self, code: int, reason: str) -> None:
        if self._closure is None:
            self._closure = (code, reason)

    async def _finish(self) -> None:
        """Nothing more is to be said: close the connection."""
        self._over.set()
        await _close_stream(self._stream)

    async def _finish_closing(self) -> None:
        """Read (dropping messages) until the client answers the close, for a while."""
        with trio.move_on_after(CLOSE_TIMEOUT_S):
            async with self._reading:
                while not self._over.is_set():
                    await self._read_more(math.inf)
        if not self._over.is_set():  # the client never answered: cut it off
            await self._finish()

    async def _read_more(self, timeout: float) -> None:
        """Receive once (waiting up to ``timeout``: past it, close 1001) and handle what
        came: whole messages queue up, pings are answered, a close ends the websocket."""
        ws = self._open("receive")
        with trio.move_on_after(timeout) as waiting:
            try:
                data = await self._stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
        if waiting.cancelled_caught:
            await self._close_for(1001, "idle timeout")
            return
        ws.receive_data(bytes(data) if data else None)
        for event in ws.events():
            await self._on_event(ws, event)
            if self._over.is_set():
                return

    async def _on_event(self, ws: Connection, event: Event) -> None:
        if isinstance(event, TextMessage | BytesMessage):
            if self._closure is None:  # once closing, the client's messages are dropped
                await self._add_fragment(event)
        elif isinstance(event, Ping):
            if ws.state is ConnectionState.OPEN:
                await self._transmit(event.response())
        elif isinstance(event, CloseConnection):
            await self._on_close(ws, event)

    async def _add_fragment(self, event: TextMessage | BytesMessage) -> None:
        self._message_bytes += _size(event.data)
        if self._message_bytes > self._max_message_bytes:
            self._text.clear()
            self._binary.clear()
            await self._close_for(1009, "message too big")
            return
        if isinstance(event, TextMessage):
            self._text.append(event.data)
        else:
            self._binary.append(bytes(event.data))
        if event.message_finished:
            whole: str | bytes
            if isinstance(event, TextMessage):
                whole = "".join(self._text)
            else:
                whole = b"".join(self._binary)
            self._messages.append(whole)
            self._text.clear()
            self._binary.clear()
            self._message_bytes = 0

    async def _on_close(self, ws: Connection, event: CloseConnection) -> None:
        reason = event.reason or ""
        if ws.state is ConnectionState.REMOTE_CLOSING:  # the client closes: answer it
            self._end(event.code, reason)
            await self._transmit(event.response())
        elif ws.state is ConnectionState.OPEN:  # the client's frames did not parse
            self._end(event.code, reason)
            await self._transmit(CloseConnection(code=event.code, reason=reason))
        else:  # it answered our close, or the connection broke (1006)
            self._end(event.code, reason)
        await self._finish()

    async def _close_for(self, code: int, reason: str) -> None:
        """Close from this side because of the client (too big, idle); the client's answer
        is awaited by whoever reads next, or when the handler is done."""
        ws = self._open("close")
        self._end(code, reason)
        if ws.state is ConnectionState.OPEN:
            await self._transmit(CloseConnection(code=code, reason=reason))

    async def _transmit(self, event: Event) -> bool:
        """Send one frame; ``False`` when the connection broke (or the client stopped
        reading for ``send_timeout_s``): the websocket is then over."""
        ws = self._open("send")
        async with self._sending:
            if self._over.is_set():
                return False
            try:
                data = ws.send(event)
            except LocalProtocolError:  # another task closed the websocket meanwhile
                return False
            sent = False
            with trio.move_on_after(self._send_timeout_s):
                try:
                    await self._stream.send_all(data)
                    sent = True
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
            if not sent:
                self._end(ABNORMAL_CLOSURE, "connection lost")
                await self._finish()
            return sent
