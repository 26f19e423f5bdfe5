"""Updates: reconfigure in place, rolling updates under load, graceful drain on scale-down
and shutdown, and the status of deployments that fail to start."""

from __future__ import annotations

import functools
import os
import threading
from pathlib import Path
from typing import Any

import psutil
import pytest
import trio
import trio.testing

import trioserve as serve

from . import serve_fixtures as fx


@serve.deployment(num_replicas=2, user_config={"threshold": 1})
class Tuned:
    """Records the user_config ``reconfigure`` received and how often it was called."""

    def __init__(self) -> None:
        self.config: Any = None
        self.calls = 0

    def reconfigure(self, config: Any) -> None:
        self.config = config
        self.calls += 1

    async def state(self) -> list[Any]:
        await trio.sleep(0.01)  # simulated work: concurrent calls overlap
        return [os.getpid(), self.config, self.calls]


@serve.deployment(num_replicas=2, max_ongoing_requests=4)
class Versioned:
    """Version one: answers ``["v1", pid]``."""

    async def __call__(self) -> list[Any]:
        await trio.sleep(0.01)  # simulated work
        return ["v1", os.getpid()]


@serve.deployment(num_replicas=2, max_ongoing_requests=4)
class VersionedTwo:
    """Version two of the same deployment (deployed under the name ``Versioned``)."""

    async def __call__(self) -> list[Any]:
        await trio.sleep(0.01)  # simulated work
        return ["v2", os.getpid()]


@serve.deployment(num_replicas=2)
class Blocker:
    """``block(folder)`` marks ``started-<pid>`` in ``folder`` and returns its PID once
    ``release-<pid>`` appears there (a release that works across processes)."""

    async def block(self, folder: str) -> int:
        pid = os.getpid()
        await trio.Path(folder, f"started-{pid}").touch()
        release = trio.Path(folder, f"release-{pid}")
        while not await release.exists():  # noqa: ASYNC110 (a file cannot be awaited)
            await trio.sleep(0.01)
        return pid

    async def pid(self) -> int:
        await trio.sleep(0.01)  # simulated work: concurrent calls overlap
        return os.getpid()


@serve.deployment(placement="inline", max_ongoing_requests=1, user_config={"v": 1})
class BusyTuned:
    """Inline (for the autojump clock): ``work`` holds the only slot until ``release``."""

    def __init__(self, release: trio.Event) -> None:
        self.release = release
        self.config: Any = None

    def reconfigure(self, config: Any) -> None:
        self.config = config

    async def work(self) -> str:
        await self.release.wait()
        return "done"

    async def current(self) -> Any:
        return self.config


async def _started_pids(folder: trio.Path) -> set[int]:
    """The PIDs that marked ``started-<pid>`` in ``folder`` (see :class:`Blocker`)."""
    return {int(path.name.split("-")[1]) for path in await folder.glob("started-*")}


def _gone(pid: int) -> bool:
    return not psutil.pid_exists(pid)


async def _deployment(instance: serve.ServeInstance, app: str, name: str) -> serve.DeploymentStatus:
    return (await instance.status()).applications[app].deployments[name]


def _pids(status: serve.DeploymentStatus) -> set[int]:
    return {r.pid for r in status.replicas if r.pid is not None}


async def _wait_for(
    instance: serve.ServeInstance,
    app: str,
    name: str,
    done: Any,
) -> serve.DeploymentStatus:
    """Poll the deployment's status until ``done(status)``: bounded, follows processes."""
    with trio.fail_after(20):
        while True:
            status = await _deployment(instance, app, name)
            if done(status):
                return status
            await trio.sleep(0.02)


# -- reconfigure


