"""Supervisors: restarts by strategy and restart type, restart intensity, giving up."""

from __future__ import annotations

import os
import random
import signal
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Literal

import psutil
import pytest
import trio
import trio.testing

import actors

from .actors_fixtures import (
    BrokenInit,
    ChangeLog,
    Placement,
    SlowRestart,
    process_gone,
    wait_process_gone,
    worker_spec,
)

Strategy = Literal["one_for_one", "one_for_all", "rest_for_one"]
RestartType = Literal["permanent", "transient", "temporary"]
#: SIGTERM then SIGKILL: how long stopping a starting child may take at the most
TERM_BOUND_S = 4.0


def _child(
    child_id: str, restart: RestartType = "permanent", placement: Placement = "process"
) -> actors.ChildSpec:
    return actors.ChildSpec(
        id=child_id, actor=worker_spec(placement, name=child_id), restart=restart
    )


async def _crash(actor: actors.Actor, code: int = 1) -> None:
    """Make the actor's process exit with ``code``; its caller sees ActorDiedError."""
    with trio.fail_after(5), pytest.raises(actors.ActorDiedError):
        await actor.ref.call("crash", code)


def _pid(sup: actors.Supervisor, child_id: str) -> int | None:
    actor = sup.actor(child_id)
    return actor.pid if actor is not None else None


def _restarted(sup: actors.Supervisor, child_id: str, old_pid: int | None) -> bool:
    pid = _pid(sup, child_id)
    return pid is not None and pid != old_pid


def _supervisor(
    system: actors.ActorSystem,
    log: ChangeLog,
    *,
    strategy: Strategy = "one_for_one",
    max_restarts: int = 3,
    period_s: float = 5.0,
) -> AbstractAsyncContextManager[actors.Supervisor]:
    """A supervisor with seeded, short backoff that reports its changes to ``log``."""
    return actors.open_supervisor(
        system,
        strategy=strategy,
        max_restarts=max_restarts,
        period_s=period_s,
        rng=random.Random(0),
        on_change=log,
        backoff_base_s=0.01,
    )


@pytest.mark.slow
async def test_supervisor_restarts_crashed_child_with_new_pid() -> None:
    """A crashed child's callers get ActorDiedError at once; the supervisor starts a fresh
    process for it (new PID, fresh state) that takes calls; leaving the block stops it."""
    log = ChangeLog()
    async with actors.open_actor_system() as system, _supervisor(system, log) as sup:
        old = await sup.start_child(_child("worker"))
        old_process = psutil.Process(old.pid)
        assert sup.children == {"worker": old}
        assert await old.ref.call("echo", "before") == "before"
        in_flight = old.ref.submit("hang", ("in-flight",))
        assert await old.ref.call("wait_started") == ["in-flight"]
        mark = len(log.events)

        await _crash(old)
        with trio.fail_after(5), pytest.raises(actors.ActorDiedError):
            await in_flight
        await log.wait_until(lambda: _restarted(sup, "worker", old.pid))

        new = sup.actor("worker")
        assert new is not None
        assert log.since(mark, "worker") == [None, new]
        assert process_gone(old_process)
        assert await new.ref.call("pid") == new.pid
        assert await new.ref.call("get_started_keys") == []  # a fresh object
        assert sup.restarts == 1
        new_process = psutil.Process(new.pid)
    assert process_gone(new_process)


@pytest.mark.slow
async def test_supervisor_gives_up_past_restart_intensity() -> None:
    """More than max_restarts exits in period_s makes the supervisor stop every child and
    raise SupervisorGaveUpError out of its ``async with`` block."""
    log = ChangeLog()
    processes: list[psutil.Process] = []

    async def crash_twice(system: actors.ActorSystem) -> None:
        async with _supervisor(system, log, max_restarts=1, period_s=60) as sup:
            bystander = await sup.start_child(_child("bystander"))
            first = await sup.start_child(_child("flaky"))
            processes.extend([psutil.Process(bystander.pid), psutil.Process(first.pid)])
            await _crash(first)
            await log.wait_until(lambda: _restarted(sup, "flaky", first.pid))
            second = sup.actor("flaky")
            assert second is not None
            processes.append(psutil.Process(second.pid))
            second.ref.submit("crash", (1,))
            with trio.fail_after(10):
                await trio.sleep_forever()  # until the supervisor gives up

    async with actors.open_actor_system() as system:
        with pytest.raises(actors.SupervisorGaveUpError) as info:
            await crash_twice(system)
    assert info.value.child == "flaky"
    assert info.value.restarts == 1
    assert info.value.period_s == 60
    assert all(process_gone(p) for p in processes)
    assert ("bystander", None) in log.events


