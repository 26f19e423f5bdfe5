"""Authenticated websocket endpoints: listening for links, and connecting to an actor.

Every endpoint requires the instance token in the handshake (header ``x-actors-token``)
and the protocol version as the websocket subprotocol; a wrong or missing token is refused
with HTTP 401 before any message is read. Tokens are compared in constant time.

The websocket is ``actors._websocket.WebSocket`` (wsproto, read and written by the link's
own tasks, no task of its own). Both ends own their TCP stream and close it themselves when
the link ends, however it ends.

Limits before authentication, per listener: a connection has ``HANDSHAKE_TIMEOUT_S`` to
complete its handshake (it is closed as soon as its peer hangs up, too), and at most
``MAX_CONNECTIONS`` connections (authenticated or not) are open at once; beyond that a
new connection evicts the oldest one still in its handshake (so a flood of silent peers
cannot lock out an actor process connecting back) or, when every open one is
authenticated, is closed at once; one warning is logged per burst.
``MAX_CONNECTIONS`` follows the process's open-file limit (:func:`default_max_connections`),
so that a flood of one listener cannot take the file descriptors the process needs to start
actor processes and connect to them. Should the process run out of file descriptors (or
memory) all the same, accepting backs off and logs once per burst (:class:`AcceptBackoff`).
"""

from __future__ import annotations

import errno
import hmac
import logging
import math
import os
import resource
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from contextlib import asynccontextmanager
from typing import NoReturn

import attrs
import trio
from wsproto.events import Request

from . import _websocket
from ._groups import unwrap_lone_error
from ._link import DEFAULT_MAX_MESSAGE_SIZE, Link
from ._ref import RemoteRef
from ._websocket import WebSocket
from ._wire import PROTOCOL
from .exceptions import ActorDiedError, AuthenticationError, ConnectTimeoutError, ProtocolError

TOKEN_HEADER = b"x-actors-token"
RECEIVE_BUFFER_SIZE = 256 * 1024
#: how long a new connection to a listener may take to complete its websocket handshake
#: (send its request and be accepted or refused) before it is closed
HANDSHAKE_TIMEOUT_S = 5.0
#: the most connections a listener holds open at once by default, however high the
#: open-file limit
MAX_CONNECTIONS_CAP = 256
#: file descriptors a process keeps out of its listeners' reach, at least (a bigger share of
#: a bigger limit: see :func:`fd_reserve`)
FD_RESERVE_MIN = 64
#: how long connecting to an actor may take, TCP connect and websocket handshake together
CONNECT_TIMEOUT_S = 10.0
#: how long a closing link waits for the peer's close frame before closing the socket
DISCONNECT_TIMEOUT_S = 2.0
#: accept errors that mean "out of file descriptors or memory" (as in trio.serve_listeners):
#: the listener pauses and tries again
ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
#: the pause after a failed accept: this first, doubling up to the maximum
ACCEPT_BACKOFF_MIN_S = 0.1
ACCEPT_BACKOFF_MAX_S = 1.0
#: at most one warning about failing accepts per this, however many bursts
ACCEPT_WARNING_INTERVAL_S = 10.0

logger = logging.getLogger("actors.transport")


