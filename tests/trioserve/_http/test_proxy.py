"""The HTTP proxy in a serve instance, in front of real replica processes."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import psutil
import pytest
import trio

import trioserve as serve

from .. import http_fixtures as fx

TIMEOUT_S = 10.0


@asynccontextmanager
async def open_client(instance: serve.ServeInstance) -> AsyncIterator[httpx.AsyncClient]:
    assert instance.http_url is not None
    async with httpx.AsyncClient(base_url=instance.http_url, timeout=TIMEOUT_S) as client:
        yield client


async def wait_for_metric(http: httpx.AsyncClient, line: str) -> None:
    """Poll ``/-/metrics`` until it shows ``line`` (the request crossed real sockets)."""
    with trio.fail_after(TIMEOUT_S):
        while True:
            page = await http.get("/-/metrics")
            if line in page.text.splitlines():
                return
            await trio.sleep(0.01)


@pytest.mark.slow
async def test_proxy_routes_by_longest_prefix() -> None:
    """A request goes to the application with the longest route prefix matching its path."""
    async with serve.open_serve(http_port=0) as instance:
        await instance.run(fx.Lab.bind("api"), name="api", route_prefix="/api")
        await instance.run(fx.Lab.bind("v2"), name="v2", route_prefix="/api/v2")
        async with open_client(instance) as http:
            answers = {
                path: (await http.get(path)).json()["app"]
                for path in ("/api/echo", "/api/v2/echo", "/api/v2x/echo", "/api/v1/echo")
            }
    assert answers == {
        "/api/echo": "api",
        "/api/v2/echo": "v2",
        "/api/v2x/echo": "api",  # a prefix matches whole path segments only
        "/api/v1/echo": "api",
    }


@pytest.mark.slow
async def test_proxy_unknown_route_is_404() -> None:
    """A path no application's prefix covers gets 404."""
    async with serve.open_serve(http_port=0) as instance:
        await instance.run(fx.Lab.bind("api"), name="api", route_prefix="/api")
        async with open_client(instance) as http:
            elsewhere = await http.get("/elsewhere/echo")
            lookalike = await http.get("/apix/echo")
            served = await http.get("/api/echo")
    assert elsewhere.status_code == 404
    assert lookalike.status_code == 404
    assert served.status_code == 200


@pytest.mark.slow
async def test_proxy_passes_json_in_and_out() -> None:
    """The deployment reads method, path, query and a JSON body; a dict comes back as JSON,
    a ``Response`` with its status and headers."""
    async with serve.open_serve(http_port=0) as instance:
        await instance.run(fx.Lab.bind("api"), name="api", route_prefix="/api")
        async with open_client(instance) as http:
            echoed = await http.post("/api/echo?x=1&empty=", json={"values": [1, 2.5, "three"]})
            created = await http.get("/api/created")
    assert echoed.status_code == 200
    assert echoed.headers["content-type"] == "application/json"
    assert echoed.json() == {
        "app": "api",
        "method": "POST",
        "path": "/api/echo",
        "query": {"x": "1", "empty": ""},
        "json": {"values": [1, 2.5, "three"]},
        "content_type": "application/json",
    }
    assert created.status_code == 201
    assert created.headers["x-lab"] == "api"
    assert created.text == "made it"


@pytest.mark.slow
async def test_proxy_user_error_is_500_without_traceback() -> None:
    """A user exception becomes a short 500 that names the error but shows no traceback;
    the application keeps answering."""
    async with serve.open_serve(http_port=0) as instance:
        await instance.run(fx.Lab.bind("api"), name="api", route_prefix="/api")
        async with open_client(instance) as http:
            failed = await http.get("/api/fail")
            after = await http.get("/api/echo")
    assert failed.status_code == 500
    assert "the model broke" in failed.text
    assert "Traceback" not in failed.text
    assert "http_fixtures.py" not in failed.text
    assert len(failed.text.splitlines()) == 1
    assert after.status_code == 200


