"""The actor protocol's per-connection state, sans-IO (no Trio, no sockets).

One connection carries many calls, each named by an id the caller chose. Each side keeps
one object for it: the calling side a :class:`CallerProtocol`, the hosting side a
:class:`HostProtocol`. Envelopes the peer sent go in (``receive``); what comes out is
either an event for the shell to act on -- a ``(kind, owner)`` pair, where the owner is
whatever object the shell registered for the call (a future, a stream, a running task) --
or envelopes to send. The objects only keep books; the shells (``RemoteRef``,
``HostSession``) wake tasks and move bytes.

The rules they keep:

* **Delivery.** The host answers every message holding calls with ``Received(upto)``
  before any of those calls starts its work. When a connection is lost, a call whose id is
  above the last ``upto`` the caller heard provably never ran (it is *not delivered*, and
  may be retried elsewhere); any other call may have run.
* **Reply streams** (host to caller): a streaming call starts with ``STREAM_WINDOW`` items
  of credit; each ``StreamItem`` uses one, each ``StreamAck(n)`` from the caller adds ``n``.
* **Request streams** (caller to host, duplex calls only): the host grants credit with
  ``StreamAck(id, n)`` once it admitted the call (never before: a refused call gets none,
  so nothing is sent to a host that refused it); the caller sends at most that many
  ``StreamItem``; ``StreamEnd`` from the caller ends the request stream. ``StreamItem``,
  ``StreamEnd`` and ``StreamAck`` thus travel both ways: items and ends refer to the stream
  flowing the way they travel, acks to the one flowing against them. A caller sending past
  its credit breaks the protocol (the host closes the connection).
* **Cancellation** (``Cancel``) and every outcome end the call's books on both sides; an
  envelope about a call that has ended is ignored (it crossed the outcome on the wire).
"""

from __future__ import annotations

import math
from typing import Any

from . import _wire

#: items of credit a stream starts with (and the request stream's first grant)
STREAM_WINDOW = 16

# what ``CallerProtocol.receive`` reports
RESULT = 1  #: the call's value arrived (``env.value``)
FAILURE = 2  #: the call raised (``env.error``)
REJECTED = 3  #: the host refused the call at admission (``env.reason``); it never ran
ITEM = 4  #: an item of a stream (``env.value``)
END = 5  #: a stream ended (reply stream at the caller, request stream at the host)
CREDIT = 6  #: the peer granted ``env.n`` more items of credit
# what ``HostProtocol.receive`` reports besides ITEM, END and CREDIT
CALL = 7  #: a new call (``env``, a ``Call``); the owner is None
CANCEL = 8  #: the caller cancelled the call


class ProtocolViolation(Exception):
    """The peer broke the protocol; the connection must be closed (code 1002)."""


