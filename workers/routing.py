"""Warm-model-first routing: a job goes to a node whose engine has its model loaded and a
slot free before a node that would have to load it (docs/pipeline.md, "Routing").

Every node serving a model consumes `model.<name>`; Celery stays the transport and the
submission path is unchanged. The worker that receives a job decides, before its claim,
from what it already holds in memory (no round trip):

- its own engine's loaded models, from its last heartbeat (and the jobs it ran since);
- the fleet's view, read with its heartbeat (one query per beat): which online nodes hold
  each of its models, which have it loaded, and their free slots then.

If its engine has the model loaded, it runs the job ("warm"). If not, and another node has
it loaded with a free slot, the job goes to that node's own queue (`node.<name>`, "handed");
that node runs what is handed to it without routing it again, so a job moves at most once.
If every warm node is busy, the job is offered again (a Celery retry) every
WARM_ROUTING_RETRY_S until it has waited WARM_ROUTING_WAIT_S, then it is loaded here
("cold_after_wait"). With no warm node at all it runs here at once ("cold_none_warm").
The wait is counted from the first worker that received the job, on the workers' wall
clocks (kept by NTP), and travels with the job's message.

Free slots are as of each node's last heartbeat; jobs this worker handed to a node since
count against that node's free slots, so one burst does not swamp one warm node.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from db.fleet import WarmReplica
from workers.engines.base import LoadedModel

# A model about to be unloaded is not warm: by the time the job arrives it may be gone.
EXPIRY_MARGIN = timedelta(seconds=2)
RECENT = 20  # decisions kept for the node's detail

WARM = "warm"  # its model is loaded here
HANDED_IN = "handed_in"  # another node sent it here because this one has the model loaded
HANDED = "handed"  # sent to a node that has the model loaded and a free slot
WAITING = "waiting"  # every warm node is busy: offered again shortly (not recorded)
COLD_AFTER_WAIT = "cold_after_wait"  # every warm node stayed busy for the whole wait
COLD_NONE_WARM = "cold_none_warm"  # no node has the model loaded
UNROUTED = "unrouted"  # warm routing is off, or the job came without a model queue


@dataclass(frozen=True)
class Decision:
    kind: str
    node: str | None = None  # where it was handed (HANDED) or from (HANDED_IN)
    retry_in: float | None = None  # WAITING: offer it again in this many seconds

    @property
    def runs_here(self) -> bool:
        return self.kind not in (HANDED, WAITING)


def model_of_queue(queue: str | None) -> str | None:
    """The model a job's queue is for (`model.<name>`); None for any other queue."""
    if queue and queue.startswith("model."):
        return queue.removeprefix("model.")
    return None


def _warm(expires_at: datetime | None, now: datetime) -> bool:
    return expires_at is None or expires_at > now + EXPIRY_MARGIN


class Router:
    """One worker's routing state: in memory, refreshed by its heartbeat."""

    def __init__(self, node_name: str, wait_s: float, retry_s: float) -> None:
        self.node_name, self.wait_s, self.retry_s = node_name, wait_s, retry_s
        self.lock = threading.Lock()
        self.loaded: dict[str, datetime | None] = {}  # this engine's models in memory
        self.others: dict[str, list[WarmReplica]] = {}  # model -> other nodes holding it
        self.handed: Counter[str] = Counter()  # jobs handed to each node since the view
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT)

    def refresh(
        self,
        loaded: Mapping[str, LoadedModel] | None,
        view: Iterable[WarmReplica] | None,
    ) -> None:
        """What the heartbeat learned: this engine's loaded models (None: unknown now, keep
        what we had), and the fleet's view (None: not read this time)."""
        with self.lock:
            if loaded is not None:
                self.loaded = {name: model.expires_at for name, model in loaded.items()}
            if view is not None:
                others: dict[str, list[WarmReplica]] = {}
                for row in view:
                    if row.node != self.node_name:
                        others.setdefault(row.model, []).append(row)
                self.others = others
                self.handed.clear()

    def note_loaded(self, model: str) -> None:
        """A job of `model` runs here: the engine has it loaded now (until the next beat
        says otherwise)."""
        with self.lock:
            if model not in self.loaded:
                self.loaded[model] = None

    def decide(self, model: str | None, handed_by: str | None, waited_s: float) -> Decision:
        now = datetime.now(UTC)
        with self.lock:
            warm_here = model in self.loaded and _warm(self.loaded[model], now)
            if handed_by is not None:
                return Decision(HANDED_IN, node=handed_by)
            if model is None or self.wait_s <= 0:
                return Decision(UNROUTED)
            if warm_here:
                return Decision(WARM)
            warm = [
                row
                for row in self.others.get(model, [])
                if row.loaded and _warm(row.expires_at, now)
            ]
            if not warm:
                return Decision(COLD_NONE_WARM)
            if waited_s >= self.wait_s:
                return Decision(COLD_AFTER_WAIT)
            free = [(row.free_slots - self.handed[row.node], row.node) for row in warm]
            slots, node = max(free, key=lambda pair: (pair[0], pair[1]))
            if slots > 0:
                self.handed[node] += 1
                return Decision(HANDED, node=node)
            return Decision(WAITING, retry_in=min(self.retry_s, self.wait_s - waited_s))

    def record(
        self, request_id: str, model: str | None, decision: Decision, waited_s: float
    ) -> None:
        entry = {
            "request_id": request_id,
            "model": model,
            "decision": decision.kind,
            "node": decision.node,
            "waited_s": round(waited_s, 3),
            "at": datetime.now(UTC).isoformat(),
        }
        with self.lock:
            self.recent.append(entry)

    def recent_decisions(self) -> list[dict[str, Any]]:
        """The last decisions, newest first (written with the heartbeat)."""
        with self.lock:
            return list(reversed(self.recent))


def clock() -> float:
    """Wall-clock seconds: the wait travels between hosts with the job."""
    return time.time()
