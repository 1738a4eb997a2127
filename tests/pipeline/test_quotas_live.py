"""Quotas held by real processes (web/inference/quotas.py): a user's running jobs never
exceed their cap on a worker with room for more, while another user's jobs run beside them;
a job's tokens land in its owner's and its key's ledgers; waiting-job admissions racing in
two gunicorn processes admit exactly the quota; WebSockets past the quota are refused, and
a seat given back is free again."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from flask.testing import FlaskClient
from redis import Redis
from sqlalchemy import func, select

from db.base import utcnow
from db.models import (
    ApiKeyTokenUsage,
    InferenceRequest,
    RequestStatus,
    User,
    UserTokenUsage,
)
from db.session import Database
from tests.conftest import LiveServer, make_committed_user, start_live_server, stop_live_server
from tests.factories import TEST_PASSWORD
from tests.pipeline.conftest import Double, Worker
from tests.pipeline.jobs import finished, submit
from tests.support.identity import bearer
from tests.support.ws import Received, connect, next_frame, next_non_heartbeat, send, token_of
from web.realtime.seats import SEATS_KEY

TRY_AGAIN_LATER = 1013

pytestmark = pytest.mark.usefixtures("fresh_double")


@pytest.fixture(scope="module", autouse=True)
def worker(double: Double, start_worker: Callable[..., Worker]) -> Worker:
    # Room for three jobs at once: the cap, not the worker, must be what holds jobs back.
    # Held jobs are offered again every 0.1 s: each waits through many more offers than
    # Celery's default retry limit (3), which must not drop them.
    return start_worker(double.url, name="quota-w1", slots=3, env={"QUOTA_WAIT_RETRY_S": "0.1"})


def _user_with(database: Database, **quotas: int) -> User:
    user = make_committed_user(database)
    with database.unit_of_work() as session:
        session.get(User, user.id).quotas = quotas  # type: ignore[union-attr]
    return user


def _login(base: Any, user: User) -> dict[str, str]:
    body = {"username": user.username, "password": TEST_PASSWORD}
    if isinstance(base, FlaskClient):
        return bearer(base.post("/api/v1/auth/login", json=body).get_json()["access_token"])
    return bearer(
        requests.post(f"{base}/api/v1/auth/login", json=body, timeout=10).json()["access_token"]
    )


class RunningWatch:
    """The most jobs of one user seen running at once, sampled from the database."""

    def __init__(self, database: Database, user_id: uuid.UUID) -> None:
        self.database, self.user_id = database, user_id
        self.most = 0
        self.others_alongside = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> RunningWatch:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _sample(self) -> None:
        running = InferenceRequest.status == RequestStatus.RUNNING
        while not self._stop.wait(0.01):
            with self.database.unit_of_work() as session:
                mine, others = session.execute(
                    select(
                        func.count().filter(InferenceRequest.user_id == self.user_id),
                        func.count().filter(InferenceRequest.user_id != self.user_id),
                    ).where(running)
                ).one()
            self.most = max(self.most, mine)
            self.others_alongside |= bool(mine and others)


def test_a_users_running_jobs_stay_at_their_cap_while_others_run_beside_them(
    api: FlaskClient, committed: Database, double: Double
) -> None:
    double.configure(token_delay_s=0.02)
    capped = _user_with(committed, max_running_jobs=1)
    other = make_committed_user(committed)
    capped_headers, other_headers = _login(api, capped), _login(api, other)

    with RunningWatch(committed, capped.id) as watch:
        mine = [submit(api, capped_headers, options={"num_predict": 15})["id"] for _ in range(3)]
        theirs = submit(api, other_headers, options={"num_predict": 15})["id"]
        results = [finished(api, capped_headers, job, timeout=60) for job in mine]
        assert finished(api, other_headers, theirs, timeout=60)["status"] == "completed"

    assert [r["status"] for r in results] == ["completed"] * 3
    assert [r["attempt"] for r in results] == [1, 1, 1]  # waiting spent no attempt
    assert watch.most == 1
    assert watch.others_alongside  # the cap held back this user only


def test_a_jobs_tokens_are_counted_for_its_owner_and_its_key(
    api: FlaskClient, committed: Database
) -> None:
    user = make_committed_user(committed)
    login = _login(api, user)
    key = api.post(
        "/api/v1/users/api-keys",
        headers=login,
        json={"name": "k", "scopes": ["inference"], "current_password": TEST_PASSWORD},
    ).get_json()
    by_key = finished(api, login, submit(api, bearer(key["key"]))["id"])
    by_login = finished(api, login, submit(api, login)["id"])
    spent = [(r["prompt_eval_count"] or 0) + (r["eval_count"] or 0) for r in (by_key, by_login)]
    assert all(spent)

    with committed.unit_of_work() as session:
        mine = session.get(UserTokenUsage, (user.id, utcnow().date()))
        keys = session.get(ApiKeyTokenUsage, (uuid.UUID(key["id"]), utcnow().date()))
        assert mine is not None
        assert (mine.tokens, mine.jobs) == (sum(spent), 2)
        assert keys is not None
        assert (keys.tokens, keys.jobs) == (spent[0], 1)
    usage = api.get("/api/v1/users/me/usage", headers=login).get_json()["usage"]
    assert usage["tokens_today"] == sum(spent)


@pytest.fixture(scope="module")
def two_processes(
    settings_overrides: dict[str, Any], database: Database, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """Two gunicorn workers (processes) behind one port; jobs for an unserved model wait."""
    server = start_live_server(
        settings_overrides,
        Path(tmp_path_factory.mktemp("quota_server")),
        WEB_CONCURRENCY="2",
        QUEUE_WHILE_UNAVAILABLE="true",
        WS_ACCESS_RECHECK_S="0.5",
    )
    yield server
    stop_live_server(server)


def test_admissions_racing_in_two_processes_admit_exactly_the_quota(
    two_processes: LiveServer, committed: Database
) -> None:
    user = _user_with(committed, max_queued_jobs=5)
    headers = _login(two_processes.url, user)
    body = {"model": f"nobody-serves-{uuid.uuid4().hex[:8]}", "prompt": "hi"}

    def one(_: int) -> requests.Response:
        return requests.post(
            f"{two_processes.url}/api/v1/inference/generate", json=body, headers=headers, timeout=30
        )

    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(one, range(40)))

    codes = sorted(a.status_code for a in answers)
    assert codes == [202] * 5 + [429] * 35, codes
    assert {a.json()["error"]["code"] for a in answers if a.status_code == 429} == {
        "quota_queued_jobs"
    }
    with committed.unit_of_work() as session:
        stored = session.scalar(select(func.count()).where(InferenceRequest.user_id == user.id))
    assert stored == 5


def test_websockets_past_the_quota_are_refused_and_a_closed_one_frees_its_seat(
    two_processes: LiveServer, committed: Database, settings_overrides: dict[str, Any]
) -> None:
    user = _user_with(committed, max_websockets=2)
    token = token_of(_login(two_processes.url, user))
    held = [connect(two_processes.url, "/ws", token) for _ in range(2)]
    try:
        # A quiet socket wakes once per heartbeat (WS_HEARTBEAT_S, 15 s) to renew its seat:
        # the lease outlasts three of those, not three credential rechecks (0.5 s here),
        # which a loaded machine overran (the third socket was admitted).
        redis = Redis.from_url(settings_overrides["redis_url"])  # never flushed here
        now_ms = redis.time()[0] * 1000
        leases = redis.zrange(SEATS_KEY.format(user.id), 0, -1, withscores=True)
        redis.close()
        assert len(leases) == 2
        assert min(score for _, score in leases) - now_ms > 30_000, leases
        refused = connect(two_processes.url, "/ws", token)
        received = Received()
        frame = next_frame(refused, received)
        assert frame is not None
        assert frame["type"] == "error"
        assert frame["code"] == "quota_websockets"
        next_frame(refused, received)
        assert received.close_code == TRY_AGAIN_LATER
        usage = requests.get(
            f"{two_processes.url}/api/v1/users/me/usage",
            headers=bearer(token),
            timeout=10,
        ).json()
        assert usage["usage"]["websockets"] == 2

        held.pop().close()
        again = _wait_for_a_seat(two_processes.url, token)
        held.append(again)
    finally:
        for ws in held:
            ws.close()


def _wait_for_a_seat(url: str, token: str) -> Any:
    """The seat of a socket closed by its client is given back once the server sees it go:
    a new socket is admitted (it answers a ping) within moments."""
    deadline = time.monotonic() + 10
    while True:
        ws = connect(url, "/ws", token)
        send(ws, {"type": "ping"})
        frame = next_non_heartbeat(ws)
        if frame is not None and frame["type"] == "pong":
            return ws
        ws.close()
        assert time.monotonic() < deadline, (
            f"the closed socket's seat was never given back: {frame}"
        )
        time.sleep(0.1)
