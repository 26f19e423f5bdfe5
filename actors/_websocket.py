"""The websocket under a link: wsproto over a Trio socket stream, read and written by the
link's own tasks, and the handshakes that open it.

trio-websocket runs a reader task of its own per connection and hands every message to its
user through a memory channel, and every send takes a lock and yields twice. Here the task
that asks for a message reads the socket itself (no task in between), and a message is
written to the socket at once, from synchronous code, whenever nothing is waiting to be
written before it: a message usually costs one system call and no task switch. What the
socket does not take at once waits in a buffer, in order, until :meth:`WebSocket.flush`
writes it. The protocol itself (framing, masking, control frames, the HTTP upgrade) is
wsproto's, but for binary messages of one frame: those are framed and parsed by
``actors._frames`` (until the first frame of another kind arrives). The errors are
trio-websocket's (``ConnectionClosed`` with a ``CloseReason``), so code written against
either sees what it expects.

POSIX only: the socket's descriptor is read and written with ``os.read``/``os.write`` (it
is non-blocking, as Trio made it).
"""

from __future__ import annotations

import collections
import contextlib
import errno
import logging
import os
from collections.abc import Callable, Iterable
from typing import Any

import trio
from trio_websocket import CloseReason, ConnectionClosed
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Event,
    Message,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from ._frames import FrameReader, encode_binary

#: connections opened, refused and closed are logged at DEBUG (never a header's value)
logger = logging.getLogger("actors.websocket")

#: the connection was lost without a close handshake (RFC 6455)
ABNORMAL_CLOSURE = 1006
MESSAGE_TOO_BIG = 1009


