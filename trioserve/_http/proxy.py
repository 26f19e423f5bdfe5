"""The HTTP proxy: routes requests to applications' ingress deployments through ordinary
handles (so HTTP traffic is balanced, buffered and counted like handle traffic), maps
failures to status codes, and serves the operations endpoints under ``/-/``."""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import os
from collections.abc import AsyncIterator
from traceback import format_exception
from typing import TYPE_CHECKING, Any, Protocol

import attrs
import msgspec
import trio

from .._exchange import (
    RequestHead,
    WSAccept,
    WSClose,
    WSMessage,
    decode_start,
    decode_ws_event,
    encode,
    ws_message,
)
from .._handles.context import ServeContext
from .._handles.handle import DeploymentHandle
from .._handles.messages import ReplicaMetricsSnapshot
from .._handles.response import DeploymentResponseGenerator
from .._metrics import Counter, Gauge, Histogram, Labels, render
from .._replica.batching import (
    BATCH_SIZE_BUCKETS,
    BATCH_WAIT_BUCKETS_S,
    snapshot_batch_metrics,
)
from .._replica.http import HTTPRequest
from ..exceptions import BackPressureError, DeploymentUnavailableError
from .server import BodyRefusedError, HTTPReply, plain
from .websocket import ServerWebSocket, WebSocketDisconnect

if TYPE_CHECKING:
    from .._control.controller import Controller


class ProxyHost(ServeContext, Protocol):
    """What the proxy needs of the serve instance that hosts it (a routing context and the
    address it listens on)."""

    http_host: str
    http_port: int | None


METRICS_TIMEOUT_S = 2.0
#: how long a 5xx answer waits for the error that may follow it in the stream (to log it)
LATE_ERROR_WAIT_S = 1.0
#: the longest ``x-request-id`` taken from a client (a longer one is replaced)
MAX_REQUEST_ID_CHARS = 200
#: a streamed request body is sent on in chunks of what arrived within this time ...
UPLOAD_GATHER_S = 0.005
#: ... up to this size
UPLOAD_CHUNK_BYTES = 64 * 1024
#: how long an app may take to end its WebSocket session once the client has closed
WS_CLOSE_GRACE_S = 2.0
logger = logging.getLogger("trioserve")
access_logger = logging.getLogger("trioserve.access")


def validate_route_prefix(prefix: str) -> None:
    """Raise ``ValueError`` (showing the bad value) unless ``prefix`` is a route prefix:
    starts with ``/``, does not end with ``/`` (``/`` itself aside), has no ``{`` or ``}``."""
    if not isinstance(prefix, str) or not prefix.startswith("/"):
        problem = "must start with '/'"
    elif prefix != "/" and prefix.endswith("/"):
        problem = "must not end with '/' (unless it is '/')"
    elif "{" in prefix or "}" in prefix:
        problem = "must not contain '{' or '}' (route prefixes take no path parameters)"
    else:
        return
    raise ValueError(f"route_prefix {problem}, got {prefix!r}")


_FRAMING = ("content-length", "transfer-encoding")


class _StreamTimeoutError(Exception):
    """A streamed body outlived ``request_timeout_s``."""


@attrs.frozen
class _Where:
    """What the logs say about a request."""

    request_id: str
    method: str
    path: str
    app: str
    route_prefix: str
    handle: DeploymentHandle


def _request_id(request: HTTPRequest) -> str:
    """The client's ``x-request-id`` when it sent a usable one, else 32 random hex digits."""
    given = request.headers.get("x-request-id")  # names are lowercase
    if given and len(given) <= MAX_REQUEST_ID_CHARS and given.isprintable():
        return given
    return os.urandom(16).hex()  # as unique as a uuid4's hex, at a third of its cost


def _header(headers: list[tuple[str, str]], name: str) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


async def _collect(stream: Any) -> bytes:
    """A response's body chunks, joined (up to the ``None`` that ends a body)."""
    parts: list[bytes] = []
    async for chunk in stream:
        if chunk is None:
            break
        parts.append(bytes(chunk))
    return b"".join(parts)