@pytest.mark.slow
async def test_proxy_full_queue_is_503() -> None:
    """With every replica busy and ``max_queued_requests`` waiting, one more request gets
    503 at once; the queued one is served when the replica frees up."""
    async with serve.open_serve(http_port=0) as instance:
        await instance.run(fx.Gated.bind(fx.Latch.bind()), name="gated", route_prefix="/g")
        latch = instance.get_deployment_handle("Latch", app_name="gated")
        statuses_in, statuses_out = trio.open_memory_channel[tuple[int, str, str]](2)

        async def get(http: httpx.AsyncClient) -> None:
            response = await http.get("/g/quick")
            retry_after = response.headers.get("retry-after", "")
            await statuses_in.send((response.status_code, retry_after, response.text))

        async with open_client(instance) as http, trio.open_nursery() as nursery:
            async with http.stream("GET", "/g/busy") as busy:
                chunks = busy.aiter_raw()
                assert await chunks.__anext__() == b"busy\n"  # the only slot is taken
                nursery.start_soon(get, http)
                nursery.start_soon(get, http)
                with trio.fail_after(TIMEOUT_S):
                    refused = await statuses_out.receive()  # one queued, one refused
                await latch.open.remote()
                assert b"".join([chunk async for chunk in chunks]) == b"done\n"
            with trio.fail_after(TIMEOUT_S):
                served = await statuses_out.receive()
    assert refused[:2] == (503, "1")
    assert "max_queued_requests=1" in refused[2]
    assert served == (200, "", "done\n")


@pytest.mark.slow
async def test_proxy_queued_request_takes_slot_of_disconnected_client() -> None:
    """When the client holding the only slot hangs up, the queued request is served."""
    async with serve.open_serve(http_port=0) as instance:
        await instance.run(fx.Gated.bind(fx.Latch.bind()), name="gated", route_prefix="/g")
        async with open_client(instance) as http, trio.open_nursery() as nursery:
            statuses_in, statuses_out = trio.open_memory_channel[tuple[int, str]](1)

            async def get() -> None:
                response = await http.get("/g/quick")
                await statuses_in.send((response.status_code, response.text))

            async with (
                httpx.AsyncClient(base_url=str(http.base_url)) as busy_client,
                busy_client.stream("GET", "/g/busy") as busy,
                contextlib.aclosing(busy.aiter_raw()) as chunks,
            ):
                assert await chunks.__anext__() == b"busy\n"
                nursery.start_soon(get)
                await wait_for_metric(
                    http,
                    'trioserve_http_queued_requests{application="gated",deployment="Gated"} 1',
                )
            # the busy client hung up: its request is cancelled, its slot freed
            with trio.fail_after(TIMEOUT_S):
                served = await statuses_out.receive()
    assert served == (200, "done\n")


@pytest.mark.slow
async def test_proxy_request_timeout_is_504_and_cancels_the_call() -> None:
    """Past ``request_timeout_s`` the client gets 504 and the replica's call is cancelled."""
    async with serve.open_serve(http_port=0, request_timeout_s=0.3) as instance:
        handle = await instance.run(fx.Lab.bind("api"), name="api", route_prefix="/api")
        async with open_client(instance) as http:
            response = await http.get("/api/hang", params={"key": "slow"})
        assert response.status_code == 504
        with trio.fail_after(TIMEOUT_S):
            assert await handle.wait_cancelled.remote("slow") is True


@pytest.mark.slow
async def test_proxy_client_disconnect_cancels_the_replica_call() -> None:
    """A client that hangs up mid-request cancels the call in the replica process."""
    async with serve.open_serve(http_port=0) as instance:
        handle = await instance.run(fx.Lab.bind("api"), name="api", route_prefix="/api")
        assert instance.http_port is not None
        stream = await trio.open_tcp_stream("127.0.0.1", instance.http_port)
        await stream.send_all(b"GET /api/hang?key=gone HTTP/1.1\r\nhost: test\r\n\r\n")
        with trio.fail_after(TIMEOUT_S):
            assert await handle.wait_started.remote("gone") is True
        await stream.aclose()
        with trio.fail_after(TIMEOUT_S):
            assert await handle.wait_cancelled.remote("gone") is True


@pytest.mark.slow
async def test_proxy_streams_chunks_before_generator_finishes() -> None:
    """A generator ``__call__`` streams: the first chunk reaches the client while the
    generator is still blocked before its second."""
    async with serve.open_serve(http_port=0) as instance:
        handle = await instance.run(fx.Chunks.bind(), name="chunks", route_prefix="/c")
        async with open_client(instance) as http, http.stream("GET", "/c?wait=1") as response:
            assert response.status_code == 200
            assert response.headers["transfer-encoding"] == "chunked"
            chunks = response.aiter_raw()
            with trio.fail_after(TIMEOUT_S):
                first = await chunks.__anext__()
            assert first == b"first\n"
            assert await handle.current_state.remote() == "blocked"
            await handle.release.remote()
            rest = b"".join([chunk async for chunk in chunks])
        assert rest == b"second\n"
        assert await handle.current_state.remote() == "finished"


