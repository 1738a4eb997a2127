"""API key format: `omx_<prefix>_<secret>`. Only a SHA-256 of the whole key is stored.

The key carries 256 bits of randomness, so a fast hash is enough (no bcrypt per request);
the prefix finds the row without scanning.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

KEY_MARKER = "omx_"
PREFIX_LENGTH = 10


def generate() -> tuple[str, str]:
    """A new key and its lookup prefix. The key is shown to its owner once."""
    prefix = secrets.token_hex(PREFIX_LENGTH // 2)
    return f"{KEY_MARKER}{prefix}_{secrets.token_urlsafe(32)}", prefix


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def looks_like_key(token: str) -> bool:
    return token.startswith(KEY_MARKER)


def prefix_of(key: str) -> str | None:
    body = key.removeprefix(KEY_MARKER)
    prefix, sep, secret = body.partition("_")
    if not sep or len(prefix) != PREFIX_LENGTH or not secret:
        return None
    return prefix


def matches(key: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_key(key), stored_hash)
