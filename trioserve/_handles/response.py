"""Responses: the result of ``handle.remote()``, awaitable, chainable and cancellable.

A response is submitted to its deployment's router the moment it is created; awaiting it
only waits. It can be passed, un-awaited, as an argument (top level, or inside lists,
tuples and dicts) to another ``.remote()``: that request is counted as queued at once and
goes to a replica once every response it holds has its value.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import trio

from actors import CallFuture, CallNotDeliveredError, RejectedError, StreamReceiver

from ..exceptions import RequestCancelledError

if TYPE_CHECKING:
    from .router import Router

_CONTAINERS = (list, tuple, dict)
_ANY_RESPONSE: tuple[type, ...] = ()  # set below, once the classes exist


class _Request:
    """What the router needs of a request; shared by unary and streaming responses."""

    __slots__ = (
        "_args",
        "_assigned",
        "_deadline",
        "_inner",
        "_kwargs",
        "_method",
        "_replica_id",
        "_router",
        "_source",
        "_submitted_at",
    )

    def __init__(self, router: Router, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]):
        self._router = router
        self._method = method
        self._args = args
        self._kwargs = kwargs
        self._inner: CallFuture | StreamReceiver | None = None
        self._assigned: trio.Event | None = None
        self._replica_id: str | None = None
        self._submitted_at = 0.0
        self._source = "handle"
        #: the caller's Trio deadline when it made the request; it travels to the replica
        self._deadline = trio.current_effective_deadline()

    stream = False

    # -- chaining

    def _upstream(self) -> list[DeploymentResponse] | None:
        """The responses among the arguments that have no value yet; None when the
        arguments hold no response at all (the common case: nothing to substitute)."""
        found: list[DeploymentResponse] = []
        seen = False
        for value in self._args:
            if isinstance(value, _ANY_RESPONSE) or type(value) in _CONTAINERS:
                seen = _collect(value, found) or seen
        for value in self._kwargs.values():
            if isinstance(value, _ANY_RESPONSE) or type(value) in _CONTAINERS:
                seen = _collect(value, found) or seen
        return found if seen else None

    def _substitute(self) -> BaseException | None:
        """Replace upstream responses by their values; the first upstream error, if any."""
        try:
            self._args = tuple(_resolved(v) for v in self._args)
            self._kwargs = {k: _resolved(v) for k, v in self._kwargs.items()}
        except BaseException as exc:  # why: an upstream failure fails this request; returned
            return exc
        return None

    # -- the router's side

    def done(self) -> bool:
        raise NotImplementedError

    def _fail(self, error: BaseException) -> None:
        raise NotImplementedError

    def _mark_assigned(self, replica_id: str, inner: CallFuture | StreamReceiver) -> None:
        self._replica_id = replica_id
        self._inner = inner
        if self._assigned is not None:
            self._assigned.set()

    def _unassign(self) -> None:
        """The replica refused the request; it waits in the queue again."""
        self._replica_id = None
        self._inner = None
        if self._assigned is not None and self._assigned.is_set():
            self._assigned = None  # the next assignment needs a fresh event

    async def _wait_assigned(self) -> None:
        """Wait until a replica has the request, or it has failed before that."""
        if self._inner is None and not self.done():
            if self._assigned is None:
                self._assigned = trio.Event()
            await self._assigned.wait()

    @property
    def replica_id(self) -> str | None:
        """The replica the request went to (None while queued)."""
        return self._replica_id


class ResponseWrapper:
    """Base of objects that stand for a :class:`DeploymentResponse` (the sync handle's
    ``SyncResponse``); they are unwrapped wherever a response is accepted."""

    __slots__ = ()
    _response: DeploymentResponse


def _collect(value: Any, found: list[DeploymentResponse]) -> bool:
    """Add the pending responses in ``value`` to ``found``; whether it holds any response."""
    if isinstance(value, ResponseWrapper):
        value = value._response
    if isinstance(value, DeploymentResponse):
        if not value._future.done():
            found.append(value)
        return True
    seen = False
    if type(value) is dict:
        for v in value.values():
            seen = _collect(v, found) or seen
    elif type(value) in (list, tuple):
        for v in value:
            seen = _collect(v, found) or seen
    return seen


def _resolved(value: Any) -> Any:
    if isinstance(value, ResponseWrapper):
        value = value._response
    if isinstance(value, DeploymentResponse):
        return value._future.result()
    if type(value) is dict:
        return {k: _resolved(v) for k, v in value.items()}
    if type(value) is list:
        return [_resolved(v) for v in value]
    if type(value) is tuple:
        return tuple(_resolved(v) for v in value)
    return value


class DeploymentResponse(_Request):
    """The pending result of one request: ``await response`` gives the value.

    Cancelling the task that awaits it, or calling :meth:`cancel`, cancels the request (on
    the replica too, with the downstream requests it made).
    """

    __slots__ = ("_future",)

    def __init__(
        self, router: Router, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        super().__init__(router, method, args, kwargs)
        self._future = CallFuture(
            canceller=self._on_cancel,
            label=f"{router.name}.{method}",
            cancelled_error=RequestCancelledError,
        )

    def __await__(self) -> Generator[Any, None, Any]:
        return self._future.wait().__await__()

    def done(self) -> bool:
        return self._future.done()

    def cancel(self) -> None:
        """Cancel the request; awaiting it then raises :class:`RequestCancelledError`."""
        self._future.cancel()

    def _on_cancel(self) -> None:
        inner = self._inner
        if inner is not None:
            inner.cancel()
        if self._assigned is not None:
            self._assigned.set()

    def _fail(self, error: BaseException) -> None:
        self._future.set_error(error)
        if self._assigned is not None:
            self._assigned.set()

    def _finish(self, inner: CallFuture) -> None:
        error = inner.exception()
        if error is not None:
            self._future.set_error(error)
        else:
            self._future.set_result(inner.result())

    def __repr__(self) -> str:
        state = "done" if self.done() else ("running" if self._inner else "queued")
        return f"<DeploymentResponse {self._router.name}.{self._method} {state}>"


class DeploymentResponseGenerator(_Request):
    """The items of a streaming request: ``async for item in response``."""

    __slots__ = ("_error", "_finished")
    stream = True

    def __init__(
        self, router: Router, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        super().__init__(router, method, args, kwargs)
        self._error: BaseException | None = None
        self._finished = False

    def done(self) -> bool:
        return self._finished

    def _fail(self, error: BaseException) -> None:
        self._error = error
        self._finished = True
        if self._assigned is not None:
            self._assigned.set()

    def _finish_stream(self, error: BaseException | None) -> None:
        if error is not None and self._error is None:
            self._error = error
        self._finished = True

    def __aiter__(self) -> DeploymentResponseGenerator:
        return self

    async def __anext__(self) -> Any:
        while True:
            try:
                await self._wait_assigned()
            except trio.Cancelled:  # why: a cancelled consumer cancels the stream; re-raised
                self.cancel()
                raise
            inner = self._inner
            assert inner is None or isinstance(inner, StreamReceiver)
            if inner is None:
                if self._error is not None:
                    err, self._error = self._error, None
                    raise err
                raise StopAsyncIteration
            try:
                return await inner.__anext__()
            except (RejectedError, CallNotDeliveredError):
                if self._inner is not inner and not self._finished:
                    continue  # the router queued it again: read from the next replica
                raise
            except StopAsyncIteration:
                if self._error is not None:
                    err, self._error = self._error, None
                    raise err from None
                raise
            except Exception:
                if self._error is not None:
                    err, self._error = self._error, None
                    raise err from None
                raise

    def cancel(self) -> None:
        if not self._finished:
            self._fail(RequestCancelledError(f"stream from {self._router.name} was cancelled"))
        inner = self._inner
        if inner is not None:
            inner.cancel()

    async def aclose(self) -> None:
        self.cancel()
        await trio.lowlevel.checkpoint()


_ANY_RESPONSE = (DeploymentResponse, ResponseWrapper)
