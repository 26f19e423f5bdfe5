"""Method kinds: how a host runs a method, decided once per method from its definition.

* ``async``: an ``async def``, awaited in the host's loop;
* ``sync``: a plain ``def``, run on a worker thread so it never blocks the loop;
* ``asyncgen`` / ``syncgen``: generators, streamed (an item per ``yield``);
* ``push``: ``@push_stream async def fn(emit, *args)``, streamed by ``await emit(item)``;
* ``duplex``: ``@duplex_stream async def fn(emit, inbox, *args)``: a push stream that also
  reads the caller's request stream from ``inbox`` (an async iterator of the items the
  caller sends, with credit-based backpressure both ways).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Literal

Kind = Literal["async", "sync", "asyncgen", "syncgen", "push", "duplex"]


def push_stream(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Mark an ``async def fn(emit, *args, **kwargs)`` as a push-style stream: it sends
    items with ``await emit(item)`` (which waits for the caller's credit) instead of
    yielding them. Callers see an ordinary stream."""
    fn.__actor_push_stream__ = True  # type: ignore[attr-defined]  # why: a marker attribute
    return fn


def duplex_stream(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Mark an ``async def fn(emit, inbox, *args, **kwargs)`` as a duplex stream: a push
    stream (``await emit(item)``) that also receives the caller's request stream,
    ``async for item in inbox`` (what :meth:`RemoteRef.submit_duplex`'s sender sends).
    Called as a plain stream, it sees an empty ``inbox``."""
    fn.__actor_duplex_stream__ = True  # type: ignore[attr-defined]  # why: a marker attribute
    return fn


def method_kind(fn: Callable[..., Any]) -> Kind:
    """How a host runs ``fn`` (see the module docstring)."""
    if getattr(fn, "__actor_duplex_stream__", False):
        return "duplex"
    if getattr(fn, "__actor_push_stream__", False):
        return "push"
    target = inspect.unwrap(fn)
    if inspect.isasyncgenfunction(target):
        return "asyncgen"
    if inspect.isgeneratorfunction(target):
        return "syncgen"
    if inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(
        getattr(target, "__call__", None)  # noqa: B004
    ):
        return "async"
    return "sync"
