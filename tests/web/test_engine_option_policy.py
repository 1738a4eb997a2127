"""The engine-option policy (web/inference/policy.py, docs/security.md): what a job may ask
of an engine and of the queue, by role, through the native API and both doors. Out-of-policy
values are clamped where the policy clamps and refused with a 400 naming the option where it
refuses; nothing refused is stored, and an in-policy request is stored as sent."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from config.runtime import RuntimeConfig
from db.base import utcnow
from db.models import InferenceRequest, Model, ModelStatus, Role
from tests.factories import ModelReplicaFactory
from tests.support.identity import auth_headers, make_user
from web.inference import policy

MODEL = "policy-llama"
NATIVE, OLLAMA, OPENAI = "native", "ollama", "openai"
PATHS = {
    NATIVE: "/api/v1/inference/generate",
    OLLAMA: "/api/generate",
    OPENAI: "/v1/completions",
}
ROLES = [Role.USER, Role.OPERATOR, Role.ADMIN]


@pytest.fixture(autouse=True)
def served(db_session: Session) -> None:
    ModelReplicaFactory(
        model__name=f"{MODEL}:latest",
        model__status=ModelStatus.AVAILABLE,
        node__last_heartbeat_at=utcnow(),
    )


class Submitter:
    def __init__(self, client: FlaskClient, db_session: Session, role: str) -> None:
        self.client = client
        self.db_session = db_session
        self.headers = auth_headers(client, make_user(role))

    @contextmanager
    def submit(self, door: str, **body: Any) -> Iterator[tuple[Any, InferenceRequest | None]]:
        """The answer, and the job it stored (None if none)."""
        payload = {"model": MODEL, "prompt": "why is the sky blue?", **body}
        if door == OPENAI:
            payload["stream"] = True
        response = self.client.post(PATHS[door], json=payload, headers=self.headers)
        try:
            if door == NATIVE:
                request_id = (response.get_json() or {}).get("id")
            else:
                request_id = response.headers.get("X-OllamaMax-Request-ID")
            self.db_session.expire_all()
            row = (
                self.db_session.get(InferenceRequest, uuid.UUID(request_id)) if request_id else None
            )
            yield response, row
        finally:
            response.close()  # a door's caller leaves: its job is cancelled

    def stored(self, door: str, **body: Any) -> InferenceRequest:
        with self.submit(door, **body) as (response, row):
            assert response.status_code in (200, 202), response.get_data(as_text=True)
            assert row is not None
            return row

    def refused(self, door: str, field: str, **body: Any) -> str:
        """The 400's message, in the door's own shape, which names `field`."""
        with self.submit(door, **body) as (response, row):
            assert response.status_code == 400, response.get_data(as_text=True)
            assert row is None
            error = response.get_json()["error"]
            if door == NATIVE:
                assert error["code"] == "bad_request"
                assert error["details"] == {"field": field}
                message = str(error["message"])
            else:
                message = str(error)
            assert field in message
            assert self.db_session.query(InferenceRequest).count() == 0
            return message


@pytest.fixture
def as_role(client: FlaskClient, db_session: Session) -> Callable[[str], Submitter]:
    return lambda role: Submitter(client, db_session, role)


IN_POLICY = {
    "options": {
        "temperature": 0.2,
        "top_k": 40,
        "seed": 7,
        "stop": ["\n"],
        "num_predict": 100,
        "num_ctx": 8192,
    },
    "keep_alive": "10m",
    "priority": 4,
}


@pytest.mark.parametrize("door", [NATIVE, OLLAMA])
@pytest.mark.parametrize("role", ROLES)
def test_an_in_policy_request_is_stored_as_sent(
    as_role: Callable[[str], Submitter], door: str, role: str
) -> None:
    row = as_role(role).stored(door, **IN_POLICY)
    assert row.options == IN_POLICY["options"]
    assert row.input["keep_alive"] == "10m"
    assert row.priority == 4


@pytest.mark.parametrize("role", ROLES)
def test_an_in_policy_openai_request_is_stored_as_sent(
    as_role: Callable[[str], Submitter], role: str
) -> None:
    row = as_role(role).stored(OPENAI, max_tokens=100, temperature=0.5, priority=4)
    assert row.options == {"num_predict": 100, "temperature": 0.5}
    assert row.priority == 4
    assert "keep_alive" not in row.input  # no default unless KEEP_ALIVE_DEFAULT is set


HARDWARE = [
    ("num_gpu", 999),
    ("main_gpu", 1),
    ("num_thread", 512),
    ("num_batch", 4096),
    ("use_mmap", False),
    ("use_mlock", True),
    ("numa", True),
    ("low_vram", True),
]


@pytest.mark.parametrize("door", [NATIVE, OLLAMA])
@pytest.mark.parametrize(("option", "value"), HARDWARE)
def test_a_users_hardware_option_is_refused_naming_it(
    as_role: Callable[[str], Submitter], door: str, option: str, value: Any
) -> None:
    message = as_role(Role.USER).refused(
        door, f"options.{option}", options={"temperature": 0.1, option: value}
    )
    assert "only operators" in message


@pytest.mark.parametrize("door", [NATIVE, OLLAMA])
@pytest.mark.parametrize("role", [Role.OPERATOR, Role.ADMIN])
def test_operators_and_admins_set_hardware_options(
    as_role: Callable[[str], Submitter], door: str, role: str
) -> None:
    options = dict(HARDWARE)
    assert as_role(role).stored(door, options=options).options == options


@pytest.mark.parametrize("door", [NATIVE, OLLAMA])
def test_an_option_the_policy_does_not_know_is_a_users_400_and_an_operators_choice(
    as_role: Callable[[str], Submitter], door: str
) -> None:
    message = as_role(Role.USER).refused(door, "options.flash_attn", options={"flash_attn": 1})
    assert "not an engine option" in message
    stored = as_role(Role.OPERATOR).stored(door, options={"flash_attn": 1})
    assert stored.options == {"flash_attn": 1}


@pytest.mark.parametrize("door", [NATIVE, OLLAMA])
@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        ({"num_predict": -1}, {"num_predict": 4096}),
        ({"num_predict": -2}, {"num_predict": 4096}),
        ({"num_predict": 10**12}, {"num_predict": 4096}),
        ({"num_predict": 4096}, {"num_predict": 4096}),
        ({"num_predict": 0}, {"num_predict": 0}),
        ({"num_ctx": 1e9}, {"num_ctx": 32768}),
        ({"num_ctx": 32768}, {"num_ctx": 32768}),
        ({"num_ctx": 2048.0}, {"num_ctx": 2048.0}),
    ],
)
def test_generation_and_context_lengths_are_clamped_for_everyone(
    as_role: Callable[[str], Submitter],
    door: str,
    role: str,
    sent: dict[str, Any],
    kept: dict[str, Any],
) -> None:
    assert as_role(role).stored(door, options=sent).options == kept


@pytest.mark.parametrize("role", [Role.USER, Role.OPERATOR])
@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_openai_max_tokens_is_clamped(
    client: FlaskClient, db_session: Session, role: str, field: str
) -> None:
    submitter = Submitter(client, db_session, role)
    with submitter.submit(OPENAI, max_tokens=10**12) as (completion, completion_row):
        assert completion.status_code == 200
        assert completion_row is not None
        assert completion_row.options["num_predict"] == 4096
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], field: 10**12}
    chat = client.post(
        "/v1/chat/completions", json={**body, "stream": True}, headers=submitter.headers
    )
    try:
        assert chat.status_code == 200
        db_session.expire_all()
        row = db_session.get(InferenceRequest, uuid.UUID(chat.headers["X-OllamaMax-Request-ID"]))
        assert row is not None
        assert row.options == {"num_predict": 4096}
    finally:
        chat.close()


@pytest.mark.parametrize("door", [NATIVE, OLLAMA])
@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"num_ctx": 0}, "options.num_ctx"),
        ({"num_ctx": -5}, "options.num_ctx"),
        ({"num_ctx": "lots"}, "options.num_ctx"),
        ({"num_predict": 10.5}, "options.num_predict"),
        ({"num_predict": True}, "options.num_predict"),
    ],
)
def test_lengths_that_are_not_lengths_are_refused_naming_them(
    as_role: Callable[[str], Submitter], door: str, options: dict[str, Any], field: str
) -> None:
    as_role(Role.OPERATOR).refused(door, field, options=options)


@pytest.mark.parametrize("door", [NATIVE, OLLAMA])
@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        (-1, "30m"),  # a pin
        ("-1m", "30m"),
        ("10000h", "30m"),
        (7200, "30m"),
        ("30m", "30m"),
        ("5m", "5m"),
        (60, 60),
        (0, None),  # unloading for everyone: not a user's to ask
        ("0s", None),
        # Under a second is an unload too (Ollama truncates a number to whole seconds).
        (0.5, None),
        (1e-9, None),
        ("1ns", None),
        ("0.0000000001s", None),
        ("999ms", None),
    ],
)
def test_a_users_keep_alive_is_clamped(
    as_role: Callable[[str], Submitter], door: str, sent: Any, kept: Any
) -> None:
    row = as_role(Role.USER).stored(door, keep_alive=sent)
    assert row.input.get("keep_alive") == kept


@pytest.mark.parametrize("door", [NATIVE, OLLAMA])
@pytest.mark.parametrize("role", [Role.OPERATOR, Role.ADMIN])
@pytest.mark.parametrize("sent", [-1, "10000h", 0, "0s", "1h30m"])
def test_operators_keep_alive_is_theirs(
    as_role: Callable[[str], Submitter], door: str, role: str, sent: Any
) -> None:
    assert as_role(role).stored(door, keep_alive=sent).input["keep_alive"] == sent


@pytest.mark.parametrize("door", [NATIVE, OLLAMA])
@pytest.mark.parametrize("role", [Role.USER, Role.OPERATOR])
@pytest.mark.parametrize("sent", ["forever", "-1", "5", ""])
def test_a_keep_alive_ollama_would_not_read_is_refused_naming_it(
    as_role: Callable[[str], Submitter], door: str, role: str, sent: str
) -> None:
    as_role(role).refused(door, "keep_alive", keep_alive=sent)


@pytest.mark.parametrize("door", [NATIVE, OLLAMA])
def test_the_operators_keep_alive_default_fills_a_job_that_names_none(
    app_factory: Callable[..., Flask], db_session: Session, door: str
) -> None:
    client = app_factory(keep_alive_default="2m").test_client()
    user = Submitter(client, db_session, Role.USER)
    assert user.stored(door).input["keep_alive"] == "2m"
    assert user.stored(door, keep_alive=0).input["keep_alive"] == "2m"
    assert user.stored(door, keep_alive="1m").input["keep_alive"] == "1m"


@pytest.mark.parametrize("door", [NATIVE, OLLAMA, OPENAI])
@pytest.mark.parametrize(
    ("role", "sent", "kept"),
    [
        (Role.USER, 9, 6),
        (Role.USER, 7, 6),
        (Role.USER, 6, 6),
        (Role.USER, 0, 0),
        (Role.OPERATOR, 9, 9),
        (Role.ADMIN, 9, 9),
    ],
)
def test_priority_bands_per_role(
    as_role: Callable[[str], Submitter], door: str, role: str, sent: int, kept: int
) -> None:
    assert as_role(role).stored(door, priority=sent).priority == kept


@pytest.mark.parametrize("door", [NATIVE, OLLAMA, OPENAI])
def test_the_bounds_are_settings(
    app_factory: Callable[..., Flask], db_session: Session, door: str
) -> None:
    client = app_factory(user_max_priority=3, max_num_predict=50, keep_alive_max="1m").test_client()
    user = Submitter(client, db_session, Role.USER)
    if door == OPENAI:
        row = user.stored(door, max_tokens=51, priority=9)
        assert row.options["num_predict"] == 50
    else:
        row = user.stored(door, options={"num_predict": 51}, keep_alive="2m", priority=9)
        assert (row.options, row.input["keep_alive"]) == ({"num_predict": 50}, "1m")
    assert row.priority == 3


def test_the_bounds_are_run_time_settings(
    client: FlaskClient, db_session: Session, app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin = auth_headers(client, make_user(Role.ADMIN))
    change = {"max_num_ctx": 1024, "user_max_priority": 2, "keep_alive_max": "90s"}
    answer = client.put("/api/v1/system/config", headers=admin, json=change)
    assert answer.status_code == 200, answer.get_json()
    config = answer.get_json()["config"]
    assert {key: config[key]["value"] for key in change} == change
    # The test's transaction is not the run-time config source's: hand it what it would read.
    source = app.extensions["runtime_config"]
    merged = RuntimeConfig.merged(source.settings, change)
    monkeypatch.setattr(source, "current", lambda: merged)
    user = Submitter(client, db_session, Role.USER)
    row = user.stored(NATIVE, options={"num_ctx": 4096}, keep_alive="1h", priority=5)
    assert (row.options, row.input["keep_alive"], row.priority) == ({"num_ctx": 1024}, "90s", 2)


@pytest.mark.parametrize("bound", ["forever", "-1s", ""])
def test_a_keep_alive_bound_must_be_a_finite_duration(client: FlaskClient, bound: str) -> None:
    admin = auth_headers(client, make_user(Role.ADMIN))
    answer = client.put("/api/v1/system/config", headers=admin, json={"keep_alive_max": bound})
    assert answer.status_code == 422


def test_the_policy_table_is_one_table() -> None:
    """An option is in one class only, and the OpenAI door maps only allowed options."""
    assert not policy.ALLOWED & policy.OPERATOR_ONLY
    assert not set(policy.BOUNDED) & (policy.ALLOWED | policy.OPERATOR_ONLY)
    openai_door = {"temperature", "top_p", "seed", "stop", "presence_penalty", "frequency_penalty"}
    assert openai_door <= policy.ALLOWED


def _set_model_limits(client: FlaskClient, db_session: Session, limits: Any) -> Any:
    model = db_session.query(Model).filter_by(name=f"{MODEL}:latest").one()
    operator = auth_headers(client, make_user(Role.OPERATOR))
    answer = client.put(f"/api/v1/models/{model.id}", json={"limits": limits}, headers=operator)
    assert answer.status_code == 200, answer.get_json()
    return answer.get_json()


@pytest.mark.parametrize("door", [NATIVE, OLLAMA, OPENAI])
def test_a_models_own_bounds_lower_the_fleets_and_fill_in_a_length(
    client: FlaskClient, db_session: Session, as_role: Callable[[str], Submitter], door: str
) -> None:
    shown = _set_model_limits(client, db_session, {"max_num_predict": 50, "max_num_ctx": 1024})
    assert shown["limits"] == {"max_num_predict": 50, "max_num_ctx": 1024}
    submitter = as_role(Role.ADMIN)  # every role: the model's bounds are the model's
    length = {"max_tokens": 100} if door == OPENAI else {"options": {"num_predict": 100}}

    assert submitter.stored(door, **length).options == {"num_predict": 50}
    # None named: the bound (OpenAI's completions have a length of their own, 16, kept).
    assert submitter.stored(door).options == {"num_predict": 16 if door == OPENAI else 50}
    if door != OPENAI:  # (OpenAI's door has no num_ctx)
        big = submitter.stored(door, options={"num_ctx": 4096, "num_predict": 20})
        assert big.options == {"num_ctx": 1024, "num_predict": 20}
        small = submitter.stored(door, options={"num_ctx": 512, "temperature": 0.1})
        assert small.options == {"num_ctx": 512, "temperature": 0.1, "num_predict": 50}


def test_a_model_without_bounds_stores_options_as_policed(
    client: FlaskClient, db_session: Session, as_role: Callable[[str], Submitter]
) -> None:
    _set_model_limits(client, db_session, {"max_num_ctx": 2048})
    row = as_role(Role.USER).stored(NATIVE, options={"temperature": 0.3})
    assert row.options == {"temperature": 0.3}  # num_ctx only lowered, never filled in
    assert _set_model_limits(client, db_session, None)["limits"] == {}
    assert as_role(Role.USER).stored(NATIVE, options={"num_ctx": 9000}).options == {"num_ctx": 9000}


@pytest.mark.parametrize("limits", [{"max_num_predict": 0}, {"max_num_ctx": "big"}, {"x": 1}])
def test_bad_model_bounds_are_refused(
    client: FlaskClient, db_session: Session, limits: dict[str, Any]
) -> None:
    model = db_session.query(Model).filter_by(name=f"{MODEL}:latest").one()
    operator = auth_headers(client, make_user(Role.OPERATOR))
    answer = client.put(f"/api/v1/models/{model.id}", json={"limits": limits}, headers=operator)
    assert answer.status_code == 422, answer.get_json()
