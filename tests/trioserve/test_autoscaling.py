"""Autoscaling end to end: replica processes added under load and removed after it, scaling
from zero, load reported by a replica process's handles, and (on the autojump clock, with
inline replicas) the delays in virtual time."""

from __future__ import annotations

import collections
import contextlib
import os
from collections.abc import Awaitable, Callable
from typing import Any

import psutil
import pytest
import trio

import trioserve as serve

FAST: dict[str, Any] = {
    "min_replicas": 1,
    "max_replicas": 3,
    "target_ongoing_requests": 1,
    "upscale_delay_s": 0.3,
    "downscale_delay_s": 0.8,
    "metrics_interval_s": 0.1,
    "look_back_period_s": 0.5,
}


@serve.deployment(max_ongoing_requests=4, autoscaling_config=FAST)
class Work:
    """Answers with its PID after 50 ms of simulated work."""

    async def __call__(self) -> int:
        await trio.sleep(0.05)  # simulated work, not waiting for a condition
        return os.getpid()


@serve.deployment(max_ongoing_requests=20)
class Ingress:
    """Forwards every request to a downstream deployment, from its own process."""

    def __init__(self, down: serve.DeploymentHandle) -> None:
        self.down = down

    async def __call__(self) -> int:
        pid: int = await self.down.remote()
        return pid


@serve.deployment(
    placement="inline",
    max_ongoing_requests=2,
    autoscaling_config={"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 2},
)
class Steady:
    """Inline (for the autojump clock): each request holds a slot for a long while."""

    async def __call__(self) -> None:
        await trio.sleep(10_000)  # simulated long request: a steady load in virtual time


# Callers in a loop: more than two Work replicas hold (max_ongoing_requests=4 each), so the
# third replica must take requests too. With fewer, the router may rightly pack them all on
# two replicas (it packs where one more request ahead costs no wait, as Work's sleep does).
CALLERS = 2 * 4 + 1


def _gone(pid: int | None) -> bool:
    return pid is not None and not psutil.pid_exists(pid)


async def _deployment(instance: serve.ServeInstance, app: str, name: str) -> serve.DeploymentStatus:
    return (await instance.status()).applications[app].deployments[name]


async def _wait_for(
    instance: serve.ServeInstance,
    app: str,
    name: str,
    done: Callable[[serve.DeploymentStatus], bool],
    seen: list[serve.DeploymentStatus] | None = None,
    timeout_s: float = 20,
    poll_s: float = 0.02,
) -> serve.DeploymentStatus:
    """Poll the deployment's status until ``done``; bounded (it follows real processes, or
    virtual time on the autojump clock)."""
    with trio.fail_after(timeout_s):
        while True:
            status = await _deployment(instance, app, name)
            if seen is not None:
                seen.append(status)
            if done(status):
                return status
            await trio.sleep(poll_s)


class Answers:
    """Which replica PIDs answered, and how many times; callers can wait for a PID set."""

    def __init__(self) -> None:
        self.counts: collections.Counter[int] = collections.Counter()
        self._changed = trio.Event()

    def add(self, pid: int) -> None:
        self.counts[pid] += 1
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, pids: set[int]) -> None:
        """Until every PID in ``pids`` has answered (bounded: replica processes answer)."""
        with trio.fail_after(20):
            while not pids <= set(self.counts):
                await self._changed.wait()


async def _call_in_loop(
    call: Callable[[], Awaitable[int]], answers: Answers, stop: trio.Event
) -> None:
    while not stop.is_set():
        answers.add(await call())


def _pids(status: serve.DeploymentStatus) -> set[int]:
    return {r.pid for r in status.replicas if r.pid is not None}


@pytest.mark.slow
async def test_autoscaling_scales_up_under_load_and_back_down() -> None:
    """Sustained load adds replica processes up to max_replicas; idle, they are removed."""
    async with serve.open_serve(http_port=None) as instance:
        handle = await instance.run(Work.bind(), name="up")
        first = await _deployment(instance, "up", "Work")
        assert (first.status, first.target_replicas, first.running_replicas) == ("HEALTHY", 1, 1)

        answers = Answers()
        stop = trio.Event()
        seen: list[serve.DeploymentStatus] = []
        async with trio.open_nursery() as nursery:
            for _ in range(CALLERS):
                nursery.start_soon(_call_in_loop, handle.remote, answers, stop)
            up = await _wait_for(
                instance,
                "up",
                "Work",
                lambda d: d.status == "HEALTHY" and d.running_replicas == 3,
                seen,
            )
            scaled_pids = _pids(up)
            assert len(scaled_pids) == 3
            assert _pids(first) <= scaled_pids
            await answers.wait_for(scaled_pids)  # the new replicas take requests
            stop.set()
        assert up.target_replicas == 3
        assert any(d.status == "UPSCALING" and d.running_replicas < 3 for d in seen)
        assert set(answers.counts) == scaled_pids

        down = await _wait_for(
            instance, "up", "Work", lambda d: len(d.replicas) == 1 and d.running_replicas == 1
        )
        assert (down.status, down.target_replicas) == ("HEALTHY", 1)
        removed = scaled_pids - _pids(down)
        assert len(removed) == 2
        assert all(_gone(pid) for pid in removed)
        assert await handle.remote() in _pids(down)


