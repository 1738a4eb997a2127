"""Schemathesis against the real web process, driven by the app's own /openapi.json.

Three runs over every operation of the document, each answer checked for `not_a_server_error`
and for the status, media type and body the document gives:

- **Fuzzing** (`test_every_operation_answers_as_documented`): the examples, coverage and
  fuzzing phases, a few hundred generated requests per operation, valid ones and invalid ones
  that must be refused with a documented 4xx, each sent with the credential its operation asks
  for (the admin's API key; the metrics token for /metrics; a live refresh token for
  /auth/refresh).
- **Stateful** (`test_workflows_follow_the_links`): schemathesis's state machine chains calls
  along the document's OpenAPI links (web/openapi/links.py): a submitted job is read, followed
  and cancelled, a registered account logs in, refreshes, makes an API key and deletes itself,
  a model is registered, pulled and removed... Every operation takes part (the few that no
  answer links to get a link here, REACHABILITY_LINKS).
- **Bad credentials** (`test_bad_credentials_are_refused_everywhere`): valid requests to every
  operation that wants a credential, each sent with every credential of `bad_credentials`
  (malformed headers, foreign, forged, expired and revoked JWTs, a refresh token where an access
  token belongs, unknown, revoked and expired API keys, a disabled account's key, the admin's
  key where another scheme is asked for): 401 in the operation's own error shape, and on the
  WebSockets an error frame with the REST API's code and close code 1008. Public operations
  ignore them.

CI (the CI variable set) replays one fixed, derandomized exploration, so a landing never waits
on a new random find (the stateful suites have fixed seeds too, though what the server answers
steers their scenarios); elsewhere each run explores afresh from a random seed, printed first
(FUZZ_SEED=<seed> replays it), and what it finds becomes a test_input_edge_cases case. A
failure here is a bug in the app or in the document: fix that, not this test. The test bends
generation in two places only, each explained where it is: a registration's password is made
one the policy takes (_policy_password), and a body far over MAX_CONTENT_LENGTH is not sent
(_oversized).

The server gets a database of its own (`<database>_fuzz`, recreated at each run), so what the
fuzzer writes (accounts, models, config) never meets another test's data. No worker runs: a
seeded node with an OpenAI-compatible engine "serves" one model, so jobs are accepted and stay
queued (the front doors, which would wait for such a job, are steered off it; the Ollama door's
pull and delete only act on Ollama nodes).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import secrets
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
import schemathesis
import websocket
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis.errors import Flaky
from redis import Redis
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.core.parameters import ParameterLocation
from schemathesis.engine.errors import is_inconsistent_replay
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import create_engine, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import sessionmaker

from db import migrate
from db.models import ApiKey, Model, ModelReplica, Node, Role
from db.session import Database
from tests.conftest import (
    LiveServer,
    _test_database_url,
    make_committed_user,
    start_live_server,
    stop_live_server,
)
from tests.factories import TEST_PASSWORD
from tests.support.ws import next_frame

CI = bool(os.environ.get("CI"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
# Budgets (each test prints its figures; pytest -s shows them). `make test` runs the quick
# depth, a few minutes on 2 cores, so the whole suite stays near its 15-minute budget;
# `make fuzz` (FUZZ_DEPTH=deep) runs about three times as many cases (about 11 minutes).
DEEP = os.environ.get("FUZZ_DEPTH", "quick") == "deep"
# Fuzzing: cases per operation in the fuzzing phase; the examples and coverage phases add
# theirs (up to a few hundred more for the operations with bodies).
FUZZ_EXAMPLES = 140 if DEEP else 40
MIN_FUZZ_CASES = 11_000 if DEEP else 6_000
# Stateful: scenarios of up to STATEFUL_STEPS chained calls each.
STATEFUL_SCENARIOS = 250 if DEEP else 80
STATEFUL_STEPS = 20
STATEFUL_TOP_UP = 20  # more scenarios at a time while an operation has not been called
# Bad credentials: valid requests per operation, each sent with every bad credential.
BAD_CREDENTIAL_EXAMPLES = 4 if DEEP else 2
SEED = int(os.environ.get("FUZZ_SEED") or random.getrandbits(64))
TIMEOUT = {"timeout": 30}  # generous: a loaded CI machine is slow, not wrong
OVERSIZED_BODY = 40 * 1024 * 1024  # bytes; MAX_CONTENT_LENGTH is 32 MiB (see _oversized)

SERVED_MODEL = "fuzz-served:latest"
SERVING_NODE = "fuzz-serving@host"
METRICS_TOKEN = "fuzz-metrics-token-" + "m" * 24
JWT_SECRET = "fuzz-jwt-secret-" + "j" * 32
# Operations no answer links to (no answer names them or their ids), and the two only deep
# chains reach (register -> login -> DeleteAccount; a model pulled -> RemoveReplica): links
# from a busy neighbour, so the stateful phase calls each in every run. Not in the document:
# they say nothing to a client.
REACHABILITY_LINKS: dict[tuple[str, str], dict[str, dict[str, Any]]] = {
    ("health_liveness", "200"): {"Metrics": {"operationId": "metrics_metrics"}},
    ("system_read_config", "200"): {"Stats": {"operationId": "system_read_stats"}},
    ("openapi_docs", "200"): {"Static": {"operationId": "static"}},
    ("health_readiness", "200"): {"Document": {"operationId": "openapi_document"}},
    ("users_profile", "200"): {"DeleteMe": {"operationId": "users_delete_me"}},
    ("nodes_list_nodes", "200"): {
        "RemoveReplica": {
            "operationId": "models_remove_replica",
            "parameters": {"path.node_id": "$response.body#/items/0/id"},
        }
    },
}


@dataclass
class Actors:
    """Who the run acts as, and what must survive it."""

    admin_id: uuid.UUID
    admin_key: str
    admin_key_id: str
    refresher_id: uuid.UUID  # a plain user whose logins feed /auth/refresh
    refresher_name: str

    @property
    def protected_users(self) -> set[str]:
        return {str(self.admin_id), str(self.refresher_id)}


class RefreshTokens:
    """A live refresh token of the refresher for /auth/refresh: each 200 spends it and hands
    over the next; a 401 (its login ended, or the fuzzer replayed a spent one) logs in anew."""

    def __init__(self, base_url: str, username: str) -> None:
        self.base_url, self.username = base_url, username
        self.token = self._login()

    def _login(self) -> str:
        answer = requests.post(
            f"{self.base_url}/api/v1/auth/login",
            json={"username": self.username, "password": TEST_PASSWORD},
            timeout=10,
        )
        return str(answer.json().get("refresh_token", "")) if answer.ok else ""

    def observe(self, status: int, body: Any) -> None:
        if status == 200 and isinstance(body, dict) and body.get("refresh_token"):
            self.token = body["refresh_token"]
        elif status == 401:
            self.token = self._login()


class Run:
    """The live server and everything the three tests share."""

    def __init__(self, server: LiveServer, database: Database, actors: Actors) -> None:
        self.server, self.database, self.actors = server, database, actors
        self.url = server.url
        self.session = requests.Session()
        self.session.trust_env = False  # no proxy lookups per request
        self.refresh = RefreshTokens(self.url, actors.refresher_name)
        document = requests.get(f"{self.url}/openapi.json", timeout=10).json()
        self.config_keys = list(document["components"]["schemas"]["ConfigChange"]["properties"])

    def credential(self, operation: Any) -> dict[str, str]:
        schemes = _schemes(operation)
        if "metricsToken" in schemes:
            return {"Authorization": f"Bearer {METRICS_TOKEN}"}
        if "refreshToken" in schemes:
            return {"Authorization": f"Bearer {self.refresh.token}"}
        return {"Authorization": f"Bearer {self.actors.admin_key}"}

    def observe(self, case: Any, response: Any) -> None:
        if "refreshToken" in _schemes(case.operation):
            try:
                body = response.json()
            except ValueError:
                body = None
            self.refresh.observe(response.status_code, body)

    def restore(self) -> None:
        """Put back what the stateful phase builds on: the run-time config as the environment
        says, and a servable model on an online, undrained node."""
        reset = requests.put(
            f"{self.url}/api/v1/system/config",
            json=dict.fromkeys(self.config_keys),
            headers={"Authorization": f"Bearer {self.actors.admin_key}"},
            timeout=10,
        )
        assert reset.status_code == 200, reset.text
        seed_serving_fleet(self.database)


def _schemes(operation: Any) -> set[str]:
    requirements = operation.definition.raw.get("security") or []
    return {name for requirement in requirements for name in requirement}


def seed_serving_fleet(database: Database) -> None:
    """An online OpenAI-engine node holding SERVED_MODEL, fresh; made again if the fuzzer
    deleted, drained, disabled or re-pulled any of it."""
    now = datetime.now(UTC)
    with database.unit_of_work() as session:
        node_id = session.execute(
            insert(Node)
            .values(
                id=uuid.uuid4(),
                name=SERVING_NODE,
                hostname="fuzz-host",
                gpu_index=0,
                engine_kind="openai",
                engine_url="http://127.0.0.1:9",
                status="online",
                slots=2,
                last_heartbeat_at=now,
            )
            .on_conflict_do_update(
                index_elements=["name"],
                set_={"status": "online", "drained": False, "last_heartbeat_at": now},
            )
            .returning(Node.id)
        ).scalar_one()
        model_id = session.execute(
            insert(Model)
            .values(id=uuid.uuid4(), name=SERVED_MODEL, status="available")
            .on_conflict_do_update(index_elements=["name"], set_={"status": "available"})
            .returning(Model.id)
        ).scalar_one()
        session.execute(
            insert(ModelReplica)
            .values(
                id=uuid.uuid4(),
                model_id=model_id,
                node_id=node_id,
                status="available",
                last_seen_at=now,
            )
            .on_conflict_do_update(
                index_elements=["model_id", "node_id"],
                set_={"status": "available", "last_seen_at": now},
            )
        )


@pytest.fixture(scope="module")
def run(
    settings_overrides: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Run]:
    url = _test_database_url("fuzz")
    migrate.create_database(url, drop_existing=True)
    migrate.upgrade(url)
    redis = Redis.from_url(settings_overrides["redis_url"])
    redis.flushdb()
    engine = create_engine(url)
    database = Database(engine, sessionmaker(engine, expire_on_commit=False))
    seed_serving_fleet(database)
    overrides = {
        **settings_overrides,
        "database_url": url,
        "jwt_secret_key": JWT_SECRET,
        "metrics_token": METRICS_TOKEN,
        # Requests come faster than the suite's budget allows (bad credentials: hundreds a
        # second, from one address): a 429 would hide the answer under test.
        "ratelimit_default": "1000000/minute",
        "ratelimit_login": "1000000/minute",
        "ratelimit_register": "1000000/minute",
        # The seeded node never beats; it must stay fresh for the whole run.
        "node_stale_after_s": 86400,
    }
    server = start_live_server(overrides, Path(tmp_path_factory.mktemp("fuzz_server")))
    try:
        yield Run(server, database, _actors(server, database))
    finally:
        stop_live_server(server)
        engine.dispose()
        redis.flushdb()
        redis.close()


def _login(url: str, username: str) -> dict[str, Any]:
    answer = requests.post(
        f"{url}/api/v1/auth/login",
        json={"username": username, "password": TEST_PASSWORD},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def _new_key(url: str, access_token: str, name: str, scopes: list[str]) -> dict[str, Any]:
    created = requests.post(
        f"{url}/api/v1/users/api-keys",
        json={"name": name, "scopes": scopes, "current_password": TEST_PASSWORD},
        headers={"Authorization": f"Bearer {access_token}"},
        timeout=10,
    )
    assert created.status_code == 201, created.text
    return dict(created.json())


def _actors(server: LiveServer, database: Database) -> Actors:
    admin = make_committed_user(database, Role.ADMIN)
    key = _new_key(
        server.url, _login(server.url, admin.username)["access_token"], "fuzz", ["admin"]
    )
    refresher = make_committed_user(database)
    return Actors(admin.id, key["key"], key["id"], refresher.id, refresher.username)


def _policy_password(context: Any, body: Any) -> Any:
    """A registration's password as the password policy wants it (10 to 72 bytes, not the
    username, strong enough), where the generated one is not: the document only says
    `minLength: 1`, so most generated accounts would be refused and nothing could log in to
    them. Derived from the generated one, so a derandomized run stays the same."""
    if context.operation is None or context.operation.label != "POST /api/v1/auth/register":
        return body
    password = body.get("password") if isinstance(body, dict) else None
    if isinstance(password, str) and not 10 <= len(password.encode()) <= 72:
        digest = hashlib.sha256(password.encode("utf-8", "surrogatepass")).hexdigest()
        body["password"] = f"Fz-{digest[:24]}"
    return body


def _load_schema(run: Run, generation: dict[str, Any] | None = None) -> Any:
    """The served document, with the reachability links, and no links of schemathesis's own
    guessing: the stateful phase follows what the document says."""
    document = requests.get(f"{run.url}/openapi.json", timeout=10).json()
    by_id = {
        operation["operationId"]: operation
        for item in document["paths"].values()
        for operation in item.values()
    }
    for (source, status), added in REACHABILITY_LINKS.items():
        answer = by_id[source]["responses"][status]
        for name, link in added.items():
            assert link["operationId"] in by_id, link
            answer.setdefault("links", {})[name] = link
    config = SchemathesisConfig.from_dict(
        {
            # A seed given here outranks `derandomize`: CI gives none.
            **({} if CI else {"seed": SEED}),
            "generation": generation or {},
            "phases": {"stateful": {"inference": {"algorithms": []}}},
        }
    )
    loaded = schemathesis.openapi.from_dict(document, config=config)
    loaded.config.update(base_url=run.url)
    loaded.hooks.register_hook_with_name(_policy_password, "map_body")
    return loaded


@pytest.fixture(scope="module")
def api_schema(run: Run) -> Any:
    return _load_schema(run)


@pytest.fixture(scope="module", autouse=True)
def _announce_the_seed() -> None:
    if not CI:
        print(f"\nschemathesis: random exploration, FUZZ_SEED={SEED} replays it")


def _keep_the_run_alive(case: Any, actors: Actors) -> None:
    """Steer off the few requests that would sabotage the run itself (schemathesis can reuse
    ids it saw in answers, and links hand them on, so it finds them): revoking the key it
    uses, demoting, disabling or deleting its admin or the refresher, a rate limit so low that
    every later request is a 429, and front-door jobs for the served model (no worker runs
    here, so a front door waiting for such a job would never answer). Everything else goes
    through as generated; what the fleet and config lose is put back (Run.restore)."""
    parameters = case.path_parameters or {}
    if parameters.get("key_id") == actors.admin_key_id:
        parameters["key_id"] = str(uuid.uuid4())
    if str(parameters.get("user_id")) in actors.protected_users:
        parameters["user_id"] = str(uuid.uuid4())
    body = case.body
    if not isinstance(body, dict):
        return
    if case.path == "/api/v1/system/config":
        for limit in ("ratelimit_default", "ratelimit_login", "ratelimit_register"):
            if body.get(limit) is not None:
                body[limit] = None  # back to the environment's (large) budget
        # No worker runs here: a queued job would keep a front door's answer open forever.
        body["queue_while_unavailable"] = None
    elif not case.path.startswith("/api/v1/") and "fuzz-" in str(body.get("model")):
        body["model"] = "not-served-here"


def _call(run: Run, case: Any, headers: dict[str, str]) -> Any:
    response = case.call(base_url=run.url, session=run.session, headers=headers, **TIMEOUT)
    run.observe(case, response)
    return response


def _validate(run: Run, case: Any, response: Any, headers: dict[str, str]) -> None:
    case.validate_response(
        response,
        checks=CHECKS,
        headers=headers,
        transport_kwargs={"base_url": run.url, "headers": headers, **TIMEOUT},
    )


@dataclass
class FuzzTally:
    cases: Counter[str]
    oversized: Counter[str]  # generated, not sent (see _oversized)
    seconds: Counter[str]  # spent per operation, to say where the run's time goes


@pytest.fixture
def fuzz_cases(api_schema: Any, run: Run) -> Iterator[FuzzTally]:
    """Cases per operation (one test runs them all, as subtests); once every operation has
    run, there must be enough of them, and the run must still have been an admin's at its end
    (see _keep_the_run_alive)."""
    tally = FuzzTally(Counter(), Counter(), Counter())
    started = time.monotonic()
    yield tally
    _assert_still_admin(run)
    operations = sum(1 for _ in api_schema.get_all_operations())
    counts = tally.cases
    total = sum(counts.values())
    print(  # shown with -s
        f"\nschemathesis fuzzing: {total} cases over {len(counts)} operations "
        f"in {time.monotonic() - started:.1f}s (per operation: fewest {min(counts.values())}, "
        f"median {statistics.median(counts.values()):.0f}, most {max(counts.values())}); "
        f"bodies over {OVERSIZED_BODY} bytes not sent: {dict(tally.oversized) or 'none'}; "
        f"slowest operations (s): {[(op, round(s, 1)) for op, s in tally.seconds.most_common(5)]}"
    )
    if len(counts) == operations:  # not when -k picked a few
        assert total >= MIN_FUZZ_CASES


def _oversized(body: Any) -> bool:
    """Whether the body's JSON would be over OVERSIZED_BODY bytes (counted without writing
    it). The coverage phase builds a schema's largest values: /api/embed's `input` (2048
    strings of up to 1,000,000 characters) makes a 1 GB body, far over MAX_CONTENT_LENGTH,
    and the server reads all of it before its 413 (about 30 MB/s here), so one such case
    outlasts the 30 s timeout. A body a little over the limit is still sent (and gets 413)."""
    size, pending = 0, [body]
    while pending and size <= OVERSIZED_BODY:
        item = pending.pop()
        if isinstance(item, str):
            size += len(item) + 2
        elif isinstance(item, dict):
            pending += [*item.keys(), *item.values()]
            size += 2 * len(item) + 2
        elif isinstance(item, list):
            pending += item
            size += len(item) + 2
        else:
            size += 8
    return size > OVERSIZED_BODY


def _assert_still_admin(run: Run) -> None:
    profile = requests.get(
        f"{run.url}/api/v1/users/profile",
        headers={"Authorization": f"Bearer {run.actors.admin_key}"},
        timeout=10,
    )
    assert (profile.status_code, profile.json().get("role")) == (200, "admin"), profile.text


schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.fixture(autouse=True)
def _node_id_for_schemathesis(request: pytest.FixtureRequest) -> None:
    """Schemathesis 4.32.5 reads and relabels `node._nodeid`, which pytest 9.2 no longer has
    (it keeps a structured `_id`); give it the attribute it expects. Labels only."""
    request.node._nodeid = request.node.nodeid


@schema.parametrize()
@settings(
    max_examples=FUZZ_EXAMPLES,
    derandomize=CI,
    deadline=None,
    database=None,  # no .hypothesis/ folder in the repository
    suppress_health_check=list(HealthCheck),
)
def test_every_operation_answers_as_documented(case: Any, run: Run, fuzz_cases: FuzzTally) -> None:
    label = case.operation.label
    if not fuzz_cases.cases[label]:
        run.restore()  # each operation meets the served model and the environment's config
    fuzz_cases.cases[label] += 1
    if _oversized(case.body):
        fuzz_cases.oversized[label] += 1
        return
    started = time.monotonic()
    _keep_the_run_alive(case, run.actors)
    headers = run.credential(case.operation)
    _validate(run, case, _call(run, case, headers), headers)
    fuzz_cases.seconds[label] += time.monotonic() - started


class Workflows:
    """The stateful phase's state machine, its counts and the failures it saw.

    Hypothesis replays scenario prefixes, and this server remembers: a replay that answers
    otherwise than the first time (a deleted model, a spent token) ends Hypothesis's run with
    a Flaky error that says nothing about the API. As schemathesis's own runner does, such a
    run counts as a suite, and the next suite goes on with the next seed until the scenarios
    are spent; failures of the checks are recorded as they happen, so none is lost."""

    def __init__(self, api_schema: Any, run: Run) -> None:
        self.steps: Counter[str] = Counter()
        self.scenarios = self.suites = 0
        self.failures: list[str] = []
        self.machine = self._machine(api_schema.as_state_machine(), run)

    def _machine(self, generated: Any, run: Run) -> Any:
        workflows = self

        class Workflow(generated):  # type: ignore[misc, valid-type]
            def setup(self) -> None:
                workflows.scenarios += 1
                run.restore()
                self.own_credential = False

            def step(self, input: Any) -> Any:
                applied = input.applied_parameters
                self.own_credential = (ParameterLocation.HEADER, "Authorization") in applied
                return super().step(input)

            def before_call(self, case: Any) -> None:
                _keep_the_run_alive(case, run.actors)

            def get_call_kwargs(self, case: Any) -> dict[str, Any]:
                headers = {} if self.own_credential else run.credential(case.operation)
                return {"base_url": run.url, "session": run.session, "headers": headers, **TIMEOUT}

            def after_call(self, response: Any, case: Any) -> None:
                workflows.steps[case.operation.label] += 1
                if not self.own_credential:
                    run.observe(case, response)
                super().after_call(response, case)

            def validate_response(
                self, response: Any, case: Any, additional_checks: Any = None, **kwargs: Any
            ) -> None:
                headers = kwargs.get("headers")
                try:
                    case.validate_response(
                        response,
                        checks=CHECKS,
                        headers=headers,
                        transport_kwargs=kwargs,
                        recorder=self.recorder,
                    )
                except Exception as error:
                    workflows.failures.append(f"{error}\n{case.as_curl_command(headers)}")
                    raise

        return Workflow

    def run_suites(self, operations: set[str]) -> None:
        """STATEFUL_SCENARIOS scenarios, then more, a few at a time, while an operation has
        not been called yet (links make every one reachable, but a deep one can be missed)."""
        goal = STATEFUL_SCENARIOS
        while not self.failures:
            if self.scenarios >= goal:
                if not operations - set(self.steps) or goal >= 2 * STATEFUL_SCENARIOS:
                    return
                goal = self.scenarios + STATEFUL_TOP_UP
            suite_seed = self.suites if CI else SEED + self.suites  # CI: the same suites
            machine = hypothesis_seed(suite_seed)(self.machine)
            machine.rule_order_seed = suite_seed  # each suite opens with other first steps
            self.suites += 1
            try:
                machine.run(
                    settings=settings(
                        max_examples=goal - self.scenarios,
                        stateful_step_count=STATEFUL_STEPS,
                        deadline=None,
                        database=None,
                        suppress_health_check=list(HealthCheck),
                        phases=[Phase.generate],  # a failing scenario is reported as found
                    )
                )
            except Exception as error:
                replayed_otherwise = isinstance(error, Flaky) or is_inconsistent_replay(error)
                if not replayed_otherwise and not self.failures:
                    raise


def _count(item: tuple[str, int]) -> tuple[int, str]:
    return item[1], item[0]


def test_workflows_follow_the_links(api_schema: Any, run: Run) -> None:
    """The stateful phase: scenarios of calls chained by the document's links, each starting
    from the served model and the environment's config (Run.restore). A link that carries its
    own credential (a login's token, a new key) is sent with it; every other step with the
    credential its operation asks for. Every operation of the document takes part."""
    operations = {result.ok().label for result in api_schema.get_all_operations()}
    workflows = Workflows(api_schema, run)
    started = time.monotonic()
    workflows.run_suites(operations)
    if workflows.failures:
        pytest.fail("\n\n".join(workflows.failures))
    _assert_still_admin(run)
    steps = workflows.steps
    fewest = ", ".join(f"{label} {count}" for label, count in sorted(steps.items(), key=_count)[:5])
    print(
        f"\nschemathesis stateful: {sum(steps.values())} steps in {workflows.scenarios} "
        f"scenarios ({workflows.suites} suites) over {len(steps)} operations "
        f"in {time.monotonic() - started:.1f}s (fewest: {fewest})"
    )
    assert sorted(operations - set(steps)) == []


@pytest.fixture(scope="module")
def bad_credentials(run: Run) -> dict[str, str]:
    """Authorization values no operation may take, by what is wrong with them."""
    url, now = run.url, datetime.now(UTC)
    claims = {
        "sub": str(run.actors.admin_id),
        "type": "access",
        "fresh": False,
        "jti": str(uuid.uuid4()),
        "fam": str(uuid.uuid4()),
        "csrf": str(uuid.uuid4()),
        "iat": now,
        "nbf": now,
        "exp": now + timedelta(minutes=15),
    }
    hour_ago = now - timedelta(hours=1)

    def signed(extra: dict[str, Any], key: str = JWT_SECRET) -> str:
        return "Bearer " + jwt.encode({**claims, **extra}, key, algorithm="HS256")

    def unsigned() -> str:
        parts = [{"alg": "none", "typ": "JWT"}, {**claims, "iat": 0, "nbf": 0, "exp": 2**31}]
        encoded = [base64.urlsafe_b64encode(json.dumps(p).encode()).rstrip(b"=") for p in parts]
        return "Bearer " + b".".join(encoded).decode() + "."

    victim = make_committed_user(run.database)
    first, second = _login(url, victim.username), _login(url, victim.username)
    logged_out = requests.post(
        f"{url}/api/v1/users/logout",
        headers={"Authorization": f"Bearer {second['access_token']}"},
        timeout=10,
    )
    assert logged_out.status_code == 204, logged_out.text
    access = first["access_token"]
    revoked, expired = (_new_key(url, access, name, ["inference"]) for name in ("r", "e"))
    gone = requests.delete(
        f"{url}/api/v1/users/api-keys/{revoked['id']}",
        headers={"Authorization": f"Bearer {access}"},
        timeout=10,
    )
    assert gone.status_code == 204, gone.text
    with run.database.unit_of_work() as session:
        session.execute(
            update(ApiKey).where(ApiKey.id == uuid.UUID(expired["id"])).values(expires_at=now)
        )
    disabled = make_committed_user(run.database)
    disabled_key = _new_key(url, _login(url, disabled.username)["access_token"], "d", ["inference"])
    off = requests.put(
        f"{url}/api/v1/users/{disabled.id}",
        json={"is_active": False},
        headers={"Authorization": f"Bearer {run.actors.admin_key}"},
        timeout=10,
    )
    assert off.status_code == 200, off.text
    admin_prefix = run.actors.admin_key.rsplit("_", 1)[0]
    return {
        "no scheme": run.actors.admin_key,
        "empty bearer": "Bearer ",
        "bare bearer": "Bearer",
        "basic": "Basic "
        + base64.b64encode(f"{victim.username}:{TEST_PASSWORD}".encode()).decode(),
        "not a JWT": "Bearer not-a-token",
        "garbage JWT": "Bearer a.b.c",
        "unsigned JWT (alg none)": unsigned(),
        "foreign JWT": signed({}, key="another-deployment-" + "x" * 32),
        "expired JWT": signed({"iat": hour_ago, "nbf": hour_ago, "exp": now - timedelta(1)}),
        "unknown account's JWT": signed({"sub": str(uuid.uuid4())}),
        "logged-out JWT": f"Bearer {second['access_token']}",
        "unknown API key": f"Bearer omx_{secrets.token_hex(5)}_{secrets.token_urlsafe(32)}",
        "API key, wrong secret": f"Bearer {admin_prefix}_{secrets.token_urlsafe(32)}",
        "revoked API key": f"Bearer {revoked['key']}",
        "expired API key": f"Bearer {expired['key']}",
        "disabled account's API key": f"Bearer {disabled_key['key']}",
        # Valid, but of the wrong kind for some schemes (see _wrong_for).
        "refresh token": f"Bearer {first['refresh_token']}",
        "access token": f"Bearer {access}",
        "admin API key": f"Bearer {run.actors.admin_key}",
    }


# What each scheme refuses on top of the credentials that are bad everywhere.
WRONG_KIND = {
    "accessToken": {"refresh token"},
    "refreshToken": {"access token", "admin API key"},
    "metricsToken": {"refresh token", "access token", "admin API key"},
}
VALID_SOMEWHERE = set().union(*WRONG_KIND.values())


def _wrong_for(operation: Any, credentials: dict[str, str]) -> dict[str, str]:
    schemes = _schemes(operation)
    wrong = set(credentials) - VALID_SOMEWHERE
    for scheme in schemes:
        wrong |= WRONG_KIND.get(scheme, set())
    return {name: credentials[name] for name in sorted(wrong)}


def test_bad_credentials_are_refused_everywhere(run: Run, bad_credentials: dict[str, str]) -> None:
    # Valid inputs without NUL characters: the input gate refuses those (400) before anything
    # looks at the credential, and tests/web/test_input_gate.py covers it.
    api_schema = _load_schema(run, {"allow-x00": False})
    run.restore()
    failures: list[str] = []
    sent: Counter[str] = Counter()
    started = time.monotonic()
    for result in api_schema.get_all_operations():
        operation = result.ok()
        if "101" in operation.definition.raw["responses"]:
            continue  # WebSockets: below, as handshakes
        _send_bad_credentials(run, operation, bad_credentials, failures, sent)
    codes = _rest_codes(run, _wrong_for_access(bad_credentials))
    for path in ("/ws", f"/ws/inference/{uuid.uuid4()}"):
        for name, value in _wrong_for_access(bad_credentials).items():
            sent[f"GET {path}"] += 1
            refusal = _handshake(run.url, path, value)
            if refusal != (codes[name], 1008):
                failures.append(f"GET {path} with {name}: {refusal}, want ({codes[name]}, 1008)")
    print(
        f"\nschemathesis bad credentials: {sum(sent.values())} requests over {len(sent)} "
        f"operations in {time.monotonic() - started:.1f}s"
    )
    if failures:
        pytest.fail(f"{len(failures)} answers to bad credentials:\n" + "\n".join(failures[:30]))


def _wrong_for_access(credentials: dict[str, str]) -> dict[str, str]:
    wrong = set(credentials) - VALID_SOMEWHERE | WRONG_KIND["accessToken"]
    return {name: credentials[name] for name in sorted(wrong)}


def _send_bad_credentials(
    run: Run,
    operation: Any,
    credentials: dict[str, str],
    failures: list[str],
    sent: Counter[str],
) -> None:
    """Valid requests, each sent with every bad credential: 401 where the operation wants a
    credential, and whatever it documents (never a 5xx) where it is public."""
    protected = bool(_schemes(operation))
    wrong = _wrong_for(operation, credentials)

    @settings(
        max_examples=BAD_CREDENTIAL_EXAMPLES,
        derandomize=CI,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.generate],
    )
    @given(case=operation.as_strategy())
    def send(case: Any) -> None:
        _keep_the_run_alive(case, run.actors)
        for name, value in wrong.items():
            headers = {"Authorization": value}
            response = case.call(base_url=run.url, session=run.session, headers=headers, **TIMEOUT)
            sent[operation.label] += 1
            try:
                _validate(run, case, response, headers)
                if protected:
                    assert response.status_code == 401, response.status_code
            except Exception as error:  # a failed check or assertion, reported below
                failures.append(
                    f"{operation.label} with {name}: {response.status_code} "
                    f"{response.text[:200]!r}: {error!s:.300}\n"
                    f"  {case.as_curl_command(headers):.600}"
                )

    if not CI:
        hypothesis_seed(SEED)(send)
    send()


def _rest_codes(run: Run, credentials: dict[str, str]) -> dict[str, str]:
    """The error code the REST API refuses each credential with (a socket says the same)."""
    codes = {}
    for name, value in credentials.items():
        answer = requests.get(
            f"{run.url}/api/v1/users/profile", headers={"Authorization": value}, timeout=10
        )
        assert answer.status_code == 401, (name, answer.text)
        codes[name] = answer.json()["error"]["code"]
    return codes


def _handshake(base_url: str, path: str, authorization: str) -> tuple[str | None, int | None]:
    """A WebSocket handshake with this Authorization: the first frame's error code and the
    close code."""
    ws = websocket.create_connection(
        base_url.replace("http://", "ws://", 1) + path,
        header=[f"Authorization: {authorization}"],
        timeout=10,
    )
    try:
        frame = next_frame(ws) or {}
        code = frame.get("code") if frame.get("type") == "error" else None
        try:
            while True:
                opcode, data = ws.recv_data(control_frame=True)
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    return code, int.from_bytes(data[:2], "big") if len(data) >= 2 else None
        except websocket.WebSocketConnectionClosedException:
            return code, None
    finally:
        ws.close()
