"""An earlier revision's module, for a migration that changes a function it created in one
place: the new text is the old one with a part replaced, and the downgrade is the old text.
The versions folder is not a package: alembic loads its files by path, and so does this."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

VERSIONS = Path(__file__).with_name("versions")


def revision_module(filename: str) -> ModuleType:
    path = VERSIONS / filename
    spec = importlib.util.spec_from_file_location(f"_revision_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def replacing(function_text: str) -> str:
    """A CREATE FUNCTION as CREATE OR REPLACE FUNCTION (the same signature)."""
    return function_text.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)
