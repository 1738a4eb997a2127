"""Ollama's model management, mapped onto the fleet's (web/fleet/registry.py) with its
permission (fleet:write): `/api/pull` is the fleet's pull onto every online, undrained node
whose engine is Ollama; `/api/delete` removes the model from every node that holds it.

Both follow the workers' model_update news (workers/tasks/models.py, workers/node.py),
subscribed before the work is queued so that none is missed, and ask the database whenever
the news goes quiet or may have been lost (the relay's Redis connection came back): a
replica failed, became available, or went; a node went offline.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, select

from db.catalog import mark_removing, mark_replica
from db.models import EngineKind, Model, ModelReplica, ModelStatus, Node, NodeStatus
from db.models import ReplicaStatus as Replica
from web.database import end_unit_of_work, get_db, get_session
from web.errors import Conflict, NotFound, ServiceUnavailable
from web.extensions import current_celery, current_settings
from web.fleet.caching import MODELS, NODES, invalidate_after_commit
from web.fleet.registry import ensure_pull_allowed
from web.realtime.hub import HubUnavailable
from web.realtime.mailbox import Mailbox
from web.realtime.relay import current_relay
from web.request_audit import audit
from workers.dispatch import MODEL_DELETE, MODEL_PULL, publish_to_node
from workers.events import TOPIC_CHANNEL

log = logging.getLogger(__name__)

MODEL_NEWS = TOPIC_CHANNEL.format("model_update")
MAILBOX = 4000  # news about one model held between reads
# How long /api/delete waits for the online nodes to say the model is gone (Ollama answers
# once it is); a removal not confirmed by then is still queued on the node.
REMOVAL_WAIT_S = 60.0
NEWS_UNAVAILABLE = "The fleet's event feed (Redis) is unavailable; try again."


class FleetFailed(Exception):
    """A pull or a removal failed on a node (the message says which, and why)."""


class ModelNews:
    """The workers' model_update news about one model, from the moment it is made."""

    def __init__(self, model: str) -> None:
        self.model = model
        # Workers publish compact JSON (workers/events.py: announce): skip other models'
        # news in the hub, before it reaches the mailbox.
        marker = json.dumps({"model": model}, separators=(",", ":"))[1:-1].encode()
        self._shape = lambda data: data if marker in data else None
        self._hub = current_relay().hub
        self._mailbox = self._subscribe()

    def _subscribe(self) -> Mailbox:
        mailbox = Mailbox(MAILBOX)
        try:
            self._hub.subscribe(MODEL_NEWS, mailbox, self._shape)
        except HubUnavailable as error:
            raise ServiceUnavailable(NEWS_UNAVAILABLE) from error
        return mailbox

    def take(self, timeout: float) -> tuple[list[dict[str, Any]], bool]:
        """The news within `timeout` (none if it stays quiet), and whether some may have been
        lost meanwhile: then the mailbox is replaced, and the caller asks the database."""
        items = self._mailbox.take(timeout)
        lost = self._mailbox.overflowed or self._mailbox.resync_requested
        if lost:
            stale, self._mailbox = self._mailbox, self._subscribe()
            self._hub.unsubscribe(MODEL_NEWS, stale)
        news = []
        for item in items:
            try:
                event = json.loads(item)
            except ValueError:
                continue
            if isinstance(event, dict) and event.get("model") == self.model:
                news.append(event)
        return news, lost

    def close(self) -> None:
        self._hub.unsubscribe(MODEL_NEWS, self._mailbox)


@dataclass(frozen=True)
class NodeState:
    name: str
    node: str  # the node's status
    replica: str | None  # this model's replica on it, if any


def _states(model_id: uuid.UUID, node_ids: set[str]) -> dict[str, NodeState]:
    """The nodes as the database has them now, with their replica of the model."""
    with get_db().unit_of_work() as session:
        rows = session.execute(
            select(Node.id, Node.name, Node.status, ModelReplica.status)
            .outerjoin(
                ModelReplica,
                and_(ModelReplica.node_id == Node.id, ModelReplica.model_id == model_id),
            )
            .where(Node.id.in_([uuid.UUID(n) for n in node_ids]))
        )
        return {str(i): NodeState(name, status, replica) for i, name, status, replica in rows}


def _on(nodes: dict[str, str], node_id: str, message: str) -> str:
    """An engine's message, naming the node when there are several."""
    return f"{message} (node {nodes[node_id]})" if len(nodes) > 1 else message


def _model_row(name: str) -> Model | None:
    return get_session().scalar(select(Model).where(Model.name == name))


