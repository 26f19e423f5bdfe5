"""A hostile mix of HTTP clients, run in a process of its own beside a soak's legitimate load.

Four kinds of clients, on raw sockets (h11 parses the answers that are checked):

- disconnecting streamers: request an endless streamed body (``GET /stream/forever``) and
  hang up mid-stream, half of them without reading a byte, half after reading a little;
- idle keep-alive connections: each makes one request (``GET /-/healthz``) and then holds
  its connection open without a word; ``idle`` of them at once (the soak sets it just under
  the proxy's connection bound), each reopened if the server closes it;
- tiny-chunk uploaders: ``POST /sink`` with a chunked body sent one byte per chunk, a chunk
  every ``upload_interval_s``, checking the byte count and sum the deployment answers;
- HEAD probes: ``HEAD /-/healthz`` and ``HEAD /stream/once`` in a loop on a keep-alive
  connection, each to be answered 200 with no body and the connection kept open.

:func:`open_hostile_mix` starts this file as a process with a :class:`HostileMix` (as
JSON). The process prints ``ready`` once every idle connection has been opened, runs until
its stdin closes, then closes every socket and prints a :class:`HostileReport` (as JSON).
A child process because that is what hostile clients are: their sockets and CPU are not the
serve process's (under a low open-file limit, 500 client sockets in the serve process would
take the descriptors its connection bound keeps free).

This file imports no project module (it runs by path).
"""

from __future__ import annotations

import itertools
import json
import os
import random
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import attrs
import h11
import trio

#: how long the child may take to open its idle connections (and print ``ready``)
READY_TIMEOUT_S = 30.0
#: how long the child may take to stop and report once its stdin closed
STOP_TIMEOUT_S = 10.0
#: an answer (or a streamed body's first bytes) slower than this counts as a failure
ANSWER_TIMEOUT_S = 10.0
#: a silent streamer holds its stream this long (uniform) before hanging up
SILENT_HOLD_S = (0.05, 0.3)
#: a reading streamer reads this many bytes (uniform) of its stream before hanging up
READ_BYTES = (1024, 64 * 1024)
#: a streamer's pause between two streams (each of the 8 streamers hangs up on a stream a
#: few times a second: the mix abandons about as many streams as the legitimate clients
#: make requests)
STREAM_PAUSE_S = 0.1
#: an idle connection the server closed is reopened after this pause
IDLE_REOPEN_PAUSE_S = 0.1
#: idle connections opened at once while ramping up
IDLE_OPENING = 64
HEAD_PATHS = ("/-/healthz", "/stream/once")
SAMPLES = 10


@attrs.frozen(kw_only=True)
class HostileMix:
    """How many of each hostile client run at once, and their pace."""

    silent_streamers: int = 4
    reading_streamers: int = 4
    idle: int = 0
    uploaders: int = 4
    #: bytes per upload, sent one per chunk
    upload_bytes: int = 200
    upload_interval_s: float = 0.005
    head_probers: int = 2
    #: pause between two HEAD probes on one connection (10 probes a second each: ten times
    #: what load balancers usually send)
    head_interval_s: float = 0.1

    @property
    def busy_connections(self) -> int:
        """Connections the mix has open at once, besides the idle ones."""
        return self.silent_streamers + self.reading_streamers + self.uploaders + self.head_probers


