"""The deployments under test.

They live in an importable module (``bench/`` is on ``sys.path`` when ``bench/run.py`` runs,
and replica processes receive the driver's ``sys.path``), so replicas import them instead of
unpickling classes by value.
"""

from __future__ import annotations

from typing import Any

import trioserve as serve

#: large enough never to throttle a single replica in these workloads
MAX_ONGOING = 1000


@serve.deployment(max_ongoing_requests=MAX_ONGOING)
class Noop:
    """Returns its argument: the cost of a call is all framework."""

    async def __call__(self, x: Any) -> Any:
        return x

    async def echo(self, x: Any) -> Any:
        return x


@serve.deployment(max_ongoing_requests=MAX_ONGOING)
class Adder:
    """The second stage of the chaining workload: receives the first stage's value."""

    async def __call__(self, x: int) -> int:
        return x + 1


def _hello_api() -> Any:
    from fastapi import FastAPI
    from fastapi.responses import PlainTextResponse

    api = FastAPI()

    @serve.deployment(max_ongoing_requests=MAX_ONGOING)
    @serve.ingress(api)
    class HelloAPI:
        """The FastAPI ingress: the same route as ``bench/fastapi_server.py``, on a class."""

        @api.get("/", response_class=PlainTextResponse)
        async def hello(self) -> str:
            return "hello"

    return HelloAPI


def __getattr__(name: str) -> Any:
    """``HelloAPI``, built at first use: every replica imports this module, and importing
    FastAPI in each would cost 100 replicas 40 s of start-up and 1.4 GiB."""
    if name != "HelloAPI":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        api = _hello_api()
    except ImportError:  # fastapi missing: the ingress workload says so
        api = None
    globals()["HelloAPI"] = api
    return api


@serve.deployment(max_ongoing_requests=MAX_ONGOING)
class Hello:
    """The HTTP ingress: a short string for every request."""

    async def __call__(self, request: serve.Request) -> str:
        return "hello"
