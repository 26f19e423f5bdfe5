"""A request larger than a deployment's connections carry fails with RequestTooLargeError,
and the deployment's ``max_message_size`` option raises the limit (real processes)."""

from __future__ import annotations

import pytest

import trioserve as serve


@serve.deployment
class Length:
    async def __call__(self, data: bytes) -> int:
        return len(data)


def test_max_message_size_is_validated() -> None:
    """The option takes a number of bytes of at least 1024."""
    with pytest.raises(ValueError, match="max_message_size must be an int >= 1024"):
        Length.options(max_message_size=10)


@pytest.mark.slow
async def test_max_message_size_limits_and_raises() -> None:
    """200 KB fails on a 64 KiB deployment with a ServeError naming the option; the same
    request succeeds once the option allows it."""
    payload = b"x" * 200_000
    async with serve.open_serve(http_port=None) as instance:
        small = await instance.run(
            Length.options(name="Small", max_message_size=64 * 1024).bind(), name="small"
        )
        with pytest.raises(serve.RequestTooLargeError, match="max_message_size") as info:
            await small.remote(payload)
        assert info.value.limit == 64 * 1024
        assert isinstance(info.value, serve.ServeError)
        big = await instance.run(
            Length.options(name="Big", max_message_size=1024 * 1024).bind(),
            name="big",
            route_prefix="/big",
        )
        assert await big.remote(payload) == 200_000
