"""Handles: ``DeploymentHandle`` for Trio code, ``SyncHandle`` for plain threads."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import trio

from ..exceptions import RequestTimeoutError, ServeShutdownError
from . import context as _context
from .response import (
    DeploymentResponse,
    DeploymentResponseGenerator,
    ResponseWrapper,
    on_loop,
    run_on_loop,
    run_sync_on_loop,
    wait_done,
)
from .router import Router


class DeploymentHandle:
    """Calls a deployment from Trio code running in the serve instance's (or a replica's)
    loop: ``response = handle.remote(...)`` submits at once; ``await response`` waits.

    ``handle.method_name.remote(...)`` calls another method; ``.options(method_name=...,
    stream=True)`` makes a handle whose ``.remote()`` returns an async iterator of items.
    Handles can be passed to replicas (as ``bind`` arguments); there they bind to the
    replica process's own router. Called from a plain thread (a ``def`` method of a
    deployment, a driver's thread), ``.remote()`` submits through the handle's loop and the
    response's ``.result()`` blocks that thread, as in Ray Serve.
    """

    __slots__ = (
        "_context",
        "_router",
        "_source",
        "app_name",
        "deployment_name",
        "method_name",
        "multiplexed_model_id",
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
        #: requests from this handle are for this multiplexed model ("" for none)
        self.multiplexed_model_id = ""
        self._context = _context
        self._router: Router | None = None
        self._source = "handle"

    def __repr__(self) -> str:
        return (
            f"DeploymentHandle(deployment={self.deployment_name!r}, app={self.app_name!r}, "
            f"method={self.method_name!r})"
        )

    def _key(self) -> tuple[str, str, str, bool, str]:
        return (
            self.deployment_name,
            self.app_name,
            self.method_name,
            self.stream,
            self.multiplexed_model_id,
        )

    def __eq__(self, other: object) -> bool:
        """Handles to the same deployment, method and mode are equal (a redeploy whose bind
        arguments hold the same handles does not restart the replicas holding them)."""
        if not isinstance(other, DeploymentHandle):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def options(
        self,
        *,
        method_name: str | None = None,
        stream: bool | None = None,
        multiplexed_model_id: str | None = None,
    ) -> DeploymentHandle:
        """A handle like this one with other options: the method to call, whether it
        streams, and the multiplexed model its requests are for (sent to a replica that
        holds it; ``serve.get_multiplexed_model_id()`` there)."""
        handle = DeploymentHandle(
            self.deployment_name,
            self.app_name,
            method_name=self.method_name if method_name is None else method_name,
            stream=self.stream if stream is None else stream,
            _context=self._context,
        )
        handle.multiplexed_model_id = (
            self.multiplexed_model_id if multiplexed_model_id is None else multiplexed_model_id
        )
        handle._router = self._router
        handle._source = self._source
        return handle

    def __getattr__(self, name: str) -> DeploymentHandle:
        if name.startswith("_") or name == "multiplexed_model_id":
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
        context = self._context or _context.current()
        if not on_loop(context.trio_token):
            if trio.lowlevel.in_trio_run():
                raise RuntimeError(
                    f"{self!r} belongs to another Trio loop than this one; call it from "
                    "its own loop, or from a plain thread"
                )
            self._context = context
            return run_sync_on_loop(context.trio_token, self._submit, args, kwargs)
        return self._submit(args, kwargs)

    def _submit(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], *, upload: bool = False
    ) -> Any:
        router = self._get_router()
        response: DeploymentResponse | DeploymentResponseGenerator
        if self.stream or upload:
            response = DeploymentResponseGenerator(
                router, self.method_name, args, kwargs, upload=upload
            )
        else:
            response = DeploymentResponse(router, self.method_name, args, kwargs)
        response.source = self._source
        response.multiplexed_model_id = self.multiplexed_model_id
        router.submit(response)
        return response

    def _remote_duplex(self, *args: Any) -> DeploymentResponseGenerator:
        """A streaming request with a request stream (``response.upload``), from this
        handle's own loop: the HTTP proxy sends request bodies and WebSocket messages so."""
        response: DeploymentResponseGenerator = self._submit(args, {}, upload=True)
        return response

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild_handle,
            (
                self.deployment_name,
                self.app_name,
                self.method_name,
                self.stream,
                self.multiplexed_model_id,
            ),
        )


