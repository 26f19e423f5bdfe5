"""HTTP requests and responses between the proxy and a replica.

The proxy reads a request (:class:`HTTPRequest`, the server's record of it) and sends the
ingress replica its head as plain data (:func:`request_meta`) and its body as bytes. The
replica turns them into an ASGI scope (:func:`asgi_scope`) and a ``receive`` callable
(:func:`body_receiver`), so user code sees a real ``starlette.requests.Request`` (what
``serve.Request`` is) and ASGI apps run as they would under any server.

What a handler returns goes back as *messages*, pushed through the replica's stream:

* a head ``[status, [[name, value], ...], whole]``;
* when ``whole``, exactly one ``bytes`` item: the entire body;
* otherwise body chunks (``bytes``), then ``None`` once the body is complete (the stream
  may go on running after it: a Starlette background task), or simply the end of the stream.

``str`` and ``bytes`` are sent as they are, ``dict``/``list``/msgspec Structs/dataclasses
as JSON, a :class:`Response` as given, a Starlette ``Response`` is run as the ASGI app it is
(:class:`ResponseSender` turns its messages into the above), a generator as a chunked stream.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any
from urllib.parse import parse_qsl

import attrs
import msgspec
import trio

Head = list[Any]  # [status, [[name, value], ...], whole] as it crosses the wire
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


def request_meta(
    request: HTTPRequest,
    *,
    route_prefix: str,
    request_id: str,
    server: tuple[str, int] | None,
) -> dict[str, Any]:
    """The head of ``request`` as plain data for the replica (everything but the body)."""
    return {
        "method": request.method,
        "path": request.path,
        "query_string": request.query_string,
        "headers": [[k, v] for k, v in request.headers.items()],
        "client": list(request.client) if request.client else None,
        "server": list(server) if server else None,
        "route_prefix": route_prefix,
        "request_id": request_id,
    }


def asgi_scope(meta: Mapping[str, Any]) -> dict[str, Any]:
    """An ASGI HTTP scope for a request's head (from :func:`request_meta`). ``path`` is the
    whole path and ``root_path`` the route prefix (``""`` for ``/``), as ASGI 3 frameworks
    expect; header names are lowercase bytes."""
    prefix: str = meta.get("route_prefix") or "/"
    path: str = meta["path"]
    client = meta.get("client")
    server = meta.get("server")
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": meta["method"],
        "scheme": "http",
        "path": path,
        "raw_path": path.encode("utf-8"),
        "root_path": "" if prefix == "/" else prefix,
        "query_string": meta.get("query_string", "").encode("latin-1"),
        "headers": [
            (str(k).lower().encode("latin-1"), str(v).encode("latin-1"))
            for k, v in meta.get("headers", [])
        ],
        "client": (str(client[0]), int(client[1])) if client else None,
        "server": (str(server[0]), int(server[1])) if server else None,
        "state": {},
    }


def body_receiver(body: bytes) -> Receive:
    """An ASGI ``receive``: the whole body in one message, then (once the response is
    complete, which the caller signals by cancelling, or never) a disconnect."""
    delivered = False

    async def receive() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True  # no checkpoint first: a cancelled probe must not lose it
            return {"type": "http.request", "body": body, "more_body": False}
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
        self._head: list[Any] | None = None
        self.started = False  #: the head went out
        self.complete = False  #: the whole body went out

    async def __call__(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            raw = message.get("headers", [])
            self._head = [
                int(message["status"]),
                [[bytes(k).decode("latin-1"), bytes(v).decode("latin-1")] for k, v in raw],
            ]
            return
        if kind != "http.response.body" or self.complete:
            return
        if self._head is None:
            raise RuntimeError("the ASGI application sent a body before http.response.start")
        chunk = bytes(message.get("body", b""))
        more = bool(message.get("more_body", False))
        if not self.started:
            self.started = True
            if not more:
                self.complete = True
                await self._emit([*self._head, True])
                await self._emit(chunk)
                return
            await self._emit([*self._head, False])
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


def response_head(value: Any) -> tuple[Head, bytes]:
    """The head (without ``whole``) and the whole body for a handler's return value that is
    neither a Starlette response nor a generator."""
    if isinstance(value, Response):
        body, media = body_bytes(value.body)
        headers = {k.lower(): v for k, v in value.headers.items()}
        headers.setdefault("content-type", value.media_type or media)
        return [value.status_code, [[k, v] for k, v in headers.items()]], body
    body, media = body_bytes(value)
    return [200, [["content-type", media]]], body


def chunk_bytes(item: Any) -> bytes:
    """One streamed item as bytes: str and bytes as they are, anything else as a JSON line."""
    if isinstance(item, bytes):
        return item
    if isinstance(item, str):
        return item.encode()
    return _json.encode(item) + b"\n"


STREAM_HEAD: Head = [200, [["content-type", "text/plain; charset=utf-8"]], False]
