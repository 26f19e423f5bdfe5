"""The asyncio path beside the Trio path, in one run: async handle c1 and c64 to a no-op
deployment with ``event_loop="trio"`` (the default) and ``event_loop="asyncio"``, each in
several windows (median, min-max). Writes ``bench/results/asyncio-<date>.json``.

    python bench/asyncio_path.py [--windows 5] [--window-s 2]
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_apps import Noop  # why: bench/ is put on sys.path just above
from bench_measure import closed_loop

import trioserve as serve


async def measure(event_loop: str, windows: int, window_s: float) -> dict[str, Any]:
    async with serve.open_serve(http_port=None) as instance:
        handle = await instance.run(
            Noop.options(event_loop=event_loop).bind(), name=event_loop, route_prefix=None
        )
        for _ in range(200):
            await handle.remote(0)
        figures: dict[str, Any] = {}
        for concurrency in (1, 64):
            result = await closed_loop(
                handle.remote, concurrency, warmup_s=0.3, window_s=window_s, windows=windows
            )
            figures[f"c{concurrency}"] = result.figure()
        return figures


async def main(windows: int, window_s: float) -> dict[str, Any]:
    return {loop: await measure(loop, windows, window_s) for loop in ("trio", "asyncio")}


def _cli() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=5, help="windows per figure")
    parser.add_argument("--window-s", type=float, default=2.0, help="seconds per window")
    args = parser.parse_args()
    report = trio.run(main, args.windows, args.window_s)
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    path = out / f"asyncio-{datetime.date.today().isoformat()}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    for loop, figures in report.items():
        for case, fig in figures.items():
            print(loop, case, json.dumps({k: fig[k] for k in ("throughput", "p50")}))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(_cli())
