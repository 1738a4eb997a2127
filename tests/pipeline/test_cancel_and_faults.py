"""Cancellation and engine faults, through a real worker against the double."""

from __future__ import annotations

import time
from typing import Any

import pytest
from flask.testing import FlaskClient

from db.session import Database
from tests.ollama_double.behaviour import tokens_for
from tests.pipeline.conftest import Double, Worker, both_brokers, wait_for
from tests.pipeline.jobs import (
    events_of,
    finished,
    read,
    store_queued,
    submit,
    tokens_seen,
    wait_status,
)
from workers.dispatch import publish_inference

pytestmark = pytest.mark.usefixtures("beat", "fresh_double")


@pytest.fixture(scope="module")
def worker(start_worker: Any, double: Double) -> Worker:
    return start_worker(double.url, name="w-faults@test", slots=1)


def cancel(api: FlaskClient, headers: dict[str, str], request_id: str) -> dict[str, Any]:
    response = api.post(f"/api/v1/inference/requests/{request_id}/cancel", headers=headers)
    assert response.status_code == 202, response.get_json()
    return response.get_json()  # type: ignore[no-any-return]


@both_brokers
def test_cancel_running_closes_the_engine_stream_and_keeps_partial_output(
    api: FlaskClient, user_headers: dict[str, str], worker: Worker, double: Double
) -> None:
    double.configure(token_delay_s=0.1, default_tokens=200)
    job = submit(api, user_headers, prompt="a long story")
    wait_for(lambda: len(tokens_seen(api, job["id"])) > 10, timeout=15)

    assert cancel(api, user_headers, job["id"])["status"] == "cancelling"
    # The engine sees its client go away (how fast is measured in bench/, not asserted here).
    wait_for(lambda: "a long story" in double.stats()["disconnects"], timeout=5)
    result = finished(api, user_headers, job["id"])

    assert result["status"] == "cancelled"
    assert result["output"]  # what was generated before the cancel is kept
    assert "".join(tokens_for("a long story", 200)).startswith(result["output"])
    assert events_of(api, job["id"])[-1]["status"] == "cancelled"


@both_brokers
def test_cancel_queued_never_reaches_the_engine(
    api: FlaskClient, user_headers: dict[str, str], worker: Worker, double: Double
) -> None:
    double.configure(token_delay_s=0.05, default_tokens=40)
    blocker = submit(api, user_headers, prompt="keeps the only slot busy")
    wait_status(api, user_headers, blocker["id"], {"running"})
    waiting = submit(api, user_headers, prompt="never to be generated")

    assert cancel(api, user_headers, waiting["id"])["status"] == "cancelled"
    finished(api, user_headers, blocker["id"])
    time.sleep(0.5)  # give a wrongly delivered job time to show up at the engine

    assert read(api, user_headers, waiting["id"])["status"] == "cancelled"
    stats = double.stats()
    assert "never to be generated" not in stats["completed"] + stats["disconnects"]
    again = api.post(f"/api/v1/inference/requests/{waiting['id']}/cancel", headers=user_headers)
    assert again.status_code == 409


@pytest.mark.parametrize("fault", ["503", "500"])
def test_a_transient_engine_error_is_retried(
    api: FlaskClient, user_headers: dict[str, str], worker: Worker, double: Double, fault: str
) -> None:
    double.configure(fault=fault, fault_count=2)
    result = finished(api, user_headers, submit(api, user_headers, prompt=f"retry {fault}")["id"])
    assert result["status"] == "completed"
    assert result["output"] == "".join(tokens_for(f"retry {fault}", 8))


def test_a_midstream_error_restarts_without_repeating_text(
    api: FlaskClient, user_headers: dict[str, str], worker: Worker, double: Double
) -> None:
    double.configure(fault="midstream_error", fault_count=1, fault_after_tokens=3)
    job = submit(api, user_headers, prompt="interrupted once")
    result = finished(api, user_headers, job["id"])

    assert result["status"] == "completed"
    assert result["output"] == "".join(tokens_for("interrupted once", 8))
    events = events_of(api, job["id"])
    restart = next(i for i, e in enumerate(events) if e.get("status") == "restarted")
    after_restart = "".join(e["text"] for e in events[restart:] if e["type"] == "token")
    assert after_restart == result["output"]  # readers start over at the restart


def test_persistent_engine_errors_fail_with_the_engines_message(
    api: FlaskClient, user_headers: dict[str, str], worker: Worker, double: Double
) -> None:
    double.configure(fault="midstream_error", fault_count=10)
    result = finished(api, user_headers, submit(api, user_headers, prompt="doomed")["id"])
    assert result["status"] == "failed"
    assert "model runner has unexpectedly stopped" in result["error"]
    assert result["error_code"] == "engine_stream_error"


