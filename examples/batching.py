"""Dynamic batching: a vectorised numpy model answers one matrix product per batch.

Callers send one vector each; ``@serve.batch`` gathers up to 32 of them (or what arrived
within 10 ms) and the model multiplies them all at once, then each caller gets its own row.
"""

from __future__ import annotations

import numpy as np
import trio

import trioserve as serve


@serve.deployment(max_ongoing_requests=64)
class Linear:
    def __init__(self, size: int) -> None:
        self.weights = np.random.default_rng(0).standard_normal((size, size))
        self.batch_sizes: list[int] = []

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
    async def __call__(self, vectors: list[list[float]]) -> list[list[float]]:
        self.batch_sizes.append(len(vectors))
        out = np.asarray(vectors) @ self.weights  # one product for the whole batch
        return [row.tolist() for row in out]

    def largest_batch(self) -> int:
        return max(self.batch_sizes)


async def main() -> None:
    size = 16
    weights = np.random.default_rng(0).standard_normal((size, size))
    inputs = [np.full(size, float(i)).tolist() for i in range(64)]
    async with serve.open_serve(http_port=None) as instance:
        model = await instance.run(Linear.bind(size), name="linear")
        results: dict[int, list[float]] = {}

        async def ask(i: int) -> None:
            results[i] = await model.remote(inputs[i])

        async with trio.open_nursery() as nursery:
            for i in range(len(inputs)):
                nursery.start_soon(ask, i)
        for i, vector in enumerate(inputs):
            assert np.allclose(results[i], np.asarray(vector) @ weights)
        largest = await model.largest_batch.remote()
        assert largest > 1, "no two requests were batched"
    print(f"batching: 64 requests answered in batches of up to {largest}")


if __name__ == "__main__":
    trio.run(main)
