"""The model registry and the nodes over HTTP: validation, search, disable, caching, drain."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import text
from sqlalchemy.orm import Session

from db.base import utcnow
from db.models import Role
from tests.factories import (
    InferenceRequestFactory,
    ModelFactory,
    ModelReplicaFactory,
    NodeFactory,
)
from tests.support.identity import bearer, login, make_user

DIGEST = "sha256:" + "ab" * 32


@pytest.fixture(autouse=True)
def empty_fleet(db_session: Session) -> None:
    """Pipeline tests leave their workers' nodes and models committed; inside this test's
    rolled-back transaction the fleet starts empty."""
    db_session.execute(text("DELETE FROM models"))
    db_session.execute(text("DELETE FROM nodes"))


@pytest.fixture
def operator(client: FlaskClient) -> dict[str, str]:
    return bearer(login(client, make_user(Role.OPERATOR))["access_token"])


@pytest.fixture
def user(client: FlaskClient) -> dict[str, str]:
    return bearer(login(client, make_user())["access_token"])


def _register(client: FlaskClient, headers: dict[str, str], **body: Any) -> Any:
    return client.post("/api/v1/models/", json={"name": "mistral", **body}, headers=headers)


def test_registering_a_model_validates_every_field(
    client: FlaskClient, operator: dict[str, str]
) -> None:
    created = _register(
        client,
        operator,
        version="0.3",
        size_bytes=4_100_000_000,
        digest=DIGEST,
        tags=["chat", "en", "chat"],
        parameters={"parameter_size": "7B"},
        description="A fast multilingual model for translations.",
    )
    assert created.status_code == 201, created.get_json()
    body = created.get_json()
    assert body["name"] == "mistral:latest"  # the tag Ollama would assume
    assert body["tags"] == ["chat", "en"]
    assert body["status"] == "unavailable"  # no node holds it yet
    assert body["discovered"] is False

    assert _register(client, operator).status_code == 409  # same name
    for bad in (
        {"name": "Mistral Large"},
        {"name": "mistral:"},
        {"digest": "md5:abc"},
        {"size_bytes": -1},
        {"tags": [""]},
        {"colour": "blue"},
    ):
        response = _register(client, operator, **{"name": "other", **bad})
        assert response.status_code == 422, bad
        assert response.get_json()["error"]["code"] == "validation_error"
    listed = client.get("/api/v1/models/", headers=operator).get_json()
    assert [m["name"] for m in listed["items"]] == ["mistral:latest"]  # nothing else stored


def test_search_filters_sorting_and_pages(client: FlaskClient, operator: dict[str, str]) -> None:
    ModelFactory(name="alpha:latest", tags=["code"], size_bytes=3, status="available")
    ModelFactory(
        name="beta:7b",
        tags=["chat"],
        size_bytes=1,
        status="available",
        description="Summarises long legal documents",
    )
    ModelFactory(name="gamma:latest", tags=["chat"], size_bytes=2, status="unavailable")

    def names(query: str) -> list[str]:
        response = client.get(f"/api/v1/models/?{query}", headers=operator)
        assert response.status_code == 200, response.get_json()
        return [m["name"] for m in response.get_json()["items"]]

    assert names("") == ["alpha:latest", "beta:7b", "gamma:latest"]
    assert names("sort=-size_bytes") == ["alpha:latest", "gamma:latest", "beta:7b"]
    assert names("tag=chat") == ["beta:7b", "gamma:latest"]
    assert names("status=unavailable") == ["gamma:latest"]
    assert names("q=document") == ["beta:7b"]  # a word of its description, stemmed
    assert names("q=gamma") == ["gamma:latest"]  # its name
    assert names("per_page=2&page=2") == ["gamma:latest"]
    for bad in ("sort=colour", "status=sleeping", "per_page=0", "q="):
        response = client.get(f"/api/v1/models/?{bad}", headers=operator)
        assert response.status_code == 422, bad


def test_a_disabled_model_is_hidden_from_users_and_refuses_jobs(
    client: FlaskClient, operator: dict[str, str], user: dict[str, str]
) -> None:
    replica = ModelReplicaFactory(
        model__name="llama3.2:latest", model__status="available", node__last_heartbeat_at=utcnow()
    )
    model_id = str(replica.model_id)
    job = {"model": "llama3.2", "prompt": "hi"}

    disabled = client.put(f"/api/v1/models/{model_id}", json={"disabled": True}, headers=operator)
    assert disabled.get_json()["status"] == "disabled"
    refused = client.post("/api/v1/inference/generate", json=job, headers=user)
    assert refused.status_code == 409
    assert refused.get_json()["error"]["code"] == "model_disabled"
    assert client.get(f"/api/v1/models/{model_id}", headers=user).status_code == 404
    assert client.get("/api/v1/models/", headers=user).get_json()["items"] == []
    assert client.get("/api/v1/models/", headers=operator).get_json()["total"] == 1

    enabled = client.put(f"/api/v1/models/{model_id}", json={"disabled": False}, headers=operator)
    assert enabled.get_json()["status"] == "available"  # a node holds it
    assert client.post("/api/v1/inference/generate", json=job, headers=user).status_code == 202


def test_a_read_after_a_write_is_never_stale(client: FlaskClient, operator: dict[str, str]) -> None:
    """The lists are cached in Redis; every write invalidates after its commit."""
    model = ModelFactory(name="cached:latest", description="before")
    node = NodeFactory(name="cached@host")
    first = client.get("/api/v1/models/", headers=operator).get_json()
    assert first["items"][0]["description"] == "before"
    assert client.get("/api/v1/nodes/", headers=operator).get_json()["items"][0]["labels"] == {}

    client.put(f"/api/v1/models/{model.id}", json={"description": "after"}, headers=operator)
    client.put(f"/api/v1/nodes/{node.id}", json={"labels": {"rack": "b"}}, headers=operator)
    assert client.get("/api/v1/models/", headers=operator).get_json()["items"][0][
        "description"
    ] == ("after")
    nodes = client.get("/api/v1/nodes/", headers=operator).get_json()["items"]
    assert nodes[0]["labels"] == {"rack": "b"}

    created = _register(client, operator, name="fresh")
    listed = client.get("/api/v1/models/", headers=operator).get_json()
    assert created.get_json()["id"] in [m["id"] for m in listed["items"]]
    client.delete(f"/api/v1/models/{created.get_json()['id']}", headers=operator)
    listed = client.get("/api/v1/models/", headers=operator).get_json()
    assert created.get_json()["id"] not in [m["id"] for m in listed["items"]]


def test_nodes_show_gpu_load_and_replicas(client: FlaskClient, user: dict[str, str]) -> None:
    replica = ModelReplicaFactory(
        model__name="qwen3:8b",
        loaded=True,
        node__gpu_name="NVIDIA H100 80GB HBM3",
        node__gpu_memory_total_bytes=80 * 2**30,
        node__gpu_memory_free_bytes=30 * 2**30,
        node__gpu_utilization_pct=42.0,
        node__engine_version="0.12.6",
        node__slots_busy=1,
        node__last_heartbeat_at=utcnow(),
    )
    InferenceRequestFactory(model_name="qwen3:8b", status="queued")
    InferenceRequestFactory(model_name="qwen3:8b", status="running", node_id=replica.node_id)

    node = client.get(f"/api/v1/nodes/{replica.node_id}", headers=user).get_json()
    assert node["gpu_name"] == "NVIDIA H100 80GB HBM3"
    assert node["gpu_memory_used_bytes"] == 50 * 2**30
    assert node["loaded_models"] == ["qwen3:8b"]
    assert (node["queue_depth"], node["running"], node["slots"], node["slots_busy"]) == (1, 1, 2, 1)
    replicas = client.get(f"/api/v1/models/{replica.model_id}/replicas", headers=user).get_json()
    assert [(r["node_name"], r["loaded"]) for r in replicas["items"]] == [(node["name"], True)]


def test_drain_slots_and_decommission(
    client: FlaskClient, operator: dict[str, str], user: dict[str, str]
) -> None:
    replica = ModelReplicaFactory(
        model__name="llama3.2:latest", model__status="available", node__last_heartbeat_at=utcnow()
    )
    node_id = replica.node_id
    for bad in ({"slots": 0}, {"drained": "maybe"}, {"labels": {"": "x"}}, {"name": "x"}):
        response = client.put(f"/api/v1/nodes/{node_id}", json=bad, headers=operator)
        assert response.status_code == 422, bad

    drained = client.put(
        f"/api/v1/nodes/{node_id}", json={"drained": True, "slots": 4}, headers=operator
    )
    assert (drained.get_json()["drained"], drained.get_json()["slots"]) == (True, 4)
    refused = client.post(
        "/api/v1/inference/generate", json={"model": "llama3.2", "prompt": "x"}, headers=user
    )
    assert refused.get_json()["error"]["code"] == "model_unavailable"  # its only node drains

    InferenceRequestFactory(status="running", node_id=node_id)
    busy = client.delete(f"/api/v1/nodes/{node_id}", headers=operator)
    assert busy.status_code == 409
    assert busy.get_json()["error"]["code"] == "node_busy"
    assert client.delete(f"/api/v1/nodes/{node_id}?force=true", headers=operator).status_code == 204
    assert client.get(f"/api/v1/nodes/{node_id}", headers=operator).status_code == 404


def test_health_reports_a_silent_node_offline_before_beat_does(
    client: FlaskClient, user: dict[str, str]
) -> None:
    fresh = NodeFactory(last_heartbeat_at=utcnow())
    silent = NodeFactory(last_heartbeat_at=utcnow() - timedelta(minutes=5))
    degraded = NodeFactory(
        last_heartbeat_at=utcnow(), status="degraded", status_reason="engine_unreachable"
    )

    def health(node: Any) -> Any:
        return client.get(f"/api/v1/nodes/{node.id}/health", headers=user).get_json()

    assert health(fresh)["status"] == "online"
    assert (health(silent)["status"], health(silent)["reason"]) == ("offline", "no heartbeat")
    assert (health(degraded)["status"], health(degraded)["reason"]) == (
        "degraded",
        "engine_unreachable",
    )


def test_pull_and_replica_removal_are_validated(
    client: FlaskClient, operator: dict[str, str]
) -> None:
    model = ModelFactory(name="tiny:latest")
    online = NodeFactory(last_heartbeat_at=utcnow())
    offline = NodeFactory(status="offline")
    bad = client.post(f"/api/v1/models/{model.id}/pull", json={"node_id": "some"}, headers=operator)
    assert bad.status_code == 422
    gone = client.post(
        f"/api/v1/models/{model.id}/pull", json={"node_id": str(offline.id)}, headers=operator
    )
    assert gone.get_json()["error"]["code"] == "node_offline"
    queued = client.post(f"/api/v1/models/{model.id}/pull", json={}, headers=operator)
    assert queued.status_code == 202
    assert [n["name"] for n in queued.get_json()["nodes"]] == [online.name]
    replicas = client.get(f"/api/v1/models/{model.id}/replicas", headers=operator).get_json()
    assert [r["status"] for r in replicas["items"]] == ["pulling"]

    missing = client.delete(f"/api/v1/models/{model.id}/replicas/{offline.id}", headers=operator)
    assert missing.status_code == 404
