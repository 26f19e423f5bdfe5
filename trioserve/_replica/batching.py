"""``@serve.batch``: callers send one item each, the function sees lists.

The decision of when a batch starts lives in :mod:`trioserve._batch_policy` (sans-IO); this
module runs it under Trio or asyncio (whichever the caller runs in, per ``sniffio``).

Tasks, and whose nursery they run in:

- One *runner* per (queue owner, event loop), where the owner is the decorated plain
  function or one instance of the class whose method is decorated. It starts on demand when
  an item arrives and returns as soon as nothing waits and nothing runs, so nothing outlives
  its work or its loop. Under Trio it is a system task
  (``trio.lowlevel.spawn_system_task``) of the caller's ``trio.run``, because deployments
  have no nursery to lend; under asyncio it is a task of the running loop.
- One task per running batch: under Trio, a child of the runner's own nursery, each in its
  own cancel scope; under asyncio, a task of the running loop owned by the runner.

Runners are looked up by the loop's identity (``trio.lowlevel.current_trio_token()`` or the
asyncio loop), so one bound to a finished ``trio.run`` is never reused.

If cancelled midway: a caller cancelled before its batch starts leaves the queue (the
function sees one fewer item); a caller cancelled while its batch runs only stops
listening; a running batch is cancelled only when every one of its callers has left. When a
loop ends, its runner and batches are cancelled and any caller still waiting gets
``RuntimeError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import math
import threading
import weakref
from collections import deque
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import Any, Protocol, overload

import attrs
import sniffio
import trio

from .._metrics import LATENCY_BUCKETS_S, Histogram, Labels
from .batch_policy import BatchPolicy, BatchQueue

BATCH_SIZE_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
"""Upper bounds of the batch size histogram buckets (``le``)."""

BATCH_WAIT_BUCKETS_S: tuple[float, ...] = LATENCY_BUCKETS_S
"""Upper bounds of the per-item wait histogram buckets, in seconds."""


# -- metrics


@attrs.frozen(kw_only=True)
class BatchMetrics:
    """What one decorated function's batches looked like, for ``trioserve_batch_size`` and
    ``trioserve_batch_wait_seconds``.

    ``*_counts`` are per bucket (not cumulative), aligned with ``*_buckets``; values above the
    last bound are only in ``*_count``, as :class:`trioserve._metrics.Histogram` keeps them.
    """

    function: str
    module: str
    size_buckets: tuple[float, ...]
    size_counts: tuple[int, ...]
    size_sum: float
    size_count: int
    wait_buckets_s: tuple[float, ...]
    wait_counts: tuple[int, ...]
    wait_sum_s: float
    wait_count: int

    def merge_into(self, sizes: Histogram, waits: Histogram, labels: Labels = ()) -> None:
        """Add these observations to ``sizes`` and ``waits`` (built with the same buckets)."""
        sizes.merge(labels, list(self.size_counts), self.size_sum, self.size_count)
        waits.merge(labels, list(self.wait_counts), self.wait_sum_s, self.wait_count)


class _Recorder:
    """One decorated function's batch sizes and waits; any thread may record or read."""

    def __init__(self, function: str, module: str) -> None:
        self.function = function
        self.module = module
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self._sizes = Histogram("trioserve_batch_size", "", BATCH_SIZE_BUCKETS)
        self._waits = Histogram("trioserve_batch_wait_seconds", "", BATCH_WAIT_BUCKETS_S)

    def record(self, size: int, waits: Sequence[float]) -> None:
        with self._lock:
            self._sizes.observe((), size)
            for wait in waits:
                self._waits.observe((), wait)

    def snapshot(self, *, reset: bool) -> BatchMetrics | None:
        with self._lock:
            sizes, waits = self._sizes.values.get(()), self._waits.values.get(())
            if reset:
                self._reset()
        if sizes is None or waits is None:
            return None
        return BatchMetrics(
            function=self.function,
            module=self.module,
            size_buckets=BATCH_SIZE_BUCKETS,
            size_counts=tuple(sizes[0]),
            size_sum=sizes[1],
            size_count=sizes[2],
            wait_buckets_s=BATCH_WAIT_BUCKETS_S,
            wait_counts=tuple(waits[0]),
            wait_sum_s=waits[1],
            wait_count=waits[2],
        )


_recorders: weakref.WeakSet[_Recorder] = weakref.WeakSet()
_recorders_lock = threading.Lock()


