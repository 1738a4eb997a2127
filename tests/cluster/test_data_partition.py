"""The data host unreachable from one API host for 10 s (its packets to the data host
dropped, as behind a dead router): that host answers clean 503s, the proxy takes it out of
the rotation meanwhile, and it serves again by itself when the route returns."""

from __future__ import annotations

import time

from tests.cluster.harness import Cluster, wait_for
from tests.cluster.services import API_PORT
from tests.pipeline.jobs import finished, submit

OUTAGE_S = 10.0


def test_an_api_host_cut_off_from_the_data_host_answers_503_and_recovers(fresh: Cluster) -> None:
    cluster, client = fresh, fresh.client
    cut_off, other = cluster.apis
    direct = client.direct(cut_off, API_PORT)
    headers = client.login()
    job = submit(client.api, headers, prompt="before the partition")["id"]
    assert finished(client.api, headers, job)["status"] == "completed"
    assert direct.get(f"/api/v1/inference/requests/{job}", headers=headers).status_code == 200

    with cluster.data.unreachable(cut_off.address):  # replies dropped: silence, as a dead link
        started = time.monotonic()
        reply = direct.get(f"/api/v1/inference/requests/{job}", headers=headers)
        assert reply.status_code == 503, reply.response.text
        assert reply.get_json()["error"]["code"] in {"database_unavailable", "service_unavailable"}
        assert direct.get("/health/ready").status_code == 503
        # The proxy's readiness check takes the host out; calls through it all succeed.
        wait_for(
            lambda: (
                {client.api.get("/health").headers["X-Served-By"] for _ in range(4)} == {other.name}
            ),
            20,
            "the proxy to stop using the cut-off host",
        )
        for _ in range(6):
            assert (
                client.api.get(f"/api/v1/inference/requests/{job}", headers=headers).status_code
                == 200
            )
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - started)))  # the fault's length

    # Nobody restarts anything: the host serves again, and the proxy uses it again.
    wait_for(
        lambda: direct.get(f"/api/v1/inference/requests/{job}", headers=headers).status_code == 200,
        60,
        "the cut-off host to serve again",
    )
    wait_for(
        lambda: len({client.api.get("/health").headers["X-Served-By"] for _ in range(4)}) == 2,
        30,
        "the proxy to use both hosts again",
    )
