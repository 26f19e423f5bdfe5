"""HTTP and WebSocket exchanges between the proxy and an ingress replica, as typed messages.

Each exchange is one duplex call to the replica (``__serve_http__`` or ``__serve_ws__``):

* its argument is a :class:`RequestHead` (the request line, headers, peer, the whole body
  when it was small, and the request id);
* **HTTP**: when ``more_body`` is set, the request stream carries the rest of the body as
  ``bytes`` chunks, at the pace the replica reads them. The reply stream is one
  :class:`ResponseStart`, then the body: exactly one ``bytes`` item when ``whole``, else
  ``bytes`` chunks as the app sends them and ``None`` once the body is complete (the call
  may run on after it: a Starlette background task), or simply the end of the stream;
* **WebSocket**: the reply stream carries :data:`WSEvent` values from the app
  (:class:`WSAccept`, :class:`WSMessage`, :class:`WSClose`), the request stream
  :class:`WSMessage` values from the client and, last, a :class:`WSClose` with the
  client's close code.

Messages travel encoded (:func:`encode`), as ``bytes``, and are decoded by the typed
decoders below: no dict or positional list crosses the boundary. Fields are only appended,
with defaults.
"""

from __future__ import annotations

from typing import Any

import msgspec

Header = tuple[str, str]


class RequestHead(msgspec.Struct, frozen=True, kw_only=True):
    """An HTTP request or WebSocket handshake, without the body's streamed rest."""

    method: str
    path: str
    query_string: str = ""
    #: as the client sent them (names in their case; repeated headers joined with ", ")
    headers: list[Header] = []
    client: tuple[str, int] | None = None
    server: tuple[str, int] | None = None
    route_prefix: str = "/"
    request_id: str = ""
    #: the body (or, with ``more_body``, nothing yet: the rest comes as the request stream)
    body: bytes = b""
    more_body: bool = False
    #: ``"http"`` or ``"websocket"``
    kind: str = "http"


class ResponseStart(msgspec.Struct, frozen=True, kw_only=True):
    """A response's status and headers; ``whole``: the body follows as one ``bytes``."""

    status: int
    headers: list[Header] = []
    whole: bool = False


class WSAccept(msgspec.Struct, frozen=True, kw_only=True, tag="accept"):
    """The app accepted the WebSocket."""

    subprotocol: str | None = None
    headers: list[Header] = []


class WSMessage(msgspec.Struct, frozen=True, kw_only=True, tag="message"):
    """One WebSocket message: ``text`` or ``data``."""

    text: str | None = None
    data: bytes | None = None

    @property
    def payload(self) -> str | bytes:
        return self.text if self.text is not None else (self.data or b"")


class WSClose(msgspec.Struct, frozen=True, kw_only=True, tag="close"):
    """A close: from the app (before accepting: the handshake is refused with 403), or
    the client's (its code) at the end of the request stream."""

    code: int = 1000
    reason: str = ""


WSEvent = WSAccept | WSMessage | WSClose

_encoder = msgspec.msgpack.Encoder()
encode = _encoder.encode
decode_head = msgspec.msgpack.Decoder(RequestHead).decode
decode_start = msgspec.msgpack.Decoder(ResponseStart).decode
decode_ws_event = msgspec.msgpack.Decoder(WSEvent).decode


def ws_message(payload: Any) -> WSMessage:
    """A message for ``payload`` (``str`` travels as text, anything else as bytes)."""
    if isinstance(payload, str):
        return WSMessage(text=payload)
    return WSMessage(data=bytes(payload))
