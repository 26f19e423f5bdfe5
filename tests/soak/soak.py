"""Chaos under load: steady traffic through handles and HTTP while replicas are SIGKILLed.

One serve instance (``serve.open_serve(http_port=0)``) runs three applications of process
replicas -- ``echo`` (3 replicas), ``graph`` (an ingress calling two downstream deployments,
2 replicas each) and ``upper`` (a sync deployment, 2 replicas) -- while workers send
requests through async handles and over HTTP (httpx), and a killer SIGKILLs a random
replica process (a PID from ``await instance.status()``) every 1-3 s.

Every request must end in the right answer (checked against its input) or in a clear
``serve.ServeError`` (over HTTP: a 5xx with a body that says what went wrong). A request
that takes longer than ``REQUEST_TIMEOUT_S`` counts as a hang, an answer that does not
match as a wrong answer, anything else as unexpected: each fails the run. At the end,
after the instance has closed, no replica process seen during the run may be left.

    python tests/soak/soak.py --duration 30
"""

from __future__ import annotations

import argparse
import collections
import functools
import math
import os
import random
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal

import attrs
import httpx
import psutil
import trio

import actors
import trioserve as serve

#: a request slower than this is a hang (replica death is noticed at once; restarts take ~1 s)
REQUEST_TIMEOUT_S = 20.0
KILL_INTERVAL_S = (1.0, 3.0)
#: leaving the instance (draining, stopping every replica) must not take longer than this
CLOSE_LIMIT_S = 10.0
PID_SNAPSHOT_INTERVAL_S = 0.2
HANDLE_WORKERS = {"echo": 4, "graph": 4, "upper": 2}
HTTP_WORKERS = {"echo": 3, "graph": 3}
#: failures over HTTP are answered with one of these, with a body naming the error
SERVE_ERROR_STATUSES = (500, 503)


# -- the deployments (module level, so replica processes import them by reference)


async def _work(rng: random.Random) -> None:
    """A few milliseconds of simulated work, so that a killed replica has requests in flight."""
    await trio.sleep(rng.uniform(0.0, 0.02))  # simulated work, not waiting for a condition


@serve.deployment(num_replicas=3, max_ongoing_requests=16)
class Echo:
    """``x -> 3x + 1``; over HTTP the body is ``{"x": x}`` and the answer ``{"x": x, "y": y}``."""

    def __init__(self) -> None:
        self.rng = random.Random()

    async def __call__(self, x: Any) -> Any:
        await _work(self.rng)
        if isinstance(x, serve.Request):
            n = (await x.json())["x"]
            return {"x": n, "y": 3 * n + 1}
        return 3 * x + 1


@serve.deployment(num_replicas=2, max_ongoing_requests=16)
class Left:
    """``x -> x + 7``."""

    def __init__(self) -> None:
        self.rng = random.Random()

    async def __call__(self, x: int) -> int:
        await _work(self.rng)
        return x + 7


@serve.deployment(num_replicas=2, max_ongoing_requests=16)
class Right:
    """``x -> x * x``."""

    def __init__(self) -> None:
        self.rng = random.Random()

    async def __call__(self, x: int) -> int:
        await _work(self.rng)
        return x * x


@serve.deployment(num_replicas=2, max_ongoing_requests=16)
class Ingress:
    """Calls ``Left`` and ``Right`` concurrently: ``x -> [x + 7, x * x]``; over HTTP
    ``GET /graph?x=N`` answers ``{"x": N, "left": ..., "right": ...}``."""

    def __init__(self, left: serve.DeploymentHandle, right: serve.DeploymentHandle) -> None:
        self.left = left
        self.right = right

    async def __call__(self, x: Any) -> Any:
        n = int(x.query_params["x"]) if isinstance(x, serve.Request) else x
        left, right = self.left.remote(n), self.right.remote(n)
        try:
            a, b = await left, await right
        finally:
            left.cancel()  # no-ops once done; otherwise the sibling is not left running
            right.cancel()
        if isinstance(x, serve.Request):
            return {"x": n, "left": a, "right": b}
        return [a, b]


@serve.deployment(num_replicas=2, max_ongoing_requests=8)
class Upper:
    """A sync method (runs on a worker thread): ``s -> s.upper() reversed``."""

    def __call__(self, s: str) -> str:
        return s.upper()[::-1]


