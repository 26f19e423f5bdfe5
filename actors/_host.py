"""Hosting an object as an actor: running its methods for callers, local or remote.

``ActorHost`` owns the object and a nursery in which every call runs as its own task, so a
call can be cancelled (by its caller, by its deadline, or by the host stopping) without
touching the others. ``async def`` methods run in the host's Trio loop; plain ``def`` methods
run on worker threads so they never block it; generator methods stream.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from . import _codec, _wire
from ._future import CallFuture, StreamReceiver
from ._link import Link
from .exceptions import (
    ActorDiedError,
    CallCancelledError,
    DeadlineExceededError,
    RejectedError,
)


def push_stream(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Mark an ``async def fn(emit, *args, **kwargs)`` as a push-style stream: it sends
    items with ``await emit(item)`` (which waits for the caller's credit) instead of
    yielding them. Callers see an ordinary stream."""
    fn.__actor_push_stream__ = True  # type: ignore[attr-defined]
    return fn


def method_kind(fn: Callable[..., Any]) -> str:
    if getattr(fn, "__actor_push_stream__", False):
        return "push"
    target = inspect.unwrap(fn)
    if inspect.isasyncgenfunction(target):
        return "asyncgen"
    if inspect.isgeneratorfunction(target):
        return "syncgen"
    if inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(
        getattr(target, "__call__", None)  # noqa: B004
    ):
        return "async"
    return "sync"


class _Credit:
    """Stream backpressure: how many more items the caller is ready for."""

    def __init__(self, window: int) -> None:
        self.available = window
        self._lot = trio.lowlevel.ParkingLot()

    def add(self, n: int) -> None:
        self.available += n
        self._lot.unpark_all()

    async def take(self) -> None:
        while self.available <= 0:
            await self._lot.park()
        self.available -= 1


class _Running:
    """A started call: its cancel scope, and whether it still counts as ongoing."""

    __slots__ = ("released", "scope")

    def __init__(self) -> None:
        self.scope = trio.CancelScope()
        self.released = False


class _Reply:
    """Where a call's outcome goes: an envelope on a link, or a local future."""

    def result(self, value: Any) -> None:
        raise NotImplementedError

    def error(self, exc: BaseException) -> None:
        raise NotImplementedError

    def item(self, value: Any) -> None:
        raise NotImplementedError

    def end(self) -> None:
        raise NotImplementedError


class _WireReply(_Reply):
    __slots__ = ("call_id", "link")

    def __init__(self, link: Link, call_id: int) -> None:
        self.link = link
        self.call_id = call_id

    def result(self, value: Any) -> None:
        self.link.send_nowait(_wire.Result(self.call_id, _wire.Raw(_codec.encode_value(value))))

    def error(self, exc: BaseException) -> None:
        self.link.send_nowait(_wire.Failure(self.call_id, _wire.Raw(_codec.encode_error(exc))))

    def item(self, value: Any) -> None:
        self.link.send_nowait(_wire.StreamItem(self.call_id, _wire.Raw(_codec.encode_value(value))))

    def end(self) -> None:
        self.link.send_nowait(_wire.StreamEnd(self.call_id))


class _LocalReply(_Reply):
    __slots__ = ("target",)

    def __init__(self, target: CallFuture | StreamReceiver) -> None:
        self.target = target

    def result(self, value: Any) -> None:
        assert isinstance(self.target, CallFuture)
        self.target.set_result(value)

    def error(self, exc: BaseException) -> None:
        if isinstance(self.target, CallFuture):
            self.target.set_error(exc)
        else:
            self.target.finish(exc)

    def item(self, value: Any) -> None:
        assert isinstance(self.target, StreamReceiver)
        self.target.push(value)

    def end(self) -> None:
        assert isinstance(self.target, StreamReceiver)
        self.target.finish()


