"""Process actors: spawning, exit codes, stopping for certain, tokens, orphans."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import trio
import trio.testing

import actors
from actors.testing import running_actor

from .actors_fixtures import (
    BrokenInit,
    InitError,
    Stubborn,
    descendants,
    process_gone,
    wait_process_gone,
    worker_spec,
)


async def _run_recording_code(
    system: actors.ActorSystem,
    spec: actors.ActorSpec,
    codes: list[int | None],
    *,
    task_status: trio.TaskStatus[actors.Actor] = trio.TASK_STATUS_IGNORED,
) -> None:
    codes.append(await system.run_actor(spec, task_status=task_status))


@pytest.mark.slow
async def test_run_actor_starts_a_child_process() -> None:
    """A process actor is a live child process of ours, reachable at a loopback address."""
    async with running_actor(worker_spec(name="child")) as actor:
        assert actor.placement == "process"
        assert actor.name == "child"
        assert actor.pid is not None
        assert actor.pid != os.getpid()
        assert await actor.ref.call("pid") == actor.pid
        child = psutil.Process(actor.pid)
        assert actor.pid in {p.pid for p in descendants()}
        assert actor.address is not None
        assert actor.address.startswith("ws://127.0.0.1:")
        assert actor.ref.alive
    assert process_gone(child)


@pytest.mark.slow
@pytest.mark.parametrize("spawn_method", ["fork", "exec"])
async def test_run_actor_ignores_a_package_of_the_same_name_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spawn_method: str
) -> None:
    """A project with a folder of its own named ``actors`` in the current directory still
    gets working children: the runtime's package is not shadowed there."""
    decoy = tmp_path / "actors"
    decoy.mkdir()
    (decoy / "__init__.py").write_text("raise ImportError('the decoy package was imported')\n")
    monkeypatch.chdir(tmp_path)
    async with (
        actors.open_actor_system(spawn_method=spawn_method) as system,
        trio.open_nursery() as nursery,
    ):
        actor = await nursery.start(system.run_actor, worker_spec())
        assert await actor.ref.call("echo", "hi") == "hi"
        nursery.cancel_scope.cancel()


@pytest.mark.slow
@pytest.mark.parametrize("spawn_method", ["fork", "exec"])
async def test_run_actor_children_outside_our_process_group(spawn_method: str) -> None:
    """Children (and the fork server) run in process groups of their own: a terminal's
    Ctrl-C, sent to its foreground group, reaches only the parent, which stops them."""
    async with (
        actors.open_actor_system(spawn_method=spawn_method) as system,
        trio.open_nursery() as nursery,
    ):
        actor = await nursery.start(system.run_actor, worker_spec())
        assert actor.pid is not None
        assert os.getpgid(actor.pid) != os.getpgrp()
        assert all(os.getpgid(z.pid) != os.getpgrp() for z in _fork_servers())
        nursery.cancel_scope.cancel()


def _fork_servers() -> list[psutil.Process]:
    """This process's fork servers (its forked children share their command line)."""
    return [
        p
        for p in psutil.Process().children()
        if not process_gone(p) and "actors._zygote" in p.cmdline()
    ]


@pytest.mark.slow
async def test_run_actor_after_the_fork_server_died_starts_a_new_one() -> None:
    """If the fork server dies (killed, out of memory), actors it forked keep working and
    the next actor comes from a fresh fork server."""
    async with (
        actors.open_actor_system(spawn_method="fork") as system,
        trio.open_nursery() as nursery,
    ):
        first = await nursery.start(system.run_actor, worker_spec())
        (zygote,) = _fork_servers()
        zygote.kill()
        await wait_process_gone(zygote)
        with trio.fail_after(10):
            second = await nursery.start(system.run_actor, worker_spec())
        assert second.pid not in (None, first.pid)
        assert [await a.ref.call("echo", i) for i, a in enumerate((first, second))] == [0, 1]
        (new_zygote,) = _fork_servers()
        assert new_zygote.pid != zygote.pid
        nursery.cancel_scope.cancel()


def _pidfd_targets(pid: int) -> list[int]:
    """The processes that process ``pid`` holds a pidfd of (Linux: ``/proc/PID/fdinfo``)."""
    targets = []
    for info in Path(f"/proc/{pid}/fdinfo").iterdir():
        with contextlib.suppress(OSError):
            for line in info.read_text().splitlines():
                if line.startswith("Pid:"):
                    targets.append(int(line.split()[1]))
    return targets


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="pidfds are Linux's")
@pytest.mark.parametrize("spawn_method", ["fork", "exec"])
async def test_a_child_watches_the_actor_system_process_not_the_fork_server(
    spawn_method: str,
) -> None:
    """A child's watchdog waits on the process that runs the actor system (a pidfd of it),
    also when the fork server forked it: the fork server dying ends no child."""
    async with (
        actors.open_actor_system(spawn_method=spawn_method) as system,
        trio.open_nursery() as nursery,
    ):
        actor = await nursery.start(system.run_actor, worker_spec())
        assert actor.pid is not None
        assert _pidfd_targets(actor.pid) == [os.getpid()]
        nursery.cancel_scope.cancel()