def open_file_limit() -> int | None:
    """This process's soft ``RLIMIT_NOFILE``, or None when it is unlimited."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


def fd_reserve(soft_limit: int) -> int:
    """The file descriptors no listener may take, out of ``soft_limit``: the process's own
    (interpreter, event loop, listeners, logs: about 20) and, for each actor process it
    runs, the pidfd that watches it and the link to it (2 each, ~20 actors in 64)."""
    return max(FD_RESERVE_MIN, soft_limit // 8)


def default_max_connections(soft_limit: int | None) -> int:
    """A listener's default bound under ``soft_limit`` open files (None: unlimited): a
    quarter of what the reserve leaves, so that two listeners flooded at once still leave
    half of it, at most ``MAX_CONNECTIONS_CAP`` and at least 8.

    Why bounds and not a pool of spare descriptors (opened ``/dev/null``s released before a
    spawn): a spawn's descriptors are taken several awaits apart (the pidfd, the accepted
    control link, the link to the actor), and meanwhile every accept loop keeps accepting
    (even past its bound, to refuse), so released spares can go to a flooding peer. Bounds
    that sum to less than the limit make running out impossible rather than unlikely.
    """
    if soft_limit is None:
        return MAX_CONNECTIONS_CAP
    return max(8, min(MAX_CONNECTIONS_CAP, (soft_limit - fd_reserve(soft_limit)) // 4))


#: how many connections a listener holds open at once, by default: from the open-file limit
#: when ``actors`` is imported (a child inherits its parent's limit, and so its bound)
MAX_CONNECTIONS = default_max_connections(open_file_limit())


def _token_bytes(token: str | bytes) -> bytes:
    return token.encode() if isinstance(token, str) else token


class ConnectionGate:
    """Counts a listener's open connections against its limit (sans-IO).

    A connection is *pending* from :meth:`enter` until :meth:`authenticated`. At the limit,
    a new connection takes the place of the oldest pending one, which its listener then
    closes: peers that connect and never authenticate (a flood) cannot lock out one that
    authenticates at once (an actor process connecting back), since it is evicted only
    once ``limit`` newer connections have come in during its handshake. When every open
    connection is authenticated, a new one is refused.

    :meth:`enter` says whether a warning is due: the first refusal or eviction of a burst
    (an admission with room to spare ends a burst). ``on_change(count)``, if given, is
    called whenever the count of open connections changes.
    """

    def __init__(self, limit: int, on_change: Callable[[int], None] | None = None) -> None:
        if limit < 1:
            raise ValueError(f"max_connections must be >= 1, got {limit!r}")
        self.limit = limit
        self.refused = 0
        self.evicted = 0
        #: pending connections, oldest first
        self._pending: dict[Hashable, None] = {}
        self._authenticated: set[Hashable] = set()
        self._in_burst = False
        self._on_change = on_change

    @property
    def active(self) -> int:
        return len(self._pending) + len(self._authenticated)

    def enter(self, key: Hashable) -> GateDecision:
        """Admit the new connection ``key`` (pending), making room if need be, or refuse it."""
        evict: Hashable | None = None
        if self.active >= self.limit:
            if not self._pending:
                self.refused += 1
                return GateDecision(admitted=False, evict=None, warn=self._burst())
            evict = next(iter(self._pending))
            del self._pending[evict]
            self.evicted += 1
            warn = self._burst()
        else:
            self._in_burst = warn = False
        self._pending[key] = None
        if evict is None and self._on_change is not None:
            self._on_change(self.active)
        return GateDecision(admitted=True, evict=evict, warn=warn)

    def _burst(self) -> bool:
        warn, self._in_burst = not self._in_burst, True
        return warn

    def authenticated(self, key: Hashable) -> bool:
        """``key`` completed its handshake: it is no longer evicted to make room. False if
        it was evicted already (its listener closes it)."""
        if key not in self._pending:
            return False
        del self._pending[key]
        self._authenticated.add(key)
        return True

    def leave(self, key: Hashable) -> None:
        """``key`` is closed (a no-op for one evicted: it was counted out then)."""
        if key in self._pending:
            del self._pending[key]
        elif key in self._authenticated:
            self._authenticated.remove(key)
        else:
            return
        if self._on_change is not None:
            self._on_change(self.active)


@attrs.define
class AcceptBackoff:
    """How an accept loop answers running out of file descriptors or memory (sans-IO).

    A burst is a run of failed accepts ended by one that succeeds (:meth:`accepted`). Each
    failure is followed by a pause, ``min_s`` doubling up to ``max_s`` within a burst, so
    that the loop neither spins nor gives up. The first failure of a burst is to be logged,
    unless a warning was logged less than ``interval_s`` before (bursts in quick
    succession -- a descriptor freed, taken by the next connection, out again -- log one
    line); the line says how many failures went unlogged since the one before.
    """

    min_s: float = ACCEPT_BACKOFF_MIN_S
    max_s: float = ACCEPT_BACKOFF_MAX_S
    interval_s: float = ACCEPT_WARNING_INTERVAL_S
    _next_pause: float | None = None
    _last_warning: float = -math.inf
    _unlogged: int = 0

    def failed(self, now: float) -> AcceptRetry:
        """Record a failed accept at ``now``: how long to pause, and whether to warn."""
        first = self._next_pause is None
        pause = self.min_s if self._next_pause is None else self._next_pause
        self._next_pause = min(pause * 2, self.max_s)
        if not (first and now - self._last_warning >= self.interval_s):
            self._unlogged += 1
            return AcceptRetry(pause_s=pause, warn=False, unlogged=0)
        unlogged, self._unlogged, self._last_warning = self._unlogged, 0, now
        return AcceptRetry(pause_s=pause, warn=True, unlogged=unlogged)

    def accepted(self) -> None:
        """An accept succeeded: a burst is over (the next failure starts another)."""
        self._next_pause = None


@attrs.frozen(kw_only=True)
class AcceptRetry:
    """What to do after a failed accept: pause ``pause_s``, then accept again; log a
    warning if ``warn`` (``unlogged``: the failures since the last warning, not logged)."""

    pause_s: float
    warn: bool
    unlogged: int


@attrs.frozen(kw_only=True)
class GateDecision:
    """What to do with a new connection: admit it or not, close an older one (``evict``)
    to make room for it, and whether to log that the listener is full."""

    admitted: bool
    evict: Hashable | None
    warn: bool


async def serve_links(
    on_link: Callable[[WebSocket], Awaitable[None]],
    *,
    token: str | bytes,
    host: str = "127.0.0.1",
    port: int = 0,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    max_connections: int = MAX_CONNECTIONS,
    handshake_timeout: float = HANDSHAKE_TIMEOUT_S,
    on_connections: Callable[[int], None] | None = None,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Listen on ``host:port``; run ``on_link(ws)`` for each authenticated connection.

    At most ``max_connections`` connections are open at once: past it, a new connection
    takes the place of the oldest one still in its handshake, and is closed at once when
    every open one is authenticated (:class:`ConnectionGate`). A connection that has not
    completed its handshake within ``handshake_timeout`` seconds, or whose peer hangs up
    first, is closed. ``on_connections(count)`` is called whenever the number of open
    connections changes (for metrics and tests).

    Out of file descriptors (or memory), accepting pauses and tries again (0.1 s, doubling
    up to 1 s), with one warning per burst of failures (:class:`AcceptBackoff`).

    Tasks: the accept loop and, per connection, a handler (which reads its websocket), in
    this task's nursery; ``task_status.started((host, port))`` once listening. Cancelling
    closes everything (every socket is closed, none is left to garbage collection).
    """
    if handshake_timeout <= 0:
        raise ValueError(f"handshake_timeout must be > 0 seconds, got {handshake_timeout!r}")
    listeners = await trio.open_tcp_listeners(port, host=host)
    # one address, one port: a host name resolving to several addresses would get a
    # different port for each with port=0; the first is served
    for extra in listeners[1:]:
        await extra.aclose()
    listener = listeners[0]
    await _serve_links_on(
        listener,
        listener.socket.getsockname()[1],
        on_link,
        token=token,
        host=host,
        max_message_size=max_message_size,
        max_connections=max_connections,
        handshake_timeout=handshake_timeout,
        on_connections=on_connections,
        backoff=AcceptBackoff(),
        task_status=task_status,
    )


