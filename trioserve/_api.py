"""The script API: a serve instance on a background Trio thread, driven from plain code."""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, overload

import trio

import actors

from ._deployment import Application, set_handle_lookup
from ._handles import context as _context
from ._handles.handle import DeploymentHandle, SyncHandle, SyncResponse, check_not_in_loop
from ._handles.response import (
    DeploymentResponse,
    ResponseWrapper,
    check_blocking_allowed,
    run_on_loop,
)
from ._instance import ServeInstance, open_serve
from ._replica.process_context import ReplicaProcessContext
from ._replica.replica import ENV_CONTROLLER
from ._schema import ServeConfig, load_config
from ._status import ServeStatus
from .config import HTTPOptions
from .exceptions import RequestTimeoutError, ServeNotRunningError

T = TypeVar("T")

logger = logging.getLogger("trioserve")

#: how long a call broken by a crashing loop waits for the loop to end and name its error
_CRASH_JOIN_TIMEOUT_S = 10.0


class _Background:
    """A serve instance running ``trio.run`` on a daemon thread until ``stop()``.

    An error that ends the loop before the instance is ready is raised by the constructor.
    One that ends it later (the serve loop crashed) is logged on the ``trioserve`` logger
    and kept: every later script API call, and every call of a sync handle or response of
    this instance, raises ServeShutdownError from it (``serve.shutdown()`` discards this
    instance; the next ``serve.run()`` starts a new one).
    """

    def __init__(self, http: HTTPOptions) -> None:
        self._ready = threading.Event()
        self._error: BaseException | None = None
        #: set when the serve nursery starts failing: calls failing from then on wait for
        #: the loop's end to name its error
        self._failing = threading.Event()
        self.instance: ServeInstance | None = None
        self.token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._thread = threading.Thread(
            target=self._main, args=(http,), name="trioserve", daemon=True
        )
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error

    def _main(self, http: HTTPOptions) -> None:
        try:
            trio.run(self._amain, http)
        except BaseException as exc:  # why: reported to the thread that started us, or kept
            if not self._ready.is_set():
                self._error = exc
            else:
                if self.token is not None:  # already done by _amain, unless trio itself failed
                    _context.set_crash(self.token, exc)
                logger.error(
                    "the serve instance stopped with an error; calls to it raise "
                    "ServeShutdownError from this one until serve.shutdown()",
                    exc_info=exc,
                )
        finally:
            self._ready.set()

    async def _amain(self, http: HTTPOptions) -> None:
        try:
            async with open_serve(
                http_host=http.host, http_port=http.port, request_timeout_s=http.request_timeout_s
            ) as instance:
                self.instance = instance
                self.token = trio.lowlevel.current_trio_token()
                self._stop = trio.Event()
                self._ready.set()
                try:
                    await self._stop.wait()
                except trio.Cancelled:  # why: only a failing serve nursery cancels this; re-raised
                    self._failing.set()
                    raise
        except BaseException as exc:  # why: recorded while the loop still runs; re-raised
            if self._ready.is_set() and self.token is not None:
                # calls that the loop's end interrupts find the reason already there
                _context.set_crash(self.token, exc)
            raise

    def check_alive(self, what: str) -> None:
        """Raise ServeShutdownError, from the error, if the loop ended with one."""
        if self.token is not None:
            _context.raise_if_crashed(self.token, what)

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``fn(*args)`` on the loop; ServeShutdownError from the crash if the loop
        crashed, before or during the call."""
        assert self.token is not None
        self.check_alive("this serve API call")
        check_not_in_loop(self.token, "this serve API call")
        try:
            return run_on_loop(self.token, fn, *args)
        except (Exception, trio.Cancelled):
            # why: a call the crashing loop broke (this Cancelled is the loop's: no Trio runs
            # on this thread) raises the crash, its own error as __context__; else re-raised
            if self._failing.is_set() and self._thread.is_alive():
                self._thread.join(_CRASH_JOIN_TIMEOUT_S)  # until the loop has ended
            self.check_alive("this serve API call")
            raise

    def stop(self) -> None:
        if self.token is not None and self._stop is not None and self._thread.is_alive():
            check_not_in_loop(self.token, "serve.shutdown()")
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(self._stop.set, trio_token=self.token)
        self._thread.join()


_lock = threading.Lock()
_background: _Background | None = None


def start(
    *,
    http_host: str = "127.0.0.1",
    http_port: int | None = 8000,
    http_options: HTTPOptions | Mapping[str, Any] | None = None,
) -> None:
    """Start the serve instance on a background thread (``run`` does this if needed).

    ``http_options`` (an :class:`~trioserve.config.HTTPOptions` or a dict of its fields:
    ``host``, ``port``, ``request_timeout_s``) is Ray's spelling of ``http_host`` and
    ``http_port``; give one or the other. ``port=0`` picks a free port, ``None`` runs no
    HTTP proxy. A running instance is left as it is."""
    if http_options is not None:
        if (http_host, http_port) != ("127.0.0.1", 8000):
            raise TypeError("give http_options or http_host/http_port to serve.start(), not both")
        http = HTTPOptions.coerce(http_options)
    else:
        http = HTTPOptions(host=http_host, port=http_port)
    _start(http, "serve.start()")


def _start(http: HTTPOptions, what: str) -> None:
    global _background
    with _lock:
        if _background is None:
            _background = _Background(http)
        else:
            _background.check_alive(what)


def _running(what: str) -> _Background:
    """The running background instance; ServeNotRunningError if there is none (only
    ``start`` and ``run`` start one)."""
    bg = _background
    if bg is None or bg.instance is None:
        raise ServeNotRunningError(
            f"{what}: no serve instance is running in this process; start one with "
            "serve.run(app) or serve.start() first"
        )
    bg.check_alive(what)
    return bg


def _local_instance() -> ServeInstance | None:
    """The serve instance whose Trio thread we are in (``async with open_serve()``)."""
    context = _context.current_or_none()
    if not isinstance(context, ServeInstance):
        return None
    try:
        token = trio.lowlevel.current_trio_token()
    except RuntimeError:
        return None
    return context if token is context.trio_token else None


def _instance(what: str) -> tuple[_Background, ServeInstance]:
    bg = _running(what)
    assert bg.instance is not None
    return bg, bg.instance


# -- inside a replica process: handles route from the replica, never a new instance


def _in_replica_process() -> bool:
    return bool(os.environ.get(ENV_CONTROLLER)) and not isinstance(
        _context.current_or_none(), ServeInstance
    )


def _loop_token_here() -> trio.lowlevel.TrioToken:
    """The token of this thread's Trio loop, or of the loop that started this worker
    thread (``trio.to_thread``)."""
    if trio.lowlevel.in_trio_run():
        return trio.lowlevel.current_trio_token()
    return trio.from_thread.run_sync(trio.lowlevel.current_trio_token)


def _replica_handle_context(what: str) -> _context.ServeContext:
    """The replica process's router context, opened here if the replica has not yet (its
    constructor runs before the replica connects to the controller)."""
    context = _context.current_or_none()
    if context is not None:
        return context
    replica = _context.replica_context_or_none()
    address = os.environ.get(ENV_CONTROLLER)
    token = actors.instance_token()
    if trio.lowlevel.in_trio_run() or replica is None or not address or not token:
        raise ServeNotRunningError(
            f"{what}: this replica is not connected to the serve instance yet; ask for "
            "handles in the replica's methods, or in __init__ of a replica placed in a "
            "process"
        )

    async def open_context() -> _context.ServeContext:
        existing = _context.current_or_none()
        if existing is not None:
            return existing
        opened = ReplicaProcessContext(address, token, app=replica.app_name)
        await opened.start()
        _context.set_current(opened)
        return opened

    return trio.from_thread.run(open_context)


def _wrap(
    handle: DeploymentHandle, token: trio.lowlevel.TrioToken, sync: bool
) -> SyncHandle | DeploymentHandle:
    return SyncHandle(handle, token) if sync else handle


def run(
    app: Application,
    *,
    name: str = "default",
    route_prefix: str | None = "/",
    blocking: bool = False,
    local_testing_mode: bool = False,
) -> SyncHandle:
    """Deploy ``app`` and return a :class:`SyncHandle` to its ingress once every replica is
    running. With ``blocking=True``, serve until interrupted, then shut down."""
    _start(HTTPOptions(), "serve.run()")
    bg, instance = _instance("serve.run()")

    async def deploy() -> DeploymentHandle:
        return await instance.run(
            app, name=name, route_prefix=route_prefix, local_testing_mode=local_testing_mode
        )

    handle = bg.call(deploy)
    assert bg.token is not None
    sync = SyncHandle(handle, bg.token)
    if blocking:
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            shutdown()
    return sync


def run_config(config: ServeConfig | Mapping[str, Any] | str | Path) -> None:
    """Apply a config (a file path, a dict or a :class:`ServeConfig`), as
    ``trioserve deploy`` does: its applications run (each as ``serve.run`` would run it),
    applications not in it are deleted. Starts an instance if none runs (on the config's
    ``http_options``). Returns once every application is running."""
    cfg = config if isinstance(config, ServeConfig) else load_config(config)
    with _lock:
        running = _background is not None
    if not running:
        http = cfg.http_options
        start(http_host=http.host, http_port=http.port)
    bg, instance = _instance("serve.run_config()")

    async def apply() -> None:
        await instance.apply(cfg)

    bg.call(apply)


def shutdown() -> None:
    """Drain and stop every application and the instance; no replica process remains."""
    global _background
    with _lock:
        bg, _background = _background, None
    if bg is not None:
        bg.stop()


atexit.register(shutdown)


def status() -> ServeStatus:
    """Every application of the running instance; with none running, an empty status
    (nothing is started)."""
    bg = _background
    if bg is None or bg.instance is None:
        return ServeStatus(applications={})
    bg.check_alive("serve.status()")
    instance = bg.instance
    return bg.call(instance.status)


def delete(name: str) -> None:
    """Drain and stop the application ``name``."""
    bg, instance = _instance(f"serve.delete({name!r})")
    bg.call(instance.delete, name)


def get_replica_context() -> _context.ReplicaContext:
    """Inside a replica: its ``app_name``, ``deployment``, ``replica_id``, ``node_name``
    and ``servable_object`` (the user's object). RuntimeError anywhere else."""
    return _context.get_replica_context()


@overload
def get_app_handle(name: str = ..., sync: Literal[True] = True) -> SyncHandle: ...
@overload
def get_app_handle(name: str, sync: Literal[False]) -> DeploymentHandle: ...
@overload
def get_app_handle(*, sync: Literal[False]) -> DeploymentHandle: ...


def get_app_handle(name: str = "default", sync: bool = True) -> SyncHandle | DeploymentHandle:
    """A handle to an application's ingress deployment (sync by default; inside the serve
    instance's Trio thread, ``sync=False`` gives a DeploymentHandle). Inside a replica the
    handle routes from that replica (asked on a plain thread: a ``def`` method or
    ``__init__``, as finding the ingress waits for the controller)."""
    what = f"serve.get_app_handle({name!r})"
    local = _local_instance()
    if local is not None:
        return _wrap(local.get_app_handle(name), local.trio_token, sync)
    if _in_replica_process():
        context = _replica_handle_context(what)
        return _wrap(_replica_app_handle(context, name, what), context.trio_token, sync)
    bg, instance = _instance(what)

    async def get() -> DeploymentHandle:
        await trio.lowlevel.checkpoint()
        return instance.get_app_handle(name)

    handle = bg.call(get)
    assert bg.token is not None
    return _wrap(handle, bg.token, sync)


def _replica_app_handle(context: _context.ServeContext, name: str, what: str) -> DeploymentHandle:
    ask = getattr(context, "app_ingress", None)
    if ask is None:
        raise ServeNotRunningError(
            f"{what}: this replica cannot ask the controller for an application's ingress; "
            "use serve.get_deployment_handle(deployment_name, app_name) instead"
        )
    check_blocking_allowed(
        what + " inside a replica",
        "call it in a `def` method or in __init__, or use "
        "serve.get_deployment_handle(deployment_name, app_name), which does not block",
    )
    ingress = run_on_loop(context.trio_token, ask, name)
    return DeploymentHandle(str(ingress), name, _context=context)


@overload
def get_deployment_handle(
    deployment_name: str, app_name: str = ..., sync: Literal[True] = True
) -> SyncHandle: ...
@overload
def get_deployment_handle(
    deployment_name: str, app_name: str = ..., *, sync: Literal[False]
) -> DeploymentHandle: ...


def get_deployment_handle(
    deployment_name: str, app_name: str = "default", sync: bool = True
) -> SyncHandle | DeploymentHandle:
    """A handle to one deployment of an application (inside a replica: routed from it)."""
    context = _context.current_or_none()
    if context is not None and not isinstance(context, ServeInstance):
        # in a replica process: bind to its own routers
        handle = DeploymentHandle(deployment_name, app_name, _context=context)
        return _wrap(handle, context.trio_token, sync)
    local = _local_instance()
    if local is not None:
        return _wrap(local.get_deployment_handle(deployment_name, app_name), local.trio_token, sync)
    if _in_replica_process():
        # before the replica connected (its __init__): the handle binds at its first call
        return _wrap(DeploymentHandle(deployment_name, app_name), _loop_token_here(), sync)
    bg, instance = _instance(f"serve.get_deployment_handle({deployment_name!r})")
    handle = instance.get_deployment_handle(deployment_name, app_name)
    assert bg.token is not None
    return _wrap(handle, bg.token, sync)


def get_deployment_handle_any_app(
    deployment_name: str, sync: bool = True
) -> SyncHandle | DeploymentHandle:
    """For ``Deployment.get_handle()``: the deployment in whichever application runs it
    (in a replica process: in the replica's own application)."""
    context = _context.current_or_none()
    app = getattr(context, "app", None)
    if context is not None and isinstance(app, str):
        handle = DeploymentHandle(deployment_name, app, _context=context)
        return _wrap(handle, context.trio_token, sync)
    local = _local_instance()
    if local is not None:
        handle = local.get_deployment_handle(
            deployment_name, local.find_deployment_app(deployment_name)
        )
        return _wrap(handle, local.trio_token, sync)
    replica = _context.replica_context_or_none()
    if replica is not None and _in_replica_process():
        handle = DeploymentHandle(deployment_name, replica.app_name)
        return _wrap(handle, _loop_token_here(), sync)
    bg, instance = _instance(f"{deployment_name}.get_handle()")

    async def find() -> str:
        await trio.lowlevel.checkpoint()
        return instance.find_deployment_app(deployment_name)

    app_name = bg.call(find)
    handle = instance.get_deployment_handle(deployment_name, app_name)
    assert bg.token is not None
    return _wrap(handle, bg.token, sync)


set_handle_lookup(get_deployment_handle_any_app)


# -- get / wait


def _response_of(ref: Any) -> DeploymentResponse:
    if isinstance(ref, ResponseWrapper):
        return ref._response
    if isinstance(ref, DeploymentResponse):
        return ref
    raise TypeError(
        f"expected a SyncResponse or a DeploymentResponse (from handle.remote()), got {ref!r}"
    )


def _many(refs: Any) -> bool:
    return isinstance(refs, Sequence) and not isinstance(refs, (str, bytes))


def get(refs: Any, *, timeout_s: float | None = None) -> Any:
    """The value of one response, or the values of a list of them (in order);
    ``timeout_s`` bounds the whole wait. SyncResponses and DeploymentResponses are both
    taken (the latter on plain threads only: in async code, ``await serve.get_async()``)."""
    many = _many(refs)
    items = list(refs) if many else [refs]
    for ref in items:
        _response_of(ref)  # a TypeError for anything else
        if not isinstance(ref, SyncResponse):
            check_blocking_allowed("serve.get()", "use `await serve.get_async(refs)` there")
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    out = []
    for ref in items:
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        out.append(ref.result(timeout_s=remaining))
    return out if many else out[0]


def wait(
    refs: Sequence[Any], *, num_returns: int = 1, timeout_s: float | None = None
) -> tuple[list[Any], list[Any]]:
    """Wait until ``num_returns`` responses are done (or ``timeout_s`` passes); returns
    ``(done, pending)`` in the order given. Takes SyncResponses and (on plain threads)
    DeploymentResponses; in async code, ``await serve.wait_async()``."""
    refs = list(refs)
    if not refs:
        return [], []
    inner = [_response_of(r) for r in refs]
    token = inner[0]._token
    if any(r._token is not token for r in inner):
        raise ValueError("serve.wait() takes responses of one serve instance at a time")
    check_not_in_loop(token, "serve.wait()")
    check_blocking_allowed("serve.wait()", "use `await serve.wait_async(refs)` there")
    run_on_loop(token, _wait_some, inner, num_returns, timeout_s)
    done = [r for r, i in zip(refs, inner, strict=True) if i.done()]
    pending = [r for r, i in zip(refs, inner, strict=True) if not i.done()]
    return done, pending


async def _wait_some(
    responses: Sequence[DeploymentResponse], num_returns: int, timeout_s: float | None
) -> None:
    if num_returns < 1 or num_returns > len(responses):
        raise ValueError(f"num_returns must be between 1 and {len(responses)}, got {num_returns}")
    enough = trio.Event()
    count = [sum(1 for r in responses if r.done())]

    def on_done(_fut: Any) -> None:
        count[0] += 1
        if count[0] >= num_returns:
            enough.set()

    if count[0] >= num_returns:
        await trio.lowlevel.checkpoint()
        return
    for r in responses:
        if not r.done():
            r._future.add_done_callback(on_done)
    with trio.move_on_after(timeout_s if timeout_s is not None else float("inf")):
        await enough.wait()


async def get_async(refs: Any, *, timeout_s: float | None = None) -> Any:
    """The async twin of :func:`get`, for :class:`DeploymentResponse` objects; a timeout
    leaves the requests running."""
    many = _many(refs)
    responses = [_response_of(r) for r in (refs if many else [refs])]
    with trio.move_on_after(timeout_s if timeout_s is not None else float("inf")):
        for response in responses:
            await response._future.wait_done()
        values = [response._future.result() for response in responses]
        return values if many else values[0]
    raise RequestTimeoutError(f"no result within timeout_s={timeout_s}")


async def wait_async(
    refs: Sequence[DeploymentResponse], *, num_returns: int = 1, timeout_s: float | None = None
) -> tuple[list[DeploymentResponse], list[DeploymentResponse]]:
    """The async twin of :func:`wait`."""
    refs = [_response_of(r) for r in refs]
    if not refs:
        return [], []
    await _wait_some(refs, num_returns, timeout_s)
    return [r for r in refs if r.done()], [r for r in refs if not r.done()]
