"""The package's import graph: no cycles, and the layering of docs/architecture.md.

Only imports executed when a module loads count (module level, including ``try``/``if`` blocks at module
level); an import inside a function runs later and is how the two data readers that need each other
(``data.readers`` and ``data.volumes``) break their cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import medzsad

ROOT = Path(medzsad.__file__).parent

# Engine modules below the job layer that still import tracking (rendering and review copies); they are
# to move out (issue 15, rendering in one place). No other module may join this list.
ENGINE_TRACKING_DEBT = {("medzsad.engine.evaluate", "medzsad.tracking"), ("medzsad.engine.predict", "medzsad.tracking")}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _load_time_imports(tree: ast.Module, name: str, is_package: bool) -> set[str]:
    found: set[str] = set()
    stack: list[ast.AST] = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = name if is_package else name.rsplit(".", 1)[0]
                package = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{package}.{base}" if base else package
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            for field in ("body", "orelse", "finalbody", "handlers"):
                stack.extend(getattr(node, field, []))
        elif isinstance(node, ast.ExceptHandler):
            stack.extend(node.body)
    return found


def import_graph() -> dict[str, set[str]]:
    """``module -> medzsad modules it imports at load time``."""
    files = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        imported = _load_time_imports(ast.parse(path.read_text()), name, path.name == "__init__.py")
        graph[name] = {module for module in imported if module in files and module != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle():
    cycle = _cycle(import_graph())
    assert cycle is None, " -> ".join(cycle or [])


def test_layers():
    def crossings(source: str, targets: tuple[str, ...]) -> set[tuple[str, str]]:
        return {
            (module, target)
            for module, imported in import_graph().items()
            if module.startswith(source)
            for dependency in imported
            for target in targets
            if dependency == target or dependency.startswith(target + ".")
        }

    assert not crossings("medzsad.methods", ("medzsad.engine", "medzsad.tracking", "medzsad.data"))
    assert not crossings("medzsad.data", ("medzsad.methods", "medzsad.backbone", "medzsad.engine"))
    assert not crossings("medzsad.metrics", ("medzsad.methods", "medzsad.backbone", "medzsad.tracking"))
    below_jobs = {
        crossing
        for crossing in crossings("medzsad.engine", ("medzsad.tracking",))
        if crossing[0] not in ("medzsad.engine.jobs", "medzsad.engine.demo")
    }
    assert below_jobs <= ENGINE_TRACKING_DEBT, sorted(below_jobs - ENGINE_TRACKING_DEBT)
