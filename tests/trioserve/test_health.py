"""Health checks: a replica whose ``check_health`` fails or hangs is replaced by a new
process while the others keep answering."""

from __future__ import annotations

import collections
import os

import psutil
import pytest
import trio

import trioserve as serve

FAST_CHECKS = {"health_check_period_s": 0.2, "health_check_timeout_s": 0.5}


@serve.deployment(num_replicas=2, **FAST_CHECKS)
class Checked:
    """Healthy until told otherwise: ``fail_health`` makes checks raise, ``hang_health``
    makes them hang."""

    def __init__(self) -> None:
        self.mode = "ok"

    async def check_health(self) -> None:
        if self.mode == "fail":
            raise RuntimeError("disk full")
        if self.mode == "hang":
            await trio.sleep_forever()

    async def fail_health(self) -> int:
        self.mode = "fail"
        return os.getpid()

    async def hang_health(self) -> int:
        self.mode = "hang"
        return os.getpid()

    async def pid(self) -> int:
        await trio.sleep(0.005)  # simulated work
        return os.getpid()


@serve.deployment(placement="inline", max_ongoing_requests=1)
class BusyInline:
    """Inline (for the autojump clock): ``work`` holds the only slot until ``release``."""

    def __init__(self, release: trio.Event) -> None:
        self.release = release
        self.checks = 0

    async def check_health(self) -> None:
        self.checks += 1

    async def work(self) -> str:
        await self.release.wait()
        return "done"

    async def checks_seen(self) -> int:
        return self.checks


def _gone(pid: int) -> bool:
    return not psutil.pid_exists(pid)


async def _deployment(instance: serve.ServeInstance, app: str, name: str) -> serve.DeploymentStatus:
    return (await instance.status()).applications[app].deployments[name]


def _running_pids(status: serve.DeploymentStatus) -> set[int]:
    return {r.pid for r in status.replicas if r.pid is not None and r.state == "RUNNING"}


async def _call_in_loop(
    handle: serve.DeploymentHandle, answers: collections.Counter[int], stop: trio.Event
) -> None:
    while not stop.is_set():
        answers[await handle.pid.remote()] += 1


async def _replaced_under_load(
    instance: serve.ServeInstance, handle: serve.DeploymentHandle, victim: int
) -> tuple[serve.DeploymentStatus, collections.Counter[int], int]:
    """Keep four callers busy until the victim is replaced; returns the final status, who
    answered, and how many answers the other replica gave while the victim was out."""
    answers: collections.Counter[int] = collections.Counter()
    stop = trio.Event()
    survivor_answers_while_out = 0
    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(_call_in_loop, handle, answers, stop)
        gap_started: int | None = None
        with trio.fail_after(20):  # polls follow real processes
            while True:
                status = await _deployment(instance, "health", "Checked")
                running = _running_pids(status)
                if victim not in running and len(running) == 1 and gap_started is None:
                    (survivor,) = running
                    gap_started = answers[survivor]
                if victim not in running and len(running) == 2:
                    break
                await trio.sleep(0.02)
        if gap_started is not None:
            survivor_answers_while_out = answers[survivor] - gap_started
        stop.set()
    return status, answers, survivor_answers_while_out


@pytest.mark.slow
async def test_health_failing_check_replaces_replica_others_keep_answering() -> None:
    """A replica whose check_health raises is replaced by a new process; the healthy one is
    left alone and keeps answering meanwhile, and no request fails."""
    async with serve.open_serve(http_port=None) as instance:
        handle = await instance.run(Checked.bind(), name="health")
        before = _running_pids(await _deployment(instance, "health", "Checked"))
        victim = await handle.fail_health.remote()
        (healthy,) = before - {victim}

        status, answers, while_out = await _replaced_under_load(instance, handle, victim)
        after = _running_pids(status)
        (fresh,) = after - before
        assert healthy in after
        assert _gone(victim)
        assert while_out > 0
        assert "was unhealthy" in status.message
        assert "RuntimeError('disk full')" in status.message
        assert (status.status, status.target_replicas, status.running_replicas) == (
            "HEALTHY",
            2,
            2,
        )
        assert set(answers) <= {victim, healthy, fresh}
        with trio.fail_after(10):
            assert {await handle.pid.remote() for _ in range(20)} <= after


@pytest.mark.slow
async def test_health_hanging_check_replaces_replica_after_timeout() -> None:
    """A check_health that hangs past health_check_timeout_s gets its replica replaced."""
    async with serve.open_serve(http_port=None) as instance:
        handle = await instance.run(Checked.bind(), name="health")
        before = _running_pids(await _deployment(instance, "health", "Checked"))
        victim = await handle.hang_health.remote()
        hung_at = trio.current_time()

        status, _answers, while_out = await _replaced_under_load(instance, handle, victim)
        assert trio.current_time() - hung_at >= FAST_CHECKS["health_check_timeout_s"]
        assert _gone(victim)
        assert len(_running_pids(status) - before) == 1
        assert while_out > 0
        assert "did not answer within health_check_timeout_s" in status.message


@pytest.mark.autojump
async def test_health_checks_run_every_period() -> None:
    """check_health runs about once per health_check_period_s on a healthy replica, which
    stays."""
    release = trio.Event()
    dep = BusyInline.options(health_check_period_s=10.0)
    async with serve.open_serve(http_port=None) as instance:
        handle = await instance.run(dep.bind(release), name="periodic")
        ids = [
            r.replica_id for r in (await _deployment(instance, "periodic", "BusyInline")).replicas
        ]
        await trio.sleep(55)  # virtual time passing (autojump): five periods go by
        checks = await handle.checks_seen.remote()
        status = await _deployment(instance, "periodic", "BusyInline")
    assert checks == 5
    assert [r.replica_id for r in status.replicas] == ids
    assert status.message == ""


@pytest.mark.autojump
async def test_health_busy_replica_is_not_replaced() -> None:
    """A replica busy with max_ongoing_requests calls is not judged unhealthy for it."""
    release = trio.Event()
    dep = BusyInline.options(health_check_period_s=10.0, health_check_timeout_s=30.0)
    async with serve.open_serve(http_port=None) as instance:
        handle = await instance.run(dep.bind(release), name="busy")
        ids = [r.replica_id for r in (await _deployment(instance, "busy", "BusyInline")).replicas]
        response = handle.work.remote()
        await trio.sleep(35)  # virtual time passing (autojump): three periods while busy
        status = await _deployment(instance, "busy", "BusyInline")
        release.set()
        answer = "no answer"  # stays if the request hangs
        with trio.move_on_after(60):
            try:
                answer = await response
            except serve.ServeError as exc:
                answer = repr(exc)
    assert status.message == ""
    assert [r.replica_id for r in status.replicas] == ids
    assert answer == "done"