async def _serve_links_on(
    listener: trio.abc.Listener[trio.SocketStream],
    bound_port: int,
    on_link: Callable[[WebSocket], Awaitable[None]],
    *,
    token: str | bytes,
    host: str,
    max_message_size: int,
    max_connections: int,
    handshake_timeout: float,
    on_connections: Callable[[int], None] | None,
    backoff: AcceptBackoff,
    task_status: trio.TaskStatus[tuple[str, int]],
) -> NoReturn:
    """:func:`serve_links` on a listener already open (bound to ``host:bound_port``),
    closed when this ends; ``backoff`` paces accepts that fail. Tasks as there."""
    secret = _token_bytes(token)
    gate = ConnectionGate(max_connections, on_connections)

    async def handle(stream: trio.SocketStream) -> None:
        handshake = trio.CancelScope(deadline=trio.current_time() + handshake_timeout)
        decision = gate.enter(handshake)
        if decision.warn:
            logger.warning(
                "listener %s:%d has max_connections=%d open: closing the oldest connections "
                "still in their handshake, or new ones when none is",
                host,
                bound_port,
                gate.limit,
            )
        if isinstance(decision.evict, trio.CancelScope):
            decision.evict.cancel()  # its handler closes it
        if not decision.admitted:
            await trio.aclose_forcefully(stream)
            return
        try:
            await _serve_connection(
                stream,
                on_link,
                secret,
                max_message_size,
                handshake,
                lambda: gate.authenticated(handshake),
            )
        finally:
            gate.leave(handshake)

    async with trio.open_nursery() as nursery:
        task_status.started((host, bound_port))
        await _accept_loop(listener, handle, nursery, backoff, f"{host}:{bound_port}")
    raise AssertionError("unreachable")


