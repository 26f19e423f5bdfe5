"""A replica process's routers: typed membership, and sockets to replicas that left closed
at once (real replica processes)."""

from __future__ import annotations

import os

import psutil
import pytest
import trio

import trioserve as serve
from trioserve._handles.messages import LoadReport, Membership

from .. import serve_fixtures as fx


@serve.deployment
class Spreader:
    """Calls the downstream ``Pid`` deployment; reports its own pid."""

    def __init__(self, down: serve.DeploymentHandle) -> None:
        self.down = down

    async def __call__(self, n: int) -> list[int]:
        return [await self.down.remote() for _ in range(n)]

    async def pid(self) -> int:
        await trio.lowlevel.checkpoint()
        return os.getpid()


def test_messages_are_structs_with_defaults() -> None:
    """Membership and load reports are typed, and an error membership needs no replicas."""
    assert Membership(error="gone").replicas == []
    report = LoadReport(app="a", deployment="d", router_id="r", load=2.0)
    assert report.load == 2.0


def _ports_of(pids: set[int]) -> set[int]:
    ports = set()
    for pid in pids:
        for conn in psutil.Process(pid).net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN:
                ports.add(conn.laddr.port)
    return ports


def _connections_to(pid: int, ports: set[int]) -> list[object]:
    return [
        c
        for c in psutil.Process(pid).net_connections(kind="tcp")
        if c.raddr and c.raddr.port in ports
    ]


@pytest.mark.slow
async def test_process_context_closes_sockets_to_replicas_that_left() -> None:
    """When a downstream deployment scales 4 -> 1, the caller's replica process closes its
    sockets to the 3 drained replicas (no CLOSE_WAIT left for the garbage collector)."""
    async with serve.open_serve(http_port=None) as instance:
        app = Spreader.bind(fx.Pid.options(num_replicas=4).bind())
        handle = await instance.run(app, name="spread")
        assert len(set(await handle.remote(64))) == 4
        caller = await handle.pid.remote()
        before = (await instance.status()).applications["spread"].deployments["Pid"].replicas
        all_ports = _ports_of({r.pid for r in before if r.pid is not None})
        assert len(_connections_to(caller, all_ports)) == 4

        app = Spreader.bind(fx.Pid.options(num_replicas=1).bind())
        await instance.run(app, name="spread")
        after = (await instance.status()).applications["spread"].deployments["Pid"].replicas
        (kept,) = [r.pid for r in after]
        gone_ports = all_ports - _ports_of({kept} if kept is not None else set())
        assert len(gone_ports) == 3
        for _ in range(250):  # polling real sockets of real processes, for up to 5 s
            if not _connections_to(caller, gone_ports):
                break
            await trio.sleep(0.02)
        assert _connections_to(caller, gone_ports) == []
        assert len(set(await handle.remote(8))) == 1