# --- pull ------------------------------------------------------------------------------


@dataclass
class Pull:
    """A pull queued on `nodes` (id -> name); `progress()` follows it to its end."""

    news: ModelNews
    model_id: uuid.UUID
    nodes: dict[str, str]
    available_before: set[str]  # nodes that already had the model (a pull updates it)
    idle_s: float
    _layers: dict[str, dict[str, int]] = field(default_factory=dict)
    _sent: dict[str, Any] = field(default_factory=dict)

    def progress(self) -> Iterator[dict[str, Any]]:
        """Ollama's progress objects, ending with `{"status": "success"}` once every node has
        the model; FleetFailed as soon as one fails. Several nodes' steps are sent once each,
        and a layer's `completed` is the least any node has (so it only grows)."""
        try:
            pending = set(self.nodes)
            while pending:
                news, lost = self.news.take(self.idle_s)
                for event in news:
                    node = str(event.get("node_id"))
                    if node not in pending:
                        continue
                    kind = event.get("type")
                    if kind == "pull_progress":
                        line = self._line(node, event)
                        if line is not None:
                            yield line
                    elif kind == "pulled":
                        pending.discard(node)
                    elif kind == "pull_failed":
                        message = str(event.get("error") or "the pull failed")
                        raise FleetFailed(_on(self.nodes, node, message))
                if pending and (lost or not news):
                    pending -= self._settled(pending, lost)
            yield {"status": "success"}
        finally:
            self.news.close()

    def _line(self, node: str, event: dict[str, Any]) -> dict[str, Any] | None:
        status = str(event.get("status") or "")
        if not status or status == "success":  # ours comes once every node is done
            return None
        total = event.get("total")
        if not total:
            if status in self._sent:
                return None
            self._sent[status] = None
            return {"status": status}
        digest = event.get("digest")
        layer = self._layers.setdefault(str(digest or status), {})
        layer[node] = int(event.get("completed") or 0)
        completed = min(layer.get(n, 0) for n in self.nodes)
        line: dict[str, Any] = {"status": status}
        if digest:
            line["digest"] = digest
        line["total"] = total
        if completed:
            line["completed"] = completed  # left out when 0, as Ollama does
        key = f"{digest or status}\0{completed}"
        if key in self._sent:
            return None
        self._sent[key] = None
        return line

    def _settled(self, pending: set[str], lost: bool) -> set[str]:
        """Nodes the database says are done; FleetFailed if one failed or went away. A node
        that had the model before counts as done by the database only when news may have
        been lost: its replica is available all along."""
        done = set()
        for node, state in _states(self.model_id, pending).items():
            if state.replica == Replica.FAILED:
                raise FleetFailed(_on(self.nodes, node, "the pull failed on the node's engine"))
            if state.node == NodeStatus.OFFLINE:
                raise FleetFailed(f"node {state.name} went offline during the pull")
            if state.replica == Replica.AVAILABLE and (lost or node not in self.available_before):
                done.add(node)
        return done


def start_pull(name: str) -> Pull:
    """Register the model if the registry does not know it, mark it pulling on every online,
    undrained Ollama node, commit, and queue the pull on each node's own queue."""
    ensure_pull_allowed(name)  # from an allowed registry only, as the fleet API's pulls
    session = get_session()
    model = _model_row(name)
    if model is not None and model.status == ModelStatus.DISABLED:
        raise Conflict(
            f"model '{name}' is disabled; an operator enables it with PUT /api/v1/models/{model.id}"
        )
    nodes = list(
        session.scalars(
            select(Node)
            .where(
                Node.status == NodeStatus.ONLINE,
                Node.drained.is_(False),
                Node.engine_kind == EngineKind.OLLAMA,
            )
            .order_by(Node.name)
        )
    )
    if not nodes:
        raise Conflict(
            f"no online Ollama node can pull '{name}' (OpenAI-compatible engines cannot pull)",
            code="no_node_available",
        )
    if model is None:
        model = Model(name=name, discovered=False, status=ModelStatus.UNAVAILABLE)
        session.add(model)
        session.flush()
        audit("model.registered", resource_type="model", resource_id=model.id)
    targets = {str(node.id): node.name for node in nodes}
    available_before = set(
        str(node_id)
        for node_id in session.scalars(
            select(ModelReplica.node_id).where(
                ModelReplica.model_id == model.id, ModelReplica.status == Replica.AVAILABLE
            )
        )
    )
    for node in nodes:
        mark_replica(session=session, model_id=model.id, node_id=node.id, status=Replica.PULLING)
    audit(
        "model.pull_requested",
        resource_type="model",
        resource_id=model.id,
        details={"nodes": list(targets.values()), "via": "ollama"},
    )
    invalidate_after_commit(MODELS, NODES)
    news = ModelNews(name)  # before the workers can hear of it
    pull = Pull(news, model.id, targets, available_before, current_settings().ws_heartbeat_s)
    _commit_and_send(news, MODEL_PULL, name, targets, "pull")
    return pull


