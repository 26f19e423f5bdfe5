"""Ray Serve's ``@serve.batch`` on the same model as ``bench/model_bench.py`` (cost 2 ms +
about 0.05 ms per item), c64 over a DeploymentHandle, with and without batching. Runs in a
venv that has ``ray[serve]`` (not trioserve's):

    RAY_VENV/bin/python bench/ray_batching.py [--windows 3] [--window-s 2]

Prints one JSON object (the figures in the shape model_bench.py writes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

import numpy as np
from ray import serve

FIXED_S = 0.002
SIZE = 160


def _work(n: int, weights: np.ndarray) -> np.ndarray:
    end = time.perf_counter() + FIXED_S
    while time.perf_counter() < end:
        pass
    return np.ones((n, SIZE)) @ weights


@serve.deployment(max_ongoing_requests=64)
class Unbatched:
    def __init__(self) -> None:
        self.weights = np.random.default_rng(0).standard_normal((SIZE, SIZE))

    def __call__(self, x: int) -> float:
        return float(_work(1, self.weights)[0, 0])


@serve.deployment(max_ongoing_requests=64)
class Batched:
    def __init__(self) -> None:
        self.weights = np.random.default_rng(0).standard_normal((SIZE, SIZE))

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def __call__(self, xs: list[int]) -> list[float]:
        out = await asyncio.to_thread(_work, len(xs), self.weights)
        return [float(v) for v in out[:, 0]]


def _pct(data: list[float], q: float) -> float:
    data = sorted(data)
    return data[max(0, min(len(data) - 1, round(q / 100 * len(data) + 0.5) - 1))]


async def _closed_loop(handle: Any, concurrency: int, windows: int, window_s: float) -> dict:
    perf = time.perf_counter
    start = perf() + 0.5
    bounds = [(start + i * window_s, start + (i + 1) * window_s) for i in range(windows)]
    end = bounds[-1][1]
    done = [0] * windows
    lat: list[list[float]] = [[] for _ in range(windows)]

    async def worker() -> None:
        while True:
            t0 = perf()
            if t0 >= end:
                return
            await handle.remote(0)
            t1 = perf()
            for i, (a, b) in enumerate(bounds):
                if a <= t1 < b:
                    done[i] += 1
                    if t0 >= a:
                        lat[i].append(t1 - t0)

    await asyncio.gather(*[worker() for _ in range(concurrency)])
    rates = [n / window_s for n in done]
    return {
        "throughput": {
            "value": statistics.median(rates),
            "min": min(rates),
            "max": max(rates),
            "unit": "req/s",
        },
        "p50": {"value": statistics.median(_pct(x, 50) * 1e3 for x in lat), "unit": "ms"},
        "p99": {"value": statistics.median(_pct(x, 99) * 1e3 for x in lat), "unit": "ms"},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--window-s", type=float, default=2.0)
    args = parser.parse_args()
    results: dict[str, Any] = {}
    for name, deployment in [("unbatched", Unbatched), ("batched", Batched)]:
        handle = serve.run(deployment.bind(), name=name, route_prefix=f"/{name}")

        async def measure(h: Any = handle) -> dict:
            return await _closed_loop(h, 64, args.windows, args.window_s)

        results[name] = asyncio.run(measure())
        serve.delete(name)
    results["speedup"] = round(
        results["batched"]["throughput"]["value"] / results["unbatched"]["throughput"]["value"], 2
    )
    serve.shutdown()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
