"""File descriptors after scaling: a deployment scaled 1 -> 50 -> 1 leaves the serve
process with the descriptors it had at 1 replica, and no socket in CLOSE_WAIT (real
replica processes)."""

from __future__ import annotations

import time

import psutil
import pytest
import trio

import trioserve as serve

from .trioserve import serve_fixtures as fx

PEAK = 50
#: descriptors the serve process may hold past its 1-replica count afterwards (a log file
#: opened meanwhile, an epoll registration): drained replicas' sockets and pidfds are not
FD_MARGIN = 5
#: how long the drained replicas' last sockets get to close once scaling down returned
SETTLE_S = 5.0


def _fds_and_close_wait() -> tuple[int, list[object]]:
    # no gc.collect(): a socket that only garbage collection would close is a leak here
    me = psutil.Process()
    waiting = [c for c in me.net_connections(kind="tcp") if c.status == psutil.CONN_CLOSE_WAIT]
    return me.num_fds(), waiting


async def _scale(instance: serve.ServeInstance, n: int) -> set[int]:
    """Scale the deployment to ``n`` replicas (``run`` returns once they run, or once the
    others are drained), then check that ``n`` are RUNNING and that one answers."""
    handle = await instance.run(fx.Pid.options(num_replicas=n).bind(), name="scaled")
    status = (await instance.status()).applications["scaled"].deployments["Pid"]
    running = {r.pid for r in status.replicas if r.state == "RUNNING" and r.pid is not None}
    assert len(running) == len(status.replicas) == n
    assert await handle.remote() in running
    return running


@pytest.mark.slow
async def test_fd_baseline_scaling_1_50_1_returns_to_baseline() -> None:
    """After 1 -> 50 -> 1 replicas (a request served at each step) the serve process holds
    at most FD_MARGIN more descriptors than at the first 1-replica step, and no CLOSE_WAIT
    socket."""
    started = time.monotonic()
    async with serve.open_serve(http_port=None) as instance:
        first = await _scale(instance, 1)
        baseline, _ = _fds_and_close_wait()
        peak = await _scale(instance, PEAK)
        at_peak, _ = _fds_and_close_wait()
        scaled_up = time.monotonic()
        last = await _scale(instance, 1)
        assert last <= first | peak
        # the drained processes have exited; their sockets close as their links end
        with trio.move_on_after(SETTLE_S):
            while True:
                after, waiting = _fds_and_close_wait()
                if after <= baseline + FD_MARGIN and not waiting:
                    break
                await trio.sleep(0.05)  # polling sockets of real processes, bounded
        after, waiting = _fds_and_close_wait()
    print(
        f"fds: {baseline} at 1 replica, {at_peak} at {PEAK}, {after} back at 1; "
        f"up in {scaled_up - started:.1f}s, down in {time.monotonic() - scaled_up:.1f}s"
    )
    assert at_peak > baseline + PEAK  # the 50 replicas' descriptors were counted
    assert after <= baseline + FD_MARGIN
    assert waiting == []
