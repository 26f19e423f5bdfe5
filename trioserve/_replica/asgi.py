"""``@serve.ingress(asgi_app)``: an ASGI application (Starlette, FastAPI) as a deployment's
HTTP entry point, run inside the replica.

A FastAPI app whose routes are methods of the decorated class (Ray Serve's class-based
ingress) gets those routes rewritten in the replica so that FastAPI injects ``self`` -- the
replica's instance -- as a dependency instead of reading it from the request.
"""

from __future__ import annotations

import contextvars
import copyreg
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any, TypeVar

from starlette.datastructures import State

from .._exchange import WSAccept, WSClose, WSMessage, decode_ws_event, encode
from .http import Emit, Receive, ResponseSender

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
_BOUND_ATTR = "__serve_bound_self__"

#: the user object of the replica answering the current request (what ``self`` is in a
#: class-based FastAPI route)
_instance: contextvars.ContextVar[Any] = contextvars.ContextVar("trioserve_ingress_instance")


def _reduce_state(state: State) -> tuple[type[State], tuple[dict[str, Any]]]:
    return State, (dict(state._state),)


# Starlette's ``State`` (every Starlette/FastAPI app has one in ``app.state``) cannot be
# unpickled: unpickling looks up ``__setstate__`` before ``_state`` exists, and its
# ``__getattr__`` then recurses forever (the RecursionError a class defined in ``__main__``
# hit on deploy, when it travelled to the replica by value with its app). Pickle it by its
# contents instead.
copyreg.pickle(State, _reduce_state)


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
            params = {}  # type: ignore[assignment]  # why: no signature: no parameters
        self.is_factory = len(params) == 0

    def get(self, cls: type | None = None) -> ASGIApp:
        """The app (built, for a factory), with ``cls``'s class-based routes bound."""
        app: ASGIApp = self.target() if self.is_factory else self.target
        if cls is not None:
            bind_class_routes(app, cls)
        return app


def ingress(app: Any) -> Callable[[C], C]:
    """Mount an ASGI application (Starlette, FastAPI) on the decorated deployment class:
    HTTP requests to the deployment's route prefix are answered by it, inside the replica;
    handle calls still reach the class's own methods.

    ``app`` is the application, or a function with no arguments that builds it (built once
    per replica). FastAPI routes that are methods of the class (``@app.get("/x")`` on a
    method) get the replica's instance as ``self``.
    """
    mounted = MountedASGI(app)

    def wrap(cls: C) -> C:
        if not isinstance(cls, type):
            raise TypeError("@serve.ingress decorates a class (put it under @serve.deployment)")
        setattr(cls, ASGI_ATTR, mounted)
        _resolve_annotations(cls)
        return cls

    return wrap


def _resolve_annotations(cls: type) -> None:
    """Evaluate the string annotations (``from __future__ import annotations``) of ``cls``'s
    methods now, where their module's names exist: a class from ``__main__`` travels by
    value with only the globals its code uses, so FastAPI could not resolve, in the replica,
    a Pydantic model named only in an annotation."""
    for value in vars(cls).values():
        fn = inspect.unwrap(value) if callable(value) else None
        if not inspect.isfunction(fn):
            continue
        try:
            fn.__annotations__ = inspect.get_annotations(fn, eval_str=True)
        except Exception:  # why: an annotation that cannot be evaluated here stays a string
            continue


# -- class-based FastAPI routes


async def _current_instance() -> Any:
    """FastAPI dependency: the replica's instance answering this request."""
    try:
        return _instance.get()
    except LookupError:
        raise RuntimeError("a class-based route ran outside a trioserve replica") from None


def _class_functions(cls: type) -> set[int]:
    found: set[int] = set()
    for klass in cls.__mro__:
        for value in vars(klass).values():
            found.add(id(inspect.unwrap(value) if callable(value) else value))
    return found


def _belongs_to(endpoint: Any, cls: type, functions: set[int]) -> bool:
    if id(endpoint) in functions or id(inspect.unwrap(endpoint)) in functions:
        return True
    # a method defined in the class body that FastAPI's decorator saw before the class existed
    qualname: str = getattr(endpoint, "__qualname__", "")
    return (
        qualname.startswith(cls.__qualname__ + ".")
        and "<locals>" not in qualname[len(cls.__qualname__) :]
    )


def _bind_self(endpoint: Any) -> None:
    """Give ``endpoint`` (``def f(self, ...)``) a signature in which ``self`` is a FastAPI
    dependency on the replica's instance and the other parameters are keyword-only."""
    from fastapi import Depends

    params = list(inspect.signature(endpoint).parameters.values())
    if not params:
        raise TypeError(
            f"the class-based route {endpoint.__qualname__} must take self as its first argument"
        )
    first = params[0].replace(
        kind=inspect.Parameter.POSITIONAL_OR_KEYWORD, default=Depends(_current_instance)
    )
    rest = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in params[1:]]
    endpoint.__signature__ = inspect.signature(endpoint).replace(parameters=[first, *rest])
    setattr(endpoint, _BOUND_ATTR, True)


