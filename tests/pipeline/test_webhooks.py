"""Completion webhooks on real processes: the web app, a Celery worker against the double,
the deliverer (`python -m web.webhooks`) and a receiver that is a real HTTP server. The
signature is verified with the `standardwebhooks` package, as an independent receiver."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import update
from standardwebhooks import Webhook

from db.models import InferenceRequest
from db.session import Database
from tests.conftest import ROOT
from tests.factories import TEST_PASSWORD
from tests.pipeline.conftest import Double, Worker, wait_for
from tests.pipeline.jobs import finished, read, submit, wait_status
from tests.support.receiver import SLOW, Receiver
from web import create_app

pytestmark = pytest.mark.usefixtures("fresh_double", "worker", "deliverer")

HEADER = "X-OllamaMax-Webhook"


@pytest.fixture(scope="module")
def worker(start_worker: Any, double: Double) -> Worker:
    return start_worker(double.url, name="w-webhooks@test", slots=2)


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


@pytest.fixture(scope="module")
def deliverer(
    pipeline_env: dict[str, str], database: Database, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    log_path = tmp_path_factory.mktemp("deliverer") / "deliverer.log"
    env = {
        **pipeline_env,
        "WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
        "WEBHOOK_BACKOFF_S": "0.2",
        "WEBHOOK_BACKOFF_MAX_S": "1",
        "WEBHOOK_CONNECT_TIMEOUT_S": "1",
        "WEBHOOK_READ_TIMEOUT_S": "2",
    }
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "web.webhooks"],
            cwd=ROOT,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    wait_for(lambda: "ready." in log_path.read_text() or process.poll() is not None, timeout=30)
    assert process.poll() is None, log_path.read_text()
    yield log_path
    process.terminate()
    process.wait(timeout=15)


@pytest.fixture(scope="module")
def hooks_app(settings_overrides: dict[str, Any], database: Database) -> Flask:
    """The API with 127.0.0.1 allow-listed, as the deliverer has it."""
    return create_app({**settings_overrides, "webhook_allowed_hosts": ["127.0.0.1"]})


@pytest.fixture
def hooks(hooks_app: Flask, committed: Database, redis_client: Any) -> FlaskClient:
    return hooks_app.test_client()


def hook_path() -> str:
    return f"/hook/{uuid.uuid4().hex}"


def delivery_log(api: FlaskClient, headers: dict[str, str], request_id: str) -> dict[str, Any]:
    response = api.get(f"/api/v1/inference/requests/{request_id}/webhook", headers=headers)
    assert response.status_code == 200, response.get_json()
    return response.get_json()  # type: ignore[no-any-return]


def settled(
    api: FlaskClient, headers: dict[str, str], request_id: str, state: str = "delivered"
) -> dict[str, Any]:
    """The delivery, once it reached `state`."""

    def reached() -> dict[str, Any] | None:
        deliveries = delivery_log(api, headers, request_id)["deliveries"]
        return deliveries[0] if deliveries and deliveries[0]["state"] == state else None

    return wait_for(reached, timeout=30)  # type: ignore[no-any-return]


def secret_of(api: FlaskClient, headers: dict[str, str]) -> str:
    return api.get("/api/v1/users/webhook-secret", headers=headers).get_json()["secret"]  # type: ignore[no-any-return]


def test_a_receiver_failing_twice_gets_one_signed_delivery_after_three_attempts(
    hooks: FlaskClient, user_headers: dict[str, str], receiver: Receiver
) -> None:
    path = hook_path()
    receiver.answer(500, 503, 200)
    job = submit(hooks, user_headers, prompt="tell me when", webhook_url=receiver.url + path)
    result = finished(hooks, user_headers, job["id"])
    delivery = settled(hooks, user_headers, job["id"])

    assert delivery["attempts"] == 3
    assert [a["status_code"] for a in delivery["attempt_log"]] == [500, 503, 200]
    assert delivery["event"] == "inference.completed"
    assert delivery["next_attempt_at"] is None
    assert delivery["delivered_at"]
    got = receiver.got(path)
    assert len(got) == 3
    assert len({r.headers["webhook-id"] for r in got}) == 1  # one message, tried three times
    # The independent receiver's verdict: the signature holds under the account's secret.
    verified = Webhook(secret_of(hooks, user_headers)).verify(got[-1].body, got[-1].headers)
    assert verified["type"] == "inference.completed"
    assert verified["data"] == {**result, "links": verified["data"]["links"]}
    assert verified["data"]["links"]["self"] == f"/api/v1/inference/requests/{job['id']}"
    with pytest.raises(Exception, match="signature"):
        Webhook(secret_of(hooks, user_headers)).verify(got[-1].body + b" ", got[-1].headers)


def test_a_job_without_webhook_has_no_delivery(
    hooks: FlaskClient, user_headers: dict[str, str]
) -> None:
    job = submit(hooks, user_headers, prompt="nobody is listening")
    finished(hooks, user_headers, job["id"])
    log = delivery_log(hooks, user_headers, job["id"])
    assert log == {"request_id": job["id"], "webhook_url": None, "deliveries": []}
    redeliver = hooks.post(
        f"/api/v1/inference/requests/{job['id']}/webhook/redeliver", headers=user_headers
    )
    assert redeliver.status_code == 409


def test_cancelled_and_failed_jobs_get_their_webhook(
    hooks: FlaskClient, user_headers: dict[str, str], receiver: Receiver, double: Double
) -> None:
    double.configure(token_delay_s=0.1, default_tokens=200)
    path = hook_path()
    cancelled = submit(hooks, user_headers, prompt="cut short", webhook_url=receiver.url + path)
    wait_status(hooks, user_headers, cancelled["id"], {"running"})
    answer = hooks.post(
        f"/api/v1/inference/requests/{cancelled['id']}/cancel", headers=user_headers
    )
    assert answer.status_code == 202
    assert settled(hooks, user_headers, cancelled["id"])["event"] == "inference.cancelled"

    double.configure(fault="midstream_error", fault_count=10, token_delay_s=0.0)
    failed_path = hook_path()
    headers = {**user_headers, HEADER: receiver.url + failed_path}  # the header, this time
    failed = submit(hooks, headers, prompt="doomed")
    assert finished(hooks, user_headers, failed["id"])["status"] == "failed"
    assert settled(hooks, user_headers, failed["id"])["event"] == "inference.failed"
    body = json.loads(receiver.got(failed_path)[0].body)
    assert body["data"]["status"] == "failed"
    assert body["data"]["error_code"]
    assert json.loads(receiver.got(path)[0].body)["data"]["status"] == "cancelled"


def test_redeliver_sends_the_same_message_again(
    hooks: FlaskClient, user_headers: dict[str, str], receiver: Receiver
) -> None:
    path = hook_path()
    job = submit(hooks, user_headers, prompt="twice", webhook_url=receiver.url + path)
    finished(hooks, user_headers, job["id"])
    settled(hooks, user_headers, job["id"])

    answer = hooks.post(
        f"/api/v1/inference/requests/{job['id']}/webhook/redeliver", headers=user_headers
    )
    assert answer.status_code == 202
    assert answer.get_json()["deliveries"] == 1
    wait_for(lambda: len(receiver.got(path)) == 2, timeout=20)
    delivery = settled(hooks, user_headers, job["id"])
    first, second = receiver.got(path)
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    Webhook(secret_of(hooks, user_headers)).verify(second.body, second.headers)
    assert delivery["attempts"] == 2


def test_a_receiver_slower_than_the_timeout_holds_no_worker_slot(
    hooks: FlaskClient, user_headers: dict[str, str], receiver: Receiver
) -> None:
    """The worker has two slots; the receiver's first four answers come later than the
    deliverer's read timeout. Every job still completes (nothing waits for a receiver but
    the deliverer's own threads), and each slow answer is a timed-out attempt, retried."""
    paths = [hook_path() for _ in range(4)]
    receiver.answer(SLOW, SLOW, SLOW, SLOW)
    jobs = [
        submit(hooks, user_headers, prompt=f"slow {n}", webhook_url=receiver.url + path)
        for n, path in enumerate(paths)
    ]
    for job in jobs:
        assert finished(hooks, user_headers, job["id"])["status"] == "completed"
    attempts = [
        attempt
        for job in jobs
        for attempt in settled(hooks, user_headers, job["id"])["attempt_log"]
    ]
    assert [a["error"] for a in attempts].count("timed out: ReadTimeout") == 4
    assert [a["status_code"] for a in attempts].count(204) == 4


