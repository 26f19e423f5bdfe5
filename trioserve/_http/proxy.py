"""The HTTP proxy: routes requests to applications' ingress deployments through ordinary
handles (so HTTP traffic is balanced, buffered and counted like handle traffic), maps
failures to status codes, and serves the operations endpoints under ``/-/``."""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import attrs
import msgspec
import trio

from .._handles.handle import DeploymentHandle
from .._metrics import Counter, Gauge, Histogram, Labels, render
from .._replica.http import Request
from ..exceptions import BackPressureError, DeploymentUnavailableError
from .server import HTTPReply, plain

if TYPE_CHECKING:
    from .._control.controller import Controller
    from .._instance import ServeInstance

METRICS_TIMEOUT_S = 2.0


class HTTPProxy:
    """Answers HTTP requests for a serve instance (served by ``_http_server.serve_http``)."""

    def __init__(
        self,
        instance: ServeInstance,
        controller: Controller,
        *,
        request_timeout_s: float | None = None,
        show_tracebacks: bool = False,
    ) -> None:
        self._instance = instance
        self._controller = controller
        self.request_timeout_s = request_timeout_s
        self.show_tracebacks = show_tracebacks
        self._handles: dict[tuple[str, str], DeploymentHandle] = {}
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
        """The application whose route prefix is the longest match for ``path``."""
        best: tuple[int, str] | None = None
        for app in self._controller.apps.values():
            prefix = app.route_prefix
            if prefix is None or app.status not in ("RUNNING", "DEPLOYING"):
                continue
            root = prefix.rstrip("/")
            matches = path == root or path.startswith(root + "/") or prefix == "/"
            if matches and (best is None or len(root) > best[0]):
                best = (len(root), app.name)
        return best[1] if best else None

    def _handle(self, app: str) -> DeploymentHandle:
        ingress = self._controller.app_ingress(app)
        key = (app, ingress)
        handle = self._handles.get(key)
        if handle is None:
            handle = DeploymentHandle(
                ingress, app, method_name="__serve_http__", stream=True, _context=self._instance
            )
            handle._source = "http"
            self._handles[key] = handle
        return handle

    # -- requests

    async def handle(self, request: Request) -> HTTPReply:
        if request.path.startswith("/-/"):
            return await self._operations(request)
        app = self.match(request.path)
        if app is None:
            self.requests.inc((("application", ""), ("deployment", ""), ("status", "404")))
            return plain(404, f"no application serves {request.path}\n")
        handle = self._handle(app)
        labels: Labels = (("application", app), ("deployment", handle.deployment_name))
        started = trio.current_time()
        self.ongoing.inc(labels)
        try:
            reply = await self._forward(app, handle, request)
        finally:
            self.ongoing.inc(labels, -1)
        self.requests.inc((*labels, ("status", str(reply.status))))
        self.latency.observe(labels, trio.current_time() - started)
        return reply

    async def _forward(self, app: str, handle: DeploymentHandle, request: Request) -> HTTPReply:
        route_prefix = self._controller.apps[app].route_prefix or "/"
        stream = handle.remote(
            request.method,
            request.path,
            request.query_string,
            dict(request.headers),
            request.body,
            route_prefix,
        )
        try:
            with trio.move_on_after(self.request_timeout_s or float("inf")) as timer:
                head = await stream.__anext__()
                whole = len(head) > 2 and head[2]
                body: bytes | AsyncIterator[bytes]
                if whole:
                    body = await stream.__anext__()
                else:
                    body = _rest(stream)
            if timer.cancelled_caught:
                stream.cancel()
                return plain(504, f"request timed out after {self.request_timeout_s}s\n")
        except BackPressureError as exc:
            return plain(503, f"{exc}\n", [("retry-after", "1")])
        except DeploymentUnavailableError as exc:
            return plain(503, f"{exc}\n")
        except Exception as exc:
            return self._error_reply(exc)
        headers = [(str(k), str(v)) for k, v in head[1]]
        return HTTPReply(int(head[0]), headers, body)

    def _error_reply(self, exc: BaseException) -> HTTPReply:
        text = f"Internal Server Error: {type(exc).__name__}: {exc}\n"
        if self.show_tracebacks:
            text += getattr(exc, "remote_traceback", "")
        return plain(500, text)

    # -- operations

    async def _operations(self, request: Request) -> HTTPReply:
        path = request.path
        if path == "/-/healthz":
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
            if (app, dep) in self._handles:
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
            ]
        )

    async def _replica_metrics(self) -> tuple[Counter, Counter, Histogram, Gauge]:
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
        results: list[tuple[Labels, dict[str, Any]]] = []

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
            ongoing.inc(base, snapshot.get("ongoing", 0))
            for method, count in snapshot["requests"].items():
                requests.inc((*base, ("method", method)), count)
            for method, count in snapshot["errors"].items():
                errors.inc((*base, ("method", method)), count)
            for method, counts, total, n in snapshot["latency"]:
                latency.merge((*base, ("method", method)), counts, total, n)
        return requests, errors, latency, ongoing


async def _rest(stream: Any) -> AsyncIterator[bytes]:
    async for chunk in stream:
        yield chunk


def _json(value: Any) -> HTTPReply:
    return HTTPReply(200, [("content-type", "application/json")], msgspec.json.encode(value))
