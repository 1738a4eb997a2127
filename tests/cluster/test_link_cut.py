"""A GPU host's link cut mid-generation: its jobs finish on the other hosts, once each; when
the link returns, the old worker's late writes are refused and its node comes back. A host
cut off inside a transaction does not keep its row locks on the data host."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError

from config.settings import Settings
from db.session import build_engine
from tests.cluster.harness import FAST, Cluster, wait_for
from tests.ollama_double.behaviour import tokens_for
from tests.pipeline.conftest import node_online
from tests.pipeline.jobs import finished, read, submit

TOKENS = 40


def test_jobs_of_a_host_cut_off_mid_generation_finish_elsewhere_once(fresh: Cluster) -> None:
    cluster, client = fresh, fresh.client
    for gpu in cluster.gpus:  # four seconds a job: the cut lands mid-stream
        gpu.configure(token_delay_s=0.1, default_tokens=TOKENS)
    users = [client.login(), client.login()]  # 3 jobs each: within the running-jobs quota
    owner = {}
    for k in range(6):
        headers = users[k % 2]
        job = submit(client.api, headers, prompt=f"cut {k}")["id"]
        owner[job] = headers
    jobs = list(owner)

    def running_with_text() -> dict[str, Any] | None:
        rows = {job: read(client.api, owner[job], job) for job in jobs}
        streaming = {
            job: row
            for job, row in rows.items()
            if row["status"] == "running" and len(client.events(job)) > 5
        }
        return streaming if len(streaming) >= 3 else None

    streaming = wait_for(running_with_text, 30, "three jobs streaming")
    victim = next(
        gpu for gpu in cluster.gpus if gpu.node in {r["worker"] for r in streaming.values()}
    )
    victim_jobs = [job for job, row in streaming.items() if row["worker"] == victim.node]

    cluster.wire.cut(victim.host)
    try:
        results = {job: finished(client.api, owner[job], job, timeout=60) for job in jobs}
        wait_for(lambda: not _online(cluster, victim.node), 30, "the cut host's node offline")
    finally:
        cluster.wire.mend(victim.host)

    for k, job in enumerate(jobs):
        result = results[job]
        assert result["status"] == "completed", result
        assert result["output"] == "".join(tokens_for(f"cut {k}", TOKENS))
    for job in victim_jobs:
        result = results[job]
        assert result["attempt"] == 2, result
        assert result["worker"] != victim.node
        events = client.events(job)
        restart = max(i for i, e in enumerate(events) if e.get("status") == "restarted")
        # Fenced as readers fence (web/realtime/cursor.py): the cut worker's held events,
        # published when its link came back, carry its older attempt.
        after = [
            e
            for e in events[restart:]
            if e["type"] == "token" and e.get("attempt", result["attempt"]) >= result["attempt"]
        ]
        assert "".join(e["text"] for e in after) == result["output"]  # no duplicated text
        assert {e["attempt"] for e in after} == {2}

    # The link is back: the old worker has found that its jobs are no longer its own (its
    # watcher could not renew their leases) and writes nothing for them; the same process,
    # never restarted, beats again and its node is online.
    wait_for(
        lambda: all(_gave_up(victim.worker_log(), job) for job in victim_jobs),
        60,
        "the old worker to give up its jobs",
    )
    wait_for(lambda: _online(cluster, victim.node), 60, "the node back online")
    assert victim.host.processes["worker"].poll() is None
    for job in victim_jobs:
        assert read(client.api, owner[job], job) == results[job]  # what attempt 2 wrote stays


def test_a_host_cut_off_inside_a_transaction_gives_its_row_locks_back(fresh: Cluster) -> None:
    """A host cut off between two statements of a transaction (a heartbeat's: it locks its
    node's row, then reads its orders) leaves the data host waiting on a client that will
    not answer, for as long as its TCP keepalive takes (two hours by default). Our sessions
    ask the server to end such a transaction after DB_IDLE_IN_TRANSACTION_TIMEOUT_S, so the
    writers of that row (the stale-node sweep, the node's next heartbeat) wait that long, not
    hours. The client host plays the cut-off one here, holding a GPU node's row."""
    cluster, client = fresh, fresh.client
    node = cluster.gpus[0].node
    settings = Settings(
        database_url=client.database_url,
        db_idle_in_transaction_timeout_s=float(FAST["DB_IDLE_IN_TRANSACTION_TIMEOUT_S"]),
    )
    engine = build_engine(settings, pool_size=1)
    with client.host.inside():  # its socket is the client host's
        held = engine.connect()
    held.begin()
    pid = held.scalar(text("SELECT pg_backend_pid()"))
    held.execute(text("SELECT 1 FROM nodes WHERE name = :node FOR UPDATE"), {"node": node})

    cluster.wire.cut(client.host)
    try:
        with cluster.data.inside():  # the data host reaches its own database
            seen = build_engine(settings)  # the data host's address is its own
            wait_for(lambda: _row_free(seen, node), 20, "the cut-off transaction's lock released")
            with seen.connect() as connection:
                alive = connection.scalar(
                    text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid}
                )
            seen.dispose()
        assert alive == 0  # the server ended that session, not only its transaction
    finally:
        cluster.wire.mend(client.host)
        held.invalidate()
        engine.dispose()


def _row_free(engine: Engine, node: str) -> bool:
    try:
        with engine.connect() as connection, connection.begin():
            connection.execute(
                text("SELECT 1 FROM nodes WHERE name = :node FOR UPDATE NOWAIT"), {"node": node}
            )
    except OperationalError:  # "could not obtain lock"
        return False
    return True


def _online(cluster: Cluster, name: str) -> bool:
    with cluster.client.database() as database:
        return node_online(database, name)


# How the old worker gives a job up, depending on where the cut caught it: its watcher could
# not renew the lease (streaming), its result could not be written within the lease, or the
# database's fence refused the write of a stale attempt.
GAVE_UP = ("lease lost", "could not be stored within its lease", "refused: the job is no longer")


def _gave_up(log: str, job: str) -> bool:
    about = [line for line in log.splitlines() if f"request {job}: " in line]
    return any(phrase in line for line in about for phrase in GAVE_UP)
