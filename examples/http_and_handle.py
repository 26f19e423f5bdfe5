"""One deployment for HTTP and Python: an internal method both entry points call.

Seed 001 recommends this for a deployment that serves HTTP and handle traffic alike: put
the logic in an ordinary method; ``__call__`` (what HTTP requests reach, with a
``serve.Request``) only unpacks the request and calls it, and Python callers call that same
method through a handle. Both kinds of request are load balanced across the replicas the same
way; ``/-/metrics`` counts them in separate families.

Run it: ``python examples/http_and_handle.py``, or serve it from the command line with
``trioserve run examples/http_and_handle.py:app --port 8000``.
"""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import trio

import trioserve as serve


@serve.deployment(num_replicas=2)
class Deployment:
    def method1(self, arg: str) -> str:
        """The logic, shared by both entry points."""
        return f"Method1: {arg}"

    async def __call__(self, request: serve.Request) -> dict[str, Any]:
        """HTTP: read the argument from the query string, answer JSON."""
        return {"result": self.method1(request.query_params["arg"])}


app = Deployment.bind()


def http_get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=10) as response:
        status: int = response.status
        return status, response.read()


async def main() -> None:
    async with serve.open_serve(http_port=0) as instance:
        handle = await instance.run(app, route_prefix="/")
        url = f"{instance.http_url}/?arg=123"

        # Over HTTP (urllib blocks, so it runs on a worker thread).
        status, body = await trio.to_thread.run_sync(http_get, url)
        over_http = json.loads(body)["result"]
        print(f"GET {url} -> {status} {over_http!r}")
        assert status == 200

        # From Python, through a handle to the same method.
        through_handle: str = await handle.method1.remote(arg="123")
        print(f"handle.method1.remote(arg='123') -> {through_handle!r}")

        assert over_http == through_handle == "Method1: 123"

        _, page = await trio.to_thread.run_sync(http_get, f"{instance.http_url}/-/metrics")
        counts = [
            line
            for line in page.decode().splitlines()
            if line.startswith(("trioserve_handle_requests_total", "trioserve_http_requests_total"))
        ]
        print("\n".join(counts))
    print("done")


if __name__ == "__main__":
    trio.run(main)
