"""``@serve.ingress(asgi_app)``: an ASGI application (Starlette, FastAPI) as a deployment's
HTTP entry point, run inside the replica."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, TypeVar

import trio

ASGIApp = Callable[
    [
        MutableMapping[str, Any],
        Callable[[], Awaitable[MutableMapping[str, Any]]],
        Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ],
    Awaitable[None],
]
C = TypeVar("C", bound=type)
ASGI_ATTR = "__serve_asgi_app__"


class MountedASGI:
    """An ASGI app, or a zero-argument factory building it in the replica."""

    def __init__(self, app_or_factory: Any) -> None:
        if not callable(app_or_factory):
            raise TypeError(
                f"@serve.ingress needs an ASGI application or a factory, got {app_or_factory!r}"
            )
        self.target = app_or_factory
        try:
            params = inspect.signature(app_or_factory).parameters
        except (TypeError, ValueError):
            params = {}  # type: ignore[assignment]
        self.is_factory = len(params) == 0

    def get(self) -> ASGIApp:
        return self.target() if self.is_factory else self.target  # type: ignore[no-any-return]


def ingress(app: Any) -> Callable[[C], C]:
    """Mount an ASGI application (Starlette, FastAPI) on the decorated deployment class:
    HTTP requests to the deployment's route prefix are answered by it, inside the replica;
    handle calls still reach the class's own methods.

    ``app`` is the application, or a function with no arguments that builds it (built once
    per replica). Use a factory when the class is defined in a script run as ``__main__``:
    the class then travels to replica processes by value, and some applications (Starlette's)
    cannot be unpickled; a factory is rebuilt in the replica instead.
    """
    mounted = MountedASGI(app)

    def wrap(cls: C) -> C:
        if not isinstance(cls, type):
            raise TypeError("@serve.ingress decorates a class (put it under @serve.deployment)")
        setattr(cls, ASGI_ATTR, mounted)
        return cls

    return wrap


async def run_asgi(
    app: ASGIApp,
    emit: Callable[[Any], Awaitable[None]],
    *,
    method: str,
    path: str,
    query_string: str,
    headers: dict[str, str],
    body: bytes,
    route_prefix: str,
) -> None:
    """Run one HTTP request through ``app``; the head and body chunks go out via ``emit``
    (head first, as ``[status, [[name, value], ...]]``)."""
    root = "" if route_prefix == "/" else route_prefix.rstrip("/")
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,  # includes root_path, as ASGI 3 frameworks expect
        "raw_path": path.encode(),
        "root_path": root,
        "query_string": query_string.encode(),
        "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()],
        "client": None,
        "server": None,
        "state": {},
    }
    delivered = False
    finished = trio.Event()
    started = False

    async def receive() -> MutableMapping[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await finished.wait()
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        nonlocal started
        kind = message["type"]
        if kind == "http.response.start":
            started = True
            raw = message.get("headers", [])
            await emit(
                [
                    int(message["status"]),
                    [[bytes(k).decode("latin-1"), bytes(v).decode("latin-1")] for k, v in raw],
                ]
            )
        elif kind == "http.response.body":
            chunk = bytes(message.get("body", b""))
            if chunk:
                await emit(chunk)
            if not message.get("more_body", False):
                finished.set()

    await app(scope, receive, send)
    finished.set()
    if not started:
        raise RuntimeError("the ASGI application finished without sending a response")
