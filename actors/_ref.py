"""Actor references: how a caller reaches an actor, in another process or in this one.

``ActorRef`` is the interface both kinds share: ``submit`` starts a call at once and
returns a :class:`CallFuture`; ``submit_stream`` returns a :class:`StreamReceiver`;
``await ref.call(...)`` is submit-then-wait.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Protocol, cast

import trio

from . import _codec, _protocol, _wire
from ._future import CallFuture, StreamReceiver, StreamSender
from ._link import Link
from .exceptions import (
    ActorDiedError,
    CallNotDeliveredError,
    DeadlineExceededError,
    RejectedError,
)

STREAM_WINDOW = _protocol.STREAM_WINDOW
#: how long ``RemoteRef.aclose()`` waits for the socket to be closed (the link's close
#: handshake is bounded by 1 s, the websocket's by 2 s)
CLOSE_TIMEOUT_S = 5.0


class ActorRef(Protocol):
    """Something calls can be submitted to."""

    name: str

    @property
    def alive(self) -> bool:
        """Whether calls can reach the actor now."""

    def submit(
        self,
        method: str,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> CallFuture:
        """Start a call at once; its :class:`CallFuture`."""

    def submit_stream(
        self,
        method: str,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> StreamReceiver:
        """Start a streaming call at once; its :class:`StreamReceiver`."""

    def submit_duplex(
        self,
        method: str,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> tuple[StreamReceiver, StreamSender]:
        """Start a duplex call: its reply stream and its request stream's sender."""

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Submit a call and wait for its value (raises its error)."""


class RemoteRef:
    """Caller side of one connection to an actor; many calls multiplexed by id.

    Created by :func:`actors.connect` (which owns the connection's tasks). When the
    connection is lost, every pending call fails with :class:`ActorDiedError` at once.
    ``await ref.aclose()`` closes the connection (its socket too) when it is no longer
    needed, e.g. when the actor has left. The connection's books (ids, what is pending,
    acknowledgements, stream credit) are a :class:`~actors._protocol.CallerProtocol`.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.protocol = _protocol.CallerProtocol()
        self.link: Link | None = None
        self._detached = trio.Event()

    @property
    def received_upto(self) -> int:
        """Every call with an id up to this one has been read by the actor."""
        return self.protocol.received_upto

    def attach(self, link: Link) -> None:
        """Use ``link`` for this reference's calls (done by :func:`actors.connect`)."""
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
        """Whether the connection is open."""
        return self.link is not None and not self.link.closed

    @property
    def in_flight(self) -> int:
        """Calls sent and not ended yet."""
        return self.protocol.in_flight

    def _send_call(
        self,
        owner: Any,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any] | None,
        timeout: float | None,
        stream: bool = False,
        duplex: bool = False,
    ) -> int:
        link = self.link
        if link is None or link.closed:
            reason = link.close_reason if link is not None else "not connected"
            raise ActorDiedError(f"actor {self.name} is unreachable: {reason}", actor=self.name)
        protocol = self.protocol
        call_id = protocol.open(owner, stream=stream, duplex=duplex)
        try:
            data = _codec.encode_call(
                call_id, method, args, kwargs or {}, timeout, stream=stream, duplex=duplex
            )
            link.send_encoded_nowait(data)
        except BaseException:  # why: a call that cannot be sent is forgotten; re-raised
            protocol.forget(call_id)
            raise
        return call_id

    def submit(
        self,
        method: str,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> CallFuture:
        """Send a call now; its :class:`CallFuture` (encoding errors fail the future)."""
        fut = CallFuture(label=(self.name, method))
        try:
            call_id = self._send_call(fut, method, args, kwargs, timeout)
        except Exception as exc:  # why: encoding and size errors fail this call only
            fut.set_error(exc)
            return fut
        fut._canceller = partial(self._cancel, call_id)
        return fut

    def submit_stream(
        self,
        method: str,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> StreamReceiver:
        """Send a streaming call now; its :class:`StreamReceiver`."""
        return self._submit_streaming(method, args, kwargs, timeout=timeout, duplex=False)[0]

    def submit_duplex(
        self,
        method: str,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> tuple[StreamReceiver, StreamSender]:
        """Start a duplex call of a :func:`~actors.lowlevel.duplex_stream` method: its
        reply stream, and the sender of its request stream."""
        receiver, sender = self._submit_streaming(
            method, args, kwargs, timeout=timeout, duplex=True
        )
        assert sender is not None
        return receiver, sender

    def _submit_streaming(
        self,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any] | None,
        *,
        timeout: float | None,
        duplex: bool,
    ) -> tuple[StreamReceiver, StreamSender | None]:
        holder: list[int] = []
        label = f"{self.name}.{method}"
        receiver = StreamReceiver(
            window=_protocol.STREAM_WINDOW,
            ack=lambda n: self._ack(holder[0], n),
            canceller=lambda: self._cancel(holder[0]),
            label=label,
        )
        sender = None
        if duplex:
            sender = StreamSender(
                send=lambda item: self._send_item(holder[0], item),
                end=lambda: self._end_upload(holder[0]),
                label=label,
            )
            receiver.sender = sender
        try:
            holder.append(
                self._send_call(receiver, method, args, kwargs, timeout, stream=True, duplex=duplex)
            )
        except Exception as exc:  # why: encoding and size errors fail this call only
            receiver.finish(exc)
        return receiver, sender

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Submit a call and wait for its value (raises its error)."""
        return await self.submit(method, args, kwargs).wait()

    def _send(self, envelope: _wire.Envelope | None) -> None:
        if envelope is not None and self.link is not None and not self.link.closed:
            self.link.send_nowait(envelope)

    def _cancel(self, call_id: int) -> None:
        self._send(self.protocol.cancel(call_id))

    def _ack(self, call_id: int, n: int) -> None:
        self._send(self.protocol.ack(call_id, n))

    def _send_item(self, call_id: int, item: Any) -> bool:
        """Send one request-stream item if the actor's credit allows; encoding and size
        errors raise here, in the sender's task."""
        if self.protocol.credit(call_id) <= 0:
            return False
        payload = _codec.encode_value(item)
        envelope = self.protocol.send_item(call_id, payload)
        assert envelope is not None
        link = self.link
        if link is not None and not link.closed:
            link.send_nowait(envelope)
        return True

    def _end_upload(self, call_id: int) -> None:
        self._send(self.protocol.end_upload(call_id))

    # -- called by the link's reader

    def on_envelope(self, env: _wire.Envelope) -> None:
        """Take one envelope from the connection's reader (synchronous)."""
        event = self.protocol.receive(env)
        if event is None:
            return  # acknowledgements, heartbeats, envelopes that crossed a cancel
        # the books already told the envelope's kind: dispatch on it, not on the type again
        kind, owner = event
        if kind == _protocol.RESULT:
            try:
                value = _codec.decode_value(cast(_wire.Result, env).value)
            except Exception as exc:  # why: a bad payload fails its call, not the link
                owner.set_error(exc)
            else:
                owner.set_result(value)
        elif kind == _protocol.ITEM:
            item = cast(_wire.StreamItem, env)
            try:
                owner.push(_codec.decode_value(item.value))
            except Exception as exc:  # why: a bad item ends its stream, not the link
                self._cancel(item.id)
                owner.finish(exc)
        elif kind == _protocol.END:
            owner.finish()
        elif kind == _protocol.FAILURE:
            self._fail(owner, _codec.decode_error(cast(_wire.Failure, env).error))
        elif kind == _protocol.REJECTED:
            self._fail(owner, RejectedError(cast(_wire.Rejected, env).reason, actor=self.name))
        elif kind == _protocol.CREDIT and owner.sender is not None:
            owner.sender.grant()

    @staticmethod
    def _fail(owner: CallFuture | StreamReceiver, error: BaseException) -> None:
        if isinstance(owner, CallFuture):
            owner.set_error(error)
        else:
            owner.finish(error)

    def on_close(self, reason: str) -> None:
        """The connection is gone: calls the actor had read fail with ``ActorDiedError``,
        the others (they never started) with ``CallNotDeliveredError``."""
        for _call_id, owner, delivered in self.protocol.lose():
            self._fail(owner, self._lost(delivered, reason))

    def _lost(self, delivered: bool, reason: str) -> ActorDiedError:
        if not delivered:
            return CallNotDeliveredError(
                f"actor {self.name} died before reading the call: {reason}", actor=self.name
            )
        return ActorDiedError(f"actor {self.name} died: {reason}", actor=self.name)


__all__ = ["ActorRef", "DeadlineExceededError", "RemoteRef"]
