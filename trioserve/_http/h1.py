"""HTTP/1.1, the server's side, sans-IO: request heads and bodies parsed by ``httptools``
(llhttp, the C parser uvicorn uses), responses written here.

:class:`ServerConnection` keeps h11's model (and the names of its events and states), which
the server's connection logic is written against: ``receive_data()`` what came from the
socket (``b""`` for EOF), pull events with ``next_event()`` (``NEED_DATA`` when more must
come, ``PAUSED`` once the request is in and not yet answered), turn events into bytes with
``send()``, and ``start_next_cycle()`` for the next request of a keep-alive connection.
llhttp parses all it is given at once, so events of pipelined requests wait in a queue,
and a malformed request behind a good one is reported only when its turn comes. The cost
of one small request and its answer: ~5 µs here, against ~100 µs in h11.

What the parser lets through and HTTP forbids (a 1.1 request without ``Host``, CONNECT,
versions other than 1.x, both framings) is refused by the server (``request_problem``).
"""

from __future__ import annotations

import re
from collections import deque
from typing import Final

import httptools

# -- events (the names and fields of h11's)


class Request:
    """A request head: names lowercased, values stripped; repeated headers kept apart."""

    __slots__ = ("headers", "http_version", "keep_alive", "method", "target")

    def __init__(
        self,
        *,
        method: bytes,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        http_version: bytes,
        keep_alive: bool = True,
    ) -> None:
        self.method = method
        self.target = target
        self.headers = headers
        self.http_version = http_version
        #: what the request's version and ``connection`` header allow after its answer
        self.keep_alive = keep_alive


class Data:
    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


class EndOfMessage:
    __slots__ = ()


class ConnectionClosed:
    __slots__ = ()


class Response:
    __slots__ = ("headers", "reason", "status_code")

    def __init__(self, *, status_code: int, headers: list[tuple[str, str]], reason: bytes) -> None:
        self.status_code = status_code
        self.headers = headers
        self.reason = reason


class InformationalResponse(Response):
    """A 1xx answer (``100 Continue``, ``101 Switching Protocols``)."""

    __slots__ = ()


Event = Request | Data | EndOfMessage | ConnectionClosed
#: what the server sends
Outgoing = Response | Data | EndOfMessage


class _Sentinel:
    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


NEED_DATA: Final = _Sentinel("NEED_DATA")
PAUSED: Final = _Sentinel("PAUSED")

# -- states (h11's names)
IDLE: Final = _Sentinel("IDLE")
SEND_RESPONSE: Final = _Sentinel("SEND_RESPONSE")
SEND_BODY: Final = _Sentinel("SEND_BODY")
DONE: Final = _Sentinel("DONE")
MUST_CLOSE: Final = _Sentinel("MUST_CLOSE")
SWITCHED_PROTOCOL: Final = _Sentinel("SWITCHED_PROTOCOL")
ERROR: Final = _Sentinel("ERROR")


class RemoteProtocolError(Exception):
    """The client broke HTTP; ``error_status_hint`` is the status to refuse it with."""

    def __init__(self, message: str, error_status_hint: int = 400) -> None:
        super().__init__(message)
        self.error_status_hint = error_status_hint


class LocalProtocolError(Exception):
    """An answer HTTP does not allow (a bad header, a body longer than its length, ...)."""


# a header name is a token; a value has no control characters but tab (RFC 9110 §5.5)
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_NO_BODY_STATUS = frozenset({204, 304})


def _version_error(message: str) -> bool:
    return message.startswith(("Invalid HTTP version", "Pause on PRI"))


class _Message:
    """One request being parsed, or parsed and waiting in the queue."""

    __slots__ = ("events", "fed", "headers", "size", "target")

    def __init__(self) -> None:
        self.events: deque[Event | RemoteProtocolError] = deque()
        self.target = bytearray()
        self.headers: list[tuple[bytes, bytes]] = []
        #: about the bytes it took so far (at least 1 once begun)
        self.size = 1
        #: bytes received while its head was incomplete (the bound on a head that never ends)
        self.fed = 0


class _Released:
    """The callbacks of a released connection's parser: none (see ``release``)."""


_RELEASED: Final = _Released()


