"""A worker's node: register it, keep its heartbeat and model list fresh, and consume a
queue for every model its engine has (late binding: a free slot pulls the next job)."""

from __future__ import annotations

import logging
import threading
from dataclasses import replace
from datetime import timedelta
from enum import Enum
from typing import Any

from celery import Celery
from redis.exceptions import RedisError
from sqlalchemy.exc import InterfaceError, OperationalError

from db.fleet import (
    InMemory,
    NodeOrders,
    NodeReport,
    heartbeat,
    mark_offline,
    node_orders,
    record_engine_details,
    register_node,
    routing_view,
    sync_replicas,
)
from db.models import NodeStatus
from workers.cache import VersionedCache
from workers.dispatch import queue_for_model
from workers.engines.base import EngineError, LoadedModel
from workers.events import announce
from workers.gpu import GpuInfo, find
from workers.runtime import Runtime

log = logging.getLogger(__name__)


def gpu_columns(gpu: GpuInfo | None) -> dict[str, Any]:
    if gpu is None:
        return {}
    return {
        "gpu_name": gpu.name,
        "gpu_memory_total_bytes": gpu.memory_total_bytes,
        "gpu_memory_free_bytes": gpu.memory_free_bytes,
        "gpu_utilization_pct": gpu.utilization_pct,
    }


def gpu_report(rt: Runtime, loaded: dict[str, LoadedModel] | None) -> dict[str, Any]:
    """The GPU columns of a beat: NVML's, else the memory the operator declared
    (GPU_MEMORY_BYTES), free being what the engine's loaded models leave of it."""
    columns = gpu_columns(find(rt.gpu_index))
    declared = rt.settings.gpu_memory_bytes
    if columns or declared is None:
        return columns
    columns = {"gpu_memory_total_bytes": declared}
    if loaded is not None:
        held = sum(model.size_vram or 0 for model in loaded.values())
        columns["gpu_memory_free_bytes"] = max(0, declared - held)
    return columns


def too_big(
    inventory: Inventory,
    gpu: dict[str, Any],
    sizes: dict[str, int],
) -> set[str]:
    """The models this node's GPU memory cannot hold: a model needs what it took in GPU
    memory when last loaded anywhere in the fleet (`sizes`, or here), else its size on
    disk. Without a known GPU memory nothing is refused."""
    total = gpu.get("gpu_memory_total_bytes")
    if not total:
        return set()
    present, loaded = inventory
    refused = set()
    for name, record in present.items():
        measured = [sizes.get(name), loaded[name].size_vram if name in loaded else None]
        known = [size for size in measured if size]
        need = max(known) if known else record.get("size")
        if isinstance(need, int) and need > total:
            refused.add(name)
    return refused


def register(rt: Runtime, report: NodeReport) -> set[str]:
    """Insert or refresh the node and its replicas; returns the model queues to consume."""
    inventory = _read_engine(rt)
    gpu = gpu_report(rt, inventory[1] if inventory else None)
    report = replace(report, **gpu, engine_version=rt.engine.version())
    with rt.database.unit_of_work() as session:
        rt.node_id = register_node(session=session, report=report)
    _announce_status(rt, NodeStatus.ONLINE, None)
    refused = too_big(inventory, gpu, {}) if inventory else set()
    for name in sorted(refused):
        log.warning("model %s does not fit this node's GPU memory: not served here", name)
    queues = _sync_models(rt, inventory, refused, starting=True) if inventory else set()
    if inventory:
        rt.router.refresh(inventory[1], None)
    invalidate_fleet_reads(rt)
    return queues


def sync_models(rt: Runtime) -> None:
    """Make the node's replicas match its engine now (after a pull or a removal)."""
    with rt.inventory_lock:
        inventory = _read_engine(rt)
        if inventory is not None:
            gpu = gpu_report(rt, inventory[1])
            _sync_models(rt, inventory, too_big(inventory, gpu, {}))
    invalidate_fleet_reads(rt)


def invalidate_fleet_reads(rt: Runtime) -> None:
    """The API caches model and node lists; what a worker writes must show at once too."""
    for namespace in ("models", "nodes"):
        VersionedCache(rt.runtime_config.cache.redis, namespace).invalidate()


# Models present (name -> the engine's record), models loaded (name -> size and expiry).
Inventory = tuple[dict[str, dict[str, Any]], dict[str, LoadedModel]]


DECOMMISSIONED = object()  # what a beat returns when the node's row is gone


