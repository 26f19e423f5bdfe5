"""Deployments and ASGI apps shared by the HTTP tests (proxy and CLI).

Module level in an importable module so replica processes can import them. The CLI tests
serve ``app`` from this file by path (``trioserve run tests/trioserve/http_fixtures.py:app``),
which imports it as the top-level module ``http_fixtures``: keep it free of relative imports.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import trio
import trio.lowlevel
from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request as StarletteRequest
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route

import trioserve as serve
from trioserve._replica.request_context import get_request_context


class ModelBrokeError(Exception):
    """A user error raised while answering an HTTP request."""


@serve.deployment
class Lab:
    """An ingress that answers by the last segment of the path:

    ``echo`` (what it received, as JSON), ``created`` (a ``Response`` with status 201 and a
    header), ``fail`` (raises), ``hang?key=K`` (waits forever, recording that it started and
    whether it was cancelled under ``K``).
    """

    def __init__(self, name: str = "lab") -> None:
        self.name = name
        self.started: dict[str, trio.Event] = {}
        self.cancelled: dict[str, trio.Event] = {}

    def _event(self, table: dict[str, trio.Event], key: str) -> trio.Event:
        return table.setdefault(key, trio.Event())

    async def __call__(self, request: serve.Request) -> Any:
        action = request.url.path.rsplit("/", 1)[-1]
        if action == "echo":
            body = await request.body()
            return {
                "app": self.name,
                "method": request.method,
                "path": request.url.path,
                "query": dict(request.query_params),
                "json": await request.json() if body else None,
                "content_type": request.headers.get("content-type"),
            }
        if action == "created":
            return serve.Response("made it", status_code=201, headers={"X-Lab": self.name})
        if action == "fail":
            raise ModelBrokeError("the model broke")
        if action == "hang":
            await self._hang(request.query_params["key"])
        return serve.Response(f"no action {action!r}", status_code=400)

    async def _hang(self, key: str) -> None:
        self._event(self.started, key).set()
        try:
            await trio.sleep_forever()
        except trio.Cancelled:  # why: the test observes the cancellation; re-raised
            self._event(self.cancelled, key).set()
            raise

    async def wait_started(self, key: str) -> bool:
        await self._event(self.started, key).wait()
        return True

    async def wait_cancelled(self, key: str) -> bool:
        await self._event(self.cancelled, key).wait()
        return True

    async def ping(self, x: int) -> int:
        await trio.lowlevel.checkpoint()
        return x


@serve.deployment
class Chunks:
    """A streaming ingress: yields ``first``; with ``?fail=1`` it then raises; with
    ``?wait=1`` it then blocks until ``release()`` is called through a handle (recording a
    cancellation); then yields ``second``."""

    def __init__(self) -> None:
        self.released = trio.Event()
        self.stopped = trio.Event()
        self.state = "idle"

    async def __call__(self, request: serve.Request) -> AsyncIterator[str]:
        self.state = "streaming"
        yield "first\n"
        if request.query_params.get("fail") == "1":
            raise ModelBrokeError("the stream broke")
        if request.query_params.get("wait") == "1":
            self.state = "blocked"
            try:
                await self.released.wait()
            except trio.Cancelled:  # why: the test observes the cancellation; re-raised
                self.state = "cancelled"
                self.stopped.set()
                raise
        yield "second\n"
        self.state = "finished"

    async def release(self) -> None:
        self.released.set()

    async def current_state(self) -> str:
        await trio.lowlevel.checkpoint()
        return self.state

    async def wait_stopped(self) -> str:
        """Returns once a blocked stream was cancelled."""
        await self.stopped.wait()
        return self.state


@serve.deployment
class Latch:
    """A one-shot latch in its own deployment: ``wait`` returns once ``open`` was called."""

    def __init__(self) -> None:
        self.opened = trio.Event()

    async def wait(self) -> None:
        await self.opened.wait()

    async def open(self) -> None:
        self.opened.set()


@serve.deployment
class Held:
    """An HTTP ingress whose requests wait until ``release`` is called."""

    def __init__(self) -> None:
        self.entered = trio.Event()
        self.released = trio.Event()

    async def __call__(self, request: serve.Request) -> str:
        self.entered.set()
        await self.released.wait()
        return f"answered {request.url.path}"

    async def wait_entered(self) -> None:
        await self.entered.wait()

    async def release(self) -> None:
        self.released.set()


@serve.deployment(max_ongoing_requests=1, max_queued_requests=1)
class Gated:
    """One request at a time, one more queued. ``.../busy`` streams ``busy``, then holds its
    slot until the ``Latch`` opens (or the request is cancelled); anything else streams
    ``done`` at once."""

    def __init__(self, latch: serve.DeploymentHandle) -> None:
        self.latch = latch

    async def __call__(self, request: serve.Request) -> AsyncIterator[str]:
        if request.url.path.endswith("/busy"):
            yield "busy\n"
            await self.latch.wait.remote()
        yield "done\n"


async def _hello(request: StarletteRequest) -> JSONResponse:
    return JSONResponse(
        {"hello": request.path_params["name"], "root_path": request.scope["root_path"]}
    )


async def _echo(request: StarletteRequest) -> JSONResponse:
    return JSONResponse({"received": await request.json()}, status_code=202)


async def _same_name(request: StarletteRequest) -> PlainTextResponse:
    return PlainTextResponse("inner route")


#: a Starlette application defined at module level (importable, so ``@serve.ingress`` can take
#: the app itself rather than a factory)
web = Starlette(
    routes=[
        Route("/hello/{name}", _hello),
        Route("/echo", _echo, methods=["POST"]),
        Route("/web/inner", _same_name),
    ]
)


@serve.deployment
@serve.ingress(web)
class Web:
    """The Starlette app itself mounted: Starlette answers HTTP; handle calls still reach the
    class's own methods."""

    def greeting(self) -> str:
        return "hello from a handle"


