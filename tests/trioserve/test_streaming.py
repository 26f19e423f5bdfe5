"""Streaming: ``handle.options(stream=True).remote()`` iterates a generator method's items."""

from __future__ import annotations

import pytest
import trio

import trioserve as serve

from . import serve_fixtures as fx


@pytest.mark.slow
async def test_streaming_items_arrive_in_order() -> None:
    """Async and sync generator methods stream their items in order."""
    async with serve.open_serve(http_port=None) as instance:
        handle = await instance.run(fx.Streamer.bind(), name="stream")
        streaming = handle.options(stream=True)

        gen = streaming.agen.remote(100)
        assert isinstance(gen, serve.DeploymentResponseGenerator)
        assert [item async for item in gen] == list(range(100))

        sync_gen = handle.options(stream=True, method_name="sgen").remote(5)
        assert [item async for item in sync_gen] == [f"item-{i}" for i in range(5)]

        assert [item async for item in streaming.agen.remote(0)] == []

        first, second = streaming.agen.remote(30), streaming.sgen.remote(30)
        assert [item async for item in second] == [f"item-{i}" for i in range(30)]
        assert [item async for item in first] == list(range(30))


@pytest.mark.slow
async def test_streaming_errors_reach_consumer() -> None:
    """A mid-stream error arrives after the items before it; misuse is a TypeError."""
    async with serve.open_serve(http_port=None) as instance:
        handle = await instance.run(fx.Streamer.bind(), name="stream")
        received: list[int] = []

        async def consume(gen: serve.DeploymentResponseGenerator) -> None:
            async for item in gen:
                received.append(item)

        with pytest.raises(fx.CustomError, match="stream broke after 3"):
            await consume(handle.options(stream=True).fail_after.remote(3))
        assert received == [0, 1, 2]

        with pytest.raises(TypeError, match="generator"):
            await handle.agen.remote(3)
        with pytest.raises(TypeError, match="not a generator"):
            async for _ in handle.options(stream=True).plain.remote():
                pass
        assert await handle.plain.remote() == 1


@pytest.mark.slow
async def test_streaming_consumer_stop_cancels_generator() -> None:
    """Stopping a stream early stops the generator in the replica."""
    async with serve.open_serve(http_port=None) as instance:
        handle = await instance.run(fx.Streamer.bind(), name="stream")
        streaming = handle.options(stream=True)

        gen = streaming.endless.remote("cancel")
        assert [await gen.__anext__() for _ in range(3)] == [0, 1, 2]
        gen.cancel()
        with trio.fail_after(10):
            assert await handle.wait_closed.remote("cancel")

        with trio.CancelScope() as scope:
            async for item in streaming.endless.remote("scope"):
                if item == 5:
                    scope.cancel()
        assert scope.cancelled_caught
        with trio.fail_after(10):
            assert await handle.wait_closed.remote("scope")
