"""The workloads. Each runs in its own worker process (``bench/run.py --worker NAME``) and
reports figures as JSON lines through a :class:`Reporter`, one line per figure as soon as
it is measured, so a workload that hangs later still keeps what it measured.

Every request workload uses :func:`bench_measure.closed_loop` (several windows per figure);
each case is bounded by a timeout, and a case that fails or times out is reported as an error
while the workload goes on with its next case. Each trioserve figure names the reference
figures it is compared with (``references``: workload and case); the references are
workloads too (``raw``, ``fastapi``, ``ray``), skipped with a note when their dependency is
missing.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import bench_apps
import bench_stats
import msgspec
import trio
from bench_apps import CPU_WORK_S, Adder, CpuBound, Hello, Noop, Serial
from bench_measure import LoadResult, closed_loop, closed_loop_sync

import trioserve as serve

HERE = Path(__file__).resolve().parent
RAW_SERVER = HERE / "raw_echo_server.py"
FASTAPI_SERVER = HERE / "fastapi_server.py"
RAY_REFERENCE = HERE / "ray_reference.py"
PAYLOAD_100K = 100 * 1024
MIB = 1024 * 1024
CHILD_EXIT_WAIT_S = 3.0
#: ``TRIOSERVE_BENCH_HANG=NAME`` makes workload NAME hang (to check timeouts and cleanup)
HANG_ENV = "TRIOSERVE_BENCH_HANG"


#: a figure's references: (workload, case) pairs, in the order the table shows them
Refs = tuple[tuple[str, str], ...]


@attrs.frozen
class Settings:
    warmup_s: float
    #: every request figure is measured in ``windows`` consecutive windows of ``window_s``
    window_s: float
    windows: int
    #: wrk takes whole seconds: each wrk window is a wrk run of this many seconds
    wrk_window_s: int
    many_replicas: int
    lifecycle_reps: int
    case_slack_s: float
    ray_venv: str | None = None

    @classmethod
    def make(
        cls,
        quick: bool,
        windows: int | None = None,
        window_s: float | None = None,
        ray_venv: str | None = None,
    ) -> Settings:
        quick_ = cls(0.1, 0.5, 3, 1, 20, 1, 20.0)
        base = quick_ if quick else cls(0.5, 2.0, 5, 2, 100, 3, 60.0)
        if windows is not None:
            base = attrs.evolve(base, windows=max(1, windows))
        if window_s is not None:
            base = attrs.evolve(base, window_s=window_s, wrk_window_s=max(1, round(window_s)))
        return attrs.evolve(base, ray_venv=ray_venv)

    @property
    def measured_s(self) -> float:
        """The length of one figure's measurement (warmup plus all windows)."""
        return self.warmup_s + self.windows * self.window_s

    @property
    def case_timeout_s(self) -> float:
        return self.measured_s + self.case_slack_s

    def argv(self) -> list[str]:
        """The command-line options that rebuild these settings in a worker."""
        out = ["--windows", str(self.windows), "--window-s", str(self.window_s)]
        return out + (["--ray-venv", self.ray_venv] if self.ray_venv else [])


