"""Models are pulled only from the registries an admin allows (pull_registries, run-time
config; registry.ollama.ai by default): registering or pulling a name on another registry
answers 403 registry_not_allowed and queues nothing, through the REST API."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from db.base import utcnow
from db.catalog import registry_host
from db.models import ModelReplica, Role
from tests.factories import ModelFactory, NodeFactory
from tests.support.identity import auth_headers, error_code, make_user

CONFIG = "/api/v1/system/config"


@pytest.fixture(autouse=True)
def empty_fleet(db_session: Session) -> None:
    db_session.execute(text("DELETE FROM models"))
    db_session.execute(text("DELETE FROM nodes"))


@pytest.fixture
def operator(client: FlaskClient) -> dict[str, str]:
    return auth_headers(client, make_user(Role.OPERATOR))


@pytest.fixture
def admin(client: FlaskClient) -> dict[str, str]:
    return auth_headers(client, make_user(Role.ADMIN))


@pytest.mark.parametrize(
    ("name", "host"),
    [
        ("llama3.2", "registry.ollama.ai"),
        ("library/llama3.2:1b", "registry.ollama.ai"),
        ("someone/model:tag", "registry.ollama.ai"),
        ("registry.example.com/ns/model:tag", "registry.example.com"),
        ("registry.example.com/model", "registry.example.com"),
        ("localhost:5000/ns/model", "localhost:5000"),
        ("https://Evil.Example/ns/model:latest", "evil.example"),
        ("hf.co/org/repo:Q4_K_M", "hf.co"),
    ],
)
def test_a_names_registry_is_read_as_ollama_reads_it(name: str, host: str) -> None:
    assert registry_host(name) == host


def _register(client: FlaskClient, headers: dict[str, str], name: str) -> Any:
    return client.post("/api/v1/models/", json={"name": name}, headers=headers)


def test_registering_a_model_of_another_registry_is_refused(
    client: FlaskClient, operator: dict[str, str]
) -> None:
    refused = _register(client, operator, "registry.example.com/ns/model:tag")
    assert refused.status_code == 403
    assert error_code(refused) == "registry_not_allowed"
    details = refused.get_json()["error"]["details"]
    assert details == {"registry": "registry.example.com", "allowed": ["registry.ollama.ai"]}
    assert "registry.example.com" in refused.get_json()["error"]["message"]
    assert _register(client, operator, "llama3.2").status_code == 201
    assert _register(client, operator, "library/qwen3:0.6b").status_code == 201


def test_a_pull_from_another_registry_is_refused_unless_allowed(
    client: FlaskClient,
    operator: dict[str, str],
    db_session: Session,
    app_factory: Callable[..., Flask],
) -> None:
    # Known already (a node's engine listed it, say), so only the pull can stop it.
    model = ModelFactory(name="evil.example:8443/ns/model:latest")
    NodeFactory(last_heartbeat_at=utcnow())
    pull = f"/api/v1/models/{model.id}/pull"
    refused = client.post(pull, json={"node_id": "all"}, headers=operator)
    assert refused.status_code == 403
    assert error_code(refused) == "registry_not_allowed"
    assert refused.get_json()["error"]["details"]["registry"] == "evil.example:8443"
    replicas = select(func.count()).select_from(ModelReplica)
    assert db_session.scalar(replicas.where(ModelReplica.model_id == model.id)) == 0

    allowing = app_factory(pull_registries="registry.ollama.ai,Evil.Example:8443").test_client()
    queued = allowing.post(pull, json={"node_id": "all"}, headers=operator)
    assert queued.status_code == 202, queued.get_json()
    # An empty list allows no pull at all, Ollama's own registry included.
    closed = app_factory(pull_registries="").test_client()
    assert error_code(_register(closed, operator, "llama3.2")) == "registry_not_allowed"


def test_admins_set_the_allow_list_at_run_time(client: FlaskClient, admin: dict[str, str]) -> None:
    allowed = ["registry.ollama.ai", "Evil.Example:8443", "evil.example:8443"]
    changed = client.put(CONFIG, json={"pull_registries": allowed}, headers=admin)
    assert changed.status_code == 200, changed.get_json()
    entry = changed.get_json()["config"]["pull_registries"]
    assert entry["value"] == ["registry.ollama.ai", "evil.example:8443"]
    assert entry["default"] == ["registry.ollama.ai"]


def test_the_allow_list_holds_host_names_only(client: FlaskClient, admin: dict[str, str]) -> None:
    for bad in (["https://x.example/"], ["x.example/ns"], "registry.ollama.ai", [""]):
        refused = client.put(CONFIG, json={"pull_registries": bad}, headers=admin)
        assert refused.status_code == 422, bad
        assert error_code(refused) == "validation_error"


def test_the_ollama_door_pulls_from_allowed_registries_only(
    client: FlaskClient, operator: dict[str, str], db_session: Session
) -> None:
    """/api/pull goes through the same check, answered in Ollama's shape, nothing queued."""
    NodeFactory(last_heartbeat_at=utcnow())
    refused = client.post(
        "/api/pull", json={"model": "evil.example/ns/model", "stream": False}, headers=operator
    )
    assert refused.status_code == 403
    assert "evil.example" in refused.get_json()["error"]
    assert db_session.scalar(select(func.count()).select_from(ModelReplica)) == 0
