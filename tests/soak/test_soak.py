"""Chaos under load, in the default suite: 30 s of traffic while replicas are SIGKILLed;
and 15 s of traffic beside a hostile mix of HTTP clients, with nothing killed."""

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


#: the legitimate load beside the hostile mix, in requests a second (Poisson arrivals over
#: the soak's 16 workers): a rate at which that load alone keeps its p99 under the bar on
#: two cores (about 40 ms), so that what the bar measures is what the mix adds
HOSTILE_SOAK_RATE = 100.0
HOSTILE_SOAK_S = 15.0
#: what legitimate clients are promised beside the hostile mix
MIN_SUCCESS_RATE = 0.999
MAX_P99_S = 0.050


@pytest.mark.slow
@pytest.mark.hostile
def test_soak_hostile_mix_keeps_legitimate_clients_served() -> None:
    """Beside disconnecting streamers, idle keep-alive connections up to just under the
    proxy's connection bound, 1-byte-chunk uploaders and HEAD probes, legitimate handle and
    HTTP clients get >= 99.9 % of their answers with a p99 under 50 ms (each), nothing
    hangs, no slot is left held once the mix stops, and no process is left."""
    report = soak.main(HOSTILE_SOAK_S, kill_replicas=False, hostile=True, rate=HOSTILE_SOAK_RATE)
    print(report.summary())
    hostile = report.hostile
    assert hostile is not None
    # the mix ran: every kind of hostile client, the idle ones all open at once
    assert hostile.idle_peak == hostile.idle_target >= report.http_connection_bound - 64
    assert hostile.streams_unread > 0
    assert hostile.streams_read > 0
    assert hostile.uploads_ok > 0
    assert hostile.head_ok > 0
    assert report.sent >= 0.8 * HOSTILE_SOAK_RATE * HOSTILE_SOAK_S
    assert report.success_rate >= MIN_SUCCESS_RATE, report.summary()
    assert report.hangs == 0, report.samples
    assert report.handle_p99_latency_s < MAX_P99_S, report.summary()
    assert report.http_p99_latency_s < MAX_P99_S, report.summary()
    assert report.in_flight_after == {}
    assert report.leftover_processes == []
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
