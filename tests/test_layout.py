"""The import graph of each package is a DAG, the layout says where code runs, and the tests
of a room's modules mirror the room."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph(package: str) -> dict[str, set[str]]:
    """Module -> the package's modules it imports: every import, function-level and
    typing-only ones included."""
    files = sorted((ROOT / package).rglob("*.py"))
    modules = {_module_name(f): f for f in files}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        is_pkg = path.name == "__init__.py"
        here = name.split(".") if is_pkg else name.split(".")[:-1]
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here[: len(here) - node.level + 1]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
            for target in targets:
                # importing a.b.c imports a and a.b too, but a package's __init__ importing
                # its own submodules is not an edge back up: count the deepest known module
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name and not name.startswith(target + "."):
                    graph[name].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of modules, or None (depth-first search)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_reports_a_cycle() -> None:
    """The checker itself finds a cycle when there is one."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.slow
@pytest.mark.parametrize("package", ["actors", "trioserve"])
def test_package_imports_have_no_cycle(package: str) -> None:
    """No module imports one that (directly or not) imports it back, counting imports made
    for type checking only: the layers read top-down for people as well as for Python."""
    cycle = find_cycle(import_graph(package))
    assert cycle is None, " -> ".join(cycle or [])


@pytest.mark.slow
def test_trioserve_uses_only_public_actors() -> None:
    """trioserve imports only the public modules of the actor runtime."""
    public = {"actors", "actors.exceptions", "actors.lowlevel", "actors.testing"}
    for path in sorted((ROOT / "trioserve").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            for mod in names:
                if mod.split(".")[0] == "actors":
                    assert mod in public, f"{path.name} imports {mod}"


ROOMS = {
    "_handles": "every process that calls deployments",
    "_control": "the serve process only",
    "_replica": "inside each replica",
    "_http": "HTTP ingress, in the serve process",
}


def test_rooms_are_documented_in_readme() -> None:
    """Each room of trioserve/ exists and the README's Layout section names it."""
    readme = (ROOT / "README.md").read_text()
    layout = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    for room in ROOMS:
        assert (ROOT / "trioserve" / room / "__init__.py").exists()
        assert f"{room}/" in layout, room
    for path in sorted((ROOT / "trioserve").iterdir()):
        if path.suffix == ".py" or (path.is_dir() and not path.name.startswith("__")):
            assert path.name in layout or path.stem in layout, path.name


def mirror_mismatches(tests_dir: Path, package_dir: Path) -> list[str]:
    """What breaks the mirror between ``tests_dir`` and ``package_dir`` below their room
    folders (``_<room>/``): a test folder with no package folder at the same place, or no
    ``__init__.py`` (test files of one name would collide), and a ``test_*.py`` file named
    after no module there (``test_<module>.py`` or ``test_<module>_<topic>.py``)."""
    problems = []
    rooms = [d for d in sorted(tests_dir.iterdir()) if d.is_dir() and d.name.startswith("_")]
    folders = [f for room in rooms for f in [room, *sorted(room.rglob("*"))] if f.is_dir()]
    for folder in folders:
        if "__pycache__" in folder.parts:
            continue
        where = folder.relative_to(tests_dir)
        mirror = package_dir / where
        if not (mirror / "__init__.py").exists():
            problems.append(f"{where}/: no package {package_dir.name}/{where}/")
            continue
        if not (folder / "__init__.py").exists():
            problems.append(f"{where}/: no __init__.py")
        modules = {p.stem for p in mirror.glob("*.py") if p.stem != "__init__"}
        modules |= {p.parent.name for p in mirror.glob("*/__init__.py")}
        for test in sorted(folder.glob("test_*.py")):
            name = test.stem.removeprefix("test_")
            if not any(name == m or name.startswith(m + "_") for m in modules):
                problems.append(f"{where / test.name}: no module of that name in {mirror.name}/")
    return problems


def test_mirror_mismatches_reports_each_break(tmp_path: Path) -> None:
    """The checker itself names a misnamed test file, a folder without ``__init__.py`` and
    a folder the package lacks, and accepts ``test_<module>_<topic>.py``."""
    package, tests = tmp_path / "pkg", tmp_path / "tests"
    for path in ["_room/__init__.py", "_room/router.py", "_room/sub/__init__.py"]:
        (package / path).parent.mkdir(parents=True, exist_ok=True)
        (package / path).touch()
    for path in [
        "_room/__init__.py",
        "_room/test_router.py",
        "_room/test_router_retries.py",
        "_room/test_routing.py",
        "_room/test_sub.py",
        "_room/sub/test_x.py",
        "_other/__init__.py",
        "helpers.py",
    ]:
        (tests / path).parent.mkdir(parents=True, exist_ok=True)
        (tests / path).touch()
    assert mirror_mismatches(tests, package) == [
        "_other/: no package pkg/_other/",
        "_room/test_routing.py: no module of that name in _room/",
        "_room/sub/: no __init__.py",
        "_room/sub/test_x.py: no module of that name in sub/",
    ]


def test_room_tests_are_named_after_the_room_modules() -> None:
    """A test file under ``tests/trioserve/_<room>/`` tests one module of
    ``trioserve/_<room>/`` and is named after it: the tests mirror the package."""
    tests_dir = ROOT / "tests" / "trioserve"
    assert {d.name for d in tests_dir.iterdir() if d.name in ROOMS} == set(ROOMS)
    assert mirror_mismatches(tests_dir, ROOT / "trioserve") == []
