"""The script API: a serve instance on a background Trio thread, driven from plain code."""

from __future__ import annotations

import atexit
import contextlib
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal, TypeVar, overload

import trio

from ._deployment import Application, set_handle_lookup
from ._handles import context as _context
from ._handles.handle import DeploymentHandle, SyncHandle, SyncResponse, check_not_in_loop
from ._handles.response import DeploymentResponse
from ._instance import ServeInstance, open_serve
from ._status import ServeStatus
from .exceptions import RequestTimeoutError

T = TypeVar("T")


class _Background:
    """A serve instance running ``trio.run`` on a daemon thread until ``stop()``."""

    def __init__(self, http_host: str, http_port: int | None) -> None:
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.instance: ServeInstance | None = None
        self.token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._thread = threading.Thread(
            target=self._main, args=(http_host, http_port), name="trioserve", daemon=True
        )
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error

    def _main(self, http_host: str, http_port: int | None) -> None:
        try:
            trio.run(self._amain, http_host, http_port)
        except BaseException as exc:  # why: reported to the thread that started us
            if not self._ready.is_set():
                self._error = exc
        finally:
            self._ready.set()

    async def _amain(self, http_host: str, http_port: int | None) -> None:
        async with open_serve(http_host=http_host, http_port=http_port) as instance:
            self.instance = instance
            self.token = trio.lowlevel.current_trio_token()
            self._stop = trio.Event()
            self._ready.set()
            await self._stop.wait()

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        assert self.token is not None
        check_not_in_loop(self.token, "this serve API call")
        return trio.from_thread.run(fn, *args, trio_token=self.token)

    def stop(self) -> None:
        if self.token is not None and self._stop is not None and self._thread.is_alive():
            check_not_in_loop(self.token, "serve.shutdown()")
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(self._stop.set, trio_token=self.token)
        self._thread.join()


_lock = threading.Lock()
_background: _Background | None = None


def start(*, http_host: str = "127.0.0.1", http_port: int | None = 8000) -> None:
    """Start the serve instance on a background thread (``run`` does this if needed)."""
    global _background
    with _lock:
        if _background is None:
            _background = _Background(http_host, http_port)


def _running() -> _Background:
    if _background is None:
        start()
    assert _background is not None
    return _background


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


def _instance() -> tuple[_Background, ServeInstance]:
    bg = _running()
    assert bg.instance is not None
    return bg, bg.instance


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
    bg, instance = _instance()

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


def shutdown() -> None:
    """Drain and stop every application and the instance; no replica process remains."""
    global _background
    with _lock:
        bg, _background = _background, None
    if bg is not None:
        bg.stop()


atexit.register(shutdown)


def status() -> ServeStatus:
    bg, instance = _instance()
    return bg.call(instance.status)


def delete(name: str) -> None:
    bg, instance = _instance()
    bg.call(instance.delete, name)


@overload
def get_app_handle(name: str = ..., sync: Literal[True] = True) -> SyncHandle: ...
@overload
def get_app_handle(name: str, sync: Literal[False]) -> DeploymentHandle: ...
@overload
def get_app_handle(*, sync: Literal[False]) -> DeploymentHandle: ...


def get_app_handle(name: str = "default", sync: bool = True) -> SyncHandle | DeploymentHandle:
    """A handle to an application's ingress deployment (sync by default; inside the serve
    instance's Trio thread, ``sync=False`` gives a DeploymentHandle)."""
    local = _local_instance()
    if local is not None:
        handle = local.get_app_handle(name)
        return SyncHandle(handle, local.trio_token) if sync else handle
    bg, instance = _instance()

    async def get() -> DeploymentHandle:
        await trio.lowlevel.checkpoint()
        return instance.get_app_handle(name)

    handle = bg.call(get)
    assert bg.token is not None
    return SyncHandle(handle, bg.token) if sync else handle


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
    """A handle to one deployment of an application."""
    context = _context.current_or_none()
    if context is not None and not isinstance(context, ServeInstance):
        # in a replica process: bind to its own routers
        handle = DeploymentHandle(deployment_name, app_name, _context=context)
        return SyncHandle(handle, context.trio_token) if sync else handle
    local = _local_instance()
    if local is not None:
        handle = local.get_deployment_handle(deployment_name, app_name)
        return SyncHandle(handle, local.trio_token) if sync else handle
    bg, instance = _instance()
    handle = instance.get_deployment_handle(deployment_name, app_name)
    assert bg.token is not None
    return SyncHandle(handle, bg.token) if sync else handle


def get_deployment_handle_any_app(
    deployment_name: str, sync: bool = True
) -> SyncHandle | DeploymentHandle:
    """For ``Deployment.get_handle()``: the deployment in whichever application runs it
    (in a replica process: in the replica's own application)."""
    context = _context.current_or_none()
    app = getattr(context, "app", None)
    if context is not None and isinstance(app, str):
        handle = DeploymentHandle(deployment_name, app, _context=context)
        return SyncHandle(handle, context.trio_token) if sync else handle
    local = _local_instance()
    if local is not None:
        handle = local.get_deployment_handle(
            deployment_name, local.find_deployment_app(deployment_name)
        )
        return SyncHandle(handle, local.trio_token) if sync else handle
    bg, instance = _instance()

    async def find() -> str:
        await trio.lowlevel.checkpoint()
        return instance.find_deployment_app(deployment_name)

    app_name = bg.call(find)
    handle = instance.get_deployment_handle(deployment_name, app_name)
    assert bg.token is not None
    return SyncHandle(handle, bg.token) if sync else handle


set_handle_lookup(get_deployment_handle_any_app)


# -- get / wait


def _as_sync(ref: Any) -> SyncResponse:
    if isinstance(ref, SyncResponse):
        return ref
    raise TypeError(f"expected a SyncResponse (from SyncHandle.remote()), got {ref!r}")


def get(refs: Any, *, timeout_s: float | None = None) -> Any:
    """The value of one response, or the values of a list of them (in order)."""
    if isinstance(refs, Sequence) and not isinstance(refs, (str, bytes)):
        deadline = None if timeout_s is None else _now() + timeout_s
        out = []
        for ref in refs:
            remaining = None if deadline is None else max(0.0, deadline - _now())
            out.append(_as_sync(ref).result(timeout_s=remaining))
        return out
    return _as_sync(refs).result(timeout_s=timeout_s)


def _now() -> float:
    import time

    return time.monotonic()


def wait(
    refs: Sequence[SyncResponse], *, num_returns: int = 1, timeout_s: float | None = None
) -> tuple[list[SyncResponse], list[SyncResponse]]:
    """Wait until ``num_returns`` responses are done (or ``timeout_s`` passes); returns
    ``(done, pending)`` in the order given."""
    refs = [_as_sync(r) for r in refs]
    if not refs:
        return [], []
    token = refs[0]._token
    check_not_in_loop(token, "serve.wait()")
    inner = [r._response for r in refs]
    trio.from_thread.run(_wait_some, inner, num_returns, timeout_s, trio_token=token)
    done = [r for r in refs if r.done()]
    pending = [r for r in refs if not r.done()]
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
    many = isinstance(refs, Sequence) and not isinstance(refs, (str, bytes))
    responses: list[DeploymentResponse] = list(refs) if many else [refs]
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
    refs = list(refs)
    if not refs:
        return [], []
    await _wait_some(refs, num_returns, timeout_s)
    return [r for r in refs if r.done()], [r for r in refs if not r.done()]
