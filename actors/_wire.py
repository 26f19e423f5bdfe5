"""Wire envelopes and their framing (sans-IO).

Every websocket message is a msgpack array of envelopes; each envelope is an ``array_like``
tagged ``msgspec.Struct``. User payloads stay ``msgspec.Raw`` until the call that owns them
decodes them, so a bad payload fails one call, never the connection. Fields are only ever
appended, with defaults.
"""

from __future__ import annotations

import msgspec
from msgspec import Raw as Raw

PROTOCOL = "actors.v1"


class _Envelope(msgspec.Struct, frozen=True, array_like=True, tag_field="t"):
    pass


class Call(_Envelope, tag=1, frozen=True):
    """Run ``method`` with the encoded ``[args, kwargs]`` in ``payload``. A ``stream`` call
    answers with a reply stream; a ``duplex`` one also takes a request stream from the
    caller (see ``actors._protocol``)."""

    id: int
    method: str
    payload: Raw
    timeout: float | None = None
    stream: bool = False
    duplex: bool = False


class Result(_Envelope, tag=2, frozen=True):
    id: int
    value: Raw


class Failure(_Envelope, tag=3, frozen=True):
    """The call raised; ``error`` is an encoded :class:`ErrorInfo`."""

    id: int
    error: Raw


class Rejected(_Envelope, tag=4, frozen=True):
    """The actor is at capacity; the call never started and may be retried elsewhere."""

    id: int
    reason: str


class Cancel(_Envelope, tag=5, frozen=True):
    id: int


class StreamItem(_Envelope, tag=6, frozen=True):
    """One item of a call's stream: the reply stream from the host, or (duplex calls)
    the request stream from the caller."""

    id: int
    value: Raw


class StreamEnd(_Envelope, tag=7, frozen=True):
    """The stream flowing the way this travels has ended."""

    id: int


class StreamAck(_Envelope, tag=8, frozen=True):
    """The sender of this consumed ``n`` more items of the stream flowing towards it (or,
    from a host admitting a duplex call, grants the first ones): the peer may send ``n``
    more."""

    id: int
    n: int


class Heartbeat(_Envelope, tag=9, frozen=True):
    pass


class Hello(_Envelope, tag=10, frozen=True):
    """First message of a child on its control connection."""

    child_id: str
    pid: int


class Spec(_Envelope, tag=11, frozen=True):
    """Parent to child: the pickled object spec to build (after authentication only)."""

    blob: bytes


class Ready(_Envelope, tag=12, frozen=True):
    """Child to parent: the object is built and serving calls at ``host:port``."""

    host: str
    port: int


class SpecFailed(_Envelope, tag=13, frozen=True):
    error: Raw


class Stop(_Envelope, tag=14, frozen=True):
    """Parent to child: stop taking calls, finish in-flight ones within ``grace_s``, exit."""

    grace_s: float


class Received(_Envelope, tag=15, frozen=True):
    """Actor to caller: every call with an id up to ``upto`` on this connection has been
    read (and admitted or refused). Sent before any of those calls starts its work, so a
    call the caller never saw acknowledged never ran."""

    upto: int


Envelope = (
    Call
    | Result
    | Failure
    | Rejected
    | Cancel
    | StreamItem
    | StreamEnd
    | StreamAck
    | Heartbeat
    | Hello
    | Spec
    | Ready
    | SpecFailed
    | Stop
    | Received
)


class ErrorInfo(msgspec.Struct, frozen=True, array_like=True):
    """An exception as it crosses the wire: enough to rebuild it, or to explain it."""

    module: str
    qualname: str
    message: str
    traceback: str
    pickled: bytes | None = None


_encoder = msgspec.msgpack.Encoder()
encode_envelope = _encoder.encode


def frame(encoded: list[bytes]) -> bytes:
    """Join already-encoded envelopes into one websocket message (a msgpack array)."""
    n = len(encoded)
    if n < 16:
        header = bytes((0x90 | n,))
    elif n < 0x10000:
        header = b"\xdc" + n.to_bytes(2, "big")
    else:
        header = b"\xdd" + n.to_bytes(4, "big")
    return b"".join([header, *encoded])  # one copy of the payloads, not two


def batch_cut(queued: list[bytes], limit: int) -> tuple[int, int]:
    """How many encoded envelopes from the front of ``queued`` share the next websocket
    message, and their size: as many as fit in ``limit`` bytes, and always at least one."""
    size = 0
    for cut, data in enumerate(queued):
        if size + len(data) > limit and cut > 0:
            return cut, size
        size += len(data)
    return len(queued), size