class ActorHost:
    """Runs calls on ``obj``.

    Tasks: one per call, in ``nursery`` (the host's owner's). At most ``max_ongoing`` calls
    run at once across all callers; beyond that a call is refused with ``Rejected`` and never
    starts. ``stop_accepting()`` then ``await wait_idle()`` drains; cancelling the nursery
    cancels every call (callers get ``CallCancelledError``).
    """

    def __init__(
        self,
        obj: object,
        nursery: trio.Nursery,
        *,
        name: str = "actor",
        max_ongoing: int | None = None,
    ) -> None:
        self.obj = obj
        self.name = name
        self.max_ongoing = max_ongoing if max_ongoing is not None else math.inf
        self._nursery = nursery
        self._methods: dict[str, tuple[Callable[..., Any], str]] = {}
        self.ongoing = 0
        self.accepting = True
        #: the links of remote callers currently connected (for flushing on stop)
        self.links: set[Link] = set()
        self._idle = trio.lowlevel.ParkingLot()
        dispatch = getattr(obj, "__actor_dispatch__", None)
        self._dispatch: Callable[[str], Callable[..., Any]] | None = dispatch
        #: called as ``observer(method, seconds, ok)`` after every call, if set
        self.observer: Callable[[str, float, bool], None] | None = None
        #: called with the exception a call raised, before it is sent to the caller (to add
        #: notes, say); nothing runs on the success path
        self.on_error: Callable[[BaseException], None] | None = None
        #: methods admitted even at ``max_ongoing`` and not counted (health checks and the
        #: like must reach a busy actor)
        self.control_methods: frozenset[str] = frozenset()
        attach = getattr(obj, "__actor_attach__", None)
        if attach is not None:
            attach(self)

    # -- method lookup

    def resolve(self, name: str) -> tuple[Callable[..., Any], str]:
        cached = self._methods.get(name)
        if cached is not None:
            return cached
        fn: Callable[..., Any]
        if self._dispatch is not None:
            fn = self._dispatch(name)
        else:
            if name.startswith("_") and name != "__call__":
                raise AttributeError(f"{self.name} has no public method {name!r}")
            found = getattr(self.obj, name, None)
            if found is None or not callable(found):
                raise AttributeError(f"{self.name} has no method {name!r}")
            fn = found
        entry = (fn, method_kind(fn))
        self._methods[name] = entry
        return entry

    # -- admission

    def try_admit(self, method: str | None = None) -> str | None:
        """Count a new call in, or return why it is refused (``"control"`` methods are
        admitted uncounted)."""
        if method in self.control_methods:
            return None
        if not self.accepting:
            return f"{self.name} is stopping and takes no new calls"
        if self.ongoing >= self.max_ongoing:
            return f"{self.name} is at max_ongoing={self.max_ongoing}"
        self.ongoing += 1
        return None

    def _release(self) -> None:
        self.ongoing -= 1
        if self.ongoing == 0:
            self._idle.unpark_all()

    def cancel(self, running: _Running) -> None:
        """Cancel a call and stop counting it at once: a call the caller sends right after
        cancelling is admitted even though the cancelled task has not unwound yet."""
        running.scope.cancel()
        if not running.released:
            running.released = True
            self._release()

    def stop_accepting(self) -> None:
        self.accepting = False

    async def wait_idle(self) -> None:
        while self.ongoing:
            await self._idle.park()

    async def flush(self) -> None:
        """Wait until every reply queued so far has been handed to its socket."""
        for link in list(self.links):
            await link.flush()

    # -- running

    def start(
        self,
        reply: _Reply,
        method: str,
        payload: bytes | _wire.Raw | None,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        timeout: float | None,
        credit: _Credit | None,
        gate: trio.Event | None = None,
    ) -> _Running:
        """Start one admitted call; returns its handle for :meth:`cancel`. With a ``gate``,
        the call's work begins only once the gate is set."""
        running = _Running()
        if method in self.control_methods:
            running.released = True  # never counted
        if timeout is not None:
            running.scope.deadline = trio.current_time() + max(timeout, 0.0)
        self._nursery.start_soon(
            self._run, running, reply, method, payload, args, kwargs, credit, gate
        )
        return running

    async def _run(
        self,
        running: _Running,
        reply: _Reply,
        method: str,
        payload: bytes | _wire.Raw | None,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        credit: _Credit | None,
        gate: trio.Event | None,
    ) -> None:
        observer = self.observer
        started = trio.current_time() if observer is not None else 0.0
        ok = False
        scope = running.scope
        try:
            with scope:
                try:
                    if gate is not None and not gate.is_set():
                        await gate.wait()  # the caller must hear the call was read first
                    if payload is not None:
                        args, kwargs = _codec.decode_args(payload)
                    fn, kind = self._methods.get(method) or self.resolve(method)
                    if credit is None:
                        if kind == "async":
                            value = await fn(*args, **kwargs)
                        else:
                            value = await self._invoke(fn, kind, args, kwargs)
                        ok = True
                        reply.result(value)
                    else:
                        await self._stream(reply, fn, kind, args, kwargs, credit)
                        ok = True
                        reply.end()
                except Exception as exc:
                    if self.on_error is not None:
                        self.on_error(exc)
                    reply.error(exc)
            if scope.cancelled_caught:
                if scope.deadline <= trio.current_time():
                    reply.error(DeadlineExceededError(f"{self.name}.{method} passed its deadline"))
                else:
                    reply.error(CallCancelledError(f"{self.name}.{method} was cancelled"))
        except trio.Cancelled:  # why: the host is stopping; tell the caller, then unwind
            with contextlib.suppress(Exception):
                reply.error(ActorDiedError(f"{self.name} stopped while running {method}"))
            raise
        except Exception:  # why: the link may be gone; the caller is told by its loss instead
            pass
        finally:
            if not running.released:
                running.released = True
                self._release()
            if observer is not None:
                observer(method, trio.current_time() - started, ok)

    @staticmethod
    async def _invoke(
        fn: Callable[..., Any], kind: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        if kind == "async":
            return await fn(*args, **kwargs)
        if kind == "sync":
            return await trio.to_thread.run_sync(
                lambda: fn(*args, **kwargs), abandon_on_cancel=True
            )
        raise TypeError(f"{fn.__name__} is a generator; call it as a stream")

    @staticmethod
    async def _stream(
        reply: _Reply,
        fn: Callable[..., Any],
        kind: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        credit: _Credit,
    ) -> None:
        if kind == "push":

            async def emit(item: Any) -> None:
                await credit.take()
                reply.item(item)

            await fn(emit, *args, **kwargs)
        elif kind == "asyncgen":
            agen = fn(*args, **kwargs)
            try:
                async for item in agen:
                    await credit.take()
                    reply.item(item)
            finally:
                with trio.CancelScope(shield=True):  # why: finalise the user's generator
                    with trio.move_on_after(5):
                        await agen.aclose()
        elif kind == "syncgen":
            gen = fn(*args, **kwargs)
            done = object()
            try:
                while True:
                    item = await trio.to_thread.run_sync(next, gen, done, abandon_on_cancel=True)
                    if item is done:
                        break
                    await credit.take()
                    reply.item(item)
            finally:
                # a cancelled next() may still be running on its (abandoned) thread, and a
                # generator cannot be closed while it runs: then it is left to finish
                with contextlib.suppress(ValueError):
                    gen.close()
        else:
            raise TypeError(f"{getattr(fn, '__name__', fn)} is not a generator; call it plainly")

    # -- local (inline) calls

    def submit_local(
        self,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        timeout: float | None = None,
    ) -> CallFuture:
        fut = CallFuture(label=f"{self.name}.{method}")
        refused = self.try_admit(method)
        if refused is not None:
            fut.set_error(RejectedError(refused, actor=self.name))
            return fut
        running = self.start(
            _LocalReply(fut), method, None, args, kwargs, timeout=timeout, credit=None
        )
        fut._canceller = lambda: self.cancel(running)
        return fut

    def submit_local_stream(
        self,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        timeout: float | None = None,
        window: int = 16,
    ) -> StreamReceiver:
        credit = _Credit(window)
        scope_holder: list[_Running] = []
        receiver = StreamReceiver(
            window=window,
            ack=credit.add,
            canceller=lambda: self.cancel(scope_holder[0]),
            label=f"{self.name}.{method}",
        )
        refused = self.try_admit(method)
        if refused is not None:
            receiver.finish(RejectedError(refused, actor=self.name))
            return receiver
        scope_holder.append(
            self.start(
                _LocalReply(receiver), method, None, args, kwargs, timeout=timeout, credit=credit
            )
        )
        return receiver

    # -- remote calls over a link

    def session(self, link: Link) -> HostSession:
        return HostSession(self, link)


class HostSession:
    """The host's side of one caller's connection: its calls by id, for ``Cancel``."""

    def __init__(self, host: ActorHost, link: Link) -> None:
        self.host = host
        self.link = link
        self.scopes: dict[int, _Running] = {}
        #: every call still running for this caller (ids may be reused by a bad caller)
        self.running: set[_Running] = set()
        self.credits: dict[int, _Credit] = {}
        #: the highest call id read, and the highest the caller has been told about
        self._read_upto = 0
        self._acked_upto = 0
        #: calls read since the last acknowledgement wait on this before they start
        self._gate: trio.Event | None = None

    def after_batch(self) -> Awaitable[None] | None:
        """After each incoming message: acknowledge the calls it held (see ``Received``)."""
        if self._read_upto <= self._acked_upto and self._gate is None:
            return None
        return self._acknowledge()

    async def _acknowledge(self) -> None:
        upto, gate, self._gate = self._read_upto, self._gate, None
        if upto > self._acked_upto:
            try:
                await self.link.send_now(_wire.Received(upto))
            except BaseException:  # why: calls the caller never heard of must not run; re-raised
                self.close()  # cancels every call of this caller, the waiting ones too
                raise
            self._acked_upto = upto
        if gate is not None:
            gate.set()

    def on_envelope(self, env: _wire.Envelope) -> None:
        t = type(env)
        if t is _wire.Call:
            self._on_call(env)  # type: ignore[arg-type]
        elif t is _wire.Cancel:
            scope = self.scopes.get(env.id)  # type: ignore[union-attr]
            if scope is not None:
                self.host.cancel(scope)
        elif t is _wire.StreamAck:
            credit = self.credits.get(env.id)  # type: ignore[union-attr]
            if credit is not None:
                credit.add(env.n)  # type: ignore[union-attr]

    def _on_call(self, call: _wire.Call) -> None:
        timeout = call.timeout
        if timeout is not None and math.isnan(timeout):
            self.link.close(
                f"call {call.id} has a timeout that is not a number", protocol_error=True
            )
            return
        if call.id > self._read_upto:
            self._read_upto = call.id
        refused = self.host.try_admit(call.method)
        if refused is not None:
            self.link.send_nowait(_wire.Rejected(call.id, refused))
            return
        credit = _Credit(16) if call.stream else None
        if credit is not None:
            self.credits[call.id] = credit
        reply = _SessionReply(self, call.id)
        if self._gate is None:
            self._gate = trio.Event()
        running = self.host.start(
            reply,
            call.method,
            call.payload,
            (),
            {},
            timeout=call.timeout,
            credit=credit,
            gate=self._gate,
        )
        reply.running = running
        self.scopes[call.id] = running
        self.running.add(running)

    def close(self) -> None:
        """The caller is gone: cancel everything it asked for."""
        for running in self.running:
            running.scope.cancel()
        self.running.clear()
        self.scopes.clear()
        self.credits.clear()


class _SessionReply(_WireReply):
    __slots__ = ("running", "session")

    def __init__(self, session: HostSession, call_id: int) -> None:
        super().__init__(session.link, call_id)
        self.session = session
        self.running: _Running | None = None

    def _done(self) -> None:
        session = self.session
        if session.scopes.get(self.call_id) is self.running:
            del session.scopes[self.call_id]
            session.credits.pop(self.call_id, None)
        session.running.discard(self.running)

    def result(self, value: Any) -> None:
        self._done()
        try:
            super().result(value)
        except Exception as exc:  # why: an unencodable or oversized result fails its call only
            super().error(exc)

    def error(self, exc: BaseException) -> None:
        self._done()
        super().error(exc)

    def end(self) -> None:
        self._done()
        super().end()

    def item(self, value: Any) -> None:
        super().item(value)
