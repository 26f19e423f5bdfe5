"""Handles: ``DeploymentHandle`` for Trio code, ``SyncHandle`` for plain threads."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import trio

from ..exceptions import RequestTimeoutError
from . import context as _context
from .response import DeploymentResponse, DeploymentResponseGenerator, ResponseWrapper
from .router import Router


class DeploymentHandle:
    """Calls a deployment from Trio code running in the serve instance's (or a replica's)
    loop: ``response = handle.remote(...)`` submits at once; ``await response`` waits.

    ``handle.method_name.remote(...)`` calls another method; ``.options(method_name=...,
    stream=True)`` makes a handle whose ``.remote()`` returns an async iterator of items.
    Handles can be passed to replicas (as ``bind`` arguments); there they bind to the
    replica process's own router.
    """

    __slots__ = (
        "_context",
        "_router",
        "_source",
        "app_name",
        "deployment_name",
        "method_name",
        "stream",
    )

    def __init__(
        self,
        deployment_name: str,
        app_name: str = "default",
        *,
        method_name: str = "__call__",
        stream: bool = False,
        _context: _context.ServeContext | None = None,
    ) -> None:
        self.deployment_name = deployment_name
        self.app_name = app_name
        self.method_name = method_name
        self.stream = stream
        self._context = _context
        self._router: Router | None = None
        self._source = "handle"

    def __repr__(self) -> str:
        return (
            f"DeploymentHandle(deployment={self.deployment_name!r}, app={self.app_name!r}, "
            f"method={self.method_name!r})"
        )

    def _key(self) -> tuple[str, str, str, bool]:
        return (self.deployment_name, self.app_name, self.method_name, self.stream)

    def __eq__(self, other: object) -> bool:
        """Handles to the same deployment, method and mode are equal (a redeploy whose bind
        arguments hold the same handles does not restart the replicas holding them)."""
        if not isinstance(other, DeploymentHandle):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def options(
        self, *, method_name: str | None = None, stream: bool | None = None
    ) -> DeploymentHandle:
        handle = DeploymentHandle(
            self.deployment_name,
            self.app_name,
            method_name=self.method_name if method_name is None else method_name,
            stream=self.stream if stream is None else stream,
            _context=self._context,
        )
        handle._router = self._router
        handle._source = self._source
        return handle

    def __getattr__(self, name: str) -> DeploymentHandle:
        if name.startswith("_"):
            raise AttributeError(name)
        return self.options(method_name=name)

    def _get_router(self) -> Router:
        router = self._router
        if router is None:
            context = self._context or _context.current()
            self._context = context
            router = self._router = context.router(self.app_name, self.deployment_name)
        return router

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        """Submit a request; returns a :class:`DeploymentResponse` (or, with ``stream=True``,
        a :class:`DeploymentResponseGenerator`) at once, without waiting for a replica."""
        router = self._get_router()
        response: DeploymentResponse | DeploymentResponseGenerator
        if self.stream:
            response = DeploymentResponseGenerator(router, self.method_name, args, kwargs)
        else:
            response = DeploymentResponse(router, self.method_name, args, kwargs)
        response._source = self._source
        router.submit(response)
        return response

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild_handle,
            (self.deployment_name, self.app_name, self.method_name, self.stream),
        )


def _rebuild_handle(
    deployment_name: str, app_name: str, method_name: str, stream: bool
) -> DeploymentHandle:
    return DeploymentHandle(deployment_name, app_name, method_name=method_name, stream=stream)


def check_not_in_loop(token: trio.lowlevel.TrioToken, what: str) -> None:
    """Raise instead of deadlocking when a blocking call is made from the loop it needs."""
    try:
        current = trio.lowlevel.current_trio_token()
    except RuntimeError:
        return
    if current is token:
        raise RuntimeError(
            f"{what} blocks, and was called from the serve instance's own Trio thread, "
            "where it would deadlock; use the DeploymentHandle there "
            "(`await handle.remote(...)`)"
        )


class SyncHandle:
    """Calls a deployment from plain (non-Trio) threads.

    ``handle.remote(...)`` blocks until a replica has accepted the request, then returns a
    :class:`SyncResponse`; ``.result(timeout_s=...)`` waits for the value.
    """

    __slots__ = ("_handle", "_token")

    def __init__(self, handle: DeploymentHandle, token: trio.lowlevel.TrioToken) -> None:
        self._handle = handle
        self._token = token

    @property
    def deployment_name(self) -> str:
        return self._handle.deployment_name

    @property
    def app_name(self) -> str:
        return self._handle.app_name

    @property
    def method_name(self) -> str:
        return self._handle.method_name

    def __repr__(self) -> str:
        return repr(self._handle).replace("DeploymentHandle", "SyncHandle", 1)

    def options(self, *, method_name: str | None = None, stream: bool | None = None) -> SyncHandle:
        return SyncHandle(self._handle.options(method_name=method_name, stream=stream), self._token)

    def __getattr__(self, name: str) -> SyncHandle:
        if name.startswith("_"):
            raise AttributeError(name)
        return self.options(method_name=name)

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        """Submit and block until a replica accepts; returns a :class:`SyncResponse` (or a
        :class:`SyncResponseGenerator` with ``stream=True``)."""
        check_not_in_loop(self._token, "SyncHandle.remote()")
        handle = self._handle
        finished = threading.Event()

        def submit() -> Any:
            response = handle.remote(*args, **kwargs)
            if not handle.stream:
                # the caller's thread learns of the result without another trip to the loop
                response._future.add_done_callback(lambda _future: finished.set())
            return response

        response = trio.from_thread.run_sync(submit, trio_token=self._token)
        if response._inner is None and not response.done():  # queued: wait for a replica
            trio.from_thread.run(response._wait_assigned, trio_token=self._token)
        if handle.stream:
            return SyncResponseGenerator(response, self._token)
        return SyncResponse(response, self._token, finished=finished)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_sync_handle, (self._handle,))

    @property
    def async_handle(self) -> DeploymentHandle:
        return self._handle


def _rebuild_sync_handle(handle: DeploymentHandle) -> SyncHandle:
    context = _context.current()
    return SyncHandle(handle, context.trio_token)


class SyncResponse(ResponseWrapper):
    """The pending result of a sync handle's request."""

    __slots__ = ("_finished", "_response", "_token")

    def __init__(
        self,
        response: DeploymentResponse,
        token: trio.lowlevel.TrioToken,
        *,
        finished: threading.Event | None = None,
    ) -> None:
        self._response = response
        self._token = token
        #: set (from the loop) once the response is done, if the creator arranged it
        self._finished = finished

    def done(self) -> bool:
        return self._response.done()

    def result(self, timeout_s: float | None = None) -> Any:
        """Block until the value is there (raises the request's error, or
        :class:`RequestTimeoutError` after ``timeout_s``; the request keeps running)."""
        future = self._response._future
        if not future.done():
            check_not_in_loop(self._token, "SyncResponse.result()")
            if self._finished is None:
                trio.from_thread.run(_wait_done, future, timeout_s, trio_token=self._token)
            elif not self._finished.wait(timeout_s):
                raise RequestTimeoutError(f"no result within timeout_s={timeout_s}")
        return future.result()

    def cancel(self) -> None:
        """Cancel the request (on the replica too)."""
        trio.from_thread.run_sync(self._response.cancel, trio_token=self._token)

    @property
    def replica_id(self) -> str | None:
        return self._response.replica_id

    def __repr__(self) -> str:
        return repr(self._response).replace("DeploymentResponse", "SyncResponse", 1)


async def _wait_done(future: Any, timeout_s: float | None) -> None:
    if timeout_s is None:
        await future.wait_done()
        return
    with trio.move_on_after(timeout_s):
        await future.wait_done()
        return
    raise RequestTimeoutError(f"no result within timeout_s={timeout_s}")


class SyncResponseGenerator:
    """The items of a streaming sync request: ``for item in response``."""

    def __init__(
        self, response: DeploymentResponseGenerator, token: trio.lowlevel.TrioToken
    ) -> None:
        self._response = response
        self._token = token

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        async def next_item() -> tuple[bool, Any]:
            try:
                return True, await self._response.__anext__()
            except StopAsyncIteration:
                return False, None

        more, item = trio.from_thread.run(next_item, trio_token=self._token)
        if not more:
            raise StopIteration
        return item

    def cancel(self) -> None:
        trio.from_thread.run_sync(self._response.cancel, trio_token=self._token)