@pytest.mark.slow
@pytest.mark.parametrize(
    ("strategy", "crashed", "expected_restarted"),
    [
        ("one_for_one", "b", {"b"}),
        ("one_for_all", "b", {"a", "b", "c"}),
        ("rest_for_one", "b", {"b", "c"}),
    ],
)
async def test_supervisor_strategy_restarts_the_right_siblings(
    strategy: Strategy, crashed: str, expected_restarted: set[str]
) -> None:
    """one_for_one restarts only the crashed child, one_for_all every child, rest_for_one
    the crashed child and those started after it: exactly those get new PIDs."""
    log = ChangeLog()
    ids = ["a", "b", "c"]
    async with (
        actors.open_actor_system() as system,
        _supervisor(system, log, strategy=strategy, max_restarts=5) as sup,
    ):
        before = {cid: (await sup.start_child(_child(cid))) for cid in ids}
        processes = {cid: psutil.Process(actor.pid) for cid, actor in before.items()}
        mark = len(log.events)
        await _crash(before[crashed])
        await log.wait_until(
            lambda: all(_restarted(sup, cid, before[cid].pid) for cid in expected_restarted)
        )
        after = {cid: sup.actor(cid) for cid in ids}
        restarted = {cid for cid in ids if after[cid] is not before[cid]}
        assert restarted == expected_restarted
        for cid in ids:
            now = after[cid]
            assert now is not None
            if cid in expected_restarted:
                assert log.since(mark, cid) == [None, now], cid  # stopped, then started again
                assert now.pid != before[cid].pid
                assert process_gone(processes[cid])
            else:
                assert log.since(mark, cid) == [], cid  # never touched
            assert await now.ref.call("pid") == now.pid


@pytest.mark.slow
async def test_supervisor_temporary_child_is_never_restarted() -> None:
    """A temporary child that crashes is forgotten, not restarted."""
    log = ChangeLog()
    async with actors.open_actor_system() as system, _supervisor(system, log) as sup:
        temp = await sup.start_child(_child("temp", restart="temporary"))
        mark = len(log.events)
        await _crash(temp, code=1)
        await log.wait_until(lambda: log.since(mark, "temp") == [None])
        await trio.testing.wait_all_tasks_blocked()  # the supervisor has made its decision
        assert "temp" not in sup.children
        assert sup.restarts == 0
        assert log.since(mark, "temp") == [None]


@pytest.mark.slow
async def test_supervisor_transient_child_restarts_only_after_abnormal_exit() -> None:
    """A transient child that exits normally (code 0) is forgotten; one that crashes is
    restarted with a new PID."""
    log = ChangeLog()
    async with actors.open_actor_system() as system, _supervisor(system, log) as sup:
        clean = await sup.start_child(_child("clean", restart="transient"))
        crashy = await sup.start_child(_child("crashy", restart="transient"))
        mark = len(log.events)

        await _crash(clean, code=0)
        await log.wait_until(lambda: log.since(mark, "clean") == [None])
        await trio.testing.wait_all_tasks_blocked()  # the supervisor has made its decision
        assert "clean" not in sup.children
        assert sup.restarts == 0

        await _crash(crashy, code=2)
        await log.wait_until(lambda: _restarted(sup, "crashy", crashy.pid))
        assert sup.restarts == 1
        assert log.since(mark, "clean") == [None]
        assert set(sup.children) == {"crashy"}


