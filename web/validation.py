"""The input gate, and parsing request bodies and query strings into pydantic schemas.

Every request passes `gate_request` before any view (web/request_context.py), the native API
and the front doors alike. It refuses with 400, naming where (`details.field`, a path such as
`body.messages.3.content` or `query.q`):

- `invalid_characters`: a NUL character or a lone UTF-16 surrogate in a string or an object
  key of the body, or in the path or a query-string name or value (PostgreSQL text cannot
  hold NUL; a lone surrogate is not a character, and no encoder writes it);
- `invalid_number`: NaN, Infinity, -Infinity, or a number that overflows to infinity (1e999);
  Python's json takes them, JSON does not, and PostgreSQL's JSONB cannot hold them;
- `too_deep`: arrays and objects nested deeper than INPUT_MAX_DEPTH, found by scanning the
  raw body before it is parsed (so the parser never recurses that far);
- `too_large`: a string (or key) longer than INPUT_MAX_STRING_CHARS characters, or an array
  or object with more than INPUT_MAX_ITEMS items.

A body that is not JSON at all is left to the view, which answers as it always did (the
native API 400 `invalid_json`, each door in its own words). The parsed body is Werkzeug's
cached one, so views read it with `request.get_json` without parsing it again.
"""

from __future__ import annotations

import json
import math
import re
from itertools import accumulate
from typing import Any, TypeVar

from flask import request
from pydantic import BaseModel, ValidationError
from werkzeug.datastructures import MultiDict

from web.errors import (
    BadRequest,
    InvalidCharacters,
    InvalidNumber,
    TooDeep,
    TooLarge,
    UnsupportedMediaType,
    ValidationFailed,
    validation_details,
)
from web.extensions import current_settings

SchemaT = TypeVar("SchemaT", bound=BaseModel)

# A JSON string literal (unrolled, so a megabyte of base64 is one fast character-class run),
# and everything that is neither a bracket nor a brace once strings are gone.
_STRING_LITERAL = r'"[^"\\]*(?:\\.[^"\\]*)*"'
_STRINGS = re.compile(_STRING_LITERAL.encode(), re.S)
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))  # for bytes.translate
_STEP = tuple(1 if byte in b"[{" else -1 if byte in b"]}" else 0 for byte in range(256))
# For a path to the first level too deep: string literals and structural characters.
_TOKENS = re.compile(_STRING_LITERAL + r"|[\[\]{},:]", re.S)
# How many tokens the path search reads before giving up (the refusal stands without it).
_PATH_SEARCH_TOKENS = 200_000
_UTF8 = frozenset({"utf-8", "utf-8-sig"})


def load_body(schema: type[SchemaT]) -> SchemaT:
    """The JSON body as `schema`: 415 if it is not JSON, 400 if it does not parse, else 422."""
    if not request.is_json:
        raise UnsupportedMediaType()
    payload = request.get_json(silent=True)  # parsed and checked by the gate
    if payload is None:
        raise BadRequest("The body is not valid JSON.", code="invalid_json")
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


def gate_request(*, with_body: bool) -> None:
    """The input gate (see the module's docstring): the query string always, the body when
    `with_body` (a mutating request that has one; the doors' bodies count as JSON whatever
    their Content-Type, web/security/hygiene.py)."""
    _check_string(request.path, "path", None)
    refuse_nul(request.args, "query")
    if not with_body:
        return
    settings = current_settings()
    data = request.get_data(cache=True)
    if not data:
        return
    refuse_deep_nesting(data, settings.input_max_depth)
    body = request.get_json(force=True, silent=True)  # cached for the view
    if body is not None:
        check_value(
            body,
            "body",
            max_string_chars=settings.input_max_string_chars,
            max_items=settings.input_max_items,
        )


def refuse_nul(value: object, where: str) -> None:
    """PostgreSQL text cannot hold NUL; refuse it here rather than fail in the database. For
    a query string (a MultiDict, or a dict of strings and lists of them) or a parsed body."""
    if isinstance(value, MultiDict):  # every value of every name, as load_query sees them
        value = {key: vals if len(vals) > 1 else vals[0] for key, vals in value.lists()}
    check_value(value, where, max_string_chars=None, max_items=None)


