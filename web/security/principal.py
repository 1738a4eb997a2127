"""Who is calling: a user behind a JWT or an API key, and what they may do.

Both credentials arrive as `Authorization: Bearer <token>`; API keys are recognised by their
`omx_` marker. The principal is resolved once per request and kept on `g`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from functools import wraps
from typing import Any, TypeVar, cast

from flask import g, request
from flask_jwt_extended import get_current_user, get_jwt, verify_jwt_in_request

from db.base import utcnow
from db.credentials import find_api_key
from db.models import User
from db.session import set_audit_context
from web.database import get_session
from web.errors import Forbidden, Unauthorized
from web.security import api_keys
from web.security.policy import Permission, permissions_for

# Writing last_used_at on every call would turn each read into a write.
LAST_USED_RESOLUTION = timedelta(minutes=1)

ViewT = TypeVar("ViewT", bound=Callable[..., Any])


@dataclass(frozen=True)
class Principal:
    user: User
    permissions: frozenset[Permission]
    family_id: uuid.UUID | None = None  # set when the caller used a login's JWT
    api_key_id: uuid.UUID | None = None  # set when the caller used an API key

    @property
    def user_id(self) -> uuid.UUID:
        return self.user.id

    def can(self, permission: Permission) -> bool:
        return permission in self.permissions


def _bearer_token() -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _from_api_key(key: str) -> Principal:
    invalid = Unauthorized(
        "The API key is invalid, expired or revoked.",
        code="invalid_api_key",
        headers={"WWW-Authenticate": "Bearer"},
    )
    prefix = api_keys.prefix_of(key)
    if prefix is None:
        raise invalid
    session = get_session()
    row = find_api_key(session=session, prefix=prefix)
    now = utcnow()
    if (
        row is None
        or not api_keys.matches(key, row.key_hash)
        or row.revoked_at is not None
        or (row.expires_at is not None and row.expires_at <= now)
    ):
        raise invalid
    user = session.get(User, row.user_id)
    if user is None or not user.is_active or user.deleted_at is not None:
        raise invalid
    if row.last_used_at is None or now - row.last_used_at > LAST_USED_RESOLUTION:
        row.last_used_at = now
    return Principal(user, permissions_for(user.role, list(row.scopes)), api_key_id=row.id)


def _from_jwt() -> Principal | None:
    if verify_jwt_in_request(optional=True) is None:
        return None
    user = cast(User, get_current_user())
    return Principal(user, permissions_for(user.role), family_id=uuid.UUID(str(get_jwt()["fam"])))


def current_principal() -> Principal | None:
    """The authenticated caller, or None when no credential was sent.

    A credential that was sent but is bad raises (401), it never degrades to anonymous.
    """
    if "principal" not in g:
        token = _bearer_token()
        principal = (
            _from_api_key(token) if token and api_keys.looks_like_key(token) else _from_jwt()
        )
        if principal is not None:
            set_audit_context(get_session(), user_id=str(principal.user_id))
        g.principal = principal
    return cast(Principal | None, g.principal)


def authenticated() -> Principal:
    principal = current_principal()
    if principal is None:
        raise Unauthorized(headers={"WWW-Authenticate": "Bearer"})
    return principal


def require(permission: Permission) -> Callable[[ViewT], ViewT]:
    """Guard a view: 401 without valid credentials, 403 without `permission`."""

    def decorator(view: ViewT) -> ViewT:
        @wraps(view)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            if not authenticated().can(permission):
                raise Forbidden()
            return view(*args, **kwargs)

        guarded.required_permission = permission  # type: ignore[attr-defined]
        return cast(ViewT, guarded)

    return decorator
