"""Connection floods under a low open-file limit: a serve process whose HTTP port and
websocket listeners are flooded up to (and past) their bounds keeps answering, restarts a
replica killed during the flood, and leaves no process behind when it shuts down.

The serve process is a subprocess (its open-file limit is lowered before anything is
imported); the flood comes from this process, over real sockets.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import h11
import psutil
import pytest
import trio

#: the serve process's soft open-file limit: low enough that the usual defaults (512 HTTP
#: connections, 256 per websocket listener) would exhaust it several times over
FD_LIMIT = 256
#: connections opened past each listener's bound
EXTRA = 10
START_TIMEOUT_S = 60.0
RESTART_TIMEOUT_S = 30.0
ANSWER_TIMEOUT_S = 5.0
#: after its shutdown, how long the serve process's descendants get to be gone
GONE_DEADLINE_S = 5.0
#: a refused flooder's pause before it connects again (an attacker's pacing: without it the
#: refused connections would spin on both cores)
FLOOD_PACE_S = 0.02
#: a flood connection closed this soon after connecting was refused (or made way)
QUICK_CLOSE_S = 0.5

DRIVER = textwrap.dedent(
    f"""
    import json
    import os
    import resource

    _soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, ({FD_LIMIT}, _hard))

    import attrs
    import trio

    import actors
    import trioserve as serve
    from trioserve._control.fd_budget import connection_bounds, open_file_limit


    @serve.deployment
    class Pid:
        async def __call__(self, request: serve.Request) -> str:
            return str(os.getpid())


    def say(**fields):
        print(json.dumps(fields), flush=True)


    async def report_replicas(instance):
        # one line each time the running replicas change (the controller's change event)
        controller = instance._controller
        last = None
        while True:
            changed = controller._changed
            replica_set = controller.apps["flood"].deployments["Pid"]
            running = {{
                actor.pid: actor.address for actor in replica_set.replicas.values()
            }}
            if running != last:
                say(replicas={{str(pid): address for pid, address in running.items()}})
                last = running
            await changed.wait()


    async def main():
        async with serve.open_serve(http_port=0) as instance:
            await instance.run(Pid.bind(), name="flood", route_prefix="/")
            controller = instance._controller
            bounds = connection_bounds(open_file_limit())
            say(
                http_port=instance.http_port,
                control=controller.system.control_address,
                controller=controller.address,
                bounds=attrs.asdict(bounds),
                replica_bound=actors.ActorSpec(factory=object).max_connections,
            )
            async with trio.open_nursery() as nursery:
                nursery.start_soon(report_replicas, instance)
                stdin = trio.lowlevel.FdStream(os.dup(0))
                while await stdin.receive_some():  # until the test closes our stdin
                    pass
                nursery.cancel_scope.cancel()
        say(stopped=True)


    trio.run(main)
    """
)


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


class Driver:
    """The serve subprocess's stdout, one JSON object a line, read by a task."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.lines: list[dict[str, Any]] = []
        self.eof = False
        self._changed = trio.Event()

    async def read(self) -> None:
        """Task: read every line until the process closes its stdout."""
        assert self.process.stdout is not None
        buffer = b""
        while True:
            chunk = await self.process.stdout.receive_some()
            if not chunk:
                break
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                self.lines.append(json.loads(line))
                self._changed.set()
                self._changed = trio.Event()
        self.eof = True
        self._changed.set()

    async def wait_for(
        self, check: Callable[[dict[str, Any]], bool], timeout: float
    ) -> dict[str, Any]:
        """The first line (past or future) for which ``check`` is true, within ``timeout``."""
        with trio.fail_after(timeout):
            seen = 0
            while True:
                for line in self.lines[seen:]:
                    if check(line):
                        return line
                seen = len(self.lines)
                assert not self.eof, "the serve process closed its stdout"
                await self._changed.wait()


