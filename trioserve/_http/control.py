"""The control endpoint: a small REST API to change a running instance from outside it.

Every request must carry the instance token (``Authorization: Bearer TOKEN``, compared in
constant time); anything else is answered 401 and changes nothing. Routes::

    GET    /api/status              applications, deployments, replicas (and the last apply)
    GET    /api/applications        the config in force
    PUT    /api/applications        apply a config (JSON or YAML): declarative, idempotent
    DELETE /api/applications/NAME   drain and delete one application
    POST   /api/shutdown            ask the instance to drain and stop

A ``PUT`` is validated at once (400 with the path of the bad field), then applied in the
background: the answer (202) carries a ``generation`` that ``GET /api/status`` reports as
``RUNNING``, ``DONE`` or ``FAILED`` (with the error), so ``trioserve deploy`` can wait.
"""

from __future__ import annotations

import hmac
from typing import Any, Protocol

import attrs
import msgspec
import trio

from .._replica.http import Request
from .._status import ServeStatus
from .server import HTTPReply, plain


class ControlTarget(Protocol):
    """What the control endpoint needs of a serve instance."""

    async def status(self) -> ServeStatus: ...

    async def apply(self, config: Any) -> None: ...

    async def delete(self, name: str) -> None: ...

    def config_in_force(self) -> dict[str, Any]: ...

    def parse_config(self, data: bytes) -> Any: ...

    def request_shutdown(self) -> None: ...


@attrs.define
class ApplyState:
    """The most recent ``PUT /api/applications`` and how it went."""

    generation: int = 0
    state: str = "DONE"
    error: str = ""


class ControlAPI:
    """Answers the control routes for ``target``.

    Tasks: each accepted ``PUT`` applies its config in a task of ``nursery`` (one at a time,
    in order, under a lock); cancelling the nursery abandons an apply midway, leaving the
    applications it already changed as they are.
    """

    def __init__(self, target: ControlTarget, token: str, nursery: trio.Nursery) -> None:
        self._target = target
        self._token = token.encode()
        self._nursery = nursery
        self._lock = trio.Lock()
        self.apply_state = ApplyState()

    def authorized(self, headers: Any) -> bool:
        """Whether ``headers`` carry this instance's token (constant-time comparison)."""
        value = str(headers.get("authorization", ""))
        scheme, _, given = value.partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(given.strip().encode(), self._token)

    def gate(self, headers: Any) -> HTTPReply | None:
        """For the server: refuse a request without the token before its body is read."""
        if self.authorized(headers):
            return None
        return plain(401, "unauthorized: send the instance token", [_BEARER])

    async def handle(self, request: Request) -> HTTPReply:
        if not self.authorized(request.headers):
            return plain(401, "unauthorized: send the instance token", [_BEARER])
        path, method = request.path.rstrip("/"), request.method
        if path == "/api/status" and method == "GET":
            status = attrs.asdict(await self._target.status())
            status["apply"] = attrs.asdict(self.apply_state)
            return _json(200, status)
        if path == "/api/applications":
            if method == "GET":
                return _json(200, self._target.config_in_force())
            if method == "PUT":
                return await self._put(request.body)
            return plain(405, "use GET or PUT", [("allow", "GET, PUT")])
        if path.startswith("/api/applications/") and method == "DELETE":
            await self._target.delete(path.removeprefix("/api/applications/"))
            return _json(200, {"deleted": path.removeprefix("/api/applications/")})
        if path == "/api/shutdown" and method == "POST":
            self._target.request_shutdown()
            return _json(202, {"shutting_down": True})
        return plain(404, "no such control route")

    async def _put(self, body: bytes) -> HTTPReply:
        try:
            config = self._target.parse_config(body)
        except ValueError as exc:
            return plain(400, f"invalid config: {exc}")
        self.apply_state = ApplyState(
            generation=self.apply_state.generation + 1, state="RUNNING", error=""
        )
        generation = self.apply_state.generation
        self._nursery.start_soon(self._apply, config, generation)
        await trio.lowlevel.checkpoint()
        return _json(202, {"generation": generation})

    async def _apply(self, config: Any, generation: int) -> None:
        async with self._lock:
            error = ""
            try:
                await self._target.apply(config)
            except Exception as exc:  # why: a failed deploy is reported, not a crash
                error = f"{type(exc).__name__}: {exc}"
            if self.apply_state.generation == generation:
                self.apply_state = ApplyState(
                    generation=generation, state="FAILED" if error else "DONE", error=error
                )


_BEARER = ("www-authenticate", "Bearer")


def _json(status: int, value: Any) -> HTTPReply:
    return HTTPReply(status, [("content-type", "application/json")], msgspec.json.encode(value))
