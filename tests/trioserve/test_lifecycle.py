"""Lifecycle: applications by name, delete, shutdown, replica replacement, user_config."""

from __future__ import annotations

import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import psutil
import pytest
import trio

import trioserve as serve

from . import serve_fixtures as fx


def _pids(status: serve.ServeStatus, app: str) -> set[int]:
    return {
        replica.pid
        for deployment in status.applications[app].deployments.values()
        for replica in deployment.replicas
        if replica.pid is not None
    }


def _gone(pid: int) -> bool:
    return not psutil.pid_exists(pid)


async def _eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 15) -> None:
    """Poll ``check`` until true, bounded: only for state that follows a real process."""
    with trio.fail_after(timeout_s):
        while True:
            if await check():
                return
            await trio.sleep(0.02)


@pytest.mark.slow
async def test_lifecycle_several_applications_delete_one() -> None:
    """Deleting one application stops its processes; the others keep serving."""
    async with serve.open_serve(http_port=None) as instance:
        one = await instance.run(
            fx.Pid.options(num_replicas=2).bind(), name="one", route_prefix="/1"
        )
        two = await instance.run(fx.Model.bind(4), name="two", route_prefix="/2")
        with pytest.raises(
            ValueError, match="route_prefix '/1' is already used by application 'one'"
        ):
            await instance.run(fx.double.bind(), name="three", route_prefix="/1")

        status = await instance.status()
        assert set(status.applications) == {"one", "two"}
        assert status.applications["one"].route_prefix == "/1"
        assert status.applications["two"].ingress == "Model"
        one_pids, two_pids = _pids(status, "one"), _pids(status, "two")
        assert len(one_pids) == 2
        assert len(two_pids) == 1
        assert await one.remote() in one_pids

        await instance.delete("one")
        assert all(_gone(pid) for pid in one_pids)
        assert not any(_gone(pid) for pid in two_pids)
        assert set((await instance.status()).applications) == {"two"}
        assert await two.remote(2) == 8
        with pytest.raises(serve.DeploymentUnavailableError):
            await one.remote()
        with pytest.raises(serve.DeploymentUnavailableError):
            instance.get_app_handle("one")
        await instance.delete("one")  # deleting twice is harmless


@pytest.mark.slow
async def test_lifecycle_run_same_name_replaces_application() -> None:
    """Running an application under a name already in use replaces it."""
    async with serve.open_serve(http_port=None) as instance:
        await instance.run(fx.Model.bind(2), name="m")
        old = _pids(await instance.status(), "m")
        handle = await instance.run(fx.Model.bind(3), name="m")
        new = _pids(await instance.status(), "m")
        assert old.isdisjoint(new)
        assert all(_gone(pid) for pid in old)
        assert await handle.remote(2) == 6


@pytest.mark.slow
async def test_lifecycle_open_serve_exit_stops_every_replica_process() -> None:
    """Leaving ``open_serve`` stops every replica process of every application."""
    async with serve.open_serve(http_port=None) as instance:
        await instance.run(fx.Forwarder.bind(fx.Hanger.bind()), name="a", route_prefix="/a")
        await instance.run(fx.Pid.bind(), name="b", route_prefix="/b")
        status = await instance.status()
        pids = _pids(status, "a") | _pids(status, "b")
        assert len(pids) == 3
        assert os.getpid() not in pids
        assert not any(_gone(pid) for pid in pids)
    assert all(_gone(pid) for pid in pids)


@pytest.mark.slow
async def test_lifecycle_delete_drains_in_flight_request(tmp_path: Path) -> None:
    """A request already running when its application is deleted still gets its answer."""
    release = tmp_path / "release"
    async with serve.open_serve(http_port=None) as instance:
        gate = await instance.run(fx.Gate.bind(), name="drain")
        pids = _pids(await instance.status(), "drain")
        response = gate.block_until_file.remote(str(release))
        await gate.wait_blocked.remote()

        async def deleting() -> bool:
            return (await instance.status()).applications["drain"].status == "DELETING"

        async with trio.open_nursery() as nursery:
            nursery.start_soon(instance.delete, "drain")
            await _eventually(deleting)
            assert not response.done()
            release.touch()
            with trio.fail_after(10):
                assert await response == "released"
        assert all(_gone(pid) for pid in pids)


@pytest.mark.slow
async def test_lifecycle_killed_replica_fails_fast_and_is_replaced() -> None:
    """A killed replica fails its request with ReplicaDiedError and is replaced."""
    async with serve.open_serve(http_port=None) as instance:
        hanger = await instance.run(fx.Hanger.bind(), name="kill")
        old_pid = await hanger.pid.remote()
        assert _pids(await instance.status(), "kill") == {old_pid}
        response = hanger.hang.remote("victim")
        await hanger.wait_started.remote("victim")

        os.kill(old_pid, signal.SIGKILL)
        with trio.fail_after(5), pytest.raises(serve.ReplicaDiedError) as info:
            await response
        assert isinstance(info.value, serve.ServeError)
        assert info.value.deployment == "Hanger"
        assert info.value.replica_id == "Hanger#1"

        async def replaced() -> bool:
            new_pids = _pids(await instance.status(), "kill")
            return bool(new_pids) and old_pid not in new_pids

        await _eventually(replaced)
        status = await instance.status()
        new_pids = _pids(status, "kill")
        assert status.applications["kill"].deployments["Hanger"].status == "HEALTHY"
        with trio.fail_after(10):
            assert await hanger.pid.remote() in new_pids
        assert await hanger.was_cancelled.remote("victim") is False  # a fresh object


