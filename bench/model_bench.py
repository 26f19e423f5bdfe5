"""Batching and multiplexing, measured (closed loop, several windows, medians).

* Batching: a model whose cost is ``a + b*n`` for a batch of n (``a`` = 2 ms of fixed
  work, then a numpy matrix product costing about ``b`` = 0.05 ms per item), at c64, with
  and without ``@serve.batch(max_batch_size=32)``.
* Multiplexing: 3 replicas, 12 model ids of 20 ms load time each, requests uniform over
  the ids, c32, with model-aware routing and, as the ablation, with the router told
  nothing about where models are (plain power of two choices).

    python bench/model_bench.py [--windows 5] [--window-s 2]

Writes ``bench/results/models-<date>.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_measure import closed_loop  # why: bench/ is put on sys.path above

import trioserve as serve
from trioserve._handles import router as router_module

FIXED_S = 0.002
SIZE = 160  # a 160x160 product per item costs about 0.05 ms here


def _work(n: int, weights: np.ndarray) -> np.ndarray:
    end = time.perf_counter() + FIXED_S
    while time.perf_counter() < end:  # the fixed cost of a call (a model's overhead)
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
        out = await trio.to_thread.run_sync(_work, len(xs), self.weights)
        return [float(v) for v in out[:, 0]]


@serve.deployment(num_replicas=3, max_ongoing_requests=32)
class Multiplexed:
    def __init__(self) -> None:
        self.loads = 0

    @serve.multiplexed(max_num_models_per_replica=4)
    async def get_model(self, model_id: str) -> str:
        self.loads += 1
        await trio.sleep(0.02)
        return model_id

    async def __call__(self, x: int) -> tuple[str, int, int]:
        model = await self.get_model(serve.get_multiplexed_model_id())
        return model, os.getpid(), self.loads


async def _windows(call: Any, concurrency: int, windows: int, window_s: float) -> dict[str, Any]:
    result = await closed_loop(call, concurrency, warmup_s=0.3, window_s=window_s, windows=windows)
    return result.figure()


async def batching(windows: int, window_s: float) -> dict[str, Any]:
    results = {}
    async with serve.open_serve(http_port=None) as instance:
        for name, deployment in [("unbatched", Unbatched), ("batched", Batched)]:
            handle = await instance.run(deployment.bind(), name=name, route_prefix=None)
            results[name] = await _windows(handle.remote, 64, windows, window_s)
    base = results["unbatched"]["throughput"]["value"]
    results["speedup"] = round(results["batched"]["throughput"]["value"] / base, 2)
    return results


async def multiplexing(windows: int, window_s: float, aware: bool) -> dict[str, Any]:
    rng = random.Random(1)
    ids = [f"model-{i}" for i in range(12)]
    original = router_module.Router.update_models
    if not aware:  # the ablation: routers never learn where models are
        router_module.Router.update_models = lambda self, models: None  # type: ignore[method-assign]
        original_assign = router_module.Router._pick

        def blind(self: Any, model_id: str = "") -> Any:
            return original_assign(self, "")

        router_module.Router._pick = blind  # type: ignore[method-assign]
    try:
        async with serve.open_serve(http_port=None) as instance:
            handle = await instance.run(Multiplexed.bind(), name="mux", route_prefix=None)
            loads: dict[int, int] = {}

            async def call(_i: int) -> None:
                model_id = rng.choice(ids)
                _model, pid, replica_loads = await handle.options(
                    multiplexed_model_id=model_id
                ).remote(0)
                loads[pid] = max(loads.get(pid, 0), replica_loads)

            started = time.perf_counter()
            figure = await _windows(call, 32, windows, window_s)
            elapsed = time.perf_counter() - started
            figure["model_loads"] = sum(loads.values())
            figure["loads_per_s"] = round(sum(loads.values()) / elapsed, 1)
            return figure
    finally:
        router_module.Router.update_models = original  # type: ignore[method-assign]
        if not aware:
            router_module.Router._pick = original_assign  # type: ignore[method-assign]


async def main(windows: int, window_s: float) -> dict[str, Any]:
    return {
        "batching_c64": await batching(windows, window_s),
        "multiplexing_c32_aware": await multiplexing(windows, window_s, aware=True),
        "multiplexing_c32_p2c": await multiplexing(windows, window_s, aware=False),
    }


def _cli() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=5, help="windows per figure")
    parser.add_argument("--window-s", type=float, default=2.0, help="seconds per window")
    args = parser.parse_args()
    report = trio.run(main, args.windows, args.window_s)
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    path = out / f"models-{datetime.date.today().isoformat()}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(_cli())
