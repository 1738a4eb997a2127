"""The caller's own account: logout, sessions, profile, API keys, export, deletion."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from flask import Blueprint, Response, jsonify
from sqlalchemy import select

from db.credentials import (
    add_api_key,
    list_api_keys,
    list_live_sessions,
    utcnow,
)
from db.models import ApiKey, AuditLogEntry, InferenceRequest, UserSession
from db.users import find_conflict
from web.auth.lockout import confirm_password
from web.database import get_session
from web.errors import BadRequest, Conflict, NotFound
from web.extensions import current_settings
from web.openapi import documented
from web.request_audit import audit
from web.schemas.common import Items
from web.schemas.users import (
    AccountDelete,
    AccountExport,
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyRead,
    ProfileUpdate,
    SessionRead,
    UserRead,
)
from web.security import api_keys
from web.security.passwords import hash_password, refuse_weak_password
from web.security.policy import Permission
from web.security.principal import authenticated, require
from web.users.accounts import (
    end_logins,
    end_sessions,
    erase_account,
    forget_credentials,
    refuse_removing_last_admin,
    revoke_all_api_keys,
)
from web.validation import load_body
from web.webhooks.guard import checked_webhook

bp = Blueprint("users", __name__, url_prefix="/api/v1/users")

MAX_LIVE_API_KEYS = 50
LOCKED = "The account is locked after repeated wrong passwords (account_locked; see Retry-After)."


def _no_content() -> tuple[str, int]:
    return "", 204


@bp.post("/logout")
@documented(
    "Log out: end this login now",
    description="The login's refresh token and every access token it issued stop working at once.",
    responses={204: None, 400: "Called with an API key, which has no login to end."},
)
@require(Permission.PROFILE)
def logout() -> tuple[str, int]:
    principal = authenticated()
    if principal.family_id is None:
        raise BadRequest(
            "API keys have no session to end; revoke the key instead.", code="not_a_session"
        )
    end_logins([principal.family_id], reason="logout")
    audit(
        "auth.logout",
        user_id=principal.user_id,
        resource_type="user_sessions",
        resource_id=principal.family_id,
    )
    return _no_content()


@bp.get("/sessions")
@documented("The caller's live logins", responses={200: Items[SessionRead]})
@require(Permission.PROFILE)
def sessions() -> Response:
    principal = authenticated()
    rows = list_live_sessions(session=get_session(), user_id=principal.user_id)
    items = [
        SessionRead(
            id=row.family_id,
            created_at=row.created_at,
            expires_at=row.expires_at,
            ip_address=str(row.ip_address) if row.ip_address else None,
            user_agent=row.user_agent,
            current=row.family_id == principal.family_id,
        ).model_dump(mode="json")
        for row in rows
    ]
    return jsonify({"items": items})


@bp.delete("/sessions/<uuid:session_id>")
@documented("End one of the caller's logins", responses={204: None})
@require(Permission.PROFILE)
def end_session(session_id: uuid.UUID) -> tuple[str, int]:
    principal = authenticated()
    owned = get_session().scalar(
        select(UserSession.id).where(
            UserSession.family_id == session_id, UserSession.user_id == principal.user_id
        )
    )
    if owned is None:
        raise NotFound("No such session.")
    end_logins([session_id], reason="ended")
    audit(
        "auth.session_revoked",
        user_id=principal.user_id,
        resource_type="user_sessions",
        resource_id=session_id,
    )
    return _no_content()


@bp.get("/profile")
@documented("The caller's account", responses={200: UserRead})
@require(Permission.PROFILE)
def profile() -> Response:
    return jsonify(UserRead.model_validate(authenticated().user).model_dump(mode="json"))


@bp.put("/profile")
@documented(
    "Change the caller's email or password",
    description="Needs the current password. A new password ends the caller's other logins "
    "and revokes every API key.",
    body=ProfileUpdate,
    responses={
        200: UserRead,
        401: "The current password is incorrect (counts toward the login lockout).",
        409: "Another account has this email.",
        429: LOCKED,
        422: "The new password breaks the password policy.",
    },
)
@require(Permission.PROFILE)
def update_profile() -> Response:
    change = load_body(ProfileUpdate)
    principal = authenticated()
    user = principal.user
    confirm_password(user, change.current_password, purpose="user.profile_updated")
    changed = []
    if change.email is not None and change.email.lower() != user.email.lower():
        if find_conflict(
            session=get_session(), username=user.username, email=change.email, exclude=user.id
        ):
            raise Conflict("A user with this email already exists.", code="email_taken")
        user.email = change.email
        changed.append("email")
    if change.new_password is not None:
        refuse_weak_password(
            change.new_password, username=user.username, email=user.email, field="new_password"
        )
        user.password_hash = hash_password(change.new_password, current_settings().bcrypt_rounds)
        # Whoever else holds a login or a key must prove they know the new password.
        end_sessions(user.id, reason="password_changed", except_family=principal.family_id)
        revoke_all_api_keys(user.id)
        changed.append("password")
    audit(
        "user.profile_updated",
        user_id=user.id,
        resource_type="users",
        resource_id=user.id,
        details={"changed": changed},
    )
    return jsonify(UserRead.model_validate(user).model_dump(mode="json"))


@bp.post("/api-keys")
@documented(
    "Create an API key (its secret is shown once)",
    body=ApiKeyCreate,
    responses={
        201: ApiKeyCreated,
        400: "The webhook_url is refused (docs/webhooks.md).",
        401: "The current password is incorrect (counts toward the login lockout).",
        409: f"The caller already has {MAX_LIVE_API_KEYS} live keys.",
        429: LOCKED,
    },
)
@require(Permission.PROFILE)
def create_api_key() -> tuple[Response, int]:
    request_body = load_body(ApiKeyCreate)
    principal = authenticated()
    confirm_password(principal.user, request_body.current_password, purpose="api_key.created")
    session = get_session()
    live = [
        key
        for key in list_api_keys(session=session, user_id=principal.user_id)
        if key.revoked_at is None
    ]
    if len(live) >= MAX_LIVE_API_KEYS:
        raise Conflict(
            f"At most {MAX_LIVE_API_KEYS} live API keys per user.", code="too_many_api_keys"
        )
    key, prefix = api_keys.generate()
    expires_at = (
        utcnow() + timedelta(days=request_body.expires_in_days)
        if request_body.expires_in_days
        else None
    )
    row = add_api_key(
        session=session,
        user_id=principal.user_id,
        name=request_body.name,
        prefix=prefix,
        key_hash=api_keys.hash_key(key),
        scopes=[str(scope) for scope in request_body.scopes],
        expires_at=expires_at,
        limits=request_body.limits.stored() if request_body.limits else None,
        webhook_url=checked_webhook(request_body.webhook_url),
    )
    audit(
        "api_key.created",
        user_id=principal.user_id,
        resource_type="api_keys",
        resource_id=row.id,
        details={"name": row.name, "scopes": row.scopes, "limits": row.limits},
    )
    created = ApiKeyCreated(**ApiKeyRead.model_validate(row).model_dump(), key=key)
    return jsonify(created.model_dump(mode="json")), 201


@bp.get("/api-keys")
@documented("The caller's API keys (revoked ones too)", responses={200: Items[ApiKeyRead]})
@require(Permission.PROFILE)
def api_key_list() -> Response:
    rows = list_api_keys(session=get_session(), user_id=authenticated().user_id)
    return jsonify({"items": [ApiKeyRead.model_validate(r).model_dump(mode="json") for r in rows]})


@bp.delete("/api-keys/<uuid:key_id>")
@documented("Revoke one of the caller's API keys", responses={204: None})
@require(Permission.PROFILE)
def revoke_api_key(key_id: uuid.UUID) -> tuple[str, int]:
    principal = authenticated()
    row = get_session().get(ApiKey, key_id)
    if row is None or row.user_id != principal.user_id:
        raise NotFound("No such API key.")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        forget_credentials(api_key_ids=[row.id])
        audit(
            "api_key.revoked",
            user_id=principal.user_id,
            resource_type="api_keys",
            resource_id=row.id,
        )
    return _no_content()


def _rows(model: Any, *conditions: Any) -> list[dict[str, Any]]:
    """Every column of every matching row, as JSON-ready values."""
    table = model.__table__
    result = get_session().execute(select(table).where(*conditions)).mappings()
    return [
        {
            key: value
            if isinstance(value, str | int | float | bool | dict | list | None)
            else str(value)
            for key, value in row.items()
        }
        for row in result
    ]


@bp.get("/me/export")
@documented("Export everything held about the caller", responses={200: AccountExport})
@require(Permission.PROFILE)
def export_me() -> Response:
    """Everything we hold about the caller, in one document."""
    user = authenticated().user
    [account] = _rows(type(user), type(user).id == user.id)
    account.pop("password_hash")
    keys = _rows(ApiKey, ApiKey.user_id == user.id)
    for key in keys:
        key.pop("key_hash")
    sessions_ = _rows(UserSession, UserSession.user_id == user.id)
    for row in sessions_:
        row.pop("refresh_jti")
        row.pop("access_jti")
    document = {
        "exported_at": utcnow().isoformat(),
        "account": account,
        "sessions": sessions_,
        "api_keys": keys,
        "inference_requests": _rows(InferenceRequest, InferenceRequest.user_id == user.id),
        "audit_log": _rows(AuditLogEntry, AuditLogEntry.user_id == user.id),
    }
    audit("user.exported", user_id=user.id, resource_type="users", resource_id=user.id)
    response = jsonify(document)
    response.headers["Content-Disposition"] = 'attachment; filename="ollamamax-export.json"'
    return response


@bp.delete("/me")
@documented(
    "Delete the caller's account",
    description="Needs the password. Every credential is revoked and personal data erased; "
    "usage figures stay, anonymous.",
    body=AccountDelete,
    responses={
        204: None,
        401: "The password is incorrect (counts toward the login lockout).",
        409: "The caller is the last active admin.",
        429: LOCKED,
    },
)
@require(Permission.PROFILE)
def delete_me() -> tuple[str, int]:
    confirmation = load_body(AccountDelete)
    user = authenticated().user
    confirm_password(user, confirmation.password, purpose="user.deleted")
    refuse_removing_last_admin(user)
    audit(
        "user.deleted",
        user_id=user.id,
        resource_type="users",
        resource_id=user.id,
        details={"by": "self"},
    )
    erase_account(user)
    return _no_content()