@asynccontextmanager
async def open_driver(script: Path, stderr: Path) -> AsyncIterator[Driver]:
    """Start the serve subprocess; leaving the block makes sure it is gone (SIGKILL if it
    is still running: only if the test failed before shutting it down)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    with stderr.open("wb") as err:
        process = await trio.lowlevel.open_process(
            [sys.executable, str(script)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            env=env,
        )
    try:
        driver = Driver(process)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(driver.read)
            yield driver
    finally:
        if process.returncode is None:  # the test failed before shutting it down
            below = _descendants(process.pid)
            process.kill()
            with trio.CancelScope(shield=True) as reaping:  # why: reap it even if we failed
                reaping.deadline = trio.current_time() + 5
                await process.wait()
            for child in below.values():  # what it started, by PID
                if _alive(child):
                    child.kill()


class HTTPClient:
    """One keep-alive HTTP/1.1 connection, spoken with h11."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = h11.Connection(our_role=h11.CLIENT)

    @classmethod
    async def connect(cls, port: int) -> HTTPClient:
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    async def get(self, path: str) -> tuple[int, bytes]:
        """``(status, body)``; ``(0, b"")`` when the server closed without answering."""
        request = h11.Request(method="GET", target=path, headers=[("host", "flood")])
        try:
            await self.stream.send_all(self.conn.send(request) + self.conn.send(h11.EndOfMessage()))
        except trio.BrokenResourceError:
            return 0, b""
        status, body = 0, b""
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                try:
                    data = await self.stream.receive_some()
                except trio.BrokenResourceError:
                    data = b""
                self.conn.receive_data(data)
                if not data and self.conn.their_state is not h11.DONE:
                    return status, body
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
                    self.conn.start_next_cycle()
                return status, body
            elif isinstance(event, h11.ConnectionClosed):
                return status, body

    async def aclose(self) -> None:
        await self.stream.aclose()


async def request_once(port: int, path: str = "/") -> tuple[int, bytes]:
    """A legitimate client's request on a connection of its own, bounded."""
    with trio.move_on_after(ANSWER_TIMEOUT_S):
        client = await HTTPClient.connect(port)
        try:
            return await client.get(path)
        finally:
            await client.aclose()
    return 0, b""  # no answer in time


class SilentFlood:
    """``count`` TCP connections to a websocket listener that never send a byte; each one
    the listener closes (at its handshake deadline, or at once past its bound) is opened
    again: an attacker keeping the listener full.

    Tasks: one per connection, in the nursery given to :meth:`run`; cancelling it closes
    every socket. A connection whose listener is gone (connection refused) is not retried.
    """

    def __init__(self, port: int, count: int) -> None:
        self.port = port
        self.count = count
        self.open = 0
        self.quick_closes = 0
        self.turned_away = trio.Event()

    def run(self, nursery: trio.Nursery) -> None:
        for _ in range(self.count):
            nursery.start_soon(self._hold)

    async def _hold(self) -> None:
        while True:
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", self.port)
            except OSError:
                return  # the listener is gone (its replica was killed)
            opened = trio.current_time()
            self.open += 1
            try:
                await stream.receive_some()  # b"" (or a reset) once the listener closes it
            except trio.BrokenResourceError:
                pass
            finally:
                self.open -= 1
                await stream.aclose()
            if trio.current_time() - opened < QUICK_CLOSE_S:
                self.quick_closes += 1
                self.turned_away.set()
                await trio.sleep(FLOOD_PACE_S)  # an attacker's pacing, not a wait


def _descendants(pid: int) -> dict[int, psutil.Process]:
    try:
        return {p.pid: p for p in psutil.Process(pid).children(recursive=True)}
    except psutil.NoSuchProcess:
        return {}


