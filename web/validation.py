"""Parse request bodies and query strings into pydantic schemas, or fail with a JSON 4xx."""

from __future__ import annotations

from typing import TypeVar

from flask import request
from pydantic import BaseModel, ValidationError

from web.errors import BadRequest, UnsupportedMediaType, ValidationFailed, validation_details

SchemaT = TypeVar("SchemaT", bound=BaseModel)


def load_body(schema: type[SchemaT]) -> SchemaT:
    """The JSON body as `schema`: 415 if it is not JSON, 400 if it does not parse, else 422."""
    if not request.is_json:
        raise UnsupportedMediaType()
    try:
        payload = request.get_json(silent=True)
    except RecursionError:  # nesting deeper than the parser goes
        payload = None
    if payload is None:
        raise BadRequest("The body is not valid JSON.", code="invalid_json")
    refuse_nul(payload, "body")
    try:
        return schema.model_validate(payload)
    except ValidationError as error:
        raise ValidationFailed(details=validation_details(error, prefix="body")) from None


def load_query(schema: type[SchemaT]) -> SchemaT:
    """The query string as `schema` (repeated keys become lists): 422 when invalid."""
    raw = {key: values if len(values) > 1 else values[0] for key, values in request.args.lists()}
    refuse_nul(raw, "query")
    try:
        return schema.model_validate(raw)
    except ValidationError as error:
        raise ValidationFailed(details=validation_details(error, prefix="query")) from None


def refuse_nul(value: object, where: str) -> None:
    """PostgreSQL text cannot hold NUL; refuse it here rather than fail in the database."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                raise BadRequest(
                    f"The {where} contains a NUL character.", code="invalid_characters"
                )
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