@pytest.mark.slow
async def test_run_actor_request_stop_drains_in_flight_calls() -> None:
    """``request_stop()`` lets in-flight calls finish, then the child exits with code 0."""
    codes: list[int | None] = []
    async with actors.open_actor_system() as system, trio.open_nursery() as nursery:
        actor = await nursery.start(_run_recording_code, system, worker_spec(grace_s=5), codes)
        child = psutil.Process(actor.pid)
        fut = actor.ref.submit("slow", ("draining", 0.3))
        assert await actor.ref.call("wait_started") == ["draining"]
        actor.request_stop()
        with trio.fail_after(5):
            assert await fut == "draining"
    assert codes == [0]
    assert process_gone(child)
    assert not actor.ref.alive


@pytest.mark.slow
async def test_run_actor_child_exit_fails_calls_in_flight() -> None:
    """When the child exits by itself (``os._exit``), calls in flight fail with
    ActorDiedError within 5 s, run_actor returns its exit code, and new calls fail at once."""
    codes: list[int | None] = []
    async with actors.open_actor_system() as system, trio.open_nursery() as nursery:
        actor = await nursery.start(_run_recording_code, system, worker_spec(), codes)
        waiting = actor.ref.submit("hang", ("in-flight",))
        assert await actor.ref.call("wait_started") == ["in-flight"]
        crash = actor.ref.submit("crash", (3,))
        with trio.fail_after(5):
            with pytest.raises(actors.ActorDiedError) as info:
                await waiting
            with pytest.raises(actors.ActorDiedError):
                await crash
        assert info.value.actor == actor.name
    assert codes == [3]
    assert not actor.ref.alive
    with pytest.raises(actors.ActorDiedError):
        await actor.ref.call("echo", "too late")


@pytest.mark.slow
async def test_run_actor_cancelled_stops_child_that_ignores_stop_and_sigterm() -> None:
    """Cancelling an actor's task stops its process for certain, escalating past a frozen
    Trio loop and an ignored SIGTERM to SIGKILL."""
    spec = actors.ActorSpec(factory=Stubborn, grace_s=0.2)
    async with actors.open_actor_system() as system, trio.open_nursery() as nursery:
        actor = await nursery.start(system.run_actor, spec)
        child = psutil.Process(actor.pid)
        frozen = actor.ref.submit_stream("freeze")
        with trio.fail_after(5):
            assert await frozen.__anext__() == "frozen"
        nursery.cancel_scope.cancel()
    assert process_gone(child)


@pytest.mark.slow
async def test_run_actor_constructor_error_raises_spawn_error() -> None:
    """A constructor that raises makes run_actor raise SpawnError, caused by the original
    exception (type and message), and leaves no process behind."""
    spec = actors.ActorSpec(factory=BrokenInit, args=("no model file",), name="broken")
    async with actors.open_actor_system() as system, trio.open_nursery() as nursery:
        with pytest.raises(actors.SpawnError) as info:
            await nursery.start(system.run_actor, spec)
    assert "broken" in str(info.value)
    assert type(info.value.__cause__) is InitError
    assert str(info.value.__cause__) == "no model file"
    assert "no model file" in info.value.__cause__.remote_traceback  # type: ignore[attr-defined]


async def test_run_inline_actor_constructor_error_propagates() -> None:
    """An inline actor whose constructor raises makes run_inline_actor raise that error."""
    spec = actors.ActorSpec(factory=BrokenInit, args=("inline",), placement="inline")
    async with trio.open_nursery() as nursery:
        with pytest.raises(InitError, match="inline"):
            await nursery.start(actors.run_inline_actor, spec)


async def test_run_inline_actor_request_stop_drains_and_refuses_new_calls() -> None:
    """After ``request_stop()`` an inline actor refuses new calls, finishes in-flight ones,
    and its task returns."""
    codes: list[int | None] = []
    async with actors.open_actor_system() as system, trio.open_nursery() as nursery:
        actor = await nursery.start(
            _run_recording_code, system, worker_spec("inline", grace_s=5), codes
        )
        fut = actor.ref.submit("slow", ("inline-draining", 0.2))
        actor.request_stop()
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(actors.RejectedError, match="stopping"):
            await actor.ref.call("echo", "late")
        with trio.fail_after(5):
            assert await fut == "inline-draining"
    assert codes == [None]
    assert not actor.ref.alive