class Reporter:
    """Writes one JSON object per line to the result file of this worker."""

    def __init__(self, path: str, workload: str, settings: Settings) -> None:
        self.path = path
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
        self.workload = workload
        self.settings = settings

    def close(self) -> None:
        self._file.close()

    def flush(self) -> None:
        self._file.flush()

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps({"workload": self.workload, **record}) + "\n")
        self._file.flush()

    def requests(self, case: str, result: LoadResult, refs: Refs) -> None:
        """A request figure; ``refs`` names the reference figures it is compared with."""
        self.figure(case, result.figure(), refs)

    def figure(self, case: str, figure: dict[str, Any], refs: Refs) -> None:
        references = [{"workload": w, "case": c} for w, c in refs]
        self.write({"type": "figure", "case": case, "references": references, **figure})

    def scalar(self, case: str, value: float, unit: str, **extra: Any) -> None:
        self.write(
            {
                "type": "figure",
                "kind": "scalar",
                "case": case,
                "value": {"value": round(value, 4), "unit": unit},
                **extra,
            }
        )

    def error(self, case: str, error: str) -> None:
        self.write({"type": "error", "case": case, "error": error})

    def skipped(self, case: str, reason: str) -> None:
        self.write({"type": "skipped", "case": case, "reason": reason})

    def note(self, text: str) -> None:
        self.write({"type": "note", "text": text})

    async def load(
        self,
        case: str,
        call: Callable[[int], Awaitable[object]],
        concurrency: int,
        *,
        refs: Refs,
    ) -> LoadResult | None:
        """Measure one case (bounded by the case timeout); report it or its failure."""
        s = self.settings
        try:
            with trio.fail_after(s.case_timeout_s):
                result = await closed_loop(
                    call,
                    concurrency,
                    warmup_s=s.warmup_s,
                    window_s=s.window_s,
                    windows=s.windows,
                )
        except trio.TooSlowError:
            self.error(case, f"timed out after {s.case_timeout_s:.0f}s")
            return None
        except Exception as exc:
            self.error(case, describe(exc))
            return None
        self.requests(case, result, refs)
        return result


def describe(exc: BaseException) -> str:
    """``module.Type: message`` of the exception, or of each leaf of an exception group."""
    if isinstance(exc, BaseExceptionGroup):
        text = "; ".join(describe(e) for e in exc.exceptions)
    else:
        text = f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}"
    return text if len(text) < 600 else text[:600] + "..."


def check(value: object, expected: object, what: str) -> None:
    if value != expected:
        raise AssertionError(f"{what}: expected {expected!r:.80}, got {value!r:.80}")


# -- process figures


