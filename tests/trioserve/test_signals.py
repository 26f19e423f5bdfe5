"""Ctrl-C at a terminal: the ``trioserve`` CLI, in a session of its own, signalled the way a
terminal signals its foreground process group (every process in it)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import httpx
import psutil
import pytest
import trio

REPO = Path(__file__).resolve().parents[2]
TARGET = "tests/trioserve/signal_app.py:app"
CLI = [sys.executable, "-m", "trioserve._cli"]
STARTUP_TIMEOUT_S = 30.0
EXIT_TIMEOUT_S = 30.0
#: a second Ctrl-C stops at once: well under the drain's own bound (10 s for HTTP)
QUICK_EXIT_S = 5.0

pytestmark = pytest.mark.slow


@attrs.define
class Terminal:
    """A CLI process leading its own session, as a shell runs a foreground job."""

    process: trio.Process
    url: str = ""
    stdout: list[str] = attrs.Factory(list)
    stderr: list[str] = attrs.Factory(list)
    #: every process the CLI started, recorded once its application is up
    started: list[psutil.Process] = attrs.Factory(list)
    #: set (and replaced) whenever output arrives
    changed: trio.Event = attrs.Factory(trio.Event)

    def out(self) -> str:
        return "".join(self.stdout)

    def err(self) -> str:
        return "".join(self.stderr)

    def ctrl_c(self) -> None:
        """SIGINT to the whole process group, as a terminal sends Ctrl-C."""
        os.killpg(self.process.pid, signal.SIGINT)

    async def wait_for_output(self, text: str) -> None:
        with trio.move_on_after(EXIT_TIMEOUT_S):
            while text not in self.out():
                await self.changed.wait()
        assert text in self.out(), f"no {text!r} in the output:\n{self.out()}{self.err()}"


@asynccontextmanager
async def open_terminal() -> AsyncIterator[Terminal]:
    """``trioserve run`` of the signal app on port 0, until its application is up."""
    process = await trio.lowlevel.open_process(
        [*CLI, "run", TARGET, "--port", "0", "--control-port", "-1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
        start_new_session=True,
    )
    term = Terminal(process)
    up = trio.Event()

    async def collect(stream: trio.abc.ReceiveStream | None, into: list[str]) -> None:
        assert stream is not None
        async for data in stream:
            into.append(data.decode(errors="replace"))
            term.changed.set()
            term.changed = trio.Event()
            found = re.search(r"trioserve: application '\w+' at (http://\S+)", term.out())
            if found and not up.is_set():
                term.url = found.group(1)
                up.set()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect, process.stdout, term.stdout)
            nursery.start_soon(collect, process.stderr, term.stderr)
            with trio.move_on_after(STARTUP_TIMEOUT_S):
                await up.wait()
            assert up.is_set(), f"trioserve run did not start:\n{term.out()}{term.err()}"
            term.started = psutil.Process(process.pid).children(recursive=True)
            assert len(term.started) >= 2, "expected replica processes"
            yield term
    finally:
        if process.returncode is None:  # the test failed before it stopped
            os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
        for p in term.started:  # started (indirectly) by this test: none may stay running
            if _running(p):
                p.kill()


def _running(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_gone(processes: list[psutil.Process]) -> list[psutil.Process]:
    """Poll (they are real processes) until none of ``processes`` runs; the ones left."""
    deadline = time.monotonic() + EXIT_TIMEOUT_S
    left = processes
    while time.monotonic() < deadline:
        left = [p for p in left if _running(p)]
        if not left:
            break
        time.sleep(0.05)  # polling real processes' exit, bounded by the deadline
    return left


def assert_quiet(stderr: str) -> None:
    assert "Traceback" not in stderr, stderr
    assert "KeyboardInterrupt" not in stderr, stderr
    assert len(stderr) < 500, stderr


async def test_signals_ctrl_c_drains_request_in_flight() -> None:
    """Ctrl-C reaches only the CLI: the request in flight is answered in full, the CLI
    exits with 0 without a traceback, and no replica process remains."""
    async with open_terminal() as term, httpx.AsyncClient(timeout=EXIT_TIMEOUT_S) as http:
        async with http.stream("GET", f"{term.url}?seconds=1") as response:
            lines = response.aiter_lines()
            assert response.status_code == 200
            assert await anext(lines) == "started"
            term.ctrl_c()
            assert [line async for line in lines] == ["done"]
        with trio.fail_after(EXIT_TIMEOUT_S):
            code = await term.process.wait()
        await term.wait_for_output("trioserve: stopped")
        assert code == 0, term.out() + term.err()
        assert "trioserve: SIGINT, draining" in term.out()
        assert_quiet(term.err())
        assert wait_gone(term.started) == []


async def test_signals_second_ctrl_c_stops_now() -> None:
    """A second Ctrl-C during the drain stops at once: one line, no traceback, exit 130,
    every replica process killed."""
    async with open_terminal() as term, httpx.AsyncClient(timeout=EXIT_TIMEOUT_S) as http:
        async with http.stream("GET", term.url) as response:  # never finishes by itself
            lines = response.aiter_lines()
            assert await anext(lines) == "started"
            term.ctrl_c()
            await term.wait_for_output("trioserve: SIGINT, draining")
            signalled = trio.current_time()
            term.ctrl_c()
            with trio.fail_after(QUICK_EXIT_S):
                code = await term.process.wait()
            assert trio.current_time() - signalled < QUICK_EXIT_S
            with pytest.raises(httpx.RemoteProtocolError):
                async for _line in lines:
                    pass
        await term.wait_for_output("trioserve: SIGINT again, stopping now")
        assert code == 130
        assert "trioserve: stopped" not in term.out()
        assert_quiet(term.err())
        assert wait_gone(term.started) == []