async def _accept_loop(
    listener: trio.abc.Listener[trio.SocketStream],
    handler: Callable[[trio.SocketStream], Awaitable[None]],
    nursery: trio.Nursery,
    backoff: AcceptBackoff,
    name: str,
) -> NoReturn:
    """Accept connections until cancelled, each handled by ``handler`` in a task of
    ``nursery`` (its stream closed once that returns). Where ``trio.serve_listeners`` logs
    an error with a traceback for every accept that fails for want of file descriptors or
    memory, and retries every 0.1 s, this pauses as ``backoff`` says and logs what it says:
    one line per burst. Other accept errors are raised. Closes ``listener`` when it ends."""
    async with listener:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in ACCEPT_CAPACITY_ERRNOS:
                    raise
                retry = backoff.failed(trio.current_time())
                if retry.warn:
                    logger.warning(
                        "listener %s cannot accept connections (%s); retrying with backoff "
                        "up to %gs (%d failed accepts not logged since the last warning)",
                        name,
                        os.strerror(exc.errno or 0),
                        backoff.max_s,
                        retry.unlogged,
                    )
                await trio.sleep(retry.pause_s)
                continue
            backoff.accepted()
            nursery.start_soon(_run_handler, handler, stream)


async def _run_handler(
    handler: Callable[[trio.SocketStream], Awaitable[None]], stream: trio.SocketStream
) -> None:
    try:
        await handler(stream)
    finally:
        await trio.aclose_forcefully(stream)


async def _serve_connection(
    stream: trio.SocketStream,
    on_link: Callable[[WebSocket], Awaitable[None]],
    secret: bytes,
    max_message_size: int,
    handshake: trio.CancelScope,
    on_authenticated: Callable[[], bool],
) -> None:
    """One connection, from its handshake (bounded by ``handshake``'s deadline, and ended
    by cancelling it) to its end; the stream is closed whatever happens. A connection
    evicted as its handshake completes (``on_authenticated()`` is false) is closed too, and
    so is one whose peer hangs up before its request arrived."""
    try:
        ws: WebSocket | None = None
        with handshake:
            ws = await _websocket.accept(
                stream,
                lambda request: _refusal(request, secret),
                subprotocol=PROTOCOL,
                max_message_size=max_message_size,
                receive_buffer_size=RECEIVE_BUFFER_SIZE,
            )
        if ws is not None and on_authenticated():
            try:
                await on_link(ws)
            finally:
                with trio.move_on_after(DISCONNECT_TIMEOUT_S):
                    await ws.aclose()
    finally:
        await trio.aclose_forcefully(stream)


def _refusal(request: Request, secret: bytes) -> tuple[int, bytes] | None:
    """The status and body refusing a handshake request, or None to accept it: the token
    is compared in constant time, then the subprotocol is checked. (A refused connection
    is closed at once: an unauthenticated client must not be able to hold connections.)"""
    supplied = b""
    for key, value in request.extra_headers:
        if key.lower() == TOKEN_HEADER:
            supplied = value
    if not hmac.compare_digest(supplied, secret):
        return 401, b"missing or wrong instance token"
    if PROTOCOL not in request.subprotocols:
        return 400, f"subprotocol {PROTOCOL} required".encode()
    return None


def _parse_address(address: str) -> tuple[str, int, str, str]:
    """``ws://host:port/path`` -> ``(host, port, path, host header)``."""
    parts = urllib.parse.urlsplit(address)
    if parts.scheme != "ws" or parts.hostname is None:
        raise ValueError(f"an actor address is ws://host:port, got {address!r}")
    port = parts.port or 80
    resource = parts.path or "/"
    if parts.query:
        resource += "?" + parts.query
    return parts.hostname, port, resource, f"{parts.hostname}:{port}"