def applications() -> dict[str, tuple[serve.Application, str]]:
    """Name -> (application, route prefix)."""
    return {
        "echo": (Echo.bind(), "/echo"),
        "graph": (Ingress.bind(Left.bind(), Right.bind()), "/graph"),
        "upper": (Upper.bind(), "/upper"),
    }


# -- the report

#: how one request ended: (kind, key to count it under, message)
Outcome = tuple[Literal["ok", "failed", "wrong", "hang", "unexpected"], str, str]
OK: Outcome = ("ok", "", "")


@attrs.frozen(kw_only=True)
class Report:
    """What a soak run saw. ``problems()`` lists what breaks the run's promises."""

    duration_s: float
    sent: int
    succeeded: int
    #: failures that are clear ServeErrors, by type (``HTTP 500 ReplicaDiedError``, ...)
    failed: dict[str, int]
    #: answers that did not match their input (must be 0)
    wrong: int
    #: requests that did not end within REQUEST_TIMEOUT_S (must be 0)
    hangs: int
    #: failures that were not a clear ServeError, by kind (must be empty)
    unexpected: dict[str, int]
    #: the first few wrong answers and unexpected failures, verbatim
    samples: list[str]
    p99_latency_s: float
    max_latency_s: float
    kills: int
    replica_pids_seen: int
    #: replica (or other child) processes still running after the instance closed
    leftover_processes: list[int]
    close_s: float

    @property
    def failed_total(self) -> int:
        return sum(self.failed.values())

    def problems(self) -> list[str]:
        found = []
        if self.wrong:
            found.append(f"{self.wrong} wrong answers")
        if self.hangs:
            found.append(f"{self.hangs} requests hung past {REQUEST_TIMEOUT_S}s")
        if self.unexpected:
            found.append(f"unexpected failures: {self.unexpected}")
        if self.leftover_processes:
            found.append(f"processes left over: {self.leftover_processes}")
        if self.close_s > CLOSE_LIMIT_S:
            found.append(f"the instance took {self.close_s:.1f}s to close")
        if self.sent != self.succeeded + self.failed_total + self.wrong + self.hangs + sum(
            self.unexpected.values()
        ):
            found.append("requests unaccounted for")
        return found

    def summary(self) -> str:
        lines = [
            f"soak: {self.duration_s:.0f}s, {self.kills} replicas killed, "
            f"{self.replica_pids_seen} replica processes seen",
            f"  sent {self.sent}, succeeded {self.succeeded} "
            f"({100 * self.succeeded / max(self.sent, 1):.2f}%), failed {self.failed_total}",
        ]
        for name, count in sorted(self.failed.items()):
            lines.append(f"    {name}: {count}")
        lines += [
            f"  wrong answers {self.wrong}, hangs {self.hangs}, unexpected {self.unexpected}",
            *(f"    e.g. {sample}" for sample in self.samples),
            f"  p99 latency {1000 * self.p99_latency_s:.1f} ms, "
            f"longest request {1000 * self.max_latency_s:.1f} ms",
            f"  leftover processes {self.leftover_processes}, instance closed in "
            f"{self.close_s:.2f}s",
        ]
        problems = self.problems()
        lines.append("  OK" if not problems else f"  PROBLEMS: {problems}")
        return "\n".join(lines)


@attrs.define
class _Tally:
    sent: int = 0
    succeeded: int = 0
    wrong: int = 0
    hangs: int = 0
    failed: collections.Counter[str] = attrs.field(factory=collections.Counter)
    unexpected: collections.Counter[str] = attrs.field(factory=collections.Counter)
    latencies: list[float] = attrs.field(factory=list)
    #: (pid, create_time) of every replica process seen
    seen: set[tuple[int, float]] = attrs.field(factory=set)
    kills: int = 0
    samples: list[str] = attrs.field(factory=list)

    def record(self, outcome: Outcome, latency: float) -> None:
        kind, key, message = outcome
        self.latencies.append(latency)
        if kind == "ok":
            self.succeeded += 1
        elif kind == "failed":
            self.failed[key] += 1
        else:
            if kind == "wrong":
                self.wrong += 1
            elif kind == "hang":
                self.hangs += 1
            else:
                self.unexpected[key] += 1
            if len(self.samples) < 10:
                self.samples.append(f"{kind}: {message}"[:300])


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


