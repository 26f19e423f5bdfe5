"""Deployments shared by the trioserve tests.

They live at module level in an importable module so that a replica process (which gets the
test run's ``sys.path``) can import what they refer to, such as :class:`CustomError`.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import trio
import trio.lowlevel

import trioserve as serve


class CustomError(Exception):
    """A user exception type that must reach callers as itself."""


@serve.deployment
class Model:
    """The design document's example: ``__call__`` scales, ``describe`` is a sync method."""

    def __init__(self, scale: int) -> None:
        self.scale = scale

    async def __call__(self, x: int) -> int:
        return x * self.scale

    def describe(self) -> str:
        return f"scale={self.scale}"


@serve.deployment
def double(x: int) -> int:
    """A function deployment."""
    return 2 * x


@serve.deployment
class Pid:
    """Reports which process (and which object) served a request."""

    async def __call__(self, _x: object = None) -> int:
        await trio.lowlevel.checkpoint()
        return os.getpid()

    async def held(self, seconds: float) -> int:
        """The PID after ``seconds`` of (simulated) work: every replica then frees its
        slots at the same pace, however busy the machine's CPUs are."""
        await trio.sleep(seconds)
        return os.getpid()

    async def ident(self) -> tuple[int, int]:
        """``(pid, id(self))``: tells replicas apart even when inline (same PID)."""
        await trio.lowlevel.checkpoint()
        return os.getpid(), id(self)


@serve.deployment
class Concurrency:
    """Records the most calls it ever ran at once (per replica object)."""

    def __init__(self) -> None:
        self.ongoing = 0
        self.max_seen = 0

    async def __call__(self, _i: int) -> tuple[int, int, int]:
        """``(pid, id(self), max concurrent so far)`` after 10 ms of simulated work."""
        self.ongoing += 1
        self.max_seen = max(self.max_seen, self.ongoing)
        try:
            await trio.sleep(0.01)  # simulated work, not waiting for a condition
        finally:
            self.ongoing -= 1
        return os.getpid(), id(self), self.max_seen


@serve.deployment
class Gate:
    """``block`` waits until ``open`` is called on the same replica; ``ping`` is quick."""

    def __init__(self) -> None:
        self.opened = trio.Event()
        self.blocked = 0
        self.someone_blocked = trio.Event()

    async def block(self) -> str:
        self.blocked += 1
        self.someone_blocked.set()
        await self.opened.wait()
        return "unblocked"

    async def block_until_file(self, path: str) -> str:
        """Blocks until ``path`` exists (a release that works across processes)."""
        self.blocked += 1
        self.someone_blocked.set()
        while not await trio.Path(path).exists():  # noqa: ASYNC110 (a file cannot be awaited)
            await trio.sleep(0.01)
        return "released"

    async def wait_blocked(self) -> int:
        await self.someone_blocked.wait()
        return self.blocked

    async def open(self) -> None:
        self.opened.set()

    async def ping(self, x: int) -> int:
        await trio.lowlevel.checkpoint()
        return x


@serve.deployment(user_config={"threshold": 1})
class Configurable:
    """Applies ``user_config`` in ``reconfigure``."""

    def __init__(self) -> None:
        self.config: Any = None
        self.calls = 0

    def reconfigure(self, config: Any) -> None:
        self.config = config
        self.calls += 1

    async def current(self) -> list[Any]:
        return [self.config, self.calls]


@serve.deployment
class Faulty:
    """Raises user errors."""

    def value_error(self, n: int) -> None:
        raise ValueError(f"bad value {n}")

    async def custom_error(self, text: str) -> None:
        await trio.lowlevel.checkpoint()
        raise CustomError(text)

    async def ok(self) -> str:
        return "ok"


@serve.deployment
class BreaksOnRestart:
    """Starts normally; while the file ``broken`` names exists, a new replica's constructor
    raises (a restart after a crash fails until the file is gone)."""

    def __init__(self, broken: str) -> None:
        if os.path.exists(broken):
            raise RuntimeError(f"cannot start while {broken} exists")

    async def pid(self) -> int:
        await trio.lowlevel.checkpoint()
        return os.getpid()


@serve.deployment
class BrokenInit:
    """A deployment whose constructor raises."""

    def __init__(self, code: int) -> None:
        raise CustomError(f"constructor failed with code {code}")


@serve.deployment
class Hanger:
    """``hang(key)`` waits forever; when cancelled it records ``key`` and re-raises."""

    def __init__(self) -> None:
        self.started: dict[str, trio.Event] = {}
        self.cancelled: dict[str, trio.Event] = {}

    def _event(self, table: dict[str, trio.Event], key: str) -> trio.Event:
        return table.setdefault(key, trio.Event())

    async def hang(self, key: str) -> None:
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

    def was_cancelled(self, key: str) -> bool:
        event = self.cancelled.get(key)
        return event is not None and event.is_set()

    async def pid(self) -> int:
        return os.getpid()


@serve.deployment
class Forwarder:
    """An ingress that calls a downstream ``Hanger``."""

    def __init__(self, down: serve.DeploymentHandle) -> None:
        self.down = down

    async def __call__(self, key: str) -> None:
        await self.down.hang.remote(key)

    async def pid(self) -> int:
        return os.getpid()


@serve.deployment
class Math:
    """Small pure methods to chain."""

    async def add_one(self, x: int) -> int:
        return x + 1

    def double(self, x: int) -> int:
        return 2 * x

    async def combine(self, a: int, b: int) -> int:
        return a * 100 + b

    async def total(self, values: Any) -> int:
        if isinstance(values, dict):
            values = list(values.values())
        return sum(values)

    async def fail(self, text: str) -> int:
        raise CustomError(text)

    async def echo(self, *args: Any, **kwargs: Any) -> list[Any]:
        """What the replica received: ``[args, kwargs]``."""
        return [list(args), kwargs]


@serve.deployment
class Adder:
    """Adds ``amount``; used to build a diamond of distinct deployments."""

    def __init__(self, amount: int) -> None:
        self.amount = amount

    async def __call__(self, x: int) -> int:
        return x + self.amount


@serve.deployment
class Streamer:
    """Generator methods for ``stream=True`` handles."""

    def __init__(self) -> None:
        self.closed: dict[str, trio.Event] = {}

    async def agen(self, n: int) -> AsyncIterator[int]:
        for i in range(n):
            await trio.lowlevel.checkpoint()
            yield i

    def sgen(self, n: int) -> Iterator[str]:
        for i in range(n):
            yield f"item-{i}"

    async def fail_after(self, n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i
        raise CustomError(f"stream broke after {n}")

    async def endless(self, key: str) -> AsyncIterator[int]:
        """Yields forever; records ``key`` when the consumer stops it."""
        i = 0
        try:
            while True:
                yield i
                i += 1
                await trio.lowlevel.checkpoint()
        finally:
            self.closed.setdefault(key, trio.Event()).set()

    async def wait_closed(self, key: str) -> bool:
        await self.closed.setdefault(key, trio.Event()).wait()
        return True

    async def plain(self) -> int:
        return 1


@serve.deployment
class Holder:
    """Receives Applications (in a list and a dict) as handles."""

    def __init__(self, items: list[Any], named: dict[str, Any]) -> None:
        self.items = items
        self.named = named

    def kinds(self) -> list[str]:
        values = [*self.items, *self.named.values()]
        return [type(v).__name__ for v in values]

    async def __call__(self, x: int) -> dict[str, Any]:
        return {
            "items": [await h.remote(x) for h in self.items],
            "named": {k: await h.remote(x) for k, h in self.named.items()},
        }
