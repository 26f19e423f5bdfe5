"""The serve instance: ``async with open_serve() as instance`` in a Trio app."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

import actors

from ._control.controller import Controller
from ._deployment import Application
from ._handles import context as _context
from ._handles.handle import DeploymentHandle
from ._handles.router import Router
from ._http.proxy import HTTPProxy
from ._http.server import HTTPLimits, HTTPServer
from ._status import ServeStatus

SHUTDOWN_TIMEOUT_S = 30.0
#: on shutdown, how long HTTP requests in flight get to be answered
HTTP_DRAIN_TIMEOUT_S = 10.0


class ServeInstance:
    """A running serve instance: its controller, replicas and routers live in the nursery
    of :func:`open_serve`."""

    def __init__(self, controller: Controller, http_host: str, http_port: int | None) -> None:
        self._controller = controller
        self.trio_token = trio.lowlevel.current_trio_token()
        self.http_host = http_host
        #: the port the HTTP proxy listens on (the bound one when 0 was asked), or None
        self.http_port = http_port
        self.proxy: HTTPProxy | None = None

    @property
    def http_url(self) -> str | None:
        if self.http_port is None:
            return None
        return f"http://{self.http_host}:{self.http_port}"

    def router(self, app: str, deployment: str) -> Router:
        return self._controller.router(app, deployment)

    async def run(
        self,
        app: Application,
        *,
        name: str = "default",
        route_prefix: str | None = "/",
        local_testing_mode: bool = False,
    ) -> DeploymentHandle:
        """Deploy ``app`` (replacing an application of the same name) and return a handle to
        its ingress deployment once every replica of every deployment is running. A
        deployment that cannot start raises :class:`DeploymentFailedError` from its error."""
        if not isinstance(app, Application):
            raise TypeError(f"run() takes an application made with Deployment.bind(), got {app!r}")
        if route_prefix is not None and not route_prefix.startswith("/"):
            raise ValueError(f"route_prefix must start with '/', got {route_prefix!r}")
        await self._controller.deploy(app, name, route_prefix, force_inline=local_testing_mode)
        return self.get_app_handle(name)

    def get_app_handle(self, name: str = "default") -> DeploymentHandle:
        ingress = self._controller.app_ingress(name)
        return DeploymentHandle(ingress, name, _context=self)

    def get_deployment_handle(
        self, deployment_name: str, app_name: str = "default"
    ) -> DeploymentHandle:
        return DeploymentHandle(deployment_name, app_name, _context=self)

    def find_deployment_app(self, deployment_name: str) -> str:
        return self._controller.find_deployment_app(deployment_name)

    async def status(self) -> ServeStatus:
        await trio.lowlevel.checkpoint()
        return self._controller.status()

    async def delete(self, name: str) -> None:
        """Drain and stop an application's replicas."""
        await self._controller.delete(name)


@asynccontextmanager
async def open_serve(
    *,
    http_host: str = "127.0.0.1",
    http_port: int | None = 8000,
    request_timeout_s: float | None = None,
    http_limits: HTTPLimits | None = None,
    show_tracebacks: bool = False,
) -> AsyncIterator[ServeInstance]:
    """Open a serve instance for this block.

    ``http_port=None`` runs no HTTP proxy; ``0`` picks a free port (see
    ``instance.http_port``). ``request_timeout_s`` bounds HTTP requests (504 past it).

    Tasks: the controller, its listener, the HTTP proxy and its connections, every
    deployment's supervisor and replicas, and the routers' timers, in this block's nursery.
    Leaving the block drains the proxy (no new connections; requests in flight are answered,
    for up to ``HTTP_DRAIN_TIMEOUT_S``), drains every application and stops every replica
    process (no process outlives the block). An error raised in the block comes out of it
    unwrapped (it is the only one the block can end with).
    """
    with actors.unwrap_lone_error():
        async with (
            actors.open_actor_system(preload=("trioserve._replica.replica",)) as system,
            trio.open_nursery() as nursery,
        ):
            controller = Controller(system, nursery)
            await nursery.start(controller.serve_api)
            instance = ServeInstance(controller, http_host, http_port)
            http_scope = trio.CancelScope()
            server: HTTPServer | None = None
            if http_port is not None:
                proxy = HTTPProxy(
                    instance,
                    controller,
                    request_timeout_s=request_timeout_s,
                    show_tracebacks=show_tracebacks,
                )
                instance.proxy = proxy
                server = HTTPServer(proxy.handle, http_limits)

                async def run_http(task_status: trio.TaskStatus[int]) -> None:
                    assert server is not None
                    with http_scope:
                        await server.serve(host=http_host, port=http_port, task_status=task_status)

                instance.http_port = await nursery.start(run_http)
            previous = _context.current_or_none()
            _context.set_current(instance)
            try:
                yield instance
            finally:
                _context.set_current(previous)
                with trio.CancelScope(shield=True) as cleanup:  # why: drain and reap, bounded
                    cleanup.deadline = trio.current_time() + SHUTDOWN_TIMEOUT_S
                    if server is not None:
                        await server.drain(HTTP_DRAIN_TIMEOUT_S)
                    http_scope.cancel()
                    await controller.shutdown()
                nursery.cancel_scope.cancel()