class Busy(Enum):
    """The engine took the connection but not the time to list its models: it is busy
    (llama.cpp's servers list only between generations, whoever runs them), not down."""

    BUSY = "busy"


def _read_engine(rt: Runtime) -> Inventory | None:
    """The engine's models and loaded models; None if it does not answer."""
    answer = _probe_engine(rt)
    return None if answer is Busy.BUSY else answer


def _probe_engine(rt: Runtime) -> Inventory | Busy | None:
    """The same, or Busy.BUSY if it answers too slowly (ENGINE_PROBE_TIMEOUT_S)."""
    try:
        present = {model.name: model.record for model in rt.engine.models()}
        return present, rt.engine.loaded_models()
    except EngineError as error:
        if error.code == "engine_stalled":
            log.info("engine at %s is busy (%s); its models stand as listed", rt.engine_url, error)
            return Busy.BUSY
        log.warning("engine at %s does not answer: %s", rt.engine_url, error)
        return None


def _sync_models(
    rt: Runtime, inventory: Inventory, refused: set[str], *, starting: bool = False
) -> set[str]:
    """Record the engine's models (`refused`: those the GPU cannot hold); returns the model
    queues to consume: every model present that fits."""
    present, loaded = inventory
    assert rt.node_id is not None
    memory = {name: InMemory(m.size_vram, m.expires_at) for name, m in loaded.items()}
    with rt.database.unit_of_work() as session:
        added, removed = sync_replicas(
            session=session, node_id=rt.node_id, present=present, loaded=memory, too_big=refused
        )
    _describe(rt, added)
    for change, names in (("added", added), ("removed", removed)):
        for name in sorted(names):
            log.info("model %s %s on this node's engine", name, change)
            announce(
                rt.redis, "model_update", change, model=name, node=rt.node_name, node_id=rt.node_id
            )
    for name in sorted(refused & added if not starting else ()):  # new since the start
        log.warning("model %s does not fit this node's GPU memory: not served here", name)
    return {queue_for_model(name) for name in present if name not in refused}


def _describe(rt: Runtime, names: set[str]) -> None:
    """Record what the engine says of models new on this node (the doors' /api/show);
    best effort: a model the engine cannot describe is still served."""
    for name in sorted(names):
        try:
            described = rt.engine.describe(name)
        except EngineError as error:
            log.warning("engine could not describe %s: %s", name, error)
            continue
        if described:
            with rt.database.unit_of_work() as session:
                record_engine_details(session=session, name=name, described=described)


def _announce_status(rt: Runtime, status: NodeStatus, reason: str | None) -> None:
    announce(
        rt.redis,
        "node_status",
        str(status),
        node=rt.node_name,
        node_id=rt.node_id,
        status=str(status),
        reason=reason,
    )