async def _gather_body(body: Any) -> tuple[bytes, bool]:
    """The next part of a streamed request body, and whether the body ended: what arrives
    within ``UPLOAD_GATHER_S`` of the first bytes is sent as one chunk, up to
    ``UPLOAD_CHUNK_BYTES``, so a client trickling its body byte by byte costs one message
    to the replica per few milliseconds, not one per byte (reads are cancel-safe: bytes
    already received stay in the body's buffer)."""
    first = await body.read()
    if first is None:
        return b"", True
    parts, size = [first], len(first)
    deadline = trio.current_time() + UPLOAD_GATHER_S
    while size < UPLOAD_CHUNK_BYTES:
        more: bytes | None = b""
        with trio.move_on_at(deadline):
            more = await body.read()
        if more is None:
            return b"".join(parts), True
        if not more:  # the gathering time is up
            break
        parts.append(more)
        size += len(more)
    return b"".join(parts), False


class _Relay:
    """The body chunks of a streamed response, until its end or ``deadline`` (then the
    stream is cancelled and the body cut). Closing it before the end -- the client left,
    even before the first chunk -- cancels the stream, so the replica's slot is freed (an
    async generator that never started would run none of its cleanup)."""

    def __init__(self, proxy: HTTPProxy, stream: Any, deadline: float, where: _Where) -> None:
        self._proxy = proxy
        self._stream = stream
        self._deadline = deadline
        self._where = where
        self._finished = False

    def __aiter__(self) -> _Relay:
        return self

    async def __anext__(self) -> bytes:
        if self._finished:
            raise StopAsyncIteration
        where = self._where
        chunk: Any = None
        try:
            with trio.move_on_at(self._deadline) as timer:
                chunk = await self._stream.__anext__()
        except StopAsyncIteration:
            self._finished = True
            raise
        except Exception as exc:
            self._proxy._log_error(exc, where, self._stream, mid_stream=True)
            await self.aclose()
            raise
        if timer.cancelled_caught:
            limit = self._proxy.request_timeout_s
            logger.warning(
                "request %s %s: streamed response cut after request_timeout_s=%s",
                where.request_id,
                where.path,
                limit,
            )
            await self.aclose()
            raise _StreamTimeoutError(f"streamed response cut after request_timeout_s={limit}")
        if chunk is None:  # the body is complete; the call may go on
            self._finished = True
            raise StopAsyncIteration
        return bytes(chunk)

    async def aclose(self) -> None:
        if not self._finished:
            self._finished = True
            self._stream.cancel()
        await trio.lowlevel.checkpoint()


class _LoggedBody:
    """A streamed body that writes its access-log line once it ends, or is cut."""

    def __init__(self, body: AsyncIterator[bytes], line: Any) -> None:
        self._body = body
        self._line = line
        self._logged = False

    def __aiter__(self) -> _LoggedBody:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await anext(self._body)
        except StopAsyncIteration:
            self._log("")
            raise
        except BaseException:  # why: a failed or cancelled body is logged as cut; re-raised
            self._log(" (cut)")
            raise

    def _log(self, outcome: str) -> None:
        if not self._logged:
            self._logged = True
            self._line(outcome)

    async def aclose(self) -> None:
        self._log(" (cut)")
        aclose = getattr(self._body, "aclose", None)
        if aclose is not None:
            await aclose()


