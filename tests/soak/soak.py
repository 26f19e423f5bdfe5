"""Chaos under load: steady traffic through handles and HTTP while replicas are SIGKILLed.

One serve instance (``serve.open_serve(http_port=0)``) runs three applications of process
replicas -- ``echo`` (3 replicas), ``graph`` (an ingress calling two downstream deployments,
2 replicas each) and ``upper`` (a sync deployment, 2 replicas) -- while workers send
requests through async handles and over HTTP (``http_client.py``), and a killer SIGKILLs a
random replica process (a PID from ``await instance.status()``) every 1-3 s.

Every request must end in the right answer (checked against its input) or in a clear
``serve.ServeError`` (over HTTP: a 5xx with a body that says what went wrong). A request
that takes longer than ``REQUEST_TIMEOUT_S`` counts as a hang, an answer that does not
match as a wrong answer, anything else as unexpected: each fails the run. At the end,
after the instance has closed, no replica process seen during the run may be left.

With ``hostile=True`` a hostile mix of HTTP clients (``hostile.py``: disconnecting
streamers, idle keep-alive connections up to just under the proxy's connection bound,
uploaders of 1-byte chunks, HEAD probes) runs beside the legitimate load, against two more
applications (``stream``, ``sink``); once it has stopped, every deployment's ongoing and
queued counts must be back to 0 within ``SETTLE_S`` (no slot leaked).

The legitimate load is a closed loop (each worker sends its next request once the last is
answered: as many as the instance can take), or with ``rate`` that many requests a second
in all, arriving at random (an open loop, whose latencies a slow spell cannot hide).

    python tests/soak/soak.py --duration 30
    python tests/soak/soak.py --duration 15 --no-kills --hostile --rate 100
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import math
import os
import random
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Literal

if __package__ in (None, ""):  # run as a script: make ``tests.soak`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import attrs
import msgspec
import psutil
import trio

import actors
import actors.lowlevel
import trioserve as serve
from tests.soak.hostile import HostileMix, HostileReport, HostileRun, open_hostile_mix
from tests.soak.http_client import HTTPClientError, HTTPPool
from trioserve._control.fd_budget import connection_bounds, open_file_limit

#: a request slower than this is a hang (replica death is noticed at once; restarts take ~1 s)
REQUEST_TIMEOUT_S = 20.0
KILL_INTERVAL_S = (1.0, 3.0)
#: leaving the instance (draining, stopping every replica) must not take longer than this
CLOSE_LIMIT_S = 10.0
PID_SNAPSHOT_INTERVAL_S = 0.2
HANDLE_WORKERS = {"echo": 4, "graph": 4, "upper": 2}
HTTP_WORKERS = {"echo": 3, "graph": 3}
#: the legitimate HTTP client's connections at most (requests beyond them wait for one)
HTTP_CONNECTIONS = 16
#: failures over HTTP are answered with one of these, with a body naming the error
SERVE_ERROR_STATUSES = (500, 503)
#: once traffic and the hostile mix have stopped, every ongoing and queued count must be 0
#: within this (a replica's count reaches the proxy through /-/metrics)
SETTLE_S = 2.0
SETTLE_POLL_S = 0.05
#: connections below the proxy's bound that the idle ones leave free: for the legitimate
#: client's pool, the hostile mix's busy clients, and connections still closing
BOUND_HEADROOM = 16
#: the gauges that count requests in flight or queued (all must end at 0)
IN_FLIGHT_GAUGES = (
    "trioserve_replica_ongoing_requests",
    "trioserve_handle_ongoing_requests",
    "trioserve_handle_queued_requests",
    "trioserve_http_ongoing_requests",
    "trioserve_http_queued_requests",
)
#: each chunk of the endless stream: big enough that a client that stops reading soon
#: stalls the proxy's sends (and has unread data when it hangs up, so its socket resets)
STREAM_CHUNK = "tick\n" + "x" * (16 * 1024)


# -- the deployments (module level, so replica processes import them by reference)


#: the most simulated work one call does: the chaos soak's (so that a killed replica has
#: requests in flight), and the hostile soak's (which measures the serving path's latency,
#: not the work's)
CHAOS_WORK_S = 0.02
HOSTILE_WORK_S = 0.002


async def _work(rng: random.Random, most_s: float) -> None:
    """Up to ``most_s`` of simulated work."""
    await trio.sleep(rng.uniform(0.0, most_s))  # simulated work, not waiting for a condition


@serve.deployment(num_replicas=3, max_ongoing_requests=16)
class Echo:
    """``x -> 3x + 1``; over HTTP the body is ``{"x": x}`` and the answer ``{"x": x, "y": y}``."""

    def __init__(self, work_s: float = CHAOS_WORK_S) -> None:
        self.rng = random.Random()
        self.work_s = work_s

    async def __call__(self, x: Any) -> Any:
        await _work(self.rng, self.work_s)
        if isinstance(x, serve.Request):
            n = (await x.json())["x"]
            return {"x": n, "y": 3 * n + 1}
        return 3 * x + 1


@serve.deployment(num_replicas=2, max_ongoing_requests=16)
class Left:
    """``x -> x + 7``."""

    def __init__(self, work_s: float = CHAOS_WORK_S) -> None:
        self.rng = random.Random()
        self.work_s = work_s

    async def __call__(self, x: int) -> int:
        await _work(self.rng, self.work_s)
        return x + 7


@serve.deployment(num_replicas=2, max_ongoing_requests=16)
class Right:
    """``x -> x * x``."""

    def __init__(self, work_s: float = CHAOS_WORK_S) -> None:
        self.rng = random.Random()
        self.work_s = work_s

    async def __call__(self, x: int) -> int:
        await _work(self.rng, self.work_s)
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


@serve.deployment(num_replicas=1, max_ongoing_requests=16)
class Ticker:
    """``/stream/forever`` streams a STREAM_CHUNK every 10 ms until cancelled (the
    disconnecting streamers' target); ``/stream/once`` one line (a HEAD probe's)."""

    async def __call__(self, request: serve.Request) -> AsyncIterator[str]:
        if request.url.path.endswith("/once"):
            yield "done\n"
            return
        while True:
            yield STREAM_CHUNK
            await trio.sleep(0.01)  # the producer's pace, as a model's would be


@serve.deployment(num_replicas=1, max_ongoing_requests=16)
class Sink:
    """Reads a request body as it streams in; answers ``{"bytes": n, "sum": s}``."""

    async def __call__(self, request: serve.Request) -> dict[str, int]:
        count = total = 0
        async for chunk in request.stream():
            count += len(chunk)
            total += sum(chunk)
        return {"bytes": count, "sum": total}


def applications(*, hostile: bool = False) -> dict[str, tuple[serve.Application, str]]:
    """Name -> (application, route prefix); with ``hostile``, the hostile mix's targets
    too, and less simulated work (``HOSTILE_WORK_S``)."""
    work_s = HOSTILE_WORK_S if hostile else CHAOS_WORK_S
    apps = {
        "echo": (Echo.bind(work_s), "/echo"),
        "graph": (Ingress.bind(Left.bind(work_s), Right.bind(work_s)), "/graph"),
        "upper": (Upper.bind(), "/upper"),
    }
    if hostile:
        apps["stream"] = (Ticker.bind(), "/stream")
        apps["sink"] = (Sink.bind(), "/sink")
    return apps


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
    #: the same, of requests through handles and over HTTP
    handle_p99_latency_s: float
    http_p99_latency_s: float
    max_latency_s: float
    kills: int
    replica_pids_seen: int
    #: replica (or other child) processes still running after the instance closed
    leftover_processes: list[int]
    close_s: float
    #: the in-flight and queued gauges (IN_FLIGHT_GAUGES, by deployment) not back to 0
    #: SETTLE_S after traffic stopped (must be empty: anything here is a leaked slot)
    in_flight_after: dict[str, float]
    #: how long they took to get back to 0
    settle_s: float
    #: the proxy's connection bound, and what the hostile mix did (with ``hostile``)
    http_connection_bound: int
    hostile: HostileReport | None

    @property
    def success_rate(self) -> float:
        return self.succeeded / max(self.sent, 1)

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
        if self.in_flight_after:
            found.append(
                f"still in flight {SETTLE_S}s after traffic stopped: {self.in_flight_after}"
            )
        if self.hostile is not None:
            found += self.hostile.problems()
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
            f"  p99 latency {1000 * self.p99_latency_s:.1f} ms (handles "
            f"{1000 * self.handle_p99_latency_s:.1f} ms, HTTP "
            f"{1000 * self.http_p99_latency_s:.1f} ms), "
            f"longest request {1000 * self.max_latency_s:.1f} ms",
            f"  in flight after traffic: {self.in_flight_after or 'none'} "
            f"(settled in {self.settle_s:.2f}s)",
        ]
        if self.hostile is not None:
            lines += [
                self.hostile.summary(),
                f"    (proxy connection bound {self.http_connection_bound})",
                *(f"    e.g. {sample}" for sample in self.hostile.samples),
            ]
        lines.append(
            f"  leftover processes {self.leftover_processes}, instance closed in "
            f"{self.close_s:.2f}s"
        )
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
    #: ``handle`` / ``http`` -> latencies
    by_source: dict[str, list[float]] = attrs.field(factory=lambda: collections.defaultdict(list))
    #: (pid, create_time) of every replica process seen
    seen: set[tuple[int, float]] = attrs.field(factory=set)
    kills: int = 0
    samples: list[str] = attrs.field(factory=list)

    def record(self, outcome: Outcome, latency: float, source: str) -> None:
        kind, key, message = outcome
        self.latencies.append(latency)
        self.by_source[source].append(latency)
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


async def _timed(
    tally: _Tally,
    source: str,
    what: str,
    attempt: Callable[[], Awaitable[Outcome]],
    due: float | None,
) -> None:
    """Run one request, bounded by REQUEST_TIMEOUT_S, and record how it ended. Its latency
    counts from ``due`` (when it was to be sent: a late start counts), or from now."""
    tally.sent += 1
    started = trio.current_time() if due is None else due
    outcome: Outcome = ("hang", "", f"{what} did not end within {REQUEST_TIMEOUT_S}s")
    with trio.move_on_at(started + REQUEST_TIMEOUT_S):
        outcome = await attempt()
    tally.record(outcome, trio.current_time() - started, source)


def _expected(app: str, x: Any) -> Any:
    if app == "echo":
        return 3 * x + 1
    if app == "graph":
        return [x + 7, x * x]
    return x.upper()[::-1]


#: one request of a worker: ``send(due)`` (``due``: see ``_timed``)
Send = Callable[[float | None], Awaitable[None]]


async def _worker(send: Send, rng: random.Random, until: float, rate: float | None) -> None:
    """Send requests until ``until``: with ``rate`` None, each as soon as the last one is
    answered (closed loop: as many as the instance can take); else arriving at random
    (Poisson) at ``rate`` a second, each in a task of its own however long the others take
    (open loop: a slow answer delays no later request, and is not hidden by one)."""
    if rate is None:
        while trio.current_time() < until:
            await send(None)
        return
    async with trio.open_nursery() as requests:
        due = trio.current_time()
        while True:
            due += rng.expovariate(rate)
            if due >= until:
                return
            await trio.sleep_until(due)  # the arrival schedule, not a wait
            requests.start_soon(send, due)


async def _handle_request(
    tally: _Tally,
    handle: serve.DeploymentHandle,
    app: str,
    rng: random.Random,
    due: float | None,
) -> None:
    x: Any = rng.randrange(10**6)
    if app == "upper":
        x = f"word-{x}-{rng.choice('abcxyz')}"

    async def attempt() -> Outcome:
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

    await _timed(tally, "handle", f"handle {app}({x!r})", attempt, due)


def _serve_error_named(body: str) -> str | None:
    """The ServeError type an HTTP error body names (``... ReplicaDiedError: ...``), if any."""
    for name in serve.__all__:
        cls = getattr(serve, name)
        if isinstance(cls, type) and issubclass(cls, serve.ServeError) and name in body:
            return name
    return None


def _judge_http(app: str, x: int, status: int, answer: bytes) -> Outcome:
    if status == 200:
        try:
            value = msgspec.json.decode(answer)
        except msgspec.DecodeError:
            return "wrong", app, f"HTTP {app}({x}) gave a non-JSON body {answer[:80]!r}"
        if app == "echo":
            want: Any = {"x": x, "y": 3 * x + 1}
        else:
            want = {"x": x, "left": x + 7, "right": x * x}
        if value != want:
            return "wrong", app, f"HTTP {app}({x}) gave {value!r}, want {want!r}"
        return OK
    body = answer.decode(errors="replace").strip()
    if status in SERVE_ERROR_STATUSES and body:
        name = _serve_error_named(body)
        if name is not None:
            return "failed", f"HTTP {status} {name}", body
        if status == 503:  # back pressure / unavailable: the body is the error's message
            return "failed", "HTTP 503", body
    return "unexpected", f"HTTP {status}", f"HTTP {app}({x}) {status}: {body[:160]!r}"


async def _http_request(
    tally: _Tally, client: HTTPPool, app: str, rng: random.Random, due: float | None
) -> None:
    x = rng.randrange(10**6)

    async def attempt() -> Outcome:
        try:
            if app == "echo":
                body = msgspec.json.encode({"x": x})
                headers = [("content-type", "application/json")]
                answer = await client.request("POST", "/echo", body=body, headers=headers)
            else:
                answer = await client.request("GET", f"/graph?x={x}")
        except HTTPClientError as exc:
            kind = f"HTTP {type(exc.__cause__).__name__}"
            return "unexpected", kind, f"HTTP {app}({x}) raised {exc!r}"
        return _judge_http(app, x, *answer)

    await _timed(tally, "http", f"HTTP {app}({x})", attempt, due)


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


def _in_flight(page: str) -> dict[str, float]:
    """The IN_FLIGHT_GAUGES samples of a ``/-/metrics`` page that are not 0."""
    found = {}
    for line in page.splitlines():
        name, _, rest = line.partition("{")
        if name in IN_FLIGHT_GAUGES:
            labels, _, value = rest.rpartition("} ")
            if float(value) != 0:
                found[f"{name}{{{labels}}}"] = float(value)
    return found


async def _settle(client: HTTPPool) -> tuple[dict[str, float], float]:
    """Poll ``/-/metrics`` until nothing is in flight or queued, for up to SETTLE_S: what
    is still in flight then (empty: nothing), and how long it took."""
    started = trio.current_time()
    left: dict[str, float] = {"/-/metrics": math.nan}
    with trio.move_on_after(SETTLE_S):
        while True:
            status, page = await client.request("GET", "/-/metrics")
            left = _in_flight(page.decode()) if status == 200 else {"/-/metrics": -1.0}
            if not left:
                break
            # replicas' counts are another process's: there is no event to wait for
            await trio.sleep(SETTLE_POLL_S)
    return left, trio.current_time() - started


def hostile_mix_for(bound: int) -> HostileMix:
    """The hostile mix, with as many idle connections as leave BOUND_HEADROOM of the
    proxy's ``bound`` free beside the legitimate client's pool and the mix's busy clients."""
    mix = HostileMix()
    idle = bound - HTTP_CONNECTIONS - mix.busy_connections - BOUND_HEADROOM
    return attrs.evolve(mix, idle=max(0, idle))