class Heartbeat(threading.Thread):
    """Every HEARTBEAT_INTERVAL_S: beat, refresh models, follow new and removed models, and
    do what operators asked of the node (drain, slots, decommission). While the engine does
    not answer, every ENGINE_PROBE_S, consuming no model queue (workers/engine_health.py);
    a job that finds the engine down wakes it at once."""

    def __init__(self, rt: Runtime, app: Celery, consumed: set[str]) -> None:
        super().__init__(name="heartbeat", daemon=True)
        self.rt, self.app, self.consumed = rt, app, set(consumed)
        # The model queues the engine had when it last answered: consumed again when it
        # does, or when it has been down so long that jobs stop waiting for it.
        self.model_queues = set(consumed)
        self.stop = threading.Event()
        self.consumer: Any = None  # the Celery consumer, once the worker is ready
        self.slots_applied = rt.slots

    def run(self) -> None:
        health = self.rt.engine_health
        while not self.stop.is_set():
            down = health.down
            interval = self.rt.settings.engine_probe_s if down else None
            health.changed.wait(interval or self.rt.settings.heartbeat_interval_s)
            health.changed.clear()
            if self.stop.is_set():
                return
            try:
                self.beat()
            except (OperationalError, InterfaceError, RedisError) as error:  # an outage
                log.warning("heartbeat failed: %s", str(error).strip().split("\n")[0])
            except Exception:  # a missed beat is retried next time; never kill the thread
                log.exception("heartbeat failed")

    def beat(self) -> None:
        # A removal's sync that ran between this beat's read of the engine and its record
        # would be undone by it (the replica back until the next beat): the lock orders them.
        with self.rt.inventory_lock:
            wanted = self._beat()
        if wanted is DECOMMISSIONED:
            self._decommissioned()
        elif isinstance(wanted, set):
            self._consume(wanted)

    def _beat(self) -> set[str] | object | None:
        """The beat up to the model queues it wants consumed (None: leave them as they are)."""
        rt = self.rt
        assert rt.node_id is not None
        inventory = _probe_engine(rt)
        if inventory is None:
            rt.engine_health.report_down("the heartbeat's probe")
        else:
            rt.engine_health.report_up()
        status, reason = (
            (NodeStatus.ONLINE, None)
            if inventory is not None
            else (NodeStatus.DEGRADED, "engine_unreachable")
        )
        known = inventory if inventory is not None and inventory is not Busy.BUSY else None
        gpu = gpu_report(rt, known[1] if known else None)
        before, orders, sizes = self._record_beat(status, reason, gpu, known)
        if before is None or orders is None:
            return DECOMMISSIONED
        if before != status:
            _announce_status(rt, status, reason)
        self._apply_slots(orders.slots)
        if inventory is None:
            invalidate_fleet_reads(rt)
            # Take no new job while the engine is away, unless it has been away so long
            # that jobs stop waiting for it (they then fail, bounded, as they always did).
            wanted = set() if rt.engine_health.waiting() else self.model_queues
        elif inventory is Busy.BUSY:
            wanted = self.model_queues  # the models it listed last
        else:
            wanted = _sync_models(rt, inventory, too_big(inventory, gpu, sizes))
            invalidate_fleet_reads(rt)
            if wanted:
                self.model_queues = wanted
            elif not orders.drained:
                return None  # an empty list from a flaky engine must not stop every consumer
        if orders.drained:
            wanted = set()  # finish what runs, take nothing new (the node queue stays)
        return wanted

    def _record_beat(
        self,
        status: NodeStatus,
        reason: str | None,
        gpu: dict[str, Any],
        known: Inventory | None,
    ) -> tuple[NodeStatus | None, NodeOrders | None, dict[str, int]]:
        """One transaction: the beat (with the last routing decisions), the operators'
        orders and the fleet's routing view, which refreshes the router. Returns the status
        before, the orders, and the GPU memory each model took where last loaded."""
        rt = self.rt
        assert rt.node_id is not None
        with rt.database.unit_of_work() as session:
            before = heartbeat(
                session=session,
                node_id=rt.node_id,
                slots_busy=rt.busy,
                gpu=gpu,
                status=status,
                reason=reason,
                routing=rt.router.recent_decisions(),
            )
            orders = node_orders(session=session, node_id=rt.node_id)
            view = routing_view(
                session=session,
                node_id=rt.node_id,
                stale_after=timedelta(seconds=rt.settings.node_stale_after_s),
            )
        rt.router.refresh(known[1] if known else None, view)
        sizes: dict[str, int] = {}
        for row in view:
            if row.size_vram_bytes:
                sizes[row.model] = max(sizes.get(row.model, 0), row.size_vram_bytes)
        return before, orders, sizes

    def _consume(self, wanted: set[str]) -> None:
        rt = self.rt
        for queue in sorted(wanted - self.consumed):
            self.app.control.add_consumer(queue, destination=[rt.worker_name], reply=False)
        for queue in sorted(self.consumed - wanted):
            self.app.control.cancel_consumer(queue, destination=[rt.worker_name], reply=False)
        self.consumed = wanted

    def _apply_slots(self, slots: int) -> None:
        """Concurrent jobs = the consumer's prefetch count (one unacknowledged message per
        running job), up to the threads the worker started with."""
        wanted = max(1, min(slots, self.rt.slots))
        if self.consumer is None or wanted == self.slots_applied:
            return
        qos = self.consumer.qos
        qos.value = wanted
        qos.update()
        self.slots_applied = wanted
        log.info("node %s now takes %d job(s) at a time", self.rt.node_name, wanted)

    def _decommissioned(self) -> None:
        log.warning("node %s was decommissioned; stopping this worker", self.rt.node_name)
        self.stop.set()
        # A remote shutdown sends no worker_shutting_down signal: start the grace period here,
        # so running jobs finish or are handed back as on SIGTERM.
        self.rt.begin_stopping()
        self.app.control.shutdown(destination=[self.rt.worker_name])


def go_offline(rt: Runtime, reason: str) -> None:
    if rt.node_id is None:
        return
    with rt.database.unit_of_work() as session:
        mark_offline(session=session, node_id=rt.node_id, reason=reason)
    _announce_status(rt, NodeStatus.OFFLINE, reason)
