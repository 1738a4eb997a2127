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
