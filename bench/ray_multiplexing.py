"""Ray Serve's ``@serve.multiplexed`` on the same workload as ``bench/model_bench.py``: 3
replicas, at most 4 models per replica, 12 model ids of 20 ms load time each, requests
uniform over the ids, c32 over a DeploymentHandle. Runs in a venv that has ``ray[serve]``
(not trioserve's):

    RAY_VENV/bin/python bench/ray_multiplexing.py [--windows 5] [--window-s 2]

Prints one JSON object on stdout (the figures in the shape model_bench.py writes); whatever
Ray prints goes to stderr. ``model_loads`` is the number of loads during the measured
windows (per replica, the load count seen at the end of the windows minus the one seen
before they opened), ``hit_rate`` is ``1 - model_loads / requests_in_windows``.
``model_loads_since_start`` counts every load since the replicas started, as
model_bench.py's ``model_loads`` does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import statistics
import sys
import time
from typing import Any

import ray
from ray import serve

LOAD_S = 0.02
MODELS = 12
CONCURRENCY = 32
WARMUP_S = 0.5


@serve.deployment(
    num_replicas=3,
    max_ongoing_requests=32,
    ray_actor_options={"num_cpus": 0.5},
    logging_config={"log_level": "WARNING", "enable_access_log": False},
)
class Multiplexed:
    def __init__(self) -> None:
        self.loads = 0

    @serve.multiplexed(max_num_models_per_replica=4)
    async def get_model(self, model_id: str) -> str:
        self.loads += 1
        await asyncio.sleep(LOAD_S)
        return model_id

    async def __call__(self, x: int) -> tuple[str, int, int]:
        model = await self.get_model(serve.get_multiplexed_model_id())
        return model, os.getpid(), self.loads


def _pct(data: list[float], q: float) -> float:
    data = sorted(data)
    return data[max(0, min(len(data) - 1, round(q / 100 * len(data) + 0.5) - 1))]


async def _closed_loop(handle: Any, windows: int, window_s: float) -> dict[str, Any]:
    rng = random.Random(1)
    ids = [f"model-{i}" for i in range(MODELS)]
    perf = time.perf_counter
    started = perf()
    start = started + WARMUP_S
    bounds = [(start + i * window_s, start + (i + 1) * window_s) for i in range(windows)]
    end = bounds[-1][1]
    done = [0] * windows
    lat: list[list[float]] = [[] for _ in range(windows)]
    before: dict[int, int] = {}
    during: dict[int, int] = {}
    seen: dict[int, int] = {}

    async def worker() -> None:
        while True:
            t0 = perf()
            if t0 >= end:
                return
            model_id = rng.choice(ids)
            _model, pid, loads = await handle.options(multiplexed_model_id=model_id).remote(0)
            t1 = perf()
            seen[pid] = max(seen.get(pid, 0), loads)
            if t1 < start:
                before[pid] = max(before.get(pid, 0), loads)
            elif t1 < end:
                during[pid] = max(during.get(pid, 0), loads)
            for i, (a, b) in enumerate(bounds):
                if a <= t1 < b:
                    done[i] += 1
                    if t0 >= a:
                        lat[i].append(t1 - t0)

    await asyncio.gather(*[worker() for _ in range(CONCURRENCY)])
    rates = [n / window_s for n in done]
    requests = sum(done)
    loads = sum(n - before.get(pid, 0) for pid, n in during.items())
    return {
        "concurrency": CONCURRENCY,
        "throughput": {
            "value": statistics.median(rates),
            "min": min(rates),
            "max": max(rates),
            "unit": "req/s",
        },
        "p50": {"value": statistics.median(_pct(x, 50) * 1e3 for x in lat), "unit": "ms"},
        "p99": {"value": statistics.median(_pct(x, 99) * 1e3 for x in lat), "unit": "ms"},
        "window": {"value": window_s, "unit": "s"},
        "windows_n": windows,
        "requests_in_windows": requests,
        "replicas_seen": len(seen),
        "model_loads": loads,
        "loads_per_s": round(loads / (windows * window_s), 1),
        "hit_rate": round(1 - loads / requests, 4) if requests else None,
        "model_loads_since_start": sum(seen.values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--windows", type=int, default=5)
    parser.add_argument("--window-s", type=float, default=2.0)
    args = parser.parse_args()
    stdout = os.dup(1)
    os.dup2(2, 1)
    ray.init(logging_level=logging.WARNING, log_to_driver=False, include_dashboard=False)
    serve.start(
        proxy_location="Disabled",
        logging_config={"log_level": "WARNING", "enable_access_log": False},
    )
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    handle = serve.run(Multiplexed.bind(), name="mux", route_prefix=None)

    async def measure() -> dict[str, Any]:
        return await _closed_loop(handle, args.windows, args.window_s)

    results = {"multiplexing_c32": asyncio.run(measure())}
    serve.shutdown()
    ray.shutdown()
    sys.stdout.flush()
    with os.fdopen(stdout, "w") as out:
        out.write(json.dumps(results) + "\n")


if __name__ == "__main__":
    main()