def check_value(
    value: Any, where: str, *, max_string_chars: int | None, max_items: int | None
) -> None:
    """Walk `value` (a parsed JSON value) without recursion; raise on the first NUL,
    non-finite number, over-long string or key, or array or object with too many items."""
    # Each entry: a value and its path, kept as (parent path, key) until an error needs it.
    stack: list[tuple[Any, Any]] = [(value, where)]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            _check_string(item, path, max_string_chars)
        elif isinstance(item, float):
            if not math.isfinite(item):
                field = _path(path)
                raise InvalidNumber(
                    f"{field} is not a finite number (NaN, Infinity and numbers beyond "
                    "about 1.8e308 are refused).",
                    details={"field": field},
                )
        elif isinstance(item, dict):
            _check_count(len(item), path, max_items, "keys")
            for key, member in item.items():
                _check_string(key, (path, key), max_string_chars, key=True)
                stack.append((member, (path, key)))
        elif isinstance(item, list | tuple):
            _check_count(len(item), path, max_items, "items")
            stack.extend((member, (path, index)) for index, member in enumerate(item))


# NUL, which PostgreSQL text cannot hold, and lone UTF-16 surrogates (JSON's "\ud800"),
# which are not characters at all: no encoder writes them, so they would fail in the driver.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _check_string(text: str, path: Any, limit: int | None, *, key: bool = False) -> None:
    what = "The key" if key else "The value"
    found = _UNSTORABLE.search(text)
    if found:
        field = _path(path)
        kind = (
            "a NUL character" if found.group() == "\x00" else "a lone surrogate (not a character)"
        )
        raise InvalidCharacters(f"{what} at {field} contains {kind}.", details={"field": field})
    if limit is not None and len(text) > limit:
        field = _path(path)
        raise TooLarge(
            f"{what} at {field} is longer than {limit} characters.",
            details={"field": field, "limit": limit},
        )


def _check_count(count: int, path: Any, limit: int | None, noun: str) -> None:
    if limit is not None and count > limit:
        field = _path(path)
        raise TooLarge(
            f"{field} has more than {limit} {noun}.", details={"field": field, "limit": limit}
        )


def _path(path: Any) -> str:
    """`body.messages.3.content` from the linked (parent, key) pairs of `check_value`."""
    parts: list[str] = []
    while isinstance(path, tuple):
        path, key = path
        parts.append(_shown(str(key)))
    parts.append(str(path))
    return ".".join(reversed(parts))


def _shown(key: str) -> str:
    """A key as a path names it: NUL escaped, and cut short if it is long."""
    key = key.replace("\x00", "\\u0000")
    return key if len(key) <= 64 else key[:64] + "..."


def refuse_deep_nesting(data: bytes, limit: int) -> None:
    """400 `too_deep` when the raw body nests arrays and objects deeper than `limit`, found
    before parsing: the parser recurses once per level. Only when the body holds more opening
    brackets than `limit` at all are string literals dropped (a bracket in a string is text)
    and the levels counted, in C (translate, a regex, accumulate) rather than a Python loop:
    about a second for 32 MB of brackets."""
    encoding = json.detect_encoding(data)
    # UTF-8 bytes are scanned as they are: no byte of a multibyte character is ASCII.
    raw = data if encoding in _UTF8 else data.decode(encoding, errors="replace").encode()
    brackets = raw.translate(None, _NOT_BRACKETS)
    if brackets.count(b"[") + brackets.count(b"{") <= limit:
        return
    brackets = _STRINGS.sub(b"", raw).translate(None, _NOT_BRACKETS)
    if max(accumulate(map(_STEP.__getitem__, brackets)), default=0) <= limit:
        return
    field = _deep_path(raw.decode("utf-8", errors="replace"), limit)
    raise TooDeep(
        f"The body nests arrays and objects deeper than {limit} levels"
        + (f" (at {field})." if field else "."),
        details={"field": field, "limit": limit},
    )


def _deep_path(text: str, limit: int) -> str | None:
    """The path of the first array or object nested deeper than `limit`, or None when it
    lies too far into the body to look for."""
    keys: list[Any] = []  # for each open array or object: its index or key so far
    objects: list[bool] = []  # for each: whether it is an object
    expect_key = False
    for number, match in enumerate(_TOKENS.finditer(text)):
        if number > _PATH_SEARCH_TOKENS:
            return None
        mark = match.group()
        if mark in ("[", "{"):
            if len(keys) >= limit:
                return ".".join(["body", *(_shown(str(key)) for key in keys)])
            keys.append(None if mark == "{" else 0)
            objects.append(mark == "{")
            expect_key = mark == "{"
        else:
            expect_key = _follow(mark, keys, objects, expect_key=expect_key)
    return None


def _follow(mark: str, keys: list[Any], objects: list[bool], *, expect_key: bool) -> bool:
    """Track a token other than an opening bracket; return whether an object key is next."""
    if mark in ("]", "}"):
        if keys:
            keys.pop()
            objects.pop()
        return False
    if not keys or mark == ":":
        return False
    if mark == ",":
        if objects[-1]:
            return True
        keys[-1] += 1
    elif expect_key:  # a string literal where a key goes
        try:
            keys[-1] = json.loads(mark)
        except ValueError:
            keys[-1] = mark
    return False
