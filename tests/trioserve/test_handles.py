"""DeploymentHandle: method accessors, options, function deployments and cancellation."""

from __future__ import annotations

import pickle

import pytest
import trio

import trioserve as serve

from . import serve_fixtures as fx


async def _until_cancelled_seen(hanger: serve.DeploymentHandle, key: str) -> None:
    """Wait (bounded) until the replica reports that its call ``key`` was cancelled."""
    with trio.fail_after(10):
        assert await hanger.wait_cancelled.remote(key) is True


@pytest.mark.slow
async def test_handle_method_accessors_and_options() -> None:
    """``handle.describe.remote()`` and ``options(method_name=...)`` call other methods."""
    async with serve.open_serve(http_port=None) as instance:
        handle = await instance.run(fx.Model.bind(3), name="model")
        assert isinstance(handle, serve.DeploymentHandle)
        response = handle.remote(2)
        assert isinstance(response, serve.DeploymentResponse)
        assert await response == 6
        assert await handle.describe.remote() == "scale=3"
        by_option = handle.options(method_name="describe")
        assert by_option.method_name == "describe"
        assert await by_option.remote() == "scale=3"
        assert handle.method_name == "__call__"  # options() made a new handle
        assert await handle.options(method_name="__call__").remote(x=5) == 15
        assert await serve.get_async([handle.remote(i) for i in range(5)]) == [0, 3, 6, 9, 12]


@pytest.mark.slow
async def test_handle_function_deployment() -> None:
    """A function deployment is called through ``handle.remote()`` and has no other methods."""
    async with serve.open_serve(http_port=None) as instance:
        handle = await instance.run(fx.double.bind(), name="fn")
        assert await handle.remote(21) == 42
        assert await serve.get_async([handle.remote(i) for i in range(4)]) == [0, 2, 4, 6]
        with pytest.raises(AttributeError, match="function deployment 'double' has no method"):
            await handle.other.remote(1)


def test_handle_repr_names_deployment_and_method() -> None:
    """A handle's repr says which deployment, application and method it calls."""
    handle = serve.DeploymentHandle("Model", "app").describe
    assert repr(handle) == "DeploymentHandle(deployment='Model', app='app', method='describe')"


def test_handle_pickles_by_name() -> None:
    """Handles travel to replicas by name, with their method and stream options."""
    handle = serve.DeploymentHandle("Model", "app").options(method_name="m", stream=True)
    copy = pickle.loads(pickle.dumps(handle))
    assert isinstance(copy, serve.DeploymentHandle)
    assert (copy.deployment_name, copy.app_name, copy.method_name, copy.stream) == (
        "Model",
        "app",
        "m",
        True,
    )


def test_handle_accessor_keeps_stream_option() -> None:
    """``handle.options(stream=True).method`` still streams; private names are not methods."""
    handle = serve.DeploymentHandle("S").options(stream=True).agen
    assert (handle.method_name, handle.stream) == ("agen", True)
    with pytest.raises(AttributeError):
        _ = serve.DeploymentHandle("S")._private


@pytest.mark.slow
async def test_handle_cancellation_reaches_replica() -> None:
    """Cancelling a scope or calling ``response.cancel()`` cancels the replica's call."""
    async with serve.open_serve(http_port=None) as instance:
        hanger = await instance.run(fx.Hanger.bind(), name="hang")

        # 1. a cancel scope around `await handle.remote()`
        async with trio.open_nursery() as nursery:
            scope = trio.CancelScope()
            responses: list[serve.DeploymentResponse] = []

            async def caller() -> None:
                with scope:
                    responses.append(hanger.hang.remote("scope"))
                    await responses[0]
                    raise AssertionError("hang returned")

            nursery.start_soon(caller)
            await hanger.wait_started.remote("scope")
            scope.cancel()
        assert scope.cancelled_caught
        await _until_cancelled_seen(hanger, "scope")
        with pytest.raises(serve.RequestCancelledError):
            await responses[0]

        # 2. response.cancel()
        response = hanger.hang.remote("method")
        await hanger.wait_started.remote("method")
        assert not await hanger.was_cancelled.remote("method")
        response.cancel()
        assert response.done()
        with pytest.raises(serve.RequestCancelledError):
            await response
        await _until_cancelled_seen(hanger, "method")


