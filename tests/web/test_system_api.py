"""/api/v1/system: run-time config, stats and the audit trail, on real PostgreSQL and Redis."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from redis import Redis
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from config.runtime import RuntimeConfig
from db.models import AuditLogEntry, InferenceRequest, Node, Role, SystemConfig, User
from db.stats import refresh_dashboard
from tests.factories import InferenceRequestFactory, NodeFactory
from tests.support.identity import auth_headers, error_code, make_user

CONFIG = "/api/v1/system/config"
STATS = "/api/v1/system/stats"
AUDIT = "/api/v1/system/audit"
VERSION_KEY = "omx:cache:system_config:version"


@pytest.fixture
def admin(client: FlaskClient) -> dict[str, str]:
    return auth_headers(client, make_user(Role.ADMIN))


@pytest.fixture
def operator(client: FlaskClient) -> dict[str, str]:
    return auth_headers(client, make_user(Role.OPERATOR))


def _stored(session: Session) -> dict[str, Any]:
    return {row.key: row.value for row in session.scalars(select(SystemConfig))}


def _audited(session: Session, action: str) -> list[AuditLogEntry]:
    return list(
        session.scalars(
            select(AuditLogEntry).where(AuditLogEntry.action == action).order_by(AuditLogEntry.id)
        )
    )


# --- run-time config ---------------------------------------------------------------------


def test_get_lists_every_setting_with_its_default(
    client: FlaskClient, admin: dict[str, str]
) -> None:
    response = client.get(CONFIG, headers=admin)

    assert response.status_code == 200
    config = response.get_json()["config"]
    defaults = RuntimeConfig.defaults(client.application.extensions["settings"]).model_dump()
    assert set(config) == set(RuntimeConfig.model_fields)
    for key, entry in config.items():
        assert entry["value"] == entry["default"] == defaults[key]
        assert entry["overridden"] is False
        assert entry["description"]


def test_put_stores_answers_and_a_read_right_after_sees_it(
    client: FlaskClient, admin: dict[str, str], db_session: Session, redis_client: Redis
) -> None:
    version_before = int(redis_client.get(VERSION_KEY) or 0)

    response = client.put(
        CONFIG,
        headers=admin,
        json={
            "default_priority": 8,
            "queue_while_unavailable": True,
            "ratelimit_login": "3/minute",
        },
    )

    assert response.status_code == 200, response.get_json()
    answered = response.get_json()["config"]
    assert answered["default_priority"] == {
        **answered["default_priority"],
        "value": 8,
        "default": 5,
        "overridden": True,
    }
    assert answered["queue_while_unavailable"]["value"] is True
    assert answered["max_generation_s"]["overridden"] is False
    assert client.get(CONFIG, headers=admin).get_json()["config"] == answered
    assert _stored(db_session) == {
        "default_priority": 8,
        "queue_while_unavailable": True,
        "ratelimit_login": "3/minute",
    }
    # Every process is told once the change is committed.
    assert int(redis_client.get(VERSION_KEY) or 0) == version_before + 1
    (event,) = _audited(db_session, "system.config_changed")
    assert event.resource_type == "system_config"
    assert event.details["keys"] == [
        "default_priority",
        "queue_while_unavailable",
        "ratelimit_login",
    ]
    assert event.details["set"]["default_priority"] == 8
    assert len(_audited(db_session, "system_config.insert")) == 3  # the row trigger, per key


def test_a_second_app_reads_the_new_value_at_once(
    client: FlaskClient, admin: dict[str, str], app_factory: Callable[..., Flask]
) -> None:
    other = app_factory().test_client()
    assert other.get(CONFIG, headers=admin).get_json()["config"]["retention_days"]["value"] == 90

    client.put(CONFIG, headers=admin, json={"retention_days": 30})

    assert other.get(CONFIG, headers=admin).get_json()["config"]["retention_days"]["value"] == 30


def test_put_with_an_unchanged_value_writes_nothing(
    client: FlaskClient, admin: dict[str, str], db_session: Session
) -> None:
    client.put(CONFIG, headers=admin, json={"retention_days": 30})
    response = client.put(CONFIG, headers=admin, json={"retention_days": 30})

    assert response.status_code == 200
    assert len(_audited(db_session, "system.config_changed")) == 1
    assert len(_audited(db_session, "system_config.update")) == 0


def test_null_goes_back_to_the_default(
    client: FlaskClient, admin: dict[str, str], db_session: Session
) -> None:
    client.put(CONFIG, headers=admin, json={"default_priority": 2, "retention_days": 7})

    response = client.put(CONFIG, headers=admin, json={"default_priority": None})

    assert response.status_code == 200
    config = response.get_json()["config"]
    assert (config["default_priority"]["value"], config["default_priority"]["overridden"]) == (
        5,
        False,
    )
    assert config["retention_days"]["value"] == 7
    assert _stored(db_session) == {"retention_days": 7}
    last = _audited(db_session, "system.config_changed")[-1]
    assert (last.details["keys"], last.details["reset"]) == (
        ["default_priority"],
        ["default_priority"],
    )
    assert len(_audited(db_session, "system_config.delete")) == 1
    # Resetting what is not stored is a no-op, not an error.
    assert client.put(CONFIG, headers=admin, json={"default_priority": None}).status_code == 200
    assert len(_audited(db_session, "system.config_changed")) == 2


def test_set_and_reset_in_one_put(
    client: FlaskClient, admin: dict[str, str], db_session: Session
) -> None:
    client.put(CONFIG, headers=admin, json={"retention_days": 7})
    response = client.put(
        CONFIG, headers=admin, json={"retention_days": None, "default_priority": 1}
    )
    assert response.status_code == 200
    assert _stored(db_session) == {"default_priority": 1}


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"nope": 1}, ["body.nope"]),
        ({"nope": None}, ["body.nope"]),
        ({"default_priority": "5"}, ["body.default_priority"]),
        ({"default_priority": 10}, ["body.default_priority"]),
        ({"default_priority": 5.0}, ["body.default_priority"]),
        ({"queue_while_unavailable": 1}, ["body.queue_while_unavailable"]),
        ({"ratelimit_default": "lots"}, ["body.ratelimit_default"]),
        ({"ratelimit_login": ""}, ["body.ratelimit_login"]),
        # It would refuse every request, the admin's PUT that undoes it included.
        ({"ratelimit_default": "10/minute;0/second"}, ["body.ratelimit_default"]),
        ({"max_generation_s": 0}, ["body.max_generation_s"]),
        ({"max_generation_s": 601}, ["body.max_generation_s"]),  # the environment's is 600
        ({"retention_days": {"days": 3}}, ["body.retention_days"]),
        ({}, ["body"]),
        ([], ["body"]),
        ("max_generation_s", ["body"]),
        # One bad key spoils the whole change: the good one is not stored either.
        ({"default_priority": 3, "retention_days": -1, "x": 1}, ["body.retention_days", "body.x"]),
    ],
)
def test_invalid_changes_are_422_and_store_nothing(
    client: FlaskClient,
    admin: dict[str, str],
    db_session: Session,
    redis_client: Redis,
    body: Any,
    fields: list[str],
) -> None:
    response = client.put(CONFIG, headers=admin, json=body)

    assert response.status_code == 422, response.get_json()
    assert error_code(response) == "validation_error"
    assert sorted(item["field"] for item in response.get_json()["error"]["details"]) == fields
    assert _stored(db_session) == {}
    assert _audited(db_session, "system.config_changed") == []
    assert redis_client.get(VERSION_KEY) is None
    assert client.get(CONFIG, headers=admin).get_json()["config"]["default_priority"]["value"] == 5


def test_bodies_that_are_not_json_are_refused(client: FlaskClient, admin: dict[str, str]) -> None:
    not_json = client.put(CONFIG, headers=admin, data="x=1")
    broken = client.put(
        CONFIG, headers={**admin, "Content-Type": "application/json"}, data="{broken"
    )
    assert (not_json.status_code, error_code(not_json)) == (415, "unsupported_media_type")
    assert (broken.status_code, error_code(broken)) == (400, "invalid_json")


@pytest.mark.parametrize("role", [Role.USER, Role.OPERATOR])
def test_only_admins_see_or_change_config_and_audit(
    client: FlaskClient, db_session: Session, role: Role
) -> None:
    headers = auth_headers(client, make_user(role))
    assert client.get(CONFIG, headers=headers).status_code == 403
    assert client.put(CONFIG, headers=headers, json={"default_priority": 1}).status_code == 403
    assert client.get(AUDIT, headers=headers).status_code == 403
    assert _stored(db_session) == {}
    stats = client.get(STATS, headers=headers).status_code
    assert stats == (200 if role == Role.OPERATOR else 403)


def test_anonymous_callers_get_401(client: FlaskClient) -> None:
    for url in (CONFIG, STATS, AUDIT):
        assert client.get(url).status_code == 401


# --- stats -------------------------------------------------------------------------------


def test_stats_equal_counts_from_the_rows(
    client: FlaskClient, operator: dict[str, str], db_session: Session
) -> None:
    NodeFactory(slots=4, slots_busy=1)
    NodeFactory(slots=3, drained=True)
    NodeFactory(status="offline", slots=2)
    now = datetime.now(UTC)
    for model, priority, status in [
        ("a:latest", 5, "queued"),
        ("a:latest", 5, "queued"),
        ("a:latest", 9, "queued"),
        ("b:latest", 1, "queued"),
        ("b:latest", 5, "running"),
        ("a:latest", 5, "running"),
        ("b:latest", 5, "failed"),
        ("b:latest", 5, "cancelled"),
    ]:
        InferenceRequestFactory(model_name=model, priority=priority, status=status)
    for eval_count, eval_duration_ns in [(30, 2_000_000_000), (10, 500_000_000)]:
        InferenceRequestFactory(
            status="completed",
            eval_count=eval_count,
            eval_duration=eval_duration_ns,
            prompt_eval_count=4,
            started_at=now,
            completed_at=now,
        )
    # Completed, but before the throughput window and the 24-hour figures.
    InferenceRequestFactory(
        status="completed",
        eval_count=500,
        eval_duration=1_000_000_000,
        completed_at=now - timedelta(minutes=5),
        created_at=now - timedelta(days=2),
    )

    response = client.get(f"{STATS}?refresh=true", headers=operator)

    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    live, view = body["live"], body["dashboard"]
    db_now = db_session.scalar(text("SELECT now()"))
    rows = list(db_session.scalars(select(InferenceRequest)))
    queued = [row for row in rows if row.status == "queued"]
    running = [row for row in rows if row.status == "running"]
    assert live["queue"]["total"] == len(queued)
    assert live["queue"]["by_model"] == dict(Counter(row.model_name for row in queued))
    assert live["queue"]["by_priority"] == {
        str(priority): count for priority, count in Counter(r.priority for r in queued).items()
    }
    assert list(live["queue"]["by_priority"]) == ["9", "5", "1"]  # the order they run in
    assert live["running"] == {
        "total": len(running),
        "by_model": dict(Counter(row.model_name for row in running)),
    }

    nodes = list(db_session.scalars(select(Node)))
    for status in {node.status for node in nodes}:
        mine = [node for node in nodes if node.status == status]
        assert live["nodes"][status] == {
            "nodes": len(mine),
            "drained": sum(node.drained for node in mine),
            "slots": sum(node.slots for node in mine),
            "slots_busy": sum(node.slots_busy for node in mine),
        }

    recent = [
        row
        for row in rows
        if row.status == "completed" and row.completed_at >= db_now - timedelta(seconds=60)
    ]
    tokens = sum(row.eval_count or 0 for row in recent)
    assert live["throughput"] == {
        "window_s": 60,
        "requests_completed": 2,
        "completion_tokens": tokens,
        "tokens_per_s": round(tokens / 60, 3),
        "generation_tokens_per_s": round(tokens / 2.5, 3),  # 40 tokens in 2.5 s of decoding
    }

    # The view was refreshed by this request, inside the same transaction.
    assert datetime.fromisoformat(view["refreshed_at"]) == db_now
    assert view["age_s"] == 0
    assert (view["requests_queued"], view["requests_running"]) == (len(queued), len(running))
    day_ago = db_now - timedelta(hours=24)
    assert view["requests_24h"] == sum(row.created_at >= day_ago for row in rows)
    assert view["completed_24h"] == 2
    assert view["completion_tokens_24h"] == 40
    live_users = db_session.scalar(
        select(func.count()).select_from(User).where(User.deleted_at.is_(None))
    )
    assert view["users_total"] == live_users
    assert view["nodes_total"] == len(nodes)
    assert view["slots_total"] == sum(
        node.slots for node in nodes if node.status == "online" and not node.drained
    )


def test_the_view_is_read_as_is_until_it_is_stale_or_a_refresh_is_asked(
    client: FlaskClient, operator: dict[str, str], db_session: Session
) -> None:
    assert refresh_dashboard(session=db_session, older_than_s=0) is True
    assert refresh_dashboard(session=db_session, older_than_s=30) is False  # it is fresh
    InferenceRequestFactory(status="queued")

    cached = client.get(STATS, headers=operator).get_json()
    refreshed = client.get(f"{STATS}?refresh=1", headers=operator).get_json()

    assert cached["live"]["queue"]["total"] == refreshed["live"]["queue"]["total"]
    assert cached["dashboard"]["requests_queued"] == cached["live"]["queue"]["total"] - 1
    assert refreshed["dashboard"]["requests_queued"] == refreshed["live"]["queue"]["total"]
    assert client.get(f"{STATS}?refresh=maybe", headers=operator).status_code == 422


def test_stats_with_nothing_finished_have_no_generation_speed(
    client: FlaskClient, operator: dict[str, str]
) -> None:
    throughput = client.get(STATS, headers=operator).get_json()["live"]["throughput"]
    assert throughput["requests_completed"] == 0
    assert throughput["tokens_per_s"] == 0
    assert throughput["generation_tokens_per_s"] is None


# --- audit trail -------------------------------------------------------------------------


def _month_start(moment: datetime, months_later: int = 0) -> datetime:
    index = moment.month - 1 + months_later
    return datetime(moment.year + index // 12, index % 12 + 1, 1, tzinfo=UTC)


def _entry(session: Session, occurred_at: datetime, **fields: Any) -> AuditLogEntry:
    entry = AuditLogEntry(occurred_at=occurred_at, details={}, **{"action": "test.event", **fields})
    session.add(entry)
    session.flush()
    return entry


def _partition(session: Session, entry: AuditLogEntry) -> str:
    return str(
        session.scalar(
            text("SELECT tableoid::regclass::text FROM audit_log_entries WHERE id = :id"),
            {"id": entry.id},
        )
    )


def _ids(response: Any) -> list[int]:
    assert response.status_code == 200, response.get_json()
    return [item["id"] for item in response.get_json()["items"]]


def test_audit_lists_newest_first_across_monthly_partitions(
    client: FlaskClient, admin: dict[str, str], db_session: Session
) -> None:
    first = _month_start(datetime.now(UTC), 1)
    second = _month_start(first, 1)
    db_session.execute(text("SELECT create_audit_partitions(1, :month)"), {"month": first.date()})
    early = _entry(db_session, first + timedelta(days=2), action="test.partitioned")
    late = _entry(db_session, first + timedelta(days=20), action="test.partitioned")
    next_month = _entry(db_session, second + timedelta(days=1), action="test.partitioned")
    far = _entry(db_session, datetime(2099, 6, 1, tzinfo=UTC), action="test.partitioned")
    assert [_partition(db_session, e) for e in (early, next_month, far)] == [
        f"audit_log_entries_{first:%Y_%m}",
        f"audit_log_entries_{second:%Y_%m}",
        "audit_log_entries_default",
    ]

    everything = client.get(f"{AUDIT}?action=test.partitioned", headers=admin)
    second_page = client.get(f"{AUDIT}?action=test.partitioned&per_page=3&page=2", headers=admin)
    in_second_month = client.get(
        AUDIT,
        headers=admin,
        query_string={
            "action": "test.partitioned",
            "since": second.isoformat(),
            "until": "2099-01-01",
        },
    )

    assert _ids(everything) == [far.id, next_month.id, late.id, early.id]
    assert everything.get_json()["total"] == 4
    assert second_page.get_json() | {"items": None} == {
        "items": None,
        "total": 4,
        "page": 2,
        "per_page": 3,
    }
    assert _ids(second_page) == [early.id]
    assert _ids(in_second_month) == [next_month.id]


def test_audit_filters(client: FlaskClient, admin: dict[str, str], db_session: Session) -> None:
    alice, bob = make_user(), make_user()
    at = datetime.now(UTC)
    a1 = _entry(
        db_session,
        at,
        user_id=alice.id,
        action="widget.made",
        resource_type="widgets",
        resource_id="w1",
    )
    a2 = _entry(
        db_session,
        at + timedelta(seconds=1),
        user_id=alice.id,
        action="widget.broken",
        resource_type="widgets",
        resource_id="w2",
    )
    b1 = _entry(
        db_session,
        at + timedelta(seconds=2),
        user_id=bob.id,
        action="widget.made",
        resource_type="widgets",
        resource_id="w1",
    )
    _entry(
        db_session,
        at,
        user_id=bob.id,
        action="gadget.made",
        resource_type="gadgets",
        resource_id="w1",
    )

    def ids(**query: str) -> list[int]:
        return _ids(client.get(AUDIT, headers=admin, query_string=query))

    assert ids(user_id=str(alice.id), resource_type="widgets") == [a2.id, a1.id]
    assert ids(action="widget.made") == [b1.id, a1.id]
    assert ids(action="widget.*") == [b1.id, a2.id, a1.id]
    assert ids(resource_type="widgets", resource_id="w1") == [b1.id, a1.id]
    since = (at + timedelta(seconds=1)).isoformat()
    assert ids(action="widget.*", since=since) == [b1.id, a2.id]
    naive_until = (at + timedelta(seconds=1)).astimezone(UTC).replace(tzinfo=None).isoformat()
    assert ids(action="widget.*", until=naive_until) == [a1.id]  # no offset means UTC
    item = client.get(AUDIT, headers=admin, query_string={"action": "widget.broken"}).get_json()
    assert item["items"][0] | {"occurred_at": None} == {
        "id": a2.id,
        "occurred_at": None,
        "user_id": str(alice.id),
        "action": "widget.broken",
        "resource_type": "widgets",
        "resource_id": "w2",
        "ip_address": None,
        "user_agent": None,
        "request_id": None,
        "details": {},
    }


def test_a_config_change_is_in_the_audit_listing(
    client: FlaskClient, admin: dict[str, str]
) -> None:
    put = client.put(CONFIG, headers={**admin, "X-Request-ID": "cfg-1"}, json={"retention_days": 9})
    assert put.status_code == 200

    listing = client.get(AUDIT, headers=admin, query_string={"action": "system.config_changed"})

    (entry,) = listing.get_json()["items"]
    assert entry["details"]["keys"] == ["retention_days"]
    assert entry["request_id"] == "cfg-1"
    assert entry["ip_address"] == "127.0.0.1"
    trigger = client.get(
        AUDIT,
        headers=admin,
        query_string={"resource_type": "system_config", "action": "system_config.*"},
    ).get_json()
    assert [item["action"] for item in trigger["items"]] == ["system_config.insert"]


@pytest.mark.parametrize(
    "query",
    [
        {"user_id": "not-a-uuid"},
        {"since": "yesterday"},
        {"since": "2026-02-01T00:00:00Z", "until": "2026-01-01T00:00:00Z"},
        {"per_page": "1000"},
        {"page": "0"},
        {"resource_id": "x" * 65},
    ],
)
def test_bad_audit_queries_are_422(
    client: FlaskClient, admin: dict[str, str], query: dict[str, str]
) -> None:
    response = client.get(AUDIT, headers=admin, query_string=query)
    assert response.status_code == 422
    assert error_code(response) == "validation_error"