@contextlib.asynccontextmanager
async def _maybe_hostile(
    instance: serve.ServeInstance, mix: HostileMix | None
) -> AsyncIterator[HostileRun]:
    """Run ``mix`` for this block, if any (see ``open_hostile_mix``); without one, the run
    yielded never gets a report."""
    if mix is None:
        yield HostileRun()
        return
    assert instance.http_port is not None
    async with open_hostile_mix(instance.http_host, instance.http_port, mix) as run:
        yield run


async def _traffic(
    tally: _Tally,
    handles: dict[str, serve.DeploymentHandle],
    client: HTTPPool,
    rng: random.Random,
    until: float,
    rate: float | None,
) -> None:
    """The legitimate load until ``until``: HANDLE_WORKERS and HTTP_WORKERS workers (see
    ``_worker``), sharing ``rate`` requests a second equally, if given."""
    sends: list[Send] = []
    for name, count in HANDLE_WORKERS.items():
        for _ in range(count):
            wrng = random.Random(rng.random())
            sends.append(functools.partial(_handle_request, tally, handles[name], name, wrng))
    for name, count in HTTP_WORKERS.items():
        for _ in range(count):
            wrng = random.Random(rng.random())
            sends.append(functools.partial(_http_request, tally, client, name, wrng))
    each = None if rate is None else rate / len(sends)
    async with trio.open_nursery() as traffic:
        for send in sends:
            traffic.start_soon(_worker, send, random.Random(rng.random()), until, each)


