"""Who is calling: a user behind a JWT or an API key, and what they may do.

Both credentials arrive as `Authorization: Bearer <token>`; API keys are recognised by their
`omx_` marker. The principal is resolved once per request and kept on `g`; what a credential
resolves to is also remembered for a few seconds in-process (web/security/principal_cache.py).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import wraps
from typing import Any, TypeVar, cast

from flask import current_app, g, request
from flask_jwt_extended import get_current_user, get_jwt, verify_jwt_in_request

from db.base import utcnow
from db.credentials import find_api_key
from db.models import User
from db.session import set_audit_context
from web.database import get_session
from web.errors import Forbidden, Unauthorized
from web.security import api_keys
from web.security.policy import Permission, permissions_for
from web.security.principal_cache import PrincipalCache

# Writing last_used_at on every call would turn each read into a write.
LAST_USED_RESOLUTION = timedelta(minutes=1)

ViewT = TypeVar("ViewT", bound=Callable[..., Any])


@dataclass(frozen=True)
class Principal:
    user_id: uuid.UUID
    role: str
    permissions: frozenset[Permission]
    family_id: uuid.UUID | None = None  # set when the caller used a login's JWT
    api_key_id: uuid.UUID | None = None  # set when the caller used an API key
    token_expires_at: float | None = None  # a JWT's `exp` (epoch seconds)
    # The account's own quotas and the key's narrower limits, by name (web/inference/quotas.py).
    quotas: Mapping[str, int] = field(default_factory=dict, compare=False)
    key_limits: Mapping[str, int] = field(default_factory=dict, compare=False)
    # The key's default webhook URL, for jobs that name none (docs/webhooks.md).
    key_webhook_url: str | None = field(default=None, compare=False)

    @property
    def user(self) -> User:
        """The caller's account row, read in this request's session (for views that show or
        change it; authorization needs only the fields above)."""
        user = get_session().get(User, self.user_id)
        if user is None or not _usable(user):
            raise _invalid_credential()
        return user

    def can(self, permission: Permission) -> bool:
        return permission in self.permissions


@dataclass(frozen=True)
class _KeyGrant:
    """What an API key resolved to, as cached: checked again for expiry at every use."""

    principal: Principal
    expires_at: datetime | None


def principal_cache() -> PrincipalCache:
    cache: PrincipalCache = current_app.extensions["principal_cache"]
    return cache


def _usable(user: User) -> bool:
    return user.is_active and user.deleted_at is None


def _invalid_credential() -> Unauthorized:
    return Unauthorized(
        "The API key is invalid, expired or revoked.",
        code="invalid_api_key",
        headers={"WWW-Authenticate": "Bearer"},
    )


def _bearer_token() -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _from_api_key(key: str) -> Principal:
    cache_key = f"apikey:{api_keys.hash_key(key)}"
    grant: _KeyGrant | None = principal_cache().get(cache_key)
    if grant is None:
        grant = _load_api_key(key)
        principal = grant.principal
        principal_cache().put(
            cache_key, grant, tags=(f"user:{principal.user_id}", f"key:{principal.api_key_id}")
        )
    if grant.expires_at is not None and grant.expires_at <= utcnow():
        raise _invalid_credential()
    return grant.principal


def _load_api_key(key: str) -> _KeyGrant:
    prefix = api_keys.prefix_of(key)
    if prefix is None:
        raise _invalid_credential()
    session = get_session()
    row = find_api_key(session=session, prefix=prefix)
    now = utcnow()
    if (
        row is None
        or not api_keys.matches(key, row.key_hash)
        or row.revoked_at is not None
        or (row.expires_at is not None and row.expires_at <= now)
    ):
        raise _invalid_credential()
    user = session.get(User, row.user_id)
    if user is None or not _usable(user):
        raise _invalid_credential()
    # Written at most once a minute per key (and per cache miss): a read is not a write.
    if row.last_used_at is None or now - row.last_used_at > LAST_USED_RESOLUTION:
        row.last_used_at = now
    principal = Principal(
        user.id,
        user.role,
        permissions_for(user.role, list(row.scopes)),
        api_key_id=row.id,
        quotas=dict(user.quotas or {}),
        key_limits=dict(row.limits or {}),
        key_webhook_url=row.webhook_url,
    )
    return _KeyGrant(principal, row.expires_at)


def _from_jwt(token: str | None) -> Principal | None:
    """flask-jwt-extended checks the signature, expiry and revocation (web/security/tokens.py
    answers the last from the cache when it can) and loads the account (likewise). A token
    verified moments ago is taken from the cache as it was, its expiry checked again; a
    logout or an account change evicts it (tagged with its login and its account)."""
    cache_key = f"jwt:{api_keys.hash_key(token)}" if token else None
    principal: Principal | None = principal_cache().get(cache_key) if cache_key else None
    if principal is None:
        if verify_jwt_in_request(optional=True) is None:
            return None
        account = cast(Account, get_current_user())
        claims = get_jwt()
        principal = Principal(
            account.id,
            account.role,
            permissions_for(account.role),
            family_id=uuid.UUID(str(claims["fam"])),
            token_expires_at=float(claims["exp"]),
            quotas=account.quotas,
        )
        if cache_key:
            tags = (f"user:{principal.user_id}", f"family:{principal.family_id}")
            principal_cache().put(cache_key, principal, tags=tags)
    if principal.token_expires_at is not None and principal.token_expires_at <= time.time():
        raise Unauthorized(
            "The token has expired.", code="token_expired", headers={"WWW-Authenticate": "Bearer"}
        )
    return principal


@dataclass(frozen=True)
class Account:
    """The fields of a user row that authorization needs; what the JWT user loader returns."""

    id: uuid.UUID
    role: str
    quotas: Mapping[str, int] = field(default_factory=dict, compare=False)


def current_principal() -> Principal | None:
    """The authenticated caller, or None when no credential was sent.

    A credential that was sent but is bad raises (401), it never degrades to anonymous.
    """
    if "principal" not in g:
        token = _bearer_token()
        principal = (
            _from_api_key(token) if token and api_keys.looks_like_key(token) else _from_jwt(token)
        )
        if principal is not None:
            # For the audit trigger, in this request's session, whenever it opens one.
            g.audit_user_id = str(principal.user_id)
            if "db_session" in g:
                set_audit_context(g.db_session, user_id=g.audit_user_id)
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
