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
    """Run ``method`` with the encoded ``[args, kwargs]`` in ``payload``."""

    id: int
    method: str
    payload: Raw
    timeout: float | None = None
    stream: bool = False


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
    id: int
    value: Raw


class StreamEnd(_Envelope, tag=7, frozen=True):
    id: int


class StreamAck(_Envelope, tag=8, frozen=True):
    """The caller consumed ``n`` more items; the actor may send ``n`` more."""

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
    """Decodes one websocket message into its envelopes; one instance per connection."""

    def __init__(self) -> None:
        self._decoder = msgspec.msgpack.Decoder(list[Envelope])

    def decode(self, data: bytes) -> list[Envelope]:
        """Raise ``msgspec.DecodeError`` (or ``ValidationError``) for anything malformed."""
        try:
            return self._decoder.decode(data)
        except (RecursionError, UnicodeDecodeError) as exc:
            # msgspec lets these through for deep nesting and strings that are not UTF-8
            raise msgspec.DecodeError(f"malformed message: {exc!r}") from None