def test_another_user_can_neither_read_nor_redeliver(
    hooks: FlaskClient,
    user_headers: dict[str, str],
    other_headers: dict[str, str],
    receiver: Receiver,
) -> None:
    job = submit(hooks, user_headers, prompt="mine", webhook_url=receiver.url + hook_path())
    finished(hooks, user_headers, job["id"])
    base = f"/api/v1/inference/requests/{job['id']}/webhook"
    assert hooks.get(base, headers=other_headers).status_code == 404
    assert hooks.post(f"{base}/redeliver", headers=other_headers).status_code == 404


def test_a_redirect_is_a_failed_attempt_and_is_not_followed(
    hooks: FlaskClient, user_headers: dict[str, str], receiver: Receiver
) -> None:
    path, target = hook_path(), hook_path()
    receiver.answer(302, 200, location=receiver.url + target)
    job = submit(hooks, user_headers, prompt="moved", webhook_url=receiver.url + path)
    finished(hooks, user_headers, job["id"])
    delivery = settled(hooks, user_headers, job["id"])

    first = delivery["attempt_log"][0]
    assert first["status_code"] == 302
    assert "redirects are not followed" in first["error"]
    assert delivery["attempts"] == 2
    assert receiver.got(target) == []


def test_an_internal_address_is_refused_at_delivery_too(
    hooks: FlaskClient,
    user_headers: dict[str, str],
    receiver: Receiver,
    double: Double,
    committed: Database,
) -> None:
    """What a host resolves to can change after the submission (DNS rebinding): the
    deliverer checks the address it connects to. Here the stored URL is changed under the
    running job to one the submission would have refused."""
    double.configure(token_delay_s=0.1, default_tokens=30)
    job = submit(hooks, user_headers, prompt="rebound", webhook_url=receiver.url + hook_path())
    wait_status(hooks, user_headers, job["id"], {"running"})
    with committed.unit_of_work() as session:
        session.execute(
            update(InferenceRequest)
            .where(InferenceRequest.id == uuid.UUID(job["id"]))
            .values(webhook_url="http://169.254.169.254/latest/meta-data/")
        )
    finished(hooks, user_headers, job["id"])

    def refused() -> dict[str, Any] | None:
        deliveries = delivery_log(hooks, user_headers, job["id"])["deliveries"]
        return deliveries[0] if deliveries and deliveries[0]["attempts"] else None

    attempt = wait_for(refused, timeout=20)["attempt_log"][0]
    assert attempt["status_code"] is None
    assert "refused" in attempt["error"]
    assert "169.254.169.254" in attempt["error"]


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://localhost:9/hook",
        "http://127.0.0.1:9/hook",
        "http://[::1]:9/hook",
        "http://[::ffff:10.0.0.1]/hook",
        "http://0.0.0.0/hook",
        "http://224.0.0.1/hook",
        "ftp://example.com/hook",
        "http://user:pw@127.0.0.1/hook",
        "http://example.com/" + "a" * 2048,
        "not a url",
    ],
)
def test_a_refused_url_is_a_400_at_every_door_and_queues_nothing(
    api: FlaskClient, user_headers: dict[str, str], committed: Database, url: str
) -> None:
    """`api` has no allow-list: loopback is as internal as the rest there."""
    rest = api.post(
        "/api/v1/inference/generate",
        json={"model": "llama3.2", "prompt": "x", "webhook_url": url},
        headers=user_headers,
    )
    assert rest.status_code == 400
    assert rest.get_json()["error"]["code"] == "invalid_webhook_url"

    headers = {**user_headers, HEADER: url}
    ollama = api.post("/api/generate", json={"model": "llama3.2", "prompt": "x"}, headers=headers)
    assert ollama.status_code == 400
    assert isinstance(ollama.get_json()["error"], str)
    openai = api.post(
        "/v1/chat/completions",
        json={"model": "llama3.2", "messages": [{"role": "user", "content": "x"}]},
        headers=headers,
    )
    assert openai.status_code == 400
    assert openai.get_json()["error"]["code"] == "invalid_webhook_url"
    with committed.unit_of_work() as session:
        assert session.query(InferenceRequest).count() == 0


