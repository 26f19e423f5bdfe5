"""Deployments on asyncio (``event_loop="asyncio"``): an asyncio loop on a thread of the
replica runs the user's ``async def`` methods and async generators, so asyncio libraries
work there; the replica itself (its connections, routers, the actor host) stays on Trio.

A call is a task on the asyncio loop, created with the caller's context (so
``serve.get_multiplexed_model_id()`` and the request context are seen there); the Trio
side waits for it without blocking a thread. A cancelled Trio call cancels the asyncio
task and waits (bounded) for it to finish.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import inspect
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import trio

#: how long a cancelled call waits for its asyncio task to finish
CANCEL_WAIT_S = 5.0


class AsyncioThread:
    """An asyncio event loop running forever on a daemon thread of its own.

    Tasks: the thread (``trioserve-asyncio``) and, on its loop, one task per call.
    :meth:`stop` stops the loop; tasks still running are abandoned with the process.
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="trioserve-asyncio", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)

    def _submit(self, coro: Coroutine[Any, Any, Any]) -> concurrent.futures.Future[Any]:
        """Start ``coro`` as a task on the loop, in a copy of the caller's context."""
        result: concurrent.futures.Future[Any] = concurrent.futures.Future()
        context = contextvars.copy_context()

        def start() -> None:
            if result.cancelled():
                coro.close()
                return
            task = self.loop.create_task(coro, context=context)

            def finished(done: asyncio.Task[Any]) -> None:
                if done.cancelled():
                    result.cancel()
                elif (error := done.exception()) is not None:
                    result.set_exception(error)
                else:
                    result.set_result(done.result())

            task.add_done_callback(finished)
            result.add_done_callback(
                lambda f: self.loop.call_soon_threadsafe(task.cancel) if f.cancelled() else None
            )

        self.loop.call_soon_threadsafe(start)
        return result

    async def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run ``coro`` on the asyncio loop and return its result, from Trio."""
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()
        future = self._submit(coro)
        future.add_done_callback(lambda _: token.run_sync_soon(done.set))
        try:
            await done.wait()
        except trio.Cancelled:  # why: the caller was cancelled: cancel the task; re-raised
            future.cancel()
            with trio.move_on_after(CANCEL_WAIT_S) as wait:
                wait.shield = True  # why: wait (bounded) for the asyncio task to unwind
                await done.wait()
            raise
        return future.result()

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` (an ``async def`` or an async generator function) made to run on the
        asyncio loop; anything else is returned as it is (sync methods run on threads)."""
        if inspect.isasyncgenfunction(fn):

            @functools.wraps(fn)
            async def agen(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
                items = fn(*args, **kwargs)
                try:
                    while True:
                        try:
                            item = await self.run(items.__anext__())
                        except StopAsyncIteration:
                            return
                        yield item
                finally:
                    with trio.move_on_after(CANCEL_WAIT_S) as closing:
                        closing.shield = True  # why: close the generator on its loop
                        await self.run(items.aclose())

            return agen
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def call(*args: Any, **kwargs: Any) -> Any:
                return await self.run(fn(*args, **kwargs))

            return call
        return fn


ASYNCIO_HINT = (
    'this deployment runs on Trio; asyncio code needs @serve.deployment(event_loop="asyncio")'
)


def is_asyncio_misuse(error: BaseException) -> bool:
    """Whether ``error`` looks like asyncio code run on Trio."""
    text = str(error)
    return ("no running event loop" in text and isinstance(error, RuntimeError)) or (
        "trio.run received unrecognized yield message" in text
    )


def note_asyncio_misuse(error: BaseException) -> None:
    """For the actor host's error hook: say what to set when asyncio code ran on Trio."""
    if isinstance(error, RuntimeError | TypeError) and is_asyncio_misuse(error):
        error.add_note(ASYNCIO_HINT)
