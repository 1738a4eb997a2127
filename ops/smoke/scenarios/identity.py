"""Health probes, logins, the profile and API keys."""

from __future__ import annotations

import secrets
from typing import Any

from ops.smoke.api import describe, error_code
from ops.smoke.context import Context, Login, renew_at
from ops.smoke.outcomes import Failed, Skipped, check

PROFILE = "/api/v1/users/profile"
KEYS = "/api/v1/users/api-keys"


def health_live(ctx: Context) -> str:
    response = ctx.api.call("GET", "/health")
    body = response.json()
    check(body.get("status") == "ok", f"/health answered {body}")
    return f"200 {body}"


def health_ready(ctx: Context) -> str:
    response = ctx.api.request("GET", "/health/ready")
    if response.status_code == 404:
        return "no /health/ready on this deployment (the readiness probe is optional)"
    body = response.json()
    check(response.status_code == 200, f"/health/ready answered {describe(response)}")
    check(body.get("status") == "ready", f"/health/ready answered {body}")
    checks = body.get("checks") or {}
    return "ready: " + ", ".join(
        f"{name} {result.get('latency_ms')} ms" for name, result in sorted(checks.items())
    )


def _login(ctx: Context, password: str) -> tuple[Login, int]:
    response = ctx.api.call(
        "POST",
        "/api/v1/auth/login",
        json={"username": ctx.options.admin_email, "password": password},
    )
    body = response.json()
    for field in ("access_token", "refresh_token", "expires_in"):
        check(body.get(field), f"the login answer has no {field}: {sorted(body)}")
    check(body.get("token_type") == "Bearer", f"token_type is {body.get('token_type')!r}")
    ctx.expect_audit("auth.login", response)
    login = Login(body["access_token"], body["refresh_token"], renew_at=renew_at(body))
    return login, int(body["expires_in"])


def auth_login(ctx: Context) -> str:
    login, expires_in = _login(ctx, ctx.options.admin_password)
    ctx.sessions["admin"] = login.access_token
    profile = ctx.api.call("GET", PROFILE, token=login.access_token).json()
    login.user_id, login.username, login.role = profile["id"], profile["username"], profile["role"]
    ctx.admin = login  # scenarios that only need a login can run even if the role is wrong
    check(
        login.role == "admin",
        f"signed in as {login.username}, whose role is {login.role!r}: the admin scenarios "
        "(system config, audit) need an admin",
    )
    return f"signed in as {login.username} (admin), access token valid {expires_in}s"


def auth_bad_password(ctx: Context) -> str:
    """One wrong password (the lockout allows LOGIN_MAX_FAILURES, 5 by default); the next
    successful login, auth.refresh's, sets the count back to zero."""
    response = ctx.api.request(
        "POST",
        "/api/v1/auth/login",
        json={"username": ctx.options.admin_email, "password": "not-the-password-" + ctx.run_id},
    )
    check(
        response.status_code == 401 and error_code(response) == "invalid_credentials",
        f"a wrong password answered {describe(response)} (wanted 401 invalid_credentials)",
    )
    ctx.expect_audit("auth.login_failed", response)
    return "401 invalid_credentials"


def auth_refresh(ctx: Context) -> str:
    login, _ = _login(ctx, ctx.options.admin_password)  # a login of its own, ended below
    ctx.sessions["refresh"] = login.access_token
    response = ctx.api.call("POST", "/api/v1/auth/refresh", token=login.refresh_token)
    pair = response.json()
    check(
        pair.get("access_token") and pair["access_token"] != login.access_token,
        "refresh gave no new access token",
    )
    check(
        pair.get("refresh_token") and pair["refresh_token"] != login.refresh_token,
        "refresh did not rotate the refresh token",
    )
    ctx.sessions["refresh"] = pair["access_token"]
    ctx.api.call("GET", PROFILE, token=pair["access_token"])
    logout = ctx.api.call("POST", "/api/v1/users/logout", expect=204, token=pair["access_token"])
    ctx.expect_audit("auth.logout", logout)
    del ctx.sessions["refresh"]
    after = ctx.api.request("GET", PROFILE, token=pair["access_token"])
    check(after.status_code == 401, f"a logged-out token answered {describe(after)}")
    return "new pair issued, the new access token works, logout ends it (then 401)"


