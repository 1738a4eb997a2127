"""A run-time config change reaches the running processes: this web process at once, a
worker (`python -m workers run`) at its next read, without a restart."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from redis import Redis
from sqlalchemy import delete

from config.settings import build_settings
from db.models import SystemConfig
from db.session import Database
from tests.pipeline.conftest import Double, Worker, wait_for
from tests.pipeline.jobs import finished, read, submit
from workers.runtime_config import RuntimeConfigSource

CONFIG = "/api/v1/system/config"
# The worker re-reads the config this often (the default, 2 s, would only slow the tests).
WORKER_TTL_S = 0.2

pytestmark = pytest.mark.usefixtures("beat", "fresh_double", "clean_config")


@pytest.fixture(scope="module")
def worker(start_worker: Any, double: Double) -> Worker:
    return start_worker(
        double.url, name="w-config@test", slots=2, env={"LIVE_CONFIG_TTL_S": str(WORKER_TTL_S)}
    )


@pytest.fixture
def clean_config(base_app: Flask, committed: Database) -> Iterator[None]:
    """`committed` truncates requests and users, not settings: no stored value may outlive
    the test (the next module's worker would inherit it)."""

    def wipe() -> None:
        with committed.unit_of_work() as session:
            session.execute(delete(SystemConfig))
        base_app.extensions["runtime_config"].changed()

    wipe()
    yield
    wipe()


def put_config(api: FlaskClient, headers: dict[str, str], **values: Any) -> dict[str, Any]:
    response = api.put(CONFIG, headers=headers, json=values)
    assert response.status_code == 200, response.get_json()
    return response.get_json()["config"]  # type: ignore[no-any-return]


def seconds_between(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def test_a_lower_max_generation_s_stops_the_next_job_on_the_running_worker(
    api: FlaskClient,
    admin_headers: dict[str, str],
    user_headers: dict[str, str],
    worker: Worker,
    double: Double,
) -> None:
    double.configure(token_delay_s=0.3, default_tokens=10)  # about 3 s per job

    assert put_config(api, admin_headers, max_generation_s=1)["max_generation_s"]["value"] == 1
    time.sleep(WORKER_TTL_S * 3)  # the worker's memo has expired; the cache was invalidated
    slow = submit(api, user_headers, prompt="a slow story")
    result = finished(api, user_headers, slow["id"])

    assert (result["status"], result["error_code"]) == ("failed", "timeout"), result
    assert "exceeded 1 s" in result["error"]
    assert seconds_between(result["started_at"], result["completed_at"]) < 2.5

    config = put_config(api, admin_headers, max_generation_s=None)
    assert config["max_generation_s"] == {**config["max_generation_s"], "value": 600}
    time.sleep(WORKER_TTL_S * 3)
    again = finished(api, user_headers, submit(api, user_headers, prompt="a slow story")["id"])
    assert again["status"] == "completed", again


def test_default_priority_applies_to_jobs_that_name_none(
    api: FlaskClient, admin_headers: dict[str, str], user_headers: dict[str, str], worker: Worker
) -> None:
    put_config(api, admin_headers, default_priority=8)
    unnamed = submit(api, user_headers)
    named = submit(api, user_headers, priority=2)
    put_config(api, admin_headers, default_priority=None)
    after_reset = submit(api, user_headers)

    assert read(api, user_headers, unnamed["id"])["priority"] == 8
    assert read(api, user_headers, named["id"])["priority"] == 2
    assert read(api, user_headers, after_reset["id"])["priority"] == 5
    for job in (unnamed, named, after_reset):
        assert finished(api, user_headers, job["id"])["status"] == "completed"


def test_another_process_reads_a_change_without_waiting_for_its_memo(
    api: FlaskClient,
    admin_headers: dict[str, str],
    committed: Database,
    settings_overrides: dict[str, Any],
) -> None:
    settings = build_settings({**settings_overrides, "live_config_ttl_s": 0.5})
    other = RuntimeConfigSource(settings, committed, Redis.from_url(settings.cache_url))
    assert other.current().retention_days == 90  # cached in Redis and memoised

    put_config(api, admin_headers, retention_days=30)

    # The API never answers from a memo, and the cache entry was invalidated after commit.
    assert api.get(CONFIG, headers=admin_headers).get_json()["config"]["retention_days"] == {
        "value": 30,
        "default": 90,
        "overridden": True,
        "description": "Finished requests and audit entries older than this go.",
    }
    assert other.fresh().retention_days == 30
    wait_for(lambda: other.current().retention_days == 30, timeout=2)
