"""No dead ends: requests to a deployment that cannot serve fail at once, and a deployment
whose supervisor gave up is restarted with backoff (real replica processes)."""

from __future__ import annotations

import os
import random
import signal
from pathlib import Path

import pytest
import trio

import trioserve as serve
from trioserve._control import replica_set
from trioserve._control.replica_set import restart_backoff_s

from . import serve_fixtures as fx
from .test_lifecycle import _eventually


def test_restart_backoff_doubles_to_a_cap_with_jitter() -> None:
    """Restarts after a give-up back off 1 s, 2 s, 4 s ... up to 30 s, each within +-20 %."""
    rng = random.Random(7)
    for attempt, base in [(1, 1.0), (2, 2.0), (3, 4.0), (6, 30.0), (40, 30.0)]:
        delay = restart_backoff_s(attempt, rng)
        assert base * 0.8 <= delay <= base * 1.2


@pytest.mark.slow
async def test_unavailable_failed_constructor_fails_requests_at_once() -> None:
    """After a deploy whose constructor raised, a handle call to that application fails
    with DeploymentUnavailableError naming the cause, instead of waiting forever."""
    async with serve.open_serve(http_port=None) as instance:
        with pytest.raises(serve.DeploymentFailedError):
            await instance.run(fx.BrokenInit.bind(3), name="broken")
        handle = instance.get_deployment_handle("BrokenInit", "broken")
        with trio.fail_after(5), pytest.raises(serve.DeploymentUnavailableError) as info:
            await handle.remote()
        assert "constructor failed with code 3" in str(info.value)


@pytest.mark.slow
async def test_unavailable_gave_up_deployment_fails_fast_then_comes_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When a deployment's replicas keep failing past the restart intensity, requests fail
    at once with DeploymentUnavailableError; once the cause is gone, the controller's
    restart (with backoff) brings the deployment back and requests are served again."""
    monkeypatch.setattr(replica_set, "REPLICA_MAX_RESTARTS", 1)
    monkeypatch.setattr(replica_set, "RESTART_BACKOFF_BASE_S", 0.3)
    broken = tmp_path / "broken"
    async with serve.open_serve(http_port=None) as instance:
        handle = await instance.run(fx.BreaksOnRestart.bind(str(broken)), name="flaky")
        pid = await handle.pid.remote()
        broken.touch()
        os.kill(pid, signal.SIGKILL)

        async def unavailable() -> bool:
            try:
                with trio.fail_after(2):
                    await handle.pid.remote()
            except serve.DeploymentUnavailableError:
                return True
            return False

        await _eventually(unavailable)
        status = (await instance.status()).applications["flaky"]
        assert status.deployments["BreaksOnRestart"].status == "UNHEALTHY"
        assert "restarting" in status.deployments["BreaksOnRestart"].message
        broken.unlink()

        async def served() -> bool:
            try:
                return await handle.pid.remote() != pid
            except serve.DeploymentUnavailableError:
                return False

        await _eventually(served)
        status = (await instance.status()).applications["flaky"]
        assert status.deployments["BreaksOnRestart"].status == "HEALTHY"
