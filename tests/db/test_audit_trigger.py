"""The row-change audit trigger on users, models, nodes and system_config."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import AuditLogEntry, SystemConfig
from db.session import set_audit_context
from tests.factories import ModelFactory, NodeFactory, UserFactory


def _entries(session: Session, resource_type: str, resource_id: Any) -> list[AuditLogEntry]:
    session.flush()
    return list(
        session.scalars(
            select(AuditLogEntry)
            .where(
                AuditLogEntry.resource_type == resource_type,
                AuditLogEntry.resource_id == str(resource_id),
            )
            .order_by(AuditLogEntry.id)
        )
    )


def test_insert_is_recorded_with_secrets_masked(db_session: Session) -> None:
    user = UserFactory()

    [entry] = _entries(db_session, "users", user.id)

    assert entry.action == "users.insert"
    assert entry.details["source"] == "trigger"
    assert entry.details["new"]["username"] == user.username
    assert entry.details["new"]["password_hash"] == "***"
    assert user.password_hash not in str(entry.details)


def test_update_records_only_the_changed_columns(db_session: Session) -> None:
    user = UserFactory()
    user.role = "operator"

    entries = _entries(db_session, "users", user.id)

    assert [e.action for e in entries] == ["users.insert", "users.update"]
    assert entries[1].details["changes"] == {"role": {"old": "user", "new": "operator"}}


def test_password_change_is_visible_but_masked(db_session: Session) -> None:
    user = UserFactory()
    user.password_hash = "$2b$12$another-hash-value"

    update = _entries(db_session, "users", user.id)[-1]

    assert update.details["changes"] == {"password_hash": {"old": "***", "new": "***"}}


def test_noise_only_updates_write_nothing(db_session: Session) -> None:
    from datetime import UTC, datetime

    user = UserFactory()
    node = NodeFactory()
    user.failed_login_count = 3
    node.last_heartbeat_at = datetime.now(UTC)
    node.slots_busy = 1

    assert [e.action for e in _entries(db_session, "users", user.id)] == ["users.insert"]
    assert [e.action for e in _entries(db_session, "nodes", node.id)] == ["nodes.insert"]


def test_delete_keeps_the_old_row(db_session: Session) -> None:
    model = ModelFactory(description="to be removed")
    db_session.flush()
    db_session.delete(model)

    delete = _entries(db_session, "models", model.id)[-1]

    assert delete.action == "models.delete"
    assert delete.details["old"]["name"] == model.name


def test_secret_system_config_values_are_masked(db_session: Session) -> None:
    db_session.add(SystemConfig(key="webhook_token", value="s3cr3t"))
    db_session.add(SystemConfig(key="default_priority", value=5))
    db_session.flush()
    setting = db_session.get(SystemConfig, "webhook_token")
    assert setting is not None
    setting.value = "rotated"

    secret = _entries(db_session, "system_config", "webhook_token")
    plain = _entries(db_session, "system_config", "default_priority")

    assert secret[0].details["new"]["value"] == "***"
    assert secret[1].details["changes"]["value"] == {"old": "***", "new": "***"}
    assert plain[0].details["new"]["value"] == 5


def test_actor_ip_and_request_id_come_from_the_audit_context(db_session: Session) -> None:
    actor = UserFactory(role="admin")
    set_audit_context(
        db_session,
        user_id=str(actor.id),
        ip_address="203.0.113.7",
        user_agent="pytest",
        request_id="req-42",
    )
    node = NodeFactory()

    [entry] = _entries(db_session, "nodes", node.id)

    assert entry.user_id == actor.id
    assert str(entry.ip_address) == "203.0.113.7"
    assert entry.user_agent == "pytest"
    assert entry.request_id == "req-42"


def test_secrets_nested_in_json_values_are_masked(db_session: Session) -> None:
    db_session.add(
        SystemConfig(
            key="smtp",
            value={
                "host": "mail",
                "password": "hunter2",
                "relays": [{"api_key": "k-1", "port": 25}],
            },
        )
    )
    db_session.flush()

    [entry] = _entries(db_session, "system_config", "smtp")

    assert entry.details["new"]["value"] == {
        "host": "mail",
        "password": "***",
        "relays": [{"api_key": "***", "port": 25}],
    }


def test_ordinary_keys_with_secret_words_inside_stay_readable(db_session: Session) -> None:
    model = ModelFactory(parameters={"max_tokens": 512, "num_ctx": 4096})
    [entry] = _entries(db_session, "models", model.id)
    assert entry.details["new"]["parameters"] == {"max_tokens": 512, "num_ctx": 4096}


def test_delete_masks_secrets_as_insert_and_update_do(db_session: Session) -> None:
    user = UserFactory()
    db_session.flush()
    secret_hash = user.password_hash
    db_session.delete(user)

    delete = _entries(db_session, "users", user.id)[-1]

    assert delete.action == "users.delete"
    assert delete.details["old"]["username"] == user.username
    assert delete.details["old"]["password_hash"] == "***"
    assert secret_hash not in str(delete.details)


def test_deleting_a_secret_setting_masks_its_value(db_session: Session) -> None:
    db_session.add(SystemConfig(key="webhook_token", value="s3cr3t"))
    db_session.add(SystemConfig(key="smtp", value={"host": "mail", "relays": [{"api_key": "k-1"}]}))
    db_session.flush()
    for key in ("webhook_token", "smtp"):
        setting = db_session.get(SystemConfig, key)
        assert setting is not None
        db_session.delete(setting)

    secret = _entries(db_session, "system_config", "webhook_token")[-1]
    nested = _entries(db_session, "system_config", "smtp")[-1]

    assert (secret.action, nested.action) == ("system_config.delete", "system_config.delete")
    assert secret.details["old"]["value"] == "***"
    assert "s3cr3t" not in str(secret.details)
    assert nested.details["old"]["value"] == {"host": "mail", "relays": [{"api_key": "***"}]}