@pytest.mark.slow
async def test_autoscaling_scales_from_zero_without_losing_first_request() -> None:
    """At zero replicas, requests wait while a replica starts, then get their answers."""
    zero = {**FAST, "min_replicas": 0, "max_replicas": 1, "downscale_delay_s": 0.3}
    async with serve.open_serve(http_port=None) as instance:
        handle = await instance.run(Work.options(autoscaling_config=zero).bind(), name="zero")
        idle = await _deployment(instance, "zero", "Work")
        assert (idle.status, idle.target_replicas, idle.running_replicas) == ("HEALTHY", 0, 0)
        assert idle.replicas == []

        with trio.fail_after(20):
            responses = [handle.remote() for _ in range(3)]
            answered = [await response for response in responses]
        (pid,) = set(answered)
        started = await _deployment(instance, "zero", "Work")
        assert (started.target_replicas, _pids(started)) == (1, {pid})

        await _wait_for(instance, "zero", "Work", lambda d: d.replicas == [])
        assert _gone(pid)
        with trio.fail_after(20):
            again = await handle.remote()  # from zero a second time
        assert again != pid


@pytest.mark.slow
async def test_autoscaling_counts_load_from_replica_process_handles() -> None:
    """Requests an ingress replica makes through its handle scale the downstream deployment
    (from zero, then up), although the driver never calls it."""
    down = Work.options(name="Downstream", autoscaling_config={**FAST, "min_replicas": 0})
    async with serve.open_serve(http_port=None) as instance:
        handle = await instance.run(Ingress.bind(down.bind()), name="chain")
        idle = await _deployment(instance, "chain", "Downstream")
        assert (idle.target_replicas, idle.running_replicas) == (0, 0)

        with trio.fail_after(20):
            first = await handle.remote()
        assert _pids(await _deployment(instance, "chain", "Downstream")) == {first}

        answers = Answers()
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            for _ in range(CALLERS):
                nursery.start_soon(_call_in_loop, handle.remote, answers, stop)
            up = await _wait_for(
                instance,
                "chain",
                "Downstream",
                lambda d: d.status == "HEALTHY" and d.running_replicas == 3,
            )
            await answers.wait_for(_pids(up))
            stop.set()
        ingress = await _deployment(instance, "chain", "Ingress")
        assert (ingress.target_replicas, ingress.running_replicas) == (1, 1)


# -- delays in virtual time (inline replicas, autojump clock)


# Inline replicas are built on a worker thread, and the autojump clock runs on while it
# works: a wait for replicas to start gets a virtual deadline that only a hang reaches.
STARTING: dict[str, float] = {"timeout_s": 1e7, "poll_s": 0.5}


async def _first_change(
    instance: serve.ServeInstance, app: str, name: str, from_target: int
) -> tuple[float, serve.DeploymentStatus]:
    """The virtual time (to within half a second) at which the target count first leaves
    ``from_target``."""
    status = await _wait_for(
        instance, app, name, lambda d: d.target_replicas != from_target, timeout_s=2000, poll_s=0.5
    )
    return trio.current_time(), status


async def _hold(handle: serve.DeploymentHandle, n: int, nursery: trio.Nursery) -> None:
    """Start ``n`` long requests, each awaited (and so cancelled) by a task in ``nursery``;
    a request cut off by its replica stopping (after the grace period) just ends."""

    async def one() -> None:
        with contextlib.suppress(serve.ReplicaDiedError):
            await handle.remote()

    for _ in range(n):
        nursery.start_soon(one)


@pytest.mark.slow
@pytest.mark.autojump
async def test_autoscaling_default_delays_hold_in_virtual_time() -> None:
    """With the defaults, load adds replicas after 30 s (not before) and an idle deployment
    loses them after 600 s (not before)."""
    async with serve.open_serve(http_port=None) as instance:
        handle = await instance.run(Steady.bind(), name="slow")
        async with trio.open_nursery() as load:
            started = trio.current_time()
            await _hold(handle, 8, load)
            upscaled_at, status = await _first_change(instance, "slow", "Steady", 1)
            assert 30.0 <= upscaled_at - started <= 30.0 + 10.0 + 1.0
            assert status.target_replicas == 4
            await _wait_for(
                instance, "slow", "Steady", lambda d: d.running_replicas == 4, **STARTING
            )
            load.cancel_scope.cancel()
        stopped = trio.current_time()
        downscaled_at, status = await _first_change(instance, "slow", "Steady", 4)
        assert 600.0 <= downscaled_at - stopped <= 600.0 + 10.0 + 1.0
        assert status.target_replicas == 1


@pytest.mark.autojump
async def test_autoscaling_rerun_turns_fixed_deployment_autoscaled() -> None:
    """Re-running a fixed-size deployment with an autoscaling_config makes it autoscale."""
    fixed = Steady.options(autoscaling_config=None, num_replicas=1)
    async with serve.open_serve(http_port=None) as instance:
        await instance.run(fixed.bind(), name="turn")
        handle = await instance.run(Steady.bind(), name="turn")
        async with trio.open_nursery() as load:
            await _hold(handle, 8, load)
            with trio.move_on_after(1000):
                await _first_change(instance, "turn", "Steady", 1)
            status = await _deployment(instance, "turn", "Steady")
            load.cancel_scope.cancel()
    assert status.target_replicas == 4


@pytest.mark.autojump
async def test_autoscaling_rolling_update_keeps_scaled_count() -> None:
    """Updating the code of an autoscaled deployment under load keeps its replica count."""
    async with serve.open_serve(http_port=None) as instance:
        handle = await instance.run(Steady.bind(), name="roll")
        async with trio.open_nursery() as load:
            await _hold(handle, 8, load)
            await _wait_for(
                instance, "roll", "Steady", lambda d: d.running_replicas == 4, **STARTING
            )
            await instance.run(Steady.options(max_ongoing_requests=3).bind(), name="roll")
            status = await _deployment(instance, "roll", "Steady")
            load.cancel_scope.cancel()
    assert (status.target_replicas, status.running_replicas) == (4, 4)
