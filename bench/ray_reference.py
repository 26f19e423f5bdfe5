"""The child side of the Ray Serve reference, run with the Python of ``--ray-venv``.

It imports only the standard library, Ray and ``bench_stats`` (this directory), so Ray's
virtualenv needs nothing of trioserve. It measures the same workloads as trioserve's
(``bench_apps``' deployments rewritten for Ray: a no-op ``async def __call__(self, x)``, an
adder, a "hello" HTTP ingress; one replica each, ``max_ongoing_requests=1000``), in the same
windows, with an asyncio closed loop in the driver: handle c1, c16, c64; chaining c16
(``await adder.remote(noop.remote(i))``); a 100 KB argument at c16. Figures are appended as
JSON lines to ``--result-file``, in the format of ``bench_workloads.Reporter``.

Then it runs the HTTP app on 127.0.0.1, prints ``URL <url>`` and serves until its stdin
reaches end of file, while ``bench/run.py`` measures that URL with the same HTTP cases as
trioserve's (httpx, wrk). Then it shuts Serve and Ray down.

``RAY_SERVE_THROUGHPUT_OPTIMIZED=1`` (Ray's throughput-optimised mode) is set unless the
environment sets it already.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("RAY_SERVE_THROUGHPUT_OPTIMIZED", "1")

import bench_stats  # noqa: E402 (after the path set-up above)

PAYLOAD_100K = 100 * 1024


class Out:
    def __init__(self, path: str) -> None:
        self.path = path

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"workload": "ray", **record}) + "\n")

    def error(self, case: str, error: str) -> None:
        self.write({"type": "error", "case": case, "error": error[:600]})

    def note(self, text: str) -> None:
        self.write({"type": "note", "text": text})


async def closed_loop(
    call: Callable[[int], Awaitable[object]],
    concurrency: int,
    warmup_s: float,
    window_s: float,
    windows: int,
) -> list[dict[str, Any]]:
    """``bench_measure.closed_loop`` on asyncio: consecutive windows after a warmup."""
    perf = time.perf_counter
    first = perf() + warmup_s
    end = first + windows * window_s
    completed = [0] * windows
    latencies: list[list[float]] = [[] for _ in range(windows)]

    def index(t: float) -> int | None:
        if t < first or t > end:
            return None
        return min(windows - 1, int((t - first) / window_s))

    async def worker(i: int) -> None:
        while True:
            t0 = perf()
            if t0 >= end:
                return
            await call(i)
            t1 = perf()
            k = index(t1)
            if k is not None:
                completed[k] += 1
                if index(t0) == k:
                    latencies[k].append(t1 - t0)
            i += concurrency

    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    pairs = zip(completed, latencies, strict=True)
    return [bench_stats.window(n, window_s, lat) for n, lat in pairs]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--result-file", required=True)
    parser.add_argument("--warmup-s", type=float, required=True)
    parser.add_argument("--window-s", type=float, required=True)
    parser.add_argument("--windows", type=int, required=True)
    parser.add_argument("--case-timeout-s", type=float, default=120.0)
    args = parser.parse_args()
    out = Out(args.result_file)

    import ray
    from ray import serve

    out.note(
        f"Ray {ray.__version__} from {sys.executable}; "
        f"RAY_SERVE_THROUGHPUT_OPTIMIZED={os.environ['RAY_SERVE_THROUGHPUT_OPTIMIZED']}"
    )

    @serve.deployment(max_ongoing_requests=1000)
    class Noop:
        async def __call__(self, x: Any) -> Any:
            return x

    @serve.deployment(max_ongoing_requests=1000)
    class Adder:
        async def __call__(self, x: int) -> int:
            return x + 1

    @serve.deployment(max_ongoing_requests=1000)
    class Hello:
        async def __call__(self, request: Any) -> str:
            return "hello"

    port = free_port()
    ray.init(include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        noop = serve.run(Noop.bind(), name="noop", route_prefix=None)
        adder = serve.run(Adder.bind(), name="adder", route_prefix=None)
        payload = os.urandom(PAYLOAD_100K)

        async def measure() -> None:
            if await noop.remote(7) != 7:
                raise AssertionError("Ray noop call did not echo")
            cases: list[tuple[str, Callable[[int], Awaitable[object]], int]] = [
                ("c1", lambda i: noop.remote(i), 1),
                ("c16", lambda i: noop.remote(i), 16),
                ("c64", lambda i: noop.remote(i), 64),
                ("chain c16", lambda i: adder.remote(noop.remote(i)), 16),
                ("100KB c16", lambda _i: noop.remote(payload), 16),
            ]
            for case, call, c in cases:
                try:
                    windows = await asyncio.wait_for(
                        closed_loop(call, c, args.warmup_s, args.window_s, args.windows),
                        args.case_timeout_s,
                    )
                except Exception as exc:
                    out.error(case, f"{type(exc).__qualname__}: {exc}")
                    continue
                out.write(
                    {
                        "type": "figure",
                        "case": case,
                        **bench_stats.summarize(windows, c, args.window_s),
                    }
                )

        asyncio.run(measure())
        serve.run(Hello.bind(), name="http", route_prefix="/")
        print(f"URL http://127.0.0.1:{port}/", flush=True)
        while os.read(sys.stdin.fileno(), 1024):
            pass
    except Exception:
        out.error("ray", traceback.format_exc()[-600:])
        print("FAILED", flush=True)
        return 1
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
