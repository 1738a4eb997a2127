"""A node's replicas follow what its engine lists (db/fleet.py `sync_replicas`, run by every
heartbeat), except a replica being pulled: the engine lists a model only once its pull has
ended, and the heartbeat must not delete the replica the pull's progress is recorded on."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.fleet import record_engine_details, sync_replicas
from db.models import Model, ModelReplica, ReplicaStatus
from tests.factories import ModelFactory, ModelReplicaFactory, NodeFactory

RECORD = {"size": 1, "digest": "", "details": {"family": "llama"}}


def _replicas(db_session: Session, node_id: object) -> dict[str, str]:
    rows = db_session.execute(
        select(Model.name, ModelReplica.status)
        .join(ModelReplica, ModelReplica.model_id == Model.id)
        .where(ModelReplica.node_id == node_id)
    )
    return {name: str(status) for name, status in rows}


def test_replicas_follow_the_engine_but_a_pull_in_progress_stays(db_session: Session) -> None:
    node = NodeFactory()
    kept = ModelReplicaFactory(node=node, model=ModelFactory(name="kept:latest"))
    ModelReplicaFactory(node=node, model=ModelFactory(name="dropped:latest"))
    ModelReplicaFactory(
        node=node, model=ModelFactory(name="pulling:latest"), status=ReplicaStatus.PULLING
    )
    db_session.flush()

    added, removed = sync_replicas(
        session=db_session,
        node_id=node.id,
        present={kept.model.name: RECORD, "new:latest": RECORD},
        loaded=set(),
    )

    assert (added, removed) == ({"new:latest"}, {"dropped:latest"})
    assert _replicas(db_session, node.id) == {
        "kept:latest": "available",
        "new:latest": "available",
        "pulling:latest": "pulling",  # not listed yet: its pull goes on
    }


def test_a_pulled_model_the_engine_lists_becomes_available(db_session: Session) -> None:
    node = NodeFactory()
    ModelReplicaFactory(
        node=node, model=ModelFactory(name="pulled:latest"), status=ReplicaStatus.PULLING
    )
    db_session.flush()

    added, removed = sync_replicas(
        session=db_session, node_id=node.id, present={"pulled:latest": RECORD}, loaded=set()
    )

    assert (added, removed) == ({"pulled:latest"}, set())
    assert _replicas(db_session, node.id) == {"pulled:latest": "available"}


def test_what_an_engine_says_of_a_model_is_kept_with_it_and_an_operator_s_values_stand(
    db_session: Session,
) -> None:
    model = ModelFactory(parameters={"parameter_size": "operator's", "show": {"old": True}})
    described = {
        "modelfile": "FROM x\n",
        "capabilities": ["completion", "tools"],
        "details": {"format": "gguf", "parameter_size": "3.2B", "quantization_level": "Q4_K_M"},
    }
    record_engine_details(session=db_session, name=model.name, described=described)
    db_session.expire_all()
    parameters = db_session.get(Model, model.id).parameters  # type: ignore[union-attr]
    assert parameters == {
        "format": "gguf",
        "parameter_size": "operator's",  # not the engine's
        "quantization_level": "Q4_K_M",
        "show": described,  # the engine's last answer, whole
    }