class WebSocket:
    """An open websocket (its handshake done) on ``stream``, for one reader at a time.

    :meth:`get_message` reads the socket in the calling task; :meth:`write_message` writes
    a message from synchronous code; :meth:`send_message` is its async form, returning once
    the message has been handed to the socket. Control frames are answered while reading
    (pings get their pong, a close gets its reply). A message over ``max_message_size``
    closes the connection with 1009. Tasks: none.
    """

    def __init__(
        self,
        stream: trio.SocketStream,
        ws: WSConnection,
        *,
        max_message_size: int,
        receive_buffer_size: int,
        subprotocol: str | None = None,
        initial: bytes = b"",
    ) -> None:
        self._stream = stream
        self._socket = stream.socket
        self._ws = ws
        assert ws.connection is not None, "the handshake is done"
        client = ws.connection.client
        #: frames a client sends are masked, a server's are not
        self._mask = client
        #: binary frames are parsed here until the first frame of another kind; from then
        #: on (``None``) wsproto parses everything
        self._frames: FrameReader | None = FrameReader(masked=not client, max_size=max_message_size)
        self.max_message_size = max_message_size
        self._receive_size = receive_buffer_size
        self.subprotocol = subprotocol
        self._messages: collections.deque[bytes | str] = collections.deque()
        self._parts: list[bytes | str] = []
        self._part_size = 0
        #: bytes handed to this object and not yet to the socket, in order
        self._pending = bytearray()
        self._flushing = False
        self._flushed = trio.lowlevel.ParkingLot()
        self._close_reason: CloseReason | None = None
        #: set once nothing more is to be read: the peer's close frame (or the end of the
        #: stream) has arrived, or the peer broke the protocol
        self._read_done = False
        if initial:  # what came with the handshake's last bytes
            self._feed(initial)

    @property
    def closed(self) -> CloseReason | None:
        """Why the websocket closed, or None while it is open."""
        return self._close_reason

    # -- sending

    def write_message(self, message: bytes) -> bool:
        """Frame ``message`` and write it now if nothing waits before it. Returns whether
        the socket took all of it; if not, the rest waits, in order, for :meth:`flush`.
        Raises ``ConnectionClosed`` once the websocket is closed."""
        if self._close_reason is not None:
            raise ConnectionClosed(self._close_reason)
        return self._write(encode_binary(message, mask=self._mask))

    async def send_message(self, message: bytes | str) -> None:
        """Send one message; returns once it has been handed to the socket."""
        if self._close_reason is not None:
            raise ConnectionClosed(self._close_reason)
        if isinstance(message, str):
            data = self._ws.send(TextMessage(data=message))
        else:
            data = encode_binary(message, mask=self._mask)
        if self._write(data):
            await trio.lowlevel.checkpoint()
        else:
            await self.flush()

    @property
    def pending(self) -> bool:
        """Whether bytes wait to be written (see :meth:`flush`)."""
        return bool(self._pending)

    def _write(self, data: bytes) -> bool:
        if self._pending:
            self._pending += data
            return False
        fd = self._socket.fileno()  # -1 once the stream was closed: never a reused number
        if fd < 0:
            self._lost(None)
            raise ConnectionClosed(self._close_reason)
        try:
            written = os.write(fd, data)
        except BlockingIOError:
            written = 0
        except OSError as exc:
            self._lost(exc)
            raise ConnectionClosed(self._close_reason) from None
        if written < len(data):
            self._pending += memoryview(data)[written:]
            return False
        return True

    async def flush(self) -> None:
        """Wait until every byte written so far has been handed to the socket (one task
        writes, the others wait for it). Raises ``ConnectionClosed`` if the connection is
        lost first. Cancelling it leaves what is not written yet waiting, in order."""
        while self._pending:
            if self._flushing:
                await self._flushed.park()
                continue
            self._flushing = True
            try:
                await trio.lowlevel.wait_writable(self._socket)
                fd = self._socket.fileno()
                if fd < 0:
                    raise trio.ClosedResourceError
                try:
                    written = os.write(fd, self._pending)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    self._lost(exc)
                    raise ConnectionClosed(self._close_reason) from None
                del self._pending[:written]
            except trio.ClosedResourceError:
                self._lost(None)
                raise ConnectionClosed(self._close_reason) from None
            finally:
                self._flushing = False
                self._flushed.unpark_all()
        if self._close_reason is not None and self._close_reason.code == ABNORMAL_CLOSURE:
            raise ConnectionClosed(self._close_reason)

    def _lost(self, exc: OSError | None) -> None:
        """The connection is gone without a close handshake."""
        self._pending.clear()
        if self._close_reason is None:
            reason = None if exc is None else os.strerror(exc.errno or errno.EIO)
            self._close_reason = CloseReason(ABNORMAL_CLOSURE, reason)
        self._read_done = True

    # -- receiving

    async def get_message(self) -> bytes | str:
        """The next message (``bytes``, or ``str`` for a text message). Raises
        ``ConnectionClosed`` once the websocket is closed, by either side."""
        while True:
            if self._messages:
                return self._messages.popleft()
            if self._close_reason is not None:
                raise ConnectionClosed(self._close_reason)
            await self._receive()

    async def _receive(self) -> None:
        """Read what the socket has (waiting for it if need be) and handle its events."""
        waited = False
        while True:
            fd = self._socket.fileno()
            if fd < 0:
                self._lost(None)
                return
            try:
                data = os.read(fd, self._receive_size)
            except BlockingIOError:
                try:
                    await trio.lowlevel.wait_readable(self._socket)
                except trio.ClosedResourceError:
                    self._lost(None)
                    return
                waited = True
                continue
            except OSError as exc:
                self._lost(exc)
                return
            break
        if not data:
            self._lost(None)
            return
        self._feed(data)
        if not waited:
            # a read that did not wait is still a checkpoint: a peer that keeps the socket
            # full cannot starve the other tasks (what was read is handled already)
            await trio.lowlevel.checkpoint()

    def _feed(self, data: bytes) -> None:
        if self._read_done or self._ws.state == ConnectionState.CLOSED:
            return
        frames = self._frames
        if frames is not None:
            self._messages.extend(frames.feed(data))
            if frames.too_big is not None:
                self._too_big()
                return
            if frames.rest is None:
                return
            data, self._frames = frames.rest, None  # wsproto's from here on
        try:
            self._ws.receive_data(data)
        except RemoteProtocolError as err:
            if err.event_hint is not None:
                self._send_quietly(err.event_hint)
            self._close(CloseReason(1002, str(err)))
            return
        self._handle(self._ws.events())

    def _handle(self, events: Iterable[Event]) -> None:
        for event in events:
            if isinstance(event, Message):
                if not self._message_part(event):
                    return
            elif isinstance(event, Ping):
                self._send_quietly(event.response())
            elif isinstance(event, CloseConnection):
                self._on_close(event)
                return

    def _message_part(self, event: Message[Any]) -> bool:
        self._part_size += len(event.data)
        self._parts.append(event.data)
        if self._part_size > self.max_message_size:
            self._parts = []
            self._part_size = 0
            self._too_big()
            return False
        if event.message_finished:
            parts, self._parts, self._part_size = self._parts, [], 0
            if isinstance(event, TextMessage):
                self._messages.append("".join(parts))  # type: ignore[arg-type]  # why: text parts
            else:
                self._messages.append(b"".join(parts))  # type: ignore[arg-type]  # why: bytes parts
        return True

    def _too_big(self) -> None:
        reason = f"Exceeded maximum message size: {self.max_message_size} bytes"
        self._send_quietly(CloseConnection(code=MESSAGE_TOO_BIG, reason=reason))
        self._close(CloseReason(MESSAGE_TOO_BIG, reason))

    def _on_close(self, event: CloseConnection) -> None:
        if self._ws.state == ConnectionState.REMOTE_CLOSING:
            self._send_quietly(event.response())  # the close handshake's reply
        if self._close_reason is None:
            self._close_reason = CloseReason(event.code, event.reason or None)
        self._read_done = True

    def _close(self, reason: CloseReason) -> None:
        if self._close_reason is None:
            self._close_reason = reason
        self._read_done = True  # nothing more is read from a peer that broke the protocol

    def _send_quietly(self, event: Event) -> None:
        """Write a control frame if the connection can still take it."""
        with contextlib.suppress(ConnectionClosed, LocalProtocolError):
            self._write(self._ws.send(event))

    # -- closing

    async def aclose(self, code: int = 1000, reason: str | None = None) -> None:
        """Close the websocket: send a close frame (if it is still open), write what
        waits, wait for the peer's close (the caller bounds this), then close the stream.
        Idempotent."""
        try:
            if self._ws.state == ConnectionState.OPEN:
                if self._close_reason is None:
                    self._close_reason = CloseReason(code, reason)
                else:  # the peer broke the protocol: say so
                    code, reason = self._close_reason.code, self._close_reason.reason
                self._send_quietly(CloseConnection(code=code, reason=reason))
            if self._pending:
                await self.flush()
            while not self._read_done:
                await self._receive()  # drops messages that crossed the close
        except ConnectionClosed:
            pass
        finally:
            if self._close_reason is None:
                self._close_reason = CloseReason(code, reason)
            logger.debug(
                "websocket closed: %d %s", self._close_reason.code, self._close_reason.reason
            )
            await trio.aclose_forcefully(self._stream)