def _rebuild_handle(
    deployment_name: str, app_name: str, method_name: str, stream: bool, model_id: str = ""
) -> DeploymentHandle:
    handle = DeploymentHandle(deployment_name, app_name, method_name=method_name, stream=stream)
    handle.multiplexed_model_id = model_id
    return handle


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


@contextlib.contextmanager
def _crash_named(token: trio.lowlevel.TrioToken, what: str) -> Iterator[None]:
    """Say why the loop is gone when it ended with an error (the serve loop crashed)."""
    try:
        yield
    except ServeShutdownError:
        _context.raise_if_crashed(token, what)
        raise


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
        """The deployment this handle calls."""
        return self._handle.deployment_name

    @property
    def app_name(self) -> str:
        """The application the deployment belongs to."""
        return self._handle.app_name

    @property
    def method_name(self) -> str:
        """The method ``.remote()`` calls (``__call__`` unless chosen)."""
        return self._handle.method_name

    def __repr__(self) -> str:
        return repr(self._handle).replace("DeploymentHandle", "SyncHandle", 1)

    def options(
        self,
        *,
        method_name: str | None = None,
        stream: bool | None = None,
        multiplexed_model_id: str | None = None,
    ) -> SyncHandle:
        """Like :meth:`DeploymentHandle.options`."""
        return SyncHandle(
            self._handle.options(
                method_name=method_name, stream=stream, multiplexed_model_id=multiplexed_model_id
            ),
            self._token,
        )

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

        with _crash_named(self._token, "SyncHandle.remote()"):
            response = run_sync_on_loop(self._token, submit)
            if response._inner is None and not response.done():  # queued: wait for a replica
                run_on_loop(self._token, response._wait_assigned)
        if handle.stream:
            return SyncResponseGenerator(response, self._token)
        return SyncResponse(response, self._token, finished=finished)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_sync_handle, (self._handle,))

    @property
    def async_handle(self) -> DeploymentHandle:
        """The :class:`DeploymentHandle` behind this one, for Trio code on the serve
        instance's loop."""
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
        """Whether the result (or error) is there; never blocks."""
        return self._response.done()

    def result(self, timeout_s: float | None = None) -> Any:
        """Block until the value is there (raises the request's error, or
        :class:`RequestTimeoutError` after ``timeout_s``; the request keeps running).
        ``timeout_s`` bounds the whole wait from now: a request still queued for a replica
        or for its chained arguments counts against it too."""
        future = self._response._future
        if not future.done():
            check_not_in_loop(self._token, "SyncResponse.result()")
            if self._finished is None:
                with _crash_named(self._token, "SyncResponse.result()"):
                    run_on_loop(self._token, wait_done, future, timeout_s)
            elif not self._finished.wait(timeout_s):
                raise RequestTimeoutError(f"no result within timeout_s={timeout_s}")
        return future.result()

    def cancel(self) -> None:
        """Cancel the request (on the replica too); after a shutdown, nothing is left."""
        self._response.cancel()

    @property
    def replica_id(self) -> str | None:
        """The replica the request went to (None while queued)."""
        return self._response.replica_id

    def __repr__(self) -> str:
        return repr(self._response).replace("DeploymentResponse", "SyncResponse", 1)


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
        check_not_in_loop(self._token, "iterating a SyncResponseGenerator")

        async def next_item() -> tuple[bool, Any]:
            try:
                return True, await self._response.__anext__()
            except StopAsyncIteration:
                return False, None

        with _crash_named(self._token, "iterating a SyncResponseGenerator"):
            more, item = run_on_loop(self._token, next_item)
        if not more:
            raise StopIteration
        return item

    def cancel(self) -> None:
        """Stop the stream (on the replica too); iterating a stream that had not ended
        then raises :class:`RequestCancelledError`. After a shutdown, nothing is left."""
        self._response.cancel()
