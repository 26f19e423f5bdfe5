"""The deployments under test.

They live in an importable module (``bench/`` is on ``sys.path`` when ``bench/run.py`` runs,
and replica processes receive the driver's ``sys.path``), so replicas import them instead of
unpickling classes by value.
"""

from __future__ import annotations

import time
from typing import Any

import trioserve as serve

#: large enough never to throttle a single replica in these workloads
MAX_ONGOING = 1000
#: the CPU time one call of :class:`CpuBound` spends
CPU_WORK_S = 0.001


@serve.deployment(max_ongoing_requests=MAX_ONGOING)
class Noop:
    """Returns its argument: the cost of a call is all framework."""

    async def __call__(self, x: Any) -> Any:
        return x

    async def echo(self, x: Any) -> Any:
        return x


@serve.deployment(max_ongoing_requests=MAX_ONGOING)
class CpuBound:
    """Spends ``CPU_WORK_S`` of CPU time (a busy loop on the thread's CPU clock, so a
    replica that the OS preempts still does all of it), then returns its argument: a
    replica that runs one call at a time, so the router's spreading is what uses the cores.
    The same ``max_ongoing_requests`` as :class:`Noop`: the limit never decides how calls
    spread."""

    async def __call__(self, x: Any) -> Any:
        end = time.thread_time() + CPU_WORK_S
        while time.thread_time() < end:
            pass
        return x


@serve.deployment(max_ongoing_requests=MAX_ONGOING)
class Serial:
    """Blocks its replica for ``CPU_WORK_S`` without using a CPU (``time.sleep`` in an
    ``async def``: the replica runs one call at a time), then returns its argument: how
    :class:`CpuBound` behaves on a machine with a core for every replica, which a 2-core
    machine cannot show otherwise."""

    async def __call__(self, x: Any) -> Any:
        time.sleep(CPU_WORK_S)  # noqa: ASYNC251 (blocking the replica is the point)
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
