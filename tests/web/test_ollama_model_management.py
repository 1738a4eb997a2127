"""The Ollama door's model management, mapped onto the fleet, through the official `ollama`
client (in-process, over httpx's WSGI transport): /api/pull follows the workers' news into
Ollama's progress lines, /api/delete removes the model from every node, what the fleet
cannot do is a 400 saying why; /api/show answers what is recorded, never guessed
capabilities; fields the workers cannot carry are a 400 naming them.

The node's worker is played by the test: publishing a task to a node runs a script that
announces what that worker would (workers/tasks/models.py) or changes what it would have
stored, in the request's own transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import ollama
import pytest
from flask import Flask
from flask.testing import FlaskClient
from redis import Redis
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from db.models import (
    EngineKind,
    Model,
    ModelReplica,
    ModelStatus,
    Node,
    NodeStatus,
    ReplicaStatus,
    Role,
)
from tests.factories import ModelFactory, ModelReplicaFactory, NodeFactory
from tests.support.identity import audit_actions, auth_headers, make_user
from web.compat import fleet_ops
from web.database import get_db
from workers.dispatch import MODEL_DELETE, MODEL_PULL
from workers.events import announce

DIGEST = "a" * 64
LAYER = 4 * 1024 * 1024


@dataclass
class Worker:
    """Plays each node's worker: `script(task, model, node_id, node_name)` says what it does
    when a task reaches that node's queue; `sent` records every task published."""

    redis: Redis
    script: Callable[[str, str, str, str], None] | None = None
    sent: list[tuple[str, str, str]] = field(default_factory=list)

    def publish(self, _celery: Any, task: str, args: list[Any], node_name: str) -> bool:
        model, node_id = args
        self.sent.append((task, model, node_name))
        if self.script is not None:
            self.script(task, model, node_id, node_name)
        return True

    def news(self, kind: str, model: str, node_id: str, node_name: str, **fields: Any) -> None:
        announce(
            self.redis, "model_update", kind, model=model, node=node_name, node_id=node_id, **fields
        )

    def pulls_like_ollama(self, task: str, model: str, node_id: str, node_name: str) -> None:
        """The steps the worker forwards from Ollama's own pull (reference 7: Pull stream)."""
        assert task == MODEL_PULL
        say = self.news
        say("pull_started", model, node_id, node_name)
        say("pull_progress", model, node_id, node_name, status="pulling manifest", completed=0)
        for done in (0, LAYER // 2, LAYER):
            say(
                "pull_progress",
                model,
                node_id,
                node_name,
                status=f"pulling {DIGEST[:12]}",
                digest=f"sha256:{DIGEST}",
                completed=done,
                total=LAYER,
            )
        for step in ("verifying sha256 digest", "writing manifest", "success"):
            say("pull_progress", model, node_id, node_name, status=step, completed=0)
        say("added", model, node_id, node_name)
        say("pulled", model, node_id, node_name)


@pytest.fixture
def worker(monkeypatch: pytest.MonkeyPatch, redis_client: Redis) -> Worker:
    played = Worker(redis_client)
    monkeypatch.setattr(fleet_ops, "publish_to_node", played.publish)
    return played


@pytest.fixture
def only_our_nodes(db_session: Session) -> None:
    """Nodes other suites left committed in this database are not ours to wait for."""
    db_session.execute(update(Node).values(status=NodeStatus.OFFLINE))
    db_session.flush()


def _client(app: Flask, headers: dict[str, str]) -> ollama.Client:
    return ollama.Client(
        host="http://door.test", headers=headers, transport=httpx.WSGITransport(app=app)
    )


@pytest.fixture
def operator(app: Flask, client: FlaskClient, only_our_nodes: None) -> ollama.Client:
    return _client(app, auth_headers(client, make_user(Role.OPERATOR)))


def _name() -> str:
    return f"door-pull-{uuid.uuid4().hex[:8]}:latest"


# --- pull ------------------------------------------------------------------------------


def test_a_streamed_pull_is_the_fleets_with_ollamas_progress(
    operator: ollama.Client, worker: Worker, db_session: Session
) -> None:
    node = NodeFactory()
    worker.script = worker.pulls_like_ollama
    name = _name()

    lines = list(operator.pull(name, stream=True))

    assert [line.status for line in lines] == [
        "pulling manifest",
        f"pulling {DIGEST[:12]}",
        f"pulling {DIGEST[:12]}",
        f"pulling {DIGEST[:12]}",
        "verifying sha256 digest",
        "writing manifest",
        "success",
    ]
    layer = [line for line in lines if line.total]
    assert [line.completed for line in layer] == [None, LAYER // 2, LAYER]  # 0 left out
    assert {line.digest for line in layer} == {f"sha256:{DIGEST}"}
    assert worker.sent == [(MODEL_PULL, name, node.name)]
    # Registered (it was unknown), marked pulling on the node, and audited.
    model = db_session.scalar(select(Model).where(Model.name == name))
    assert model is not None
    assert not model.discovered
    replica = db_session.scalar(select(ModelReplica).where(ModelReplica.model_id == model.id))
    assert replica is not None
    assert replica.status == ReplicaStatus.PULLING  # the worker's sync makes it available
    actions = audit_actions(db_session)
    assert "model.registered" in actions
    assert "model.pull_requested" in actions


def test_a_pull_that_is_not_streamed_answers_once_done(
    operator: ollama.Client, worker: Worker
) -> None:
    NodeFactory()
    worker.script = worker.pulls_like_ollama
    assert operator.pull(_name(), stream=False).status == "success"


def test_a_pull_onto_several_nodes_ends_when_the_last_has_it(
    operator: ollama.Client, worker: Worker
) -> None:
    """Each step is sent once; a layer's progress is the slowest node's, so it only grows;
    success comes once every node has pulled."""
    first, second = NodeFactory(), NodeFactory()
    worker.script = worker.pulls_like_ollama

    lines = list(operator.pull(_name(), stream=True))

    assert sorted(node for _, _, node in worker.sent) == sorted([first.name, second.name])
    steps = [line.status for line in lines if not line.total]
    assert steps == [
        "pulling manifest",
        "verifying sha256 digest",
        "writing manifest",
        "success",
    ]
    completed = [line.completed or 0 for line in lines if line.total]
    assert completed == sorted(completed)
    assert completed[-1] == LAYER
    assert lines[-1].status == "success"


def test_a_failed_pull_is_ollamas_error_streamed_or_not(
    operator: ollama.Client, worker: Worker
) -> None:
    NodeFactory()

    def fails(task: str, model: str, node_id: str, node_name: str) -> None:
        worker.news("pull_started", model, node_id, node_name)
        worker.news("pull_progress", model, node_id, node_name, status="pulling manifest")
        worker.news(
            "pull_failed",
            model,
            node_id,
            node_name,
            error="pull model manifest: file does not exist",
            error_code="engine_500",
        )

    worker.script = fails
    streamed = operator.pull(_name(), stream=True)
    assert next(streamed).status == "pulling manifest"
    with pytest.raises(ollama.ResponseError) as midstream:
        next(streamed)
    assert midstream.value.status_code == -1  # a last {"error"} line, as Ollama sends it
    assert midstream.value.error == "pull model manifest: file does not exist"

    with pytest.raises(ollama.ResponseError) as whole:
        operator.pull(_name(), stream=False)
    assert whole.value.status_code == 500
    assert whole.value.error == "pull model manifest: file does not exist"


@pytest.mark.parametrize(
    ("stored", "outcome"),
    [(ReplicaStatus.AVAILABLE, "success"), (ReplicaStatus.FAILED, "failed")],
)
def test_a_pull_whose_news_is_lost_ends_as_the_database_has_it(
    app_factory: Callable[..., Flask],
    client: FlaskClient,
    only_our_nodes: None,
    worker: Worker,
    stored: ReplicaStatus,
    outcome: str,
) -> None:
    """No news at all (Redis lost it): after a quiet spell the door reads the replica."""
    app = app_factory(ws_heartbeat_s=0.1)
    door = _client(app, auth_headers(client, make_user(Role.OPERATOR)))
    node = NodeFactory()

    def stores_silently(task: str, model: str, node_id: str, node_name: str) -> None:
        with get_db().unit_of_work() as session:
            session.execute(
                update(ModelReplica).where(ModelReplica.node_id == node.id).values(status=stored)
            )

    worker.script = stores_silently
    if outcome == "success":
        assert door.pull(_name(), stream=False).status == "success"
        return
    with pytest.raises(ollama.ResponseError) as failed:
        door.pull(_name(), stream=False)
    assert (failed.value.status_code, failed.value.error) == (
        500,
        "the pull failed on the node's engine",
    )


def test_a_pull_needs_an_online_ollama_node_and_an_enabled_model(
    operator: ollama.Client, worker: Worker
) -> None:
    NodeFactory(engine_kind=EngineKind.OPENAI)
    with pytest.raises(ollama.ResponseError) as no_node:
        operator.pull(_name(), stream=False)
    assert no_node.value.status_code == 409
    assert "no online Ollama node" in no_node.value.error

    NodeFactory()
    disabled = ModelFactory(status=ModelStatus.DISABLED)
    with pytest.raises(ollama.ResponseError) as refused:
        operator.pull(disabled.name, stream=True).__next__()
    assert refused.value.status_code == 409
    assert "is disabled" in refused.value.error
    assert worker.sent == []


def test_a_pull_needs_fleet_write(app: Flask, client: FlaskClient, worker: Worker) -> None:
    user = _client(app, auth_headers(client, make_user()))
    with pytest.raises(ollama.ResponseError) as refused:
        user.pull(_name())
    assert refused.value.status_code == 403
    assert refused.value.error == "You are not allowed to do this."
    assert worker.sent == []


def test_a_pull_names_a_model_as_jobs_do(operator: ollama.Client, client: FlaskClient) -> None:
    with pytest.raises(ollama.ResponseError) as bad:
        operator.pull("no spaces allowed")
    assert bad.value.status_code == 400
    assert "model" in bad.value.error
    headers = dict(operator._client.headers)
    missing = client.post("/api/pull", json={"stream": False}, headers=headers)
    assert (missing.status_code, missing.get_json()) == (400, {"error": "model is required"})


# --- delete ----------------------------------------------------------------------------


def _held_by(*nodes: Node) -> Model:
    model = ModelFactory(status=ModelStatus.AVAILABLE)
    for node in nodes:
        ModelReplicaFactory(model=model, node=node)
    return model


def test_delete_removes_the_model_from_every_node(
    operator: ollama.Client, worker: Worker, db_session: Session
) -> None:
    first, second = NodeFactory(), NodeFactory()
    model = _held_by(first, second)

    def removes(task: str, name: str, node_id: str, node_name: str) -> None:
        assert task == MODEL_DELETE
        worker.news("removed", name, node_id, node_name)

    worker.script = removes

    assert operator.delete(model.name).status == "success"
    assert sorted(worker.sent) == sorted(
        [(MODEL_DELETE, model.name, first.name), (MODEL_DELETE, model.name, second.name)]
    )
    statuses = db_session.scalars(
        select(ModelReplica.status).where(ModelReplica.model_id == model.id)
    )
    assert set(statuses) == {ReplicaStatus.REMOVING}  # until each worker's sync drops it
    assert audit_actions(db_session).count("model.replica_removal_requested") == 2


def test_delete_waits_for_online_nodes_only_and_reads_the_database_when_quiet(
    app_factory: Callable[..., Flask], client: FlaskClient, only_our_nodes: None, worker: Worker
) -> None:
    app = app_factory(ws_heartbeat_s=0.1)
    door = _client(app, auth_headers(client, make_user(Role.OPERATOR)))
    online, offline = NodeFactory(), NodeFactory(status=NodeStatus.OFFLINE)
    model = _held_by(online, offline)

    def drops_silently(task: str, name: str, node_id: str, node_name: str) -> None:
        if node_id == str(online.id):
            with get_db().unit_of_work() as session:
                session.execute(delete(ModelReplica).where(ModelReplica.node_id == online.id))

    worker.script = drops_silently
    assert door.delete(model.name).status == "success"
    assert len(worker.sent) == 2  # the offline node's removal waits in its queue


def test_delete_failures_come_in_ollamas_shape(
    operator: ollama.Client, worker: Worker, db_session: Session
) -> None:
    with pytest.raises(ollama.ResponseError) as unknown:
        operator.delete("nowhere")
    assert (unknown.value.status_code, unknown.value.error) == (404, "model 'nowhere' not found")

    node = NodeFactory()
    model = _held_by(node)

    def fails(task: str, name: str, node_id: str, node_name: str) -> None:
        worker.news("remove_failed", name, node_id, node_name, error="permission denied")

    worker.script = fails
    with pytest.raises(ollama.ResponseError) as failed:
        operator.delete(model.name)
    assert (failed.value.status_code, failed.value.error) == (500, "permission denied")

    served = _held_by(NodeFactory(), NodeFactory(engine_kind=EngineKind.OPENAI))
    worker.sent.clear()
    with pytest.raises(ollama.ResponseError) as foreign:
        operator.delete(served.name)
    assert foreign.value.status_code == 409
    assert "OpenAI-compatible engine cannot remove models" in foreign.value.error
    assert worker.sent == []
    statuses = db_session.scalars(
        select(ModelReplica.status).where(ModelReplica.model_id == served.id)
    )
    assert set(statuses) == {ReplicaStatus.AVAILABLE}  # nothing was touched


# --- what the fleet cannot do ----------------------------------------------------------


def test_copy_create_and_push_say_why_not(operator: ollama.Client) -> None:
    calls: dict[str, Callable[[], Any]] = {
        "copying a model is not supported": lambda: operator.copy("llama3.2", "mine"),
        "creating a model is not supported": lambda: operator.create(
            model="mine", from_="llama3.2", system="Be brief."
        ),
        "pushing a model is not supported": lambda: operator.push("mine"),
    }
    for reason, call in calls.items():
        with pytest.raises(ollama.ResponseError) as refused:
            call()
        assert refused.value.status_code == 400, reason
        assert refused.value.error.startswith(reason.strip()), refused.value.error


def test_blob_uploads_are_refused_too(client: FlaskClient, operator: ollama.Client) -> None:
    headers = dict(operator._client.headers)
    answer = client.post(f"/api/blobs/sha256:{DIGEST}", data=b"GGUF", headers=headers)
    assert answer.status_code == 400
    assert answer.get_json()["error"].startswith("uploading blobs is not supported")


# --- show ------------------------------------------------------------------------------


def test_show_answers_what_is_recorded_and_guesses_no_capabilities(
    operator: ollama.Client,
) -> None:
    bare = ModelFactory(status=ModelStatus.AVAILABLE, family="llama")
    shown = operator.show(bare.name)
    assert shown.capabilities is None  # not recorded: not claimed
    assert (shown.modelfile, shown.template, shown.parameters) == ("", "", "")
    assert shown.details is not None
    assert shown.details.family == "llama"
    assert shown.modelinfo == {}

    recorded = ModelFactory(
        status=ModelStatus.AVAILABLE,
        parameters={
            "parameter_size": "3.2B",
            "show": {
                "modelfile": "FROM llama3.2\n",
                "template": "{{ .Prompt }}",
                "parameters": 'stop "<|eot_id|>"',
                "model_info": {"general.architecture": "llama"},
                "capabilities": ["completion", "tools"],
            },
        },
    )
    shown = operator.show(recorded.name)
    assert shown.capabilities == ["completion", "tools"]
    assert shown.template == "{{ .Prompt }}"
    assert shown.modelfile == "FROM llama3.2\n"
    assert shown.parameters == 'stop "<|eot_id|>"'
    assert shown.modelinfo == {"general.architecture": "llama"}
    assert shown.details is not None
    assert shown.details.parameter_size == "3.2B"


# --- fields the workers cannot carry ---------------------------------------------------


@pytest.mark.parametrize(
    ("path", "field", "value"),
    [
        ("/api/generate", "context", [1, 2, 3]),
        ("/api/generate", "template", "{{ .Prompt }}"),
        ("/api/generate", "logprobs", True),
        ("/api/generate", "top_logprobs", 5),
        ("/api/chat", "logprobs", True),
        ("/api/chat", "top_logprobs", 3),
    ],
)
def test_a_field_the_workers_cannot_carry_is_a_400_naming_it(
    client: FlaskClient, operator: ollama.Client, path: str, field: str, value: Any
) -> None:
    model = ModelReplicaFactory(model__status=ModelStatus.AVAILABLE).model
    body: dict[str, Any] = {"model": model.name, field: value, "stream": False}
    body.update(
        {"prompt": "hi"}
        if path == "/api/generate"
        else {"messages": [{"role": "user", "content": "hi"}]}
    )
    answer = client.post(path, json=body, headers=dict(operator._client.headers))
    assert answer.status_code == 400
    assert answer.get_json() == {"error": answer.get_json()["error"]}
    assert answer.get_json()["error"].startswith(f"{field} is not supported by OllamaMax")


def test_the_same_fields_sent_empty_ask_for_nothing(operator: ollama.Client) -> None:
    """A load request (no prompt) answers at once: nothing is queued."""
    model = ModelReplicaFactory(model__status=ModelStatus.AVAILABLE).model
    loaded = operator.generate(model=model.name, context=[], template="", logprobs=False)
    assert loaded.done_reason == "load"
    loaded_chat = operator.chat(model=model.name, messages=[], logprobs=False, top_logprobs=0)
    assert loaded_chat.done_reason == "load"