class CallerProtocol:
    """The calling side of one connection: call ids, what is pending, and acknowledgements.

    Owners are registered with :meth:`start`; :meth:`receive` says what an incoming envelope
    means for which owner; :meth:`lose` hands every pending owner back, with whether its
    call was delivered.
    """

    __slots__ = ("_next_id", "_owners", "_streams", "_upload_credit", "received_upto")

    def __init__(self) -> None:
        self._next_id = 1
        #: pending unary calls and the reply-stream calls, by id
        self._owners: dict[int, Any] = {}
        self._streams: set[int] = set()
        #: request-stream credit granted by the host, by duplex call id
        self._upload_credit: dict[int, int] = {}
        #: every call with an id up to this one has been read by the host
        self.received_upto = 0

    def start(
        self,
        method: str,
        payload: bytes,
        owner: Any,
        *,
        timeout: float | None = None,
        stream: bool = False,
        duplex: bool = False,
    ) -> _wire.Call:
        """Register a new call of ``owner``; the ``Call`` to send (its id is ``.id``)."""
        call_id = self.open(owner, stream=stream, duplex=duplex)
        return _wire.Call(
            call_id, method, _wire.Raw(payload), timeout=timeout, stream=stream, duplex=duplex
        )

    def open(self, owner: Any, *, stream: bool = False, duplex: bool = False) -> int:
        """Register a new call of ``owner`` and return its id; the shell builds the ``Call``
        itself (``start`` does it here)."""
        call_id = self._next_id
        self._next_id = call_id + 1
        self._owners[call_id] = owner
        if stream or duplex:
            self._streams.add(call_id)
            if duplex:
                self._upload_credit[call_id] = 0
        return call_id

    def forget(self, call_id: int) -> None:
        """Drop a call that could not be sent (its envelope failed to encode)."""
        self._end(call_id)

    def pending(self, call_id: int) -> bool:
        return call_id in self._owners

    @property
    def in_flight(self) -> int:
        return len(self._owners)

    def cancel(self, call_id: int) -> _wire.Cancel | None:
        """The caller gave up on the call: the ``Cancel`` to send (None if it had ended)."""
        if self._end(call_id) is None:
            return None
        return _wire.Cancel(call_id)

    def ack(self, call_id: int, n: int) -> _wire.StreamAck | None:
        """The caller consumed ``n`` items of the call's reply stream: the ``StreamAck``
        granting ``n`` more (None if the call has ended)."""
        if call_id not in self._streams:
            return None
        return _wire.StreamAck(call_id, n)

    def send_item(self, call_id: int, payload: bytes) -> _wire.StreamItem | None:
        """One item of a duplex call's request stream, using one item of credit; None
        without credit (or once the call ended): wait for a ``CREDIT`` event."""
        credit = self._upload_credit.get(call_id, 0)
        if credit <= 0:
            return None
        self._upload_credit[call_id] = credit - 1
        return _wire.StreamItem(call_id, _wire.Raw(payload))

    def credit(self, call_id: int) -> int:
        """Request-stream items the caller may send now."""
        return self._upload_credit.get(call_id, 0)

    def end_upload(self, call_id: int) -> _wire.StreamEnd | None:
        """End a duplex call's request stream (None once the call ended)."""
        if call_id not in self._upload_credit:
            return None
        self._upload_credit[call_id] = -1  # nothing more may be sent
        return _wire.StreamEnd(call_id)

    def receive(self, env: _wire.Envelope) -> tuple[int, Any] | None:
        """What ``env`` means: ``(kind, owner)``, or None when it concerns no pending call
        (heartbeats, acknowledgements, envelopes that crossed a cancel)."""
        match env:
            case _wire.Result(id=call_id):  # a result for a stream call is noise
                return None if call_id in self._streams else self._ended(RESULT, call_id)
            case _wire.StreamItem(id=call_id):
                return (ITEM, self._owners[call_id]) if call_id in self._streams else None
            case _wire.StreamEnd(id=call_id):  # so is the end of a unary one
                return self._ended(END, call_id) if call_id in self._streams else None
            case _wire.Failure(id=call_id):
                return self._ended(FAILURE, call_id)
            case _wire.Rejected(id=call_id):
                return self._ended(REJECTED, call_id)
            case _wire.StreamAck(id=call_id, n=n):
                credit = self._upload_credit.get(call_id)
                if credit is None or credit < 0 or n <= 0:
                    return None
                self._upload_credit[call_id] = credit + n
                return CREDIT, self._owners[call_id]
            case _wire.Received(upto=upto) if upto > self.received_upto:
                self.received_upto = upto
        return None

    def _ended(self, kind: int, call_id: int) -> tuple[int, Any] | None:
        owner = self._end(call_id)
        return None if owner is None else (kind, owner)

    def delivered(self, call_id: int) -> bool:
        """Whether the host has read the call (so it may have run)."""
        return call_id <= self.received_upto

    def lose(self) -> list[tuple[int, Any, bool]]:
        """The connection is gone: every pending ``(id, owner, delivered)``, books emptied."""
        lost = [(cid, owner, cid <= self.received_upto) for cid, owner in self._owners.items()]
        self._owners = {}
        self._streams = set()
        self._upload_credit = {}
        return lost

    def _end(self, call_id: int) -> Any:
        owner = self._owners.pop(call_id, None)
        if owner is not None and self._streams:
            self._streams.discard(call_id)
            self._upload_credit.pop(call_id, None)
        return owner