@pytest.mark.slow
async def test_proxy_client_disconnect_mid_stream_stops_the_generator() -> None:
    """A client that hangs up during a stream cancels the generator in the replica."""
    async with serve.open_serve(http_port=0) as instance:
        handle = await instance.run(fx.Chunks.bind(), name="chunks", route_prefix="/c")
        async with open_client(instance) as http:
            async with (
                http.stream("GET", "/c?wait=1") as response,
                contextlib.aclosing(response.aiter_raw()) as chunks,
            ):
                assert await chunks.__anext__() == b"first\n"
            # leaving the block, the response unread, closed the connection mid-stream
            with trio.fail_after(TIMEOUT_S):
                assert await handle.wait_stopped.remote() == "cancelled"


@pytest.mark.slow
async def test_proxy_mid_stream_error_cuts_only_that_response() -> None:
    """A generator that raises mid-stream ends its response early (the client sees an
    incomplete body); the proxy keeps serving everyone else."""
    async with serve.open_serve(http_port=0) as instance:
        await instance.run(fx.Chunks.bind(), name="chunks", route_prefix="/c")
        async with open_client(instance) as http:
            with pytest.raises(httpx.RemoteProtocolError):
                await http.get("/c?fail=1")
            after = await http.get("/c")
        assert (after.status_code, after.text) == (200, "first\nsecond\n")


@pytest.mark.slow
async def test_proxy_mounts_starlette_app_through_factory() -> None:
    """``@serve.ingress(factory)``: Starlette answers under the route prefix (which it sees
    as ``root_path``); handle calls still reach the class's methods."""
    async with serve.open_serve(http_port=0) as instance:
        handle = await instance.run(fx.WebFromFactory.bind(), name="web", route_prefix="/web")
        async with open_client(instance) as http:
            hello = await http.get("/web/hello/bob")
            echoed = await http.post("/web/echo", json={"n": 3})
            missing = await http.get("/web/nowhere")
        assert await handle.greeting.remote() == "hello from a handle"
    assert (hello.status_code, hello.json()) == (200, {"hello": "bob", "root_path": "/web"})
    assert (echoed.status_code, echoed.json()) == (202, {"received": {"n": 3}})
    assert missing.status_code == 404


@pytest.mark.slow
async def test_proxy_mounts_module_level_starlette_app() -> None:
    """``@serve.ingress(app)`` with an app defined in an importable module works as is."""
    async with serve.open_serve(http_port=0) as instance:
        await instance.run(fx.Web.bind(), name="web", route_prefix="/web")
        async with open_client(instance) as http:
            hello = await http.get("/web/hello/ann")
    assert (hello.status_code, hello.json()) == (200, {"hello": "ann", "root_path": "/web"})


@pytest.mark.slow
async def test_proxy_asgi_path_starting_like_the_prefix() -> None:
    """An ASGI route whose own path begins with the route prefix is still found."""
    async with serve.open_serve(http_port=0) as instance:
        await instance.run(fx.WebFromFactory.bind(), name="web", route_prefix="/web")
        async with open_client(instance) as http:
            inner = await http.get("/web/web/inner")
    assert (inner.status_code, inner.text) == (200, "inner route")


@pytest.mark.slow
async def test_proxy_metrics_separate_handle_and_http_counts() -> None:
    """``/-/metrics`` counts handle calls and HTTP requests in their own families."""
    async with serve.open_serve(http_port=0) as instance:
        handle = await instance.run(fx.Lab.bind("m"), name="m", route_prefix="/m")
        for i in range(3):
            assert await handle.ping.remote(i) == i
        async with open_client(instance) as http:
            for _ in range(5):
                assert (await http.get("/m/echo")).status_code == 200
            assert (await http.get("/m/fail")).status_code == 500
            page = await http.get("/-/metrics")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/plain")
    lines = set(page.text.splitlines())
    expected = {
        'trioserve_handle_requests_total{application="m",deployment="Lab"} 3',
        'trioserve_handle_errors_total{application="m",deployment="Lab"} 0',
        'trioserve_http_requests_total{application="m",deployment="Lab",status="200"} 5',
        'trioserve_http_requests_total{application="m",deployment="Lab",status="500"} 1',
        'trioserve_http_errors_total{application="m",deployment="Lab",status="500"} 1',
        'trioserve_http_request_duration_seconds_count{application="m",deployment="Lab"} 6',
        'trioserve_replica_requests_total{application="m",deployment="Lab",method="ping"} 3',
        'trioserve_replica_requests_total{application="m",deployment="Lab",method="__http__"} 6',
        'trioserve_replica_errors_total{application="m",deployment="Lab",method="__http__"} 1',
        'trioserve_replicas{application="m",deployment="Lab",state="RUNNING"} 1',
    }
    assert expected <= lines, sorted(expected - lines)


