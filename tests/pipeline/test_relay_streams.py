"""/ws/inference/<id> under gunicorn + gevent, fed by a real worker and the Ollama double."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import text

from db.session import Database
from tests.conftest import LiveServer
from tests.factories import TEST_PASSWORD
from tests.pipeline.conftest import Double, Worker
from tests.pipeline.jobs import finished, submit, wait_status
from tests.support.ws import Received, connect, next_frame, read_until_closed, token_of
from tests.web.identity.test_authorization_matrix import SOCKETS

NORMAL, POLICY_VIOLATION, TRY_AGAIN_LATER = 1000, 1008, 1013

pytestmark = pytest.mark.usefixtures("fresh_double")


@pytest.fixture(scope="module", autouse=True)
def worker(double: Double, start_worker: Callable[..., Worker]) -> Worker:
    return start_worker(double.url, name="relay-w1", slots=4)


def _assert_exactly_once(received: Received) -> None:
    assert received.seqs == list(range(1, len(received.seqs) + 1)), received.seqs


def test_tokens_arrive_live_in_order_and_join_to_the_stored_output(
    api: FlaskClient, user_headers: dict[str, str], double: Double, relay_server: LiveServer
) -> None:
    double.configure(token_delay_s=0.01, first_token_delay_s=0.3)
    job = submit(api, user_headers, options={"num_predict": 40})
    ws = connect(relay_server.url, job["links"]["ws"], token_of(user_headers))
    received = read_until_closed(ws)
    stored = finished(api, user_headers, job["id"])
    _assert_exactly_once(received)
    statuses = [f["status"] for f in received.of_type("status")]
    assert statuses == ["queued", "running", "completed"]
    assert received.text == stored["output"]
    assert stored["eval_count"] == 40
    assert len(received.of_type("token")) == 40  # TOKEN_COALESCE_MS=0: one event per token
    assert received.of_type("done")[0]["eval_count"] == 40
    assert received.close_code == NORMAL


def test_a_dropped_connection_resumes_after_its_last_seq_with_no_gap_and_no_repeat(
    api: FlaskClient, user_headers: dict[str, str], double: Double, relay_server: LiveServer
) -> None:
    double.configure(token_delay_s=0.03)
    job = submit(api, user_headers, options={"num_predict": 60})
    first = Received()
    ws = connect(relay_server.url, job["links"]["ws"], token_of(user_headers))
    while len(first.of_type("token")) < 10:
        frame = next_frame(ws, first)
        assert frame is not None
        if frame["type"] != "heartbeat":
            first.frames.append(frame)
    ws.close()  # the client goes away mid-stream; the job does not care
    time.sleep(0.3)  # events keep coming while nobody listens

    last = first.seqs[-1]
    ws = connect(relay_server.url, f"{job['links']['ws']}?after={last}", token_of(user_headers))
    second = read_until_closed(ws)
    stored = finished(api, user_headers, job["id"])

    assert second.seqs[0] == last + 1
    both = Received(first.frames + second.frames)
    _assert_exactly_once(both)
    assert both.text == stored["output"]
    assert second.close_code == NORMAL


def test_a_finished_request_answers_at_once(
    api: FlaskClient, user_headers: dict[str, str], relay_server: LiveServer
) -> None:
    job = submit(api, user_headers, options={"num_predict": 5})
    stored = finished(api, user_headers, job["id"])

    replayed = read_until_closed(
        connect(relay_server.url, job["links"]["ws"], token_of(user_headers))
    )
    _assert_exactly_once(replayed)
    assert replayed.of_type("status")[-1]["status"] == "completed"
    assert replayed.text == stored["output"]

    # Nothing left after the last seq: the request's final state at once (no quiet
    # heartbeat before it: the handshake knew the request had ended), then a normal close.
    after = f"{job['links']['ws']}?after={replayed.seqs[-1]}"
    final = read_until_closed(
        connect(relay_server.url, after, token_of(user_headers)), skip_heartbeats=False
    )
    assert [f["type"] for f in final.frames] == ["final"]
    assert final.frames[0]["request"]["output"] == stored["output"]
    assert final.frames[0]["request"]["status"] == "completed"
    assert final.close_code == NORMAL


def test_expired_events_still_give_the_final_state(
    api: FlaskClient, user_headers: dict[str, str], relay_server: LiveServer
) -> None:
    job = submit(api, user_headers, options={"num_predict": 3})
    stored = finished(api, user_headers, job["id"])
    events = api.application.extensions["events"]
    events.redis.delete(f"omx:req:{job['id']}:events")  # as if EVENT_TTL_S had passed

    received = read_until_closed(
        connect(relay_server.url, job["links"]["ws"], token_of(user_headers))
    )
    assert [f["type"] for f in received.frames] == ["final"]
    assert received.frames[0]["request"]["output"] == stored["output"]


def test_a_running_request_whose_terminal_event_never_comes_is_closed_from_the_database(
    api: FlaskClient,
    user_headers: dict[str, str],
    double: Double,
    relay_server: LiveServer,
    committed: Database,
) -> None:
    """A worker that dies between saving its result and announcing it leaves no terminal
    event; the stream notices from the database and ends with the final state."""
    double.configure(first_token_delay_s=60)  # the job sits in `running`
    job = submit(api, user_headers)
    wait_status(api, user_headers, job["id"], {"running"})
    ws = connect(relay_server.url, job["links"]["ws"], token_of(user_headers))
    with committed.unit_of_work() as session:  # the result lands without an event
        session.execute(
            text(
                "UPDATE inference_requests SET status = 'completed', output = 'saved',"
                " completed_at = now(), lease_until = NULL WHERE id = :id"
            ),
            {"id": job["id"]},
        )
    received = read_until_closed(ws)
    assert received.frames[-1]["type"] == "final"
    assert received.frames[-1]["request"]["output"] == "saved"
    assert received.close_code == NORMAL


@pytest.mark.parametrize("owner_from", ["events", "database"])
def test_each_caller_is_answered_as_the_authorization_matrix_says(
    api: FlaskClient,
    user_headers: dict[str, str],
    other_headers: dict[str, str],
    operator_headers: dict[str, str],
    admin_headers: dict[str, str],
    relay_server: LiveServer,
    owner_from: str,
) -> None:
    """The handshake learns the job's owner from its stored events while they hold the
    first one, and from the database once they are gone: the answers are the same."""
    job = submit(api, user_headers, options={"num_predict": 3})
    finished(api, user_headers, job["id"])
    if owner_from == "database":
        api.application.extensions["events"].redis.delete(f"omx:req:{job['id']}:events")
    tokens = {
        "anonymous": None,
        "owner": token_of(user_headers),
        "other": token_of(other_headers),
        "operator": token_of(operator_headers),
        "admin": token_of(admin_headers),
    }
    refusals = {401: "unauthorized", 404: "not_found"}
    for caller, expected in SOCKETS[("GET", "/ws/inference/<uuid:request_id>")].items():
        received = read_until_closed(connect(relay_server.url, job["links"]["ws"], tokens[caller]))
        if expected == "ok":
            if owner_from == "events":
                assert received.of_type("status")[-1]["status"] == "completed", caller
            else:
                assert received.frames[-1]["request"]["status"] == "completed", caller
            assert received.close_code == NORMAL, caller
        else:  # an error frame with the REST API's code, then 1008; never data
            assert [(f["type"], f["code"]) for f in received.frames] == [
                ("error", refusals[expected])
            ], caller
            assert received.close_code == POLICY_VIOLATION, caller


def test_a_stream_that_starts_with_text_is_authorized_by_the_database(
    api: FlaskClient,
    user_headers: dict[str, str],
    other_headers: dict[str, str],
    relay_server: LiveServer,
) -> None:
    """Status events name the owner; a stream whose first stored event is text (its status
    events trimmed, or their publishes failed) cannot say whose job this is, and the
    handshake asks the database."""
    job = submit(api, user_headers, options={"num_predict": 3})
    finished(api, user_headers, job["id"])
    redis = api.application.extensions["events"].redis
    assert redis.xdel(f"omx:req:{job['id']}:events", "1-1", "2-1") == 2  # queued, running

    other = read_until_closed(
        connect(relay_server.url, job["links"]["ws"], token_of(other_headers))
    )
    owner = read_until_closed(connect(relay_server.url, job["links"]["ws"], token_of(user_headers)))

    assert [(f["type"], f["code"]) for f in other.frames] == [("error", "not_found")]
    assert owner.seqs[0] == 3
    assert owner.of_type("status")[-1]["status"] == "completed"
    assert owner.close_code == NORMAL


def test_a_bad_or_expired_token_is_refused(
    api: FlaskClient, user_headers: dict[str, str], relay_server: LiveServer
) -> None:
    job = submit(api, user_headers, options={"num_predict": 3})
    received = read_until_closed(connect(relay_server.url, job["links"]["ws"], "not.a.jwt"))
    assert [f["code"] for f in received.frames] == ["invalid_token"]
    assert received.close_code == POLICY_VIOLATION


def test_an_api_key_in_the_authorization_header_works_and_a_bad_after_is_refused(
    api: FlaskClient, user_headers: dict[str, str], relay_server: LiveServer
) -> None:
    created = api.post(
        "/api/v1/users/api-keys",
        json={"name": "relay", "scopes": ["inference"], "current_password": TEST_PASSWORD},
        headers=user_headers,
    )
    assert created.status_code == 201, created.get_json()
    key = created.get_json()["key"]
    job = submit(api, user_headers, options={"num_predict": 4})
    finished(api, user_headers, job["id"])

    received = read_until_closed(connect(relay_server.url, job["links"]["ws"], header_token=key))
    assert received.of_type("status")[-1]["status"] == "completed"

    bad = read_until_closed(connect(relay_server.url, job["links"]["ws"] + "?after=-1", key))
    assert bad.frames[0]["code"] == "invalid_parameter"
    assert bad.close_code == POLICY_VIOLATION


def test_a_slow_reader_is_cut_off_without_slowing_the_others(
    api: FlaskClient, user_headers: dict[str, str], double: Double, relay_server: LiveServer
) -> None:
    """WS_SEND_QUEUE=64 and an 8 KB socket buffer on this server: a client reading far more
    slowly than events arrive falls that far behind and is closed with 1013, while another
    client on the same stream gets everything."""
    double.configure(token_delay_s=0.0005)
    job = submit(api, user_headers, options={"num_predict": 3000})
    slow = connect(
        relay_server.url, job["links"]["ws"], token_of(user_headers), receive_buffer=4096
    )
    cut = Received()

    def read_slowly() -> None:
        while (frame := next_frame(slow, cut)) is not None:
            cut.frames.append(frame)
            time.sleep(0.005)

    reader = threading.Thread(target=read_slowly)
    reader.start()
    received = read_until_closed(
        connect(relay_server.url, job["links"]["ws"], token_of(user_headers))
    )
    stored = finished(api, user_headers, job["id"])
    reader.join(timeout=30)

    assert received.text == stored["output"]
    assert received.close_code == NORMAL
    assert cut.close_code == TRY_AGAIN_LATER
    assert cut.close_reason == "slow_consumer"
    assert len(cut.of_type("token")) < 3000
    _assert_exactly_once(cut)  # what it did get is a clean prefix: resumable with ?after=
    assert "too slow" in relay_server.log_path.read_text()


def test_two_hundred_sockets_on_one_process_each_get_every_event(
    api: FlaskClient, user_headers: dict[str, str], double: Double, relay_server: LiveServer
) -> None:
    double.configure(first_token_delay_s=2.0, token_delay_s=0.005)
    job = submit(api, user_headers, options={"num_predict": 50})
    results: list[Received | BaseException] = []

    def follow() -> None:
        try:
            ws = connect(relay_server.url, job["links"]["ws"], token_of(user_headers), timeout=30)
            results.append(read_until_closed(ws))
        except BaseException as error:
            results.append(error)

    threads = [threading.Thread(target=follow) for _ in range(200)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    stored = finished(api, user_headers, job["id"])

    errors = [r for r in results if not isinstance(r, Received)]
    assert not errors, errors[:3]
    assert len(results) == 200
    expected: Any = None
    for received in results:
        assert isinstance(received, Received)
        summary = (received.close_code, received.close_reason, received.frames[-2:])
        _assert_exactly_once(received)
        assert received.text == stored["output"], summary
        assert received.close_code == NORMAL, summary
        expected = expected or received.seqs
        assert received.seqs == expected


def test_a_lost_redis_subscription_is_resumed_without_gap_or_repeat(
    api: FlaskClient,
    user_headers: dict[str, str],
    double: Double,
    relay_server: LiveServer,
    redis_client: Any,
) -> None:
    """Kill the web process's pub/sub connection mid-stream: the hub reconnects, subscribes
    again and the stream replays what was published meanwhile."""
    double.configure(token_delay_s=0.02)
    job = submit(api, user_headers, options={"num_predict": 150})
    ws = connect(relay_server.url, job["links"]["ws"], token_of(user_headers))
    received = Received()
    while len(received.of_type("token")) < 5:
        frame = next_frame(ws, received)
        assert frame is not None
        received.frames.append(frame)
    hubs = [c for c in redis_client.client_list() if c.get("name") == "omx-relay-hub"]
    assert hubs
    for hub in hubs:
        redis_client.client_kill_filter(_id=hub["id"])
    rest = read_until_closed(ws)
    stored = finished(api, user_headers, job["id"])

    both = Received(received.frames + rest.frames)
    _assert_exactly_once(both)
    assert both.text == stored["output"]
    assert rest.close_code == NORMAL
    assert "Redis connection lost" in relay_server.log_path.read_text()