@pytest.mark.slow
async def test_updates_user_config_change_reconfigures_every_replica_in_place() -> None:
    """Re-running with a new user_config calls reconfigure on every replica, no restart."""
    async with serve.open_serve(http_port=None) as instance:
        handle = await instance.run(Tuned.bind(), name="tune")
        pids = _pids(await _deployment(instance, "tune", "Tuned"))
        assert len(pids) == 2

        handle = await instance.run(Tuned.options(user_config={"threshold": 2}).bind(), name="tune")
        status = await _deployment(instance, "tune", "Tuned")
        assert _pids(status) == pids
        assert (status.status, status.running_replicas) == ("HEALTHY", 2)
        pending = [handle.state.remote() for _ in range(2)]  # one per replica
        states = [await response for response in pending]
        assert sorted(states) == sorted([pid, {"threshold": 2}, 2] for pid in pids)


@pytest.mark.autojump
async def test_updates_user_config_reaches_busy_replica() -> None:
    """A replica running max_ongoing_requests calls still gets its new user_config."""
    release = trio.Event()
    outcome: list[str] = []
    async with serve.open_serve(http_port=None) as instance:
        handle = await instance.run(BusyTuned.bind(release), name="busy")
        response = handle.work.remote()

        async def rerun() -> None:
            changed = BusyTuned.options(user_config={"v": 2}).bind(release)
            try:
                await instance.run(changed, name="busy")
                outcome.append("updated")
            except serve.DeploymentFailedError as exc:
                outcome.append(repr(exc))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(rerun)
            await trio.sleep(1)  # virtual time passing (autojump): the update is under way
            release.set()
        answer = await response
        config = await handle.current.remote()
    assert answer == "done"
    assert outcome == ["updated"]
    assert config == {"v": 2}


# -- rolling updates


@pytest.mark.parametrize(
    ("change", "new_version"),
    [
        ("option", "v1"),
        ("class", "v2"),
    ],
)
@pytest.mark.slow
async def test_updates_rolling_update_under_load_fails_no_request(
    change: str, new_version: str
) -> None:
    """Re-running a changed deployment under steady load replaces every replica process
    without a single failed request; once ``run`` returns only new replicas answer."""
    if change == "option":
        new_app = Versioned.options(max_ongoing_requests=3).bind()
    else:
        new_app = VersionedTwo.options(name="Versioned").bind()
    async with serve.open_serve(http_port=None) as instance:
        handle = await instance.run(Versioned.bind(), name="roll")
        old = _pids(await _deployment(instance, "roll", "Versioned"))
        answers: list[tuple[bool, str, int]] = []  # (sent after run returned, version, pid)
        updated = False
        stop = trio.Event()
        changed = [trio.Event()]

        async def call_in_loop() -> None:
            while not stop.is_set():
                sent_after = updated
                version, pid = await handle.remote()
                answers.append((sent_after, version, pid))
                changed[0].set()
                changed[0] = trio.Event()

        async def until_answers(n: int) -> None:
            with trio.fail_after(20):  # bounded: real replica processes answer
                while len(answers) < n:
                    await changed[0].wait()

        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(call_in_loop)
            await until_answers(20)
            await instance.run(new_app, name="roll")
            updated = True
            await until_answers(len(answers) + 20)
            stop.set()

        status = await _deployment(instance, "roll", "Versioned")
        new = _pids(status)
        assert len(new) == 2
        assert new.isdisjoint(old)
        assert all(_gone(pid) for pid in old)
        assert (status.status, status.target_replicas, status.running_replicas) == (
            "HEALTHY",
            2,
            2,
        )
        after = [(version, pid) for sent_after, version, pid in answers if sent_after]
        assert after
        assert {version for version, _ in after} == {new_version}
        assert {pid for _, pid in after} <= new
        assert {pid for _, _, pid in answers} <= old | new


@pytest.mark.slow
async def test_updates_failed_rolling_update_keeps_old_replicas() -> None:
    """A re-run whose new constructor raises fails, and the old replicas keep serving."""
    broken = fx.BrokenInit.options(name="Versioned", num_replicas=2)
    async with serve.open_serve(http_port=None) as instance:
        handle = await instance.run(Versioned.bind(), name="roll")
        old = _pids(await _deployment(instance, "roll", "Versioned"))
        with pytest.raises(serve.DeploymentFailedError) as info:
            await instance.run(broken.bind(7), name="roll")
        assert isinstance(info.value.__cause__, fx.CustomError)
        app = (await instance.status()).applications["roll"]
        assert app.status == "RUNNING"
        assert "previous version kept" in app.message
        assert "constructor failed with code 7" in app.message
        status = app.deployments["Versioned"]
        assert _pids(status) == old
        assert (status.status, status.running_replicas) == ("HEALTHY", 2)
        version, pid = await handle.remote()
        assert (version, pid in old) == ("v1", True)