@pytest.mark.slow
async def test_run_actor_token_never_on_command_line() -> None:
    """The instance token reaches the child through its environment, never its command line
    (which any local user can read), and the spec's env is applied too."""
    spec = worker_spec(env={"ACTORS_TEST_SETTING": "on"})
    async with actors.open_actor_system() as system, trio.open_nursery() as nursery:
        actor = await nursery.start(system.run_actor, spec)
        processes = descendants()  # the child, and any helper process that spawned it
        assert actor.pid in {p.pid for p in processes}
        for process in processes:
            cmdline = await trio.Path(f"/proc/{process.pid}/cmdline").read_bytes()
            assert cmdline
            assert system.token.encode() not in cmdline
        assert await actor.ref.call("token") == system.token
        assert await actor.ref.call("env", "ACTORS_TEST_SETTING") == "on"
        nursery.cancel_scope.cancel()


async def test_open_actor_system_uses_given_token_and_loopback() -> None:
    """An actor system uses the token it is given and listens on 127.0.0.1 by default."""
    async with actors.open_actor_system(token="given-token") as system:
        assert system.token == "given-token"
        assert system.control_address.startswith("ws://127.0.0.1:")


async def test_open_actor_system_reraises_body_error_unwrapped() -> None:
    """An error raised inside ``async with open_actor_system()`` comes out as itself, with
    the cause it was raised from."""
    cause = KeyError("the cause")
    with pytest.raises(LookupError, match="from the body") as info:
        async with actors.open_actor_system():
            raise LookupError("from the body") from cause
    assert info.value.__cause__ is cause


DRIVER = """
import trio
import actors


class Idle:
    async def ping(self) -> str:
        return "pong"


async def main() -> None:
    async with actors.open_actor_system() as system, trio.open_nursery() as nursery:
        first = await nursery.start(system.run_actor, actors.ActorSpec(factory=Idle))
        second = await nursery.start(system.run_actor, actors.ActorSpec(factory=Idle))
        print(first.pid, second.pid, flush=True)
        await trio.sleep_forever()


if __name__ == "__main__":
    trio.run(main)
"""


@pytest.mark.slow
async def test_run_actor_children_exit_when_parent_is_killed(tmp_path: Path) -> None:
    """A parent killed with SIGKILL (no cleanup at all) leaves no actor process running:
    each child notices its control link is gone and exits."""
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    driver = await trio.lowlevel.open_process(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL
    )
    below: list[psutil.Process] = []
    try:
        assert driver.stdout is not None
        output = b""
        with trio.fail_after(30):
            while not output.endswith(b"\n"):
                chunk = await driver.stdout.receive_some()
                assert chunk, f"driver exited early with {driver.returncode}"
                output += chunk
        pids = [int(pid) for pid in output.split()]
        below = descendants(driver.pid)  # the actors, and any helper process of the system
        assert len(pids) == 2
        assert set(pids) <= {p.pid for p in below}

        driver.kill()  # SIGKILL, by PID
        with trio.fail_after(5):
            await driver.wait()
        for process in below:
            await wait_process_gone(process, timeout=10)
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


def _wait_status(proc: psutil.Process, status: str) -> None:
    """Poll a real process until it shows ``status`` (bounded)."""
    deadline = time.monotonic() + 10
    while proc.status() != status:
        assert time.monotonic() < deadline, f"{proc.pid} never became {status}"
        time.sleep(0.01)  # polling a real process's state, bounded by the deadline


@pytest.mark.slow
async def test_run_actor_death_tells_calls_it_never_read_from_calls_it_ran() -> None:
    """When an actor process dies, a call it had acknowledged reading fails with
    ActorDiedError; one still unread in its socket fails with CallNotDeliveredError (it never
    ran, so a caller may safely send it elsewhere)."""
    async with running_actor(worker_spec()) as actor:
        assert actor.pid is not None
        ref = actor.ref
        assert isinstance(ref, actors.RemoteRef)
        proc = psutil.Process(actor.pid)
        started = ref.submit("hang", ("read",))
        deadline = trio.current_time() + 10
        while ref.received_upto < 1:  # the acknowledgement crosses from a real process
            assert trio.current_time() < deadline, "the actor never acknowledged the call"
            await trio.sleep(0.01)
        os.kill(actor.pid, signal.SIGSTOP)  # it reads nothing more
        await trio.to_thread.run_sync(_wait_status, proc, psutil.STATUS_STOPPED)
        unread = ref.submit("echo", ("unread",))
        os.kill(actor.pid, signal.SIGKILL)
        with trio.fail_after(10), pytest.raises(actors.CallNotDeliveredError):
            await unread
        with pytest.raises(actors.ActorDiedError) as info:
            await started
        assert not isinstance(info.value, actors.CallNotDeliveredError)


def test_unwrap_lone_error_keeps_a_group_of_several() -> None:
    """A group with one error comes out as that error; a group of several stays a group."""
    lone = KeyError("alone")
    with pytest.raises(KeyError) as info, actors.unwrap_lone_error():
        raise ExceptionGroup("one", [lone])
    assert info.value is lone
    with pytest.raises(ExceptionGroup), actors.unwrap_lone_error():
        raise ExceptionGroup("two", [KeyError("a"), ValueError("b")])