# -- traffic


async def _timed(tally: _Tally, what: str, attempt: Callable[[], Awaitable[Outcome]]) -> None:
    """Run one request, bounded by REQUEST_TIMEOUT_S, and record how it ended."""
    tally.sent += 1
    started = trio.current_time()
    outcome: Outcome = ("hang", "", f"{what} did not end within {REQUEST_TIMEOUT_S}s")
    with trio.move_on_after(REQUEST_TIMEOUT_S):
        outcome = await attempt()
    tally.record(outcome, trio.current_time() - started)


def _expected(app: str, x: Any) -> Any:
    if app == "echo":
        return 3 * x + 1
    if app == "graph":
        return [x + 7, x * x]
    return x.upper()[::-1]


async def _handle_worker(
    tally: _Tally, handle: serve.DeploymentHandle, app: str, rng: random.Random, until: float
) -> None:
    while trio.current_time() < until:
        x: Any = rng.randrange(10**6)
        if app == "upper":
            x = f"word-{x}-{rng.choice('abcxyz')}"

        async def attempt(x: Any = x) -> Outcome:
            try:
                value = await handle.remote(x)
            except serve.ServeError as exc:
                return "failed", f"handle {type(exc).__name__}", str(exc)
            except Exception as exc:
                kind = f"handle {type(exc).__name__}"
                if isinstance(exc, actors.RemoteError):  # say which remote type it stands for
                    kind += f"({exc.type_name})"
                return "unexpected", kind, f"{app}({x!r}) raised {exc!r}"
            want = _expected(app, x)
            if value != want:
                return "wrong", app, f"{app}({x!r}) gave {value!r}, want {want!r}"
            return OK

        await _timed(tally, f"handle {app}({x!r})", attempt)


def _serve_error_named(body: str) -> str | None:
    """The ServeError type an HTTP error body names (``... ReplicaDiedError: ...``), if any."""
    for name in serve.__all__:
        cls = getattr(serve, name)
        if isinstance(cls, type) and issubclass(cls, serve.ServeError) and name in body:
            return name
    return None


def _judge_http(app: str, x: int, response: httpx.Response) -> Outcome:
    status = response.status_code
    if status == 200:
        try:
            value = response.json()
        except ValueError:
            return "wrong", app, f"HTTP {app}({x}) gave a non-JSON body {response.text[:80]!r}"
        if app == "echo":
            want: Any = {"x": x, "y": 3 * x + 1}
        else:
            want = {"x": x, "left": x + 7, "right": x * x}
        if value != want:
            return "wrong", app, f"HTTP {app}({x}) gave {value!r}, want {want!r}"
        return OK
    body = response.text.strip()
    if status in SERVE_ERROR_STATUSES and body:
        name = _serve_error_named(body)
        if name is not None:
            return "failed", f"HTTP {status} {name}", body
        if status == 503:  # back pressure / unavailable: the body is the error's message
            return "failed", "HTTP 503", body
    return "unexpected", f"HTTP {status}", f"HTTP {app}({x}) {status}: {body[:160]!r}"


async def _http_worker(
    tally: _Tally, client: httpx.AsyncClient, app: str, rng: random.Random, until: float
) -> None:
    while trio.current_time() < until:
        x = rng.randrange(10**6)

        async def attempt(x: int = x) -> Outcome:
            try:
                if app == "echo":
                    response = await client.post("/echo", json={"x": x})
                else:
                    response = await client.get("/graph", params={"x": x})
            except httpx.TimeoutException as exc:
                return "hang", "", f"HTTP {app}({x}) timed out in httpx: {exc!r}"
            except httpx.HTTPError as exc:
                kind = f"HTTP {type(exc).__name__}"
                return "unexpected", kind, f"HTTP {app}({x}) raised {exc!r}"
            return _judge_http(app, x, response)

        await _timed(tally, f"HTTP {app}({x})", attempt)


# -- chaos


async def _replica_pids(instance: serve.ServeInstance) -> list[int]:
    status = await instance.status()
    return [
        replica.pid
        for app in status.applications.values()
        for deployment in app.deployments.values()
        for replica in deployment.replicas
        if replica.pid is not None and replica.state == "RUNNING"
    ]


def _remember(tally: _Tally, pids: list[int]) -> None:
    for pid in pids:
        try:
            tally.seen.add((pid, psutil.Process(pid).create_time()))
        except psutil.NoSuchProcess:
            continue


