"""Fuzzing what a peer can send: the wire decoder and payload codec on random, truncated,
mutated and oversized input, and real listeners (actors and HTTP) fed fuzzed frames while a
good client keeps being served."""

from __future__ import annotations

import contextlib
import functools
import math
import tracemalloc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import hypothesis.strategies as st
import msgspec
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from trio_websocket import ConnectionClosed, WebSocketConnection

import actors
import actors.lowlevel
from actors import _codec, _wire
from actors._future import CallFuture
from actors._ref import RemoteRef
from actors.testing import connected
from trioserve._http.server import HTTPReply, plain, serve_http
from trioserve._replica.http import Request

from .actors_fixtures import open_raw_websocket

TOKEN = "fuzz-token"
TOKEN_HEADER = b"x-actors-token"
TIMEOUT_S = 5.0
#: hypothesis budgets: pure tests are cheap, socket tests open listeners per example
PURE = settings(max_examples=200, deadline=None)
SOCKET = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
#: a decode that refuses a huge declared size must not allocate anything near it
ALLOCATION_BOUND = 1024 * 1024
DECODE_ERRORS = (msgspec.MsgspecError, actors.ProtocolError)

# -- strategies

call_ids = st.integers(min_value=-(2**63), max_value=2**64 - 1)
plain_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=16)
    | st.binary(max_size=16),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=8,
)
#: payloads as a peer may send them: right-shaped ``[args, kwargs]`` or any plain value
payloads = st.one_of(
    st.tuples(
        st.lists(plain_values, max_size=3), st.dictionaries(st.text(max_size=6), plain_values)
    ).map(lambda ak: [list(ak[0]), ak[1]]),
    plain_values,
).map(lambda value: _wire.Raw(msgspec.msgpack.encode(value)))
methods = st.sampled_from(["square", "echo", "hang", "count", "missing", "_private"]) | st.text(
    max_size=12
)
timeouts = st.none() | st.floats()
envelopes = st.one_of(
    st.builds(_wire.Call, call_ids, methods, payloads, timeouts, st.booleans()),
    st.builds(_wire.Result, call_ids, payloads),
    st.builds(_wire.Failure, call_ids, payloads),
    st.builds(_wire.Rejected, call_ids, st.text(max_size=12)),
    st.builds(_wire.Cancel, call_ids),
    st.builds(_wire.StreamItem, call_ids, payloads),
    st.builds(_wire.StreamEnd, call_ids),
    st.builds(_wire.StreamAck, call_ids, st.integers(min_value=-(2**63), max_value=2**63 - 1)),
    st.just(_wire.Heartbeat()),
    st.builds(_wire.Hello, st.text(max_size=8), st.integers(min_value=0, max_value=2**31)),
    st.builds(_wire.Spec, st.binary(max_size=16)),
    st.builds(_wire.Ready, st.text(max_size=8), st.integers(min_value=0, max_value=65535)),
    st.builds(_wire.SpecFailed, payloads),
    st.builds(_wire.Stop, st.floats(allow_nan=False)),
    st.builds(_wire.Received, call_ids),
)
batches = st.lists(envelopes, min_size=0, max_size=6)


def _framed(batch: list[_wire.Envelope]) -> bytes:
    return _wire.frame([_wire.encode_envelope(env) for env in batch])


