"""HTTP requests and responses as deployments see them (sans-IO).

The proxy sends a request to the ingress replica as plain data; the replica builds a
:class:`Request`, calls the user's ``__call__``, and turns what it returns into a status,
headers and body chunks: ``str`` and ``bytes`` as they are, ``dict``/``list``/msgspec
Structs/dataclasses as JSON, a :class:`Response` as given, a generator as a chunked stream.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl

import attrs
import msgspec

Head = list[Any]  # [status, [[name, value], ...]] as it crosses the wire


@attrs.frozen(kw_only=True)
class Request:
    """An HTTP request reaching a deployment's ``__call__``."""

    method: str
    path: str
    query_string: str = ""
    headers: Mapping[str, str] = attrs.field(factory=dict)
    body: bytes = b""
    route_prefix: str = "/"

    @property
    def query_params(self) -> dict[str, str]:
        return dict(parse_qsl(self.query_string, keep_blank_values=True))

    def json(self) -> Any:
        """The body decoded as JSON (``msgspec.DecodeError`` if it is not JSON)."""
        return msgspec.json.decode(self.body)

    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    @property
    def url(self) -> str:
        host = self.headers.get("host", "localhost")
        query = f"?{self.query_string}" if self.query_string else ""
        return f"http://{host}{self.path}{query}"


@attrs.frozen
class Response:
    """A response with an explicit status code, headers and media type."""

    body: Any = b""
    status_code: int = 200
    headers: Mapping[str, str] = attrs.field(factory=dict)
    media_type: str | None = None


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
    """The head and the whole body for a handler's (non-streaming) return value."""
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


STREAM_HEAD: Head = [200, [["content-type", "text/plain; charset=utf-8"]]]
