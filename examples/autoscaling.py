"""Autoscaling: drive load at a deployment, watch the replica count grow, then shrink.

The deployment starts with one replica; sixteen callers keep it busy for a few seconds, the
handles report their queued and in-flight requests, and the controller adds replicas
(up to four). When the load stops, the count falls back to the minimum.
"""

from __future__ import annotations

import time

import trio

import trioserve as serve


@serve.deployment(
    max_ongoing_requests=4,
    autoscaling_config={
        "min_replicas": 1,
        "max_replicas": 4,
        "target_ongoing_requests": 2,
        "upscale_delay_s": 0.5,
        "downscale_delay_s": 1.0,
        "metrics_interval_s": 0.2,
        "look_back_period_s": 1.0,
    },
)
class Model:
    async def __call__(self, x: int) -> int:
        await trio.sleep(0.02)  # stands in for model work
        return x * 2


async def running(instance: serve.ServeInstance) -> int:
    status = await instance.status()
    return status.applications["default"].deployments["Model"].running_replicas


async def main() -> None:
    async with serve.open_serve(http_port=None) as instance:
        handle = await instance.run(Model.bind())
        start = time.monotonic()
        print(f"replicas at start: {await running(instance)}")
        peak = 1

        async def caller() -> None:
            with trio.move_on_after(4):
                i = 0
                while True:
                    assert await handle.remote(i) == i * 2
                    i += 1

        async with trio.open_nursery() as nursery:
            for _ in range(16):
                nursery.start_soon(caller)
            while len(nursery.child_tasks) > 0:
                count = await running(instance)
                peak = max(peak, count)
                print(f"t={time.monotonic() - start:4.1f}s under load: {count} replicas")
                await trio.sleep(0.5)
        print("load stopped")
        with trio.fail_after(20):
            while (count := await running(instance)) > 1:
                print(f"t={time.monotonic() - start:4.1f}s idle: {count} replicas")
                await trio.sleep(0.5)
        print(f"t={time.monotonic() - start:4.1f}s idle: {count} replicas")
        assert peak > 1, "the load should have added replicas"
        print(f"peak {peak} replicas, back to {count}: done")


if __name__ == "__main__":
    trio.run(main)
