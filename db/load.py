"""The fleet's load right now: what waits, what runs, which nodes can take work."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.models import InferenceRequest, Node, RequestStatus


@dataclass(frozen=True)
class LiveLoad:
    queued: int = 0
    running: int = 0
    queued_by_model: dict[str, int] = field(default_factory=dict)
    running_by_model: dict[str, int] = field(default_factory=dict)
    nodes: dict[str, int] = field(default_factory=dict)  # by status
    slots_total: int = 0  # on online nodes
    slots_busy: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def live_load(*, session: Session) -> LiveLoad:
    """Two aggregate queries: the live requests (a partial index holds them) and the nodes."""
    queued = func.count().filter(InferenceRequest.status == RequestStatus.QUEUED)
    running = func.count().filter(InferenceRequest.status == RequestStatus.RUNNING)
    requests = session.execute(
        select(InferenceRequest.model_name, queued, running)
        .where(InferenceRequest.status.in_([RequestStatus.QUEUED, RequestStatus.RUNNING]))
        .group_by(InferenceRequest.model_name)
    ).all()
    nodes = session.execute(
        select(Node.status, func.count(), func.sum(Node.slots), func.sum(Node.slots_busy)).group_by(
            Node.status
        )
    ).all()
    online = [row for row in nodes if row[0] == "online"]
    return LiveLoad(
        queued=sum(row[1] for row in requests),
        running=sum(row[2] for row in requests),
        queued_by_model={row[0]: row[1] for row in requests if row[1]},
        running_by_model={row[0]: row[2] for row in requests if row[2]},
        nodes={str(row[0]): row[1] for row in nodes},
        slots_total=sum(int(row[2] or 0) for row in online),
        slots_busy=sum(int(row[3] or 0) for row in online),
    )
