"""Chaining: an un-awaited response passed into another call stands for its value."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs
import pytest

import trioserve as serve

from . import serve_fixtures as fx


@attrs.frozen
class Chain:
    plus1: serve.DeploymentHandle
    plus10: serve.DeploymentHandle
    math: serve.DeploymentHandle


@asynccontextmanager
async def open_chain() -> AsyncIterator[Chain]:
    """One application of four process deployments: Holder, Plus1, Plus10 and Math."""
    app = fx.Holder.bind(
        [fx.Adder.options(name="Plus1").bind(1), fx.Adder.options(name="Plus10").bind(10)],
        {"math": fx.Math.bind()},
    )
    async with serve.open_serve(http_port=None) as instance:
        await instance.run(app, name="chain")
        yield Chain(
            plus1=instance.get_deployment_handle("Plus1", "chain"),
            plus10=instance.get_deployment_handle("Plus10", "chain"),
            math=instance.get_deployment_handle("Math", "chain"),
        )


@pytest.mark.slow
async def test_chaining_response_as_argument() -> None:
    """A response passed to another call stands for its value, across deployments."""
    async with open_chain() as c:
        assert await c.plus1.remote(c.plus1.remote(1)) == 3
        assert await c.plus1.remote(c.plus10.remote(c.plus1.remote(0))) == 12
        assert await c.math.combine.remote(c.plus1.remote(1), b=c.plus10.remote(2)) == 212


@pytest.mark.slow
async def test_chaining_responses_inside_containers() -> None:
    """Responses nested in lists, tuples, dicts and kwargs are replaced by their values."""
    async with open_chain() as c:
        r1, r2 = c.plus1.remote(1), c.plus10.remote(1)
        assert await c.math.total.remote([r1, r2, 100]) == 113
        assert await c.math.total.remote({"a": c.plus1.remote(5), "b": 7}) == 13
        received = await c.math.echo.remote(
            (c.plus1.remote(0), 5),
            {"outer": [c.plus10.remote(0), {"inner": c.plus1.remote(1)}]},
            key=[c.plus1.remote(2)],
        )
        assert received == [[(1, 5), {"outer": [10, {"inner": 2}]}], {"key": [3]}]


@pytest.mark.slow
async def test_chaining_diamond_shares_one_response() -> None:
    """One response can feed two calls whose results a third combines (a diamond)."""
    async with open_chain() as c:
        a = c.plus1.remote(1)  # 2
        b = c.plus10.remote(a)  # 12
        d_input = c.math.double.remote(a)  # 4
        d = c.math.combine.remote(b, d_input)
        assert await d == 1204
        assert await a == 2
        assert await b == 12
        assert await d_input == 4


@pytest.mark.slow
async def test_chaining_upstream_error_propagates() -> None:
    """An upstream failure fails the chained calls with the same error."""
    async with open_chain() as c:
        failed = c.math.fail.remote("upstream broke")
        chained = c.plus1.remote(failed)
        in_list = c.math.total.remote([1, failed])
        for response in (chained, in_list, failed):
            with pytest.raises(fx.CustomError, match="upstream broke"):
                await response
        assert await c.plus1.remote(1) == 2


@pytest.mark.slow
async def test_chaining_finished_response_as_argument() -> None:
    """A response that was awaited first and then passed on still stands for its value."""
    async with serve.open_serve(http_port=None) as instance:
        handle = await instance.run(fx.Math.bind(), name="math")
        first = handle.add_one.remote(1)
        assert await first == 2
        assert await handle.add_one.remote(first) == 3