async def _watch_pids(instance: serve.ServeInstance, tally: _Tally) -> None:
    """Snapshot every replica PID, so that the end can check each one is gone."""
    while True:
        _remember(tally, await _replica_pids(instance))
        await trio.sleep(PID_SNAPSHOT_INTERVAL_S)  # a sampling period, not a wait


def _descendants() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


async def _killer(
    instance: serve.ServeInstance, tally: _Tally, rng: random.Random, until: float
) -> None:
    while True:
        await trio.sleep(rng.uniform(*KILL_INTERVAL_S))  # the chaos schedule, not a wait
        if trio.current_time() >= until:
            return
        pids = await _replica_pids(instance)
        _remember(tally, pids)
        # only replica PIDs the instance reports, and only processes this one started
        victims = sorted(set(pids) & _descendants())
        if victims:
            os.kill(rng.choice(victims), signal.SIGKILL)
            tally.kills += 1


# -- the run


def _leftovers(tally: _Tally, children_before: set[int]) -> list[int]:
    left = set()
    for pid, created in tally.seen:
        try:
            proc = psutil.Process(pid)
            if proc.create_time() == created and proc.status() != psutil.STATUS_ZOMBIE:
                left.add(pid)
        except psutil.NoSuchProcess:
            continue
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.pid not in children_before and proc.status() != psutil.STATUS_ZOMBIE:
                left.add(proc.pid)
        except psutil.NoSuchProcess:
            continue
    return sorted(left)


async def run_soak(duration_s: float, *, seed: int | None = None) -> Report:
    rng = random.Random(seed)
    tally = _Tally()
    children_before = _descendants()
    started = trio.current_time()
    async with serve.open_serve(http_port=0) as instance:
        handles = {}
        for name, (app, prefix) in applications().items():
            handles[name] = await instance.run(app, name=name, route_prefix=prefix)
        _remember(tally, await _replica_pids(instance))
        until = trio.current_time() + duration_s
        async with (
            httpx.AsyncClient(
                base_url=instance.http_url or "",
                timeout=REQUEST_TIMEOUT_S + 5,
                limits=httpx.Limits(max_connections=sum(HTTP_WORKERS.values())),
            ) as client,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(_watch_pids, instance, tally)
            nursery.start_soon(_killer, instance, tally, random.Random(rng.random()), until)
            async with trio.open_nursery() as traffic:
                for name, count in HANDLE_WORKERS.items():
                    for _ in range(count):
                        args = (tally, handles[name], name, random.Random(rng.random()), until)
                        traffic.start_soon(_handle_worker, *args)
                for name, count in HTTP_WORKERS.items():
                    for _ in range(count):
                        args = (tally, client, name, random.Random(rng.random()), until)
                        traffic.start_soon(_http_worker, *args)
            _remember(tally, await _replica_pids(instance))
            nursery.cancel_scope.cancel()
        closing = trio.current_time()
    close_s = trio.current_time() - closing
    return Report(
        duration_s=trio.current_time() - started,
        sent=tally.sent,
        succeeded=tally.succeeded,
        failed=dict(tally.failed),
        wrong=tally.wrong,
        hangs=tally.hangs,
        unexpected=dict(tally.unexpected),
        samples=list(tally.samples),
        p99_latency_s=_percentile(tally.latencies, 0.99),
        max_latency_s=max(tally.latencies, default=0.0),
        kills=tally.kills,
        replica_pids_seen=len(tally.seen),
        leftover_processes=_leftovers(tally, children_before),
        close_s=close_s,
    )


def main(duration_s: float, *, seed: int | None = None) -> Report:
    """Run a soak of ``duration_s`` seconds of traffic and chaos; returns its report."""
    return trio.run(functools.partial(run_soak, duration_s, seed=seed))


def _cli() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of traffic")
    parser.add_argument("--seed", type=int, default=None, help="seed for the chaos schedule")
    options = parser.parse_args()
    report = main(options.duration, seed=options.seed)
    print(report.summary())
    return 1 if report.problems() else 0


if __name__ == "__main__":
    # Run as a script: import this file as ``tests.soak.soak`` so that replica processes
    # import the deployments by reference (they get this process's sys.path).
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.soak import soak

    sys.exit(soak._cli())
