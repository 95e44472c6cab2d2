"""The package's import graph: no cycles, and no imports inside functions that would hide one."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "draftwise"

# Imports of draftwise modules inside a function, each for a reason other than a cycle: the heavy web
# stack and matplotlib load only for the commands that use them.
DEFERRED = {
    ("draftwise.commands", "draftwise.bench.plot"): "matplotlib, only for `draftwise plot`",
    ("draftwise.serve.main", "draftwise.serve.app"): "FastAPI, only when serving",
    ("draftwise.serve.main", "draftwise.serve.http"): "uvicorn, only when serving",
    ("draftwise.serve.main", "draftwise.serve.jobs"): "pydantic schemas, only when serving",
    ("draftwise.serve", "draftwise.serve.app"): "FastAPI, only when create_app is used",
}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _imported(module: str, path: Path, node: ast.Import | ast.ImportFrom, known: set[str]) -> list[str]:
    """The draftwise modules an import statement loads (``from a import b`` loads ``a.b`` if a module)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name in known]
    base = node.module or ""
    if node.level:
        package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        package = package[: len(package) - node.level + 1]
        base = ".".join(package + ([node.module] if node.module else []))
    loaded = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in known]
    return loaded or ([base] if base in known else [])


def _graph() -> tuple[dict[str, set[str]], set[tuple[str, str]]]:
    """``(module -> modules it imports anywhere, {(module, imported) for imports inside functions})``."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    inside: set[tuple[str, str]] = set()
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        nested = {id(n) for f in functions for n in ast.walk(f)}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in _imported(name, path, node, set(modules)):
                    if target == name or name.startswith(target + "."):
                        continue  # a package's own __init__ is loaded anyway
                    graph[name].add(target)
                    if id(node) in nested:
                        inside.add((name, target))
    return graph, inside


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the modules along it, or ``None``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt, path + [nxt])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_the_walk_sees_the_package():
    graph, _ = _graph()
    assert {"draftwise.cli", "draftwise.methods.base", "draftwise.serve.app"} <= set(graph)
    assert "draftwise.methods.base" in graph["draftwise.methods.specpc"]
    assert "draftwise.serve.app" in graph["draftwise.serve.main"]  # an import inside a function


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles():
    graph, _ = _graph()
    assert _cycle(graph) is None


def test_imports_inside_functions_are_only_the_deferred_heavy_ones():
    _, inside = _graph()
    assert inside <= set(DEFERRED), f"imports inside functions: {sorted(inside - set(DEFERRED))}"
