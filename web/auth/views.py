"""POST /api/v1/auth/register, /login and /refresh."""

from __future__ import annotations

import hashlib
import uuid
from datetime import timedelta
from typing import NoReturn

from flask import Blueprint, Response, current_app, jsonify, request
from flask_jwt_extended import get_jwt, jwt_required
from redis.exceptions import RedisError

from config.settings import Settings
from db.base import utcnow
from db.credentials import find_session_for_refresh, start_session
from db.models import User
from db.users import UserExistsError, create_user, find_by_login, record_login_success
from web.auth.lockout import (
    INVALID_CREDENTIALS,
    count_failure,
    locked,
    refuse_locked,
    seconds_locked,
)
from web.database import get_session, keep_changes_on_error
from web.errors import Conflict, Unauthorized
from web.extensions import current_settings
from web.openapi import PUBLIC, REFRESH_TOKEN, documented
from web.request_audit import audit
from web.schemas.users import LoginRequest, TokenPair, UserCreate, UserRead
from web.security.passwords import hash_password, refuse_weak_password, verify_with_constant_work
from web.security.tokens import issue_tokens
from web.users.accounts import end_logins
from web.validation import load_body

bp = Blueprint("auth", __name__, url_prefix="/api/v1/auth")


def _start_login(user: User, family_id: uuid.UUID | None = None) -> tuple[TokenPair, uuid.UUID]:
    settings = current_settings()
    family_id = family_id or uuid.uuid4()
    body, refresh_jti = issue_tokens(user, family_id)
    start_session(
        session=get_session(),
        user_id=user.id,
        refresh_jti=refresh_jti,
        family_id=family_id,
        ttl=timedelta(seconds=settings.refresh_token_ttl_s),
        ip_address=request.remote_addr,
        user_agent=request.user_agent.string or None,
    )
    return TokenPair(**body), family_id


def _count_phantom_failure(login: str, settings: Settings) -> int:
    """Count a failure for a login that matches no active account, in Redis, as a real
    account counts it (db/users.py): failures within LOGIN_LOCKOUT_S of the first, and the
    one that reaches the limit locks for a whole LOGIN_LOCKOUT_S from then. Returns the
    seconds left of a lock, else 0."""
    redis = current_app.extensions["redis"]
    key = "omx:login-failures:" + hashlib.sha256(login.lower().encode()).hexdigest()
    lock = key + ":locked"
    try:
        left = int(redis.ttl(lock))
        if left > 0:
            return left
        with redis.pipeline() as pipe:
            pipe.incr(key)
            pipe.expire(key, settings.login_lockout_s, nx=True)
            failures, _ = pipe.execute()
        if failures < settings.login_max_failures:
            return 0
        with redis.pipeline() as pipe:
            pipe.set(lock, 1, ex=settings.login_lockout_s, nx=True)
            pipe.delete(key)  # a new window starts when the lock ends, as for an account
            pipe.ttl(lock)
            _, _, left = pipe.execute()
    except RedisError:
        return 0  # the answer is a 401 either way; only the lock imitation is lost
    return max(1, int(left))


@bp.post("/register")
@documented(
    "Create an account (a plain user)",
    description="Any role or other extra field in the body is dropped. Rate limited per IP "
    "(RATELIMIT_REGISTER).",
    body=UserCreate,
    responses={201: UserRead, 409: "The username or email is taken."},
    security=PUBLIC,
)
def register() -> tuple[Response, int]:
    account = load_body(UserCreate)
    # The schema checked the policy against the username; the email is known to it here.
    refuse_weak_password(account.password, username=account.username, email=account.email)
    try:
        user = create_user(
            session=get_session(),
            username=account.username,
            email=account.email,
            password_hash=hash_password(account.password, current_settings().bcrypt_rounds),
        )
    except UserExistsError as error:
        raise Conflict(str(error), code=f"{error.field}_taken") from None
    audit("auth.register", user_id=user.id, resource_type="users", resource_id=user.id)
    return jsonify(UserRead.model_validate(user).model_dump(mode="json")), 201


