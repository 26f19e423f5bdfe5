"""Serving an :class:`ActorHost` at an authenticated websocket listener."""

from __future__ import annotations

import os
from typing import Any, NoReturn

import trio
from trio_websocket import WebSocketConnection

from ._host import ActorHost
from ._link import DEFAULT_MAX_MESSAGE_SIZE, Link
from ._transport import serve_links

ENV_TOKEN = "ACTORS_TOKEN"


async def serve_host(
    host: ActorHost,
    *,
    token: str | bytes,
    bind: str = "127.0.0.1",
    port: int = 0,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Listen on ``bind:port`` and run calls from every authenticated caller on ``host``.

    Tasks: the listener and one link per caller, in this task's nursery (calls run in the
    host's nursery). ``task_status.started((host, port))`` once listening. A caller that
    disconnects has its calls cancelled.
    """

    async def on_link(ws: WebSocketConnection) -> None:
        holder: list[Any] = []
        link = Link(
            ws,
            lambda env: holder[0].on_envelope(env),
            after_batch=lambda: holder[0].after_batch(),
            max_message_size=max_message_size,
        )
        session = host.session(link)
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
        task_status=task_status,
    )


def instance_token() -> str | None:
    """The instance token this process was given by its parent (None in a top process)."""
    return os.environ.get(ENV_TOKEN) or None