class HostProtocol:
    """The hosting side of one connection: calls read, acknowledgements, stream credit.

    :meth:`receive` reports new calls (``CALL``) and what the caller says about running
    ones; the shell admits a call with :meth:`admit` (registering its owner) or refuses it
    with :meth:`refuse`, and reports its end with :meth:`finish`. Calls read since the last
    acknowledgement must wait for :meth:`acknowledgement` to have been sent.
    """

    __slots__ = ("_inbound", "_owners", "_reply_credit", "acked_upto", "read_upto")

    def __init__(self) -> None:
        self.read_upto = 0
        self.acked_upto = 0
        #: running calls by id
        self._owners: dict[int, Any] = {}
        #: reply-stream credit left, by streaming call id
        self._reply_credit: dict[int, int] = {}
        #: request-stream items the caller may still send, by duplex call id (-1: ended)
        self._inbound: dict[int, int] = {}

    def receive(self, env: _wire.Envelope) -> tuple[int, Any] | None:
        """What ``env`` from the caller means: ``(kind, owner)`` or None (nothing to do).
        Raises :class:`ProtocolViolation` for what no correct caller sends."""
        match env:
            case _wire.Call(id=call_id, timeout=timeout):
                if timeout is not None and math.isnan(timeout):
                    raise ProtocolViolation(f"call {call_id} has a timeout that is not a number")
                if call_id > self.read_upto:
                    self.read_upto = call_id
                return CALL, None
            case _wire.Cancel(id=call_id):
                owner = self._owners.get(call_id)
                return None if owner is None else (CANCEL, owner)
            case _wire.StreamAck(id=call_id, n=n):
                credit = self._reply_credit.get(call_id)
                if credit is None:
                    return None
                self._reply_credit[call_id] = credit + max(0, n)
                return CREDIT, self._owners[call_id]
            case _wire.StreamItem(id=call_id):
                return self._inbound_item(call_id)
            case _wire.StreamEnd(id=call_id):
                left = self._inbound.get(call_id)
                if left is None or left < 0:
                    return None
                self._inbound[call_id] = -1
                return END, self._owners[call_id]
        return None

    def _inbound_item(self, call_id: int) -> tuple[int, Any] | None:
        left = self._inbound.get(call_id)
        if left is None:
            return None  # the call ended; the item crossed its outcome
        if left <= 0:
            what = "after ending its request stream" if left < 0 else "without credit"
            raise ProtocolViolation(f"call {call_id}: a request-stream item sent {what}")
        self._inbound[call_id] = left - 1
        return ITEM, self._owners[call_id]

    def admit(
        self, call: _wire.Call, owner: Any, *, window: int = STREAM_WINDOW
    ) -> _wire.StreamAck | None:
        """Book an admitted call; for a duplex call, the ``StreamAck`` granting the caller
        its first ``window`` request-stream items (to send once the call is acknowledged,
        which the queue order guarantees)."""
        self._owners[call.id] = owner
        if call.stream or call.duplex:
            self._reply_credit[call.id] = STREAM_WINDOW
        if call.duplex:
            self._inbound[call.id] = window
            return _wire.StreamAck(call.id, window)
        return None

    @staticmethod
    def refuse(call: _wire.Call, reason: str) -> _wire.Rejected:
        """The ``Rejected`` refusing ``call`` (it is not booked: it never runs)."""
        return _wire.Rejected(call.id, reason)

    def owner(self, call_id: int) -> Any:
        return self._owners.get(call_id)

    def take_credit(self, call_id: int) -> bool:
        """Use one item of the call's reply-stream credit; False when there is none (wait
        for a ``CREDIT`` event)."""
        credit = self._reply_credit.get(call_id, 0)
        if credit <= 0:
            return False
        self._reply_credit[call_id] = credit - 1
        return True

    def grant(self, call_id: int, n: int) -> _wire.StreamAck | None:
        """The host consumed ``n`` request-stream items: the ``StreamAck`` letting the
        caller send ``n`` more (None once the call or its request stream ended)."""
        left = self._inbound.get(call_id)
        if left is None or left < 0:
            return None
        self._inbound[call_id] = left + n
        return _wire.StreamAck(call_id, n)

    def finish(self, call_id: int, owner: Any) -> bool:
        """The call ended (its outcome is being sent): forget it. False if ``call_id``
        now belongs to another call (a caller reusing ids) or is unknown."""
        if self._owners.get(call_id) is not owner:
            return False
        del self._owners[call_id]
        self._reply_credit.pop(call_id, None)
        self._inbound.pop(call_id, None)
        return True

    def acknowledgement(self) -> _wire.Received | None:
        """The ``Received`` owed to the caller, if calls were read since the last one;
        call :meth:`acknowledged` once it has been handed to the socket."""
        if self.read_upto <= self.acked_upto:
            return None
        return _wire.Received(self.read_upto)

    def acknowledged(self, upto: int) -> None:
        if upto > self.acked_upto:
            self.acked_upto = upto

    def lose(self) -> list[Any]:
        """The caller is gone: every running call's owner, books emptied."""
        owners = list(self._owners.values())
        self._owners = {}
        self._reply_credit = {}
        self._inbound = {}
        return owners