def build_web() -> Starlette:
    """A factory for ``web`` (built in the replica)."""
    return web


@serve.deployment
@serve.ingress(build_web)
class WebFromFactory:
    """The same Starlette app, mounted through a factory."""

    def greeting(self) -> str:
        return "hello from a handle"


@serve.deployment
class Pid:
    """A plain ingress that says which process served it."""

    async def __call__(self, request: serve.Request) -> dict[str, Any]:
        await trio.lowlevel.checkpoint()
        return {"pid": os.getpid(), "path": request.url.path}


@serve.deployment
class Inspect:
    """Answers with what it sees of the request, as JSON; ``.../stream`` reads the body
    with ``request.stream()``, anything else with ``body()`` and ``json()``."""

    async def __call__(self, request: serve.Request) -> dict[str, Any]:
        if request.url.path.endswith("/stream"):
            body = b"".join([chunk async for chunk in request.stream()])
            return {"streamed": body.decode()}
        raw = await request.body()
        context = get_request_context()
        return {
            "method": request.method,
            "path": request.url.path,
            "url": str(request.url),
            "root_path": request.scope["root_path"],
            "path_params": request.path_params,
            "query": dict(request.query_params),
            "query_all": request.query_params.getlist("tag"),
            "custom": request.headers["X-Custom-Header"],
            "custom_lower": request.headers.get("x-custom-header"),
            "client": list(request.client) if request.client else None,
            "body": raw.decode(),
            "json": await request.json() if raw else None,
            "request_id": context.request_id,
            "route": context.route,
            "app_name": context.app_name,
        }


@serve.deployment
class Responses:
    """Returns a different Starlette response for each last path segment; ``.../streaming``
    yields ``one``, blocks until ``release()`` (through a handle), then yields ``two``."""

    def __init__(self) -> None:
        self.released = trio.Event()
        self.background_ran = trio.Event()
        self.state = "idle"

    async def __call__(self, request: serve.Request) -> Any:
        kind = request.url.path.rsplit("/", 1)[-1]
        if kind == "json":
            response = JSONResponse({"made": True}, status_code=201, headers={"x-kind": "json"})
            response.set_cookie("session", "abc")
            response.set_cookie("theme", "dark")
            return response
        if kind == "plain":
            return PlainTextResponse("plain text", status_code=202)
        if kind == "html":
            return HTMLResponse("<h1>hi</h1>")
        if kind == "redirect":
            return RedirectResponse("/elsewhere", status_code=307)
        if kind == "file":
            return FileResponse(request.query_params["path"], media_type="text/csv")
        if kind == "background":
            return PlainTextResponse("sent", background=BackgroundTask(self._background_task))
        if kind == "streaming":
            return StreamingResponse(self._stream(), media_type="text/plain")
        if kind == "sized":
            return StreamingResponse(_sized(), headers={"content-length": "10"})
        if kind == "plain-generator":
            return _sized()
        return Response(f"no kind {kind!r}", status_code=400)

    async def _stream(self) -> AsyncIterator[bytes]:
        self.state = "streaming"
        yield b"one\n"
        self.state = "blocked"
        await self.released.wait()
        yield b"two\n"
        self.state = "finished"

    async def release(self) -> None:
        self.released.set()

    async def current_state(self) -> str:
        await trio.lowlevel.checkpoint()
        return self.state

    def _background_task(self) -> None:
        """A sync background task: Starlette runs it in a worker thread, and a Trio event is
        set from there through the loop (a waiter of an event set from another thread
        directly may never wake)."""
        trio.from_thread.run_sync(self.background_ran.set)

    async def wait_background(self) -> bool:
        await self.background_ran.wait()
        return True


