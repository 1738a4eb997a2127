"""Admins manage users (never removing the last admin); users export and erase themselves."""

from __future__ import annotations

from datetime import date

from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.models import (
    ApiKey,
    AuditLogEntry,
    InferenceRequest,
    ModelUsageStats,
    Role,
    User,
    WebhookDelivery,
    WebhookSecret,
)
from tests.factories import TEST_PASSWORD, InferenceRequestFactory
from tests.support.identity import audit_actions, auth_headers, bearer, error_code, login, make_user

USERS = "/api/v1/users"


def _api_key(client: FlaskClient, headers: dict[str, str]) -> str:
    body = {"name": "k", "scopes": ["admin"], "current_password": TEST_PASSWORD}
    return str(client.post(f"{USERS}/api-keys", headers=headers, json=body).get_json()["key"])


def test_admin_lists_users_with_filters_and_pagination(client: FlaskClient) -> None:
    admin = make_user(Role.ADMIN, username="chief")
    for n in range(3):
        make_user(username=f"worker{n}")
    make_user(Role.OPERATOR, username="opsy")
    headers = auth_headers(client, admin)

    page = client.get(f"{USERS}?per_page=2&page=2", headers=headers).get_json()
    operators = client.get(f"{USERS}?role=operator", headers=headers).get_json()
    searched = client.get(f"{USERS}?q=WORK", headers=headers).get_json()

    assert (page["total"], page["page"], page["per_page"], len(page["items"])) == (5, 2, 2, 2)
    assert [u["username"] for u in operators["items"]] == ["opsy"]
    assert searched["total"] == 3
    assert client.get(f"{USERS}?per_page=1000", headers=headers).status_code == 422


def test_admin_changes_a_role_and_it_takes_effect_at_once(
    client: FlaskClient, db_session: Session
) -> None:
    admin, user = make_user(Role.ADMIN), make_user()
    user_headers = auth_headers(client, user)
    assert client.get(USERS, headers=user_headers).status_code == 403

    response = client.put(
        f"{USERS}/{user.id}", headers=auth_headers(client, admin), json={"role": "admin"}
    )

    assert response.status_code == 200
    assert response.get_json()["role"] == "admin"
    assert client.get(USERS, headers=user_headers).status_code == 200
    assert "user.role_changed" in audit_actions(db_session, admin.id)


def test_the_last_admin_cannot_be_demoted_disabled_or_deleted(client: FlaskClient) -> None:
    admin = make_user(Role.ADMIN)
    headers = auth_headers(client, admin)
    for method, body in (
        ("put", {"role": "user"}),
        ("put", {"is_active": False}),
        ("delete", None),
    ):
        response = getattr(client, method)(f"{USERS}/{admin.id}", headers=headers, json=body)
        assert response.status_code == 409
        assert error_code(response) == "last_admin"
    second = make_user(Role.ADMIN)
    assert (
        client.put(f"{USERS}/{second.id}", headers=headers, json={"role": "operator"}).status_code
        == 200
    )


def test_disabling_a_user_ends_their_sessions(client: FlaskClient) -> None:
    admin, user = make_user(Role.ADMIN), make_user()
    user_headers = auth_headers(client, user)
    client.put(f"{USERS}/{user.id}", headers=auth_headers(client, admin), json={"is_active": False})
    assert client.get(f"{USERS}/profile", headers=user_headers).status_code == 401


def test_admin_sets_and_clears_a_fair_share_weight(
    client: FlaskClient, db_session: Session
) -> None:
    admin, user = make_user(Role.ADMIN), make_user()
    headers = auth_headers(client, admin)
    url = f"{USERS}/{user.id}"

    set_ = client.put(url, headers=headers, json={"fair_share_weight": 2.5})
    assert set_.status_code == 200
    assert set_.get_json()["fair_share_weight"] == 2.5
    assert "user.updated" in audit_actions(db_session, admin.id)
    listed = client.get(f"{USERS}?q={user.username}", headers=headers).get_json()["items"]
    assert listed[0]["fair_share_weight"] == 2.5

    cleared = client.put(url, headers=headers, json={"fair_share_weight": None})
    assert cleared.status_code == 200
    assert cleared.get_json()["fair_share_weight"] is None

    for bad in (0, -1, 0.05, 101, "heavy"):
        refused = client.put(url, headers=headers, json={"fair_share_weight": bad})
        assert refused.status_code == 422, bad
        assert error_code(refused) == "validation_error"
    user_headers = auth_headers(client, user)
    assert client.put(url, headers=user_headers, json={"fair_share_weight": 9}).status_code == 403


def test_admin_update_and_delete_validate_and_404(client: FlaskClient) -> None:
    headers = auth_headers(client, make_user(Role.ADMIN))
    user = make_user()
    assert client.put(f"{USERS}/{user.id}", headers=headers, json={}).status_code == 422
    assert (
        client.put(f"{USERS}/{user.id}", headers=headers, json={"role": "root"}).status_code == 422
    )
    missing = "00000000-0000-0000-0000-000000000000"
    assert client.delete(f"{USERS}/{missing}", headers=headers).status_code == 404


# --- data rights -----------------------------------------------------------------------