@bp.post("/login")
@documented(
    "Log in: a token pair",
    description="Takes a username or an email. Rate limited per IP (RATELIMIT_LOGIN); "
    "LOGIN_MAX_FAILURES wrong passwords lock the account for LOGIN_LOCKOUT_S.",
    body=LoginRequest,
    responses={
        200: TokenPair,
        401: "The username or password is incorrect (invalid_credentials).",
        429: "The account is locked (account_locked; see Retry-After).",
    },
    security=PUBLIC,
)
def login() -> Response:
    credentials = load_body(LoginRequest)
    settings = current_settings()
    user = find_by_login(session=get_session(), login=credentials.username, for_update=True)
    # Every branch (unknown, inactive, locked, wrong, right) does one bcrypt verification
    # before it answers, so the time tells none of them apart; a locked account and an
    # unknown name that "locked" answer alike. Every refusal is recorded: its audit entry
    # (and the failure counter) are kept although the request answers with an error.
    if user is None or not user.is_active:
        verify_with_constant_work(credentials.password, None, settings.bcrypt_rounds)
        _refuse_unknown(credentials, settings)
    right = verify_with_constant_work(
        credentials.password, user.password_hash, settings.bcrypt_rounds
    )
    left = seconds_locked(user)
    if left > 0:
        refuse_locked(user, left, action="auth.login_locked")
    if not right:
        count_failure(user, action="auth.login_failed")
    record_login_success(session=get_session(), user=user)
    tokens, family_id = _start_login(user)
    audit("auth.login", user_id=user.id, resource_type="user_sessions", resource_id=family_id)
    return jsonify(tokens.model_dump())


def _refuse_unknown(credentials: LoginRequest, settings: Settings) -> NoReturn:
    """No such active account: locking like a real account would, so that a lockout does
    not tell who exists (the caller has spent the bcrypt work already)."""
    audit("auth.login_failed", details={"reason": "unknown_or_inactive"})
    keep_changes_on_error()
    left = _count_phantom_failure(credentials.username, settings)
    if left:
        raise locked(left)
    raise Unauthorized(INVALID_CREDENTIALS, code="invalid_credentials")


@bp.post("/refresh")
@documented(
    "Swap a refresh token for a new pair",
    responses={
        200: TokenPair,
        401: "The refresh token is unknown, spent (the whole login is then revoked), "
        "revoked or expired.",
    },
    security=[REFRESH_TOKEN],
)
@jwt_required(refresh=True)
def refresh() -> Response:
    """Rotate: the presented refresh token is spent and a new pair issued in the same family."""
    claims = get_jwt()
    session = get_session()
    try:
        family_id = uuid.UUID(str(claims.get("fam")))
    except ValueError:
        raise Unauthorized("The refresh token is not known.", code="invalid_token") from None
    row = find_session_for_refresh(
        session=session, refresh_jti=str(claims["jti"]), family_id=family_id
    )
    if row is None:
        raise Unauthorized("The refresh token is not known.", code="invalid_token")

    if row.revoked_at is not None:
        if row.revoked_reason != "rotated":
            raise Unauthorized("The session has been revoked.", code="token_revoked")
        # A spent token came back: someone kept a copy. End the whole login, and keep that
        # although this request answers 401.
        end_logins([row.family_id], reason="refresh_reuse")
        audit(
            "auth.refresh_reuse",
            user_id=row.user_id,
            resource_type="user_sessions",
            resource_id=row.family_id,
        )
        keep_changes_on_error()
        raise Unauthorized(
            "The refresh token was already used; the session is revoked.", code="token_reused"
        )

    user = session.get(User, row.user_id)
    if row.expires_at <= utcnow() or user is None or not user.is_active:
        raise Unauthorized("The session has ended.", code="token_expired")

    row.revoked_at = utcnow()
    row.revoked_reason = "rotated"
    tokens, _ = _start_login(user, family_id=row.family_id)
    return jsonify(tokens.model_dump())
