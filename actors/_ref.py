"""Actor references: how a caller reaches an actor, in another process or in this one.

``ActorRef`` is the interface both kinds share: ``submit`` starts a call at once and
returns a :class:`CallFuture`; ``submit_stream`` returns a :class:`StreamReceiver`;
``await ref.call(...)`` is submit-then-wait.
"""

from __future__ import annotations

import itertools
from typing import Any, Protocol

import trio

from . import _codec, _wire
from ._future import CallFuture, StreamReceiver
from ._link import Link
from .exceptions import (
    ActorDiedError,
    CallNotDeliveredError,
    DeadlineExceededError,
    RejectedError,
)

STREAM_WINDOW = 16
#: how long ``RemoteRef.aclose()`` waits for the socket to be closed (the link's close
#: handshake is bounded by 1 s, the websocket's by 2 s)
CLOSE_TIMEOUT_S = 5.0


class ActorRef(Protocol):
    """Something calls can be submitted to."""

    name: str

    @property
    def alive(self) -> bool: ...

    def submit(
        self,
        method: str,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> CallFuture: ...

    def submit_stream(
        self,
        method: str,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> StreamReceiver: ...

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any: ...


class RemoteRef:
    """Caller side of one connection to an actor; many calls multiplexed by id.

    Created by :func:`actors.connect` (which owns the connection's tasks). When the
    connection is lost, every pending call fails with :class:`ActorDiedError` at once.
    ``await ref.aclose()`` closes the connection (its socket too) when it is no longer
    needed, e.g. when the actor has left.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._ids = itertools.count(1)
        self._pending: dict[int, CallFuture] = {}
        self._streams: dict[int, StreamReceiver] = {}
        self.link: Link | None = None
        #: every call with an id up to this one has been read by the actor
        self.received_upto = 0
        self._detached = trio.Event()

    def attach(self, link: Link) -> None:
        self.link = link

    def detach(self) -> None:
        """Called by the connection's owner once its socket is closed."""
        self._detached.set()

    async def aclose(self) -> None:
        """Close the connection: pending calls fail with :class:`ActorDiedError` (or
        :class:`CallNotDeliveredError`), and this returns once the socket is closed
        (bounded: the close handshake waits at most ``DISCONNECT_TIMEOUT_S`` for the
        peer). Idempotent; a no-op for a reference that was never connected."""
        if self.link is None:
            await trio.lowlevel.checkpoint()
            return
        self.link.close("closed by its owner")
        with trio.move_on_after(CLOSE_TIMEOUT_S):
            await self._detached.wait()

    @property
    def alive(self) -> bool:
        return self.link is not None and not self.link.closed

    @property
    def in_flight(self) -> int:
        return len(self._pending) + len(self._streams)

    def _send_call(
        self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any] | None, **opts: Any
    ) -> int:
        link = self.link
        if link is None or link.closed:
            reason = link.close_reason if link is not None else "not connected"
            raise ActorDiedError(f"actor {self.name} is unreachable: {reason}", actor=self.name)
        call_id = next(self._ids)
        payload = _codec.encode_args(args, kwargs or {})
        link.send_nowait(_wire.Call(call_id, method, _wire.Raw(payload), **opts))
        return call_id

    def submit(
        self,
        method: str,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> CallFuture:
        fut = CallFuture(label=f"{self.name}.{method}")
        try:
            call_id = self._send_call(method, args, kwargs, timeout=timeout)
        except Exception as exc:  # why: encoding and size errors fail this call only
            fut.set_error(exc)
            return fut
        fut._canceller = lambda: self._cancel(call_id)
        self._pending[call_id] = fut
        return fut

    def submit_stream(
        self,
        method: str,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> StreamReceiver:
        holder: list[int] = []
        receiver = StreamReceiver(
            window=STREAM_WINDOW,
            ack=lambda n: self._ack(holder[0], n),
            canceller=lambda: self._cancel(holder[0]),
            label=f"{self.name}.{method}",
        )
        try:
            holder.append(self._send_call(method, args, kwargs, timeout=timeout, stream=True))
        except Exception as exc:  # why: encoding and size errors fail this call only
            receiver.finish(exc)
            return receiver
        self._streams[holder[0]] = receiver
        return receiver

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return await self.submit(method, args, kwargs).wait()

    def _cancel(self, call_id: int) -> None:
        self._pending.pop(call_id, None)
        self._streams.pop(call_id, None)
        if self.link is not None and not self.link.closed:
            self.link.send_nowait(_wire.Cancel(call_id))

    def _ack(self, call_id: int, n: int) -> None:
        if self.link is not None and not self.link.closed and call_id in self._streams:
            self.link.send_nowait(_wire.StreamAck(call_id, n))

    # -- called by the link's reader

    def on_envelope(self, env: _wire.Envelope) -> None:
        if type(env) is _wire.Result:
            fut = self._pending.pop(env.id, None)
            if fut is not None:
                try:
                    value = _codec.decode_value(env.value)
                except Exception as exc:  # why: a bad payload fails its call, not the link
                    fut.set_error(exc)
                else:
                    fut.set_result(value)
        elif type(env) is _wire.StreamItem:
            receiver = self._streams.get(env.id)
            if receiver is not None:
                try:
                    receiver.push(_codec.decode_value(env.value))
                except Exception as exc:  # why: a bad item ends its stream, not the link
                    self._streams.pop(env.id, None)
                    receiver.finish(exc)
                    self._cancel(env.id)
        elif type(env) is _wire.StreamEnd:
            receiver = self._streams.pop(env.id, None)
            if receiver is not None:
                receiver.finish()
        elif type(env) is _wire.Failure:
            self._fail(env.id, _codec.decode_error(env.error))
        elif type(env) is _wire.Rejected:
            self._fail(env.id, RejectedError(env.reason, actor=self.name))
        elif type(env) is _wire.Received:
            self.received_upto = max(self.received_upto, env.upto)
        # heartbeats and anything else a caller does not expect are ignored

    def _fail(self, call_id: int, error: BaseException) -> None:
        fut = self._pending.pop(call_id, None)
        if fut is not None:
            fut.set_error(error)
            return
        receiver = self._streams.pop(call_id, None)
        if receiver is not None:
            receiver.finish(error)

    def on_close(self, reason: str) -> None:
        """The connection is gone: calls the actor had read fail with ``ActorDiedError``,
        the others (they never started) with ``CallNotDeliveredError``."""
        pending, self._pending = self._pending, {}
        streams, self._streams = self._streams, {}
        for call_id, fut in pending.items():
            fut.set_error(self._lost(call_id, reason))
        for call_id, receiver in streams.items():
            receiver.finish(self._lost(call_id, reason))

    def _lost(self, call_id: int, reason: str) -> ActorDiedError:
        if call_id > self.received_upto:
            return CallNotDeliveredError(
                f"actor {self.name} died before reading the call: {reason}", actor=self.name
            )
        return ActorDiedError(f"actor {self.name} died: {reason}", actor=self.name)


__all__ = ["ActorRef", "DeadlineExceededError", "RemoteRef"]
