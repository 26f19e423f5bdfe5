"""Streaming clients that disconnect give their replica slot back: a deployment at its
``max_ongoing_requests`` with every slot held by an endless stream recovers within a second
of those clients leaving, and so it does when clients queued behind them leave too (real
replica process, real sockets)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import trio

import trioserve as serve

MAX_ONGOING = 4
#: clients that request the endless stream and never read a byte of it
SILENT = 2
#: clients that read its first chunk, then hang up
READERS = 2
#: clients queued behind the four that hold the slots, who hang up while waiting
QUEUED = 2
APP, DEPLOYMENT = "streams", "Endless"
TIMEOUT_S = 10.0
RECOVERY_S = 1.0


#: each chunk of the endless stream: big enough that a client that stops reading has
#: unread data when it hangs up (its socket then resets), and soon stalls the proxy's sends
CHUNK = "tick\n" + "x" * (64 * 1024)


@serve.deployment(max_ongoing_requests=MAX_ONGOING)
class Endless:
    """``/forever`` streams a CHUNK every 10 ms until cancelled; ``/once`` one line."""

    async def __call__(self, request: serve.Request) -> AsyncIterator[str]:
        if request.url.path.endswith("/once"):
            yield "done\n"
            return
        while True:
            yield CHUNK
            await trio.sleep(0.01)  # the producer's pace, as a model's would be


def _metric(page: str, name: str) -> float:
    prefix = f'{name}{{application="{APP}",deployment="{DEPLOYMENT}"}} '
    values = [float(line[len(prefix) :]) for line in page.splitlines() if line.startswith(prefix)]
    return sum(values)


async def _metrics(http: httpx.AsyncClient) -> str:
    page = await http.get("/-/metrics")
    assert page.status_code == 200
    return page.text


async def _wait_for(http: httpx.AsyncClient, name: str, value: float, timeout: float) -> None:
    """Poll ``/-/metrics`` until ``name`` shows ``value`` (it follows a real replica
    process), within ``timeout``."""
    with trio.fail_after(timeout):
        while _metric(await _metrics(http), name) != value:  # noqa: ASYNC110 -- a metric of another process has no event
            await trio.sleep(0.02)


async def _request(port: int, path: str) -> trio.SocketStream:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(f"GET {path} HTTP/1.1\r\nhost: test\r\n\r\n".encode())
    return stream


async def _read_until(stream: trio.SocketStream, marker: bytes) -> None:
    data = b""
    with trio.fail_after(TIMEOUT_S):
        while marker not in data:
            chunk = await stream.receive_some()
            assert chunk, f"closed before {marker!r}: {data!r}"
            data += chunk


async def _hold_every_slot(port: int, http: httpx.AsyncClient) -> list[trio.SocketStream]:
    """Fill every slot with an endless stream: SILENT clients never read, READERS read its
    first chunk; returns once the replica counts MAX_ONGOING requests."""
    holders = [await _request(port, "/s/forever") for _ in range(SILENT)]
    for _ in range(READERS):
        reader = await _request(port, "/s/forever")
        await _read_until(reader, b"tick\n")
        holders.append(reader)
    await _wait_for(http, "trioserve_replica_ongoing_requests", MAX_ONGOING, TIMEOUT_S)
    return holders


async def _check_recovered(http: httpx.AsyncClient) -> None:
    """Within RECOVERY_S the replica runs nothing; a normal request is then served, and
    nothing abandoned took a slot meanwhile."""
    await _wait_for(http, "trioserve_replica_ongoing_requests", 0, RECOVERY_S)
    once = await http.get("/s/once")
    assert (once.status_code, once.text) == (200, "done\n")
    page = await _metrics(http)
    assert _metric(page, "trioserve_replica_ongoing_requests") == 0
    assert _metric(page, "trioserve_http_queued_requests") == 0


@pytest.mark.slow
async def test_stream_disconnect_mid_stream_frees_every_slot_within_a_second() -> None:
    """Four clients hold all ``max_ongoing_requests=4`` slots with endless streams (two
    never read, two read a chunk); once they hang up, the replica's ongoing count is 0
    within a second and a normal request is served."""
    async with serve.open_serve(http_port=0) as instance:
        await instance.run(Endless.bind(), name=APP, route_prefix="/s")
        assert instance.http_port is not None
        assert instance.http_url is not None
        async with httpx.AsyncClient(base_url=instance.http_url, timeout=TIMEOUT_S) as http:
            holders = await _hold_every_slot(instance.http_port, http)
            for stream in holders:
                await stream.aclose()
            await _check_recovered(http)


@pytest.mark.slow
async def test_stream_disconnect_while_queued_takes_no_slot() -> None:
    """Two clients queued behind the four that hold every slot hang up with them: their
    requests, reaching the replica as the slots free up, do not stream on for nobody (the
    ongoing count is 0 within a second, and a normal request is served)."""
    async with serve.open_serve(http_port=0) as instance:
        await instance.run(Endless.bind(), name=APP, route_prefix="/s")
        assert instance.http_port is not None
        assert instance.http_url is not None
        port = instance.http_port
        async with httpx.AsyncClient(base_url=instance.http_url, timeout=TIMEOUT_S) as http:
            holders = await _hold_every_slot(port, http)
            queued = [await _request(port, "/s/forever") for _ in range(QUEUED)]
            await _wait_for(http, "trioserve_http_queued_requests", QUEUED, TIMEOUT_S)
            for stream in [*holders, *queued]:
                await stream.aclose()
            await _check_recovered(http)
