"""``@deployment``, ``Deployment`` and ``Application`` (bound graphs)."""

from __future__ import annotations

import inspect
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
        them, at any depth of lists, tuples and dicts, reach the replica as handles."""
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
        """Every application in the graph, downstream first, each deployment once."""
        seen: dict[str, Application] = {}

        def visit(node: Application) -> None:
            for child in _find_apps((node.args, node.kwargs)):
                visit(child)
            prev = seen.get(node.deployment.name)
            if prev is not None and not _same_binding(prev, node):
                raise ValueError(
                    f"two different deployments in one application are named "
                    f"{node.deployment.name!r}; give one another name with .options(name=...)"
                )
            seen.setdefault(node.deployment.name, node)

        visit(self)
        return list(seen.values())


def _same_binding(a: Application, b: Application) -> bool:
    """Whether two bound nodes are the same deployment with the very same arguments."""
    if a is b:
        return True
    if a.deployment is not b.deployment or len(a.args) != len(b.args):
        return False
    if a.kwargs.keys() != b.kwargs.keys():
        return False
    return all(x is y for x, y in zip(a.args, b.args, strict=True)) and all(
        a.kwargs[k] is b.kwargs[k] for k in a.kwargs
    )


def _find_apps(value: Any) -> list[Application]:
    found: list[Application] = []
    if isinstance(value, Application):
        found.append(value)
    elif isinstance(value, (list, tuple)):
        for item in value:
            found.extend(_find_apps(item))
    elif isinstance(value, dict):
        for item in value.values():
            found.extend(_find_apps(item))
    return found


def replace_apps(value: Any, convert: Callable[[Application], Any]) -> Any:
    """``value`` with every Application (in lists, tuples, dicts) replaced by ``convert``."""
    if isinstance(value, Application):
        return convert(value)
    if isinstance(value, list):
        return [replace_apps(v, convert) for v in value]
    if isinstance(value, tuple):
        return tuple(replace_apps(v, convert) for v in value)
    if isinstance(value, dict):
        return {k: replace_apps(v, convert) for k, v in value.items()}
    return value


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
