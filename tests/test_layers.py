"""Imports run ops -> web -> workers -> db -> config, never back."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Which of our top-level packages each layer may import.
ALLOWED = {
    "config": {"config"},
    "db": {"db", "config"},
    "workers": {"workers", "db", "config"},
    "web": {"web", "workers", "db", "config"},
    # Operator tools sit on top, like wsgi.py: they may use everything, nothing uses them.
    "ops": {"ops", "web", "workers", "db", "config"},
}


def _our_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        found |= {name.split(".")[0] for name in names if name.split(".")[0] in ALLOWED}
    return found


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_layer_imports_only_downwards(layer: str) -> None:
    files = sorted((ROOT / layer).rglob("*.py"))
    assert files, f"{layer}/ has no modules"
    wrong = {
        str(path.relative_to(ROOT)): sorted(_our_imports(path) - ALLOWED[layer])
        for path in files
        if _our_imports(path) - ALLOWED[layer]
    }
    assert wrong == {}


def test_wsgi_only_builds_the_app() -> None:
    assert (
        ROOT / "wsgi.py"
    ).read_text().strip() == "from web import create_app\n\napp = create_app()"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """Module -> the modules of ours it imports (at the top or inside a function; a lazy
    import is how a circle hides). `from package import name` counts as importing
    `package.name` when that is a module, else `package`."""
    paths = [p for layer in ALLOWED for p in (ROOT / layer).rglob("*.py")]
    modules = {_module_name(path): path for path in paths}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                edges |= {alias.name for alias in node.names if alias.name in modules}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    target = full if full in modules else node.module
                    if target in modules:
                        edges.add(target)
        edges.discard(name)
        graph[name] = edges
    return graph


def _a_circle(graph: dict[str, set[str]]) -> list[str] | None:
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return [*path[path.index(module) :], module]
        if module in done:
            return None
        for imported in sorted(graph[module]):
            found = visit(imported, [*path, module])
            if found:
                return found
        done.add(module)
        return None

    for module in sorted(graph):
        found = visit(module, [])
        if found:
            return found
    return None


def test_no_module_imports_itself_back_through_others() -> None:
    """workers.dispatch once imported the inference task, which imported dispatch back
    inside a function: such circles make import order matter and hide the real layering."""
    assert _a_circle(_import_graph()) is None


def test_the_circle_finder_finds_one() -> None:
    assert _a_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _a_circle({"a": {"b"}, "b": set()}) is None
