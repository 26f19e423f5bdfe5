"""Where handles find their routers: the serve instance, or a replica's process context."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import trio

from ..exceptions import DeploymentUnavailableError

if TYPE_CHECKING:
    from .router import Router


class ServeContext(Protocol):
    """A Trio loop in which routers live: the instance's, or a replica process's."""

    trio_token: trio.lowlevel.TrioToken

    def router(self, app: str, deployment: str) -> Router: ...


_current: ServeContext | None = None


def set_current(context: ServeContext | None) -> None:
    global _current
    _current = context


def current() -> ServeContext:
    if _current is None:
        raise DeploymentUnavailableError(
            "no serve instance is running in this process: start one with serve.run(...) "
            "or `async with serve.open_serve()`"
        )
    return _current


def current_or_none() -> ServeContext | None:
    return _current