@asynccontextmanager
async def open_raw_link(
    address: str,
    *,
    token: str | bytes,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    connect_timeout: float = CONNECT_TIMEOUT_S,
) -> AsyncIterator[WebSocket]:
    """Open an authenticated websocket to ``address`` (``ws://host:port``).

    Connecting (TCP and the websocket handshake) is bounded by ``connect_timeout`` as a
    whole: past it, :class:`ConnectTimeoutError`. A server that hangs up during the
    handshake fails it at once (``ActorDiedError``).

    Tasks: none (the websocket is read by whoever reads it). Leaving the block closes the
    websocket (a close handshake bounded by ``DISCONNECT_TIMEOUT_S``) and then the socket.
    """
    host, port, resource, host_header = _parse_address(address)
    streams: list[trio.SocketStream] = []
    try:
        try:
            with trio.fail_after(connect_timeout):
                streams.append(await trio.open_tcp_stream(host, port))
                ws = await _handshake(
                    streams[0], address, host_header, resource, token, max_message_size
                )
        except trio.TooSlowError:
            raise ConnectTimeoutError(
                f"cannot connect to {address}: no websocket handshake within {connect_timeout}s"
            ) from None
        except OSError as exc:
            raise ActorDiedError(f"cannot connect to {address}: {exc!r}") from exc
        try:
            yield ws
        finally:
            with trio.move_on_after(DISCONNECT_TIMEOUT_S):
                await ws.aclose()
    finally:
        if streams:
            await trio.aclose_forcefully(streams[0])


async def _handshake(
    stream: trio.SocketStream,
    address: str,
    host_header: str,
    resource: str,
    token: str | bytes,
    max_message_size: int,
) -> WebSocket:
    """The client's handshake; a refusal or a hang-up ends it at once, as our own error."""
    try:
        ws = await _websocket.connect(
            stream,
            host=host_header,
            resource=resource,
            subprotocols=[PROTOCOL],
            extra_headers=[(TOKEN_HEADER, _token_bytes(token))],
            max_message_size=max_message_size,
            receive_buffer_size=RECEIVE_BUFFER_SIZE,
        )
    except _websocket.HandshakeRefused as refused:
        if refused.status == 401:
            raise AuthenticationError(f"{address} refused the instance token") from None
        raise ProtocolError(f"{address} refused the connection: {refused.status}") from None
    if ws is None:
        raise ActorDiedError(f"cannot connect to {address}: it hung up during the handshake")
    if ws.subprotocol != PROTOCOL:
        raise ProtocolError(f"{address} does not speak {PROTOCOL}")
    return ws


async def connect(
    address: str,
    *,
    token: str | bytes,
    name: str | None = None,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    task_status: trio.TaskStatus[RemoteRef] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Connect to the actor at ``address``; ``task_status.started(ref)`` once connected.

    Tasks: the link's reader, writer and heartbeat, in this task's nursery. Returns when the
    connection closes (pending calls then fail with ``ActorDiedError``), its socket closed;
    ``await ref.aclose()`` closes it from anywhere, and so does cancelling this task.
    """
    ref = RemoteRef(name or address)
    try:
        async with open_raw_link(address, token=token, max_message_size=max_message_size) as ws:
            link = Link(
                ws, ref.on_envelope, on_close=ref.on_close, max_message_size=max_message_size
            )
            ref.attach(link)
            task_status.started(ref)
            await link.run()
    finally:
        ref.detach()  # the socket is closed now


@asynccontextmanager
async def open_connection(
    address: str, *, token: str | bytes, name: str | None = None
) -> AsyncIterator[RemoteRef]:
    """``async with open_connection(addr, token=t) as ref:`` -- a connection for this block.

    Errors from the block (or from connecting) are raised unwrapped, as they are the only
    error the block can end with.
    """
    with unwrap_lone_error():
        async with trio.open_nursery() as nursery:
            ref: RemoteRef = await nursery.start(
                lambda task_status: connect(
                    address, token=token, name=name, task_status=task_status
                )
            )
            try:
                yield ref
            finally:
                nursery.cancel_scope.cancel()