def _alive(process: psutil.Process) -> bool:
    try:
        return bool(process.is_running() and process.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def _ppid(process: psutil.Process) -> int | None:
    try:
        return int(process.ppid())
    except psutil.NoSuchProcess:
        return None


async def _fill_http(port: int, bound: int) -> list[HTTPClient]:
    """Idle keep-alive HTTP connections, each after one answered request: ``bound`` of
    them, then EXTRA more that must get 503 at once; returns the ones held open."""
    held: list[HTTPClient] = []
    refused = 0
    for _ in range(bound + EXTRA):
        status, client = 0, None
        with trio.move_on_after(ANSWER_TIMEOUT_S):
            client = await HTTPClient.connect(port)
            status, _body = await client.get("/-/healthz")
        assert client is not None, f"connection {len(held) + refused} not accepted"
        assert status in (200, 503), f"connection {len(held) + refused} got no answer"
        if status == 200:
            held.append(client)
        else:
            refused += 1
            await client.aclose()
    assert (len(held), refused) == (bound, EXTRA)
    return held


async def _outlivers(
    seen: dict[int, psutil.Process], deadline: float
) -> tuple[dict[int, int | None], set[int]]:
    """Wait (until ``deadline``) for every process in ``seen`` to be gone; returns those
    still alive then (pid: ppid), killed by PID, and every one seen reparented to PID 1."""
    reparented: set[int] = set()
    # OS processes that are not our children have no event to wait on: poll, bounded
    while trio.current_time() < deadline:
        alive = [p for p in seen.values() if _alive(p)]
        reparented |= {p.pid for p in alive if _ppid(p) == 1}
        if not alive:
            break
        await trio.sleep(0.05)
    left = {p.pid: _ppid(p) for p in seen.values() if _alive(p)}
    for process in seen.values():  # only processes the serve subprocess started, by PID
        if _alive(process):
            process.kill()
    return left, reparented


@pytest.mark.slow
async def test_flood_at_low_fd_limit_restarts_replica_and_leaves_no_process(
    tmp_path: Path,
) -> None:
    """Under ``RLIMIT_NOFILE`` 256, with idle keep-alive HTTP connections up to and past
    the bound (503 beyond it) and silent connections holding the control, controller and
    replica listeners full: a replica SIGKILLed during the flood is replaced while the
    flood holds, everything answers 200 once it ends, and 5 s after shutdown no process
    the serve process started is alive (none reparented to PID 1)."""
    script = tmp_path / "flood_driver.py"
    script.write_text(DRIVER)
    stderr = tmp_path / "stderr.txt"
    seen: dict[int, psutil.Process] = {}
    async with open_driver(script, stderr) as driver:
        serve_pid = driver.process.pid
        ready = await driver.wait_for(lambda line: "http_port" in line, START_TIMEOUT_S)
        first = await driver.wait_for(lambda line: bool(line.get("replicas")), START_TIMEOUT_S)
        ((old_pid, replica_address),) = first["replicas"].items()
        old_pid_int = int(old_pid)
        http_port = ready["http_port"]
        bounds = ready["bounds"]
        seen.update(_descendants(serve_pid))
        assert old_pid_int in seen
        assert await request_once(http_port) == (200, old_pid.encode())

        async with trio.open_nursery() as flood:
            # silent connections: the listeners replicas connect back to, and the replica's
            floods = [
                SilentFlood(_port(ready["control"]), bounds["websocket"] + EXTRA),
                SilentFlood(_port(ready["controller"]), bounds["websocket"] + EXTRA),
                SilentFlood(_port(replica_address), ready["replica_bound"] + EXTRA),
            ]
            for silent in floods:
                silent.run(flood)
            held = await _fill_http(http_port, bounds["http"])
            with trio.fail_after(ANSWER_TIMEOUT_S):
                for silent in floods:
                    await silent.turned_away.wait()  # each listener is at its bound
            fds_in_flood = psutil.Process(serve_pid).num_fds()

            # a legitimate client gets a clear answer while the flood holds: the bound's 503
            assert (await request_once(http_port))[0] == 503

            os.kill(old_pid_int, signal.SIGKILL)
            restarted = await driver.wait_for(
                lambda line: bool(line.get("replicas")) and old_pid not in line["replicas"],
                RESTART_TIMEOUT_S,
            )
            ((new_pid, _address),) = restarted["replicas"].items()
            new = psutil.Process(int(new_pid))
            assert _alive(new)
            seen.update(_descendants(serve_pid))
            # the flood still holds: the HTTP port is at its bound, the websocket listeners
            # still turn flooders away
            for silent in floods[:2]:
                silent.turned_away = trio.Event()
            with trio.fail_after(ANSWER_TIMEOUT_S):
                for silent in floods[:2]:
                    await silent.turned_away.wait()
            assert (await request_once(http_port))[0] == 503
            fds_in_flood = max(fds_in_flood, psutil.Process(serve_pid).num_fds())

            for client in held:
                await client.aclose()
            flood.cancel_scope.cancel()

        # the flood is over: the new replica answers, and keeps answering
        with trio.fail_after(ANSWER_TIMEOUT_S):
            while (answer := await request_once(http_port)) != (200, new_pid.encode()):
                assert answer[0] in (200, 503), answer
                await trio.sleep(0.02)  # the server notices the closed connections
        answers = [await request_once(http_port) for _ in range(20)]
        assert answers == [(200, new_pid.encode())] * 20
        assert await request_once(http_port, "/-/healthz") == (200, b"success")
        seen.update(_descendants(serve_pid))

        assert driver.process.stdin is not None
        await driver.process.stdin.aclose()  # the script leaves open_serve
        with trio.fail_after(30):
            await driver.process.wait()
        exited = trio.current_time()
        assert driver.process.returncode == 0, stderr.read_text()[-3000:]
        assert driver.lines[-1] == {"stopped": True}

    left, reparented = await _outlivers(seen, exited + GONE_DEADLINE_S)
    assert left == {}, f"alive {GONE_DEADLINE_S}s after shutdown (pid: ppid): {left}"
    assert reparented == set()
    log = stderr.read_text()
    assert "Too many open files" not in log, log[-3000:]
    print(f"serve process: {fds_in_flood} fds in the flood (limit {FD_LIMIT})")
