"""Test harness: ``async def`` tests run under ``trio.run``; no test may leave a process,
and none may listen on a fixed port (tests run in parallel).

Mark a test ``@pytest.mark.autojump`` to run it on Trio's autojump ``MockClock``.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Iterator

# Hypothesis, when first imported, registers Trio's random generator and checks it with
# gc.get_referrers(), which does not see frozen objects: imported after a test froze this
# process (the soak freezes, as a server process does: actors/_heap.py) it would warn.
import hypothesis  # noqa: F401
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
