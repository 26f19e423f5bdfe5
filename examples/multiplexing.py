"""Model multiplexing: several small models served by id, over handles and HTTP.

Each replica keeps at most two models loaded (least recently used evicted); requests name
their model with ``handle.options(multiplexed_model_id=...)`` or the
``serve_multiplexed_model_id`` header, and go to the replica that already holds it.
"""

from __future__ import annotations

import os
from typing import Any

import httpx
import trio

import trioserve as serve


class Scaler:
    """A "model": multiplies by its factor."""

    def __init__(self, factor: int) -> None:
        self.factor = factor

    def predict(self, x: int) -> int:
        return x * self.factor


@serve.deployment(num_replicas=2)
class ModelServer:
    @serve.multiplexed(max_num_models_per_replica=2)
    async def get_model(self, model_id: str) -> Scaler:
        await trio.sleep(0.05)  # loading takes a while: do it once per replica
        return Scaler(int(model_id.removeprefix("x")))

    async def __call__(self, request: serve.Request) -> dict[str, Any]:
        model = await self.get_model(serve.get_multiplexed_model_id())
        x = int(request.query_params.get("x", "1"))
        return {"result": model.predict(x), "pid": os.getpid()}

    async def predict(self, x: int) -> tuple[int, int]:
        model = await self.get_model(serve.get_multiplexed_model_id())
        return model.predict(x), os.getpid()


async def main() -> None:
    async with serve.open_serve(http_port=0) as instance:
        handle = await instance.run(ModelServer.bind(), name="models", route_prefix="/predict")
        served_by: dict[str, set[int]] = {}
        for _ in range(3):
            for model_id in ("x2", "x3", "x5", "x7"):
                result, pid = await handle.predict.options(multiplexed_model_id=model_id).remote(10)
                assert result == 10 * int(model_id[1:])
                served_by.setdefault(model_id, set()).add(pid)
        assert all(len(pids) == 1 for pids in served_by.values()), served_by
        async with httpx.AsyncClient(base_url=instance.http_url or "", timeout=10) as http:
            answer = await http.get(
                "/predict", params={"x": 4}, headers={"serve_multiplexed_model_id": "x3"}
            )
        assert answer.json()["result"] == 12
    print("multiplexing: 4 models over 2 replicas, each model on one replica")


if __name__ == "__main__":
    trio.run(main)
