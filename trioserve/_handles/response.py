"""Responses: the result of ``handle.remote()``, awaitable, chainable and cancellable.

A response is submitted to its deployment's router the moment it is created; awaiting it
only waits. It can be passed, un-awaited, as an argument (top level, or inside lists,
tuples and dicts) to another ``.remote()``: that request is counted as queued at once and
goes to a replica once every response it holds has its value.

From a plain thread (a ``def`` method of a deployment runs on a worker thread; a driver
script's threads), ``response.result(timeout_s=...)`` blocks that thread until the value is
there, going through the Trio loop the response belongs to (its token). On a Trio or
asyncio thread it raises instead: there, ``await response``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Awaitable, Callable, Generator, Iterator
from typing import Any, Protocol, TypeVar

import trio

from actors import ActorRef, CallFuture, CallNotDeliveredError, RejectedError, StreamReceiver
from actors.lowlevel import StreamSender

from ..exceptions import RequestCancelledError, RequestTimeoutError, ServeShutdownError

T = TypeVar("T")

_CONTAINERS = (list, tuple, dict)
SHUT_DOWN = (
    "serve was shut down; call serve.run() again and use the handles it gives "
    "(handles and responses from before the shutdown cannot be used)"
)


# -- blocking from plain threads


def check_blocking_allowed(what: str, instead: str) -> None:
    """Raise RuntimeError when ``what`` (a call that blocks its thread) is made on a thread
    running a Trio or an asyncio loop, which it would stall or deadlock."""
    if trio.lowlevel.in_trio_run():
        where = "a Trio thread"
    else:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        where = "an asyncio event loop's thread"
    raise RuntimeError(
        f"{what} blocks its thread and was called from {where}, which it would stall or "
        f"deadlock; {instead}"
    )


class _Named(Protocol):
    """What a response keeps of its router: the deployment's name, for messages."""

    name: str


def on_loop(token: trio.lowlevel.TrioToken) -> bool:
    """Whether this thread runs the Trio loop ``token`` belongs to."""
    try:
        return trio.lowlevel.current_trio_token() is token
    except RuntimeError:
        return False


