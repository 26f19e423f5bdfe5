"""The serve instance: ``async with open_serve() as instance`` in a Trio app."""

from __future__ import annotations

import contextlib
import errno
import secrets
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import trio

import actors

from ._control.controller import Controller
from ._control.fd_budget import connection_bounds, open_file_limit
from ._control.resources import detect_capacity
from ._deployment import Application
from ._handles import context as _context
from ._handles.handle import DeploymentHandle
from ._handles.messages import ModelReport
from ._handles.router import Router
from ._http.control import ControlAPI
from ._http.proxy import HTTPProxy, validate_route_prefix
from ._http.server import HTTPLimits, HTTPServer
from ._runtime_file import remove_runtime_file, write_runtime_file
from ._schema import ApplicationSchema, ServeConfig, build_app, load_config
from ._status import ServeStatus
from .exceptions import PortInUseError

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
        #: the control endpoint's address (``http://host:port``), or None
        self.control_url: str | None = None
        #: set when a client asks the instance to stop (``POST /api/shutdown``); whoever
        #: owns the instance (``trioserve run/start``, ``serve.start``) leaves its block
        self.shutdown_requested = trio.Event()
        self._applied: dict[str, ApplicationSchema] = {}
        self._config: ServeConfig | None = None

    @property
    def http_url(self) -> str | None:
        """The HTTP proxy's address (``http://host:port``), or None if it runs none."""
        if self.http_port is None:
            return None
        return f"http://{self.http_host}:{self.http_port}"

    def router(self, app: str, deployment: str) -> Router:
        """This process's router for a deployment (made on first use, shared by every
        handle to it here); its requests fail with DeploymentUnavailableError while the
        deployment does not exist."""
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
        if route_prefix is not None:
            validate_route_prefix(route_prefix)
        await self._controller.deploy(app, name, route_prefix, force_inline=local_testing_mode)
        return self.get_app_handle(name)

    async def report_models(
        self, app: str, deployment: str, replica_id: str, model_ids: list[str]
    ) -> None:
        """An inline replica's multiplexed models changed (model-aware routing)."""
        await trio.lowlevel.checkpoint()
        report = ModelReport(
            app=app, deployment=deployment, replica_id=replica_id, model_ids=model_ids
        )
        self._controller.report_models(report)

    def get_app_handle(self, name: str = "default") -> DeploymentHandle:
        """A handle to application ``name``'s ingress deployment, as Ray Serve's
        ``serve.get_app_handle``; raises DeploymentUnavailableError if no such application
        runs."""
        ingress = self._controller.app_ingress(name)
        return DeploymentHandle(ingress, name, _context=self)

    def get_deployment_handle(
        self, deployment_name: str, app_name: str = "default"
    ) -> DeploymentHandle:
        """A handle to a deployment of an application, as Ray Serve's
        ``serve.get_deployment_handle``; made without a check: calls to a deployment that
        does not exist fail with DeploymentUnavailableError."""
        return DeploymentHandle(deployment_name, app_name, _context=self)

    def find_deployment_app(self, deployment_name: str) -> str:
        """The name of the (first) running application that has a deployment of this
        name; raises DeploymentUnavailableError if none has."""
        return self._controller.find_deployment_app(deployment_name)

    async def status(self) -> ServeStatus:
        """A snapshot of every application, deployment and replica (``serve.status()``)."""
        await trio.lowlevel.checkpoint()
        return self._controller.status()

    async def delete(self, name: str) -> None:
        """Drain and stop an application's replicas."""
        self._applied.pop(name, None)
        await self._controller.delete(name)

    # -- config files (the control endpoint and ``trioserve run CONFIG``)

    async def apply(self, config: ServeConfig | dict[str, Any] | str | Path) -> None:
        """Make the running applications those of ``config`` (a path, a dict or a
        :class:`ServeConfig`): applications not in it are deleted, changed ones updated in
        place or rolled as :meth:`run` does, unchanged ones left alone."""
        cfg = config if isinstance(config, ServeConfig) else load_config(config)
        wanted = {app.name: app for app in cfg.applications}
        for name in list(self._controller.apps):
            if name not in wanted:
                await self.delete(name)
        for app_schema in cfg.applications:
            if self._applied.get(app_schema.name) == app_schema:
                continue
            application = build_app(app_schema)
            await self.run(application, name=app_schema.name, route_prefix=app_schema.route_prefix)
            self._applied[app_schema.name] = app_schema
        self._config = cfg

    def config_in_force(self) -> dict[str, Any]:
        """The config last applied, with only the applications still running."""
        if self._config is None:
            return {"applications": []}
        apps = [a for a in self._config.applications if a.name in self._applied]
        result: dict[str, Any] = msgspec.to_builtins(
            msgspec.structs.replace(self._config, applications=apps)
        )
        return result

    def parse_config(self, data: bytes) -> ServeConfig:
        """A config from the bytes of a request body (JSON or YAML); ValueError if bad."""
        return load_config(data)

    def request_shutdown(self) -> None:
        """Set :attr:`shutdown_requested`; stops nothing itself: the instance's owner
        leaves its ``open_serve`` block when it sees the event."""
        self.shutdown_requested.set()


