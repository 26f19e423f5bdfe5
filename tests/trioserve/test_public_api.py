"""The public surface: ``__all__`` lists exactly what ``__init__.py`` re-exports."""

from __future__ import annotations

import ast
import importlib
import inspect
import types
from pathlib import Path

import pytest

import actors
import actors.exceptions
import trioserve
import trioserve.exceptions


def _reexported_names(package: types.ModuleType) -> set[str]:
    """The names ``__init__.py`` binds with ``from .x import y as y`` (public ones)."""
    assert package.__file__ is not None
    tree = ast.parse(Path(package.__file__).read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module != "__future__":
            for alias in node.names:
                name = alias.asname or alias.name
                if not name.startswith("_"):
                    names.add(name)
    return names


@pytest.mark.parametrize("package", [trioserve, actors], ids=lambda p: p.__name__)
def test_public_api_all_matches_reexports(package: types.ModuleType) -> None:
    """``__all__`` is exactly the set of names the package's ``__init__`` re-exports."""
    exported = package.__all__
    assert len(exported) == len(set(exported)), "duplicates in __all__"
    assert set(exported) == _reexported_names(package)


@pytest.mark.parametrize("package", [trioserve, actors], ids=lambda p: p.__name__)
def test_public_api_every_name_exists(package: types.ModuleType) -> None:
    """Every name in ``__all__`` can be imported from the package."""
    missing = [name for name in package.__all__ if not hasattr(package, name)]
    assert missing == []
    namespace: dict[str, object] = {}
    exec(f"from {package.__name__} import *", namespace)
    assert set(package.__all__) <= set(namespace)


@pytest.mark.parametrize("package", [trioserve, actors], ids=lambda p: p.__name__)
def test_public_api_no_unlisted_public_attribute(package: types.ModuleType) -> None:
    """No public, non-module attribute of the package is missing from ``__all__``."""
    unlisted = [
        name
        for name, value in vars(package).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and name != "annotations"  # from __future__ import annotations
        and name not in package.__all__
    ]
    assert unlisted == []


def test_public_api_design_names_present() -> None:
    """The names the design document promises to users are exported."""
    promised = {
        "deployment",
        "Deployment",
        "Application",
        "run",
        "start",
        "shutdown",
        "status",
        "delete",
        "get_app_handle",
        "get_deployment_handle",
        "get",
        "wait",
        "get_async",
        "wait_async",
        "open_serve",
        "DeploymentHandle",
        "SyncHandle",
        "DeploymentResponse",
        "ServeError",
        "BackPressureError",
        "ReplicaDiedError",
        "DeploymentUnavailableError",
        "RequestCancelledError",
        "DeploymentFailedError",
        "RequestTimeoutError",
        "AutoscalingConfig",
        "get_replica_context",
        "ReplicaContext",
        "HTTPOptions",
        "RequestTooLargeError",
        "ServeNotRunningError",
        "ServeShutdownError",
    }
    assert promised <= set(trioserve.__all__)


@pytest.mark.parametrize("name", ["trioserve.handle", "trioserve.config"])
def test_public_api_ray_modules_list_their_names(name: str) -> None:
    """Ray's import paths (``trioserve.handle``, ``trioserve.config``) are public modules
    with a literal ``__all__`` that holds what they re-export, each the package's own."""
    module = importlib.import_module(name)
    assert module.__file__ is not None
    tree = ast.parse(Path(module.__file__).read_text())
    literal = next(
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets)
    )
    assert literal == module.__all__
    reexported = {
        alias.asname
        for node in tree.body
        if isinstance(node, ast.ImportFrom) and node.level
        for alias in node.names
        if alias.asname == alias.name
    }
    assert reexported <= set(module.__all__)
    for exported in module.__all__:
        assert getattr(module, exported) is getattr(trioserve, exported)


@pytest.mark.parametrize(
    ("module", "root"),
    [(trioserve.exceptions, trioserve.ServeError), (actors.exceptions, actors.ActorError)],
    ids=["trioserve", "actors"],
)
def test_public_api_errors_share_one_root(module: types.ModuleType, root: type) -> None:
    """Every error a package defines derives from its root, and is exported."""
    package = trioserve if module is trioserve.exceptions else actors
    classes = [
        value
        for value in vars(module).values()
        if inspect.isclass(value)
        and issubclass(value, BaseException)
        and value.__module__ == module.__name__
    ]
    assert root in classes
    assert len(classes) > 3
    for cls in classes:
        assert issubclass(cls, root), cls
        assert getattr(package, cls.__name__) is cls


def test_public_api_request_timeout_is_a_timeout_error() -> None:
    """``except TimeoutError`` catches serve's request timeouts."""
    assert issubclass(trioserve.RequestTimeoutError, TimeoutError)
    assert issubclass(trioserve.RequestTimeoutError, trioserve.ServeError)


@pytest.mark.parametrize("package", [trioserve, actors], ids=lambda p: p.__name__)
def test_public_api_package_is_marked_typed(package: types.ModuleType) -> None:
    """Both packages ship ``py.typed``, so users' type checkers read their annotations."""
    assert package.__file__ is not None
    assert (Path(package.__file__).parent / "py.typed").is_file()


def test_public_api_actors_testing_lists_its_helpers() -> None:
    """``actors.testing`` is a public module whose ``__all__`` names what it offers."""
    import actors.testing

    assert sorted(actors.testing.__all__) == ["connected", "in_memory", "running_actor", "serving"]
    assert all(callable(getattr(actors.testing, name)) for name in actors.testing.__all__)


def test_public_api_actors_lowlevel_holds_the_runtime_hooks() -> None:
    """``actors.lowlevel`` names the hooks a framework needs; they are not in ``actors``."""
    import actors.lowlevel

    hooks = [
        "ActorHost",
        "StreamSender",
        "duplex_stream",
        "freeze_long_lived",
        "method_kind",
        "pump_generator",
        "push_stream",
    ]
    assert sorted(actors.lowlevel.__all__) == sorted([*hooks, "serve_host"])
    assert not set(actors.lowlevel.__all__) & set(actors.__all__)
    assert repr(actors.lowlevel.ActorHost) == "<class 'actors.lowlevel.ActorHost'>"


@pytest.mark.parametrize("package", [trioserve, actors], ids=["trioserve", "actors"])
def test_public_names_say_their_public_module(package: types.ModuleType) -> None:
    """Public classes and functions name the package they are imported from (reprs,
    tracebacks), never a private module."""
    for name in package.__all__:
        obj = getattr(package, name)
        module = getattr(obj, "__module__", "") or ""
        assert not module.startswith(f"{package.__name__}._"), (name, module)
    assert repr(trioserve.DeploymentHandle).startswith("<class 'trioserve.DeploymentHandle'")