@pytest.mark.slow
async def test_handle_cancellation_reaches_downstream_call() -> None:
    """Cancelling a call to an ingress cancels the downstream call the ingress is awaiting."""
    app = fx.Forwarder.bind(fx.Hanger.bind())
    async with serve.open_serve(http_port=None) as instance:
        ingress = await instance.run(app, name="chain")
        hanger = instance.get_deployment_handle("Hanger", app_name="chain")
        assert await ingress.pid.remote() != await hanger.pid.remote()

        with trio.CancelScope() as scope:
            response = ingress.remote("down")
            await hanger.wait_started.remote("down")
            scope.cancel()
            await response
        await _until_cancelled_seen(hanger, "down")

        response = ingress.remote("down2")
        await hanger.wait_started.remote("down2")
        response.cancel()
        await _until_cancelled_seen(hanger, "down2")


async def test_handle_response_cancelled_by_scope_raises_request_cancelled() -> None:
    """A response whose awaiting task was cancelled raises RequestCancelledError."""
    async with serve.open_serve(http_port=None) as instance:
        hanger = await instance.run(fx.Hanger.options(placement="inline").bind(), name="h")
        response = hanger.hang.remote("k")
        await hanger.wait_started.remote("k")
        with trio.CancelScope() as scope:
            scope.cancel()
            await response
        assert response.done()
        for _ in range(2):
            with pytest.raises(serve.RequestCancelledError):
                await response
        assert await hanger.was_cancelled.remote("k")


@pytest.mark.slow
async def test_handle_get_async_and_wait_async() -> None:
    """``get_async`` gives values; ``wait_async`` splits done/pending without cancelling."""
    async with serve.open_serve(http_port=None) as instance:
        gate = await instance.run(fx.Gate.bind(), name="gate")
        assert await serve.get_async(gate.ping.remote(1)) == 1
        assert await serve.get_async([gate.ping.remote(i) for i in range(3)]) == [0, 1, 2]

        slow = gate.block.remote()
        quick = [gate.ping.remote(1), gate.ping.remote(2)]
        done, pending = await serve.wait_async([slow, *quick], num_returns=2, timeout_s=10)
        assert (done, pending) == (quick, [slow])
        done, pending = await serve.wait_async([slow, *quick], num_returns=3, timeout_s=0.1)
        assert (done, pending) == (quick, [slow])
        assert await serve.wait_async([]) == ([], [])
        with pytest.raises(ValueError, match="num_returns must be between 1 and 3, got 4"):
            await serve.wait_async([slow, *quick], num_returns=4)

        assert not slow.done()
        await gate.open.remote()
        assert await slow == "unblocked"


async def test_handle_get_async_timeout_raises() -> None:
    """``serve.get_async(..., timeout_s=)`` raises RequestTimeoutError for a slow request."""
    async with serve.open_serve(http_port=None) as instance:
        gate = await instance.run(fx.Gate.options(placement="inline").bind(), name="gate")
        with pytest.raises(serve.RequestTimeoutError, match=r"timeout_s=0\.1"):
            await serve.get_async(gate.block.remote(), timeout_s=0.1)
        with pytest.raises(TimeoutError):
            await serve.get_async([gate.ping.remote(1), gate.block.remote()], timeout_s=0.1)
        await gate.open.remote()  # the blocked requests finish, so the block exits at once


async def test_handle_get_async_timeout_keeps_request_running() -> None:
    """Like ``serve.get``, a get_async timeout stops waiting but not the request."""
    async with serve.open_serve(http_port=None) as instance:
        gate = await instance.run(fx.Gate.options(placement="inline").bind(), name="gate")
        slow = gate.block.remote()
        with pytest.raises(serve.RequestTimeoutError):
            await serve.get_async(slow, timeout_s=0.1)
        await gate.open.remote()
        assert await slow == "unblocked"
