"""The replica: the actor object behind each replica.

``Replica`` builds the user's object (on a worker thread), applies ``user_config`` through
``reconfigure``, and resolves method names for calls. The routers of the handles it holds
come from :class:`~trioserve._replica.process_context.ReplicaProcessContext`.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

import attrs
import trio
from starlette.requests import Request as StarletteRequest
from starlette.responses import Response as StarletteResponse

import actors
import actors.lowlevel

from .._exchange import WSClose, decode_head, encode
from .._handles import context as _context
from .._handles.messages import (
    MODEL_SEP,
    MethodLatency,
    ModelCacheCounters,
    ReplicaMetricsSnapshot,
)
from .._metrics import Histogram
from .._ship import unship
from .asgi import ASGI_ATTR, run_asgi, run_asgi_websocket
from .asyncio_loop import AsyncioThread, note_asyncio_misuse
from .batching import snapshot_batch_metrics
from .http import (
    STREAM_START,
    Emit,
    Receive,
    ResponseSender,
    asgi_scope,
    body_receiver,
    chunk_bytes,
    response_start,
)
from .multiplex import register_owner, split_method, with_model_id
from .process_context import ReplicaProcessContext
from .request_context import RequestContext, request_context

ENV_CONTROLLER = "TRIOSERVE_CONTROLLER"
_INTERNAL = {
    "__serve_http__": "serve_http",
    "__serve_ws__": "serve_ws",
    "__serve_metrics__": "serve_metrics",
    "__serve_reconfigure__": "reconfigure",
}


class ReplicaMetrics:
    """Requests, errors and latency per method, as seen by the replica."""

    def __init__(self) -> None:
        self.requests: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self.latency = Histogram("latency", "")
        #: the latency labels of each method seen (one tuple per method, not per call)
        self._labels: dict[str, tuple[tuple[str, str]]] = {}

    def observe(self, method: str, seconds: float, ok: bool) -> None:
        requests = self.requests
        requests[method] = requests.get(method, 0) + 1
        if not ok:
            self.errors[method] = self.errors.get(method, 0) + 1
        labels = self._labels.get(method)
        if labels is None:
            labels = self._labels[method] = (("method", method),)
        self.latency.observe(labels, seconds)

    def latencies(self) -> list[MethodLatency]:
        return [
            MethodLatency(method=dict(labels)["method"], counts=list(counts), total=total, n=n)
            for labels, (counts, total, n) in self.latency.values.items()
        ]


@attrs.frozen(kw_only=True)
class ReplicaInfo:
    app: str
    deployment: str
    replica_id: str


class Replica:
    """Hosts one user object. Built on a worker thread by the actor runtime."""

    def __init__(
        self,
        info: ReplicaInfo,
        target: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        is_function: bool,
        user_config: Any = None,
        event_loop: str = "trio",
    ) -> None:
        self.info = info
        self.is_function = is_function
        #: the asyncio loop that runs the user's async methods (``event_loop="asyncio"``)
        self.asyncio = AsyncioThread() if event_loop == "asyncio" else None
        if os.environ.get(ENV_CONTROLLER):  # a replica process hosts this replica only
            _context.set_replica_context(self)
        target = unship(target)
        self.user: Any = target if is_function else target(*args, **kwargs)
        self.user_config = user_config
        self.metrics = ReplicaMetrics()
        self._asgi: tuple[Any] | None = None
        self._takes_request: bool | None = None
        self._host: actors.lowlevel.ActorHost | None = None
        #: the model cache's counters, when the deployment has a ``@serve.multiplexed``
        self.multiplex_stats = register_owner(self.user, self._report_models)

    async def _report_models(self, model_ids: list[str]) -> None:
        """Tell the controller which models this replica holds (model-aware routing)."""
        report = getattr(_context.current_or_none(), "report_models", None)
        if report is not None:
            await report(self.info.app, self.info.deployment, self.info.replica_id, model_ids)

    async def __actor_start__(self) -> None:
        if _context.current_or_none() is None:
            address = os.environ.get(ENV_CONTROLLER)
            token = actors.instance_token()
            if address and token:
                context = ReplicaProcessContext(address, token, app=self.info.app)
                await context.start()
                _context.set_current(context)
        if self.user_config is not None:
            await self.reconfigure(self.user_config)

    async def reconfigure(self, config: Any) -> None:
        fn = getattr(self.user, "reconfigure", None)
        if fn is None:
            raise TypeError(
                f"deployment {self.info.deployment!r} has a user_config but no reconfigure() method"
            )
        if self.asyncio is not None:
            fn = self.asyncio.wrap(fn)
        if inspect.iscoroutinefunction(fn):
            await fn(config)
        else:
            await trio.to_thread.run_sync(fn, config)
        self.user_config = config

    # -- metrics

    def __actor_attach__(self, host: actors.lowlevel.ActorHost) -> None:
        self._host = host
        host.observer = self._observe
        if self.asyncio is None:
            host.on_error = note_asyncio_misuse  # asyncio code run on Trio says what to set
        # health checks, reconfiguration and metrics must reach a replica that is busy
        host.control_methods = frozenset(
            {"check_health", *_INTERNAL} - {"__serve_http__", "__serve_ws__"}
        )

    def _observe(self, method: str, seconds: float, ok: bool) -> None:
        if method in _INTERNAL:
            return
        if MODEL_SEP in method:
            method = split_method(method)[0]
        self.metrics.observe(method, seconds, ok)

    async def serve_metrics(self) -> ReplicaMetricsSnapshot:
        await trio.lowlevel.checkpoint()
        stats = self.multiplex_stats
        # batches of this process (an inline replica's are the serve process's own)
        in_process = isinstance(_context.current_or_none(), ReplicaProcessContext)
        return ReplicaMetricsSnapshot(
            requests=dict(self.metrics.requests),
            errors=dict(self.metrics.errors),
            latency=self.metrics.latencies(),
            ongoing=self._host.ongoing if self._host is not None else 0,
            multiplex=ModelCacheCounters(**attrs.asdict(stats)) if stats is not None else None,
            batches=snapshot_batch_metrics() if in_process else [],
        )

    # -- HTTP

    @actors.lowlevel.duplex_stream
    async def serve_http(self, emit: Emit, rest: AsyncIterator[bytes], head: bytes) -> None:
        """Answer one HTTP request (an encoded ``RequestHead``; with ``more_body``, the
        rest of the body is the request stream ``rest``): emits the response as
        ``trioserve._exchange`` describes."""
        started = trio.current_time()
        ok = False
        request = decode_head(head)
        context = RequestContext(
            request_id=request.request_id, route=request.route_prefix, app_name=self.info.app
        )
        try:
            with request_context(context):
                scope = asgi_scope(request)
                receive = body_receiver(request, rest)
                asgi_app = self._asgi_app()
                if asgi_app is not None:
                    await run_asgi(asgi_app, scope, receive, emit, instance=self.user)
                else:
                    await self._call_for_http(emit, scope, receive)
            ok = True
        finally:
            self.metrics.observe("__http__", trio.current_time() - started, ok)

    @actors.lowlevel.duplex_stream
    async def serve_ws(self, emit: Emit, incoming: AsyncIterator[bytes], head: bytes) -> None:
        """Run one WebSocket session through the deployment's ASGI app: ``incoming``
        carries the client's messages, ``emit`` the app's events (``trioserve._exchange``).
        A deployment without an ASGI app refuses the handshake."""
        request = decode_head(head)
        asgi_app = self._asgi_app()
        if asgi_app is None:
            await emit(encode(WSClose(code=1000, reason="this deployment takes no WebSockets")))
            return
        context = RequestContext(
            request_id=request.request_id, route=request.route_prefix, app_name=self.info.app
        )
        started = trio.current_time()
        ok = False
        try:
            with request_context(context):
                scope = asgi_scope(request)
                await run_asgi_websocket(asgi_app, scope, incoming, emit, instance=self.user)
            ok = True
        finally:
            self.metrics.observe("__websocket__", trio.current_time() - started, ok)

    def _asgi_app(self) -> Any:
        if self._asgi is None:
            mounted = getattr(self.user, ASGI_ATTR, None)
            cls = None if self.is_function else type(self.user)
            self._asgi = (mounted.get(cls),) if mounted is not None else (None,)
        return self._asgi[0]

    def _call_takes_request(self, fn: Callable[..., Any]) -> bool:
        """Whether ``__call__`` has a parameter for the request (``def __call__(self)`` is
        called without one)."""
        if self._takes_request is None:
            try:
                self._takes_request = bool(inspect.signature(fn).parameters)
            except (TypeError, ValueError):
                self._takes_request = True
        return self._takes_request

    async def _call_for_http(self, emit: Emit, scope: dict[str, Any], receive: Receive) -> None:
        fn = self.__actor_dispatch__("__call__")
        args: tuple[Any, ...] = ()
        if self._call_takes_request(fn):
            args = (StarletteRequest(scope, receive),)
        kind = actors.lowlevel.method_kind(fn)
        if kind == "asyncgen" or kind == "syncgen":
            await _stream(emit, fn(*args), kind)
        else:
            if kind == "async":
                value = await fn(*args)
            else:
                value = await trio.to_thread.run_sync(fn, *args)
            await _send_value(emit, value, scope, receive)

    # -- dispatch

    def __actor_dispatch__(self, name: str) -> Callable[..., Any]:
        if MODEL_SEP in name:
            method, model_id = split_method(name)
            return with_model_id(self.__actor_dispatch__(method), model_id)
        if name in _INTERNAL:
            return getattr(self, _INTERNAL[name])  # type: ignore[no-any-return]  # why: a method
        if self.is_function:
            if name != "__call__":
                raise AttributeError(
                    f"function deployment {self.info.deployment!r} has no method {name!r}"
                )
            user: Callable[..., Any] = self.user
            return self.asyncio.wrap(user) if self.asyncio is not None else user
        if name.startswith("_") and name != "__call__":
            raise AttributeError(f"deployment {self.info.deployment!r}: method {name!r} is private")
        fn = getattr(self.user, name, None)
        if fn is None or not callable(fn):
            raise AttributeError(f"deployment {self.info.deployment!r} has no method {name!r}")
        if self.asyncio is not None:
            return self.asyncio.wrap(fn)
        return fn  # type: ignore[no-any-return]  # why: checked callable above


# -- HTTP responses


async def _stream(emit: Emit, items: Any, kind: Literal["asyncgen", "syncgen"]) -> None:
    """A generator's items as a chunked response (``str``/``bytes`` as they are, anything
    else as JSON lines)."""
    await emit(STREAM_START)

    async def send(item: Any) -> None:
        await emit(chunk_bytes(item))

    await actors.lowlevel.pump_generator(items, kind, send)


async def _send_value(emit: Emit, value: Any, scope: dict[str, Any], receive: Receive) -> None:
    """Send what a (non-generator) handler returned."""
    if isinstance(value, StarletteResponse):
        send = ResponseSender(emit)
        await value(scope, receive, send)
        await send.finish()
    elif inspect.isasyncgen(value):
        await _stream(emit, value, "asyncgen")
    elif inspect.isgenerator(value):
        await _stream(emit, value, "syncgen")
    else:
        start, whole = response_start(value)
        await emit(encode(start))
        await emit(whole)
