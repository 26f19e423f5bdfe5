"""Hardening of the actor runtime against findings of an adversarial review: the token
stays out of user subprocesses, a deeply nested payload fails one call, pre-auth
connections are bounded, connecting has a real deadline, no child is orphaned, and a
connection to a peer that left is closed promptly."""

from __future__ import annotations

import base64
import contextlib
import errno
import functools
import hashlib
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import psutil
import pytest
import trio

import actors
from actors._future import CallFuture
from actors._process import ENV_TOKEN
from actors._transport import open_raw_link
from actors.testing import connected, running_actor, serving

from .actors_fixtures import GRACE_S, Worker, descendants, process_gone, wait_process_gone

TOKEN = "hardening-token"


class EnvPrinter:
    """Starts subprocesses the way user code does, and reports what they see."""

    def child_env(self) -> str:
        return subprocess.run(["env"], capture_output=True, text=True, check=True).stdout

    async def own_env(self) -> dict[str, str]:
        return dict(os.environ)

    async def token(self) -> str | None:
        return actors.instance_token()


# -- 1. the token is not inherited by the processes user code starts


@pytest.mark.slow
@pytest.mark.parametrize("spawn_method", ["fork", "exec"])
async def test_child_token_absent_from_user_subprocess_environment(spawn_method: str) -> None:
    """A subprocess started by actor code does not see the instance token (nor does the
    actor's own environment hold it), while ``instance_token()`` still returns it."""
    token = "secret-token-for-env-test-" + spawn_method
    spec = actors.ActorSpec(factory=EnvPrinter, grace_s=GRACE_S)
    async with (
        actors.open_actor_system(token=token, spawn_method=spawn_method) as system,
        trio.open_nursery() as nursery,
    ):
        actor = await nursery.start(system.run_actor, spec)
        printed = await actor.ref.call("child_env")
        assert "PATH=" in printed  # it did print an environment
        assert token not in printed
        assert ENV_TOKEN not in printed
        assert ENV_TOKEN not in await actor.ref.call("own_env")
        assert await actor.ref.call("token") == token
        nursery.cancel_scope.cancel()


# -- 2. a payload nested too deeply fails its call, not the connection

#: ``[args, kwargs]`` with ``args`` a list nested 100,000 deep: msgspec's encoder would
#: recurse on such a value, so its msgpack is written by hand
DEEP_ARGS = b"\x92" + b"\x91" * 100_000 + b"\xc0" + b"\x80"


def _submit_encoded(ref: actors.RemoteRef, method: str, payload: bytes) -> CallFuture:
    """Submit a call whose ``[args, kwargs]`` payload is already encoded."""
    assert ref.link is not None
    fut = CallFuture(label=f"{ref.name}.{method}")
    ref.link.send_nowait(ref.protocol.start(method, payload, fut))
    return fut


@pytest.mark.slow
async def test_deeply_nested_payload_fails_only_its_call() -> None:
    """A call whose argument is nested 100,000 deep fails with a clear decode error; the
    connection lives on, and the next call on the same reference succeeds."""
    async with running_actor(actors.ActorSpec(factory=Worker, grace_s=GRACE_S)) as actor:
        ref = actor.ref
        assert isinstance(ref, actors.RemoteRef)
        bystander = ref.submit("echo", ("before",))
        with trio.fail_after(10), pytest.raises(msgspec.DecodeError, match="nested too deeply"):
            await _submit_encoded(ref, "echo", DEEP_ARGS)
        assert await bystander == "before"
        assert ref.alive
        assert await ref.call("echo", "after") == "after"


# -- 3. pre-auth connections are bounded


class ConnectionCount:
    """An ``on_connections`` callback that tests wait on."""

    def __init__(self) -> None:
        self.value = 0
        self._changed = trio.Event()

    def __call__(self, count: int) -> None:
        self.value = count
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, count: int, timeout: float = 5) -> None:
        with trio.fail_after(timeout):
            while self.value != count:
                await self._changed.wait()


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


