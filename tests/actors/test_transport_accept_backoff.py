"""A listener out of file descriptors backs off and logs once per burst of failed accepts,
then serves on (EMFILE simulated by a listener whose accepts fail on a schedule)."""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Iterator

import pytest
import trio
from trio_websocket import WebSocketConnection

from actors._transport import (
    AcceptBackoff,
    _serve_links_on,
    open_raw_link,
)

TOKEN = "accept-backoff-token"
#: failed accepts before each accept that succeeds: two bursts
BURSTS = [3, 2]
#: pauses short enough for a test, the warning interval out of the way (every burst warns)
QUICK = AcceptBackoff(min_s=0.001, max_s=0.004, interval_s=0.0)


class FlakyListener(trio.abc.Listener[trio.SocketStream]):
    """A real listener whose accepts first fail with EMFILE: ``bursts[i]`` times before
    the ``i``-th connection is accepted."""

    def __init__(self, inner: trio.SocketListener, bursts: list[int]) -> None:
        self.inner = inner
        self._bursts: Iterator[int] = iter(bursts)
        self._failing = next(self._bursts, 0)
        self.failed = 0

    async def accept(self) -> trio.SocketStream:
        await trio.lowlevel.checkpoint()
        if self._failing:
            self._failing -= 1
            self.failed += 1
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        stream = await self.inner.accept()
        self._failing = next(self._bursts, 0)
        return stream

    async def aclose(self) -> None:
        await self.inner.aclose()


async def _echo_once(ws: WebSocketConnection) -> None:
    await ws.send_message(await ws.get_message())


async def _serve(
    nursery: trio.Nursery, listener: trio.abc.Listener[trio.SocketStream], port: int
) -> None:
    async def serve(task_status: trio.TaskStatus[tuple[str, int]]) -> None:
        await _serve_links_on(
            listener,
            port,
            _echo_once,
            token=TOKEN,
            host="127.0.0.1",
            max_message_size=1024,
            max_connections=8,
            handshake_timeout=5.0,
            on_connections=None,
            backoff=QUICK,
            task_status=task_status,
        )

    await nursery.start(serve)


def _backoff_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "cannot accept connections" in r.getMessage()]


# -- the backoff (sans-IO)


def test_accept_backoff_pauses_double_up_to_the_maximum_and_reset_on_success() -> None:
    """Within a burst the pause doubles from 0.1 s up to 1 s; an accept that succeeds
    starts the next burst from 0.1 s again."""
    backoff = AcceptBackoff()
    pauses = [backoff.failed(now=0.0).pause_s for _ in range(6)]
    assert pauses == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    backoff.accepted()
    assert backoff.failed(now=0.0).pause_s == 0.1


def test_accept_backoff_warns_once_per_burst_at_most_once_per_interval() -> None:
    """The first failure of a burst warns; so does the next burst's once the interval has
    passed (saying how many failures went unlogged), but not one that follows at once."""
    backoff = AcceptBackoff(interval_s=10.0)
    assert [backoff.failed(now=0.0).warn for _ in range(3)] == [True, False, False]
    backoff.accepted()
    quick = [backoff.failed(now=1.0).warn for _ in range(2)]
    backoff.accepted()
    later = backoff.failed(now=20.0)
    assert quick == [False, False]
    assert (later.warn, later.unlogged) == (True, 4)


# -- a listener


async def test_accept_backoff_listener_warns_once_per_burst_and_serves_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Two bursts of EMFILE from accept (3 failures, then 2) log one warning each, no
    error or traceback, and each client after a burst gets in and is answered."""
    caplog.set_level(logging.WARNING)
    inner = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = inner.socket.getsockname()[1]
    listener = FlakyListener(inner, BURSTS)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await _serve(nursery, listener, port)
            for word in ("first", "second"):
                async with open_raw_link(f"ws://127.0.0.1:{port}", token=TOKEN) as ws:
                    await ws.send_message(word)
                    assert await ws.get_message() == word
            nursery.cancel_scope.cancel()
    assert listener.failed == sum(BURSTS)
    warnings = _backoff_warnings(caplog)
    assert len(warnings) == len(BURSTS)
    assert "Too many open files" in warnings[0].getMessage()
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert all(r.exc_info is None for r in caplog.records)


async def test_accept_backoff_listener_raises_other_accept_errors() -> None:
    """An accept error that is not about running out of descriptors or memory is raised,
    as ``trio.serve_listeners`` does, and the listener is closed."""

    class BrokenListener(trio.abc.Listener[trio.SocketStream]):
        closed = False

        async def accept(self) -> trio.SocketStream:
            await trio.lowlevel.checkpoint()
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))

        async def aclose(self) -> None:
            await trio.lowlevel.checkpoint()
            self.closed = True

    listener = BrokenListener()
    bad = pytest.RaisesExc(OSError, match="Bad file descriptor")
    with pytest.RaisesGroup(pytest.RaisesGroup(bad)):  # the listener's nursery, in the test's
        async with trio.open_nursery() as nursery:
            await _serve(nursery, listener, 0)
    assert listener.closed