async def test_supervisor_permanent_child_restarts_after_normal_exit() -> None:
    """A permanent child is restarted even after it stops normally (here: on request)."""
    log = ChangeLog()
    async with actors.open_actor_system() as system, _supervisor(system, log) as sup:
        first = await sup.start_child(_child("inline", placement="inline"))
        first.request_stop()
        await log.wait_until(lambda: sup.actor("inline") not in (None, first))
        second = sup.actor("inline")
        assert second is not None
        assert await second.ref.call("echo", "again") == "again"
        assert not first.ref.alive
        assert sup.restarts == 1


async def test_supervisor_terminate_and_stop_child_are_not_restarted() -> None:
    """Children stopped through the supervisor (terminate or graceful stop) stay stopped."""
    log = ChangeLog()
    async with actors.open_actor_system() as system, _supervisor(system, log) as sup:
        killed = await sup.start_child(_child("killed", placement="inline"))
        drained = await sup.start_child(_child("drained", placement="inline"))
        pending = drained.ref.submit("slow", ("last call", 0.05))
        await sup.terminate_child("killed")
        await sup.stop_child_gracefully("drained")
        assert await pending == "last call"
        await trio.testing.wait_all_tasks_blocked()
        assert sup.children == {}
        assert sup.restarts == 0
        assert not killed.ref.alive
        assert not drained.ref.alive


@pytest.mark.slow
async def test_supervisor_stops_a_child_caught_mid_restart_promptly(tmp_path: Path) -> None:
    """Stopping a child while the supervisor restarts it (as serve's shutdown does right
    after a replica was killed) returns promptly and leaves neither process behind."""
    spec = actors.ActorSpec(factory=SlowRestart, args=(str(tmp_path),), name="slow", grace_s=0.5)
    restarting = trio.Path(tmp_path / "restarting")
    log = ChangeLog()
    async with actors.open_actor_system() as system, _supervisor(system, log) as sup:
        actor = await sup.start_child(actors.ChildSpec(id="slow", actor=spec))
        assert actor.pid is not None
        first = psutil.Process(actor.pid)
        os.kill(actor.pid, signal.SIGKILL)
        with trio.fail_after(10):
            while not await restarting.exists():  # noqa: ASYNC110 -- a file cannot be awaited
                await trio.sleep(0.01)  # polling a real process's progress, bounded
        second = psutil.Process(int((tmp_path / "pid-1").read_text()))
        try:
            with trio.fail_after(2 * TERM_BOUND_S):
                await sup.stop_child_gracefully("slow")
        finally:
            (tmp_path / "release").touch()
        assert sup.children == {}
    await wait_process_gone(first)
    await wait_process_gone(second)


@pytest.mark.slow
async def test_supervisor_failed_start_raises_and_is_not_supervised() -> None:
    """A child whose constructor raises makes start_child raise SpawnError; it is not kept."""
    log = ChangeLog()
    spec = actors.ChildSpec(
        id="broken", actor=actors.ActorSpec(factory=BrokenInit, args=("bad config",))
    )
    async with actors.open_actor_system() as system, _supervisor(system, log) as sup:
        with pytest.raises(actors.SpawnError) as info:
            await sup.start_child(spec)
        assert "bad config" in str(info.value.__cause__)
        assert sup.children == {}
        assert log.events == []


async def test_supervisor_rejects_duplicate_child_id() -> None:
    """Child ids are unique within a supervisor."""
    log = ChangeLog()
    async with actors.open_actor_system() as system, _supervisor(system, log) as sup:
        await sup.start_child(_child("same", placement="inline"))
        with pytest.raises(ValueError, match="same"):
            await sup.start_child(_child("same", placement="inline"))
        assert list(sup.children) == ["same"]


async def test_supervisor_rejects_unknown_strategy_and_restart_type() -> None:
    """A misspelt strategy or restart type is refused with a message showing the bad value."""
    with pytest.raises(ValueError, match="one_for_some"):
        actors.ChildSpec(id="x", actor=worker_spec(), restart="one_for_some")  # type: ignore[arg-type]
    async with actors.open_actor_system() as system:
        with pytest.raises(ValueError, match="all_for_one"):
            async with actors.open_supervisor(system, strategy="all_for_one"):  # type: ignore[arg-type]
                pass
