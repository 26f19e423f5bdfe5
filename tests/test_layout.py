"""The import graph of each package is a DAG, and the layout says where code runs."""

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
