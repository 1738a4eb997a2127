"""Warm-model-first routing on real processes: three Ollama doubles that load models as
Ollama does (a cold model costs a load delay, counted in the double's `loads`), three
workers. Node `warm` has the model loaded, `cold` must load it, `small` declares a GPU
too small for it. What is asserted is counted (which node ran each job, how many loads
each engine did, which decision each worker recorded), never timed."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select

from db.models import InferenceRequest, Model, ModelReplica, Node
from db.session import Database
from tests.pipeline.conftest import Double, Worker, both_brokers, start_double, wait_for
from tests.pipeline.jobs import finished, read, submit, wait_status

# The hand-off publishes to a node queue and the wait retries on the model queue: both
# brokers.
pytestmark = both_brokers

MODEL = "warmtest:7b"
GIB = 1024**3
# Short enough to stay under the pipeline tests' ENGINE_STALL_TIMEOUT_S (2 s): the double
# sends no byte while it loads, as Ollama does not.
LOAD_DELAY_S = "0.8"
ROUTING = {"WARM_ROUTING_WAIT_S": "3", "WARM_ROUTING_RETRY_S": "0.2"}


@pytest.fixture(scope="module")
def doubles() -> Iterator[dict[str, Double]]:
    started = {
        "warm": start_double((MODEL,), "--load-delay-s", LOAD_DELAY_S, "--loaded", MODEL),
        "cold": start_double((MODEL,), "--load-delay-s", LOAD_DELAY_S),
        "small": start_double((MODEL,), "--load-delay-s", LOAD_DELAY_S),
    }
    yield started
    for double in started.values():
        double.process.terminate()
        double.process.wait(timeout=10)


@pytest.fixture(scope="module")
def nodes(doubles: dict[str, Double], start_worker: Callable[..., Worker]) -> dict[str, Worker]:
    memory = {"warm": 8 * GIB, "cold": 8 * GIB, "small": 1 * GIB}  # the model takes ~3.1 GiB
    return {
        role: start_worker(
            doubles[role].url,
            name=f"wr-{role}",
            slots=2,
            env={**ROUTING, "GPU_MEMORY_BYTES": str(memory[role])},
        )
        for role in ("warm", "cold", "small")
    }


def _node(database: Database, name: str) -> Node:
    with database.unit_of_work() as session:
        node = session.scalar(select(Node).where(Node.name == name))
        assert node is not None
        return node


def _beats(database: Database, name: str, count: int = 2) -> None:
    """Wait until node `name` has beaten `count` more times: its routing view is then one
    read after whatever the test saw before."""
    seen: list[datetime | None] = [_node(database, name).last_heartbeat_at]

    def beat() -> bool:
        now = _node(database, name).last_heartbeat_at
        if now != seen[-1]:
            seen.append(now)
        return len(seen) > count

    wait_for(beat, timeout=20)


def _loaded_on(database: Database, name: str) -> bool:
    with database.unit_of_work() as session:
        return bool(
            session.scalar(
                select(ModelReplica.loaded)
                .join(Node, Node.id == ModelReplica.node_id)
                .join(Model, Model.id == ModelReplica.model_id)
                .where(Node.name == name, Model.name == MODEL)
            )
        )


def _ran_on(database: Database, request_ids: list[str]) -> Counter[str]:
    with database.unit_of_work() as session:
        rows = session.execute(
            select(Node.name)
            .join(InferenceRequest, InferenceRequest.node_id == Node.id)
            .where(InferenceRequest.id.in_([uuid.UUID(i) for i in request_ids]))
        )
        return Counter(name for (name,) in rows)


@pytest.fixture
def fleet(
    nodes: dict[str, Worker], doubles: dict[str, Double], committed: Database
) -> dict[str, Worker]:
    """Only the warm node's engine has the model loaded (an earlier test may have loaded
    it on the cold one), and every node knows it and that the warm node is idle."""
    for role, double in doubles.items():
        loaded = [MODEL] if role == "warm" else []
        double.configure(token_delay_s=0.0, first_token_delay_s=0.0, loaded=loaded)
    wait_for(lambda: _loaded_on(committed, "wr-warm"), timeout=20)
    wait_for(lambda: not _loaded_on(committed, "wr-cold"), timeout=20)
    wait_for(lambda: _node(committed, "wr-warm").slots_busy == 0, timeout=30)
    for name in ("wr-cold", "wr-small"):
        _beats(committed, name)
    return nodes


def _decisions(api: FlaskClient, headers: dict[str, str], name: str) -> list[dict[str, Any]]:
    listed = api.get("/api/v1/nodes/?per_page=100", headers=headers).get_json()["items"]
    node_id = next(n["id"] for n in listed if n["name"] == name)
    detail = api.get(f"/api/v1/nodes/{node_id}", headers=headers).get_json()
    return detail["routing"]  # type: ignore[no-any-return]


def test_jobs_go_to_the_node_that_has_their_model_loaded(
    api: FlaskClient,
    user_headers: dict[str, str],
    operator_headers: dict[str, str],
    fleet: dict[str, Worker],
    doubles: dict[str, Double],
    committed: Database,
) -> None:
    loads_before = {role: len(d.stats()["loads"]) for role, d in doubles.items()}
    ids = []
    for index in range(8):
        job = submit(api, user_headers, model=MODEL, prompt=f"warm {index}")
        assert finished(api, user_headers, job["id"])["status"] == "completed"
        ids.append(job["id"])

    assert _ran_on(committed, ids) == Counter({"wr-warm": 8})
    # No engine loaded the model for these jobs: the cold load was avoided every time.
    assert {role: len(d.stats()["loads"]) for role, d in doubles.items()} == loads_before

    # Node detail: what each engine has loaded, and what each worker decided. Jobs that
    # reached another node were handed to the warm one; the warm one ran them all.
    _beats(committed, "wr-warm")
    _beats(committed, "wr-cold")
    listed = api.get("/api/v1/nodes/?per_page=100", headers=operator_headers).get_json()
    warm = next(n for n in listed["items"] if n["name"] == "wr-warm")
    [held] = warm["loaded"]
    assert (held["model"], held["size_vram_bytes"]) == (MODEL, 3340000000)
    assert held["expires_at"] is not None
    ran_warm = {
        d["request_id"]: d["decision"]
        for d in _decisions(api, operator_headers, "wr-warm")
        if d["request_id"] in ids
    }
    assert set(ran_warm) == set(ids)
    assert set(ran_warm.values()) <= {"warm", "handed_in"}
    handed = [d for d in _decisions(api, operator_headers, "wr-cold") if d["request_id"] in ids]
    assert all((d["decision"], d["node"]) == ("handed", "wr-warm") for d in handed)
    assert Counter(ran_warm.values())["handed_in"] >= len(handed)


def test_a_cold_node_takes_the_job_once_the_bounded_wait_is_over(
    api: FlaskClient,
    user_headers: dict[str, str],
    operator_headers: dict[str, str],
    fleet: dict[str, Worker],
    doubles: dict[str, Double],
    committed: Database,
) -> None:
    # Both of the warm node's slots busy with long jobs (they go to it: it is warm).
    doubles["warm"].configure(token_delay_s=0.5)
    long_jobs = [
        submit(api, user_headers, model=MODEL, prompt=f"long {i}", options={"num_predict": 60})
        for i in range(2)
    ]
    for job in long_jobs:
        wait_status(api, user_headers, job["id"], {"running"})
    assert _ran_on(committed, [j["id"] for j in long_jobs]) == Counter({"wr-warm": 2})
    wait_for(lambda: _node(committed, "wr-warm").slots_busy == 2, timeout=20)
    _beats(committed, "wr-cold")  # the cold node has seen the warm one full
    cold_loads = len(doubles["cold"].stats()["loads"])

    job = submit(api, user_headers, model=MODEL, prompt="cannot wait for ever")
    done = finished(api, user_headers, job["id"], timeout=30)

    assert done["status"] == "completed"
    assert _ran_on(committed, [job["id"]]) == Counter({"wr-cold": 1})
    # It did not wait for a warm slot: both long jobs were still running when it ended.
    assert [read(api, user_headers, j["id"])["status"] for j in long_jobs] == ["running"] * 2
    assert len(doubles["cold"].stats()["loads"]) == cold_loads + 1  # the cold node loaded it
    assert (done["load_duration"] or 0) > 0
    _beats(committed, "wr-cold", 1)
    [decision] = [
        d for d in _decisions(api, operator_headers, "wr-cold") if d["request_id"] == job["id"]
    ]
    assert decision["decision"] == "cold_after_wait"
    assert decision["waited_s"] >= 3
    # Cancelled, not waited for: 30 s of tokens each.
    for long_job in long_jobs:
        api.post(f"/api/v1/inference/requests/{long_job['id']}/cancel", headers=user_headers)
    for long_job in long_jobs:
        assert finished(api, user_headers, long_job["id"])["status"] == "cancelled"


def test_a_node_whose_gpu_cannot_hold_the_model_does_not_take_it(
    api: FlaskClient,
    operator_headers: dict[str, str],
    fleet: dict[str, Worker],
    doubles: dict[str, Double],
    committed: Database,
) -> None:
    # Every job of this module ran somewhere else, and the small node's engine never heard
    # of one (the tests above sent it their share of the model's queue, had it consumed).
    with committed.unit_of_work() as session:
        small_jobs = session.scalar(
            select(InferenceRequest.id)
            .join(Node, Node.id == InferenceRequest.node_id)
            .where(Node.name == "wr-small")
            .limit(1)
        )
    assert small_jobs is None
    assert doubles["small"].stats()["requests"] == 0
    assert doubles["small"].stats()["loads"] == []
    assert "does not fit this node's GPU memory" in fleet["small"].log()

    models = api.get("/api/v1/models/?per_page=100", headers=operator_headers).get_json()
    model_id = next(m["id"] for m in models["items"] if m["name"] == MODEL)
    replicas = api.get(f"/api/v1/models/{model_id}/replicas", headers=operator_headers)
    fits = {r["node_name"]: r["fits"] for r in replicas.get_json()["items"]}
    assert fits == {"wr-warm": True, "wr-cold": True, "wr-small": False}
    small = _node(committed, "wr-small")
    assert small.gpu_memory_total_bytes == GIB
