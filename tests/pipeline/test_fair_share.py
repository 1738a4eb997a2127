"""Fair share on real processes (docs/pipeline.md, "Fair share"): one user floods a model
served by one slot, another queues five jobs behind the flood; with fair share on, the five
all start before the flood's next five; off, they wait for the whole flood. Fairness is read
from the ORDER of the jobs' start times (the database's), never from durations. While the
flood waits, /metrics and the stats API show it per user."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from db.models import InferenceRequest, User
from db.session import Database
from tests.pipeline.conftest import Double, Worker
from tests.pipeline.jobs import finished, submit

pytestmark = pytest.mark.usefixtures("fresh_double")

FLOOD, FEW = 24, 5


def _starts(database: Database, ids: set[str]) -> list[tuple[str, object]]:
    """(request id, started_at) of `ids`, in the order they started."""
    with database.unit_of_work() as session:
        rows = session.execute(
            select(InferenceRequest.id, InferenceRequest.started_at)
            .where(InferenceRequest.id.in_(ids))
            .order_by(InferenceRequest.started_at, InferenceRequest.id)
        ).all()
    return [(str(row[0]), row[1]) for row in rows]


def _username(api: FlaskClient, headers: dict[str, str]) -> str:
    return str(api.get("/api/v1/users/profile", headers=headers).get_json()["username"])


def _flood_then_few(
    api: FlaskClient,
    double: Double,
    flooder: dict[str, str],
    other: dict[str, str],
) -> tuple[list[str], list[str]]:
    # Each job holds the one slot a while, so the flood is still waiting when the few come.
    double.configure(token_delay_s=0.03, default_tokens=6)
    flood = [submit(api, flooder, options={"num_predict": 6})["id"] for _ in range(FLOOD)]
    few = [submit(api, other, options={"num_predict": 6})["id"] for _ in range(FEW)]
    return flood, few


def _wait_all(api: FlaskClient, headers: dict[str, str], ids: list[str]) -> None:
    for request_id in ids:
        assert finished(api, headers, request_id, timeout=90)["status"] == "completed"


def test_five_behind_a_flood_start_before_its_next_five(
    api: FlaskClient,
    committed: Database,
    double: Double,
    start_worker: Callable[..., Worker],
    user_headers: dict[str, str],
    other_headers: dict[str, str],
    operator_headers: dict[str, str],
) -> None:
    worker = start_worker(double.url, name="fair-on@test", slots=1)
    try:
        flood, few = _flood_then_few(api, double, user_headers, other_headers)

        # While the flood waits: per-user depth and wait, in /metrics and the stats API.
        flooder = _username(api, user_headers)
        scraped = api.get("/metrics").get_data(as_text=True)
        depth = {
            sample.labels["user"]: sample.value
            for family in text_string_to_metric_families(scraped)
            if family.name == "ollamamax_user_queue_depth"
            for sample in family.samples
        }
        assert depth.get(flooder, 0) >= 1, depth
        stats = api.get("/api/v1/system/stats", headers=operator_headers).get_json()
        by_user = {row["user"]: row for row in stats["live"]["queue"]["by_user"]}
        assert by_user[flooder]["queued"] >= 1
        assert by_user[flooder]["oldest_wait_s"] >= 0

        _wait_all(api, user_headers, flood)
        _wait_all(api, other_headers, few)
    finally:
        worker.stop()

    order = [request_id for request_id, _ in _starts(committed, {*flood, *few})]
    first_few = min(order.index(request_id) for request_id in few)
    last_few = max(order.index(request_id) for request_id in few)
    flood_after = [i for i in range(first_few, len(order)) if order[i] in set(flood)]
    # All five started before the flood's fifth start after the first of them.
    assert last_few < flood_after[4], order
    # The worker said when a message's job was not the one it claimed.
    assert "(fair share)" in worker.log()


def test_off_the_five_wait_for_the_flood(
    api: FlaskClient,
    committed: Database,
    double: Double,
    start_worker: Callable[..., Worker],
    user_headers: dict[str, str],
    other_headers: dict[str, str],
) -> None:
    worker = start_worker(double.url, name="fair-off@test", slots=1, env={"FAIR_SHARE": "false"})
    try:
        flood, few = _flood_then_few(api, double, user_headers, other_headers)
        _wait_all(api, user_headers, flood)
        _wait_all(api, other_headers, few)
    finally:
        worker.stop()

    order = [request_id for request_id, _ in _starts(committed, {*flood, *few})]
    last_few = max(order.index(request_id) for request_id in few)
    flood_after_first_few = [
        i for i in range(min(order.index(r) for r in few), len(order)) if order[i] in set(flood)
    ]
    # Submission order: the few start behind (nearly) the whole flood.
    assert len(flood_after_first_few) < 5, order
    assert last_few >= FLOOD, order


def test_a_heavier_weight_gets_more_of_the_slot(
    api: FlaskClient,
    committed: Database,
    double: Double,
    start_worker: Callable[..., Worker],
    user_headers: dict[str, str],
    other_headers: dict[str, str],
    admin_headers: dict[str, str],
) -> None:
    heavy_id = api.get("/api/v1/users/profile", headers=other_headers).get_json()["id"]
    changed = api.put(
        f"/api/v1/users/{heavy_id}", headers=admin_headers, json={"fair_share_weight": 3}
    )
    assert changed.status_code == 200, changed.get_json()
    with committed.unit_of_work() as session:
        assert session.get(User, heavy_id).fair_share_weight == 3  # type: ignore[union-attr]
    worker = start_worker(double.url, name="fair-weight@test", slots=1)
    try:
        double.configure(token_delay_s=0.03, default_tokens=6)
        light = [submit(api, user_headers, options={"num_predict": 6})["id"] for _ in range(12)]
        heavy = [submit(api, other_headers, options={"num_predict": 6})["id"] for _ in range(12)]
        _wait_all(api, user_headers, light)
        _wait_all(api, other_headers, heavy)
    finally:
        worker.stop()
    order = [request_id for request_id, _ in _starts(committed, {*light, *heavy})]
    # While both wait, weight 3 against 1: the heavy user takes most of the first starts
    # after they arrive (counted over the next eight).
    first_heavy = min(order.index(r) for r in heavy)
    window = order[first_heavy : first_heavy + 8]
    assert sum(r in set(heavy) for r in window) >= 5, order
