"""An asyncio deployment: ``event_loop="asyncio"`` runs its async methods on an asyncio
loop, so asyncio libraries work there -- here httpx's AsyncClient on asyncio calls another
application over HTTP, and ``asyncio.gather`` waits on responses of a Trio deployment."""

from __future__ import annotations

import asyncio

import httpx
import trio

import trioserve as serve


@serve.deployment
class Square:
    """A plain (Trio) deployment, reached over HTTP and through a handle."""

    async def __call__(self, request: serve.Request) -> int:
        return int(request.query_params["x"]) ** 2

    async def compute(self, x: int) -> int:
        await trio.sleep(0.001)
        return x * x


@serve.deployment(event_loop="asyncio")
class Aggregator:
    def __init__(self, square: serve.DeploymentHandle, base_url: str) -> None:
        self.square = square
        self.base_url = base_url

    async def __call__(self, n: int) -> dict[str, list[int]]:
        assert asyncio.get_running_loop() is not None  # asyncio, not Trio, runs this
        async with httpx.AsyncClient(base_url=self.base_url, timeout=10) as http:
            over_http = await asyncio.gather(
                *[http.get("/square", params={"x": i}) for i in range(n)]
            )
        by_handle = await asyncio.gather(*[self.square.compute.remote(i) for i in range(n)])
        return {"http": [r.json() for r in over_http], "handle": list(by_handle)}


async def main() -> None:
    async with serve.open_serve(http_port=0) as instance:
        await instance.run(Square.bind(), name="square", route_prefix="/square")
        app = Aggregator.bind(Square.bind(), instance.http_url or "")
        handle = await instance.run(app, name="aggregate", route_prefix=None)
        answer = await handle.remote(5)
        assert answer == {"http": [0, 1, 4, 9, 16], "handle": [0, 1, 4, 9, 16]}
    print("asyncio deployment: httpx on asyncio and asyncio.gather over responses")


if __name__ == "__main__":
    trio.run(main)
