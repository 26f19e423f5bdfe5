"""Model multiplexing inside a replica: ``@serve.multiplexed`` and the model id of a request.

A multiplexed loader (``async def get_model(self, model_id)``) keeps at most
``max_num_models_per_replica`` models per replica, evicting the least recently used one
(its ``aclose()`` or ``close()`` is called, awaited if async; else its ``__del__``).
Concurrent requests for a model that is loading wait for that one load. After every load
and eviction the replica reports the model ids it holds, so routers in every process send
a model's requests to a replica that already holds it.

The order of use is :class:`ModelLRU` (pure); the cache around it runs on Trio.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import time
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

import attrs
import trio

from .._handles.messages import MODEL_SEP

_model_id: contextvars.ContextVar[str] = contextvars.ContextVar(
    "trioserve_multiplexed_model_id", default=""
)


def get_multiplexed_model_id() -> str:
    """The model id of the request being handled (``""`` when it was sent without one):
    ``handle.options(multiplexed_model_id=...)`` or the ``serve_multiplexed_model_id``
    HTTP header."""
    return _model_id.get()


def split_method(name: str) -> tuple[str, str]:
    """``"predict\\x1fmodel=a"`` -> ``("predict", "a")``; a plain name has no model id."""
    method, sep, model = name.partition(MODEL_SEP)
    return method, model if sep else ""


def with_model_id(fn: Callable[..., Any], model_id: str) -> Callable[..., Any]:
    """``fn`` running with ``model_id`` as the request's model id (its kind unchanged:
    async, sync, or a generator of either)."""
    if inspect.isasyncgenfunction(fn):

        @functools.wraps(fn)
        async def agen(*args: Any, **kwargs: Any) -> Any:
            _model_id.set(model_id)  # this call's own task: nobody else sees it
            async for item in fn(*args, **kwargs):
                yield item

        return agen
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def call(*args: Any, **kwargs: Any) -> Any:
            _model_id.set(model_id)
            return await fn(*args, **kwargs)

        return call

    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def gen(*args: Any, **kwargs: Any) -> Any:
            token = _model_id.set(model_id)
            try:
                yield from fn(*args, **kwargs)
            finally:
                _model_id.reset(token)

        return gen

    @functools.wraps(fn)
    def plain(*args: Any, **kwargs: Any) -> Any:
        token = _model_id.set(model_id)
        try:
            return fn(*args, **kwargs)
        finally:
            _model_id.reset(token)

    return plain


@attrs.define
class ModelLRU:
    """The order in which model ids were last used (pure)."""

    capacity: int
    _order: OrderedDict[str, None] = attrs.field(factory=OrderedDict)

    def touch(self, model_id: str) -> None:
        """``model_id`` was just used."""
        self._order.move_to_end(model_id)

    def add(self, model_id: str) -> list[str]:
        """Record a newly loaded model; the ids to evict (least recently used first) so
        that at most ``capacity`` remain."""
        self._order[model_id] = None
        self._order.move_to_end(model_id)
        evicted = []
        while len(self._order) > self.capacity:
            oldest, _ = self._order.popitem(last=False)
            evicted.append(oldest)
        return evicted

    def ids(self) -> list[str]:
        """Held ids, least recently used first."""
        return list(self._order)


@attrs.define
class MultiplexStats:
    """Counters of one replica's model cache (for ``/-/metrics``)."""

    hits: int = 0
    misses: int = 0
    loads: int = 0
    load_seconds: float = 0.0
    loaded: int = 0


#: per user object: how to report the model ids it holds, and its stats
_owners: weakref.WeakKeyDictionary[
    Any, tuple[Callable[[list[str]], Awaitable[None]], MultiplexStats]
]
_owners = weakref.WeakKeyDictionary()


def register_owner(
    user: Any, report: Callable[[list[str]], Awaitable[None]]
) -> MultiplexStats | None:
    """The replica hosting ``user`` says how to report its models; returns its stats."""
    try:
        stats = MultiplexStats()
        _owners[user] = (report, stats)
        return stats
    except TypeError:  # not weakly referenceable: no reports, the cache still works
        return None


@attrs.define
class _Loading:
    done: trio.Event = attrs.field(factory=trio.Event)
    model: Any = None
    error: BaseException | None = None


@attrs.define
class _Cache:
    lru: ModelLRU
    models: dict[str, Any] = attrs.field(factory=dict)
    loading: dict[str, _Loading] = attrs.field(factory=dict)


