"""How many connections each listener of a serve process may hold (pure, but for reading
the limit).

A serve process's file descriptors go to three things:

- its own: the interpreter, the event loop, its four listeners, log files, the fork server's
  pipes (about 20);
- per replica process, outside every listener: the pidfd that watches it and the link to it
  (2 each);
- what its listeners accept: HTTP clients (the proxy, and the control endpoint), and on the
  two websocket listeners (the actor system's control listener, the controller's API) each
  replica's control link and controller link, plus whatever unauthenticated peers connect.

A flood stops at each listener's bound, and the bounds together leave the reserve (the
first two items) free, so a replica that dies during a flood can always be restarted, and
scaling up has room: with the common limit of 1024 the reserve is 128, room for 50 replicas
beside the process's own. Raise the limit (``ulimit -n``) to serve more; the bounds grow
with it up to the listeners' usual defaults.

Bounds, rather than a pool of spare descriptors (opened ``/dev/null``s) released just
before a spawn: a spawn takes its descriptors several awaits apart (the pidfd, the accepted
control and controller links, the link to the replica) while every accept loop keeps
accepting, even past its bound (to answer 503 or close), so released spares can go to a
flooding client. Bounds that sum to less than the limit make running out impossible.
"""

from __future__ import annotations

import resource

import attrs

#: file descriptors no listener may take, at least (a bigger share of a bigger limit)
FD_RESERVE_MIN = 64
#: how the descriptors past the reserve are shared: HTTP proxy, control endpoint, and each
#: of the two websocket listeners
HTTP_SHARES, CONTROL_HTTP_SHARES, WEBSOCKET_SHARES = 4, 1, 2
TOTAL_SHARES = HTTP_SHARES + CONTROL_HTTP_SHARES + 2 * WEBSOCKET_SHARES
#: the bounds however high the limit: the HTTP server's and the websocket listeners' usual
#: defaults, and a few for the control endpoint (one operator's CLI)
HTTP_CAP, CONTROL_HTTP_CAP, WEBSOCKET_CAP = 512, 64, 256
#: the bounds however low the limit (below ~256 the reserve is not kept)
FLOOR = 8


@attrs.frozen(kw_only=True)
class ConnectionBounds:
    """How many connections each listener of a serve process holds open at once."""

    http: int
    control_http: int
    #: each of the two websocket listeners (every replica holds one connection on each)
    websocket: int


def fd_reserve(soft_limit: int) -> int:
    """The descriptors kept out of every listener's reach under ``soft_limit``."""
    return max(FD_RESERVE_MIN, soft_limit // 8)


def connection_bounds(soft_limit: int | None) -> ConnectionBounds:
    """The listeners' bounds under ``soft_limit`` open files (None: unlimited)."""
    if soft_limit is None:
        return ConnectionBounds(
            http=HTTP_CAP, control_http=CONTROL_HTTP_CAP, websocket=WEBSOCKET_CAP
        )
    share = (soft_limit - fd_reserve(soft_limit)) / TOTAL_SHARES

    def bound(shares: int, cap: int) -> int:
        return max(FLOOR, min(cap, int(share * shares)))

    return ConnectionBounds(
        http=bound(HTTP_SHARES, HTTP_CAP),
        control_http=bound(CONTROL_HTTP_SHARES, CONTROL_HTTP_CAP),
        websocket=bound(WEBSOCKET_SHARES, WEBSOCKET_CAP),
    )


def open_file_limit() -> int | None:
    """This process's soft ``RLIMIT_NOFILE``, or None when it is unlimited."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft
