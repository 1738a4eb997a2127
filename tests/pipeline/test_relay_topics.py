"""/ws topics under gunicorn + gevent: subscriptions, heartbeats, pings, and the producers."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import websocket
from flask.testing import FlaskClient

from tests.conftest import LiveServer
from tests.factories import TEST_PASSWORD
from tests.pipeline.conftest import Double, Worker, start_double
from tests.pipeline.jobs import finished, submit
from tests.support.ws import (
    Frame,
    Received,
    connect,
    next_frame,
    next_non_heartbeat,
    send,
    token_of,
)

POLICY_VIOLATION = 1008

pytestmark = pytest.mark.usefixtures("fresh_double")


@pytest.fixture(scope="module", autouse=True)
def worker(double: Double, start_worker: Callable[..., Worker]) -> Worker:
    return start_worker(double.url, name="topics-w1", slots=2)


def _subscribe(ws: websocket.WebSocket, *topics: str, kind: str = "subscribe") -> Frame:
    send(ws, {"type": kind, "topics": list(topics)})
    reply = next_non_heartbeat(ws)
    assert reply is not None
    return reply


def _wait_for(
    ws: websocket.WebSocket, match: Callable[[Frame], bool], timeout: float = 15.0
) -> Frame:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        frame = next_frame(ws)
        assert frame is not None, "the socket closed"
        if match(frame):
            return frame
    raise AssertionError("no matching frame")


def test_subscribe_unsubscribe_and_bad_messages_keep_the_socket_open(
    user_headers: dict[str, str], relay_server: LiveServer
) -> None:
    ws = connect(relay_server.url, "/ws", token_of(user_headers))
    assert _subscribe(ws, "node_status", "model_update") == {
        "type": "subscribed",
        "topics": ["model_update", "node_status"],
    }
    assert _subscribe(ws, "model_update", kind="unsubscribe")["topics"] == ["node_status"]

    for bad, code in [
        ("not json", "invalid_json"),
        ("[1, 2]", "invalid_message"),
        ({"type": "shout"}, "invalid_message"),
        ({"type": "subscribe", "topics": "node_status"}, "invalid_message"),
        ({"type": "subscribe", "topics": ["weather"]}, "unknown_topic"),
        ({"type": "subscribe", "topics": ["system_metrics"]}, "forbidden"),  # users may not
        ({"type": "subscribe", "topics": ["inference:all"]}, "forbidden"),
    ]:
        send(ws, bad)
        reply = next_non_heartbeat(ws)
        assert reply is not None, bad
        assert (reply["type"], reply["code"]) == ("error", code), bad

    send(ws, {"type": "ping"})
    assert next_non_heartbeat(ws) == {"type": "pong"}  # still open, still answering
    assert _subscribe(ws, "inference")["topics"] == ["inference", "node_status"]
    ws.close()


def test_heartbeats_arrive_while_idle(
    user_headers: dict[str, str], relay_server: LiveServer
) -> None:
    ws = connect(relay_server.url, "/ws", token_of(user_headers))
    frames = [next_frame(ws) for _ in range(2)]  # WS_HEARTBEAT_S=0.5 on this server
    assert [f and f["type"] for f in frames] == ["heartbeat", "heartbeat"]
    ws.close()


def test_a_client_that_stops_answering_pings_is_dropped(
    user_headers: dict[str, str], relay_server: LiveServer
) -> None:
    """WS_PING_INTERVAL_S=2: a client that does not read answers no ping and is dropped."""
    ws = connect(relay_server.url, "/ws", token_of(user_headers))
    time.sleep(6)  # not reading: websocket-client answers pings only while it reads
    received = Received()
    while next_frame(ws, received) is not None:
        pass
    assert received.close_code in (POLICY_VIOLATION, None)  # None: reset before it was read
    ws.close()


def test_a_topic_socket_needs_a_valid_credential(relay_server: LiveServer) -> None:
    for token in (None, "omx_notakey"):
        ws = connect(relay_server.url, "/ws", token)
        received = Received()
        frame = next_frame(ws, received)
        assert frame is not None
        assert frame["type"] == "error"
        assert next_frame(ws, received) is None
        assert received.close_code == POLICY_VIOLATION


def test_inference_topic_carries_own_status_changes_and_operators_may_see_all(
    api: FlaskClient,
    user_headers: dict[str, str],
    other_headers: dict[str, str],
    operator_headers: dict[str, str],
    relay_server: LiveServer,
) -> None:
    mine = connect(relay_server.url, "/ws", token_of(user_headers))
    _subscribe(mine, "inference")
    everything = connect(relay_server.url, "/ws", token_of(operator_headers))
    assert _subscribe(everything, "inference:all")["topics"] == ["inference:all"]

    theirs = submit(api, other_headers, options={"num_predict": 2})
    own = submit(api, user_headers, options={"num_predict": 2})
    finished(api, user_headers, own["id"])
    finished(api, other_headers, theirs["id"])

    def completed(request_id: str) -> Callable[[Frame], bool]:
        return lambda f: f.get("request_id") == request_id and f.get("status") == "completed"

    seen = _wait_for(mine, completed(own["id"]))
    assert seen["topic"] == "inference"
    assert seen["type"] == "status"
    # The two jobs run side by side: their completions may arrive in either order.
    pending = {theirs["id"], own["id"]}
    while pending:
        frame = _wait_for(
            everything, lambda f: f.get("status") == "completed" and f["request_id"] in pending
        )
        pending.discard(frame["request_id"])
    # The user's socket saw only its own request: drain what arrived and check.
    send(mine, {"type": "ping"})
    frames: list[Frame] = []
    while (frame := next_non_heartbeat(mine)) is not None and frame["type"] != "pong":
        frames.append(frame)
    assert all(f.get("request_id") == own["id"] for f in frames)
    mine.close()
    everything.close()


def test_system_metrics_reach_operators_with_the_live_load(
    api: FlaskClient,
    user_headers: dict[str, str],
    operator_headers: dict[str, str],
    double: Double,
    relay_server: LiveServer,
) -> None:
    double.configure(first_token_delay_s=5)
    job = submit(api, user_headers)
    ws = connect(relay_server.url, "/ws", token_of(operator_headers))
    _subscribe(ws, "system_metrics")
    # Each web process reports its open sockets at its own tick: a frame sent just after
    # this socket opened may still count the sockets as they were before it.
    metrics = _wait_for(
        ws,
        lambda f: f.get("topic") == "system_metrics" and f["running"] >= 1 and f["sockets"] >= 1,
    )
    assert metrics["type"] == "system_metrics"
    assert metrics["running_by_model"].get("llama3.2:latest", 0) >= 1
    assert metrics["sockets"] >= 1
    assert metrics["web_processes"] >= 1
    assert metrics["nodes"].get("online", 0) >= 1
    assert metrics["slots_total"] >= 2
    api.post(f"/api/v1/inference/requests/{job['id']}/cancel", headers=user_headers)
    ws.close()


def test_node_status_and_model_update_come_from_the_fleet(
    user_headers: dict[str, str],
    relay_server: LiveServer,
    start_worker: Callable[..., Worker],
) -> None:
    ws = connect(relay_server.url, "/ws", token_of(user_headers))
    _subscribe(ws, "node_status", "model_update")
    extra = start_double(("llama3.2:latest", "relay-news:latest"))
    try:
        node = start_worker(extra.url, name="topics-news")

        def about_node(f: Frame) -> bool:
            return f.get("node") == "topics-news"

        online = _wait_for(ws, lambda f: about_node(f) and f["topic"] == "node_status")
        assert online["status"] == "online"
        added = _wait_for(ws, lambda f: about_node(f) and f.get("model") == "relay-news:latest")
        assert added["topic"] == "model_update"
        assert added["type"] == "added"

        extra.configure(models=["llama3.2:latest"])  # the model leaves the engine
        removed = _wait_for(ws, lambda f: about_node(f) and f.get("type") == "removed")
        assert removed["model"] == "relay-news:latest"

        extra.process.terminate()  # the engine goes away: the node is degraded
        degraded = _wait_for(ws, lambda f: about_node(f) and f.get("status") == "degraded")
        assert degraded["reason"] == "engine_unreachable"

        node.stop()
        offline = _wait_for(ws, lambda f: about_node(f) and f.get("status") == "offline")
        assert offline["topic"] == "node_status"
    finally:
        extra.process.terminate()
        extra.process.wait(timeout=10)
        ws.close()


def test_logging_out_closes_the_open_socket(
    api: FlaskClient, user_headers: dict[str, str], relay_server: LiveServer
) -> None:
    """WS_ACCESS_RECHECK_S=0.5 here: the credential is checked again while the socket stays
    open, so a logout (or a revoked key) ends it instead of streaming on for hours."""
    ws = connect(relay_server.url, "/ws", token_of(user_headers))
    _subscribe(ws, "node_status")
    assert api.post("/api/v1/users/logout", headers=user_headers).status_code == 204
    received = Received()
    while (frame := next_frame(ws, received)) is not None:
        received.frames.append(frame)
    assert received.of_type("error")[-1]["code"] == "token_revoked"
    assert received.close_code == POLICY_VIOLATION


def test_a_revoked_api_key_closes_the_request_stream(
    api: FlaskClient, user_headers: dict[str, str], double: Double, relay_server: LiveServer
) -> None:
    created = api.post(
        "/api/v1/users/api-keys",
        json={"name": "ws", "scopes": ["inference"], "current_password": TEST_PASSWORD},
        headers=user_headers,
    ).get_json()
    double.configure(first_token_delay_s=30)
    job = submit(api, user_headers)
    ws = connect(relay_server.url, job["links"]["ws"], header_token=created["key"])
    send(ws, "the request stream takes no messages; these are dropped")
    assert next_frame(ws)["status"] == "queued"  # type: ignore[index]
    revoked = api.delete(f"/api/v1/users/api-keys/{created['id']}", headers=user_headers)
    assert revoked.status_code == 204
    received = Received()
    while (frame := next_frame(ws, received)) is not None:
        received.frames.append(frame)
    assert received.of_type("error")[-1]["code"] == "invalid_api_key"
    assert received.close_code == POLICY_VIOLATION
    api.post(f"/api/v1/inference/requests/{job['id']}/cancel", headers=user_headers)