def test_a_stalled_stream_is_a_fault_and_is_retried(
    api: FlaskClient, user_headers: dict[str, str], worker: Worker, double: Double
) -> None:
    double.configure(fault="stall", fault_count=1, stall_s=4)  # worker gives up after 2 s
    result = finished(
        api, user_headers, submit(api, user_headers, prompt="stalls")["id"], timeout=30
    )
    assert result["status"] == "completed"
    assert result["output"] == "".join(tokens_for("stalls", 8))


def test_an_unreachable_engine_fails_after_bounded_retries(
    api: FlaskClient, user_headers: dict[str, str], start_worker: Any, worker: Worker
) -> None:
    from tests.pipeline.conftest import start_double

    doomed = start_double(models=("solo:latest",))
    # The worker waits this long for its engine to come back (handing its job back), then
    # runs the job against the dead engine as before.
    lonely = start_worker(
        doomed.url, name="w-lonely@test", slots=1, env={"ENGINE_DOWN_GRACE_S": "2"}
    )
    doomed.process.kill()
    doomed.process.wait()
    try:
        job = submit(api, user_headers, model="solo")
        result = finished(api, user_headers, job["id"], timeout=30)
        assert result["status"] == "failed"
        assert result["error_code"] == "engine_unreachable"
        assert result["worker"] == "w-lonely@test"
        # Handed back while the worker waited for its engine (twice when the hand-back's
        # publish reached the worker before it stopped consuming); bounded either way.
        assert 2 <= result["attempt"] <= 3
    finally:
        lonely.stop()


def test_a_poison_job_fails_instead_of_looping(
    api: FlaskClient, user_headers: dict[str, str], worker: Worker, committed: Database
) -> None:
    # Input the API would refuse, stored directly: the engine client cannot even encode it.
    owner = api.get("/api/v1/users/profile", headers=user_headers).get_json()["id"]
    job_id = store_queued(committed, owner, {"prompt": "poison", "images": ["abc"]})
    assert publish_inference(api.application.extensions["celery"], job_id, "llama3.2:latest", 5)
    result = finished(api, user_headers, str(job_id))
    assert result["status"] == "failed"
    assert result["error_code"] == "internal_error"
    assert result["attempt"] == 1


def test_a_cancel_during_a_slow_first_token_ends_the_job(
    api: FlaskClient, user_headers: dict[str, str], worker: Worker, double: Double
) -> None:
    double.configure(first_token_delay_s=1.5, token_delay_s=0.05, default_tokens=100)
    job = submit(api, user_headers, prompt="slow to start")
    wait_status(api, user_headers, job["id"], {"running"})
    cancel(api, user_headers, job["id"])
    result = finished(api, user_headers, job["id"])
    assert result["status"] == "cancelled"
    assert len(result["output"] or "") < 20  # stopped at the first chunk, not at the end


def test_a_nul_from_the_engine_reaches_readers_and_the_row_as_a_replacement_character(
    api: FlaskClient, user_headers: dict[str, str], worker: Worker, double: Double
) -> None:
    # PostgreSQL keeps no NUL in text; a model can emit one.
    double.configure(tokens=["byte", "\x00", "fallback"])
    job = submit(api, user_headers, kind="chat")
    result = finished(api, user_headers, job["id"])
    assert result["status"] == "completed", result
    assert result["output"] == result["output_message"]["content"] == "byte\ufffdfallback"
    assert tokens_seen(api, job["id"]) == "byte\ufffdfallback"


def test_a_done_reason_longer_than_its_column_is_kept_cut_to_fit(
    api: FlaskClient, user_headers: dict[str, str], worker: Worker, double: Double
) -> None:
    said = "stopped_because_an_engine_we_do_not_know_said_so"
    double.configure(final_fields={"done_reason": said})
    job = submit(api, user_headers)
    result = finished(api, user_headers, job["id"])
    assert result["status"] == "completed", result
    assert result["done_reason"] == said[:32]
    assert result["attempt"] == 1
    assert [e["done_reason"] for e in events_of(api, job["id"]) if e["type"] == "done"] == [
        said[:32]
    ]


def test_an_answer_postgresql_refuses_fails_the_job_at_once_saying_so(
    api: FlaskClient, user_headers: dict[str, str], worker: Worker, double: Double
) -> None:
    # An eval_count past the column's range: left running, the job would wait for the lease
    # sweep and fail the same way on every attempt.
    double.configure(final_fields={"eval_count": 2**40})
    job = submit(api, user_headers)
    result = finished(api, user_headers, job["id"])
    assert (result["status"], result["error_code"], result["attempt"]) == (
        "failed",
        "unstorable_result",
        1,
    )
    assert "out of range" in result["error"]
    assert events_of(api, job["id"])[-1]["error_code"] == "unstorable_result"
