"""Websocket framing of the common case (sans-IO): the same bytes wsproto reads and writes,
and everything else handed back to wsproto."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, Ping

from actors._frames import FrameReader, apply_mask, encode_binary

SIZES = [0, 1, 125, 126, 127, 65535, 65536, 70000]


def _wsproto(client: bool) -> Connection:
    return Connection(ConnectionType.CLIENT if client else ConnectionType.SERVER)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("client", [True, False])
def test_frames_encode_binary_is_read_by_wsproto(size: int, client: bool) -> None:
    """A frame from ``encode_binary`` (masked as a client's) is one whole message to the
    peer's wsproto."""
    payload = os.urandom(size)
    peer = _wsproto(client=not client)
    peer.receive_data(encode_binary(payload, mask=client))
    events = list(peer.events())
    assert len(events) == 1
    assert isinstance(events[0], BytesMessage)
    assert bytes(events[0].data) == payload
    assert events[0].message_finished


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("client", [True, False])
def test_frames_reader_reads_what_wsproto_writes(size: int, client: bool) -> None:
    """The reader parses wsproto's frames (masked ones on a server), fed whole or in
    pieces."""
    payload = os.urandom(size)
    data = _wsproto(client=client).send(BytesMessage(data=payload))
    whole = FrameReader(masked=client, max_size=1 << 20)
    assert whole.feed(data + data) == [payload, payload]
    pieces = FrameReader(masked=client, max_size=1 << 20)
    got: list[bytes] = []
    step = max(1, len(data) // 7)
    for at in range(0, len(data), step):
        got += pieces.feed(data[at : at + step])
    assert got == [payload]


def test_frames_reader_hands_other_frames_to_wsproto() -> None:
    """A frame of another kind (a ping here) ends the reader's part: the bytes from it on
    are handed back, and wsproto reads them."""
    server = _wsproto(client=False)
    client = _wsproto(client=True)
    data = client.send(BytesMessage(data=b"first")) + client.send(Ping(payload=b"p"))
    data += client.send(BytesMessage(data=b"second"))
    reader = FrameReader(masked=True, max_size=1024)
    assert reader.feed(data) == [b"first"]
    assert reader.rest is not None
    server.receive_data(reader.rest)
    events = list(server.events())
    assert isinstance(events[0], Ping)
    assert isinstance(events[1], BytesMessage)
    assert bytes(events[1].data) == b"second"
    with pytest.raises(RuntimeError):
        reader.feed(b"more")


def test_frames_reader_leaves_a_wrong_mask_to_wsproto() -> None:
    """An unmasked frame to a server (or a masked one to a client) is wsproto's to refuse."""
    to_server = FrameReader(masked=True, max_size=1024)
    assert to_server.feed(encode_binary(b"x", mask=False)) == []
    assert to_server.rest is not None
    to_client = FrameReader(masked=False, max_size=1024)
    assert to_client.feed(encode_binary(b"x", mask=True)) == []
    assert to_client.rest is not None


def test_frames_reader_flags_a_frame_over_the_limit() -> None:
    """A frame longer than ``max_size`` is flagged as soon as its header is read."""
    reader = FrameReader(masked=False, max_size=100)
    frame = encode_binary(b"y" * 101, mask=False)
    assert reader.feed(frame[:4]) == []
    assert reader.too_big == 101


@given(st.binary(max_size=300), st.binary(min_size=4, max_size=4))
def test_frames_apply_mask_twice_is_the_identity(payload: bytes, key: bytes) -> None:
    """Masking is its own inverse, byte for byte as RFC 6455 defines it."""
    masked = apply_mask(payload, key)
    assert masked == bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    assert apply_mask(masked, key) == payload
