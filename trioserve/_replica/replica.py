"""The replica: the actor object behind each replica.

``Replica`` builds the user's object (on a worker thread), applies ``user_config`` through
``reconfigure``, and resolves method names for calls. The routers of the handles it holds
come from :class:`~trioserve._replica.process_context.ReplicaProcessContext`.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio

import actors

from .._handles import context as _context
from .._metrics import Histogram
from .._ship import unship
from .asgi import ASGI_ATTR, run_asgi
from .http import STREAM_HEAD, Request, chunk_bytes, response_head
from .process_context import ReplicaProcessContext

ENV_CONTROLLER = "TRIOSERVE_CONTROLLER"
_INTERNAL = {
    "__serve_http__": "serve_http",
    "__serve_metrics__": "serve_metrics",
    "__serve_reconfigure__": "reconfigure",
}


class ReplicaMetrics:
    """Requests, errors and latency per method, as seen by the replica."""

    def __init__(self) -> None:
        self.requests: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self.latency = Histogram("latency", "")

    def observe(self, method: str, seconds: float, ok: bool) -> None:
        self.requests[method] = self.requests.get(method, 0) + 1
        if not ok:
            self.errors[method] = self.errors.get(method, 0) + 1
        self.latency.observe((("method", method),), seconds)

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": dict(self.requests),
            "errors": dict(self.errors),
            "latency": [
                [dict(labels)["method"], counts, total, n]
                for labels, (counts, total, n) in self.latency.values.items()
            ],
        }


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
    ) -> None:
        self.info = info
        self.is_function = is_function
        target = unship(target)
        self.user: Any = target if is_function else target(*args, **kwargs)
        self.user_config = user_config
        self.metrics = ReplicaMetrics()
        self._asgi: tuple[Any] | None = None
        self._host: actors.ActorHost | None = None

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
        if inspect.iscoroutinefunction(fn):
            await fn(config)
        else:
            await trio.to_thread.run_sync(fn, config)
        self.user_config = config

    # -- metrics

    def __actor_attach__(self, host: actors.ActorHost) -> None:
        self._host = host
        host.observer = self._observe
        # health checks, reconfiguration and metrics must reach a replica that is busy
        host.control_methods = frozenset({"check_health", *_INTERNAL} - {"__serve_http__"})

    def _observe(self, method: str, seconds: float, ok: bool) -> None:
        if method in _INTERNAL:
            return
        self.metrics.observe(method, seconds, ok)

    async def serve_metrics(self) -> dict[str, Any]:
        await trio.lowlevel.checkpoint()
        ongoing = self._host.ongoing if self._host is not None else 0
        return {**self.metrics.snapshot(), "ongoing": ongoing}

    # -- HTTP

    @actors.push_stream
    async def serve_http(
        self,
        emit: Callable[[Any], Awaitable[None]],
        method: str,
        path: str,
        query_string: str,
        headers: dict[str, str],
        body: bytes,
        route_prefix: str,
    ) -> None:
        """Answer one HTTP request: emits the head ``[status, headers, whole]`` and then the
        body (one chunk when ``whole``, else a stream of chunks)."""
        started = trio.current_time()
        ok = False
        try:
            asgi_app = self._asgi_app()
            if asgi_app is not None:
                await run_asgi(
                    asgi_app,
                    emit,
                    method=method,
                    path=path,
                    query_string=query_string,
                    headers=headers,
                    body=body,
                    route_prefix=route_prefix,
                )
            else:
                request = Request(
                    method=method,
                    path=path,
                    query_string=query_string,
                    headers=headers,
                    body=body,
                    route_prefix=route_prefix,
                )
                await self._call_for_http(emit, request)
            ok = True
        finally:
            self.metrics.observe("__http__", trio.current_time() - started, ok)

    def _asgi_app(self) -> Any:
        if self._asgi is None:
            mounted = getattr(self.user, ASGI_ATTR, None)
            self._asgi = (mounted.get(),) if mounted is not None else (None,)
        return self._asgi[0]

    async def _call_for_http(
        self, emit: Callable[[Any], Awaitable[None]], request: Request
    ) -> None:
        fn = self.__actor_dispatch__("__call__")
        kind = actors.method_kind(fn)
        if kind == "asyncgen":
            await emit(STREAM_HEAD)
            async for item in fn(request):
                await emit(chunk_bytes(item))
        elif kind == "syncgen":
            await emit(STREAM_HEAD)
            gen = fn(request)
            done = object()
            try:
                while (item := await trio.to_thread.run_sync(next, gen, done)) is not done:
                    await emit(chunk_bytes(item))
            finally:
                gen.close()
        else:
            if kind == "async":
                value = await fn(request)
            else:
                value = await trio.to_thread.run_sync(fn, request)
            head, whole = response_head(value)
            await emit([*head, True])
            await emit(whole)

    # -- dispatch

    def __actor_dispatch__(self, name: str) -> Callable[..., Any]:
        if name in _INTERNAL:
            return getattr(self, _INTERNAL[name])  # type: ignore[no-any-return]
        if self.is_function:
            if name != "__call__":
                raise AttributeError(
                    f"function deployment {self.info.deployment!r} has no method {name!r}"
                )
            return self.user  # type: ignore[no-any-return]
        if name.startswith("_") and name != "__call__":
            raise AttributeError(f"deployment {self.info.deployment!r}: method {name!r} is private")
        fn = getattr(self.user, name, None)
        if fn is None or not callable(fn):
            raise AttributeError(f"deployment {self.info.deployment!r} has no method {name!r}")
        return fn  # type: ignore[no-any-return]