class HTTPProxy:
    """Answers HTTP requests and WebSockets for a serve instance (served by an
    ``HTTPServer``), through ordinary handles to each application's ingress deployment.

    Tasks: each request runs in the server's task for it; a request body that streams (a
    large or chunked one) is sent to the replica by a task of its own in ``nursery``, which
    ends when the body has been sent or the request has ended. A streamed response is
    relayed as the server sends it; if that is cancelled midway, the replica's call is
    cancelled with it."""

    def __init__(
        self,
        instance: ProxyHost,
        controller: Controller,
        *,
        nursery: trio.Nursery,
        request_timeout_s: float | None = None,
        show_tracebacks: bool = False,
        access_log: bool = False,
    ) -> None:
        self._instance = instance
        self._controller = controller
        self._nursery = nursery
        self.request_timeout_s = request_timeout_s
        self.show_tracebacks = show_tracebacks
        #: log one line per request (method, path, status, duration, request id) to the
        #: ``trioserve.access`` logger
        self.access_log = access_log
        self._handles: dict[tuple[str, str, str], DeploymentHandle] = {}
        self.requests = Counter(
            "trioserve_http_requests_total",
            "HTTP requests answered, by application, ingress deployment and status",
        )
        self.latency = Histogram(
            "trioserve_http_request_duration_seconds",
            "HTTP request latency, by application and ingress deployment",
        )
        self.ongoing = Gauge(
            "trioserve_http_ongoing_requests",
            "HTTP requests being answered (queued in the proxy's handle or at a replica)",
        )

    # -- routing

    def match(self, path: str) -> str | None:
        """The application whose route prefix is the longest match for ``path`` (whatever
        its state: one that cannot serve answers 503, not 404)."""
        best: tuple[int, str] | None = None
        for app in self._controller.apps.values():
            prefix = app.route_prefix
            if prefix is None:
                continue
            root = prefix.rstrip("/")
            matches = path == root or path.startswith(root + "/") or prefix == "/"
            if matches and (best is None or len(root) > best[0]):
                best = (len(root), app.name)
        return best[1] if best else None

    def _app_for(self, path: str) -> tuple[str | None, HTTPReply | None]:
        """The application serving ``path``, or the answer refusing it: 404 when none
        matches, 503 when the one that matches cannot serve."""
        app = self.match(path)
        if app is None:
            return None, plain(404, "no application serves this path\n")
        reason = self._unavailable(app)
        if reason is not None:
            return app, plain(503, f"{reason}\n")
        return app, None

    def _unavailable(self, app: str) -> str | None:
        """Why ``app`` cannot answer at all right now, or None."""
        state = self._controller.apps[app]
        if state.status == "DEPLOY_FAILED":
            return f"application {app!r} failed to deploy: {state.message}"
        if state.status == "DELETING":
            return f"application {app!r} is being deleted"
        return None

    def _handle(self, app: str, method: str = "__serve_http__") -> DeploymentHandle:
        ingress = self._controller.app_ingress(app)
        key = (app, ingress, method)
        handle = self._handles.get(key)
        if handle is None:
            handle = DeploymentHandle(
                ingress, app, method_name=method, stream=True, _context=self._instance
            )
            handle._source = "http"
            self._handles[key] = handle
        return handle

    # -- requests

    async def handle(self, request: HTTPRequest) -> HTTPReply:
        """Answer one request; every answer carries its ``x-request-id``."""
        started = trio.current_time()
        request_id = _request_id(request)
        if request.path.startswith("/-/"):
            reply = await self._operations(request)
        elif request.websocket is not None:
            reply = await self._websocket(request, request.websocket, request_id)
        else:
            reply = await self._route(request, request_id, started)
        reply.headers = [(k, v) for k, v in reply.headers if k.lower() != "x-request-id"]
        reply.headers.append(("x-request-id", request_id))
        if self.access_log:
            reply.body = self._logged(request, request_id, reply, started)
        return reply

    async def _route(self, request: HTTPRequest, request_id: str, started: float) -> HTTPReply:
        app, refusal = self._app_for(request.path)
        if refusal is not None:
            ingress = self._controller.apps[app].ingress if app else ""
            labels_refused = (("application", app or ""), ("deployment", ingress))
            self.requests.inc((*labels_refused, ("status", str(refusal.status))))
            return refusal
        assert app is not None
        handle = self._handle(app)
        labels: Labels = (("application", app), ("deployment", handle.deployment_name))
        self.ongoing.inc(labels)
        try:
            reply = await self._forward(app, handle, request, request_id)
        finally:
            self.ongoing.inc(labels, -1)
        self.requests.inc((*labels, ("status", str(reply.status))))
        self.latency.observe(labels, trio.current_time() - started)
        return reply

    async def _forward(
        self, app: str, handle: DeploymentHandle, request: HTTPRequest, request_id: str
    ) -> HTTPReply:
        route_prefix = self._controller.apps[app].route_prefix or "/"
        head = self._head(request, route_prefix, request_id)
        model_id = request.headers.get(MODEL_ID_HEADER)
        if model_id:
            handle = handle.options(multiplexed_model_id=model_id)
        stream: Any
        if request.body_stream is None:
            stream = handle.remote(encode(head))
        else:
            stream = handle._remote_duplex(encode(head))
            self._nursery.start_soon(self._send_body, request.body_stream, stream)
        where = _Where(request_id, request.method, request.path, app, route_prefix, handle)
        try:
            if self.request_timeout_s is None:  # no timer to set (a cancel scope per request)
                status, headers, body = await self._reply(stream, where, math.inf)
            else:
                deadline = trio.current_time() + self.request_timeout_s
                with trio.move_on_at(deadline) as timer:
                    status, headers, body = await self._reply(stream, where, deadline)
                if timer.cancelled_caught:
                    stream.cancel()
                    return plain(504, f"request timed out after {self.request_timeout_s}s\n")
        except BackPressureError as exc:
            return plain(503, f"{exc}\n", [("retry-after", "1")])
        except DeploymentUnavailableError as exc:
            return plain(503, f"{exc}\n")
        except Exception as exc:
            self._log_error(exc, where, stream)
            return self._error_reply(exc)
        # the server sets these two from the body it sends (bytes: their length)
        headers = [(k, v) for k, v in headers if k.lower() not in _FRAMING]
        return HTTPReply(status, headers, body)

    async def _reply(
        self, stream: Any, where: _Where, deadline: float
    ) -> tuple[int, list[tuple[str, str]], bytes | AsyncIterator[bytes]]:
        """The replica's answer: status, headers and the body (bytes when it came whole or
        its length is known, else a relay of its chunks)."""
        start = decode_start(await stream.__anext__())
        status, headers = start.status, start.headers
        body: bytes | AsyncIterator[bytes]
        if start.whole:
            body = await stream.__anext__()
        elif _header(headers, "content-length") is not None:
            body = await _collect(stream)  # its length is known: no chunking
        else:
            body = _Relay(self, stream, deadline, where)
        if status >= 500 and isinstance(body, bytes):
            await self._log_late_error(stream, where, deadline)
        return status, headers, body

    def _head(self, request: HTTPRequest, route_prefix: str, request_id: str) -> RequestHead:
        server = None
        if self._instance.http_port is not None:
            server = (self._instance.http_host, self._instance.http_port)
        return RequestHead(
            method=request.method,
            path=request.path,
            query_string=request.query_string,
            headers=list(request.headers.items()),
            client=request.client,
            server=server,
            route_prefix=route_prefix,
            request_id=request_id,
            body=request.body,
            more_body=request.body_stream is not None,
            kind="websocket" if request.websocket is not None else "http",
        )

    @staticmethod
    async def _send_body(body: Any, stream: DeploymentResponseGenerator) -> None:
        """Send a request body that streams to the replica answering it, chunk by chunk
        at the pace it reads (its credit), so the proxy holds no more than a chunk or two
        of it. Ends when the body has been sent, or the request ended (then nobody reads
        the rest: the server closes the connection after its answer)."""
        upload = stream.upload
        assert upload is not None
        try:
            ended = False
            while not ended:
                chunk, ended = await _gather_body(body)
                if chunk:
                    await upload.send(chunk)
            upload.end()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return  # the request ended (answered, failed or cancelled)
        except BodyRefusedError:
            stream.cancel()  # too large or too slow: the server answers it (413, 408)
        except Exception:  # why: a broken connection ends the request, as a disconnect does
            logger.debug("reading a request body failed", exc_info=True)
            stream.cancel()

    # -- WebSockets

    async def _websocket(
        self, request: HTTPRequest, ws: ServerWebSocket, request_id: str
    ) -> HTTPReply:
        """Relay a WebSocket session between the client and the application's ingress
        replica (an ASGI app's ``websocket`` routes). Until the app accepts, refusals are
        HTTP answers (404, 503, 403); afterwards this returns once the session is over."""
        app, refusal = self._app_for(request.path)
        if refusal is not None:
            return refusal
        assert app is not None
        handle = self._handle(app, "__serve_ws__")
        route_prefix = self._controller.apps[app].route_prefix or "/"
        stream = handle._remote_duplex(encode(self._head(request, route_prefix, request_id)))
        where = _Where(request_id, "WEBSOCKET", request.path, app, route_prefix, handle)
        labels: Labels = (("application", app), ("deployment", handle.deployment_name))
        try:
            with trio.move_on_after(self.request_timeout_s or math.inf) as timer:
                first = decode_ws_event(await stream.__anext__())
            if timer.cancelled_caught:
                stream.cancel()
                return plain(504, f"WebSocket not accepted within {self.request_timeout_s}s\n")
        except (BackPressureError, DeploymentUnavailableError) as exc:
            return plain(503, f"{exc}\n")
        except Exception as exc:
            self._log_error(exc, where, stream)
            return self._error_reply(exc)
        if not isinstance(first, WSAccept):
            stream.cancel()
            self.requests.inc((*labels, ("status", "403")))
            return plain(403, "the application refused the WebSocket\n")
        await ws.accept(first.subprotocol, first.headers)
        self.requests.inc((*labels, ("status", "101")))
        self.ongoing.inc(labels)
        try:
            await self._relay_websocket(ws, stream, where)
        finally:
            self.ongoing.inc(labels, -1)
            stream.cancel()
        return HTTPReply(101, [])

    async def _relay_websocket(
        self, ws: ServerWebSocket, stream: DeploymentResponseGenerator, where: _Where
    ) -> None:
        """Messages both ways until either side closes: the app's close reaches the
        client; the client's close reaches the app, which then has ``WS_CLOSE_GRACE_S``
        to end its session."""
        upload = stream.upload
        assert upload is not None

        async def from_client(done: trio.CancelScope) -> None:
            try:
                while True:
                    message = await ws.receive()
                    await upload.send(encode(ws_message(message)))
            except WebSocketDisconnect as exc:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await upload.send(encode(WSClose(code=exc.code, reason=exc.reason)))
                upload.end()
                done.deadline = min(done.deadline, trio.current_time() + WS_CLOSE_GRACE_S)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return  # the app's side ended first

        async with trio.open_nursery() as nursery:
            nursery.start_soon(from_client, nursery.cancel_scope)
            code, reason = 1000, ""
            try:
                async for item in stream:
                    event = decode_ws_event(item)
                    if isinstance(event, WSMessage):
                        await ws.send(event.payload)
                    elif isinstance(event, WSClose):
                        code, reason = event.code, event.reason
                        break
            except WebSocketDisconnect:
                pass  # the client is gone; its close reached (or will reach) the app
            except Exception as exc:
                self._log_error(exc, where, stream, mid_stream=True)
                code, reason = 1011, "internal error"
            with contextlib.suppress(WebSocketDisconnect):
                await ws.close(code, reason)
            nursery.cancel_scope.cancel()

    async def _log_late_error(self, stream: Any, where: _Where, deadline: float) -> None:
        """An app answered 5xx (Starlette's error middleware answers 500, then re-raises):
        wait, briefly, for the error that may follow, to log it."""
        with trio.move_on_at(min(deadline, trio.current_time() + LATE_ERROR_WAIT_S)):
            try:
                async for _ in stream:
                    pass
            except Exception as exc:
                self._log_error(exc, where, stream)

    def _log_error(
        self, exc: BaseException, where: _Where, stream: Any, *, mid_stream: bool = False
    ) -> None:
        """Log a request that failed in user code (or lost its replica): request id, route,
        deployment, replica, and the replica's traceback."""
        traceback = getattr(exc, "remote_traceback", "") or "".join(
            format_exception(type(exc), exc, exc.__traceback__)
        )
        logger.error(
            "request %s %s %s failed%s: %s: %s (application %r, route %r, deployment %r, "
            "replica %s)\n%s",
            where.request_id,
            where.method,
            where.path,
            " mid-stream" if mid_stream else "",
            type(exc).__name__,
            exc,
            where.app,
            where.route_prefix,
            where.handle.deployment_name,
            getattr(stream, "replica_id", None),
            traceback.rstrip(),
        )

    def _error_reply(self, exc: BaseException) -> HTTPReply:
        text = f"Internal Server Error: {type(exc).__name__}: {exc}\n"
        if self.show_tracebacks:
            text += getattr(exc, "remote_traceback", "")
        return plain(500, text)

    def _logged(
        self, request: HTTPRequest, request_id: str, reply: HTTPReply, started: float
    ) -> bytes | AsyncIterator[bytes]:
        """``reply``'s body, writing the access log line once it is sent (a streamed body:
        once it ends)."""

        def line(outcome: str = "") -> None:
            duration_ms = (trio.current_time() - started) * 1000
            access_logger.info(
                "%s %s %d %.1fms %s%s",
                request.method,
                request.path,
                reply.status,
                duration_ms,
                request_id,
                outcome,
            )

        body = reply.body
        if isinstance(body, bytes):
            line()
            return body

        return _LoggedBody(body, line)

    # -- operations

    async def _operations(self, request: HTTPRequest) -> HTTPReply:
        path = request.path
        if path == "/-/healthz":
            if not any(a.route_prefix is not None for a in self._controller.apps.values()):
                return plain(503, "no application has a route yet\n")
            return plain(200, "success")
        if path == "/-/routes":
            routes = {
                a.route_prefix: a.name
                for a in self._controller.apps.values()
                if a.route_prefix is not None
            }
            return _json(routes)
        if path == "/-/status":
            return _json(attrs.asdict(self._controller.status()))
        if path == "/-/metrics":
            text = await self.metrics_text()
            return HTTPReply(
                200, [("content-type", "text/plain; version=0.0.4; charset=utf-8")], text.encode()
            )
        return plain(404, f"no operations endpoint {path}\n")

    async def metrics_text(self) -> str:
        handle_requests = Counter(
            "trioserve_handle_requests_total", "Requests sent through Python handles"
        )
        handle_errors = Counter(
            "trioserve_handle_errors_total", "Handle requests that ended in an error"
        )
        handle_latency = Histogram(
            "trioserve_handle_request_duration_seconds", "Handle request latency"
        )
        queued = Gauge("trioserve_handle_queued_requests", "Requests waiting in handle queues")
        http_queued = Gauge(
            "trioserve_http_queued_requests", "HTTP requests waiting for a replica in the proxy"
        )
        ongoing = Gauge("trioserve_handle_ongoing_requests", "Requests in flight from handles")
        labels: Labels
        for (app, dep), router in self._controller.routers.items():
            labels = (("application", app), ("deployment", dep))
            handle_requests.inc(labels, router.requests.get("handle", 0))
            handle_errors.inc(labels, router.errors.get("handle", 0))
            entry = router.latency.values.get((("source", "handle"),))
            if entry is not None:
                handle_latency.merge(labels, *entry)
            queued.set(labels, router.queued_by_source("handle") + router.resolving)
            if (app, dep, "__serve_http__") in self._handles:
                http_queued.set(labels, router.queued_by_source("http"))
            ongoing.set(labels, router.ongoing.get("handle", 0))
        replicas_gauge = Gauge("trioserve_replicas", "Replicas by deployment and state")
        for app_state in self._controller.apps.values():
            for state in app_state.deployments.values():
                labels = (("application", app_state.name), ("deployment", state.name))
                by_state = collections.Counter(str(s) for s in state.states.values())
                for replica_state in ("PENDING", "STARTING", "RUNNING", "STOPPING"):
                    replicas_gauge.set((*labels, ("state", replica_state)), by_state[replica_state])
        (
            replica_requests,
            replica_errors,
            replica_latency,
            replica_ongoing,
            extra,
        ) = await self._replica_metrics()
        http_errors = Counter("trioserve_http_errors_total", "HTTP requests answered with 5xx")
        for labels, value in self.requests.values.items():
            if dict(labels)["status"].startswith("5"):
                http_errors.inc(labels, value)
        return render(
            [
                handle_requests,
                handle_errors,
                handle_latency,
                queued,
                ongoing,
                self.requests,
                http_errors,
                self.latency,
                http_queued,
                self.ongoing,
                replica_requests,
                replica_errors,
                replica_latency,
                replica_ongoing,
                replicas_gauge,
                *extra,
            ]
        )

    async def _replica_metrics(
        self,
    ) -> tuple[Counter, Counter, Histogram, Gauge, list[Counter | Gauge | Histogram]]:
        requests = Counter(
            "trioserve_replica_requests_total", "Requests processed by replicas, by method"
        )
        errors = Counter("trioserve_replica_errors_total", "Requests that raised in replicas")
        latency = Histogram(
            "trioserve_replica_processing_seconds", "Time replicas spent on requests"
        )
        ongoing = Gauge(
            "trioserve_replica_ongoing_requests", "Requests running in replicas, by deployment"
        )
        targets: list[tuple[Labels, Any]] = []
        for app_state in self._controller.apps.values():
            for state in app_state.deployments.values():
                for actor in list(state.replicas.values()):
                    targets.append(
                        ((("application", app_state.name), ("deployment", state.name)), actor.ref)
                    )
        results: list[tuple[Labels, ReplicaMetricsSnapshot]] = []

        async def fetch(labels: Labels, ref: Any) -> None:
            with trio.move_on_after(METRICS_TIMEOUT_S):
                try:
                    results.append((labels, await ref.call("__serve_metrics__")))
                except Exception:  # why: a replica that cannot answer is left out of the page
                    return

        async with trio.open_nursery() as nursery:
            for target_labels, ref in targets:
                nursery.start_soon(fetch, target_labels, ref)
        for base, snapshot in results:
            ongoing.inc(base, snapshot.ongoing)
            for method, count in snapshot.requests.items():
                requests.inc((*base, ("method", method)), count)
            for method, count in snapshot.errors.items():
                errors.inc((*base, ("method", method)), count)
            for entry in snapshot.latency:
                latency.merge((*base, ("method", entry.method)), entry.counts, entry.total, entry.n)
        return requests, errors, latency, ongoing, _model_metrics(results)