def test_an_api_keys_default_webhook_is_used(
    hooks: FlaskClient, user_headers: dict[str, str], receiver: Receiver
) -> None:
    path = hook_path()
    created = hooks.post(
        "/api/v1/users/api-keys",
        json={
            "current_password": TEST_PASSWORD,
            "name": "batch",
            "scopes": ["inference"],
            "webhook_url": receiver.url + path,
        },
        headers=user_headers,
    )
    assert created.status_code == 201, created.get_json()
    key = {"Authorization": f"Bearer {created.get_json()['key']}"}
    job = submit(hooks, key, prompt="by key")
    finished(hooks, key, job["id"])
    assert read(hooks, key, job["id"])["webhook_url"] == receiver.url + path
    settled(hooks, key, job["id"])
    assert len(receiver.got(path)) == 1

    other = hook_path()
    changed = hooks.patch(
        f"/api/v1/users/api-keys/{created.get_json()['id']}",
        json={"webhook_url": receiver.url + other},
        headers=user_headers,
    )
    assert changed.status_code == 200
    assert changed.get_json()["webhook_url"].endswith(other)
    second = submit(hooks, key, prompt="by key, again")
    finished(hooks, key, second["id"])
    settled(hooks, key, second["id"])
    assert len(receiver.got(other)) == 1