async def run_soak(
    duration_s: float,
    *,
    seed: int | None = None,
    kill_replicas: bool = True,
    hostile: bool = False,
    rate: float | None = None,
) -> Report:
    """``duration_s`` of legitimate traffic (closed loop, or ``rate`` requests a second:
    see ``_worker``); with ``kill_replicas`` a replica SIGKILLed every 1-3 s, with
    ``hostile`` the hostile mix beside it (started first, so that the traffic runs with
    the idle connections open)."""
    rng = random.Random(seed)
    tally = _Tally()
    children_before = _descendants()
    started = trio.current_time()
    # the proxy's own default bound, passed explicitly so that the idle connections are
    # known to stay under it
    bound = connection_bounds(open_file_limit()).http
    limits = serve.HTTPLimits(max_connections=bound)
    mix = hostile_mix_for(bound) if hostile else None
    async with serve.open_serve(http_port=0, http_limits=limits) as instance:
        handles = {}
        for name, (app, prefix) in applications(hostile=hostile).items():
            handles[name] = await instance.run(app, name=name, route_prefix=prefix)
        _remember(tally, await _replica_pids(instance))
        # started: freeze what exists, as the server process of ``trioserve start`` does
        # (a full collection of this process's heap would otherwise pause it ~50-100 ms)
        actors.lowlevel.freeze_long_lived()
        assert instance.http_port is not None
        client = HTTPPool(instance.http_host, instance.http_port, HTTP_CONNECTIONS)
        async with contextlib.aclosing(client), trio.open_nursery() as nursery:
            nursery.start_soon(_watch_pids, instance, tally)
            async with _maybe_hostile(instance, mix) as hostile_run:
                until = trio.current_time() + duration_s
                if kill_replicas:
                    killer_rng = random.Random(rng.random())
                    nursery.start_soon(_killer, instance, tally, killer_rng, until)
                await _traffic(tally, handles, client, rng, until, rate)
            in_flight_after, settle_s = await _settle(client)
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
        handle_p99_latency_s=_percentile(tally.by_source["handle"], 0.99),
        http_p99_latency_s=_percentile(tally.by_source["http"], 0.99),
        max_latency_s=max(tally.latencies, default=0.0),
        kills=tally.kills,
        replica_pids_seen=len(tally.seen),
        leftover_processes=_leftovers(tally, children_before),
        close_s=close_s,
        in_flight_after=in_flight_after,
        settle_s=settle_s,
        http_connection_bound=bound,
        hostile=hostile_run.report,
    )


