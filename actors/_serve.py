"""Serving an :class:`ActorHost` at an authenticated websocket listener."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, NoReturn

import trio

from ._host import ActorHost
from ._link import DEFAULT_MAX_MESSAGE_SIZE, Link
from ._session import HostSession
from ._transport import HANDSHAKE_TIMEOUT_S, MAX_CONNECTIONS, serve_links
from ._websocket import WebSocket

ENV_TOKEN = "ACTORS_TOKEN"


async def serve_host(
    host: ActorHost,
    *,
    token: str | bytes,
    bind: str = "127.0.0.1",
    port: int = 0,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    max_connections: int = MAX_CONNECTIONS,
    handshake_timeout: float = HANDSHAKE_TIMEOUT_S,
    on_connections: Callable[[int], None] | None = None,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Listen on ``bind:port`` and run calls from every authenticated caller on ``host``.

    Tasks: the listener and one link per caller, in this task's nursery (calls run in the
    host's nursery). ``task_status.started((host, port))`` once listening. A caller that
    disconnects has its calls cancelled. ``max_connections``, ``handshake_timeout`` and
    ``on_connections`` bound the listener as :func:`actors.serve_links` says.
    """

    async def on_link(ws: WebSocket) -> None:
        holder: list[Any] = []
        link = Link(
            ws,
            lambda env: holder[0].on_envelope(env),
            after_batch=lambda: holder[0].after_batch(),
            max_message_size=max_message_size,
        )
        session = HostSession(host, link)
        holder.append(session)
        host.links.add(link)
        try:
            await link.run()
        finally:
            host.links.discard(link)
            session.close()

    await serve_links(
        on_link,
        token=token,
        host=bind,
        port=port,
        max_message_size=max_message_size,
        max_connections=max_connections,
        handshake_timeout=handshake_timeout,
        on_connections=on_connections,
        task_status=task_status,
    )


#: the token this process was given by its parent; kept here, not in ``os.environ``, so
#: that the processes user code starts do not inherit it
_given_token: str | None = None


def take_token_from_environment() -> str:
    """Remove the instance token from this process's environment and keep it for
    :func:`instance_token` (a child calls this first thing)."""
    global _given_token
    token = os.environ.pop(ENV_TOKEN, "")
    _given_token = token or None
    return token


def instance_token() -> str | None:
    """The instance token this process was given by its parent (None in a top process)."""
    return _given_token or os.environ.get(ENV_TOKEN) or None