@attrs.define(kw_only=True)
class HostileReport:
    """What the hostile clients did and how they were answered (``problems()``: answers
    that were wrong for them too; a hostile client is still owed a correct answer)."""

    streams: int = 0
    #: streams hung up on without reading a byte
    streams_unread: int = 0
    #: streams hung up on after reading some of the body
    streams_read: int = 0
    stream_bytes: int = 0
    #: streams answered other than 200, cut before the client hung up, or with no bytes
    #: within ANSWER_TIMEOUT_S
    streams_failed: int = 0
    idle_target: int = 0
    idle_peak: int = 0
    #: idle connections the server closed (they are reopened)
    idle_closed: int = 0
    #: idle connections whose request was not answered 200 (e.g. 503 past the bound)
    idle_failed: int = 0
    uploads_ok: int = 0
    uploads_failed: int = 0
    upload_bytes: int = 0
    head_ok: int = 0
    #: HEAD probes answered other than 200, with a body, or that closed their connection
    head_failed: int = 0
    #: connection errors (resets, refusals) by any hostile client
    errors: int = 0
    samples: list[str] = attrs.field(factory=list)
    _idle_open: int = 0

    def problems(self) -> list[str]:
        found = []
        for name in ("streams_failed", "idle_failed", "uploads_failed", "head_failed", "errors"):
            if getattr(self, name):
                found.append(f"hostile {name}: {getattr(self, name)}")
        if self.idle_peak < self.idle_target:
            found.append(f"only {self.idle_peak} of {self.idle_target} idle connections opened")
        return found

    def summary(self) -> str:
        return (
            f"  hostile: {self.streams} streams abandoned ({self.streams_unread} unread, "
            f"{self.streams_read} after {self.stream_bytes} bytes in all), "
            f"{self.idle_peak}/{self.idle_target} idle connections, "
            f"{self.uploads_ok} uploads of 1-byte chunks ({self.upload_bytes} bytes), "
            f"{self.head_ok} HEAD probes; failed: streams {self.streams_failed}, idle "
            f"{self.idle_failed}, uploads {self.uploads_failed}, HEAD {self.head_failed}, "
            f"errors {self.errors}"
        )

    def to_json(self) -> bytes:
        fields = attrs.asdict(self, filter=lambda a, _v: not a.name.startswith("_"))
        return json.dumps(fields).encode()

    @classmethod
    def from_json(cls, data: bytes) -> HostileReport:
        return cls(**json.loads(data))

    def failure(self, field: str, message: str) -> None:
        setattr(self, field, getattr(self, field) + 1)
        if len(self.samples) < SAMPLES:
            self.samples.append(message[:300])

    def idle_opened(self) -> None:
        self._idle_open += 1
        self.idle_peak = max(self.idle_peak, self._idle_open)

    def idle_gone(self) -> None:
        self._idle_open -= 1


# -- the driver's side


@attrs.define
class HostileRun:
    """A running mix; ``report`` is set once it has stopped."""

    report: HostileReport | None = None


@asynccontextmanager
async def open_hostile_mix(host: str, port: int, mix: HostileMix) -> AsyncIterator[HostileRun]:
    """Run ``mix`` against ``host:port`` for this block, from a child process; entering
    returns once its idle connections are open. Leaving the block stops it (every socket
    closed) and sets ``run.report``.

    Tasks: none (the clients run in the child; its pipes are read in this task). Cancelled
    or failing midway, the child is killed and reaped: no process remains.
    """
    plan = json.dumps(attrs.asdict(mix))
    process = await trio.lowlevel.open_process(
        [sys.executable, __file__, host, str(port), plan],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert process.stdin is not None
    assert process.stdout is not None
    run = HostileRun()
    try:
        with trio.fail_after(READY_TIMEOUT_S):
            ready = await _read_until_eof_or_line(process.stdout)
        if ready != b"ready":
            raise RuntimeError(f"the hostile mix did not start: {ready!r}")
        yield run
        await process.stdin.aclose()
        with trio.fail_after(STOP_TIMEOUT_S):
            output = await _read_until_eof_or_line(process.stdout, whole=True)
            await process.wait()
        run.report = HostileReport.from_json(output)
    finally:
        with trio.CancelScope(shield=True):  # why: the child must not outlive the block
            if process.returncode is None:
                process.kill()
            with trio.move_on_after(STOP_TIMEOUT_S):
                await process.wait()
            await process.stdin.aclose()
            await process.stdout.aclose()


async def _read_until_eof_or_line(stream: trio.abc.ReceiveStream, *, whole: bool = False) -> bytes:
    """A line from ``stream`` (without its newline), or with ``whole`` all up to EOF."""
    data = b""
    while whole or b"\n" not in data:
        chunk = await stream.receive_some()
        if not chunk:
            break
        data += chunk
    return data.strip() if whole else data.split(b"\n", 1)[0]


# -- the clients (in the child process)


@attrs.frozen
class _Target:
    host: str
    port: int

    async def connect(self) -> trio.SocketStream:
        return await trio.open_tcp_stream(self.host, self.port)


def _request(method: str, path: str, headers: list[tuple[str, str]] | None = None) -> h11.Request:
    return h11.Request(method=method, target=path, headers=[("host", "soak"), *(headers or [])])


async def _answer(stream: trio.SocketStream, conn: h11.Connection) -> tuple[h11.Response, bytes]:
    """The next response on ``conn`` and its body (``TooSlowError`` past ANSWER_TIMEOUT_S)."""
    response: h11.Response | None = None
    body = bytearray()
    with trio.fail_after(ANSWER_TIMEOUT_S):
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some())
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert response is not None
                return response, bytes(body)
            elif isinstance(event, h11.ConnectionClosed):
                raise trio.BrokenResourceError("the server closed the connection")


