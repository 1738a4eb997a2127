"""JSON Schemas for the document, from pydantic, all in one pass.

Every type the document names is registered first, then pydantic writes them together, so a
model used by several operations becomes one entry of `components/schemas` and every use is a
`$ref` to it. Request bodies and query strings use pydantic's "validation" mode (what we
accept), answers its "serialization" mode (what we send: aliases, computed fields).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, Literal

from pydantic import BaseModel, TypeAdapter

Mode = Literal["validation", "serialization"]
REF_TEMPLATE = "#/components/schemas/{model}"
REF_PREFIX = REF_TEMPLATE.removesuffix("{model}")


class SchemaRegistry:
    def __init__(self) -> None:
        self._adapters: dict[tuple[Hashable, Mode], TypeAdapter[Any]] = {}
        self._schemas: dict[tuple[Hashable, Mode], dict[str, Any]] | None = None
        self.components: dict[str, Any] = {}

    def add(self, annotation: Any, mode: Mode) -> None:
        if self._schemas is not None:
            raise RuntimeError("add every type before generate()")
        self._adapters.setdefault((annotation, mode), TypeAdapter(annotation))

    def generate(self) -> None:
        inputs = [(key, mode, adapter) for (key, mode), adapter in self._adapters.items()]
        by_key, definitions = TypeAdapter.json_schemas(inputs, ref_template=REF_TEMPLATE)
        self._schemas = {(key, mode): schema for (key, mode), schema in by_key.items()}
        self.components = dict(sorted(definitions.get("$defs", {}).items()))

    def schema(self, annotation: Any, mode: Mode) -> dict[str, Any]:
        """The schema to put where `annotation` is used (usually a `$ref`)."""
        if self._schemas is None:
            raise RuntimeError("generate() first")
        return self._schemas[(annotation, mode)]

    def properties(self, model: type[BaseModel], mode: Mode) -> tuple[dict[str, Any], set[str]]:
        """A model's properties and required names, its `$ref` followed (query strings are
        documented one parameter per field)."""
        schema = self.schema(model, mode)
        reference = schema.get("$ref")
        if isinstance(reference, str):
            schema = self.components[reference.removeprefix(REF_PREFIX)]
        return dict(schema.get("properties", {})), set(schema.get("required", []))