def _json(value: Any) -> HTTPReply:
    return HTTPReply(200, [("content-type", "application/json")], msgspec.json.encode(value))


#: the HTTP header that names a request's multiplexed model (Ray Serve's name)
MODEL_ID_HEADER = "serve_multiplexed_model_id"


def _model_metrics(
    results: list[tuple[Labels, ReplicaMetricsSnapshot]],
) -> list[Counter | Gauge | Histogram]:
    """``@serve.batch`` and ``@serve.multiplexed`` families from replica snapshots (and the
    serve process's own batches, which inline replicas run)."""
    sizes = Histogram("trioserve_batch_size", "Items per batch of @serve.batch", BATCH_SIZE_BUCKETS)
    waits = Histogram(
        "trioserve_batch_wait_seconds",
        "Time items of @serve.batch waited for their batch to start",
        BATCH_WAIT_BUCKETS_S,
    )
    for batch in snapshot_batch_metrics():
        batch.merge_into(sizes, waits, (("function", batch.function),))
    loaded = Gauge("trioserve_multiplexed_models_loaded", "Models held by each replica")
    loads = Counter("trioserve_multiplexed_model_loads_total", "Models loaded by replicas")
    load_s = Counter(
        "trioserve_multiplexed_model_load_seconds_total", "Time replicas spent loading models"
    )
    hits = Counter("trioserve_multiplexed_cache_hits_total", "Requests whose model was loaded")
    misses = Counter("trioserve_multiplexed_cache_misses_total", "Requests that loaded a model")
    for base, snapshot in results:
        for batch in snapshot.batches:
            batch.merge_into(sizes, waits, (*base, ("function", batch.function)))
        stats = snapshot.multiplex
        if stats is not None:
            loaded.inc(base, stats.loaded)
            loads.inc(base, stats.loads)
            load_s.inc(base, round(stats.load_seconds, 6))
            hits.inc(base, stats.hits)
            misses.inc(base, stats.misses)
    return [sizes, waits, loaded, loads, load_s, hits, misses]