async def _close_model(model: Any) -> None:
    for name in ("aclose", "close"):
        fn = getattr(model, name, None)
        if callable(fn):
            result = fn()
            if inspect.isawaitable(result):
                await result
            return
    if any("__del__" in vars(klass) for klass in type(model).__mro__ if klass is not object):
        model.__del__()


#: model caches: per user object and loader (methods), or per loader (plain functions)
_caches: weakref.WeakKeyDictionary[Any, dict[str, _Cache]] = weakref.WeakKeyDictionary()
_plain_caches: dict[str, _Cache] = {}


F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


@overload
def multiplexed(_func: F, /) -> F: ...
@overload
def multiplexed(*, max_num_models_per_replica: int = 3) -> Callable[[F], F]: ...


def multiplexed(
    _func: Callable[..., Awaitable[Any]] | None = None,
    /,
    *,
    max_num_models_per_replica: int = 3,
) -> Any:
    """Decorate an ``async def`` model loader ``(self, model_id)`` (or ``(model_id)``):
    calls return the loaded model, loading it at most once per replica and keeping at most
    ``max_num_models_per_replica`` models (least recently used evicted). Called with no
    ``model_id``, it uses :func:`get_multiplexed_model_id`."""
    if (
        not isinstance(max_num_models_per_replica, int)
        or isinstance(max_num_models_per_replica, bool)
        or (max_num_models_per_replica < 1 and max_num_models_per_replica != -1)
    ):
        raise ValueError(
            "max_num_models_per_replica must be an int >= 1 (or -1 for no limit), "
            f"got {max_num_models_per_replica!r}"
        )
    capacity = max_num_models_per_replica if max_num_models_per_replica > 0 else 2**31

    def decorate(loader: Callable[..., Awaitable[Any]]) -> Any:
        if not inspect.iscoroutinefunction(loader):
            raise TypeError(f"@serve.multiplexed needs an async def loader, got {loader!r}")
        return _Multiplexed(loader, capacity)

    if _func is not None:
        return decorate(_func)
    return decorate


class _Multiplexed:
    """A multiplexed loader: a descriptor, so ``self.get_model`` binds like a method. It
    holds only the loader and its capacity (the caches live in this module), so a class
    shipped by value pickles with it."""

    def __init__(self, loader: Callable[..., Awaitable[Any]], capacity: int) -> None:
        self._loader = loader
        self._capacity = capacity
        params = list(inspect.signature(loader).parameters)
        self._is_method = bool(params) and params[0] == "self"
        self._key = f"{loader.__module__}.{loader.__qualname__}"
        functools.update_wrapper(self, loader)

    def __get__(self, owner: Any, owner_type: Any = None) -> Any:
        if owner is None or not self._is_method:
            return self
        return functools.partial(self._load, owner)

    async def __call__(self, *args: Any) -> Any:
        if self._is_method:
            return await self._load(*args)
        return await self._load(None, *args)

    def _cache(self, owner: Any) -> _Cache:
        by_loader = _plain_caches if owner is None else _caches.setdefault(owner, {})
        cache = by_loader.get(self._key)
        if cache is None:
            cache = by_loader[self._key] = _Cache(ModelLRU(self._capacity))
        return cache

    async def _load(self, owner: Any, model_id: str | None = None) -> Any:
        model_id = model_id or get_multiplexed_model_id()
        if not model_id:
            raise ValueError(
                "no model id: pass one, or send the request with "
                "handle.options(multiplexed_model_id=...) or the "
                "serve_multiplexed_model_id header"
            )
        cache = self._cache(owner)
        report, stats = _owners.get(owner, (None, None)) if owner is not None else (None, None)
        if model_id in cache.models:
            cache.lru.touch(model_id)
            if stats is not None:
                stats.hits += 1
            return cache.models[model_id]
        pending = cache.loading.get(model_id)
        if pending is not None:
            await pending.done.wait()
            if pending.error is not None:
                raise pending.error
            return pending.model
        if stats is not None:
            stats.misses += 1
        pending = cache.loading[model_id] = _Loading()
        started = time.perf_counter()
        try:
            args = (owner, model_id) if self._is_method else (model_id,)
            model = await self._loader(*args)
        except BaseException as exc:  # why: waiters get the same error; re-raised
            pending.error = exc
            raise
        finally:
            del cache.loading[model_id]
            pending.done.set()
        pending.model = model
        cache.models[model_id] = model
        evicted = cache.lru.add(model_id)
        for old in evicted:
            await _close_model(cache.models.pop(old))
        if stats is not None:
            stats.loads += 1
            stats.load_seconds += time.perf_counter() - started
            stats.loaded = len(cache.models)
        if report is not None:
            with trio.move_on_after(2):
                await report(cache.lru.ids())
        return model
