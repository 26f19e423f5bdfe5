"""Wire envelopes and their framing (sans-IO)."""

from __future__ import annotations

import pickle

import msgspec
import pytest

from actors import _codec, _wire


def _sample(i: int) -> _wire.Envelope:
    """An envelope of one of several kinds, with fields derived from ``i``."""
    payload = _wire.Raw(msgspec.msgpack.encode([[i], {"k": str(i)}]))
    kinds: list[_wire.Envelope] = [
        _wire.Call(i, f"method_{i}", payload, timeout=i / 10 if i % 2 else None, stream=i % 3 == 0),
        _wire.Result(i, _wire.Raw(msgspec.msgpack.encode([i, str(i)]))),
        _wire.StreamItem(i, _wire.Raw(msgspec.msgpack.encode(i))),
        _wire.StreamAck(i, i % 17),
        _wire.Cancel(i),
        _wire.Rejected(i, f"full {i}"),
        _wire.Heartbeat(),
        _wire.StreamEnd(i),
    ]
    return kinds[i % len(kinds)]


@pytest.mark.slow
@pytest.mark.parametrize("n", [0, 1, 15, 16, 0xFFFF, 0x10000, 70000])
def test_wire_frame_round_trips_through_batch_decoder(n: int) -> None:
    """However many envelopes share one websocket message, the peer gets them all, in order."""
    envelopes = [_sample(i) for i in range(n)]
    message = _wire.frame([_wire.encode_envelope(e) for e in envelopes])
    assert _wire.BatchDecoder().decode(message) == envelopes
    assert len(msgspec.msgpack.decode(message)) == n  # a real msgpack array of n items


@pytest.mark.parametrize(
    ("sizes", "limit", "expected"),
    [
        ([10, 10, 10], 64, (3, 30)),  # small envelopes share one message
        ([40, 30, 10], 64, (1, 40)),  # the next one would not fit
        ([100, 10], 64, (1, 100)),  # one larger than the limit still travels, alone
        ([30, 34, 1], 64, (2, 64)),  # exactly at the limit
        ([], 64, (0, 0)),
    ],
)
def test_wire_batch_cut_fills_messages_up_to_the_limit(
    sizes: list[int], limit: int, expected: tuple[int, int]
) -> None:
    """The writer puts as many queued envelopes in a message as fit, and never none."""
    assert _wire.batch_cut([b"x" * n for n in sizes], limit) == expected


def test_wire_control_envelopes_round_trip() -> None:
    """The parent/child control messages survive framing too."""
    error = _wire.Raw(_codec.encode_error(ValueError("no")))
    envelopes: list[_wire.Envelope] = [
        _wire.Hello("child-1", 4242),
        _wire.Spec(b"\x80blob"),
        _wire.Ready("127.0.0.1", 5555),
        _wire.SpecFailed(error),
        _wire.Failure(3, error),
        _wire.Stop(1.5),
    ]
    message = _wire.frame([_wire.encode_envelope(e) for e in envelopes])
    assert _wire.BatchDecoder().decode(message) == envelopes


def test_wire_payload_stays_raw_until_its_call_decodes_it() -> None:
    """A payload that cannot be decoded does not break the message it travels in."""
    bad_payload = msgspec.msgpack.encode(msgspec.msgpack.Ext(_codec.PICKLE_EXT, b"not a pickle"))
    good = _wire.Call(2, "ok", _wire.Raw(_codec.encode_args((1,), {})))
    bad = _wire.Call(1, "broken", _wire.Raw(bad_payload))
    decoded = _wire.BatchDecoder().decode(
        _wire.frame([_wire.encode_envelope(bad), _wire.encode_envelope(good)])
    )
    assert decoded == [bad, good]
    assert bytes(decoded[0].payload) == bad_payload  # type: ignore[union-attr]
    with pytest.raises(pickle.UnpicklingError):
        _codec.decode_args(decoded[0].payload)  # type: ignore[union-attr]
    assert _codec.decode_args(decoded[1].payload) == ((1,), {})  # type: ignore[union-attr]


def _truncated_frame() -> bytes:
    message = _wire.frame([_wire.encode_envelope(_sample(i)) for i in range(3)])
    return message[:-1]


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"\xc1",
        b"not msgpack at all",
        msgspec.msgpack.encode({"not": "a list"}),
        msgspec.msgpack.encode([[99, 1]]),
        msgspec.msgpack.encode([[1, "call without its other fields"]]),
        msgspec.msgpack.encode([["1", 2, "m", 3]]),
        msgspec.msgpack.encode([5]),
        _truncated_frame(),
        b"\x93\x91\x09",
    ],
    ids=repr,
)
def test_wire_batch_decoder_rejects_garbage_with_msgspec_errors(garbage: bytes) -> None:
    """Malformed messages raise msgspec errors (which a link turns into a protocol error), and
    the decoder keeps working for the next message."""
    decoder = _wire.BatchDecoder()
    with pytest.raises(msgspec.MsgspecError):
        decoder.decode(garbage)
    good = [_sample(0), _sample(1)]
    assert decoder.decode(_wire.frame([_wire.encode_envelope(e) for e in good])) == good