def run_on_loop(token: trio.lowlevel.TrioToken, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """``trio.from_thread.run`` on the loop of ``token``; ServeShutdownError if it is gone."""
    try:
        return trio.from_thread.run(fn, *args, trio_token=token)
    except trio.RunFinishedError as exc:
        raise ServeShutdownError(SHUT_DOWN) from exc


def run_sync_on_loop(token: trio.lowlevel.TrioToken, fn: Callable[..., T], *args: Any) -> T:
    """``trio.from_thread.run_sync`` on the loop of ``token``; ServeShutdownError if it is
    gone."""
    try:
        return trio.from_thread.run_sync(fn, *args, trio_token=token)
    except trio.RunFinishedError as exc:
        raise ServeShutdownError(SHUT_DOWN) from exc


async def wait_done(future: CallFuture, timeout_s: float | None) -> None:
    """Wait until ``future`` is done; RequestTimeoutError after ``timeout_s`` (the request
    keeps running)."""
    if timeout_s is None:
        await future.wait_done()
        return
    with trio.move_on_after(timeout_s):
        await future.wait_done()
        return
    raise RequestTimeoutError(f"no result within timeout_s={timeout_s}")


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
        "_token",
        "multiplexed_model_id",
        "source",
        "submitted_at",
    )

    def __init__(self, router: _Named, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]):
        self._router = router
        self._method = method
        self._args = args
        self._kwargs = kwargs
        self._inner: CallFuture | StreamReceiver | None = None
        self._assigned: trio.Event | None = None
        self._replica_id: str | None = None
        #: when the router took it, and where it came from ("handle" or "http")
        self.submitted_at = 0.0
        self.source = "handle"
        #: the loop the request lives in (responses are made on it), for plain threads
        self._token = trio.lowlevel.current_trio_token()
        #: the caller's Trio deadline when it made the request; it travels to the replica
        self._deadline = trio.current_effective_deadline()
        #: the multiplexed model this request is for (``handle.options(...)``), or ""
        self.multiplexed_model_id = ""

    # -- chaining

    def pending_upstream(self) -> list[DeploymentResponse] | None:
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

    def substitute(self) -> BaseException | None:
        """Replace upstream responses by their values; the first upstream error, if any."""
        try:
            self._args = tuple(_resolved(v) for v in self._args)
            self._kwargs = {k: _resolved(v) for k, v in self._kwargs.items()}
        except BaseException as exc:  # why: an upstream failure fails this request; returned
            return exc
        return None

    # -- the router's contract: how a router starts, settles, fails and requeues a request

    @property
    def method(self) -> str:
        """The deployment method the request calls."""
        return self._method

    def start_call(self, ref: ActorRef, method: str) -> CallFuture | StreamReceiver:
        """Send the request to the replica behind ``ref`` (as ``method``: the router may
        name a multiplexed model in it), with what is left of the caller's deadline."""
        timeout = None
        if self._deadline != math.inf:
            timeout = max(0.0, self._deadline - trio.current_time())
        return self._call(ref, method, timeout)

    def _call(
        self, ref: ActorRef, method: str, timeout: float | None
    ) -> CallFuture | StreamReceiver:
        raise NotImplementedError

    def done(self) -> bool:
        raise NotImplementedError

    def fail(self, error: BaseException) -> None:
        """End the request with ``error`` (a router's verdict: unavailable, back pressure,
        the replica died, ...), queued or running."""
        raise NotImplementedError

    def settle(self, inner: CallFuture | StreamReceiver) -> None:
        """The call ended on its own: its value, or the user's error, is the request's."""
        raise NotImplementedError

    def assigned(self, replica_id: str, inner: CallFuture | StreamReceiver) -> None:
        """A replica took the request; ``inner`` is its call there."""
        self._replica_id = replica_id
        self._inner = inner
        if self._assigned is not None:
            self._assigned.set()

    def requeued(self) -> None:
        """The replica refused the request (or died before reading it): it waits in the
        router's queue again."""
        self._replica_id = None
        self._inner = None
        if self._assigned is not None and self._assigned.is_set():
            self._assigned = None  # the next assignment needs a fresh event

    def on_value(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the request has ended (for requests chained to it)."""
        raise NotImplementedError

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
        self, router: _Named, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        super().__init__(router, method, args, kwargs)
        self._future = CallFuture(
            canceller=self._on_cancel,
            label=(router.name, method),
            cancelled_error=RequestCancelledError,
        )

    def __await__(self) -> Generator[Any, None, Any]:
        if not on_loop(self._token) and _in_asyncio():
            return _await_from_asyncio(self).__await__()
        return self._future.wait().__await__()

    def done(self) -> bool:
        """Whether the request has ended (with a value or an error)."""
        return self._future.done()

    def result(self, timeout_s: float | None = None) -> Any:
        """Block this (plain) thread until the value is there, as Ray Serve's
        ``DeploymentResponse.result()``: raises the request's error, or
        :class:`RequestTimeoutError` after ``timeout_s`` (counted from now, queueing
        included; the request keeps running). On a Trio or asyncio thread it raises
        RuntimeError: ``await response`` there."""
        check_blocking_allowed("DeploymentResponse.result()", "use `await response` there")
        future = self._future
        if not future.done():
            run_on_loop(self._token, wait_done, future, timeout_s)
        return future.result()

    def cancel(self) -> None:
        """Cancel the request; awaiting it then raises :class:`RequestCancelledError`.
        From a plain thread it is sent to the response's loop (after a shutdown: nothing
        is left to cancel)."""
        if on_loop(self._token):
            self._future.cancel()
            return
        # after a shutdown the loop is gone, and the request with it
        with contextlib.suppress(trio.RunFinishedError):
            trio.from_thread.run_sync(self._future.cancel, trio_token=self._token)

    def _on_cancel(self) -> None:
        inner = self._inner
        if inner is not None:
            inner.cancel()
        if self._assigned is not None:
            self._assigned.set()

    # -- the router's contract

    def _call(self, ref: ActorRef, method: str, timeout: float | None) -> CallFuture:
        return ref.submit(method, self._args, self._kwargs, timeout=timeout)

    def fail(self, error: BaseException) -> None:
        self._future.set_error(error)
        if self._assigned is not None:
            self._assigned.set()

    def settle(self, inner: CallFuture | StreamReceiver) -> None:
        assert isinstance(inner, CallFuture)
        error = inner.exception()
        if error is not None:
            self._future.set_error(error)
        else:
            self._future.set_result(inner.result())

    def on_value(self, callback: Callable[[], None]) -> None:
        self._future.add_done_callback(lambda _future: callback())

    def __repr__(self) -> str:
        state = "done" if self.done() else ("running" if self._inner else "queued")
        return f"<DeploymentResponse {self._router.name}.{self._method} {state}>"


class RequestUpload:
    """The request stream of a duplex request (an HTTP body, WebSocket messages): what
    :meth:`send` sends reaches the replica the request is assigned to, at the pace that
    replica reads (its credit). Nothing is sent before a replica has admitted the request,
    so one that is refused and requeued loses nothing: sending resumes at the next replica.
    Once the request has ended, ``send`` raises ``trio.BrokenResourceError``."""

    __slots__ = ("_closed", "_ended", "_lot", "_request", "_sender")

    def __init__(self, request: DeploymentResponseGenerator) -> None:
        self._request = request
        self._sender: StreamSender | None = None
        self._lot = trio.lowlevel.ParkingLot()
        self._closed = False
        self._ended = False

    # -- the request's side

    def attach(self, sender: StreamSender) -> None:
        self._sender = sender
        if self._ended:
            sender.end()
        self._lot.unpark_all()

    def detach(self) -> None:
        self._sender = None

    def close(self) -> None:
        self._closed = True
        self._lot.unpark_all()

    # -- the sender's side

    async def send(self, item: Any) -> None:
        """Send one item; waits for a replica, and for its credit."""
        while True:
            if self._closed:
                raise trio.BrokenResourceError(f"{self._request!r} has ended")
            sender = self._sender
            if sender is None:
                await self._lot.park()  # queued: wait for a replica
                continue
            try:
                await sender.send(item)
                return
            except trio.BrokenResourceError:
                if self._closed or self._sender is sender:
                    raise
                # the replica refused it and the router requeued it: the next one gets it

    def end(self) -> None:
        """No more items (idempotent)."""
        if self._ended:
            return
        self._ended = True
        if self._sender is not None:
            self._sender.end()


class DeploymentResponseGenerator(_Request):
    """The items of a streaming request: ``async for item in response``."""

    __slots__ = ("_error", "_finished", "upload")

    def __init__(
        self,
        router: _Named,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        upload: bool = False,
    ) -> None:
        super().__init__(router, method, args, kwargs)
        self._error: BaseException | None = None
        self._finished = False
        #: a duplex request's request stream (HTTP bodies and WebSocket messages)
        self.upload: RequestUpload | None = RequestUpload(self) if upload else None

    def done(self) -> bool:
        """Whether the stream has ended (items may still be waiting to be read)."""
        return self._finished

    # -- the router's contract

    def _call(self, ref: ActorRef, method: str, timeout: float | None) -> StreamReceiver:
        if self.upload is None:
            return ref.submit_stream(method, self._args, self._kwargs, timeout=timeout)
        receiver, sender = ref.submit_duplex(method, self._args, self._kwargs, timeout=timeout)
        self.upload.attach(sender)
        return receiver

    def fail(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error  # the first verdict stands
        self._end()

    def settle(self, inner: CallFuture | StreamReceiver) -> None:
        self._end()

    def _end(self) -> None:
        self._finished = True
        if self._assigned is not None:
            self._assigned.set()
        if self.upload is not None:
            self.upload.close()

    def requeued(self) -> None:
        super().requeued()
        if self.upload is not None:
            self.upload.detach()

    def on_value(self, callback: Callable[[], None]) -> None:
        raise TypeError("a streaming response cannot be passed to another request")

    def __aiter__(self) -> DeploymentResponseGenerator:
        return self

    def __anext__(self) -> Any:
        if not on_loop(self._token) and _in_asyncio():
            return _next_from_asyncio(self)
        return self._next()

    async def _next(self) -> Any:
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
        """Stop the stream (on the replica too); from a plain thread, through its loop."""
        if not on_loop(self._token):
            # after a shutdown the loop is gone, and the stream with it
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(self.cancel, trio_token=self._token)
            return
        if not self._finished:
            self.fail(RequestCancelledError(f"stream from {self._router.name} was cancelled"))
        inner = self._inner
        if inner is not None:
            inner.cancel()

    async def aclose(self) -> None:
        """Stop the stream (on the replica too), as :meth:`cancel` does."""
        self.cancel()
        await trio.lowlevel.checkpoint()

    # -- from plain threads: ``for item in response``

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        check_blocking_allowed(
            "iterating a DeploymentResponseGenerator with `for`", "use `async for` there"
        )
        more, item = run_on_loop(self._token, _next_item, self)
        if not more:
            raise StopIteration
        return item


async def _next_item(stream: DeploymentResponseGenerator) -> tuple[bool, Any]:
    try:
        return True, await stream.__anext__()
    except StopAsyncIteration:
        return False, None


_ANY_RESPONSE = (DeploymentResponse, ResponseWrapper)


# -- from asyncio code (deployments with event_loop="asyncio", or asyncio programs)


def _in_asyncio() -> bool:
    """Whether this thread runs an asyncio loop (where awaiting needs a bridge to Trio)."""
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


async def _await_from_asyncio(response: DeploymentResponse) -> Any:
    """``await response`` on an asyncio loop: the result arrives from the response's Trio
    loop through a future; cancelling the asyncio task cancels the request."""
    import asyncio
    import concurrent.futures

    bridge: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def settle(future: CallFuture) -> None:
        error = future.exception()
        if error is not None:
            bridge.set_exception(error)
        else:
            bridge.set_result(future.result())

    try:
        response._token.run_sync_soon(response._future.add_done_callback, settle)
    except trio.RunFinishedError:
        raise ServeShutdownError("serve was shut down; call serve.run() again") from None
    try:
        return await asyncio.wrap_future(bridge)
    except asyncio.CancelledError:  # why: a cancelled asyncio caller cancels the request
        with contextlib.suppress(trio.RunFinishedError):
            response._token.run_sync_soon(response._future.cancel)
        raise


async def _next_from_asyncio(stream: DeploymentResponseGenerator) -> Any:
    """The next item of a stream, for ``async for`` on an asyncio loop."""
    import asyncio

    try:
        return await asyncio.to_thread(
            lambda: trio.from_thread.run(stream._next, trio_token=stream._token)
        )
    except asyncio.CancelledError:  # why: a cancelled asyncio consumer cancels the stream
        stream.cancel()
        raise
