"""Test harness: ``async def`` tests run under ``trio.run``; no test may leave a process,
and none may listen on one of trioserve's default ports (tests run in parallel).

Mark a test ``@pytest.mark.autojump`` to run it on Trio's autojump ``MockClock``.
"""

from __future__ import annotations

import functools
import inspect
import socket
import time
from collections.abc import Iterator

import psutil
import pytest
import trio
import trio.testing


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "autojump: run on trio.testing.MockClock(autojump)")


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    kwargs = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    clock = None
    if pyfuncitem.get_closest_marker("autojump") is not None:
        clock = trio.testing.MockClock(autojump_threshold=0)
    trio.run(functools.partial(pyfuncitem.obj, **kwargs), clock=clock)
    return True


#: the ports trioserve listens on when not told otherwise: HTTP, and the CLI's control endpoint
DEFAULT_PORTS = (8000, 8265)


@pytest.fixture(scope="session", autouse=True)
def default_ports_taken() -> Iterator[None]:
    """Hold trioserve's default ports for the whole run: a test that leaves a port at its
    default fails at once (``PortInUseError``), not only when pytest-xdist happens to run
    two such tests together. A port held already (by another worker) is left as it is."""
    held: list[socket.socket] = []
    for port in DEFAULT_PORTS:
        sock = socket.socket()
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen()
        except OSError:
            sock.close()
            continue
        held.append(sock)
    try:
        yield
    finally:
        for sock in held:
            sock.close()


def _running(proc: psutil.Process) -> bool:
    """Whether ``proc`` still runs (a zombie, or one that exited just now, does not)."""
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture(autouse=True)
def no_leftover_processes() -> Iterator[None]:
    """Every test must leave no child process behind (checked by PID, then reaped)."""
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    yield
    deadline = time.monotonic() + 5.0
    left: list[psutil.Process] = []
    while time.monotonic() < deadline:
        left = [p for p in me.children(recursive=True) if p.pid not in before and _running(p)]
        if not left:
            return
        time.sleep(0.05)  # polling a real process's exit, bounded by the deadline
    for p in left:
        p.kill()
    pytest.fail(f"test left processes behind: {[p.pid for p in left]}")