def bind_class_routes(app: Any, cls: type) -> None:
    """Rewrite the FastAPI routes of ``app`` (and of the routers it includes) that are
    methods of ``cls`` so FastAPI injects ``self`` (and does not take it as a query
    parameter). Each is rebuilt in place, keeping its order, so FastAPI analyses the new
    signature. Idempotent; anything that is not a FastAPI app is left alone."""
    try:
        from fastapi import FastAPI
    except ImportError:  # pragma: no cover - FastAPI is optional
        return
    if isinstance(app, FastAPI) and _bind_routes(app.router, cls, _class_functions(cls), set()):
        app.openapi_schema = None  # built again, from the rewritten routes
        app.middleware_stack = None  # built again on the next request


def _bind_routes(router: Any, cls: type, functions: set[int], seen: set[int]) -> bool:
    from fastapi.routing import APIRoute, APIWebSocketRoute

    if id(router) in seen:
        return False
    seen.add(id(router))
    routes: list[Any] = router.routes
    changed = False
    for index, route in enumerate(list(routes)):
        included = getattr(route, "original_router", None)  # FastAPI >= 0.16x includes lazily
        if included is not None:
            changed = _bind_routes(included, cls, functions, seen) or changed
            continue
        if not isinstance(route, APIRoute | APIWebSocketRoute) or getattr(
            route, _BOUND_ATTR, False
        ):
            continue
        if not _belongs_to(route.endpoint, cls, functions):
            continue
        if not getattr(route.endpoint, _BOUND_ATTR, False):
            _bind_self(route.endpoint)
        routes[index] = _rebuilt(route)
        changed = True
    if changed and hasattr(router, "_mark_routes_changed"):
        router._mark_routes_changed()
    return changed


def _rebuilt(route: Any) -> Any:
    """A copy of ``route`` made the way FastAPI makes it (so its dependencies are analysed
    from the endpoint's current signature), with the same options."""
    params = inspect.signature(type(route).__init__).parameters
    options = {
        name: getattr(route, name)
        for name, param in params.items()
        if param.kind is inspect.Parameter.KEYWORD_ONLY and hasattr(route, name)
    }
    new = type(route)(route.path, route.endpoint, **options)
    setattr(new, _BOUND_ATTR, True)
    return new


# -- running a request


async def run_asgi(
    app: ASGIApp, scope: dict[str, Any], receive: Receive, emit: Emit, *, instance: Any
) -> None:
    """Run one HTTP request (``scope``, its body from ``receive``) through ``app``; the
    response goes out through ``emit`` as :class:`~trioserve._replica.http.ResponseSender`
    describes. ``instance`` is what class-based routes get as ``self``."""
    send = ResponseSender(emit)
    token = _instance.set(instance)
    try:
        await app(scope, receive, send)
    finally:
        _instance.reset(token)
    await send.finish()


async def run_asgi_websocket(
    app: ASGIApp,
    scope: dict[str, Any],
    incoming: AsyncIterator[bytes],
    emit: Emit,
    *,
    instance: Any,
) -> None:
    """Run one WebSocket session through ``app``: ``websocket.connect``, then the client's
    messages from ``incoming`` (encoded ``WSMessage``, then its ``WSClose``) as
    ``websocket.receive`` / ``websocket.disconnect``; what the app sends goes out through
    ``emit`` as encoded ``WSEvent`` values. An app that returns without accepting or
    closing refuses the handshake (close 1000 before accept: the proxy answers 403)."""
    connected = False
    state = {"accepted": False, "closed": False}

    async def receive() -> dict[str, Any]:
        nonlocal connected
        if not connected:
            connected = True
            return {"type": "websocket.connect"}
        try:
            event = decode_ws_event(await anext(incoming))
        except StopAsyncIteration:
            return {"type": "websocket.disconnect", "code": 1006}
        if isinstance(event, WSMessage):
            if event.text is not None:
                return {"type": "websocket.receive", "text": event.text}
            return {"type": "websocket.receive", "bytes": event.data or b""}
        if isinstance(event, WSClose):
            return {"type": "websocket.disconnect", "code": event.code, "reason": event.reason}
        raise RuntimeError(f"unexpected WebSocket event from the proxy: {event!r}")

    async def send(message: MutableMapping[str, Any]) -> None:
        kind = message["type"]
        if state["closed"]:
            raise RuntimeError(f"{kind} sent after the WebSocket was closed")
        if kind == "websocket.accept":
            headers = [
                (bytes(k).decode("latin-1"), bytes(v).decode("latin-1"))
                for k, v in message.get("headers", [])
            ]
            state["accepted"] = True
            await emit(encode(WSAccept(subprotocol=message.get("subprotocol"), headers=headers)))
        elif kind == "websocket.send":
            if not state["accepted"]:
                raise RuntimeError("websocket.send before websocket.accept")
            text, data = message.get("text"), message.get("bytes")
            await emit(encode(WSMessage(text=text) if text is not None else WSMessage(data=data)))
        elif kind == "websocket.close":
            state["closed"] = True
            code = int(message.get("code", 1000))
            await emit(encode(WSClose(code=code, reason=str(message.get("reason") or ""))))
        else:
            raise RuntimeError(f"unsupported WebSocket ASGI message {kind!r}")

    token = _instance.set(instance)
    try:
        await app(scope, receive, send)
    finally:
        _instance.reset(token)
    if not state["closed"]:
        await emit(encode(WSClose(code=1000)))
