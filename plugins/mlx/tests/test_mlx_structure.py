"""The plugin's modules import each other without a cycle, lazy (function-level) imports included."""

from __future__ import annotations

import ast
import pathlib

import sapient_backend_mlx

PACKAGE = pathlib.Path(sapient_backend_mlx.__file__).parent


def internal_imports(path: pathlib.Path) -> set[str]:
    """The plugin modules ``path`` imports anywhere in its body (``from . import x``, ``from .x import y``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names
                             if (PACKAGE / f"{alias.name}.py").is_file())
    return found


def test_no_import_cycle_inside_the_plugin():
    graph = {p.stem: internal_imports(p) for p in PACKAGE.glob("*.py")}
    graph["__init__"].discard("__init__")
    state: dict[str, str] = {}

    def visit(node, trail):
        if state.get(node) == "done":
            return
        assert state.get(node) != "active", f"import cycle: {' -> '.join(trail + [node])}"
        state[node] = "active"
        for nxt in sorted(graph.get(node, ())):
            visit(nxt, trail + [node])
        state[node] = "done"
    for module in sorted(graph):
        visit(module, [])
    assert "plugin" not in graph["cache"], "cache.py must not import plugin.py (it did, lazily, before)"
    assert {"device", "cache", "kernels"} <= graph["plugin"]