class ServerConnection:
    """One connection's HTTP/1.1 state, server side (see the module's docstring)."""

    def __init__(self, *, max_incomplete_event_size: int = 16 * 1024) -> None:
        self._max_head = max_incomplete_event_size
        self._parser = self._new_parser()
        #: the request being answered (if ``_answering``), then those behind it (pipelined)
        self._messages: deque[_Message] = deque()
        self._answering = False
        #: the message the parser is in (its head or body), or None between messages
        self._parsing: _Message | None = None
        self._in_head = False
        self._failed: RemoteProtocolError | None = None
        #: bytes after an upgrade request's head: not HTTP until its answer says so
        self._raw = bytearray()
        self._upgraded = False
        self._closed = False
        self.our_state: _Sentinel = IDLE
        self.their_state: _Sentinel = IDLE
        self.they_are_waiting_for_100_continue = False
        self._request: Request | None = None
        self._head_request = False
        self._keep_alive = True
        #: what a body of known length still owes, ``None``: chunked, -1: until close
        self._owed: int | None = 0

    # -- receiving

    def _new_parser(self) -> httptools.HttpRequestParser:
        parser = httptools.HttpRequestParser(self)
        # HTTP/1.2 is served as 1.1 (RFC 9112 §2.3); other versions are refused after parsing
        parser.set_dangerous_leniencies(lenient_version=True)
        return parser

    def release(self) -> None:
        """Let go of the parser once the connection is done. The parser holds this object's
        callbacks, so the two form a reference cycle that only a full garbage collection
        would free: on a busy server, a pause of tens of milliseconds every few thousand
        connections. Data received after this is ignored."""
        self._parser = httptools.HttpRequestParser(_RELEASED)

    @property
    def trailing_data(self) -> tuple[bytes, bool]:
        """What was received beyond the request being answered (for a pipelined request,
        about its size; after an upgrade request, the bytes themselves), and whether the
        client sent EOF."""
        if self._upgraded:
            return bytes(self._raw), self._closed
        later = sum(message.size for message in self._messages)
        if self._answering:
            later -= self._messages[0].size
        return b"\0" * later if later else b"", self._closed

    def receive_data(self, data: bytes) -> None:
        if not data:
            self._closed = True
            return
        if self._upgraded:
            self._raw += data
            return
        if self._failed is not None:
            return  # nothing after a malformed request is parsed
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._upgraded = True
            self._raw += data[int(upgrade.args[0]) :]
        except httptools.HttpParserError as exc:
            self._fail(exc)
            return
        if self._in_head and self._parsing is not None:
            self._parsing.fed += len(data)
            if self._parsing.fed > self._max_head:
                self._fail_now(RemoteProtocolError("request head too large", 431))

    def _fail(self, exc: Exception) -> None:
        message = str(exc)
        if _version_error(message):
            error = RemoteProtocolError(message, 505)
        else:
            error = RemoteProtocolError(message or type(exc).__name__, 400)
        self._fail_now(error)

    def _fail_now(self, error: RemoteProtocolError) -> None:
        self._failed = error
        message = self._parsing
        if message is None:
            message = _Message()
            self._messages.append(message)
        message.events.append(error)
        self._parsing = None

    # the parser's callbacks

    def on_message_begin(self) -> None:
        message = _Message()
        self._messages.append(message)
        self._parsing = message
        self._in_head = True

    def on_url(self, url: bytes) -> None:
        assert self._parsing is not None
        self._parsing.target += url
        self._parsing.size += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        message = self._parsing
        assert message is not None
        message.headers.append((name.lower(), value.strip(b" \t")))
        message.size += len(name) + len(value) + 4

    def on_headers_complete(self) -> None:
        message = self._parsing
        assert message is not None
        self._in_head = False
        parser = self._parser
        message.events.append(
            Request(
                method=parser.get_method(),
                target=bytes(message.target),
                headers=message.headers,
                http_version=parser.get_http_version().encode("ascii"),
                keep_alive=parser.should_keep_alive(),
            )
        )

    def on_body(self, body: bytes) -> None:
        message = self._parsing
        assert message is not None
        message.size += len(body)
        events = message.events
        last = events[-1] if events else None
        if isinstance(last, Data) and isinstance(last.data, bytearray):
            last.data += body  # a body in many small pieces: one event per feed
        else:
            events.append(Data(bytearray(body)))  # type: ignore[arg-type]  # why: bytes when popped

    def on_message_complete(self) -> None:
        assert self._parsing is not None
        self._parsing.events.append(EndOfMessage())
        self._parsing = None

    # -- events, one at a time

    def next_event(self) -> Event | _Sentinel:
        """The next event of the request being answered, ``NEED_DATA`` or ``PAUSED``.
        Raises :class:`RemoteProtocolError` when the request is malformed."""
        if self.their_state is DONE or self.their_state is SWITCHED_PROTOCOL:
            return PAUSED
        if self.their_state is ERROR:
            raise RemoteProtocolError("the request was malformed")
        if self._messages and self._messages[0].events:
            event = self._messages[0].events.popleft()
            if isinstance(event, RemoteProtocolError):
                self.their_state = ERROR
                raise event
            return self._took(event)
        if not self._closed:
            return NEED_DATA
        if self.their_state is IDLE and not self._messages:
            self.their_state = DONE
            return ConnectionClosed()
        self.their_state = ERROR
        raise RemoteProtocolError("the client closed its connection mid-request")

    def _took(self, event: Event) -> Event:
        if isinstance(event, Data):
            event.data = bytes(event.data)
            self.they_are_waiting_for_100_continue = False
        elif isinstance(event, Request):
            self._answering = True
            self._request = event
            self.their_state = SEND_BODY
            self.our_state = SEND_RESPONSE
            self._head_request = event.method == b"HEAD"
            self._keep_alive = event.keep_alive
            self.they_are_waiting_for_100_continue = event.http_version != b"1.0" and any(
                name == b"expect" and value.lower() == b"100-continue"
                for name, value in event.headers
            )
        elif isinstance(event, EndOfMessage):
            self.their_state = SWITCHED_PROTOCOL if self._upgraded else DONE
            self.they_are_waiting_for_100_continue = False
        return event

    def start_next_cycle(self) -> None:
        """Begin the next request of a keep-alive connection; both sides must be done."""
        if self.our_state is not DONE or self.their_state not in (DONE, SWITCHED_PROTOCOL):
            raise LocalProtocolError("not in a state to reuse the connection")
        if self._answering:
            self._messages.popleft()
            self._answering = False
        self.our_state = self.their_state = IDLE
        self._request = None
        if self._upgraded:  # answered as plain HTTP: what came after is HTTP again
            self._upgraded = False
            raw, self._raw = bytes(self._raw), bytearray()
            self._parser = self._new_parser()
            if raw:
                closed, self._closed = self._closed, False
                self.receive_data(raw)
                self._closed = closed

    # -- sending

    def send(self, event: Outgoing) -> bytes:
        """The bytes of ``event``; raises :class:`LocalProtocolError` for one HTTP does not
        allow now."""
        if isinstance(event, InformationalResponse):
            return self._send_informational(event)
        if isinstance(event, Response):
            return self._send_head(event)
        if self.our_state is not SEND_BODY:
            raise LocalProtocolError(f"no response body can be sent in state {self.our_state}")
        if isinstance(event, Data):
            return self._send_data(event.data)
        return self._send_end()

    def _send_informational(self, event: InformationalResponse) -> bytes:
        if self.our_state is not SEND_RESPONSE or not 100 <= event.status_code < 200:
            raise LocalProtocolError("a 1xx answer goes only before the response")
        data = _head_bytes(event.status_code, event.reason, event.headers)
        if event.status_code == 101:
            self.our_state = SWITCHED_PROTOCOL
        self.they_are_waiting_for_100_continue = False
        return data

    def _send_head(self, event: Response) -> bytes:
        if self.our_state not in (IDLE, SEND_RESPONSE) or event.status_code < 200:
            raise LocalProtocolError(f"no response can be sent in state {self.our_state}")
        request = self._request
        headers = event.headers
        names = [name.lower() for name, _ in headers]
        close = not self._keep_alive or request is None or self.their_state is ERROR
        if "connection" in names:
            index = names.index("connection")
            close = close or "close" in headers[index][1].lower()
        owed: int | None
        if self._head_request or event.status_code in _NO_BODY_STATUS:
            owed = 0
        elif "content-length" in names:
            value = headers[names.index("content-length")][1]
            if not value.isdigit():
                raise LocalProtocolError(f"bad content-length {value!r}")
            owed = int(value)
        elif "transfer-encoding" in names:
            if request is not None and request.http_version == b"1.0":
                # no chunked framing for an HTTP/1.0 client: the body ends with the connection
                headers = [
                    h for h, n in zip(headers, names, strict=True) if n != "transfer-encoding"
                ]
                owed, close = -1, True
            else:
                owed = None
        else:
            owed, close = -1, True
        if close and "connection" not in names:
            headers = [*headers, ("connection", "close")]
        data = _head_bytes(event.status_code, event.reason, headers)
        self._keep_alive = not close
        self._owed = owed
        self.they_are_waiting_for_100_continue = False
        self.our_state = SEND_BODY
        return data

    def _send_data(self, data: bytes) -> bytes:
        owed = self._owed
        if not data:
            return b""
        if owed is None:
            return b"%x\r\n%b\r\n" % (len(data), data)
        if owed == -1:
            return bytes(data)
        if self._head_request or len(data) > owed:
            raise LocalProtocolError("more data than the response's content-length")
        self._owed = owed - len(data)
        return bytes(data)

    def _send_end(self) -> bytes:
        owed = self._owed
        if owed is not None and owed > 0 and not self._head_request:
            raise LocalProtocolError("less data than the response's content-length")
        self.our_state = DONE if self._keep_alive else MUST_CLOSE
        return b"0\r\n\r\n" if owed is None else b""


def _head_bytes(status: int, reason: bytes, headers: list[tuple[str, str]]) -> bytes:
    lines = [b"HTTP/1.1 %d %b\r\n" % (status, reason)]
    for name, value in headers:
        try:
            raw_name = name.encode("latin-1") if isinstance(name, str) else name
            raw_value = value.encode("latin-1") if isinstance(value, str) else value
        except UnicodeEncodeError as exc:
            raise LocalProtocolError(f"response header {name!r} is not latin-1") from exc
        if not _TOKEN.match(raw_name) or _BAD_VALUE.search(raw_value):
            raise LocalProtocolError(f"invalid response header {raw_name!r}")
        lines.append(b"%b: %b\r\n" % (raw_name, raw_value.strip(b" \t")))
    lines.append(b"\r\n")
    return b"".join(lines)
