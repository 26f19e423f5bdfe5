"""An in-memory websocket pair: what a :class:`~actors._link.Link` needs of a websocket,
over Trio memory channels (no sockets), for tests that need Trio but no network."""

from __future__ import annotations

import collections

import trio
from trio_websocket import CloseReason, ConnectionClosed

#: messages either side may have in flight before ``send_message`` waits
BUFFER = 64


class MemoryWebSocket:
    """One end of :func:`memory_websocket_pair`."""

    def __init__(
        self,
        send: trio.MemorySendChannel[bytes | str],
        receive: trio.MemoryReceiveChannel[bytes | str],
    ) -> None:
        self._send = send
        self._receive = receive
        self.closed: CloseReason | None = None
        #: messages written while the channel was full, in order
        self._backlog: collections.deque[bytes | str] = collections.deque()

    def _gone(self) -> ConnectionClosed:
        return ConnectionClosed(self.closed or CloseReason(1006, "peer went away"))

    async def send_message(self, message: bytes | str) -> None:
        if self.closed is not None:
            raise self._gone()
        await self.flush()
        try:
            await self._send.send(message)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise self._gone() from None

    def write_message(self, message: bytes) -> bool:
        """Send now if the channel has room (True), else keep it for :meth:`flush`."""
        if self.closed is not None:
            raise self._gone()
        if not self._backlog:
            try:
                self._send.send_nowait(message)
                return True
            except trio.WouldBlock:
                pass
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                raise self._gone() from None
        self._backlog.append(message)
        return False

    async def flush(self) -> None:
        while self._backlog:
            try:
                await self._send.send(self._backlog[0])
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                raise self._gone() from None
            self._backlog.popleft()

    async def get_message(self) -> bytes | str:
        try:
            return await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise self._gone() from None

    async def aclose(self, code: int = 1000, reason: str | None = None) -> None:
        if self.closed is None:
            self.closed = CloseReason(code, reason)
        self._send.close()
        self._receive.close()
        await trio.lowlevel.checkpoint()


def memory_websocket_pair() -> tuple[MemoryWebSocket, MemoryWebSocket]:
    """Two connected in-memory websockets: what one sends, the other gets."""
    a_send, b_receive = trio.open_memory_channel[bytes | str](BUFFER)
    b_send, a_receive = trio.open_memory_channel[bytes | str](BUFFER)
    return MemoryWebSocket(a_send, a_receive), MemoryWebSocket(b_send, b_receive)