async def _streamer(target: _Target, report: HostileReport, rng: random.Random, read: bool) -> None:
    """Request endless streams and hang up on each mid-stream, reading some of it or none."""
    while True:
        try:
            async with await target.connect() as stream:
                await stream.send_all(b"GET /stream/forever HTTP/1.1\r\nhost: soak\r\n\r\n")
                report.streams += 1
                if read:
                    await _read_some(stream, report, rng.randrange(*READ_BYTES))
                else:
                    await trio.sleep(rng.uniform(*SILENT_HOLD_S))  # the client's whim
                    report.streams_unread += 1
        except (OSError, trio.BrokenResourceError) as exc:
            report.failure("errors", f"streamer: {exc!r}")
        await trio.sleep(STREAM_PAUSE_S)  # pacing, not a wait


async def _read_some(stream: trio.SocketStream, report: HostileReport, want: int) -> None:
    got = 0
    try:
        with trio.fail_after(ANSWER_TIMEOUT_S):
            while got < want:
                chunk = await stream.receive_some()
                if not chunk:
                    report.failure("streams_failed", f"stream cut after {got} bytes")
                    return
                if not got and not chunk.startswith(b"HTTP/1.1 200 "):
                    report.failure("streams_failed", f"stream answered {chunk[:60]!r}")
                    return
                got += len(chunk)
    except trio.TooSlowError:
        report.failure("streams_failed", f"stream stalled after {got} bytes")
        return
    report.streams_read += 1
    report.stream_bytes += got


async def _idle(target: _Target, report: HostileReport, first_try: Callable[[], None]) -> None:
    """Hold a keep-alive connection open, silent after one answered request; reopen it
    whenever the server closes it. ``first_try()`` once the first attempt is over."""
    tried = False
    while True:
        try:
            async with await target.connect() as stream:
                conn = h11.Connection(h11.CLIENT)
                await stream.send_all(conn.send(_request("GET", "/-/healthz")) or b"")
                await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
                response, _ = await _answer(stream, conn)
                if response.status_code != 200:
                    report.failure("idle_failed", f"idle connection got {response.status_code}")
                else:
                    report.idle_opened()
                    try:
                        if not tried:
                            tried = True
                            first_try()
                        await stream.receive_some()  # until the server closes it
                    finally:
                        report.idle_gone()
                    report.idle_closed += 1
        except (OSError, trio.BrokenResourceError, trio.TooSlowError) as exc:
            report.failure("errors", f"idle connection: {exc!r}")
        if not tried:
            tried = True
            first_try()
        await trio.sleep(IDLE_REOPEN_PAUSE_S)  # pacing, not a wait


async def _uploader(
    target: _Target, report: HostileReport, rng: random.Random, mix: HostileMix
) -> None:
    """Upload bodies one byte per chunk, slowly, on a keep-alive connection; check the
    answers."""
    while True:
        try:
            async with await target.connect() as stream:
                conn = h11.Connection(h11.CLIENT)
                while True:
                    await _upload_once(stream, conn, report, rng, mix)
                    if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                        break
                    conn.start_next_cycle()
        except (OSError, trio.BrokenResourceError, h11.ProtocolError) as exc:
            report.failure("errors", f"uploader: {exc!r}")
        await trio.sleep(STREAM_PAUSE_S)  # pacing, not a wait


