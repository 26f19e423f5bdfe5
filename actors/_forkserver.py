"""The parent's side of the fork server (see :mod:`actors._zygote`)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence

import trio

from .exceptions import SpawnError

ENV_FDS = "ACTORS_ZYGOTE_FDS"
ENV_PRELOAD = "ACTORS_PRELOAD"
REPORT_WAIT_S = 1.0
#: at shutdown, how long the zygote gets to reap its children (it kills those still running
#: after its ``ORPHAN_GRACE_S``) and exit, before it is killed
ZYGOTE_EXIT_WAIT_S = 5.0


def fork_supported() -> bool:
    return all(
        (hasattr(os, "fork"), hasattr(os, "pidfd_open"), hasattr(signal, "pidfd_send_signal"))
    )


class ForkedProcess:
    """A process forked by the zygote: waited on through a pidfd, signalled through it
    (so a reused PID is never signalled), its exit code reported by the zygote."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._reported: int | None = None
        self._report = trio.Event()
        self._exited = trio.Event()
        try:
            self._pidfd: int | None = os.pidfd_open(pid)
        except ProcessLookupError:
            self._pidfd = None

    def reported(self, code: int) -> None:
        self._reported = code
        self._report.set()

    async def watch(self) -> None:
        """Task: notice the exit (pidfd readable, or the zygote's report)."""
        try:
            if self._pidfd is not None:
                await trio.lowlevel.wait_readable(self._pidfd)
                with trio.move_on_after(REPORT_WAIT_S):
                    await self._report.wait()
            else:
                await self._report.wait()
        finally:
            self.returncode = self._reported if self._reported is not None else -1
            if self._pidfd is not None:
                trio.lowlevel.notify_closing(self._pidfd)
                os.close(self._pidfd)
                self._pidfd = None
            self._exited.set()

    async def wait(self) -> int:
        await self._exited.wait()
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self._pidfd is not None and self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._pidfd, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class ForkServer:
    """Starts the zygote and asks it for children.

    Tasks: the zygote's reader, the writer of kill requests, and one exit watcher per
    child, in the nursery given to :meth:`run` (the actor system's). Cancelling ``run``
    closes the request pipe, which ends the zygote (bounded by ``ZYGOTE_EXIT_WAIT_S``, then
    it is killed).

    Every child is someone's from the moment it exists: the zygote's until :meth:`fork`
    returns it, its caller's after. A child that :meth:`fork` cannot hand over (its caller
    was cancelled, or watching it failed) is killed by the zygote.
    """

    def __init__(self, env: Mapping[str, str], preload: Sequence[str]) -> None:
        self._env = dict(env)
        self._preload = list(preload)
        self._lock = trio.Lock()
        self._writer: trio.lowlevel.FdStream | None = None
        self._waiting: dict[str, tuple[trio.Event, list[int]]] = {}
        self._children: dict[int, ForkedProcess] = {}
        self._early: dict[int, int] = {}
        self._nursery: trio.Nursery | None = None
        self._doomed_send, self._doomed = trio.open_memory_channel[int](math.inf)
        self.pid: int | None = None
        #: why the zygote can take no more requests ("" while it can)
        self.gone = ""

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        req_r, req_w = os.pipe()
        resp_r, resp_w = os.pipe()
        env = {**self._env, ENV_FDS: f"{req_r},{resp_w}", ENV_PRELOAD: ",".join(self._preload)}
        try:
            proc = await trio.lowlevel.open_process(
                [sys.executable, "-P", "-m", "actors._zygote"],
                env=env,
                stdin=subprocess.DEVNULL,
                pass_fds=(req_r, resp_w),
                # its own process group, which its forked children inherit: a terminal's
                # Ctrl-C reaches only the driver, which drains and then stops them itself
                process_group=0,
            )
        finally:
            os.close(req_r)
            os.close(resp_w)
        self.pid = proc.pid
        writer = trio.lowlevel.FdStream(req_w)
        reader = trio.lowlevel.FdStream(resp_r)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._writer = writer
                nursery.start_soon(self._kill_doomed, writer)
                task_status.started()
                await self._read(reader)
                self._lost("the fork server exited")
                self._doomed_send.close()  # ends the kill requests' writer
        finally:
            self._lost("the fork server stopped")
            self._writer = None
            with trio.CancelScope(shield=True) as cleanup:  # why: the zygote must end
                cleanup.deadline = trio.current_time() + ZYGOTE_EXIT_WAIT_S
                await writer.aclose()
                await reader.aclose()
                await proc.wait()  # it reaps its children first
            if proc.returncode is None:
                proc.kill()
                with trio.CancelScope(shield=True) as reaping:  # why: reap what we killed
                    reaping.deadline = trio.current_time() + 1
                    await proc.wait()

    def _doom(self, pid: int) -> None:
        """Have the zygote kill its child ``pid``, which nobody else will take charge of.
        (Once the zygote is gone, its children end by themselves: see ``actors._child``.)"""
        with contextlib.suppress(trio.ClosedResourceError):
            self._doomed_send.send_nowait(pid)

    async def _kill_doomed(self, writer: trio.lowlevel.FdStream) -> None:
        """Task: pass kill requests to the zygote (if it is gone, so are its children)."""
        async for pid in self._doomed:
            line = json.dumps({"kill": pid}).encode() + b"\n"
            try:
                async with self._lock:
                    await writer.send_all(line)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return

    async def _read(self, reader: trio.lowlevel.FdStream) -> None:
        buffer = b""
        while True:
            chunk = await reader.receive_some(65536)
            if not chunk:
                return  # the zygote is gone
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                self._on_line(line.decode())

    def _lost(self, reason: str) -> None:
        """No more children can be had: fail every spawn waiting for one."""
        if not self.gone:
            self.gone = reason
        waiting, self._waiting = self._waiting, {}
        for got, _pid in waiting.values():
            got.set()

    def _on_line(self, line: str) -> None:
        kind, key, value = line.split(" ")
        if kind == "pid":
            waiter = self._waiting.pop(key, None)
            if waiter is not None:
                waiter[1].append(int(value))
                waiter[0].set()
            else:
                self._doom(int(value))  # its spawn was cancelled while the zygote forked
        elif kind == "exit":
            child = self._children.pop(int(key), None)
            if child is not None:
                child.reported(int(value))
            else:
                self._early[int(key)] = int(value)

    async def fork(self, child_id: str, env: Mapping[str, str]) -> ForkedProcess:
        """Ask the zygote for a child running ``actors._child`` with ``env`` added; raises
        :class:`SpawnError` if the zygote is gone (or goes while asked)."""
        if self.gone or self._writer is None or self._nursery is None:
            raise SpawnError(self.gone or "the fork server is not running")
        got = trio.Event()
        pid_box: list[int] = []
        self._waiting[child_id] = (got, pid_box)
        line = json.dumps({"id": child_id, "env": dict(env)}).encode() + b"\n"
        try:
            async with self._lock:
                await self._writer.send_all(line)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._waiting.pop(child_id, None)
            raise SpawnError(self.gone or "the fork server exited") from None
        try:
            await got.wait()
        except BaseException:  # why: a cancelled spawn must not leave a child; re-raised
            self._waiting.pop(child_id, None)
            if pid_box:
                self._doom(pid_box[0])
            raise
        if not pid_box:
            raise SpawnError(f"{self.gone} before forking the child (its stderr says why)")
        try:
            child = ForkedProcess(pid_box[0])
        except OSError as exc:  # e.g. EMFILE from pidfd_open: we could not watch it
            self._doom(pid_box[0])
            raise SpawnError(f"cannot watch the new child process: {exc!r}") from exc
        early = self._early.pop(child.pid, None)
        if early is not None:
            child.reported(early)
        else:
            self._children[child.pid] = child
        self._nursery.start_soon(child.watch)
        return child