@pytest.mark.slow
async def test_lifecycle_user_config_reaches_reconfigure() -> None:
    """``user_config`` reaches ``reconfigure`` before the replica takes requests."""
    async with serve.open_serve(http_port=None) as instance:
        handle = await instance.run(fx.Configurable.bind(), name="cfg", route_prefix="/cfg")
        assert await handle.current.remote() == [{"threshold": 1}, 1]
        other = fx.Configurable.options(user_config=[1, 2, 3], placement="inline")
        handle = await instance.run(other.bind(), name="cfg2", route_prefix="/cfg2")
        assert await handle.current.remote() == [[1, 2, 3], 1]
        missing = fx.Model.options(user_config={"x": 1}, placement="inline")
        with pytest.raises(serve.DeploymentFailedError) as info:
            await instance.run(missing.bind(1), name="bad", route_prefix="/bad")
        assert isinstance(info.value.__cause__, TypeError)
        assert "no reconfigure() method" in str(info.value.__cause__)


@pytest.mark.slow
async def test_lifecycle_rejected_redeploy_keeps_running_application() -> None:
    """A ``run`` refused for a bad route_prefix leaves the application it would replace."""
    async with serve.open_serve(http_port=None) as instance:
        await instance.run(fx.double.bind(), name="a", route_prefix="/a")
        await instance.run(fx.Model.bind(2), name="b", route_prefix="/b")
        before = _pids(await instance.status(), "b")
        with pytest.raises(ValueError, match="route_prefix '/a' is already used"):
            await instance.run(fx.Model.bind(5), name="b", route_prefix="/a")
        status = await instance.status()
        assert status.applications["b"].status == "RUNNING"
        assert _pids(status, "b") == before
        assert await instance.get_app_handle("b").remote(1) == 2


@pytest.mark.slow
async def test_lifecycle_redeploy_new_user_config_reconfigures_in_place() -> None:
    """Redeploying with a new user_config reconfigures the running replica in place."""
    async with serve.open_serve(http_port=None) as instance:
        handle = await instance.run(fx.Configurable.bind(), name="cfg")
        pids = _pids(await instance.status(), "cfg")
        assert await handle.current.remote() == [{"threshold": 1}, 1]
        changed = fx.Configurable.options(user_config={"threshold": 2})
        handle = await instance.run(changed.bind(), name="cfg")
        assert await handle.current.remote() == [{"threshold": 2}, 2]
        assert _pids(await instance.status(), "cfg") == pids


@pytest.mark.slow
async def test_lifecycle_requests_a_dead_replica_never_read_go_to_another() -> None:
    """Requests sent to a replica that dies before reading them (here: stopped, then
    killed) are retried on the other replica and all succeed; none is lost or failed."""
    async with serve.open_serve(http_port=None) as instance:
        handle = await instance.run(fx.Pid.options(num_replicas=2).bind(), name="retry")
        replicas = (await instance.status()).applications["retry"].deployments["Pid"].replicas
        victim = replicas[0]
        assert victim.pid is not None
        os.kill(victim.pid, signal.SIGSTOP)  # it reads nothing from now on
        proc = psutil.Process(victim.pid)
        await _eventually(_is_stopped(proc))
        responses = [handle.remote(i) for i in range(20)]
        sent_to_victim = [r for r in responses if r.replica_id == victim.replica_id]
        assert sent_to_victim, "the router sent nothing to the stopped replica"
        os.kill(victim.pid, signal.SIGKILL)
        with trio.fail_after(10):
            answers = await serve.get_async(responses)
        survivor = {r.pid for r in replicas} - {victim.pid}
        assert set(answers) == survivor


def _is_stopped(proc: psutil.Process) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        await trio.lowlevel.checkpoint()
        return proc.status() == psutil.STATUS_STOPPED

    return check


@pytest.mark.slow
async def test_lifecycle_replica_failing_to_restart_makes_deployment_unhealthy(
    tmp_path: Path,
) -> None:
    """A killed replica whose restarts fail marks its deployment and application UNHEALTHY,
    with the constructor's error in the message; once a restart succeeds, both are healthy
    again and requests are served."""
    broken = tmp_path / "broken"
    async with serve.open_serve(http_port=None) as instance:
        handle = await instance.run(fx.BreaksOnRestart.bind(str(broken)), name="flaky")
        pid = await handle.pid.remote()
        broken.touch()
        os.kill(pid, signal.SIGKILL)

        async def unhealthy() -> bool:
            app = (await instance.status()).applications["flaky"]
            return app.status == "UNHEALTHY"

        await _eventually(unhealthy)
        app = (await instance.status()).applications["flaky"]
        deployment = app.deployments["BreaksOnRestart"]
        assert deployment.status == "UNHEALTHY"
        assert "failed to restart" in deployment.message
        assert "cannot start while" in deployment.message
        assert deployment.running_replicas == 0

        broken.unlink()

        async def healthy() -> bool:
            app = (await instance.status()).applications["flaky"]
            return app.status == "RUNNING" and app.deployments["BreaksOnRestart"].status == (
                "HEALTHY"
            )

        await _eventually(healthy)
        with trio.fail_after(10):
            assert await handle.pid.remote() != pid


async def test_lifecycle_open_serve_reraises_the_blocks_error_as_itself() -> None:
    """An error raised inside ``open_serve`` comes out unwrapped, with its own cause."""
    cause = KeyError("the cause")
    with pytest.raises(LookupError, match="from the block") as info:
        async with serve.open_serve(http_port=None):
            raise LookupError("from the block") from cause
    assert info.value.__cause__ is cause