def rss_mib(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / MIB


def total_rss_mib() -> tuple[float, int]:
    """RSS of this process plus all its descendants, and how many descendants there are."""
    import psutil

    me = psutil.Process()
    total = me.memory_info().rss
    children = me.children(recursive=True)
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += child.memory_info().rss
    return total / MIB, len(children)


def replica_pids(status: serve.ServeStatus, app: str) -> list[int]:
    return [
        r.pid
        for d in status.applications[app].deployments.values()
        for r in d.replicas
        if r.pid is not None
    ]


# -- references


def raw_and_ray(case: str, ray_case: str | None = None) -> Refs:
    """Raw websocket echo at the same case, then Ray Serve (at ``ray_case``, when given)."""
    return (("raw", case),) + ((("ray", ray_case),) if ray_case else ())


def http_refs(case: str) -> Refs:
    return (("fastapi", case), ("ray", case))


# -- raw baseline (the naive one-message-per-request websocket echo)


class Echo(msgspec.Struct, array_like=True):
    id: int
    value: Any


class RawClient:
    """Many concurrent requests over one websocket: one message per request, replies matched
    by id by one reader task."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self._next = 0
        self._waiting: dict[int, trio.Event] = {}
        self._values: dict[int, Any] = {}
        self._encode = msgspec.msgpack.Encoder().encode
        self._decode = msgspec.msgpack.Decoder(Echo).decode

    async def reader(self) -> None:
        from trio_websocket import ConnectionClosed

        get = self.ws.get_message
        decode = self._decode
        try:
            while True:
                reply = decode(await get())
                self._values[reply.id] = reply.value
                self._waiting.pop(reply.id).set()
        except ConnectionClosed:
            pass

    async def call(self, value: Any) -> Any:
        request_id = self._next
        self._next += 1
        done = self._waiting[request_id] = trio.Event()
        await self.ws.send_message(self._encode(Echo(request_id, value)))
        await done.wait()
        return self._values.pop(request_id)


async def _read_port(stream: trio.abc.ReceiveStream) -> int:
    data = b""
    with trio.fail_after(30):
        while b"\n" not in data:
            chunk = await stream.receive_some(1024)
            if not chunk:
                raise RuntimeError(f"raw echo server exited before listening: {data!r}")
            data += chunk
    line = data.split(b"\n", 1)[0].decode()
    match = re.fullmatch(r"PORT (\d+)", line.strip())
    if match is None:
        raise RuntimeError(f"unexpected line from the raw echo server: {line!r}")
    return int(match.group(1))


async def workload_raw(rep: Reporter) -> None:
    from trio_websocket import open_websocket_url

    proc = await trio.lowlevel.open_process(
        [sys.executable, str(RAW_SERVER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        port = await _read_port(proc.stdout)
        rep.note(f"raw echo server pid {proc.pid} on 127.0.0.1:{port}")
        async with (
            open_websocket_url(f"ws://127.0.0.1:{port}/", max_message_size=16 * MIB) as ws,
            trio.open_nursery() as nursery,
        ):
            client = RawClient(ws)
            nursery.start_soon(client.reader)
            check(await client.call(7), 7, "raw echo")
            for c in (1, 16, 32, 64):
                await rep.load(f"c{c}", client.call, c, refs=())
            payload = os.urandom(PAYLOAD_100K)
            check(await client.call(payload), payload, "raw echo of 100 KB")
            await rep.load("100KB c16", lambda _i: client.call(payload), 16, refs=())
            nursery.cancel_scope.cancel()
    finally:
        if proc.stdin is not None:
            with trio.move_on_after(1):
                await proc.stdin.aclose()
        if proc.returncode is None:
            proc.terminate()  # SIGTERM to the echo server's PID
            with trio.move_on_after(5):
                await proc.wait()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


# -- handles


async def _handle_cases(rep: Reporter, deployment: serve.Deployment, ray: bool) -> None:
    async with serve.open_serve(http_port=None) as instance:
        handle = await instance.run(deployment.bind(), name="noop", route_prefix=None)
        check(await handle.remote(7), 7, "noop call")
        for c in (1, 16, 64):
            refs = raw_and_ray(f"c{c}", f"c{c}" if ray else None)
            await rep.load(f"c{c}", handle.remote, c, refs=refs)
        status = await instance.status()
        rep.note(f"replica pids: {replica_pids(status, 'noop') or 'none (inline)'}")


async def workload_handle(rep: Reporter) -> None:
    await _handle_cases(rep, Noop, ray=True)


async def workload_inline(rep: Reporter) -> None:
    await _handle_cases(rep, Noop.options(placement="inline"), ray=False)


async def workload_method(rep: Reporter) -> None:
    async with serve.open_serve(http_port=None) as instance:
        handle = await instance.run(Noop.bind(), name="noop", route_prefix=None)
        check(await handle.echo.remote(7), 7, "echo method")
        await rep.load("c16", lambda i: handle.echo.remote(i), 16, refs=raw_and_ray("c16"))


async def workload_chain(rep: Reporter) -> None:
    async with serve.open_serve(http_port=None) as instance:
        model = await instance.run(Noop.bind(), name="noop", route_prefix=None)
        adder = await instance.run(Adder.bind(), name="adder", route_prefix=None)
        check(await adder.remote(model.remote(7)), 8, "chained call")
        await rep.load(
            "c16",
            lambda i: adder.remote(model.remote(i)),
            16,
            refs=raw_and_ray("c16", "chain c16"),
        )


async def workload_bytes(rep: Reporter) -> None:
    payload = os.urandom(PAYLOAD_100K)
    async with serve.open_serve(http_port=None) as instance:
        handle = await instance.run(Noop.bind(), name="noop", route_prefix=None)
        check(await handle.remote(payload), payload, "100 KB echo")
        await rep.load(
            "100KB c16",
            lambda _i: handle.remote(payload),
            16,
            refs=raw_and_ray("100KB c16", "100KB c16"),
        )


def workload_sync(rep: Reporter) -> None:
    """Plain code on the main thread: ``serve.start`` / ``serve.run`` / ``.result()``."""
    s = rep.settings
    timeout = s.case_timeout_s
    serve.start(http_port=None)
    try:
        handle = serve.run(Noop.bind(), name="noop", route_prefix=None)
        check(handle.remote(7).result(timeout_s=timeout), 7, "sync call")
        try:
            result = closed_loop_sync(
                lambda i: handle.remote(i).result(timeout_s=timeout),
                warmup_s=s.warmup_s,
                window_s=s.window_s,
                windows=s.windows,
            )
        except Exception as exc:
            rep.error("c1", describe(exc))
        else:
            rep.requests("c1", result, refs=raw_and_ray("c1"))
    finally:
        serve.shutdown()


# -- HTTP

_WRK_LATENCY = re.compile(r"^\s*(50|75|90|99)%\s+([\d.]+)(us|ms|s|m)\s*$", re.M)
_UNIT_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def parse_wrk(text: str) -> dict[str, Any]:
    """Requests/sec, the latency percentiles (ms), request and error counts from wrk."""
    out: dict[str, Any] = {}
    match = re.search(r"Requests/sec:\s*([\d.]+)", text)
    if match is None:
        raise ValueError(f"no Requests/sec in wrk output:\n{text}")
    out["throughput"] = float(match.group(1))
    for pct, value, unit in _WRK_LATENCY.findall(text):
        out[f"p{pct}"] = float(value) * _UNIT_MS[unit]
    match = re.search(r"(\d+) requests in ([\d.]+)(\w+)", text)
    if match:
        out["requests"] = int(match.group(1))
    match = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", text)
    out["non_2xx"] = int(match.group(1)) if match else 0
    match = re.search(r"Socket errors:(.*)", text)
    out["socket_errors"] = match.group(1).strip() if match else ""
    return out


def _wrk_errors(parsed: dict[str, Any]) -> bool:
    counts = re.findall(r"(\d+)", parsed["socket_errors"] or "")
    return bool(parsed["non_2xx"]) or any(n != "0" for n in counts)


async def _run_wrk(rep: Reporter, url: str, refs: Refs) -> None:
    """``wrk -c32`` in ``windows`` runs of ``wrk_window_s`` each: one window per run."""
    s = rep.settings
    case = "wrk c32"
    wrk = shutil.which("wrk")
    if wrk is None:
        rep.skipped(case, "wrk is not installed (on Debian: apt-get install -y wrk)")
        return
    argv = [wrk, "-t2", "-c32", f"-d{s.wrk_window_s}s", "--latency", url]
    windows: list[dict[str, Any]] = []
    errors: list[str] = []
    try:
        for _ in range(s.windows):
            with trio.fail_after(s.wrk_window_s + s.case_slack_s):
                done = await trio.run_process(
                    argv, capture_stdout=True, capture_stderr=True, check=False
                )
            text = done.stdout.decode(errors="replace")
            if done.returncode != 0:
                raise RuntimeError(
                    f"wrk exited with {done.returncode}: {done.stderr.decode()[:300]}"
                )
            parsed = parse_wrk(text)
            windows.append(
                {
                    "throughput": parsed["throughput"],
                    "p50": parsed.get("p50"),
                    "p99": parsed.get("p99"),
                    "requests": parsed.get("requests"),
                }
            )
            if _wrk_errors(parsed):
                errors.append(f"non-2xx={parsed['non_2xx']}, {parsed['socket_errors']}")
    except trio.TooSlowError:
        rep.error(case, "wrk timed out")
        return
    except Exception as exc:
        rep.error(case, describe(exc))
        return
    figure = bench_stats.summarize(
        windows,
        32,
        float(s.wrk_window_s),
        tool=" ".join(["wrk", *argv[1:-1]]),
        errors=errors,
    )
    rep.figure(case, figure, refs)
    if errors:
        rep.note(f"wrk saw errors: {'; '.join(errors)}")


async def _http_cases(rep: Reporter, url: str, refs: Callable[[str], Refs]) -> None:
    """The HTTP cases against ``url`` (GET, expects ``hello``): httpx c1, c32, then wrk c32."""
    import httpx

    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(limits=limits, timeout=30.0) as client:
        first = await client.get(url)
        check((first.status_code, first.text), (200, "hello"), f"HTTP GET {url}")

        async def get(_i: int) -> None:
            response = await client.get(url)
            if response.status_code != 200:
                raise RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")

        for c in (1, 32):
            await rep.load(f"httpx c{c}", get, c, refs=refs(f"httpx c{c}"))
    await _run_wrk(rep, url, refs("wrk c32"))


async def workload_http(rep: Reporter) -> None:
    async with serve.open_serve(http_port=0) as instance:
        await instance.run(Hello.bind(), name="http", route_prefix="/")
        assert instance.http_url is not None
        await _http_cases(rep, instance.http_url + "/", http_refs)


async def workload_ingress(rep: Reporter) -> None:
    """The HTTP cases through a FastAPI ``@serve.ingress`` class (the same route as the
    uvicorn reference), beside the plain ``__call__`` of ``http`` in the same run."""
    hello_api = bench_apps.HelloAPI  # built here, not in every replica that imports bench_apps
    if hello_api is None:
        rep.note("fastapi is not installed: the ingress workload is skipped")
        return
    async with serve.open_serve(http_port=0) as instance:
        await instance.run(hello_api.bind(), name="ingress", route_prefix="/")
        assert instance.http_url is not None
        await _http_cases(rep, instance.http_url + "/", http_refs)


async def _read_line(stream: trio.abc.ReceiveStream, prefix: str, timeout: float) -> str:
    """The first line of ``stream`` that starts with ``prefix`` (other lines are skipped)."""
    data = b""
    with trio.fail_after(timeout):
        while True:
            while b"\n" in data:
                line, data = data.split(b"\n", 1)
                text = line.decode(errors="replace").strip()
                if text.startswith(prefix) or text == "FAILED":
                    return text
            chunk = await stream.receive_some(4096)
            if not chunk:
                raise RuntimeError(f"the child process exited before printing {prefix!r}")
            data += chunk


async def _stop_child(proc: trio.Process) -> None:
    """Close the child's stdin (it exits on EOF), then SIGTERM, then SIGKILL, by PID."""
    if proc.stdin is not None:
        with trio.move_on_after(1):
            await proc.stdin.aclose()
    with trio.move_on_after(30):
        await proc.wait()
    if proc.returncode is None:
        proc.terminate()
        with trio.move_on_after(5):
            await proc.wait()
    if proc.returncode is None:
        proc.kill()
        await proc.wait()


def _missing_modules(*names: str) -> list[str]:
    import importlib.util

    return [n for n in names if importlib.util.find_spec(n) is None]


async def workload_fastapi(rep: Reporter) -> None:
    """Reference: FastAPI "hello" on uvicorn (one worker), the HTTP cases of ``http``."""
    missing = _missing_modules("fastapi", "uvicorn")
    if missing:
        reason = f"{', '.join(missing)} not installed (pip install 'uvicorn[standard]' fastapi)"
        rep.skipped("FastAPI reference", reason)
        return
    proc = await trio.lowlevel.open_process(
        [sys.executable, str(FASTAPI_SERVER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        line = await _read_line(proc.stdout, "PORT ", 30)
        match = re.fullmatch(r"PORT (\d+) LOOP (\S+) HTTP (\S+)", line)
        if match is None:
            raise RuntimeError(f"unexpected line from the FastAPI server: {line!r}")
        port, loop, http = match.groups()
        rep.note(
            f"FastAPI server pid {proc.pid} on 127.0.0.1:{port}: uvicorn, 1 worker, "
            f"access log off, loop {loop}, http {http}"
        )
        await _http_cases(rep, f"http://127.0.0.1:{port}/", lambda _case: ())
    finally:
        await _stop_child(proc)


def _ray_python(venv: str) -> Path:
    return Path(venv) / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


async def workload_ray(rep: Reporter) -> None:
    """Reference: Ray Serve from the virtualenv ``--ray-venv`` (``ray_reference.py``)."""
    s = rep.settings
    if not s.ray_venv:
        rep.skipped("Ray Serve reference", "no --ray-venv PATH given (a venv with ray[serve])")
        return
    python = _ray_python(s.ray_venv)
    if not python.exists():
        rep.skipped("Ray Serve reference", f"no Python at {python} (--ray-venv)")
        return
    probe = await trio.run_process(
        [str(python), "-c", "import ray, ray.serve; print(ray.__version__)"],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    if probe.returncode != 0:
        tail = probe.stderr.decode(errors="replace").strip().splitlines()[-1:]
        rep.skipped("Ray Serve reference", f"{python} cannot import ray.serve: {tail}")
        return
    argv = [str(python), str(RAY_REFERENCE), "--result-file", rep.path]
    argv += ["--warmup-s", str(s.warmup_s), "--window-s", str(s.window_s)]
    argv += ["--windows", str(s.windows), "--case-timeout-s", str(s.case_timeout_s)]
    rep.flush()
    proc = await trio.lowlevel.open_process(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        # Ray's start-up plus five cases, each bounded inside the child
        line = await _read_line(proc.stdout, "URL ", 180 + 5 * s.case_timeout_s)
        if line == "FAILED":
            return  # the child wrote its error to the result file
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_drain, proc.stdout)  # so Ray's output never blocks it
            await _http_cases(rep, line.split(" ", 1)[1], lambda _case: ())
            nursery.cancel_scope.cancel()
    finally:
        await _stop_child(proc)


async def _drain(stream: trio.abc.ReceiveStream) -> None:
    while await stream.receive_some(65536):
        pass


# -- lifecycle


async def workload_lifecycle(rep: Reporter) -> None:
    import psutil

    s = rep.settings
    colds: list[float] = []
    shutdowns: list[float] = []
    for rep_index in range(s.lifecycle_reps):
        t0 = time.perf_counter()
        async with serve.open_serve(http_port=None) as instance:
            handle = await instance.run(Noop.bind(), name="noop", route_prefix=None)
            check(await handle.remote(1), 1, "first response")
            cold = time.perf_counter() - t0
            pids = replica_pids(await instance.status(), "noop")
            if rep_index == 0:
                rep.scalar("cold start, first in process", cold, "s")
                # memory after some traffic, so buffers and caches are in use
                await closed_loop(handle.remote, 16, warmup_s=0.0, window_s=s.warmup_s + 0.5)
                if len(pids) != 1:
                    rep.error("replica RSS", f"expected one replica PID, status gave {pids}")
                else:
                    rep.scalar("replica RSS", rss_mib(pids[0]), "MiB", pid=pids[0])
                total, n_children = total_rss_mib()
                rep.scalar("driver RSS", rss_mib(os.getpid()), "MiB")
                rep.scalar(
                    "total RSS (driver + children)", total, "MiB", child_processes=n_children
                )
            t1 = time.perf_counter()
        shutdown = time.perf_counter() - t1
        colds.append(cold)
        shutdowns.append(shutdown)
        left = [pid for pid in pids if psutil.pid_exists(pid)]
        if left:
            rep.error("shutdown", f"replica processes alive after open_serve exited: {left}")
    if len(colds) > 1:
        rep.scalar(
            f"cold start, median of {len(colds)}", statistics.median(colds), "s", samples=colds
        )
    rep.scalar(
        f"shutdown (leaving open_serve), median of {len(shutdowns)}",
        statistics.median(shutdowns),
        "s",
        samples=shutdowns,
    )


# -- many replicas

#: the replica counts of the replicas workload's smaller cases (the largest is
#: ``Settings.many_replicas``)
FEW_REPLICAS = (1, 4)
#: the suffix of the cases measured with the router's packing switched off
PACKING_OFF = ", packing off"


@attrs.define
class _PinnedPacking:
    """The ablation of packing, in the place of the router's ``PackingThreshold``: the
    threshold stays at 1 (every request is spread by power of two choices, the router's
    policy before packing). Not a subclass, so that ``bench/compare.py`` can measure
    revisions from before packing with these scripts."""

    value: int = 1
    epoch: int = 0
    adopted: int = 1

    def observe(self, epoch: int, latency_s: float, load: int) -> None:
        return


async def workload_replicas(rep: Reporter) -> None:
    """c64 over 1, 4 and ``many_replicas`` process replicas, of the no-op deployment and of
    one that spends 1 ms of CPU per call; at c4 over 4 replicas, the CPU-bound one and one
    that blocks its replica for 1 ms without a CPU (does the router pile a light load onto
    one replica while the others idle?); each case with the router as it is, then with
    packing off, on the same replicas. And the start-up, RSS and shutdown of the no-op's
    many replicas."""
    n = rep.settings.many_replicas
    async with serve.open_serve(http_port=None) as instance:
        for count in FEW_REPLICAS:
            await _replicas_load(rep, instance, Noop, count, 64)
        for count in FEW_REPLICAS:
            await _replicas_load(rep, instance, CpuBound, count, 64)
        await _replicas_load(rep, instance, CpuBound, FEW_REPLICAS[-1], 4)
        await _replicas_load(rep, instance, Serial, FEW_REPLICAS[-1], 4)
        await _replicas_load(rep, instance, CpuBound, n, 64)
        if not await _many_noop_replicas(rep, instance, n):
            return
        t1 = time.perf_counter()  # leaving the block stops the no-op's n replicas
    rep.scalar(f"shutdown with {n} replicas", time.perf_counter() - t1, "s")


def _replicas_case(deployment: serve.Deployment, count: int, concurrency: int) -> str:
    """``c64, 4 replicas`` for the no-op (the names of earlier results), ``cpu 1 ms, ...``
    and ``serial 1 ms, ...`` for the others."""
    what = {Noop: "", CpuBound: "cpu", Serial: "serial"}[deployment]
    what = f"{what} {CPU_WORK_S * 1000:g} ms, " if what else ""
    return f"{what}c{concurrency}, {count} replica{'s' if count > 1 else ''}"


async def _with_and_without_packing(
    rep: Reporter, handle: serve.DeploymentHandle, case: str, concurrency: int, refs: Refs
) -> None:
    """Measure ``case`` with the router as it is (a fresh router: it starts from spreading
    and tunes its threshold during the warmup and the first window), then with packing
    off on the same replicas."""
    await rep.load(case, handle.remote, concurrency, refs=refs)
    router = handle._get_router()  # why: the ablation reaches into the handle's router
    tuned = getattr(router, "packing", None)
    if tuned is None:  # a revision from before packing (bench/compare.py)
        return
    router.packing = _PinnedPacking()
    await rep.load(case + PACKING_OFF, handle.remote, concurrency, refs=refs)
    router.packing = tuned
    rep.note(f"{case}: packing threshold adopted {tuned.adopted} (epoch {tuned.epoch})")


async def _replicas_load(
    rep: Reporter,
    instance: serve.ServeInstance,
    deployment: serve.Deployment,
    count: int,
    concurrency: int,
) -> None:
    """Run ``count`` replicas of ``deployment``, measure them at ``concurrency``, delete."""
    case = _replicas_case(deployment, count, concurrency)
    app = f"r{count}"
    try:
        with trio.fail_after(600):
            handle = await instance.run(
                deployment.options(num_replicas=count).bind(), name=app, route_prefix=None
            )
    except (serve.ServeError, trio.TooSlowError) as exc:
        rep.error(case, f"start {count} replicas: {describe(exc)}")
        return
    check(await handle.remote(7), 7, case)
    refs = raw_and_ray(f"c{concurrency}") if deployment is Noop else ()
    await _with_and_without_packing(rep, handle, case, concurrency, refs)
    await instance.delete(app)


async def _many_noop_replicas(rep: Reporter, instance: serve.ServeInstance, n: int) -> bool:
    """Start ``n`` no-op replicas (timed, checked in ``status()``), measure them at c64 and
    their RSS, and leave them running; False when they did not start."""
    t0 = time.perf_counter()
    try:
        with trio.fail_after(600):
            many = await instance.run(
                Noop.options(num_replicas=n).bind(), name="many", route_prefix=None
            )
    except (serve.ServeError, trio.TooSlowError) as exc:
        elapsed = time.perf_counter() - t0
        rep.error(f"start {n} replicas", f"after {elapsed:.1f}s: {describe(exc)}")
        return False
    startup = time.perf_counter() - t0
    status = await instance.status()
    pids = replica_pids(status, "many")
    running = status.applications["many"].deployments["Noop"].running_replicas
    rep.scalar(f"time until {n} replicas run", startup, "s", running=running)
    if running != n or len(set(pids)) != n:
        rep.error(
            f"{n} replicas",
            f"run() returned with running_replicas={running}, {len(set(pids))} PIDs",
        )
    check(await many.remote(7), 7, "many replicas")
    case = _replicas_case(Noop, n, 64)
    await _with_and_without_packing(rep, many, case, 64, raw_and_ray("c64"))
    total, n_children = total_rss_mib()
    rep.scalar(f"total RSS with {n} replicas", total, "MiB", child_processes=n_children, replicas=n)
    return True


@attrs.frozen
class Workload:
    name: str
    title: str
    run: Callable[[Reporter], Any]
    is_async: bool = True
    #: bound on the whole worker process, in units of measured cases plus a base
    cases: int = 1
    base_timeout_s: float = 60.0
    #: a reference (not trioserve): its figures are what trioserve's are compared with
    reference: bool = False


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in [
        Workload("raw", "raw ws echo, 1 msg/request", workload_raw, cases=5, reference=True),
        Workload("fastapi", "FastAPI on uvicorn", workload_fastapi, cases=3, reference=True),
        Workload(
            "ray",
            "Ray Serve",
            workload_ray,
            cases=8,
            base_timeout_s=400,
            reference=True,
        ),
        Workload("handle", "async handle", workload_handle, cases=3),
        Workload("inline", "async handle, inline", workload_inline, cases=3),
        Workload("sync", "sync handle", workload_sync, is_async=False, cases=1),
        Workload("method", "method accessor", workload_method, cases=1),
        Workload("chain", "chaining (2 calls)", workload_chain, cases=1),
        Workload("bytes", "100 KB argument", workload_bytes, cases=1),
        Workload("http", "HTTP", workload_http, cases=3),
        Workload("ingress", "HTTP, FastAPI ingress", workload_ingress, cases=3),
        Workload("lifecycle", "lifecycle", workload_lifecycle, cases=3),
        Workload("replicas", "many replicas", workload_replicas, cases=16, base_timeout_s=400),
    ]
}


def worker_timeout_s(workload: Workload, settings: Settings) -> float:
    windows = settings.windows * max(settings.window_s, settings.wrk_window_s + 0.5)
    per_case = settings.warmup_s + windows + 5.0
    return workload.base_timeout_s + workload.cases * (per_case + 10.0)


def _leftover_children(rep: Reporter) -> None:
    """Every process a workload starts must be gone when it returns: report and end any."""
    import psutil

    me = psutil.Process()
    deadline = time.monotonic() + CHILD_EXIT_WAIT_S
    children = me.children(recursive=True)
    while children and time.monotonic() < deadline:
        time.sleep(0.05)
        children = [c for c in children if c.is_running() and c.status() != "zombie"]
    if children:
        pids = [c.pid for c in children]
        rep.error("cleanup", f"processes still alive after the workload: {pids}")
        for child in children:
            child.terminate()
        psutil.wait_procs(children, timeout=3)


async def _hang(rep: Reporter) -> None:
    """Fault injection for checking the failure path: a replica up, then no progress."""
    async with serve.open_serve(http_port=None) as instance:
        await instance.run(Noop.bind(), name="noop", route_prefix=None)
        rep.note("hanging on purpose (TRIOSERVE_BENCH_HANG)")
        await trio.sleep_forever()


def run_worker(name: str, result_file: str, settings: Settings) -> int:
    workload = WORKLOADS[name]
    if os.environ.get(HANG_ENV) == name:
        workload = attrs.evolve(workload, run=_hang, is_async=True)
    rep = Reporter(result_file, name, settings)
    code = 0
    try:
        if workload.is_async:
            trio.run(workload.run, rep)
        else:
            workload.run(rep)
    except BaseException as exc:  # why: reported, then the worker exits with an error code
        import traceback

        traceback.print_exc()
        rep.error("workload", describe(exc))
        code = 1
    finally:
        _leftover_children(rep)
        rep.close()
    return code