# -- handshakes


#: the most bytes a handshake's head (request or response, up to its blank line) may take
MAX_HANDSHAKE_BYTES = 64 * 1024


async def _read_handshake(
    stream: trio.SocketStream, ws: WSConnection, size: int
) -> tuple[list[Event], bytes]:
    """Read the handshake's head into ``ws``: its events, and the bytes that came after
    its blank line (frames, for the websocket). ``[]`` if the peer hung up first, or sent a
    head longer than ``MAX_HANDSHAKE_BYTES``. wsproto sees each chunk as it arrives (so a
    malformed head is refused at once), but nothing past the head."""
    buffered = bytearray()
    fed = 0
    while True:
        data = await stream.receive_some(size)
        if not data:
            return [], b""
        buffered += data
        end = buffered.find(b"\r\n\r\n", max(0, fed - 3))
        upto = len(buffered) if end < 0 else end + 4
        ws.receive_data(bytes(buffered[fed:upto]))
        fed = upto
        events = list(ws.events())
        if events or end >= 0:
            return events, bytes(buffered[upto:])
        if fed > MAX_HANDSHAKE_BYTES:
            return [], b""


async def accept(
    stream: trio.SocketStream,
    check: Callable[[Request], tuple[int, bytes] | None],
    *,
    subprotocol: str,
    max_message_size: int,
    receive_buffer_size: int,
) -> WebSocket | None:
    """The server's handshake on ``stream``: read the request, refuse it with the status
    and body ``check(request)`` returns (None: accept it, with ``subprotocol``). None when
    the request was refused, malformed, or the peer hung up first; the caller closes the
    stream then. The caller bounds how long this takes."""
    ws = WSConnection(ConnectionType.SERVER)
    try:
        events, initial = await _read_handshake(stream, ws, receive_buffer_size)
    except RemoteProtocolError as err:
        if err.event_hint is not None:
            with contextlib.suppress(trio.BrokenResourceError, LocalProtocolError):
                await stream.send_all(ws.send(err.event_hint))
        return None
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return None
    request = next((e for e in events if isinstance(e, Request)), None)
    if request is None:
        return None
    refusal = check(request)
    if refusal is not None:
        status, body = refusal
        logger.debug("refused a websocket handshake for %s: %d", request.target, status)
        headers = [(b"content-length", str(len(body)).encode("ascii"))]
        data = ws.send(RejectConnection(status_code=status, headers=headers, has_body=True))
        data += ws.send(RejectData(data=body))
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.send_all(data)
        return None
    try:
        await stream.send_all(ws.send(AcceptConnection(subprotocol=subprotocol)))
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return None
    logger.debug("accepted a websocket connection for %s (%s)", request.target, subprotocol)
    return WebSocket(
        stream,
        ws,
        max_message_size=max_message_size,
        receive_buffer_size=receive_buffer_size,
        subprotocol=subprotocol,
        initial=initial,
    )