class BatchDecoder:
    """Decodes one websocket message into its envelopes; one instance per connection.

    Payloads stay ``Raw``, but msgspec still walks them to find their end, recursively: a
    payload nested deeper than the recursion limit fails that walk. Such a message is then
    split by :func:`skip` (iterative) and each envelope decoded field by field, its
    ``Raw`` fields taken as they are: the payload then fails only its own call, when that
    call decodes it.
    """

    def __init__(self) -> None:
        self._decoder = msgspec.msgpack.Decoder(list[Envelope])
        self._one = msgspec.msgpack.Decoder(Envelope)

    def decode(self, data: bytes) -> list[Envelope]:
        """Raise ``msgspec.DecodeError`` (or ``ValidationError``) for anything malformed."""
        try:
            return self._decoder.decode(data)
        except RecursionError:
            return self._decode_deep(data)
        except UnicodeDecodeError as exc:
            # msgspec lets these through for strings that are not UTF-8
            raise msgspec.DecodeError(f"malformed message: {exc!r}") from None

    def _decode_deep(self, data: bytes) -> list[Envelope]:
        try:
            n, pos = _array_header(data, 0)
            envelopes: list[Envelope] = []
            for _ in range(n):
                end = skip(data, pos)
                chunk = data[pos:end]
                try:
                    envelopes.append(self._one.decode(chunk))
                except RecursionError:
                    envelopes.append(_decode_fields(chunk))
                pos = end
        except (RecursionError, UnicodeDecodeError, IndexError) as exc:
            raise msgspec.DecodeError(f"malformed message: {exc!r}") from None
        if pos != len(data):
            raise msgspec.DecodeError("malformed message: trailing bytes")
        return envelopes


_TAGS: dict[int, type[_Envelope]] = {cls.__struct_config__.tag: cls for cls in Envelope.__args__}


def _decode_fields(chunk: bytes) -> Envelope:
    """Decode one ``array_like`` envelope element by element (``Raw`` fields untouched);
    a non-``Raw`` field that is too deep still fails (with ``RecursionError``)."""
    n, pos = _array_header(chunk, 0)
    ends = []
    for _ in range(n):
        pos = skip(chunk, pos)
        ends.append(pos)
    starts = [_array_header(chunk, 0)[1], *ends[:-1]]
    elements = [chunk[a:b] for a, b in zip(starts, ends, strict=True)]
    if not elements:
        raise msgspec.DecodeError("malformed message: an empty envelope")
    tag = msgspec.msgpack.decode(elements[0])
    cls = _TAGS.get(tag) if type(tag) is int else None
    if cls is None:
        raise msgspec.DecodeError(f"malformed message: unknown envelope tag {tag!r}")
    fields = msgspec.structs.fields(cls)
    # fields beyond the known ones are ignored, as msgspec does (newer peers append fields)
    values = [
        Raw(element) if field.type is Raw else msgspec.msgpack.decode(element, type=field.type)
        for field, element in zip(fields, elements[1:], strict=False)
    ]
    return cls(*values)  # type: ignore[return-value]  # why: cls is an Envelope member


def _array_header(data: bytes, pos: int) -> tuple[int, int]:
    """``(length, position after the header)`` of the msgpack array at ``pos``."""
    b = data[pos]
    if 0x90 <= b <= 0x9F:
        return b & 0x0F, pos + 1
    if b == 0xDC:
        return int.from_bytes(data[pos + 1 : pos + 3], "big"), pos + 3
    if b == 0xDD:
        return int.from_bytes(data[pos + 1 : pos + 5], "big"), pos + 5
    raise msgspec.DecodeError("malformed message: expected an array")


#: msgpack types of a fixed size: first byte -> total size
_FIXED = {0xC0: 1, 0xC2: 1, 0xC3: 1, 0xCA: 5, 0xCB: 9, 0xCC: 2, 0xCD: 3, 0xCE: 5, 0xCF: 9}
_FIXED.update({0xD0: 2, 0xD1: 3, 0xD2: 5, 0xD3: 9, 0xD4: 3, 0xD5: 4, 0xD6: 6, 0xD7: 10})
_FIXED[0xD8] = 18
#: msgpack types with a length prefix: first byte -> (prefix size, bytes of header extra)
_SIZED = {0xC4: (1, 0), 0xC5: (2, 0), 0xC6: (4, 0), 0xD9: (1, 0), 0xDA: (2, 0), 0xDB: (4, 0)}
_SIZED.update({0xC7: (1, 1), 0xC8: (2, 1), 0xC9: (4, 1)})


def skip(data: bytes, pos: int) -> int:
    """The position just after the msgpack object at ``pos``, found without recursion
    (however deep the object is nested). Raises ``DecodeError`` on malformed input."""
    size = len(data)
    todo = 1  # objects still to skip
    while todo:
        if pos >= size:
            raise msgspec.DecodeError("malformed message: truncated")
        b = data[pos]
        todo -= 1
        if b <= 0x7F or b >= 0xE0:
            pos += 1
        elif b <= 0x8F:
            todo += 2 * (b & 0x0F)
            pos += 1
        elif b <= 0x9F:
            todo += b & 0x0F
            pos += 1
        elif b <= 0xBF:
            pos += 1 + (b & 0x1F)
        elif b in _FIXED:
            pos += _FIXED[b]
        elif b in _SIZED:
            width, extra = _SIZED[b]
            pos += 1 + width + extra + int.from_bytes(data[pos + 1 : pos + 1 + width], "big")
        elif b in (0xDC, 0xDD):
            width = 2 if b == 0xDC else 4
            todo += int.from_bytes(data[pos + 1 : pos + 1 + width], "big")
            pos += 1 + width
        elif b in (0xDE, 0xDF):
            width = 2 if b == 0xDE else 4
            todo += 2 * int.from_bytes(data[pos + 1 : pos + 1 + width], "big")
            pos += 1 + width
        else:  # 0xC1: never used
            raise msgspec.DecodeError(f"malformed message: invalid byte 0x{b:02x}")
    if pos > size:
        raise msgspec.DecodeError("malformed message: truncated")
    return pos