async def _upload_once(
    stream: trio.SocketStream,
    conn: h11.Connection,
    report: HostileReport,
    rng: random.Random,
    mix: HostileMix,
) -> None:
    body = rng.randbytes(mix.upload_bytes)
    head = _request("POST", "/sink", [("transfer-encoding", "chunked")])
    await stream.send_all(conn.send(head) or b"")
    for i in range(len(body)):
        await stream.send_all(conn.send(h11.Data(data=body[i : i + 1])) or b"")
        await trio.sleep(mix.upload_interval_s)  # the client's pace
    await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
    try:
        response, answer = await _answer(stream, conn)
    except trio.TooSlowError:  # the connection is then given up (its state is not DONE)
        report.failure("uploads_failed", "upload not answered within ANSWER_TIMEOUT_S")
        return
    want = {"bytes": len(body), "sum": sum(body)}
    if response.status_code == 200 and json.loads(answer) == want:
        report.uploads_ok += 1
        report.upload_bytes += len(body)
    else:
        report.failure("uploads_failed", f"upload got {response.status_code} {answer[:100]!r}")


async def _head_prober(target: _Target, report: HostileReport, mix: HostileMix) -> None:
    """HEAD probes in a loop on one keep-alive connection: each answered 200, no body, the
    connection left open."""
    while True:
        try:
            async with await target.connect() as stream:
                conn = h11.Connection(h11.CLIENT)
                for probe in itertools.count():
                    path = HEAD_PATHS[probe % len(HEAD_PATHS)]
                    await stream.send_all(conn.send(_request("HEAD", path)) or b"")
                    await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
                    response, body = await _answer(stream, conn)
                    if response.status_code != 200 or body:
                        report.failure("head_failed", f"HEAD {path}: {response.status_code}")
                    elif conn.their_state is not h11.DONE:
                        report.failure("head_failed", f"HEAD {path} closed the connection")
                        break
                    else:
                        report.head_ok += 1
                    conn.start_next_cycle()
                    await trio.sleep(mix.head_interval_s)  # the prober's period
        except (OSError, trio.BrokenResourceError, trio.TooSlowError, h11.ProtocolError) as exc:
            report.failure("errors", f"HEAD prober: {exc!r}")
        await trio.sleep(STREAM_PAUSE_S)  # pacing, not a wait


async def run_mix(host: str, port: int, mix: HostileMix) -> HostileReport:
    """Run ``mix`` until stdin closes (printing ``ready`` once the idle connections are
    open); every socket is closed when this returns."""
    target = _Target(host, port)
    report = HostileReport(idle_target=mix.idle)
    rng = random.Random()
    pending = mix.idle
    ready = trio.Event()
    opening = trio.Semaphore(IDLE_OPENING)

    def first_try() -> None:
        nonlocal pending
        opening.release()
        pending -= 1
        if pending == 0:
            ready.set()

    async def idle() -> None:
        await opening.acquire()
        await _idle(target, report, first_try)

    async with trio.open_nursery() as nursery:
        for _ in range(mix.idle):
            nursery.start_soon(idle)
        for read in [False] * mix.silent_streamers + [True] * mix.reading_streamers:
            nursery.start_soon(_streamer, target, report, random.Random(rng.random()), read)
        for _ in range(mix.uploaders):
            nursery.start_soon(_uploader, target, report, random.Random(rng.random()), mix)
        for _ in range(mix.head_probers):
            nursery.start_soon(_head_prober, target, report, mix)
        if mix.idle == 0:
            ready.set()
        await ready.wait()
        sys.stdout.buffer.write(b"ready\n")
        sys.stdout.buffer.flush()
        stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
        async with stdin:
            while await stdin.receive_some():
                pass
        nursery.cancel_scope.cancel()
    return report


def _main() -> None:
    host, port, plan = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
    report = trio.run(run_mix, host, port, HostileMix(**plan))
    sys.stdout.buffer.write(report.to_json() + b"\n")
    sys.stdout.buffer.flush()


if __name__ == "__main__":
    _main()