def _commit_and_send(
    news: ModelNews, task: str, name: str, nodes: dict[str, str], what: str
) -> None:
    """Commit, then queue `task` on each node's own queue. A node whose queue cannot be
    reached is a 503: nothing reaches it, and its heartbeat puts its replica right again."""
    try:
        end_unit_of_work()
        unsent = [
            node_name
            for node_id, node_name in nodes.items()
            if not publish_to_node(current_celery(), task, [name, node_id], node_name)
        ]
    except BaseException:
        news.close()
        raise
    if unsent:
        news.close()
        raise ServiceUnavailable(f"The {what} could not be queued on node {unsent[0]}; try again.")


# --- delete ----------------------------------------------------------------------------


def remove_everywhere(name: str, sent: str) -> None:
    """Remove the model `name` (`sent` so by the caller) from every node that holds it;
    return once every online one has (a node offline now does it when it comes back: the
    task waits in its queue). The registry keeps the model, unavailable, as the fleet API's
    replica removal does."""
    session = get_session()
    model = _model_row(name)
    holders = []
    if model is not None:
        holders = list(
            session.execute(
                select(Node.id, Node.name, Node.status, Node.engine_kind)
                .join(ModelReplica, ModelReplica.node_id == Node.id)
                .where(ModelReplica.model_id == model.id)
                .order_by(Node.name)
            )
        )
    if model is None or not holders:
        raise NotFound(f"model '{sent}' not found")
    foreign = [node_name for _, node_name, _, kind in holders if kind != EngineKind.OLLAMA]
    if foreign:
        raise Conflict(
            f"model '{sent}' is also on node {foreign[0]}, whose OpenAI-compatible engine "
            "cannot remove models (unload it on that server); nothing was removed"
        )
    model_id = model.id
    for node_id, node_name, _, _ in holders:
        mark_removing(session=session, model_id=model_id, node_id=node_id)
        audit(
            "model.replica_removal_requested",
            resource_type="model",
            resource_id=model_id,
            details={"node": node_name, "via": "ollama"},
        )
    invalidate_after_commit(MODELS, NODES)
    nodes = {str(node_id): node_name for node_id, node_name, _, _ in holders}
    online = {str(node_id) for node_id, _, status, _ in holders if status != NodeStatus.OFFLINE}
    news = ModelNews(name)
    _commit_and_send(news, MODEL_DELETE, name, nodes, "removal")
    try:
        _await_removal(news, model_id, nodes, online)
    finally:
        news.close()


def _await_removal(
    news: ModelNews, model_id: uuid.UUID, nodes: dict[str, str], pending: set[str]
) -> None:
    deadline = time.monotonic() + REMOVAL_WAIT_S
    idle_s = current_settings().ws_heartbeat_s
    while pending:
        left = deadline - time.monotonic()
        if left <= 0:
            waiting = ", ".join(sorted(nodes[n] for n in pending))
            raise FleetFailed(
                f"the removal is queued, but node {waiting} has not confirmed it within "
                f"{REMOVAL_WAIT_S:.0f} s; see GET /api/v1/models/{model_id}/replicas"
            )
        events, lost = news.take(min(idle_s, left))
        for event in events:
            node = str(event.get("node_id"))
            if node in pending and event.get("type") == "removed":
                pending.discard(node)
            elif node in pending and event.get("type") == "remove_failed":
                message = str(event.get("error") or "the removal failed")
                raise FleetFailed(_on(nodes, node, message))
        if pending and (lost or not events):
            pending -= _removed(model_id, nodes, pending)


def _removed(model_id: uuid.UUID, nodes: dict[str, str], pending: set[str]) -> set[str]:
    """Nodes the database says are done: the replica is gone, or the node is offline (it
    removes the model when it returns); FleetFailed if the removal failed on one."""
    done = set()
    states = _states(model_id, pending)
    for node in pending:
        state = states.get(node)
        if state is None or state.replica is None or state.node == NodeStatus.OFFLINE:
            done.add(node)
        elif state.replica == Replica.FAILED:
            raise FleetFailed(_on(nodes, node, "the removal failed on the node's engine"))
    return done
