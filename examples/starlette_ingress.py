"""An ASGI application (Starlette) as a deployment's HTTP entry point.

``@serve.ingress(build_app)`` mounts a Starlette app on the deployment: HTTP requests under
the application's route prefix are answered by it, inside the replica (the prefix reaches
Starlette as ``root_path``). Handle calls still reach the class's own methods.

The factory form (a function with no arguments that builds the app) is used because this
script runs as ``__main__``: the class then travels to the replica processes by value, and
a Starlette app cannot be pickled; the factory builds it in each replica instead.

Run it: ``python examples/starlette_ingress.py``
"""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import trioserve as serve


def build_app() -> Starlette:
    async def hello(request: Request) -> JSONResponse:
        name = request.path_params["name"]
        return JSONResponse(
            {"greeting": f"Hello {name}!", "mounted_at": request.scope["root_path"]}
        )

    async def add(request: Request) -> JSONResponse:
        numbers = await request.json()
        return JSONResponse({"sum": sum(numbers)})

    return Starlette(routes=[Route("/hello/{name}", hello), Route("/add", add, methods=["POST"])])


@serve.deployment
@serve.ingress(build_app)
class Greeter:
    def describe(self) -> str:
        return "a Starlette app behind trioserve"


def request(url: str, payload: Any = None) -> tuple[int, Any]:
    """One HTTP request (urllib blocks: call it on a worker thread); JSON in and out."""
    data = None if payload is None else json.dumps(payload).encode()
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as response:
        status: int = response.status
        return status, json.loads(response.read())


async def main() -> None:
    async with serve.open_serve(http_port=0) as instance:
        handle = await instance.run(Greeter.bind(), name="greeter", route_prefix="/greeter")
        base = f"{instance.http_url}/greeter"

        status, hello = await trio.to_thread.run_sync(request, f"{base}/hello/Alice")
        print(f"GET /greeter/hello/Alice -> {status} {hello}")
        assert status == 200
        assert hello == {"greeting": "Hello Alice!", "mounted_at": "/greeter"}

        status, total = await trio.to_thread.run_sync(request, f"{base}/add", [1, 2, 3.5])
        print(f"POST /greeter/add [1, 2, 3.5] -> {status} {total}")
        assert (status, total) == (200, {"sum": 6.5})

        description: str = await handle.describe.remote()
        print(f"handle.describe.remote() -> {description!r}")
        assert description == "a Starlette app behind trioserve"
    print("done")


if __name__ == "__main__":
    trio.run(main)
