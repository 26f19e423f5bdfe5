"""A small keep-alive HTTP/1.1 client on h11, for the soak's legitimate HTTP load.

The soak's clients run in the serve process (handles must), so whatever a client costs per
request is taken from the loop that serves it: httpx took about a fifth of that loop's time
at 75 requests a second, and with requests queued for its pool's connections (an open-loop
load of 75 a second over 6 of them) its latencies grew through the run, to seconds. This
client costs a fraction of that, and queues for a connection on a semaphore.
"""

from __future__ import annotations

import contextlib

import h11
import trio

#: how long closing a connection may take once cancelled
CLOSE_S = 1.0


class HTTPClientError(Exception):
    """The connection broke, or the server broke the protocol, before the answer ended."""


class _Connection:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)
        #: whether an answer was begun on it (a reused connection that fails before one may
        #: have been closed by the server while idle: the request is retried once)
        self.answered = False

    async def exchange(self, request: h11.Request, body: bytes) -> tuple[int, bytes]:
        conn = self.conn
        data = conn.send(request) or b""
        if body:
            data += conn.send(h11.Data(data=body)) or b""
        data += conn.send(h11.EndOfMessage()) or b""
        await self.stream.send_all(data)
        status = 0
        parts: list[bytes] = []
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await self.stream.receive_some())
            elif isinstance(event, h11.Response):
                status = event.status_code
                self.answered = True
            elif isinstance(event, h11.Data):
                parts.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return status, b"".join(parts)
            elif isinstance(event, h11.ConnectionClosed):
                raise trio.BrokenResourceError("the server closed the connection")

    def next_cycle(self) -> bool:
        """Make the connection ready for its next request; False if it cannot take one."""
        if self.conn.our_state is not h11.DONE or self.conn.their_state is not h11.DONE:
            return False
        self.conn.start_next_cycle()
        return True

    async def aclose(self) -> None:
        with trio.move_on_after(CLOSE_S) as cleanup:
            cleanup.shield = True  # why: a connection given up is closed, cancelled or not
            await self.stream.aclose()


class HTTPPool:
    """Up to ``max_connections`` keep-alive connections to ``host:port``; a request waits
    (first come, first served) when all are busy. No tasks; :meth:`aclose` closes the idle
    connections (a busy one is closed by its request, however that ends)."""

    def __init__(self, host: str, port: int, max_connections: int) -> None:
        self.host = host
        self.port = port
        self._slots = trio.Semaphore(max_connections)
        self._idle: list[_Connection] = []

    async def request(
        self,
        method: str,
        target: str,
        *,
        body: bytes = b"",
        headers: list[tuple[str, str]] | None = None,
    ) -> tuple[int, bytes]:
        """Send a request; its answer's status and body. Raises :class:`HTTPClientError`."""
        all_headers = [("host", f"{self.host}:{self.port}"), *(headers or [])]
        if body:
            all_headers.append(("content-length", str(len(body))))
        request = h11.Request(method=method, target=target, headers=all_headers)
        async with self._slots:
            for attempt in range(2):
                reused = bool(self._idle)
                try:
                    connection = self._idle.pop() if reused else await self._open()
                except OSError as exc:
                    raise HTTPClientError(f"cannot connect: {exc!r}") from exc
                try:
                    answer = await connection.exchange(request, body)
                except (trio.BrokenResourceError, OSError, h11.ProtocolError) as exc:
                    await connection.aclose()
                    if attempt == 0 and reused and not connection.answered:
                        continue  # closed by the server while idle: once more, afresh
                    raise HTTPClientError(f"{method} {target}: {exc!r}") from exc
                except BaseException:  # why: cancelled midway, the connection is unusable
                    await connection.aclose()
                    raise
                if connection.next_cycle():
                    self._idle.append(connection)
                else:
                    await connection.aclose()
                return answer
        raise AssertionError("unreachable")

    async def _open(self) -> _Connection:
        return _Connection(await trio.open_tcp_stream(self.host, self.port))

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            with contextlib.suppress(trio.BrokenResourceError, OSError):
                await connection.aclose()
