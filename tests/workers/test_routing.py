"""The routing decision (workers/routing.py), from what a worker holds in memory: its own
engine's loaded models and the fleet view its heartbeat read. The same on real processes:
tests/pipeline/test_warm_routing.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from db.fleet import WarmReplica
from workers.engines.base import LoadedModel
from workers.routing import (
    COLD_AFTER_WAIT,
    COLD_NONE_WARM,
    HANDED,
    HANDED_IN,
    UNROUTED,
    WAITING,
    WARM,
    Router,
    model_of_queue,
)

MODEL = "m:latest"


def _row(
    node: str, *, loaded: bool = True, free: int = 1, expires_in_s: float = 300
) -> WarmReplica:
    return WarmReplica(
        model=MODEL,
        node=node,
        loaded=loaded,
        expires_at=datetime.now(UTC) + timedelta(seconds=expires_in_s),
        free_slots=free,
        size_vram_bytes=3_000_000_000,
        model_size_bytes=2_000_000_000,
    )


def _router(*rows: WarmReplica, loaded_here: bool = False, wait_s: float = 5) -> Router:
    router = Router("me", wait_s=wait_s, retry_s=0.5)
    here = {MODEL: LoadedModel(MODEL, 1, None)} if loaded_here else {}
    router.refresh(here, [*rows, _row("me", loaded=loaded_here)])
    return router


def test_a_model_loaded_here_runs_here() -> None:
    assert _router(_row("a"), loaded_here=True).decide(MODEL, None, 0).kind == WARM


def test_a_job_goes_to_the_warm_node_with_the_most_free_slots() -> None:
    router = _router(_row("a", free=1), _row("b", free=2), _row("c", loaded=False, free=8))
    decision = router.decide(MODEL, None, 0)
    assert (decision.kind, decision.node, decision.runs_here) == (HANDED, "b", False)


def test_jobs_handed_since_the_last_view_use_up_free_slots_then_wait() -> None:
    router = _router(_row("a", free=2))
    assert [router.decide(MODEL, None, 0).kind for _ in range(2)] == [HANDED, HANDED]
    waiting = router.decide(MODEL, None, 1.0)
    assert (waiting.kind, waiting.retry_in) == (WAITING, 0.5)
    router.refresh(None, [_row("a", free=2)])  # the next heartbeat's view
    assert router.decide(MODEL, None, 1.0).kind == HANDED


def test_the_wait_is_bounded_then_the_job_loads_here() -> None:
    router = _router(_row("a", free=0))
    assert router.decide(MODEL, None, 4.75).retry_in == 0.25  # never past the bound
    assert router.decide(MODEL, None, 5.0).kind == COLD_AFTER_WAIT


def test_no_warm_node_or_one_about_to_unload_means_cold_at_once() -> None:
    assert _router(_row("a", loaded=False)).decide(MODEL, None, 0).kind == COLD_NONE_WARM
    assert _router(_row("a", expires_in_s=1)).decide(MODEL, None, 0).kind == COLD_NONE_WARM


def test_a_handed_job_runs_where_it_was_handed_and_routing_can_be_off() -> None:
    handed = _router(_row("a")).decide(MODEL, "a", 0)
    assert (handed.kind, handed.node, handed.runs_here) == (HANDED_IN, "a", True)
    assert _router(_row("a"), wait_s=0).decide(MODEL, None, 0).kind == UNROUTED
    assert _router(_row("a")).decide(None, None, 0).kind == UNROUTED


def test_a_job_run_here_counts_its_model_as_loaded_and_decisions_are_kept() -> None:
    router = _router(_row("a", loaded=False))
    router.note_loaded(MODEL)
    decision = router.decide(MODEL, None, 0)
    assert decision.kind == WARM
    router.record("r1", MODEL, decision, 0.0)
    [recent] = router.recent_decisions()
    assert (recent["request_id"], recent["decision"]) == ("r1", WARM)


def test_the_model_of_a_queue() -> None:
    assert model_of_queue("model.qwen3:8b") == "qwen3:8b"
    assert model_of_queue("node.gpu0@host") is None
    assert model_of_queue(None) is None
