"""JWTs (flask-jwt-extended): issuing token pairs, immediate revocation, our error shape.

Access tokens carry `fam`, the login's session family. Revoking a family writes a Redis key
that outlives every access token it could have issued, so logout takes effect on the very
next request rather than at expiry.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from flask import Flask, Response, current_app
from flask_jwt_extended import JWTManager, create_access_token, create_refresh_token, decode_token
from redis import Redis
from redis.exceptions import RedisError

from config.settings import Settings
from db.models import User
from web.database import get_session
from web.errors import ServiceUnavailable, error_response
from web.extensions import current_settings
from web.security.principal import Account, principal_cache

REVOKED_FAMILY_KEY = "omx:revoked:family:{}"


def _redis() -> Redis:
    client: Redis = current_app.extensions["redis"]
    return client


def issue_tokens(user: User, family_id: uuid.UUID) -> tuple[dict[str, Any], str]:
    """The login answer for `user` in session family `family_id`, and the refresh token's jti."""
    claims = {"fam": str(family_id)}
    access = create_access_token(identity=str(user.id), additional_claims=claims)
    refresh = create_refresh_token(identity=str(user.id), additional_claims=claims)
    body = {
        "access_token": access,
        "refresh_token": refresh,
        "token_type": "Bearer",
        "expires_in": current_settings().access_token_ttl_s,
    }
    return body, str(decode_token(refresh)["jti"])


def revoke_families_now(family_ids: Iterable[uuid.UUID]) -> None:
    """Reject every access token of these families from now on (until they would expire)."""
    family_ids = list(family_ids)
    ttl = current_settings().access_token_ttl_s + 60
    try:
        with _redis().pipeline(transaction=False) as pipe:
            for family_id in family_ids:
                pipe.set(REVOKED_FAMILY_KEY.format(family_id), 1, ex=ttl)
            pipe.execute()
    except RedisError as error:
        raise ServiceUnavailable("Could not revoke the session; try again.") from error
    # After the blocklist has them: a process that re-reads it from now on sees them revoked.
    principal_cache().forget(family_ids=family_ids)


def _is_revoked(_header: dict[str, Any], payload: dict[str, Any]) -> bool:
    family = payload.get("fam")
    if not family:
        return True  # every token we issue names its family
    cache_key = f"family:{family}"
    if principal_cache().get(cache_key):
        return False  # seen live moments ago; a logout evicts it (principal_cache.py)
    try:
        revoked = bool(_redis().exists(REVOKED_FAMILY_KEY.format(family)))
    except RedisError as error:
        # Fail closed: without the blocklist we cannot tell a logged-out token from a live one.
        raise ServiceUnavailable("Token revocation cannot be checked right now.") from error
    if not revoked:
        principal_cache().put(cache_key, True, tags=(cache_key, f"user:{payload.get('sub')}"))
    return revoked


def _load_user(_header: dict[str, Any], payload: dict[str, Any]) -> Account | None:
    try:
        user_id = uuid.UUID(str(payload["sub"]))
    except (KeyError, ValueError):
        return None
    cache_key = f"user:{user_id}"
    account: Account | None = principal_cache().get(cache_key)
    if account is not None:
        return account
    user = get_session().get(User, user_id)
    if user is None or not user.is_active or user.deleted_at is not None:
        return None
    account = Account(user.id, user.role, dict(user.quotas or {}))
    principal_cache().put(cache_key, account, tags=(cache_key,))
    return account


def _unauthorized(code: str, message: str) -> Response:
    return error_response(401, code, message, headers={"WWW-Authenticate": "Bearer"})


def init_jwt(app: Flask, settings: Settings) -> JWTManager:
    app.config.update(
        JWT_SECRET_KEY=settings.jwt_secret_key,
        JWT_ALGORITHM="HS256",
        JWT_DECODE_ALGORITHMS=["HS256"],  # "alg": "none" and anything else is refused
        JWT_TOKEN_LOCATION=["headers"],
        JWT_ACCESS_TOKEN_EXPIRES=timedelta(seconds=settings.access_token_ttl_s),
        JWT_REFRESH_TOKEN_EXPIRES=timedelta(seconds=settings.refresh_token_ttl_s),
    )
    jwt = JWTManager(app)
    jwt.token_in_blocklist_loader(_is_revoked)
    jwt.user_lookup_loader(_load_user)
    jwt.expired_token_loader(
        lambda _h, _p: _unauthorized("token_expired", "The token has expired.")
    )
    jwt.invalid_token_loader(
        lambda reason: _unauthorized("invalid_token", f"The token is not valid: {reason}.")
    )
    jwt.unauthorized_loader(
        lambda _reason: _unauthorized("unauthorized", "Authentication is required.")
    )
    jwt.revoked_token_loader(
        lambda _h, _p: _unauthorized("token_revoked", "The token has been revoked.")
    )
    jwt.user_lookup_error_loader(
        lambda _h, _p: _unauthorized("invalid_token", "The account is no longer active.")
    )
    return jwt