def snapshot_batch_metrics(*, reset: bool = False) -> list[BatchMetrics]:
    """Batch metrics of every live ``@serve.batch`` function that has run a batch, sorted by
    module and name; thread-safe. Cumulative unless ``reset``, which starts each afresh
    (use one or the other per process, or a reader sees another's deltas)."""
    with _recorders_lock:
        recorders = list(_recorders)
    found = [m for r in recorders if (m := r.snapshot(reset=reset)) is not None]
    return sorted(found, key=lambda m: (m.module, m.function))


# -- one caller


class _Event(Protocol):
    def set(self) -> None: ...

    async def wait(self) -> object: ...


class _NoResult:
    pass


_NO_RESULT = _NoResult()


class _Call:
    """One caller's arguments and the way its answer (or stream of answers) gets back."""

    def __init__(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], since: float, new_event: _EventFactory
    ) -> None:
        self.args = args
        self.kwargs = kwargs
        self.since = since
        self.batch: _RunningBatch | None = None
        self.gone = False
        self.finished = False
        self.result: object = _NO_RESULT
        self.error: BaseException | None = None
        self.items: deque[object] = deque()
        self._new_event = new_event
        self._event = new_event()

    def push(self, item: object) -> None:
        if not self.finished:
            self.items.append(item)
            self._event.set()

    def finish(self, result: object = _NO_RESULT, error: BaseException | None = None) -> None:
        if not self.finished:
            self.finished = True
            self.result, self.error = result, error
            self._event.set()

    async def wait(self) -> None:
        """Until something new arrives (returns at once if it already has)."""
        await self._event.wait()
        self._event = self._new_event()

    def outcome(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.result


_EventFactory = Callable[[], _Event]


@attrs.define(eq=False)
class _RunningBatch:
    calls: list[_Call]
    live: int
    cancel: Callable[[], object] = lambda: None


# -- runners


def _stopped() -> RuntimeError:
    return RuntimeError("the @serve.batch runner stopped (its event loop is shutting down)")


def _check_results(results: object, size: int, name: str, verb: str) -> list[object]:
    if not isinstance(results, list):
        raise TypeError(
            f"batched function {name!r} {verb} a {type(results).__name__}, "
            "not a list with one result per call"
        )
    if len(results) != size:
        raise ValueError(
            f"batched function {name!r} {verb} {len(results)} results for a batch of {size}"
        )
    return results


def _collate(calls: list[_Call]) -> tuple[list[list[object]], dict[str, list[object]]]:
    first = calls[0]
    for call in calls[1:]:
        if len(call.args) != len(first.args) or call.kwargs.keys() != first.kwargs.keys():
            raise TypeError(
                "calls in one batch must pass the same number of positional arguments and the "
                f"same keyword names; got {len(first.args)} and {sorted(first.kwargs)} "
                f"next to {len(call.args)} and {sorted(call.kwargs)}"
            )
    args = [[call.args[i] for call in calls] for i in range(len(first.args))]
    kwargs = {name: [call.kwargs[name] for call in calls] for name in first.kwargs}
    return args, kwargs


class _Runner:
    """The queue of one owner in one event loop, and the task that cuts it into batches."""

    def __init__(self, fn: BatchedFunction, state: _OwnerState, owner: object, key: object):
        self.fn = fn
        self.state = state
        self.owner = owner  # the instance, or _NO_OWNER; kept alive while work remains
        self.key = key
        self.queue: BatchQueue[_Call] = BatchQueue()

    # backend hooks
    def now(self) -> float:
        raise NotImplementedError

    def new_event(self) -> _Event:
        raise NotImplementedError

    def kick(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        raise NotImplementedError

    # shared logic
    def submit(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> _Call:
        call = _Call(args, kwargs, self.now(), self.new_event)
        self.queue.put(call, call.since)
        self.kick()
        return call

    def leave(self, call: _Call) -> None:
        """``call``'s caller stopped listening (done, cancelled, or closed its stream)."""
        if call.gone:
            return
        call.gone = True
        if call.batch is None:
            if self.queue.remove(call):
                self.kick()
            return
        call.batch.live -= 1
        if call.batch.live == 0:  # nobody listens any more: stop the batch (if still running)
            call.batch.cancel()

    def cut(self) -> list[_RunningBatch]:
        now, policy = self.now(), self.state.policy(self.fn)
        batches = []
        while (calls := self.queue.next_batch(now, policy)) is not None:
            batch = _RunningBatch(calls, live=len(calls))
            for call in calls:
                call.batch = batch
            self.fn._recorder.record(len(calls), [now - call.since for call in calls])
            batches.append(batch)
        return batches

    def wake_at(self) -> float:
        wake = self.queue.wake_at(self.state.policy(self.fn))
        return math.inf if wake is None else wake

    def retire(self) -> None:
        """Forget this runner (synchronously, so no new item can reach it)."""
        with self.fn._lock:
            if self.state.runners.get(self.key) is self:
                del self.state.runners[self.key]
        for call in self.queue.clear():
            call.finish(error=_stopped())

    async def execute(self, batch: _RunningBatch) -> None:
        """Run the user's function on ``batch`` and hand each caller its share."""
        calls, name = batch.calls, self.fn.__qualname__
        prefix = () if self.owner is _NO_OWNER else (self.owner,)
        try:
            args, kwargs = _collate(calls)
            if self.fn._is_generator:
                stream = self.fn._func(*prefix, *args, **kwargs)
                async with contextlib.aclosing(stream):
                    async for chunk in stream:
                        items = _check_results(chunk, len(calls), name, "yielded")
                        for call, item in zip(calls, items, strict=True):
                            if item is StopIteration or isinstance(item, StopIteration):
                                call.finish()
                            else:
                                call.push(item)
                for call in calls:
                    call.finish()
            else:
                results = await self.fn._func(*prefix, *args, **kwargs)
                items = _check_results(results, len(calls), name, "returned")
                for call, item in zip(calls, items, strict=True):
                    call.finish(result=item)
        except Exception as exc:
            for call in calls:
                call.finish(error=exc)

    def batch_finished(self, batch: _RunningBatch) -> None:
        for call in batch.calls:
            call.finish(error=_stopped())  # only those left unanswered by a cancellation
        self.queue.batch_done()
        self.kick()


class _TrioRunner(_Runner):
    """Runs as a system task of the current ``trio.run``; batches in its own nursery."""

    def __init__(self, fn: BatchedFunction, state: _OwnerState, owner: object, key: object):
        super().__init__(fn, state, owner, key)
        self._wakeup = trio.Event()

    def now(self) -> float:
        return trio.current_time()

    def new_event(self) -> _Event:
        return trio.Event()

    def kick(self) -> None:
        self._wakeup.set()

    def start(self) -> None:
        trio.lowlevel.spawn_system_task(self._serve, name=f"@serve.batch {self.fn.__qualname__}")

    async def _serve(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                while True:
                    self._wakeup = trio.Event()
                    for batch in self.cut():
                        nursery.start_soon(self._run_batch, batch)
                    if self.queue.idle:
                        self.retire()
                        return
                    with trio.move_on_at(self.wake_at()):
                        await self._wakeup.wait()
        finally:
            self.retire()

    async def _run_batch(self, batch: _RunningBatch) -> None:
        try:
            with trio.CancelScope() as scope:
                batch.cancel = scope.cancel
                if batch.live == 0:  # every caller left between the cut and this start
                    scope.cancel()
                await self.execute(batch)
        finally:
            self.batch_finished(batch)


class _AsyncioRunner(_Runner):
    """Runs as a task of the running asyncio loop; batches are tasks of that loop."""

    def __init__(self, fn: BatchedFunction, state: _OwnerState, owner: object, key: object):
        super().__init__(fn, state, owner, key)
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()  # strong references, as asyncio needs

    def now(self) -> float:
        return self._loop.time()

    def new_event(self) -> _Event:
        return asyncio.Event()

    def kick(self) -> None:
        self._wakeup.set()

    def start(self) -> None:
        task = self._loop.create_task(self._serve(), name=f"@serve.batch {self.fn.__qualname__}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self) -> None:
        try:
            while True:
                self._wakeup = asyncio.Event()
                for batch in self.cut():
                    task = self._loop.create_task(self.execute(batch))
                    batch.cancel = task.cancel
                    self._tasks.add(task)
                    # a done callback, not `finally`: a task cancelled before its first step
                    # never enters its body
                    task.add_done_callback(functools.partial(self._batch_task_done, batch))
                if self.queue.idle:
                    self.retire()
                    return
                wake = self.wake_at()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(None if math.isinf(wake) else wake):
                        await self._wakeup.wait()
        finally:
            self.retire()

    def _batch_task_done(self, batch: _RunningBatch, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self.batch_finished(batch)


# -- the decorator


class _NoOwner:
    def __repr__(self) -> str:
        return "<no owner>"


_NO_OWNER = _NoOwner()


def _current_loop() -> tuple[str, object] | None:
    """The running async library and the identity of its event loop, or None outside one."""
    try:
        library = sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        return None
    if library == "trio":
        return library, trio.lowlevel.current_trio_token()
    if library == "asyncio":
        return library, asyncio.get_running_loop()
    return None


@attrs.define(eq=False)
class _OwnerState:
    """Settings and runners of one queue owner (a plain function, or one instance)."""

    owner: Callable[[], object]  # a weak reference (or a constant for plain functions)
    own_policy: BatchPolicy | None = None
    runners: dict[object, _Runner] = attrs.field(factory=dict)

    def policy(self, fn: BatchedFunction) -> BatchPolicy:
        return self.own_policy if self.own_policy is not None else fn._policy

    def runner(self, fn: BatchedFunction) -> _Runner:
        """This owner's runner in the current event loop, started if there is none."""
        found = _current_loop()
        if found is None:
            raise RuntimeError(f"@serve.batch function {fn.__qualname__!r} needs Trio or asyncio")
        library, key = found
        with fn._lock:
            runner = self.runners.get(key)
            if runner is None:
                owner = self.owner()
                cls = _TrioRunner if library == "trio" else _AsyncioRunner
                runner = self.runners[key] = cls(fn, self, owner, key)
                runner.start()
        return runner

    def kick_current(self) -> None:
        found = _current_loop()
        runner = self.runners.get(found[1]) if found is not None else None
        if runner is not None:
            runner.kick()


class BatchedFunction:
    """An ``async def`` function or method wrapped by ``@serve.batch``.

    Call it with one item; it returns that item's result (or, for an async generator, an
    async generator of that caller's items). Accessed on an instance it gives a
    :class:`BoundBatchedFunction` with that instance's own queue.
    """

    __name__: str
    __qualname__: str

    def __init__(self, func: Callable[..., Any], policy: BatchPolicy) -> None:
        if not (inspect.iscoroutinefunction(func) or inspect.isasyncgenfunction(func)):
            raise TypeError(
                "@serve.batch needs an `async def` function (or async generator), "
                f"got {getattr(func, '__qualname__', func)!r}"
            )
        functools.update_wrapper(self, func)
        self._func = func
        self._policy = policy
        self._is_generator = inspect.isasyncgenfunction(func)
        self._signature = inspect.signature(func)
        self._lock = threading.RLock()  # re-entrant: weakref finalizers may run while held
        self._state = _OwnerState(owner=lambda: _NO_OWNER)
        self._instances: dict[int, _OwnerState] = {}
        self._recorder = _Recorder(self.__qualname__, self.__module__)
        with _recorders_lock:
            _recorders.add(self._recorder)

    def __reduce__(self) -> tuple[Any, ...]:
        # queues, runners and locks belong to this process; a copy starts afresh
        return (BatchedFunction, (self._func, self._policy))

    @overload
    def __get__(self, instance: None, owner: type | None = None) -> BatchedFunction: ...
    @overload
    def __get__(self, instance: object, owner: type | None = None) -> BoundBatchedFunction: ...
    def __get__(
        self, instance: object, owner: type | None = None
    ) -> BatchedFunction | BoundBatchedFunction:
        if instance is None:
            return self
        return BoundBatchedFunction(self, instance)

    # Any: the caller passes one item where the function declares a list of them, a mapping
    # of parameter types that Python's typing cannot express
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._invoke(self._state, _NO_OWNER, args, kwargs)

    def set_max_batch_size(self, max_batch_size: int) -> None:
        """Change ``max_batch_size`` for the function and every instance without its own."""
        self._policy = attrs.evolve(self._policy, max_batch_size=max_batch_size)
        self._state.kick_current()

    def set_batch_wait_timeout_s(self, batch_wait_timeout_s: float) -> None:
        """Change ``batch_wait_timeout_s`` for the function and every instance without its
        own."""
        self._policy = attrs.evolve(self._policy, batch_wait_timeout_s=batch_wait_timeout_s)
        self._state.kick_current()

    def _get_max_batch_size(self) -> int:
        return self._state.policy(self).max_batch_size

    def _get_batch_wait_timeout_s(self) -> float:
        return self._state.policy(self).batch_wait_timeout_s

    def _get_max_concurrent_batches(self) -> int:
        return self._state.policy(self).max_concurrent_batches

    def _state_for(self, instance: object) -> _OwnerState:
        key = id(instance)
        with self._lock:
            state = self._instances.get(key)
            if state is not None and state.owner() is instance:
                return state
            try:
                ref = weakref.ref(instance)
            except TypeError:
                raise TypeError(
                    f"@serve.batch method {self.__qualname__!r} keeps one queue per instance "
                    f"and needs weak references to {type(instance).__qualname__} instances; "
                    "add '__weakref__' to its __slots__"
                ) from None
            state = self._instances[key] = _OwnerState(owner=ref)
        weakref.finalize(instance, self._forget, key, state)
        return state

    def _forget(self, key: int, state: _OwnerState) -> None:
        with self._lock:
            if self._instances.get(key) is state:
                del self._instances[key]

    def _invoke(
        self, state: _OwnerState, owner: object, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        prefix = () if owner is _NO_OWNER else (owner,)
        bound = self._signature.bind(*prefix, *args, **kwargs)  # a bad call fails right here
        args, kwargs = bound.args[len(prefix) :], bound.kwargs
        if self._is_generator:
            return self._stream(state, args, kwargs)
        return self._one(state, args, kwargs)

    async def _one(self, state: _OwnerState, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        runner = state.runner(self)
        call = runner.submit(args, kwargs)
        try:
            while not call.finished:
                await call.wait()
        finally:
            runner.leave(call)
        return call.outcome()

    async def _stream(
        self, state: _OwnerState, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> AsyncGenerator[Any, None]:
        runner = state.runner(self)
        call = runner.submit(args, kwargs)
        try:
            while True:
                while call.items:
                    yield call.items.popleft()
                if call.finished:
                    call.outcome()
                    return
                await call.wait()
        finally:
            runner.leave(call)


class BoundBatchedFunction:
    """A :class:`BatchedFunction` method bound to one instance, which has its own queue."""

    def __init__(self, fn: BatchedFunction, instance: object) -> None:
        self._fn = fn
        self.__self__ = instance
        self.__func__ = fn
        self.__wrapped__ = fn._func
        self.__name__: str = fn.__name__
        self.__qualname__: str = fn.__qualname__
        self.__doc__ = fn.__doc__

    # Any: as BatchedFunction.__call__
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._fn._invoke(self._state, self.__self__, args, kwargs)

    @property
    def _state(self) -> _OwnerState:
        return self._fn._state_for(self.__self__)

    def _set(self, **changes: Any) -> None:
        state = self._state
        state.own_policy = attrs.evolve(state.policy(self._fn), **changes)
        state.kick_current()

    def set_max_batch_size(self, max_batch_size: int) -> None:
        """Change ``max_batch_size`` for this instance's queue."""
        self._set(max_batch_size=max_batch_size)

    def set_batch_wait_timeout_s(self, batch_wait_timeout_s: float) -> None:
        """Change ``batch_wait_timeout_s`` for this instance's queue."""
        self._set(batch_wait_timeout_s=batch_wait_timeout_s)

    def _get_max_batch_size(self) -> int:
        return self._state.policy(self._fn).max_batch_size

    def _get_batch_wait_timeout_s(self) -> float:
        return self._state.policy(self._fn).batch_wait_timeout_s

    def _get_max_concurrent_batches(self) -> int:
        return self._state.policy(self._fn).max_concurrent_batches


@overload
def batch(_func: Callable[..., Any], /) -> BatchedFunction: ...
@overload
def batch(
    _func: None = None,
    /,
    *,
    max_batch_size: int = 10,
    batch_wait_timeout_s: float = 0.01,
    max_concurrent_batches: int = 1,
) -> Callable[[Callable[..., Any]], BatchedFunction]: ...
def batch(
    _func: Callable[..., Any] | None = None,
    /,
    *,
    max_batch_size: int = 10,
    batch_wait_timeout_s: float = 0.01,
    max_concurrent_batches: int = 1,
) -> BatchedFunction | Callable[[Callable[..., Any]], BatchedFunction]:
    """Batch calls to an ``async def`` function or method, as Ray Serve's ``@serve.batch``.

    Each caller passes one item per argument and awaits its own result; the function gets a
    list per positional argument and per keyword name and returns a list of as many results
    (or is an async generator yielding such lists; each caller then iterates its own
    items, and ``StopIteration`` in a caller's place ends that caller's stream). A batch starts
    when ``max_batch_size`` items wait or ``batch_wait_timeout_s`` after the first arrived; at
    most ``max_concurrent_batches`` run at once. An exception reaches every caller of its
    batch. Methods get one queue per instance. Settings are validated here; see the module
    docstring for the tasks this starts.
    """
    policy = BatchPolicy(
        max_batch_size=max_batch_size,
        batch_wait_timeout_s=batch_wait_timeout_s,
        max_concurrent_batches=max_concurrent_batches,
    )
    if _func is not None:
        return BatchedFunction(_func, policy)
    return functools.partial(BatchedFunction, policy=policy)