def test_export_holds_everything_about_the_caller_and_no_secrets(
    client: FlaskClient, db_session: Session
) -> None:
    user = make_user()
    headers = auth_headers(client, user)
    client.post(
        f"{USERS}/api-keys",
        headers=headers,
        json={"name": "k", "scopes": ["read"], "current_password": TEST_PASSWORD},
    )
    InferenceRequestFactory(user_id=user.id, input={"prompt": "my secret plans"})
    InferenceRequestFactory(user_id=make_user().id, input={"prompt": "someone else's"})

    response = client.get(f"{USERS}/me/export", headers=headers)

    assert response.status_code == 200
    document = response.get_json()
    assert document["account"]["username"] == user.username
    assert "password_hash" not in document["account"]
    assert len(document["sessions"]) == 1
    assert [key["name"] for key in document["api_keys"]] == ["k"]
    assert all("key_hash" not in key for key in document["api_keys"])
    assert [r["input"] for r in document["inference_requests"]] == [{"prompt": "my secret plans"}]
    assert "auth.login" in [entry["action"] for entry in document["audit_log"]]
    assert "user.exported" in audit_actions(db_session, user.id)


def test_deleting_oneself_erases_personal_data_and_keeps_aggregates(
    client: FlaskClient, db_session: Session
) -> None:
    user = make_user()
    username = user.username
    tokens = login(client, user)
    headers = bearer(tokens["access_token"])
    key = client.post(
        f"{USERS}/api-keys",
        headers=headers,
        json={"name": "k", "scopes": ["admin"], "current_password": TEST_PASSWORD},
    ).get_json()["key"]
    job = InferenceRequestFactory(
        user_id=user.id,
        input={"prompt": "private"},
        output="answer",
        status="running",
        eval_count=12,
        webhook_url="https://hooks.ann-smith.example/done",
    )
    job.status = "completed"  # the trigger queues its webhook delivery
    db_session.add(ModelUsageStats(model_name="m:latest", day=date(2026, 1, 1), requests=1))
    db_session.flush()
    assert client.get(f"{USERS}/webhook-secret", headers=headers).status_code == 200
    assert db_session.scalar(select(func.count()).select_from(WebhookDelivery)) == 1

    assert (
        client.delete(
            f"{USERS}/me", headers=headers, json={"password": "wrong-password"}
        ).status_code
        == 401
    )
    assert (
        client.delete(f"{USERS}/me", headers=headers, json={"password": TEST_PASSWORD}).status_code
        == 204
    )

    db_session.expire_all()
    erased = db_session.get(User, user.id)
    assert erased is not None
    assert erased.username.startswith("deleted-")
    assert erased.email.endswith("@invalid")
    assert (erased.is_active, erased.deleted_at is not None) == (False, True)
    request_row = db_session.get(InferenceRequest, job.id)
    assert request_row is not None
    assert (request_row.input, request_row.output, request_row.eval_count) == ({}, None, 12)
    assert request_row.webhook_url is None
    # Its webhooks go: their URLs may say who the user was, and no one is left to sign for.
    assert db_session.scalar(select(func.count()).select_from(WebhookDelivery)) == 0
    assert db_session.get(WebhookSecret, user.id) is None
    assert db_session.scalar(select(ModelUsageStats.requests)) == 1
    assert all(k.revoked_at is not None for k in db_session.scalars(select(ApiKey)))
    for credential in (tokens["access_token"], key):
        assert client.get(f"{USERS}/profile", headers=bearer(credential)).status_code == 401
    login_again = client.post(
        "/api/v1/auth/login", json={"username": username, "password": TEST_PASSWORD}
    )
    assert login_again.status_code == 401
    assert "user.deleted" in audit_actions(db_session, user.id)


def test_the_last_admin_cannot_delete_themselves(client: FlaskClient) -> None:
    admin = make_user(Role.ADMIN)
    response = client.delete(
        f"{USERS}/me", headers=auth_headers(client, admin), json={"password": TEST_PASSWORD}
    )
    assert response.status_code == 409


def test_an_admin_can_unlock_an_account(client: FlaskClient) -> None:
    user = make_user()
    for _ in range(5):
        client.post(
            "/api/v1/auth/login", json={"username": user.username, "password": "nope-nope!"}
        )
    admin = auth_headers(client, make_user(Role.ADMIN))
    assert client.put(f"{USERS}/{user.id}", headers=admin, json={"unlock": True}).status_code == 200
    login(client, user)


def test_disabling_ends_refresh_tokens_and_keys_for_good(client: FlaskClient) -> None:
    user = make_user()
    tokens = login(client, user)
    key = _api_key(client, bearer(tokens["access_token"]))
    admin = auth_headers(client, make_user(Role.ADMIN))

    client.put(f"{USERS}/{user.id}", headers=admin, json={"is_active": False})
    client.put(f"{USERS}/{user.id}", headers=admin, json={"is_active": True})

    # Re-enabled, but nothing issued before the disable works again.
    refresh = client.post("/api/v1/auth/refresh", headers=bearer(tokens["refresh_token"]))
    assert refresh.status_code == 401
    assert client.get(f"{USERS}/profile", headers=bearer(key)).status_code == 401


def test_erasure_scrubs_name_and_email_from_the_audit_trail(
    client: FlaskClient, db_session: Session
) -> None:
    user = make_user()
    email = user.email
    headers = auth_headers(client, user)
    client.delete(f"{USERS}/me", headers=headers, json={"password": TEST_PASSWORD})
    entries = db_session.scalars(
        select(AuditLogEntry).where(
            AuditLogEntry.resource_type == "users", AuditLogEntry.resource_id == str(user.id)
        )
    ).all()
    assert entries
    assert email not in str([entry.details for entry in entries])
