"""``@deployment``, ``Deployment`` and ``Application`` (bound graphs)."""

from __future__ import annotations

import copy
import inspect
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, overload

from ._config import DeploymentConfig, apply_options

if TYPE_CHECKING:
    from ._handles.handle import DeploymentHandle, SyncHandle


class Deployment:
    """A class or function to be served by replicas, with its options."""

    def __init__(self, target: Callable[..., Any], name: str, config: DeploymentConfig) -> None:
        if not callable(target):
            raise TypeError(f"@deployment needs a class or a function, got {target!r}")
        self.target = target
        self.name = name
        self.config = config
        self.is_function = not inspect.isclass(target)

    def __repr__(self) -> str:
        return f"Deployment(name={self.name!r})"

    def options(self, **options: Any) -> Deployment:
        """A copy with some options changed (same names as ``@deployment``)."""
        name = options.get("name", self.name)
        _check_name(name)
        return Deployment(self.target, name, apply_options(self.config, options))

    def bind(self, *args: Any, **kwargs: Any) -> Application:
        """Arguments for the constructor (classes) or nothing (functions). Applications among
        them, at any depth of lists, tuples, sets, dicts and the fields of user objects
        (dataclasses, attrs classes, plain classes), reach the replica as handles."""
        if self.is_function and (args or kwargs):
            raise TypeError(f"function deployment {self.name!r} takes no bind() arguments")
        return Application(self, args, kwargs)

    @overload
    def get_handle(self, sync: Literal[True] = True) -> SyncHandle: ...
    @overload
    def get_handle(self, sync: Literal[False]) -> DeploymentHandle: ...

    def get_handle(self, sync: bool = True) -> SyncHandle | DeploymentHandle:
        """A handle to this deployment once it is running (in any application)."""
        if _handle_lookup is None:
            raise RuntimeError("import trioserve before asking for handles")
        return _handle_lookup(self.name, sync)


HandleLookup = Callable[[str, bool], "SyncHandle | DeploymentHandle"]
# The script API (``_api``, above this module) installs the lookup when it is imported, so
# this pure module never imports the layer that runs instances.
_handle_lookup: HandleLookup | None = None


def set_handle_lookup(lookup: HandleLookup) -> None:
    """Install how ``Deployment.get_handle`` finds a running deployment (done by ``_api``)."""
    global _handle_lookup
    _handle_lookup = lookup


class Application:
    """A deployment bound to its arguments: the node of a graph that ``run`` deploys."""

    def __init__(
        self, deployment: Deployment, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        self.deployment = deployment
        self.args = args
        self.kwargs = kwargs

    def __repr__(self) -> str:
        return f"Application({self.deployment.name!r})"

    def walk(self) -> list[Application]:
        """Every node of the graph, downstream first, each bound node once.

        Names follow Ray Serve's rule: walking from the ingress (callers before the nodes
        they bind, in argument order), the first node of a name keeps it and each other
        node of that name -- another ``.bind()`` of the same deployment, or another
        deployment with that name -- becomes ``Name_1``, ``Name_2``, ... Renamed nodes (and
        the nodes that bind them) are returned as copies; the graph itself is not changed.
        """
        names = _unique_names(self)
        copies: dict[int, Application] = {}  # why id(): nodes are compared by identity
        visiting: set[int] = set()
        order: list[Application] = []

        def build(node: Application) -> Application:
            done = copies.get(id(node))
            if done is not None:
                return done
            if id(node) in visiting:
                raise ValueError(
                    f"the graph has a cycle through {node!r}; "
                    "bind arguments must not hold the node that binds them"
                )
            visiting.add(id(node))
            args = replace_apps(node.args, build)
            kwargs = replace_apps(node.kwargs, build)
            name = names[id(node)]
            dep = node.deployment
            if name != dep.name:
                dep = Deployment(dep.target, name, dep.config)
            same = dep is node.deployment and args is node.args and kwargs is node.kwargs
            built = node if same else Application(dep, args, kwargs)
            copies[id(node)] = built
            visiting.discard(id(node))
            order.append(built)
            return built

        build(self)
        return order


def _unique_names(root: Application) -> dict[int, str]:
    """The deployment name of every node (by ``id``), in Ray's pre-order from the ingress."""
    names: dict[int, str] = {}
    taken: set[str] = set()

    def visit(node: Application) -> None:
        if id(node) in names:
            return
        base = name = node.deployment.name
        suffix = 0
        while name in taken:
            suffix += 1
            name = f"{base}_{suffix}"
        taken.add(name)
        names[id(node)] = name
        for child in _find_apps((node.args, node.kwargs)):
            visit(child)

    visit(root)
    return names


# -- where bound Applications may hide in bind arguments
#
# The walk (finding them) and the replacement (by handles, in the controller) go through the
# same containers: lists, tuples (named too), sets and dicts (subclasses too), and the fields
# of user objects (dataclasses, attrs classes, plain classes: ``__dict__`` and ``__slots__``).
# Classes, functions, modules and the framework's own objects are not entered.

_OPAQUE = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType)
_OPAQUE_MODULES = ("builtins", "trioserve", "actors", "trio", "msgspec", "attr", "attrs")
_ATOMS = (str, bytes, bytearray, int, float, complex, bool, type(None))