class HandshakeRefused(Exception):
    """The server answered the handshake with ``status`` (not 101)."""

    def __init__(self, status: int) -> None:
        super().__init__(f"the server refused the websocket handshake: {status}")
        self.status = status


async def connect(
    stream: trio.SocketStream,
    *,
    host: str,
    resource: str,
    subprotocols: list[str],
    extra_headers: list[tuple[bytes, bytes]],
    max_message_size: int,
    receive_buffer_size: int,
) -> WebSocket | None:
    """The client's handshake on ``stream``: the websocket, or None if the server hung up
    first; :class:`HandshakeRefused` if it refused. The caller bounds how long it takes."""
    ws = WSConnection(ConnectionType.CLIENT)
    request = Request(
        host=host, target=resource, subprotocols=subprotocols, extra_headers=extra_headers
    )
    try:
        await stream.send_all(ws.send(request))
        events, initial = await _read_handshake(stream, ws, receive_buffer_size)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return None
    except RemoteProtocolError as err:
        raise HandshakeRefused(0) from err
    for event in events:
        if isinstance(event, RejectConnection):
            logger.debug("the server refused the websocket handshake: %d", event.status_code)
            raise HandshakeRefused(event.status_code)
        if isinstance(event, AcceptConnection):
            return WebSocket(
                stream,
                ws,
                max_message_size=max_message_size,
                receive_buffer_size=receive_buffer_size,
                subprotocol=event.subprotocol,
                initial=initial,  # frames that came with the answer
            )
    return None