async def test_listener_frees_connections_whose_peer_hung_up_before_the_handshake() -> None:
    """Raw TCP connections that send nothing and hang up are freed at once, long before
    the handshake deadline; the process's file descriptors return to their baseline."""
    count = ConnectionCount()
    async with serving(Worker(), token=TOKEN, handshake_timeout=60, on_connections=count) as a:
        baseline = psutil.Process().num_fds()
        sockets = [await trio.open_tcp_stream("127.0.0.1", _port(a)) for _ in range(20)]
        await count.wait_for(20)
        for sock in sockets:
            await sock.aclose()
        await count.wait_for(0, timeout=2)  # well within 60 s: freed by the hang-up itself
        assert psutil.Process().num_fds() == baseline


@pytest.mark.slow
async def test_listener_closes_silent_connections_at_the_handshake_deadline() -> None:
    """A connection that sends nothing is closed by the listener once the handshake
    deadline has passed."""
    deadline = 0.3
    count = ConnectionCount()
    async with serving(
        Worker(), token=TOKEN, handshake_timeout=deadline, on_connections=count
    ) as address:
        baseline = psutil.Process().num_fds()
        started = trio.current_time()
        sockets = [await trio.open_tcp_stream("127.0.0.1", _port(address)) for _ in range(10)]
        with trio.fail_after(deadline + 2):
            for sock in sockets:
                assert await sock.receive_some() == b""  # closed by the listener
        assert trio.current_time() - started >= deadline
        await count.wait_for(0)
        for sock in sockets:
            await sock.aclose()
        assert psutil.Process().num_fds() == baseline
        async with connected(address, token=TOKEN) as ref:
            assert await ref.call("echo", 1) == 1