def main(
    duration_s: float,
    *,
    seed: int | None = None,
    kill_replicas: bool = True,
    hostile: bool = False,
    rate: float | None = None,
) -> Report:
    """Run a soak of ``duration_s`` seconds of traffic (see :func:`run_soak`); returns its
    report."""
    run = functools.partial(
        run_soak,
        duration_s,
        seed=seed,
        kill_replicas=kill_replicas,
        hostile=hostile,
        rate=rate,
    )
    return trio.run(run)


def _cli() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of traffic")
    parser.add_argument("--seed", type=int, default=None, help="seed for the chaos schedule")
    parser.add_argument("--no-kills", action="store_true", help="kill no replica")
    parser.add_argument("--hostile", action="store_true", help="run the hostile mix beside")
    parser.add_argument(
        "--rate",
        type=float,
        default=None,
        help="legitimate requests a second (default: a closed loop)",
    )
    options = parser.parse_args()
    report = main(
        options.duration,
        seed=options.seed,
        kill_replicas=not options.no_kills,
        hostile=options.hostile,
        rate=options.rate,
    )
    print(report.summary())
    return 1 if report.problems() else 0


if __name__ == "__main__":
    # Run as a script: import this file as ``tests.soak.soak`` so that replica processes
    # import the deployments by reference (they get this process's sys.path).
    from tests.soak import soak

    sys.exit(soak._cli())
