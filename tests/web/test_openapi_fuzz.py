"""Schemathesis against the real web process, driven by the app's own /openapi.json.

Every operation of the document gets generated requests (valid ones, and invalid ones that
must be refused with a documented 4xx), sent as an admin with an API key. Each answer must not
be a 5xx, and its status, media type and body must be what the document says. A failure here
is a bug in the app or in the document: fix that, not this test.

The server gets a database of its own (`<database>_fuzz`, recreated at each run), so what the
fuzzer writes (accounts, models, config) never meets another test's data.
"""

from __future__ import annotations

import os
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from redis import Redis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from db import migrate
from db.models import Role
from db.session import Database
from tests.conftest import (
    LiveServer,
    _test_database_url,
    make_committed_user,
    start_live_server,
    stop_live_server,
)
from tests.factories import TEST_PASSWORD

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
# Cases per operation in the fuzzing phase (the examples and coverage phases add their own);
# about 1,500 cases in all, well under a minute on 2 cores.
MAX_EXAMPLES = 25
MIN_TOTAL_CASES = 1000


class Admin:
    def __init__(self, user_id: uuid.UUID, key: str, key_id: str) -> None:
        self.user_id, self.key, self.key_id = user_id, key, key_id


@pytest.fixture(scope="module")
def fuzzed_server(
    settings_overrides: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[LiveServer, Admin]]:
    url = _test_database_url("fuzz")
    migrate.create_database(url, drop_existing=True)
    migrate.upgrade(url)
    redis = Redis.from_url(settings_overrides["redis_url"])
    redis.flushdb()
    engine = create_engine(url)
    database = Database(engine, sessionmaker(engine, expire_on_commit=False))
    overrides = {**settings_overrides, "database_url": url}
    server = start_live_server(overrides, Path(tmp_path_factory.mktemp("fuzz_server")))
    try:
        yield server, _admin_with_key(server, database)
    finally:
        stop_live_server(server)
        engine.dispose()
        redis.flushdb()
        redis.close()


def _admin_with_key(server: LiveServer, database: Database) -> Admin:
    user = make_committed_user(database, Role.ADMIN)
    login = requests.post(
        f"{server.url}/api/v1/auth/login",
        json={"username": user.username, "password": TEST_PASSWORD},
        timeout=10,
    )
    created = requests.post(
        f"{server.url}/api/v1/users/api-keys",
        json={"name": "fuzz", "scopes": ["admin"], "current_password": TEST_PASSWORD},
        headers={"Authorization": f"Bearer {login.json()['access_token']}"},
        timeout=10,
    )
    assert created.status_code == 201, created.text
    return Admin(user.id, created.json()["key"], created.json()["id"])


@pytest.fixture(scope="module")
def api_schema(fuzzed_server: tuple[LiveServer, Admin]) -> Any:
    server, _ = fuzzed_server
    return schemathesis.openapi.from_url(f"{server.url}/openapi.json")


@pytest.fixture(scope="module")
def cases_run(api_schema: Any, fuzzed_server: tuple[LiveServer, Admin]) -> Iterator[Counter[str]]:
    """Cases per operation; once every operation has run, there must be enough of them, and
    the run must still have been an admin's at its end (see _keep_the_run_alive)."""
    counts: Counter[str] = Counter()
    started = time.monotonic()
    yield counts
    server, admin = fuzzed_server
    profile = requests.get(
        f"{server.url}/api/v1/users/profile",
        headers={"Authorization": f"Bearer {admin.key}"},
        timeout=10,
    )
    assert (profile.status_code, profile.json().get("role")) == (200, "admin"), profile.text
    operations = sum(1 for _ in api_schema.get_all_operations())
    total = sum(counts.values())
    print(  # the figure docs/api.md quotes; shown with -s
        f"\nschemathesis: {total} cases over {len(counts)} operations "
        f"in {time.monotonic() - started:.1f}s"
    )
    if len(counts) == operations:  # not when -k picked a few
        assert total >= MIN_TOTAL_CASES


def _keep_the_run_alive(case: Any, admin: Admin) -> None:
    """Steer off the few requests that would sabotage the run itself (schemathesis can reuse
    ids it saw in answers, so it may find them): revoking the key it uses, demoting, disabling
    or deleting its admin (possible once it made another admin), or a rate limit so low that
    every later request is a 429, or jobs queued for models no node serves (this run has no
    worker, so a front door waiting for such a job would never answer). Everything else goes
    through as generated."""
    parameters = case.path_parameters or {}
    if parameters.get("key_id") == admin.key_id:
        parameters["key_id"] = str(uuid.uuid4())
    if parameters.get("user_id") == str(admin.user_id):
        parameters["user_id"] = str(uuid.uuid4())
    body = case.body
    if case.path == "/api/v1/system/config" and isinstance(body, dict):
        if body.get("ratelimit_default") is not None:
            body["ratelimit_default"] = None  # back to the environment's (large) budget
        # No worker runs here: a queued job would keep a front door's answer open forever.
        body["queue_while_unavailable"] = None


schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.fixture(autouse=True)
def _node_id_for_schemathesis(request: pytest.FixtureRequest) -> None:
    """Schemathesis 4.32.5 reads and relabels `node._nodeid`, which pytest 9.2 no longer has
    (it keeps a structured `_id`); give it the attribute it expects. Labels only."""
    request.node._nodeid = request.node.nodeid


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    # CI replays one fixed exploration, so a landing never hangs on a new random find; runs
    # elsewhere explore afresh each time (and what they find becomes a test_input_edge_cases case).
    derandomize=bool(os.environ.get("CI")),
    deadline=None,
    database=None,  # no .hypothesis/ folder in the repository
    suppress_health_check=list(HealthCheck),
)
def test_every_operation_answers_as_documented(
    case: Any, fuzzed_server: tuple[LiveServer, Admin], cases_run: Counter[str]
) -> None:
    server, admin = fuzzed_server
    _keep_the_run_alive(case, admin)
    cases_run[case.operation.label] += 1
    case.call_and_validate(
        base_url=server.url,
        headers={"Authorization": f"Bearer {admin.key}"},
        checks=CHECKS,
        timeout=30,  # generous: a loaded CI machine is slow, not wrong
    )
