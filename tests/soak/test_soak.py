"""Chaos under load, in the default suite: 30 s of traffic while replicas are SIGKILLed."""

from __future__ import annotations

import os
import signal

import pytest
import trio

import trioserve as serve
from tests.trioserve import serve_fixtures as fx

from . import soak


def _serve_error_name(kind: str) -> str:
    """``handle ReplicaDiedError`` / ``HTTP 500 ReplicaDiedError`` -> ``ReplicaDiedError``."""
    return kind.rsplit(" ", 1)[-1]


@pytest.mark.slow
def test_soak_chaos_30s_every_request_ends_cleanly() -> None:
    """Under steady handle and HTTP traffic with replicas killed every 1-3 s, every request
    ends in the right answer or a clear ServeError, none hangs, and no process is left."""
    report = soak.main(30.0)
    print(report.summary())
    assert report.wrong == 0, report.samples
    assert report.hangs == 0, report.samples
    assert report.unexpected == {}, report.samples
    for kind in report.failed:
        name = _serve_error_name(kind)
        assert name == "503" or issubclass(getattr(serve, name), serve.ServeError), kind
    assert report.kills >= 8
    assert report.sent >= 2000
    assert report.succeeded >= 0.9 * report.sent
    assert report.leftover_processes == []
    assert report.close_s <= soak.CLOSE_LIMIT_S
    assert report.problems() == []


async def test_soak_downstream_replica_death_reaches_caller_as_replica_died_error() -> None:
    """When a downstream replica dies under an ingress, the caller gets ReplicaDiedError."""
    app = fx.Forwarder.bind(fx.Hanger.bind())
    async with serve.open_serve(http_port=None) as instance:
        handle = await instance.run(app, name="chain")
        hanger = instance.get_deployment_handle("Hanger", "chain")
        response = handle.remote("doomed")
        with trio.fail_after(10):
            assert await hanger.wait_started.remote("doomed")
            os.kill(await hanger.pid.remote(), signal.SIGKILL)
            with pytest.raises(serve.ReplicaDiedError):
                await response