@asynccontextmanager
async def open_serve(
    *,
    http_host: str = "127.0.0.1",
    http_port: int | None = 8000,
    request_timeout_s: float | None = None,
    http_limits: HTTPLimits | None = None,
    show_tracebacks: bool = False,
    control_host: str = "127.0.0.1",
    control_port: int | None = None,
    token: str | None = None,
    resources: Mapping[str, float] | None = None,
    access_log: bool = False,
) -> AsyncIterator[ServeInstance]:
    """Open a serve instance for this block.

    ``http_port=None`` runs no HTTP proxy; ``0`` picks a free port (see
    ``instance.http_port``). ``request_timeout_s`` bounds HTTP requests (504 past it).
    ``control_port`` opens the control endpoint there (``0``: a free port; see
    ``instance.control_url``), which answers only requests carrying the instance token
    (``token``, or a new random one), and writes a runtime file so the CLI on this machine
    finds the token; ``None`` (the default here; the CLI's is 8265) opens none.
    ``resources`` overrides what the host offers replicas (``num_cpus``, ``num_gpus``,
    ``memory``, custom names); by default CPUs come from the machine and GPUs from
    ``CUDA_VISIBLE_DEVICES`` or ``nvidia-smi``. ``access_log`` logs one line per HTTP request
    (method, path, status, duration, request id) on the ``trioserve.access`` logger.

    Every listener holds a bounded number of connections, by default derived from the
    open-file limit so that a flood of them all leaves the descriptors replicas need to
    (re)start (``trioserve._control.fd_budget``); ``http_limits`` sets both HTTP listeners'.

    Tasks: the controller, its listener, the HTTP proxy and its connections, every
    deployment's supervisor and replicas, and the routers' timers, in this block's nursery.
    Leaving the block drains the proxy (no new connections; requests in flight are answered,
    for up to ``HTTP_DRAIN_TIMEOUT_S``), drains every application and stops every replica
    process (no process outlives the block). An error raised in the block comes out of it
    unwrapped (it is the only one the block can end with).
    """
    bounds = connection_bounds(open_file_limit())
    with actors.unwrap_lone_error():
        async with (
            actors.open_actor_system(
                preload=("trioserve._replica.replica",),
                token=token or secrets.token_urlsafe(32),
                max_connections=bounds.websocket,
            ) as system,
            trio.open_nursery() as nursery,
        ):
            controller = Controller(
                system,
                nursery,
                detect_capacity(overrides=resources),
                max_connections=bounds.websocket,
            )
            await nursery.start(controller.serve_api)
            instance = ServeInstance(controller, http_host, http_port)
            http_scope = trio.CancelScope()
            server: HTTPServer | None = None
            if http_port is not None:
                proxy = HTTPProxy(
                    instance,
                    controller,
                    nursery=nursery,
                    request_timeout_s=request_timeout_s,
                    show_tracebacks=show_tracebacks,
                    access_log=access_log,
                )
                instance.proxy = proxy
                server = HTTPServer(
                    proxy.handle, http_limits or HTTPLimits(max_connections=bounds.http)
                )

                async def run_http(task_status: trio.TaskStatus[int]) -> None:
                    assert server is not None
                    with http_scope:
                        await server.serve(host=http_host, port=http_port, task_status=task_status)

                with _port_in_use(http_host, http_port, "http_port=..., trioserve run --port"):
                    instance.http_port = await nursery.start(run_http)
            runtime_file: Path | None = None
            control_scope = trio.CancelScope()
            control_server: HTTPServer | None = None
            if control_port is not None:
                control = ControlAPI(instance, system.token, nursery)
                control_server = HTTPServer(
                    control.handle,
                    http_limits or HTTPLimits(max_connections=bounds.control_http),
                    gate=control.gate,
                )

                async def run_control(task_status: trio.TaskStatus[int]) -> None:
                    assert control_server is not None
                    with control_scope:
                        await control_server.serve(
                            host=control_host, port=control_port, task_status=task_status
                        )

                with _port_in_use(control_host, control_port, "control_port=..., --control-port"):
                    bound = await nursery.start(run_control)
                instance.control_url = f"http://{control_host}:{bound}"
                runtime_file = write_runtime_file(bound, instance.control_url, system.token)
            previous = _context.current_or_none()
            _context.set_current(instance)
            try:
                yield instance
            finally:
                _context.set_current(previous)
                if runtime_file is not None:
                    remove_runtime_file(runtime_file)
                with trio.CancelScope(shield=True) as cleanup:  # why: drain and reap, bounded
                    cleanup.deadline = trio.current_time() + SHUTDOWN_TIMEOUT_S
                    if server is not None:
                        await server.drain(HTTP_DRAIN_TIMEOUT_S)
                    if control_server is not None:  # a shutdown request gets its answer
                        await control_server.drain(HTTP_DRAIN_TIMEOUT_S)
                    http_scope.cancel()
                    control_scope.cancel()
                    await controller.shutdown()
                nursery.cancel_scope.cancel()


@contextlib.contextmanager
def _port_in_use(host: str, port: int, option: str) -> Iterator[None]:
    """Turn "address already in use" while binding into a one-line PortInUseError."""
    try:
        yield
    except (OSError, ExceptionGroup) as exc:
        if not _address_in_use(exc):
            raise
        raise PortInUseError(host, port, option) from None


def _address_in_use(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return any(_address_in_use(e) for e in exc.exceptions)
    return isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE
