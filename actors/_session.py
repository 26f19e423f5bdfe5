"""The host's side of one caller's connection: the I/O shell around a
:class:`~actors._protocol.HostProtocol`.

The link's reader hands each envelope to :meth:`HostSession.on_envelope` (synchronous);
after each websocket message, :meth:`HostSession.after_batch` acknowledges the calls that
message held, and only then lets them run (see ``actors._protocol`` for the rules).
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, cast

from . import _codec, _protocol, _wire
from ._future import StreamReceiver
from ._host import ActorHost, Credit, Reply
from ._link import Link
from ._runners import Running


class BookedCredit(Credit):
    """A remote call's reply-stream credit, counted by its connection's protocol books."""

    __slots__ = ("_call_id", "_protocol")

    def __init__(self, protocol: _protocol.HostProtocol, call_id: int) -> None:
        super().__init__(0)
        self._protocol = protocol
        self._call_id = call_id

    def try_take(self) -> bool:
        return self._protocol.take_credit(self._call_id)


class HostSession:
    """Runs one caller's calls on ``host``; knows them by id, for ``Cancel`` and credit.

    Tasks: none of its own (calls run in the host's nursery). ``close()`` -- the caller is
    gone -- cancels every call it made.
    """

    def __init__(self, host: ActorHost, link: Link) -> None:
        self.host = host
        self.link = link
        self.protocol = _protocol.HostProtocol()
        #: every call still running for this caller (ids may be reused by a bad caller,
        #: so the books by id may not know them all)
        self.running: set[Running] = set()
        #: calls read since the last acknowledgement: they run once it has been sent
        self._unacknowledged: list[Running] = []
        #: envelopes that may only follow the acknowledgement (request-stream credit: a
        #: caller that has it must know its call was delivered)
        self._after_ack: list[_wire.Envelope] = []

    def after_batch(self) -> Awaitable[None] | None:
        """After each incoming message: acknowledge the calls it held (see ``Received``)."""
        if not self._unacknowledged and self.protocol.acknowledgement() is None:
            return None
        return self._acknowledge()

    async def _acknowledge(self) -> None:
        received = self.protocol.acknowledgement()
        if received is not None:
            try:
                await self.link.send_now(received)
            except BaseException:  # why: calls the caller never heard of must not run; re-raised
                self.close()  # cancels every call of this caller, the unacknowledged ones too
                raise
            self.protocol.acknowledged(received.upto)
        after, self._after_ack = self._after_ack, []
        for envelope in after:
            self.link.send_nowait(envelope)
        calls, self._unacknowledged = self._unacknowledged, []
        dispatch = self.host.dispatch
        for running in calls:
            dispatch(running)

    def on_envelope(self, env: _wire.Envelope) -> None:
        try:
            event = self.protocol.receive(env)
        except _protocol.ProtocolViolation as exc:
            self.link.close(str(exc), protocol_error=True)
            return
        if event is None:
            return
        # the books already told the envelope's kind: dispatch on it, not on the type again
        kind, owner = event
        if kind == _protocol.CALL:
            self._on_call(cast(_wire.Call, env))
        elif kind == _protocol.CANCEL:
            self.host.cancel(owner.running)
        elif kind == _protocol.CREDIT:
            if owner.credit is not None:
                owner.credit.wake()
        elif kind == _protocol.ITEM:
            inbox: StreamReceiver = owner.inbox
            try:
                inbox.push(_codec.decode_value(cast(_wire.StreamItem, env).value))
            except Exception as exc:  # why: a bad item ends the request stream only
                inbox.finish(exc)
        elif kind == _protocol.END:
            owner.inbox.finish()

    def _on_call(self, call: _wire.Call) -> None:
        refused = self.host.try_admit(call.method)
        if refused is not None:
            self.link.send_nowait(self.protocol.refuse(call, refused))
            return
        reply = SessionReply(self, call.id)
        grant = self.protocol.admit(call, reply)
        if call.stream or call.duplex:
            reply.credit = BookedCredit(self.protocol, call.id)
        if grant is not None:
            reply.inbox = StreamReceiver(
                window=grant.n,
                ack=lambda n: self._grant(call.id, n),
                canceller=lambda: None,
                label=f"{self.host.name}.{call.method} request stream",
            )
            self._after_ack.append(grant)
        running = reply.running = self.host.start(
            reply,
            call.method,
            call.payload,
            (),
            {},
            timeout=call.timeout,
            credit=reply.credit,
            inbox=reply.inbox,
            dispatch=False,
            now=None if call.timeout is None else self.link.read_at,
        )
        self._unacknowledged.append(running)
        self.running.add(running)

    def _grant(self, call_id: int, n: int) -> None:
        envelope = self.protocol.grant(call_id, n)
        if envelope is not None and not self.link.closed:
            self.link.send_nowait(envelope)

    def close(self) -> None:
        """The caller is gone: cancel everything it asked for (what was never acknowledged
        never runs)."""
        for running in self._unacknowledged:
            self.host.cancel(running)  # never dispatched: stops counting now
        self._unacknowledged = []
        for running in self.running:
            running.cancel()
        self.running.clear()
        for owner in self.protocol.lose():
            if owner.inbox is not None:
                owner.inbox.finish()


class SessionReply(Reply):
    """A remote call's outcome, sent as envelopes on its caller's link; the owner of the
    call in the protocol books."""

    __slots__ = ("call_id", "credit", "inbox", "link", "running", "session")

    def __init__(self, session: HostSession, call_id: int) -> None:
        self.session = session
        self.link = session.link
        self.call_id = call_id
        self.running: Running | None = None
        self.credit: Credit | None = None
        #: a duplex call's request stream
        self.inbox: StreamReceiver | None = None

    def _done(self) -> None:
        session = self.session
        session.protocol.finish(self.call_id, self)
        session.running.discard(self.running)

    def result(self, value: Any) -> None:
        self._done()
        try:
            self.link.send_encoded_nowait(_codec.encode_result(self.call_id, value))
        except Exception as exc:  # why: an unencodable or oversized result fails its call only
            self._send_error(exc)

    def error(self, exc: BaseException) -> None:
        self._done()
        self._send_error(exc)

    def _send_error(self, exc: BaseException) -> None:
        self.link.send_nowait(_wire.Failure(self.call_id, _wire.Raw(_codec.encode_error(exc))))

    def item(self, value: Any) -> None:
        self.link.send_nowait(_wire.StreamItem(self.call_id, _wire.Raw(_codec.encode_value(value))))

    def end(self) -> None:
        self._done()
        self.link.send_nowait(_wire.StreamEnd(self.call_id))