def _is_framework_type(cls: type) -> bool:
    module = getattr(cls, "__module__", "") or ""
    return module.partition(".")[0] in _OPAQUE_MODULES


def _fields(value: Any) -> list[tuple[str, Any]]:
    """The attributes of a user object that may hold Applications (none for other values)."""
    cls = type(value)
    if isinstance(value, _OPAQUE) or _is_framework_type(cls):
        return []
    found: dict[str, Any] = {}
    state = getattr(value, "__dict__", None)
    if isinstance(state, dict):
        found.update((k, v) for k, v in state.items() if isinstance(k, str))
    for klass in cls.__mro__:
        slots = klass.__dict__.get("__slots__", ())
        for slot in (slots,) if isinstance(slots, str) else slots:
            if slot in ("__dict__", "__weakref__") or slot in found:
                continue
            try:
                found[slot] = object.__getattribute__(value, slot)
            except AttributeError:
                continue  # an unset slot
    return list(found.items())


def _children(value: Any) -> list[Any]:
    if isinstance(value, (*_ATOMS, Application)):
        return []
    if isinstance(value, dict):
        return list(value.values())
    if isinstance(value, (list, tuple, set, frozenset)):
        return list(value)
    return [v for _, v in _fields(value)]


def _find_apps(value: Any) -> list[Application]:
    """The Applications in ``value`` (at any depth of containers and user objects), in
    order, each once."""
    found: list[Application] = []
    seen: set[int] = set()  # why id(): values may be unhashable, and cycles must end

    def visit(v: Any) -> None:
        if isinstance(v, Application):
            if id(v) not in seen:
                seen.add(id(v))
                found.append(v)
            return
        if isinstance(v, _ATOMS) or id(v) in seen:
            return
        seen.add(id(v))
        for child in _children(v):
            visit(child)

    visit(value)
    return found


def replace_apps(value: Any, convert: Callable[[Application], Any]) -> Any:
    """``value`` with every Application in it replaced by ``convert(app)``, wherever
    :func:`_find_apps` finds them. Values holding none are returned as they are (the very
    objects); the ones holding some are shallow copies (user objects: ``copy.copy`` with
    the fields set again), so the caller's objects are never changed."""
    memo: dict[int, Any] = {}  # why id(): shared values stay shared; cycles end

    def rep(v: Any) -> Any:
        if isinstance(v, Application):
            return convert(v)
        if isinstance(v, _ATOMS):
            return v
        key = id(v)
        if key in memo:
            return memo[key]
        memo[key] = v  # a cycle back to ``v`` keeps the original
        new = _rebuilt(v, rep)
        memo[key] = new
        return new

    return rep(value)


def _rebuilt(value: Any, rep: Callable[[Any], Any]) -> Any:
    """``value`` with its parts passed through ``rep``; ``value`` itself if none changed."""
    if isinstance(value, dict):
        changed = {k: n for k, v in value.items() if (n := rep(v)) is not v}
        if not changed:
            return value
        if type(value) is dict:
            return {k: changed.get(k, v) for k, v in value.items()}
        new_dict = copy.copy(value)
        new_dict.update(changed)
        return new_dict
    if isinstance(value, (list, tuple, set, frozenset)):
        parts = [rep(v) for v in value]
        if all(a is b for a, b in zip(parts, value, strict=True)):
            return value
        if type(value) in (list, tuple, set, frozenset):
            return type(value)(parts)
        if isinstance(value, tuple) and hasattr(value, "_make"):
            return value._make(parts)  # a namedtuple
        return type(value)(parts)
    fields = _fields(value)
    changed_fields = [(k, n) for k, v in fields if (n := rep(v)) is not v]
    if not changed_fields:
        return value
    try:
        clone = copy.copy(value)
        for name, new in changed_fields:
            object.__setattr__(clone, name, new)
    except Exception as exc:
        raise TypeError(
            f"a bound Application is held by a {type(value).__qualname__} object that cannot "
            f"be copied to hold a handle instead ({exc!r}); pass the Application directly, "
            "or inside a list, dict, dataclass or attrs object"
        ) from exc
    return clone


def _check_name(name: object) -> None:
    if not isinstance(name, str) or not name or "/" in name or "#" in name:
        raise ValueError(
            f"deployment name must be a non-empty str without '/' or '#', got {name!r}"
        )


@overload
def deployment(_target: Callable[..., Any], /) -> Deployment: ...
@overload
def deployment(
    _target: None = None, /, **options: Any
) -> Callable[[Callable[..., Any]], Deployment]: ...


def deployment(
    _target: Callable[..., Any] | None = None, /, **options: Any
) -> Deployment | Callable[[Callable[..., Any]], Deployment]:
    """Turn a class or function into a :class:`Deployment`; with or without options::

    @deployment
    class A: ...

    @deployment(num_replicas=2, max_ongoing_requests=8)
    class B: ...
    """

    def wrap(target: Callable[..., Any]) -> Deployment:
        name = options["name"] if "name" in options else getattr(target, "__name__", None)
        _check_name(name)
        assert isinstance(name, str)
        return Deployment(target, name, apply_options(DeploymentConfig(), options))

    if _target is not None:
        return wrap(_target)
    return wrap