def _valid(message: bytes | str) -> bool:
    """Whether a listener must handle ``message`` and stay open (else: close with 1002)."""
    if isinstance(message, str):
        return False
    try:
        batch = _wire.BatchDecoder().decode(message)
    except msgspec.MsgspecError:
        return False
    return not any(
        type(env) is _wire.Call and env.timeout is not None and math.isnan(env.timeout)
        for env in batch
    )


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid message with a few bytes replaced, inserted or deleted."""
    data = bytearray(_framed(draw(batches.filter(bool))))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        at = draw(st.integers(min_value=0, max_value=len(data)))
        edit = draw(st.sampled_from(["replace", "insert", "delete"]))
        byte = draw(st.integers(min_value=0, max_value=255))
        if edit == "insert" or at == len(data):
            data.insert(at, byte)
        elif edit == "replace":
            data[at] = byte
        else:
            del data[at]
    return bytes(data)


@st.composite
def truncated(draw: st.DrawFn) -> bytes:
    """A valid, non-empty message cut short."""
    data = _framed(draw(batches.filter(bool)))
    return data[: draw(st.integers(min_value=0, max_value=len(data) - 1))]


#: what one fuzzing client sends on one connection
fuzzed_messages = st.lists(
    st.one_of(
        batches.map(_framed),
        truncated(),
        mutated(),
        st.binary(max_size=64),
        st.text(max_size=16),
        st.just(msgspec.msgpack.encode([[99, 1, 2]])),
    ),
    min_size=1,
    max_size=5,
)


# -- the wire decoder and the payload codec, pure


@PURE
@given(st.binary(max_size=256))
def test_fuzz_batch_decoder_random_bytes_decode_or_raise_msgspec_errors(data: bytes) -> None:
    """Random bytes either decode into envelopes or raise a msgspec error, nothing else."""
    try:
        decoded = _wire.BatchDecoder().decode(data)
    except msgspec.MsgspecError:
        return
    assert all(isinstance(env, _wire.Envelope) for env in decoded)  # type: ignore[arg-type]


@pytest.mark.slow
@PURE
@given(truncated())
def test_fuzz_batch_decoder_truncated_messages_raise(data: bytes) -> None:
    """A message cut short anywhere is refused with a msgspec error."""
    with pytest.raises(msgspec.MsgspecError):
        _wire.BatchDecoder().decode(data)


@pytest.mark.slow
@PURE
@given(mutated())
def test_fuzz_batch_decoder_mutated_messages_decode_or_raise_msgspec_errors(data: bytes) -> None:
    """A corrupted message either decodes into envelopes or raises a msgspec error; the same
    decoder then decodes a good message."""
    decoder = _wire.BatchDecoder()
    try:
        decoded = decoder.decode(data)
    except msgspec.MsgspecError:
        pass
    else:
        assert all(isinstance(env, _wire.Envelope) for env in decoded)  # type: ignore[arg-type]
    good = [_wire.Cancel(1), _wire.Heartbeat()]
    assert decoder.decode(_framed(good)) == good  # type: ignore[arg-type]


@pytest.mark.slow
@PURE
@given(batches)
def test_fuzz_batch_decoder_round_trips_every_envelope(batch: list[_wire.Envelope]) -> None:
    """Whatever envelopes a peer legitimately sends arrive as themselves."""
    decoded = _wire.BatchDecoder().decode(_framed(batch))
    assert [_wire.encode_envelope(env) for env in decoded] == [
        _wire.encode_envelope(env) for env in batch
    ]


@pytest.mark.slow
@PURE
@given(
    st.integers(min_value=16, max_value=2**16),
    st.lists(plain_values, max_size=4),
)
def test_fuzz_batch_decoder_unknown_tags_raise_validation_error(
    tag: int, fields: list[Any]
) -> None:
    """An envelope with a tag this version does not know is refused, not guessed at."""
    with pytest.raises(msgspec.ValidationError):
        _wire.BatchDecoder().decode(msgspec.msgpack.encode([[tag, *fields]]))


@PURE
@given(st.binary(max_size=256), st.booleans())
def test_fuzz_codec_random_bytes_decode_or_raise_codec_errors(data: bytes, as_args: bool) -> None:
    """Random payload bytes on an unauthenticated path decode or raise a msgspec error or
    ProtocolError, never anything else."""
    decode = _codec.decode_args if as_args else _codec.decode_value
    with contextlib.suppress(*DECODE_ERRORS):
        decode(data, allow_pickle=False)


@PURE
@given(st.binary(max_size=256))
def test_fuzz_codec_error_payload_always_becomes_an_exception(data: bytes) -> None:
    """Any error payload a peer sends becomes an exception for the caller, never a crash."""
    assert isinstance(_codec.decode_error(data), BaseException)


_HUGE_HEADERS = {
    "array32": b"\xdd\xff\xff\xff\xff",
    "map32": b"\xdf\xff\xff\xff\xff",
    "bin32": b"\xc6\xff\xff\xff\xff",
    "str32": b"\xdb\xff\xff\xff\xff",
    "ext32": b"\xc9\xff\xff\xff\xff\x01",
}
_CALL_PREFIX = b"\x91\x96\x01\x01\xa1m"  # a batch of one Call(id=1, method="m", payload=...)


def _peak_allocation(fn: Any, data: bytes) -> tuple[BaseException | None, int]:
    tracemalloc.start()
    try:
        fn(data)
    except BaseException as exc:  # why: the test inspects whatever was raised
        error: BaseException | None = exc
    else:
        error = None
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return error, peak


@pytest.mark.parametrize("header", list(_HUGE_HEADERS.values()), ids=list(_HUGE_HEADERS))
@pytest.mark.parametrize(
    "place", ["message", "batch item", "call payload", "codec value", "codec args"]
)
def test_fuzz_huge_declared_sizes_raise_without_allocating(header: bytes, place: str) -> None:
    """A header declaring 4 GiB (or 2**32-1 items) with a few bytes present is refused with a
    msgspec error, and decoding it allocates next to nothing."""
    data = header + b"\x01" * 32
    fn: Any = _wire.BatchDecoder().decode
    if place == "batch item":
        data = b"\x91" + data
    elif place == "call payload":
        data = _CALL_PREFIX + data
    elif place == "codec value":
        fn = functools.partial(_codec.decode_value, allow_pickle=False)
    elif place == "codec args":
        fn = functools.partial(_codec.decode_args, allow_pickle=False)
    error, peak = _peak_allocation(fn, data)
    assert isinstance(error, DECODE_ERRORS), repr(error)
    assert peak < ALLOCATION_BOUND


_DEEP = b"\x91" * 100_000 + b"\xc0"  # 100,000 nested one-item arrays (100 kB)
#: a batch of one Call whose method name is not UTF-8
_BAD_UTF8_CALL = b"\x91\x96\x01\x01\xa2\xff\xfe\x92\x90\x80\xc0\xc2"


def _decode_as(place: str, data: bytes) -> object:
    if place == "wire":
        return _wire.BatchDecoder().decode(data)
    return _codec.decode_value(data, allow_pickle=False)


def test_fuzz_deeply_nested_payload_raises_decode_error() -> None:
    """A payload nested deeper than the decoder goes is refused like any malformed input."""
    with pytest.raises(DECODE_ERRORS):
        _decode_as("codec", _DEEP)


def test_fuzz_deeply_nested_payload_stays_raw_on_the_wire() -> None:
    """A call whose payload is nested too deeply still decodes as an envelope (its payload
    raw), so that only that call fails, when it decodes its payload."""
    [call] = _wire.BatchDecoder().decode(_CALL_PREFIX + _DEEP + b"\xc0\xc2")
    assert type(call) is _wire.Call
    assert (call.id, call.method, call.timeout, call.stream) == (1, "m", None, False)
    assert bytes(call.payload) == _DEEP
    with pytest.raises(DECODE_ERRORS):
        _codec.decode_args(call.payload, allow_pickle=False)


@pytest.mark.parametrize(
    ("place", "data"), [("wire", _BAD_UTF8_CALL), ("codec", b"\xa2\xff\xfe")], ids=["wire", "codec"]
)
def test_fuzz_invalid_utf8_raises_decode_error(place: str, data: bytes) -> None:
    """A string field holding bytes that are not UTF-8 is refused like any malformed input."""
    with pytest.raises(DECODE_ERRORS):
        _decode_as(place, data)


def test_fuzz_codec_error_payload_not_utf8_becomes_protocol_error() -> None:
    """An error payload with a string that is not UTF-8 becomes a ProtocolError."""
    assert isinstance(_codec.decode_error(b"\x94\xa2\x00\x80"), actors.ProtocolError)


# -- the caller's side: envelopes about calls it never made


class _FakeLink:
    """Stands in for a link under a :class:`RemoteRef`: records what the ref sends."""

    closed = False
    close_reason = ""

    def __init__(self) -> None:
        self.sent: list[_wire.Envelope] = []

    def send_nowait(self, env: _wire.Envelope) -> None:
        self.sent.append(env)


@pytest.mark.slow
@settings(PURE, max_examples=100)
@given(st.lists(envelopes, max_size=12))
def test_fuzz_remote_ref_ignores_envelopes_for_unknown_calls(batch: list[_wire.Envelope]) -> None:
    """Whatever an actor sends back -- answers to calls never made, duplicates, garbage
    payloads -- the caller never raises, and each of its own calls ends at most once."""
    ref = RemoteRef("fuzzed")
    ref.attach(_FakeLink())  # type: ignore[arg-type]
    futures = [ref.submit("square", (i,)) for i in range(3)]
    ids = [1, 2, 3]
    outcomes: list[CallFuture] = []
    for fut in futures:
        fut.add_done_callback(outcomes.append)
    for env in batch:
        ref.on_envelope(env)
    # then the real answers, twice: the second copy must be ignored
    for call_id in ids * 2:
        ref.on_envelope(_wire.Result(call_id, _wire.Raw(_codec.encode_value(call_id))))
    assert all(fut.done() for fut in futures)
    assert sorted(map(id, outcomes)) == sorted(map(id, futures))  # each ended exactly once


# -- a real actor listener fed fuzzed frames


class Small:
    """The object behind the fuzzed listener."""

    async def square(self, i: int) -> int:
        return i * i

    async def echo(self, value: Any) -> Any:
        return value

    async def hang(self) -> None:
        await trio.sleep_forever()

    async def count(self, n: int) -> AsyncIterator[int]:
        for i in range(min(n, 40)):
            yield i


@asynccontextmanager
async def _listener() -> AsyncIterator[tuple[str, actors.lowlevel.ActorHost]]:
    """A :class:`Small` served in this process for the block: (address, host)."""
    async with trio.open_nursery() as nursery:
        host = actors.lowlevel.ActorHost(Small(), nursery, name="small")
        bound, port = await nursery.start(
            functools.partial(actors.lowlevel.serve_host, host, token=TOKEN)
        )
        yield f"ws://{bound}:{port}", host
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def _raw_client(address: str) -> AsyncIterator[WebSocketConnection]:
    """A client that passes the handshake and then sends whatever the test says."""
    async with open_raw_websocket(address, extra_headers=[(TOKEN_HEADER, TOKEN.encode())]) as ws:
        yield ws


PROBE_ID = 2**64 - 1


async def _probe(ws: WebSocketConnection) -> int | None:
    """Send a good call after everything else; None if it is answered (so every earlier
    message was handled and the connection lives), else the close code."""
    probe = _wire.Call(PROBE_ID, "square", _wire.Raw(_codec.encode_args((5,), {})))
    decoder = _wire.BatchDecoder()
    with trio.fail_after(TIMEOUT_S):
        try:
            await ws.send_message(_framed([probe]))
            while True:
                message = await ws.get_message()
                assert isinstance(message, bytes)
                for env in decoder.decode(message):
                    if type(env) is _wire.Result and env.id == PROBE_ID:
                        assert _codec.decode_value(env.value) == 25
                        return None
        except ConnectionClosed as closed:
            return closed.reason.code


async def _fuzz_listener(messages: list[bytes | str]) -> None:
    async with _listener() as (address, host):
        async with connected(address, token=TOKEN) as bystander:
            async with _raw_client(address) as ws:
                try:
                    for message in messages:
                        await ws.send_message(message)
                except ConnectionClosed as closed:  # an earlier message closed it already
                    code: int | None = closed.reason.code
                else:
                    code = await _probe(ws)
            if all(map(_valid, messages)):
                assert code is None, "a connection sending only valid messages was closed"
            else:
                assert code == 1002, "a malformed message must close with a protocol error"
            assert await bystander.call("square", 7) == 49
        with trio.fail_after(TIMEOUT_S):
            await host.wait_idle()  # the fuzzer's calls ended or were cancelled with it
        async with connected(address, token=TOKEN) as newcomer:
            assert await newcomer.call("square", 8) == 64


@pytest.mark.slow
@SOCKET
@given(fuzzed_messages)
def test_fuzz_listener_closes_only_the_fuzzing_connection(messages: list[bytes | str]) -> None:
    """Fuzzed frames close (with 1002) only the connection that sent something malformed --
    valid ones, including calls and cancels for ids that do not exist, keep it open -- and
    the listener keeps serving a good client and new ones."""
    trio.run(_fuzz_listener, messages)


@pytest.mark.slow
@SOCKET
@given(
    st.lists(
        st.one_of(
            st.builds(_wire.Cancel, call_ids),
            st.builds(
                _wire.StreamAck, call_ids, st.integers(min_value=-(2**63), max_value=2**63 - 1)
            ),
        ),
        max_size=8,
    )
)
def test_fuzz_listener_ignores_cancels_and_acks_for_unknown_ids(
    stray: list[_wire.Envelope],
) -> None:
    """Cancels and stream acks for calls that do not exist are ignored: the connection
    stays open and its next call is answered."""
    trio.run(_fuzz_listener, [_framed(stray)])


async def test_fuzz_listener_answers_duplicate_and_reused_call_ids() -> None:
    """Two calls with the same id are both answered; a cancel sent before its call does not
    stop that call; the connection stays usable."""
    async with _listener() as (address, _host), _raw_client(address) as ws:
        args = _wire.Raw(_codec.encode_args((3,), {}))
        await ws.send_message(
            _framed([_wire.Cancel(9), _wire.Call(9, "square", args), _wire.Call(9, "square", args)])
        )
        decoder = _wire.BatchDecoder()
        answers: list[Any] = []
        with trio.fail_after(TIMEOUT_S):
            while len(answers) < 2:
                message = await ws.get_message()
                assert isinstance(message, bytes)
                answers += [
                    _codec.decode_value(env.value)
                    for env in decoder.decode(message)
                    if type(env) is _wire.Result and env.id == 9
                ]
        assert answers == [9, 9]
        assert await _probe(ws) is None


async def test_fuzz_listener_cancels_every_call_of_a_departed_caller_despite_reused_ids() -> None:
    """A caller that reuses a call id and leaves has all of its calls cancelled."""
    async with _listener() as (address, host):
        async with _raw_client(address) as ws:
            hang = _wire.Call(9, "hang", _wire.Raw(_codec.encode_args((), {})))
            await ws.send_message(_framed([hang, hang]))
            assert await _probe(ws) is None
            assert host.ongoing == 2
        with trio.fail_after(2):
            await host.wait_idle()


async def test_fuzz_listener_survives_call_with_nan_timeout() -> None:
    """A call whose timeout is NaN closes its connection (1002), not the listener."""
    nan_call = _wire.Call(1, "square", _wire.Raw(_codec.encode_args((2,), {})), timeout=math.nan)
    await _fuzz_listener([_framed([nan_call])])


async def test_fuzz_listener_survives_undecodable_message() -> None:
    """A message the decoder cannot take closes its connection (1002), not the listener."""
    await _fuzz_listener([_BAD_UTF8_CALL])


async def test_fuzz_listener_keeps_connection_with_deeply_nested_payload() -> None:
    """A call whose payload is nested too deeply fails alone: its connection stays open."""
    deep = _CALL_PREFIX + _DEEP + b"\xc0\xc2"
    assert _valid(deep)
    await _fuzz_listener([deep])


# -- the HTTP server fed fuzzed bytes


async def _echo(request: Request) -> HTTPReply:
    await trio.lowlevel.checkpoint()
    return plain(200, f"{request.method} {request.path} {len(request.body)}")


async def _read_to_eof(stream: trio.SocketStream) -> bytes:
    data = b""
    with trio.fail_after(TIMEOUT_S):
        while chunk := await stream.receive_some(65536):
            data += chunk
    return data


async def _good_http_request(port: int) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"GET /good HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
        reply = await _read_to_eof(stream)
    assert reply.startswith(b"HTTP/1.1 200 "), reply[:80]
    assert reply.endswith(b"GET /good 0")


async def _fuzz_http(garbage: bytes) -> None:
    async with trio.open_nursery() as nursery:
        port = await nursery.start(functools.partial(serve_http, _echo, host="127.0.0.1", port=0))
        fuzzer = await trio.open_tcp_stream("127.0.0.1", port)
        async with fuzzer:
            await fuzzer.send_all(garbage)
            await _good_http_request(port)  # served while the fuzzer's bytes sit there
            with contextlib.suppress(trio.BrokenResourceError):  # the server closed it already
                await fuzzer.send_eof()
            try:
                reply = await _read_to_eof(fuzzer)
            except trio.BrokenResourceError:
                reply = b""  # reset by the server: closed, which is all that is asked
        assert reply == b"" or reply.startswith(b"HTTP/1.1 "), reply[:80]
        await _good_http_request(port)
        nursery.cancel_scope.cancel()


http_garbage = st.one_of(
    st.binary(max_size=200),
    st.builds(
        lambda method, target, headers, body: (
            f"{method} {target} HTTP/1.1\r\n".encode() + headers + b"\r\n" + body
        ),
        st.sampled_from(["GET", "POST", "PUT", "\x00", "G ET"]),
        st.text(max_size=20).filter(lambda t: "\r" not in t and "\n" not in t),
        st.binary(max_size=80),
        st.binary(max_size=40),
    ),
)


@SOCKET
@given(http_garbage)
def test_fuzz_http_server_closes_only_the_fuzzing_connection(garbage: bytes) -> None:
    """Random or half-formed HTTP gets an HTTP answer or a closed connection, never a crash;
    other clients are served meanwhile and afterwards."""
    trio.run(_fuzz_http, garbage)