@pytest.mark.slow
async def test_proxy_operations_endpoints() -> None:
    """``/-/healthz``, ``/-/routes`` and ``/-/status`` describe the running instance."""
    async with serve.open_serve(http_port=0) as instance:
        await instance.run(
            fx.Lab.options(num_replicas=2).bind("api"), name="api", route_prefix="/api"
        )
        await instance.run(fx.Chunks.bind(), name="chunks", route_prefix="/c")
        async with open_client(instance) as http:
            health = await http.get("/-/healthz")
            routes = await http.get("/-/routes")
            status = await http.get("/-/status")
            unknown = await http.get("/-/nothing")
        pids = [
            r["pid"] for r in status.json()["applications"]["api"]["deployments"]["Lab"]["replicas"]
        ]
        assert len(set(pids)) == 2
        assert all(psutil.Process(pid).is_running() for pid in pids)
    assert (health.status_code, health.text) == (200, "success")
    assert routes.json() == {"/api": "api", "/c": "chunks"}
    apps: dict[str, Any] = status.json()["applications"]
    assert set(apps) == {"api", "chunks"}
    api = apps["api"]
    assert (api["status"], api["route_prefix"], api["ingress"]) == ("RUNNING", "/api", "Lab")
    lab = api["deployments"]["Lab"]
    assert (lab["status"], lab["running_replicas"], lab["target_replicas"]) == ("HEALTHY", 2, 2)
    assert {replica["state"] for replica in lab["replicas"]} == {"RUNNING"}
    assert unknown.status_code == 404


@pytest.mark.slow
async def test_proxy_body_over_limit_is_413() -> None:
    """``http_limits`` bound request bodies: a bigger one gets 413 before any replica sees it."""
    limits = serve.HTTPLimits(max_body_bytes=1000)
    async with serve.open_serve(http_port=0, http_limits=limits) as instance:
        await instance.run(fx.Lab.bind("api"), name="api", route_prefix="/api")
        async with open_client(instance) as http:
            too_big = await http.post("/api/echo", json={"blob": "x" * 2000})
            fits = await http.post("/api/echo", json={"blob": "x" * 100})
            page = await http.get("/-/metrics")
    assert too_big.status_code == 413
    assert fits.status_code == 200
    assert 'method="__http__"} 1' in page.text


@pytest.mark.slow
async def test_proxy_shutdown_answers_http_requests_in_flight() -> None:
    """Leaving the serve block while an HTTP request runs stops new connections at once, but
    that request still gets its answer before the replicas stop."""
    answers: list[httpx.Response] = []
    async with trio.open_nursery() as clients, serve.open_serve(http_port=0) as instance:
        held = await instance.run(fx.Held.bind(), name="held")
        assert instance.http_url is not None
        assert instance.http_port is not None
        port = instance.http_port

        async def client() -> None:
            async with httpx.AsyncClient(base_url=instance.http_url or "") as http:
                with trio.fail_after(TIMEOUT_S):
                    answers.append(await http.get("/in-flight"))

        async def release_when_draining() -> None:
            # runs once the block's exit has started draining (nothing yields before)
            with pytest.raises(OSError, match="all attempts to connect"):
                await trio.open_tcp_stream("127.0.0.1", port)
            assert answers == []
            await held.release.remote()

        clients.start_soon(client)
        with trio.fail_after(TIMEOUT_S):
            await held.wait_entered.remote()
        clients.start_soon(release_when_draining)
    (answer,) = answers
    assert (answer.status_code, answer.text) == (200, "answered /in-flight")
    assert answer.headers["connection"] == "close"


@pytest.mark.slow
async def test_proxy_metrics_show_requests_in_progress_by_side() -> None:
    """While an HTTP request is held in a replica, the HTTP and replica families count it as
    ongoing and the handle family does not; replicas are counted by state."""
    async with serve.open_serve(http_port=0) as instance:
        held = await instance.run(fx.Held.bind(), name="held")
        async with open_client(instance) as http, trio.open_nursery() as nursery:
            nursery.start_soon(http.get, "/in-progress")
            with trio.fail_after(TIMEOUT_S):
                await held.wait_entered.remote()  # the replica process has the request
            lines = set((await http.get("/-/metrics")).text.splitlines())
            await held.release.remote()
    labels = '{application="held",deployment="Held"}'
    expected = {
        f"trioserve_http_ongoing_requests{labels} 1",
        f"trioserve_replica_ongoing_requests{labels} 1",
        f"trioserve_handle_ongoing_requests{labels} 0",
        f"trioserve_handle_queued_requests{labels} 0",
        'trioserve_replicas{application="held",deployment="Held",state="RUNNING"} 1',
        'trioserve_replicas{application="held",deployment="Held",state="STOPPING"} 0',
    }
    assert expected <= lines, sorted(expected - lines)
