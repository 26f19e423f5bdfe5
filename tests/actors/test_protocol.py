"""The protocol's books (``actors._protocol``), driven without sockets or Trio."""

from __future__ import annotations

import math

import pytest

from actors import _protocol, _wire
from actors._protocol import CallerProtocol, HostProtocol, ProtocolViolation


def test_protocol_caller_numbers_calls_and_books_their_owners() -> None:
    caller = CallerProtocol()
    first = caller.start("f", b"\x92\x90\x80", "owner-1", timeout=2.0)
    second = caller.start("g", b"\x92\x90\x80", "owner-2", stream=True)
    assert (first.id, first.method, first.timeout, first.stream) == (1, "f", 2.0, False)
    assert (second.id, second.stream, second.duplex) == (2, True, False)
    assert caller.in_flight == 2
    assert caller.receive(_wire.Result(1, _wire.Raw(b"\xc0"))) == (_protocol.RESULT, "owner-1")
    assert caller.receive(_wire.StreamItem(2, _wire.Raw(b"\x01"))) == (_protocol.ITEM, "owner-2")
    assert caller.receive(_wire.StreamEnd(2)) == (_protocol.END, "owner-2")
    assert caller.in_flight == 0


def test_protocol_caller_ignores_what_concerns_no_pending_call() -> None:
    """Outcomes that crossed a cancel on the wire, duplicates and made-up ids are ignored."""
    caller = CallerProtocol()
    call = caller.start("f", b"", "owner")
    assert caller.cancel(call.id) == _wire.Cancel(call.id)
    assert caller.cancel(call.id) is None  # once only
    assert caller.receive(_wire.Result(call.id, _wire.Raw(b"\xc0"))) is None
    assert caller.receive(_wire.Failure(99, _wire.Raw(b"\xc0"))) is None
    assert caller.receive(_wire.StreamItem(call.id, _wire.Raw(b"\x01"))) is None
    assert caller.receive(_wire.Heartbeat()) is None
    unary = caller.start("f", b"", "unary")
    assert caller.receive(_wire.StreamItem(unary.id, _wire.Raw(b"\x01"))) is None  # not a stream
    assert caller.ack(unary.id, 8) is None


def test_protocol_caller_ignores_an_outcome_of_the_other_kind_of_call() -> None:
    """A stream's end for a unary call, or a result for a stream, is noise: the call stays
    pending and ends with its own kind of outcome (a fuzzed host found the first)."""
    caller = CallerProtocol()
    unary = caller.start("f", b"", "unary")
    stream = caller.start("g", b"", "stream", stream=True)
    assert caller.receive(_wire.StreamEnd(unary.id)) is None
    assert caller.receive(_wire.Result(stream.id, _wire.Raw(b"\xc0"))) is None
    assert caller.receive(_wire.Result(unary.id, _wire.Raw(b"\xc0"))) == (
        _protocol.RESULT,
        "unary",
    )
    assert caller.receive(_wire.StreamEnd(stream.id)) == (_protocol.END, "stream")


def test_protocol_caller_rejected_and_failed_calls_end() -> None:
    caller = CallerProtocol()
    a = caller.start("f", b"", "a")
    b = caller.start("f", b"", "b")
    assert caller.receive(_wire.Rejected(a.id, "full")) == (_protocol.REJECTED, "a")
    assert caller.receive(_wire.Failure(b.id, _wire.Raw(b"\xc0"))) == (_protocol.FAILURE, "b")
    assert caller.lose() == []


def test_protocol_lost_connection_says_which_calls_were_delivered() -> None:
    """A call above the last acknowledged id provably never ran; the others may have."""
    caller = CallerProtocol()
    for owner in "abc":
        caller.start("f", b"", owner)
    assert caller.receive(_wire.Received(2)) is None
    assert caller.received_upto == 2
    assert caller.receive(_wire.Received(1)) is None  # never goes back
    assert caller.received_upto == 2
    assert caller.lose() == [(1, "a", True), (2, "b", True), (3, "c", False)]
    assert caller.in_flight == 0


def test_protocol_host_acknowledges_what_it_read_once() -> None:
    host = HostProtocol()
    assert host.acknowledgement() is None
    for call_id in (1, 3, 2):
        kind, owner = host.receive(_wire.Call(call_id, "f", _wire.Raw(b""))) or (0, 0)
        assert (kind, owner) == (_protocol.CALL, None)
    received = host.acknowledgement()
    assert received == _wire.Received(3)
    host.acknowledged(3)
    assert host.acknowledgement() is None


def test_protocol_host_refuses_a_nan_timeout() -> None:
    with pytest.raises(ProtocolViolation, match="not a number"):
        HostProtocol().receive(_wire.Call(1, "f", _wire.Raw(b""), timeout=math.nan))