async def test_listener_closes_connections_beyond_max_connections(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Beyond ``max_connections`` authenticated connections a new connection is closed at
    once (one warning per burst); connected clients keep working, and new ones get in once
    slots free up. (Connections still in their handshake make way instead: see
    ``test_transport_bounds``.)"""
    count = ConnectionCount()
    caplog.set_level(logging.WARNING, logger="actors.transport")
    async with (
        serving(Worker(), token=TOKEN, max_connections=3, on_connections=count) as address,
        connected(address, token=TOKEN) as ref,
        contextlib.AsyncExitStack() as others,
    ):
        for _ in range(2):
            await others.enter_async_context(connected(address, token=TOKEN))
        await count.wait_for(3)
        refused = [await trio.open_tcp_stream("127.0.0.1", _port(address)) for _ in range(3)]
        with trio.fail_after(2):  # at once, not at the handshake deadline
            for sock in refused:
                assert await sock.receive_some() == b""
        warnings = [r for r in caplog.records if "max_connections=3" in r.getMessage()]
        assert len(warnings) == 1
        assert TOKEN not in caplog.text
        assert await ref.call("echo", "still served") == "still served"
        for sock in refused:
            await sock.aclose()
        await others.aclose()
        await count.wait_for(1)
        async with connected(address, token=TOKEN) as newcomer:
            assert await newcomer.call("echo", 2) == 2


def test_actor_spec_validates_max_connections() -> None:
    """A bad connection limit is refused with a message showing the value."""
    with pytest.raises(ValueError, match="max_connections must be >= 1, got 0"):
        actors.ActorSpec(factory=Worker, max_connections=0)


# -- 4. connecting has a real deadline


@pytest.mark.slow
async def test_connect_times_out_when_the_101_comes_late() -> None:
    """A server that reads the handshake and answers 101 only after the connect deadline
    fails the connect with ``ConnectTimeoutError`` in time (trio-websocket 0.12.2 alone
    would wait forever)."""
    connect_timeout = 0.2
    request_seen = trio.Event()
    client_failed = trio.Event()

    async def late_server(stream: trio.SocketStream) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some()
            if not chunk:
                return
            data += chunk
        request_seen.set()
        await client_failed.wait()
        key = next(
            line.split(b":", 1)[1].strip()
            for line in data.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key:")
        )
        accept = base64.b64encode(
            hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()
        )
        reply = (
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n"
            b"connection: upgrade\r\nsec-websocket-accept: " + accept + b"\r\n"
            b"sec-websocket-protocol: " + actors.PROTOCOL.encode() + b"\r\n\r\n"
        )
        with contextlib.suppress(trio.BrokenResourceError):
            await stream.send_all(reply)  # too late: the client has gone

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, late_server, 0, host="127.0.0.1")
        )
        port = listeners[0].socket.getsockname()[1]
        started = trio.current_time()
        with (
            trio.fail_after(connect_timeout + 2),
            pytest.raises(actors.ConnectTimeoutError, match="no websocket handshake within"),
        ):
            async with open_raw_link(
                f"ws://127.0.0.1:{port}", token=TOKEN, connect_timeout=connect_timeout
            ):
                pass
        assert request_seen.is_set()
        assert trio.current_time() - started >= connect_timeout
        client_failed.set()
        nursery.cancel_scope.cancel()


async def test_connect_fails_at_once_when_the_server_hangs_up_during_the_handshake() -> None:
    """A server that closes the connection instead of answering fails the connect at once
    with ``ActorDiedError``, not at the connect deadline."""

    async def hang_up(stream: trio.SocketStream) -> None:
        await stream.receive_some()
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, hang_up, 0, host="127.0.0.1")
        )
        port = listeners[0].socket.getsockname()[1]
        with trio.fail_after(5), pytest.raises(actors.ActorDiedError, match="hung up"):
            async with open_raw_link(f"ws://127.0.0.1:{port}", token=TOKEN, connect_timeout=60):
                pass
        nursery.cancel_scope.cancel()


# -- 5. no orphans


def _zygote(system: actors.ActorSystem) -> psutil.Process:
    assert system._forkserver is not None
    assert system._forkserver.pid is not None
    return psutil.Process(system._forkserver.pid)


async def _wait_children(parent: psutil.Process, expected: set[int], timeout: float) -> None:
    """Poll a real process until its live children are ``expected`` (bounded)."""
    with trio.fail_after(timeout):
        while {p.pid for p in parent.children() if not process_gone(p)} != expected:  # noqa: ASYNC110 -- OS processes have no event to wait on
            await trio.sleep(0.02)  # polling real processes, bounded by the deadline


@pytest.mark.slow
async def test_fork_child_that_cannot_be_watched_is_killed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A spawn that fails after the zygote forked (pidfd_open hits EMFILE) raises
    ``SpawnError`` and leaves no child behind."""
    spec = actors.ActorSpec(factory=Worker, grace_s=GRACE_S)
    async with (
        actors.open_actor_system(spawn_method="fork") as system,
        trio.open_nursery() as nursery,
    ):
        first = await nursery.start(system.run_actor, spec)
        zygote = _zygote(system)

        def no_fds(pid: int, flags: int = 0) -> int:
            raise OSError(errno.EMFILE, "Too many open files")

        monkeypatch.setattr(os, "pidfd_open", no_fds)
        with pytest.raises(actors.SpawnError, match="cannot watch"):
            await nursery.start(system.run_actor, spec)
        monkeypatch.undo()
        await _wait_children(zygote, {first.pid}, timeout=5)
        assert await first.ref.call("echo", "alive") == "alive"
        nursery.cancel_scope.cancel()


BLOCKING_DRIVER = """
import sys
import time

import trio

import actors


class Blocker:
    async def block(self) -> None:
        print("blocking", flush=True)
        time.sleep(60)  # blocks the actor's Trio loop: it cannot notice anything


async def main() -> None:
    async with actors.open_actor_system(spawn_method=sys.argv[1]) as system:
        async with trio.open_nursery() as nursery:
            spec = actors.ActorSpec(factory=Blocker)
            actor = await nursery.start(system.run_actor, spec)
            print(actor.pid, flush=True)
            actor.ref.submit("block")
            await trio.sleep_forever()


trio.run(main)
"""


async def _read_lines(stream: trio.abc.ReceiveStream, n: int) -> list[str]:
    data = b""
    with trio.fail_after(30):
        while data.count(b"\n") < n:
            chunk = await stream.receive_some()
            assert chunk, "the driver exited early"
            data += chunk
    return data.decode().split()


@pytest.mark.slow
@pytest.mark.parametrize("spawn_method", ["fork", "exec"])
async def test_blocked_child_exits_within_5s_of_driver_sigkill(
    tmp_path: Path, spawn_method: str
) -> None:
    """A child whose Trio loop is blocked by user code (``time.sleep`` in an ``async def``)
    still ends within 5 s of its driver's SIGKILL, and so does the fork server: nothing is
    left reparented to PID 1."""
    script = tmp_path / "driver.py"
    script.write_text(BLOCKING_DRIVER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    driver = await trio.lowlevel.open_process(
        [sys.executable, str(script), spawn_method],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    below: list[psutil.Process] = []
    try:
        assert driver.stdout is not None
        pid_line, blocking = await _read_lines(driver.stdout, 2)
        assert blocking == "blocking"
        below = descendants(driver.pid)
        assert int(pid_line) in {p.pid for p in below}
        driver.kill()
        with trio.fail_after(5):
            await driver.wait()
        killed_at = time.monotonic()
        for process in below:
            await wait_process_gone(process, timeout=max(0.1, killed_at + 5.0 - time.monotonic()))
    finally:
        for process in below:
            if not process_gone(process):
                process.kill()
        if driver.returncode is None:
            driver.kill()
            with trio.move_on_after(5) as cleanup:
                cleanup.shield = True  # why: the driver must be reaped even if we fail
                await driver.wait()
        if driver.stdout is not None:
            await driver.stdout.aclose()


# -- 6. connections to peers that left are closed promptly


def _sockets_to(port: int) -> list[Any]:
    return [
        c for c in psutil.Process().net_connections(kind="tcp") if c.raddr and c.raddr.port == port
    ]


async def test_remote_ref_aclose_closes_the_socket_at_once() -> None:
    """``await ref.aclose()`` closes the connection and its socket before it returns;
    pending calls fail, and the connection's task ends."""
    async with serving(Worker(), token=TOKEN) as address, trio.open_nursery() as nursery:
        ref: actors.RemoteRef = await nursery.start(
            lambda task_status: actors.connect(address, token=TOKEN, task_status=task_status)
        )
        assert await ref.call("echo", 1) == 1
        assert _sockets_to(_port(address))
        await ref.aclose()
        assert not ref.alive
        assert _sockets_to(_port(address)) == []
        with pytest.raises(actors.ActorDiedError):
            await ref.call("echo", 2)
        await ref.aclose()  # idempotent


async def test_connection_to_a_peer_that_left_leaves_no_close_wait_socket() -> None:
    """When the actor's side goes away, the caller's socket is closed as the connection
    ends (no CLOSE_WAIT left to garbage collection)."""
    ended = trio.Event()
    async with trio.open_nursery() as outer:
        async with serving(Worker(), token=TOKEN) as address:
            port = _port(address)

            async def run_connection(task_status: trio.TaskStatus[actors.RemoteRef]) -> None:
                try:
                    await actors.connect(address, token=TOKEN, task_status=task_status)
                finally:
                    ended.set()

            ref = await outer.start(run_connection)
            assert await ref.call("echo", 1) == 1
        with trio.fail_after(5):
            await ended.wait()
        assert _sockets_to(port) == []
