"""Inline placement: replicas as Trio tasks in the caller's process, same behaviour."""

from __future__ import annotations

import collections
import os

import pytest
import trio
import trio.testing

import trioserve as serve

from . import serve_fixtures as fx


async def test_inline_replicas_run_in_caller_process() -> None:
    """``placement="inline"`` replicas run in this process and share its load evenly."""
    async with serve.open_serve(http_port=None) as instance:
        dep = fx.Pid.options(num_replicas=3, placement="inline")
        handle = await instance.run(dep.bind(), name="inline")
        idents = await serve.get_async([handle.ident.remote() for _ in range(300)])
        status = await instance.status()
    counts = collections.Counter(obj for _pid, obj in idents)
    assert {pid for pid, _obj in idents} == {os.getpid()}
    assert len(counts) == 3
    assert min(counts.values()) >= 30, counts
    replicas = status.applications["inline"].deployments["Pid"].replicas
    assert len(replicas) == 3
    assert all(r.pid is None for r in replicas)


async def test_inline_local_testing_mode_forces_inline() -> None:
    """``local_testing_mode=True`` hosts every deployment of the graph in this process."""
    async with serve.open_serve(http_port=None) as instance:
        assert fx.Forwarder.config.placement == "process"
        ingress = await instance.run(
            fx.Forwarder.bind(fx.Hanger.bind()), name="local", local_testing_mode=True
        )
        hanger = instance.get_deployment_handle("Hanger", "local")
        assert await ingress.pid.remote() == os.getpid()
        assert await hanger.pid.remote() == os.getpid()
        status = await instance.status()
        deployments = status.applications["local"].deployments
        assert [r.pid for d in deployments.values() for r in d.replicas] == [None, None]


async def test_inline_never_exceeds_max_ongoing_requests() -> None:
    """Inline replicas also never run more than max_ongoing_requests at once."""
    dep = fx.Concurrency.options(num_replicas=2, max_ongoing_requests=2, placement="inline")
    async with serve.open_serve(http_port=None) as instance:
        handle = await instance.run(dep.bind(), name="limits")
        results = await serve.get_async([handle.remote(i) for i in range(40)])
    max_by_replica: dict[int, int] = {}
    for _pid, obj, seen in results:
        max_by_replica[obj] = max(max_by_replica.get(obj, 0), seen)
    assert list(max_by_replica.values()) == [2, 2]


async def test_inline_backpressure_beyond_max_queued_requests() -> None:
    """Inline deployments refuse requests past max_queued_requests with BackPressureError."""
    dep = fx.Gate.options(max_ongoing_requests=1, max_queued_requests=1, placement="inline")
    async with serve.open_serve(http_port=None) as instance:
        handle = await instance.run(dep.bind(), name="bp")
        busy = handle.block.remote()
        queued = handle.ping.remote(1)
        with pytest.raises(serve.BackPressureError):
            await handle.ping.remote(2)
        await trio.testing.wait_all_tasks_blocked()
        assert not queued.done()
        busy.cancel()
        assert await queued == 1


async def test_inline_user_errors_keep_their_type() -> None:
    """User exceptions from inline replicas reach the caller with type and message."""
    async with serve.open_serve(http_port=None) as instance:
        handle = await instance.run(fx.Faulty.options(placement="inline").bind(), name="e")
        with pytest.raises(ValueError, match=r"^bad value 7"):
            await handle.value_error.remote(7)
        with pytest.raises(fx.CustomError, match=r"^inline failure"):
            await handle.custom_error.remote("inline failure")
        with pytest.raises(serve.DeploymentFailedError) as info:
            await instance.run(
                fx.BrokenInit.options(placement="inline").bind(1), name="b", route_prefix="/b"
            )
        assert isinstance(info.value.__cause__, fx.CustomError)
        assert await handle.ok.remote() == "ok"


async def test_inline_chaining() -> None:
    """Chaining, containers, a diamond and upstream errors behave as with processes."""
    async with serve.open_serve(http_port=None) as instance:
        math = await instance.run(fx.Math.bind(), name="math", local_testing_mode=True)
        assert await math.add_one.remote(math.add_one.remote(1)) == 3
        assert await math.total.remote([math.add_one.remote(0), 1]) == 2
        received = await math.echo.remote({"d": [math.double.remote(2)]}, k=math.add_one.remote(1))
        assert received == [[{"d": [4]}], {"k": 2}]
        a = math.add_one.remote(1)
        d = math.combine.remote(math.double.remote(a), math.add_one.remote(a))
        assert await d == 403
        assert await a == 2
        failed = math.fail.remote("inline upstream")
        with pytest.raises(fx.CustomError, match="inline upstream"):
            await math.add_one.remote(failed)


async def test_inline_streaming() -> None:
    """Inline generator methods stream in order, and stopping the stream stops them."""
    async with serve.open_serve(http_port=None) as instance:
        handle = await instance.run(fx.Streamer.options(placement="inline").bind(), name="s")
        streaming = handle.options(stream=True)
        assert [i async for i in streaming.agen.remote(50)] == list(range(50))
        assert [i async for i in streaming.sgen.remote(3)] == ["item-0", "item-1", "item-2"]
        gen = streaming.endless.remote("k")
        assert await gen.__anext__() == 0
        gen.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert await handle.wait_closed.remote("k")


async def test_inline_cancellation_reaches_replica_and_downstream() -> None:
    """Cancellation reaches inline replicas and the downstream calls they await."""
    async with serve.open_serve(http_port=None) as instance:
        ingress = await instance.run(
            fx.Forwarder.bind(fx.Hanger.bind()), name="c", local_testing_mode=True
        )
        hanger = instance.get_deployment_handle("Hanger", "c")

        response = hanger.hang.remote("direct")
        await trio.testing.wait_all_tasks_blocked()
        assert not await hanger.was_cancelled.remote("direct")
        response.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert await hanger.was_cancelled.remote("direct")

        with trio.CancelScope() as scope:
            scope.deadline = trio.current_time()  # cancelled at its first checkpoint
            await hanger.hang.remote("scope")
        await trio.testing.wait_all_tasks_blocked()
        assert await hanger.was_cancelled.remote("scope")

        async with trio.open_nursery() as nursery:
            scope = trio.CancelScope()

            async def caller() -> None:
                with scope:
                    await ingress.remote("downstream")

            nursery.start_soon(caller)
            await trio.testing.wait_all_tasks_blocked()
            assert await hanger.wait_started.remote("downstream")
            scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert await hanger.was_cancelled.remote("downstream")
