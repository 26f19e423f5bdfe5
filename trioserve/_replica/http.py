"""HTTP requests and responses between the proxy and a replica.

The proxy reads a request (:class:`HTTPRequest`, the server's record of it) and sends the
ingress replica a :class:`~trioserve._exchange.RequestHead` (and, for a large or chunked
body, the rest of the body as the call's request stream). The replica turns them into an
ASGI scope (:func:`asgi_scope`) and a ``receive`` callable (:func:`body_receiver`), so user
code sees a real ``starlette.requests.Request`` (what ``serve.Request`` is) and ASGI apps
run as they would under any server.

What a handler returns goes back through the replica's reply stream as
``trioserve._exchange`` describes: a :class:`~trioserve._exchange.ResponseStart`, then the
body. ``str`` and ``bytes`` are sent as they are, ``dict``/``list``/msgspec
Structs/dataclasses as JSON, a :class:`Response` as given, a Starlette ``Response`` is run
as the ASGI app it is (:class:`ResponseSender` turns its messages into the above), a
generator as a chunked stream.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping
from typing import Any
from urllib.parse import parse_qsl

import attrs
import msgspec
import trio

from .._exchange import RequestHead, ResponseStart, encode

Emit = Callable[[Any], Awaitable[None]]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]


@attrs.frozen(kw_only=True)
class HTTPRequest:
    """An HTTP request as the server read it (the proxy's side; replicas see a Starlette
    ``Request`` built from it). Header names are as the client sent them; repeated headers
    are joined with ``", "``."""

    method: str
    path: str
    query_string: str = ""
    headers: Mapping[str, str] = attrs.field(factory=dict)
    body: bytes = b""
    route_prefix: str = "/"
    #: the peer's ``(host, port)``, when the server knows it
    client: tuple[str, int] | None = None
    #: a body streamed as it arrives (the HTTP server's ``RequestBody``: ``await read()``,
    #: ``async for``), with ``body`` empty: set for a body with a ``content-length`` past
    #: ``HTTPLimits.inline_body_bytes``, or a chunked one not already received whole with
    #: its head. ``Any``: ``_http`` imports this module, not the other way round
    body_stream: Any = None
    #: a websocket upgrade request's ``ServerWebSocket`` (``trioserve._http.websocket``);
    #: ``Any`` for the same reason
    websocket: Any = None

    # The accessors below are what ``serve.Request`` offered while it was this class; code
    # that still builds one by hand (and passes it through a handle) keeps working.

    @property
    def query_params(self) -> dict[str, str]:
        return dict(parse_qsl(self.query_string, keep_blank_values=True))

    def json(self) -> Any:
        """The body decoded as JSON (``msgspec.DecodeError`` if it is not JSON)."""
        return msgspec.json.decode(self.body)

    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


#: the old name, still used by the HTTP server and the control endpoint
Request = HTTPRequest


@attrs.frozen
class Response:
    """A response with an explicit status code, headers and media type."""

    body: Any = b""
    status_code: int = 200
    headers: Mapping[str, str] = attrs.field(factory=dict)
    media_type: str | None = None


# -- requests


def asgi_scope(head: RequestHead) -> dict[str, Any]:
    """An ASGI HTTP (or WebSocket) scope for a request's head. ``path`` is the whole path
    and ``root_path`` the route prefix (``""`` for ``/``), as ASGI 3 frameworks expect;
    header names are lowercase bytes."""
    prefix = head.route_prefix or "/"
    headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in head.headers]
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": head.method,
        "scheme": "http",
        "path": head.path,
        "raw_path": head.path.encode("utf-8"),
        "root_path": "" if prefix == "/" else prefix,
        "query_string": head.query_string.encode("latin-1"),
        "headers": headers,
        "client": head.client,
        "server": head.server,
        "state": {},
    }
    if head.kind == "websocket":
        scope["type"] = "websocket"
        scope["scheme"] = "ws"
        scope["subprotocols"] = [
            p.strip()
            for k, v in head.headers
            if k.lower() == "sec-websocket-protocol"
            for p in v.split(",")
            if p.strip()
        ]
        del scope["method"]
    return scope


def body_receiver(head: RequestHead, rest: AsyncIterator[Any] | None = None) -> Receive:
    """An ASGI ``receive``: the body (``head.body``, then, with ``more_body``, each chunk of
    the request stream ``rest`` as it is read), then -- once the response is complete,
    which the caller signals by cancelling, or never -- nothing more. A request stream that
    broke reads as ``http.disconnect``."""
    delivered = False
    ended = not head.more_body

    async def receive() -> Message:
        nonlocal delivered, ended
        if not delivered:
            delivered = True  # no checkpoint first: a cancelled probe must not lose it
            return {"type": "http.request", "body": head.body, "more_body": not ended}
        if not ended and rest is not None:
            try:
                chunk = await anext(rest)
            except StopAsyncIteration:
                ended = True
                return {"type": "http.request", "body": b"", "more_body": False}
            except Exception:  # why: the caller is gone; ASGI says so with a disconnect
                ended = True
                return {"type": "http.disconnect"}
            return {"type": "http.request", "body": bytes(chunk), "more_body": True}
        await trio.sleep_forever()
        raise AssertionError("unreachable")  # pragma: no cover

    return receive


# -- responses


class ResponseSender:
    """An ASGI ``send`` that pushes a response's messages as the replica's stream messages:
    a response sent in one body message travels ``whole``; one sent in several travels
    chunk by chunk as the app sends them, then ``None``."""

    def __init__(self, emit: Emit) -> None:
        self._emit = emit
        self._head: tuple[int, list[tuple[str, str]]] | None = None
        self.started = False  #: the head went out
        self.complete = False  #: the whole body went out

    async def __call__(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            raw = message.get("headers", [])
            self._head = (
                int(message["status"]),
                [(bytes(k).decode("latin-1"), bytes(v).decode("latin-1")) for k, v in raw],
            )
            return
        if kind != "http.response.body" or self.complete:
            return
        if self._head is None:
            raise RuntimeError("the ASGI application sent a body before http.response.start")
        chunk = bytes(message.get("body", b""))
        more = bool(message.get("more_body", False))
        if not self.started:
            self.started = True
            status, headers = self._head
            if not more:
                self.complete = True
                await self._emit(encode(ResponseStart(status=status, headers=headers, whole=True)))
                await self._emit(chunk)
                return
            await self._emit(encode(ResponseStart(status=status, headers=headers)))
        if chunk:
            await self._emit(chunk)
        if not more:
            self.complete = True
            await self._emit(None)

    async def finish(self) -> None:
        """The app returned: complain if it never answered."""
        if not self.started:
            raise RuntimeError("the ASGI application finished without sending a response")
        if not self.complete:
            self.complete = True
            await self._emit(None)


def _json_default(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if attrs.has(type(obj)):
        return attrs.asdict(obj)
    raise TypeError(f"cannot turn {type(obj).__name__} into an HTTP response body")


_json = msgspec.json.Encoder(enc_hook=_json_default)


def body_bytes(value: Any) -> tuple[bytes, str]:
    """A value as response body bytes, with its content type."""
    if isinstance(value, bytes):
        return value, "application/octet-stream"
    if isinstance(value, str):
        return value.encode(), "text/plain; charset=utf-8"
    return _json.encode(value), "application/json"


def response_start(value: Any) -> tuple[ResponseStart, bytes]:
    """The start (``whole``) and the whole body for a handler's return value that is
    neither a Starlette response nor a generator."""
    if isinstance(value, Response):
        body, media = body_bytes(value.body)
        headers = {k.lower(): v for k, v in value.headers.items()}
        headers.setdefault("content-type", value.media_type or media)
        start = ResponseStart(status=value.status_code, headers=list(headers.items()), whole=True)
        return start, body
    body, media = body_bytes(value)
    return ResponseStart(status=200, headers=[("content-type", media)], whole=True), body


def chunk_bytes(item: Any) -> bytes:
    """One streamed item as bytes: str and bytes as they are, anything else as a JSON line."""
    if isinstance(item, bytes):
        return item
    if isinstance(item, str):
        return item.encode()
    return _json.encode(item) + b"\n"


#: the start of a generator's (chunked) response
STREAM_START = encode(
    ResponseStart(status=200, headers=[("content-type", "text/plain; charset=utf-8")])
)