def auth_bad_key(ctx: Context) -> str:
    wrong_key = f"omx_{secrets.token_hex(5)}_{secrets.token_urlsafe(32)}"
    response = ctx.api.request("GET", PROFILE, token=wrong_key)
    check(
        response.status_code == 401 and error_code(response) == "invalid_api_key",
        f"an unknown API key answered {describe(response)} (wanted 401 invalid_api_key)",
    )
    unsigned = "eyJhbGciOiJub25lIn0.eyJzdWIiOiIxIn0."  # forged: no signature
    forged = ctx.api.request("GET", PROFILE, token=unsigned)
    check(forged.status_code == 401, f"an unsigned JWT answered {describe(forged)}")
    anonymous = ctx.api.request("GET", PROFILE)
    check(anonymous.status_code == 401, f"no credentials answered {describe(anonymous)}")
    return (
        f"unknown key 401 invalid_api_key, unsigned JWT 401 {error_code(forged)}, "
        f"none 401 {error_code(anonymous)}"
    )


def profile_read(ctx: Context) -> str:
    body = ctx.api.call("GET", PROFILE, token=ctx.admin_token()).json()
    check(
        body["email"].lower() == ctx.options.admin_email.lower()
        or body["username"] == ctx.options.admin_email,
        f"the profile is {body['username']} <{body['email']}>, not the account signed in",
    )
    check(body["is_active"] is True, "the profile says the account is inactive")
    return f"{body['username']} <{body['email']}>, role {body['role']}"


def profile_update(ctx: Context) -> str:
    """The API changes a profile with PUT (email or password, with the current password).
    A PUT that keeps the email is harmless and still goes the whole way (and is audited)."""
    token = ctx.admin_token()
    email = ctx.api.call("GET", PROFILE, token=token).json()["email"]
    refused = ctx.api.request(
        "PUT",
        PROFILE,
        token=token,
        json={"current_password": "wrong-" + ctx.run_id, "email": email},
    )
    check(
        refused.status_code == 401,
        f"a profile change with a wrong current password answered {describe(refused)}",
    )
    response = ctx.api.call(
        "PUT",
        PROFILE,
        token=token,
        json={"current_password": ctx.options.admin_password, "email": email},
    )
    ctx.expect_audit("user.profile_updated", response)
    check(response.json()["email"] == email, "the profile's email changed")
    return "PUT with a wrong current password 401; PUT keeping the email 200"


def keys_create(ctx: Context) -> str:
    key_id, key, response = ctx.create_key("lifecycle", ["inference"])
    body = response.json()
    check(key.startswith("omx_"), "the key does not look like omx_<prefix>_<secret>")
    check(body["scopes"] == ["inference"], f"the key's scopes are {body['scopes']}")
    ctx.lifecycle_key = (key_id, key)
    return f"key {body['prefix']} (scope inference, expires in 1 day)"


def _lifecycle_key(ctx: Context) -> tuple[str, str]:
    if ctx.lifecycle_key is None:
        raise Skipped("needs keys.create")
    return ctx.lifecycle_key


def _listed_keys(ctx: Context) -> dict[str, dict[str, Any]]:
    items = ctx.api.call("GET", KEYS, token=ctx.admin_token()).json()["items"]
    return {key["id"]: key for key in items}


def keys_use(ctx: Context) -> str:
    key_id, key = _lifecycle_key(ctx)
    ctx.api.call("GET", "/api/v1/models/", token=key)
    narrowed = ctx.api.request("GET", "/api/v1/system/config", token=key)
    check(
        narrowed.status_code == 403,
        f"an inference-scoped key reading the system config answered {describe(narrowed)} "
        "(wanted 403: scopes narrow the owner's role)",
    )
    listed = _listed_keys(ctx)
    check(key_id in listed, "the new key is not in the owner's key list")
    check(listed[key_id]["last_used_at"], "the key's last_used_at was not set by its use")
    return "GET /api/v1/models/ 200 with the key; system config 403 (scope); last_used_at set"


def keys_revoke(ctx: Context) -> str:
    key_id, key = _lifecycle_key(ctx)
    response = ctx.api.call("DELETE", f"{KEYS}/{key_id}", expect=204, token=ctx.admin_token())
    ctx.revoked.add(key_id)
    ctx.expect_audit("api_key.revoked", response)
    after = ctx.api.request("GET", "/api/v1/models/", token=key)
    if after.status_code != 401:
        raise Failed(f"the revoked key still answered {describe(after)} (wanted 401)")
    listed = _listed_keys(ctx)
    check(listed.get(key_id, {}).get("revoked_at"), "the key list does not show it revoked")
    return f"DELETE 204; the revoked key answers 401 {error_code(after)}"
