"""When to cut a batch (sans-IO): the ``@serve.batch`` settings and the queue of waiting items.

Nothing here knows about tasks or clocks: callers pass ``now`` (seconds, any monotonic clock)
and act on the answers. :mod:`trioserve._batching` wraps this for Trio and asyncio.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Generic, TypeVar

import attrs

T = TypeVar("T")


def _check_max_batch_size(_: object, __: object, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"max_batch_size must be an int, got {value!r}")
    if value < 1:
        raise ValueError(f"max_batch_size must be >= 1, got {value!r}")


def _check_batch_wait_timeout_s(_: object, __: object, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"batch_wait_timeout_s must be a number of seconds, got {value!r}")
    if math.isnan(value):
        raise ValueError(f"batch_wait_timeout_s must be a number of seconds, got {value!r}")
    if value < 0:
        raise ValueError(f"batch_wait_timeout_s must be >= 0, got {value!r}")


def _check_max_concurrent_batches(_: object, __: object, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"max_concurrent_batches must be an int, got {value!r}")
    if value < 1:
        raise ValueError(f"max_concurrent_batches must be >= 1, got {value!r}")


@attrs.frozen(kw_only=True)
class BatchPolicy:
    """The settings of one ``@serve.batch`` queue, validated on construction.

    A batch is cut as soon as ``max_batch_size`` items wait, or ``batch_wait_timeout_s``
    after the oldest waiting item arrived, whichever is first; at most
    ``max_concurrent_batches`` batches run at once.
    """

    max_batch_size: int = attrs.field(default=10, validator=_check_max_batch_size)
    batch_wait_timeout_s: float = attrs.field(default=0.01, validator=_check_batch_wait_timeout_s)
    max_concurrent_batches: int = attrs.field(default=1, validator=_check_max_concurrent_batches)


@attrs.define
class _Waiting(Generic[T]):
    item: T
    since: float


@attrs.define
class BatchQueue(Generic[T]):
    """Items waiting for a batch, in arrival order, and the number of batches running.

    The owner calls :meth:`put` when an item arrives, :meth:`remove` when its caller leaves
    before the batch starts, :meth:`next_batch` to ask whether a batch starts now, and
    :meth:`batch_done` when a batch it started has finished. :meth:`wake_at` says when to ask
    again if nothing else happens.
    """

    _waiting: deque[_Waiting[T]] = attrs.field(factory=deque)
    running: int = 0

    def __len__(self) -> int:
        return len(self._waiting)

    @property
    def idle(self) -> bool:
        """Nothing waits and nothing runs."""
        return not self._waiting and self.running == 0

    def put(self, item: T, now: float) -> None:
        """Queue ``item``, which arrived at ``now``."""
        self._waiting.append(_Waiting(item, now))

    def remove(self, item: T) -> bool:
        """Take ``item`` out of the queue (its caller left); False if it was not waiting."""
        for index, waiting in enumerate(self._waiting):
            if waiting.item is item:
                del self._waiting[index]
                return True
        return False

    def clear(self) -> list[T]:
        """Take every waiting item out of the queue, oldest first."""
        items = [waiting.item for waiting in self._waiting]
        self._waiting.clear()
        return items

    def oldest_since(self) -> float | None:
        """When the oldest waiting item arrived, or None when nothing waits."""
        return self._waiting[0].since if self._waiting else None

    def next_batch(self, now: float, policy: BatchPolicy) -> list[T] | None:
        """The items of the batch that starts at ``now``, oldest first, or None.

        A returned batch counts as running until :meth:`batch_done`.
        """
        if not self._waiting or self.running >= policy.max_concurrent_batches:
            return None
        full = len(self._waiting) >= policy.max_batch_size
        timed_out = now >= self._waiting[0].since + policy.batch_wait_timeout_s
        if not (full or timed_out):
            return None
        size = min(len(self._waiting), policy.max_batch_size)
        batch = [self._waiting.popleft().item for _ in range(size)]
        self.running += 1
        return batch

    def batch_done(self) -> None:
        """A batch returned by :meth:`next_batch` has finished."""
        if self.running <= 0:
            raise RuntimeError("batch_done() called with no batch running")
        self.running -= 1

    def wake_at(self, policy: BatchPolicy) -> float | None:
        """When :meth:`next_batch` will next return a batch if nothing is put or finishes.

        None means never: nothing waits, or ``max_concurrent_batches`` batches run (ask again
        after :meth:`batch_done`). A time in the past means now.
        """
        if not self._waiting or self.running >= policy.max_concurrent_batches:
            return None
        if len(self._waiting) >= policy.max_batch_size:
            return self._waiting[0].since
        return self._waiting[0].since + policy.batch_wait_timeout_s