async def _sized() -> AsyncIterator[bytes]:
    yield b"01234"
    await trio.lowlevel.checkpoint()
    yield b"56789"


@serve.deployment
class NoRequest:
    """A ``__call__`` without a request parameter."""

    def __call__(self) -> str:
        return "called without a request"


@serve.deployment
class SlowStream:
    """Streams ``first``, then waits forever; when cancelled it writes ``cancelled`` to the
    file named by ``?path=``."""

    async def __call__(self, request: serve.Request) -> AsyncIterator[str]:
        marker = request.query_params["path"]
        try:
            yield "first\n"
            await trio.sleep_forever()
        finally:
            _write_marker(marker, "cancelled")


def _write_marker(path: str, text: str) -> None:
    """A tiny synchronous write (it must run even while the task is being cancelled)."""
    Path(path).write_text(text)


@serve.deployment
class Fragile:
    """Fails in its constructor unless built with ``ok=True``."""

    def __init__(self, ok: bool) -> None:
        if not ok:
            raise ModelBrokeError("the constructor broke")

    async def __call__(self, request: serve.Request) -> str:
        await trio.lowlevel.checkpoint()
        return "fixed"


#: what ``trioserve run tests/trioserve/http_fixtures.py:app`` serves
app = Pid.options(num_replicas=2).bind()


# -- streamed request bodies and WebSockets


@serve.deployment
class Uploads:
    """``/count``: reads the body chunk by chunk, answers its size and chunk count;
    ``/echo``: streams each chunk back as it arrives (the request and response bodies
    flow at the same time)."""

    async def __call__(self, request: StarletteRequest) -> Any:
        if request.url.path.endswith("/echo"):

            async def echo() -> AsyncIterator[bytes]:
                async for chunk in request.stream():
                    if chunk:
                        yield chunk

            return StreamingResponse(echo(), media_type="application/octet-stream")
        size = chunks = 0
        async for chunk in request.stream():
            size += len(chunk)
            chunks += bool(chunk)
        return {"size": size, "chunks": chunks}


def websocket_app() -> Any:
    """A FastAPI app with WebSocket routes: ``/echo`` (text and bytes back, ``bye``
    closes with 4001), ``/refuse`` (closes before accepting)."""
    app = FastAPI()

    @app.websocket("/echo")
    async def echo(websocket: WebSocket) -> None:
        offered = websocket.scope["subprotocols"]
        await websocket.accept(subprotocol=offered[0] if offered else None)
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                text, data = message.get("text"), message.get("bytes")
                if text == "bye":
                    await websocket.close(code=4001, reason="goodbye")
                    return
                if text is not None:
                    await websocket.send_text(f"echo: {text}")
                else:
                    await websocket.send_bytes(data or b"")
        except WebSocketDisconnect:
            return

    @app.websocket("/refuse")
    async def refuse(websocket: WebSocket) -> None:
        await websocket.close(code=1008)

    return app


@serve.deployment
@serve.ingress(websocket_app)
class Sockets:
    """WebSocket routes of an ASGI ingress (see :func:`websocket_app`)."""


chat_app = FastAPI()


@serve.deployment
@serve.ingress(chat_app)
class Chat:
    """A class-based FastAPI WebSocket route: ``self`` is the replica's instance."""

    def __init__(self, greeting: str = "echo") -> None:
        self.greeting = greeting

    @chat_app.websocket("/talk")
    async def talk(self, ws: WebSocket) -> None:
        await ws.accept()
        async for text in ws.iter_text():
            await ws.send_text(f"{self.greeting}: {text}")
