"""Streaming: a deployment method that is an async generator, consumed item by item.

``handle.options(stream=True).remote(...)`` returns a generator instead of a single
response: ``async for`` over it with the async handle (in a Trio app), plain ``for`` with
the sync handle. Each item arrives as soon as the replica yields it.

Run it: ``python examples/streaming.py``
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import trio

import trioserve as serve

TOKEN_DELAY_S = 0.05


@serve.deployment
class TextGenerator:
    def __init__(self, vocabulary: list[str]) -> None:
        self.vocabulary = vocabulary

    async def __call__(self, n: int) -> AsyncIterator[str]:
        for i in range(n):
            await trio.sleep(TOKEN_DELAY_S)  # stands in for producing one token
            yield self.vocabulary[i % len(self.vocabulary)]

    async def countdown(self, start: int) -> AsyncIterator[int]:
        for i in range(start, 0, -1):
            await trio.sleep(TOKEN_DELAY_S)
            yield i


VOCABULARY = ["streams", "arrive", "one", "item", "at", "a", "time"]


def sync_part() -> None:
    """A plain script: ``for`` over the sync handle's generator."""
    serve.start(http_port=None)
    try:
        handle = serve.run(TextGenerator.bind(VOCABULARY))
        stream = handle.options(stream=True)

        started = time.perf_counter()
        arrivals: list[float] = []
        tokens: list[str] = []
        for token in stream.remote(len(VOCABULARY)):
            arrivals.append(time.perf_counter() - started)
            tokens.append(token)
            print(f"  sync  +{arrivals[-1] * 1000:4.0f} ms  {token}")
        assert tokens == VOCABULARY
        # The first token came long before the last one was produced.
        assert arrivals[0] < arrivals[-1] - 2 * TOKEN_DELAY_S

        assert list(stream.countdown.remote(3)) == [3, 2, 1]
    finally:
        serve.shutdown()


async def async_part() -> list[str]:
    """A Trio app: ``async for`` over the async handle's generator."""
    async with serve.open_serve(http_port=None) as instance:
        handle = await instance.run(TextGenerator.bind(VOCABULARY))
        stream = handle.options(stream=True)

        started = trio.current_time()
        tokens: list[str] = []
        async for token in stream.remote(len(VOCABULARY)):
            tokens.append(token)
            print(f"  async +{(trio.current_time() - started) * 1000:4.0f} ms  {token}")
        assert tokens == VOCABULARY

        countdown = stream.options(method_name="countdown")
        assert [i async for i in countdown.remote(3)] == [3, 2, 1]
        return tokens


def main() -> None:
    sync_part()
    tokens = trio.run(async_part)
    print(f"streaming: {' '.join(tokens)}")


if __name__ == "__main__":
    main()