# -- graceful drain


@pytest.mark.slow
async def test_updates_scale_down_drains_in_flight_request_and_routes_elsewhere(
    tmp_path: Path,
) -> None:
    """A replica removed by scale-down finishes its running request and, while it drains,
    gets no new requests; the status shows it going (DOWNSCALING, target 1)."""
    async with serve.open_serve(http_port=None) as instance:
        handle = await instance.run(Blocker.bind(), name="drain")
        pids = _pids(await _deployment(instance, "drain", "Blocker"))
        blocked = [handle.block.remote(str(tmp_path)) for _ in range(2)]  # one per replica
        folder = trio.Path(tmp_path)
        with trio.fail_after(20):
            while await _started_pids(folder) != pids:  # noqa: ASYNC110 (files cannot be awaited)
                await trio.sleep(0.02)

        async with trio.open_nursery() as nursery:
            rerun = functools.partial(instance.run, name="drain")
            nursery.start_soon(rerun, Blocker.options(num_replicas=1).bind())
            draining = await _wait_for(
                instance,
                "drain",
                "Blocker",
                lambda d: any(r.state == "STOPPING" for r in d.replicas),
            )
            assert (draining.status, draining.target_replicas) == ("DOWNSCALING", 1)
            assert draining.running_replicas == 1
            (survivor,) = _pids(draining)
            (victim,) = pids - {survivor}

            with trio.fail_after(20):
                fresh = [handle.pid.remote() for _ in range(8)]
                assert {await response for response in fresh} == {survivor}
            assert not any(response.done() for response in blocked)
            assert not _gone(victim)

            (tmp_path / f"release-{victim}").touch()
            (tmp_path / f"release-{survivor}").touch()
            with trio.fail_after(20):
                assert sorted([await response for response in blocked]) == sorted(pids)

        status = await _deployment(instance, "drain", "Blocker")
        assert _pids(status) == {survivor}
        assert (status.status, status.target_replicas, status.running_replicas) == (
            "HEALTHY",
            1,
            1,
        )
        assert _gone(victim)


@pytest.mark.slow
async def test_updates_shutdown_drains_in_flight_request(tmp_path: Path) -> None:
    """Leaving open_serve lets a request that is already running finish with its value."""
    release = tmp_path / "release"
    answers: list[str] = []
    async with trio.open_nursery() as outside, serve.open_serve(http_port=None) as instance:
        gate = await instance.run(fx.Gate.bind(), name="bye")
        pids = _pids(await _deployment(instance, "bye", "Gate"))
        response = gate.block_until_file.remote(str(release))
        assert await gate.wait_blocked.remote() == 1

        async def collect() -> None:
            with trio.fail_after(20):
                answers.append(await response)

        async def release_once_deleting() -> None:
            with trio.fail_after(20):  # the shutdown follows replica processes
                while True:
                    if (await instance.status()).applications["bye"].status == "DELETING":
                        break
                    await trio.sleep(0.02)
            assert not response.done()
            release.touch()

        outside.start_soon(collect)
        outside.start_soon(release_once_deleting)
    assert answers == ["released"]
    assert all(_gone(pid) for pid in pids)


@pytest.mark.slow
async def test_updates_request_outliving_grace_period_fails_instead_of_hanging() -> None:
    """A request still running after graceful_shutdown_timeout_s fails with
    ReplicaDiedError when its replica is stopped; it never hangs."""
    hanger = fx.Hanger.options(graceful_shutdown_timeout_s=0.2)
    async with serve.open_serve(http_port=None) as instance:
        handle = await instance.run(hanger.bind(), name="grace")
        pid = await handle.pid.remote()
        response = handle.hang.remote("forever")
        assert await handle.wait_started.remote("forever") is True
        with trio.fail_after(20):
            await instance.delete("grace")
            with pytest.raises(serve.ReplicaDiedError):
                await response
        assert _gone(pid)