def test_protocol_host_reply_stream_credit() -> None:
    """A streaming call may send STREAM_WINDOW items, then one more per item acked."""
    host = HostProtocol()
    call = _wire.Call(1, "gen", _wire.Raw(b""), stream=True)
    host.receive(call)
    assert host.admit(call, "running") is None  # no request stream to grant
    assert [host.take_credit(1) for _ in range(_protocol.STREAM_WINDOW)] == [True] * 16
    assert not host.take_credit(1)
    assert host.receive(_wire.StreamAck(1, 2)) == (_protocol.CREDIT, "running")
    assert host.take_credit(1)
    assert host.take_credit(1)
    assert not host.take_credit(1)


def test_protocol_host_cancel_and_finish() -> None:
    host = HostProtocol()
    call = _wire.Call(5, "f", _wire.Raw(b""))
    host.receive(call)
    host.admit(call, "running")
    assert host.receive(_wire.Cancel(5)) == (_protocol.CANCEL, "running")
    assert not host.finish(5, "another owner")  # a reused id belongs to its latest call
    assert host.finish(5, "running")
    assert host.receive(_wire.Cancel(5)) is None
    assert host.receive(_wire.StreamAck(5, 3)) is None


def _duplex_pair(window: int = 4) -> tuple[CallerProtocol, HostProtocol, int]:
    caller, host = CallerProtocol(), HostProtocol()
    call = caller.start("echo", b"", "receiver", duplex=True)
    assert call.duplex
    host.receive(call)
    grant = host.admit(call, "running", window=window)
    assert grant == _wire.StreamAck(call.id, window)
    assert caller.send_item(call.id, b"early") is None  # nothing before the grant arrives
    assert caller.receive(grant) == (_protocol.CREDIT, "receiver")
    return caller, host, call.id


def test_protocol_duplex_caller_sends_only_within_its_credit() -> None:
    caller, host, call_id = _duplex_pair(window=2)
    sent = [caller.send_item(call_id, b"x"), caller.send_item(call_id, b"y")]
    assert all(sent)
    assert caller.send_item(call_id, b"z") is None
    for item in sent:
        assert item is not None
        assert host.receive(item) == (_protocol.ITEM, "running")
    more = host.grant(call_id, 1)
    assert more == _wire.StreamAck(call_id, 1)
    caller.receive(more)
    assert caller.send_item(call_id, b"z") is not None


def test_protocol_duplex_caller_past_its_credit_breaks_the_protocol() -> None:
    _caller, host, call_id = _duplex_pair(window=1)
    assert host.receive(_wire.StreamItem(call_id, _wire.Raw(b"\x01"))) is not None
    with pytest.raises(ProtocolViolation, match="without credit"):
        host.receive(_wire.StreamItem(call_id, _wire.Raw(b"\x01")))


def test_protocol_duplex_request_stream_end() -> None:
    caller, host, call_id = _duplex_pair()
    end = caller.end_upload(call_id)
    assert end == _wire.StreamEnd(call_id)
    assert caller.send_item(call_id, b"late") is None
    assert caller.receive(_wire.StreamAck(call_id, 5)) is None  # credit after the end
    assert host.receive(end) == (_protocol.END, "running")
    assert host.receive(end) is None  # once
    assert host.grant(call_id, 1) is None
    with pytest.raises(ProtocolViolation, match="after ending"):
        host.receive(_wire.StreamItem(call_id, _wire.Raw(b"\x01")))


def test_protocol_duplex_items_after_the_call_ended_are_ignored() -> None:
    """An item that crossed the call's outcome on the wire is no violation."""
    caller, host, call_id = _duplex_pair()
    item = caller.send_item(call_id, b"x")
    assert host.finish(call_id, "running")
    assert item is not None
    assert host.receive(item) is None
    assert caller.receive(_wire.StreamEnd(call_id)) == (_protocol.END, "receiver")
    assert caller.send_item(call_id, b"y") is None
    assert caller.end_upload(call_id) is None


def test_protocol_refused_duplex_call_gets_no_credit() -> None:
    """A refused call is not booked: no credit is granted, and items for it are ignored."""
    caller, host = CallerProtocol(), HostProtocol()
    call = caller.start("echo", b"", "receiver", duplex=True)
    host.receive(call)
    rejected = host.refuse(call, "at capacity")
    assert caller.receive(rejected) == (_protocol.REJECTED, "receiver")
    assert caller.send_item(call.id, b"x") is None
    assert host.receive(_wire.StreamItem(call.id, _wire.Raw(b"\x01"))) is None


def test_protocol_duplex_grant_of_zero_allows_nothing() -> None:
    host = HostProtocol()
    call = _wire.Call(1, "echo", _wire.Raw(b""), duplex=True)
    host.receive(call)
    host.admit(call, "running", window=0)
    with pytest.raises(ProtocolViolation, match="without credit"):
        host.receive(_wire.StreamItem(1, _wire.Raw(b"\x01")))


def test_protocol_host_lose_hands_back_every_running_call() -> None:
    host = HostProtocol()
    for call_id in (1, 2):
        call = _wire.Call(call_id, "f", _wire.Raw(b""))
        host.receive(call)
        host.admit(call, f"running-{call_id}")
    assert sorted(host.lose()) == ["running-1", "running-2"]
    assert host.receive(_wire.Cancel(1)) is None