@pytest.mark.autojump
async def test_updates_inline_request_outliving_grace_period_fails_instead_of_hanging() -> None:
    """On an inline replica too, a request outliving the grace period fails, not hangs."""
    hanger = fx.Hanger.options(placement="inline", graceful_shutdown_timeout_s=1.0)
    outcome = "hung"
    async with serve.open_serve(http_port=None) as instance:
        handle = await instance.run(hanger.bind(), name="grace")
        response = handle.hang.remote("forever")
        assert await handle.wait_started.remote("forever") is True
        await instance.delete("grace")
        with trio.move_on_after(60):
            try:
                await response
                outcome = "answered"
            except serve.ServeError as exc:
                outcome = type(exc).__name__
    assert outcome in ("ReplicaDiedError", "RequestCancelledError")


# -- status of deployments that cannot start


@pytest.mark.slow
async def test_updates_failing_constructor_reported_in_status() -> None:
    """A constructor that raises leaves the application DEPLOY_FAILED with the error text;
    re-running the name with working code brings it up."""
    async with serve.open_serve(http_port=None) as instance:
        with pytest.raises(serve.DeploymentFailedError, match="constructor failed with code 3"):
            await instance.run(fx.BrokenInit.bind(3), name="broken")
        app = (await instance.status()).applications["broken"]
        assert app.status == "DEPLOY_FAILED"
        assert "'BrokenInit' failed to start" in app.message
        assert "constructor failed with code 3" in app.message
        status = app.deployments["BrokenInit"]
        assert status.status == "DEPLOY_FAILED"
        assert "constructor failed with code 3" in status.message
        assert (status.running_replicas, status.replicas) == (0, [])

        handle = await instance.run(fx.Model.bind(2), name="broken")
        assert await handle.remote(4) == 8
        app = (await instance.status()).applications["broken"]
        assert (app.status, app.message) == ("RUNNING", "")
        assert app.deployments["Model"].status == "HEALTHY"


@serve.deployment(placement="inline")
class SlowStart:
    """Inline: its constructor (run on a worker thread) waits until ``gate`` is set."""

    def __init__(self, gate: threading.Event) -> None:
        if not gate.wait(timeout=30):
            raise TimeoutError("the test never opened the gate")

    async def __call__(self) -> str:
        await trio.lowlevel.checkpoint()
        return "up"


async def test_updates_status_shows_deploying_then_updating_while_replicas_start() -> None:
    """While its replicas are being built, a new application is DEPLOYING; while a rolling
    update starts new replicas, its deployment is UPDATING; both end RUNNING and HEALTHY."""
    async with serve.open_serve(http_port=None) as instance, trio.open_nursery() as nursery:
        first, second = threading.Event(), threading.Event()
        nursery.start_soon(functools.partial(instance.run, SlowStart.bind(first), name="slow"))
        await trio.testing.wait_all_tasks_blocked()  # run() waits for the constructor
        app = (await instance.status()).applications["slow"]
        assert app.status == "DEPLOYING"
        first.set()
        ready = await _wait_for(instance, "slow", "SlowStart", lambda d: d.running_replicas)
        assert ready.status == "HEALTHY"

        rolled = SlowStart.options(max_ongoing_requests=3).bind(second)
        nursery.start_soon(functools.partial(instance.run, rolled, name="slow"))
        await trio.testing.wait_all_tasks_blocked()  # the new replica's constructor waits
        status = await _deployment(instance, "slow", "SlowStart")
        assert status.status == "UPDATING"
        assert status.running_replicas == 1  # the old replica serves meanwhile
        assert await instance.get_app_handle("slow").remote() == "up"
        second.set()
        done = await _wait_for(
            instance, "slow", "SlowStart", lambda d: d.status == "HEALTHY" and len(d.replicas) == 1
        )
        assert done.running_replicas == 1
        assert (await instance.status()).applications["slow"].status == "RUNNING"
