"""Which delivered messages kombu records in Redis (workers/broker.py): every one but an
inference job's, whose lease and outbox sweep recover it. Without a record a held job still
goes back to its queue when the channel closes; a model pull keeps its record, so a worker
killed while pulling does not lose the pull.

Kombu's own consumer on our transport, against a throwaway `redis-server`, as a Celery
worker's task channel uses it (acks late, one channel for all queues).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
from kombu import Connection, Consumer, Exchange, Producer, Queue
from kombu.message import Message

from tests.support.throwaway import ThrowawayRedis
from workers.dispatch import INFERENCE, MODEL_PULL

TRANSPORT = "workers.broker:Transport"
JOBS = Queue("model.tiny", Exchange("model.tiny", "direct"), "model.tiny")
PULLS = Queue("node.a", Exchange("node.a", "direct"), "node.a")


@pytest.fixture
def broker() -> Iterator[ThrowawayRedis]:
    with ThrowawayRedis() as server:
        yield server


def cli(broker: ThrowawayRedis, *command: str) -> object:
    with broker.client(decode_responses=True) as client:
        return client.execute_command(*command)


def publish(broker: ThrowawayRedis) -> None:
    """One inference job and one model pull, each with its task's name as Celery's
    protocol 2 carries it."""
    with Connection(broker.url, transport=TRANSPORT) as connection:
        producer = Producer(connection)
        for queue, task in ((JOBS, INFERENCE), (PULLS, MODEL_PULL)):
            producer.publish(
                {"task": task},
                exchange=queue.exchange,
                routing_key=queue.routing_key,
                headers={"task": task},
                declare=[queue],
            )


def deliver_both(connection: Connection) -> dict[str, Message]:
    delivered: dict[str, Message] = {}
    Consumer(
        connection.default_channel,
        [JOBS, PULLS],
        callbacks=[lambda body, message: delivered.setdefault(body["task"], message)],
        no_ack=False,
    ).consume()
    for _ in range(10):
        if len(delivered) == 2:
            break
        connection.drain_events(timeout=1)
    assert set(delivered) == {INFERENCE, MODEL_PULL}
    return delivered


def records(broker: ThrowawayRedis) -> list[str]:
    """The messages kombu keeps for its visibility timeout, as stored."""
    with broker.client(decode_responses=True) as client:
        return list(client.hvals("unacked"))


def waiting(broker: ThrowawayRedis, queue: Queue) -> int:
    """Messages in a queue, all priority steps together."""
    with broker.client() as client:
        return sum(client.llen(key) for key in client.keys(f"{queue.name}*"))


def test_only_the_pull_is_recorded_while_held_and_each_ack_clears_its_own(
    broker: ThrowawayRedis,
) -> None:
    publish(broker)
    with Connection(broker.url, transport=TRANSPORT) as connection:
        delivered = deliver_both(connection)

        [recorded] = records(broker)
        assert MODEL_PULL in recorded
        assert INFERENCE not in recorded
        assert cli(broker, "zcard", "unacked_index") == 1

        delivered[INFERENCE].ack()
        assert cli(broker, "hlen", "unacked") == 1
        delivered[MODEL_PULL].ack()
        assert cli(broker, "hlen", "unacked") == 0
        assert cli(broker, "zcard", "unacked_index") == 0
    # Acknowledged: nothing goes back at the close.
    assert waiting(broker, JOBS) == waiting(broker, PULLS) == 0


def test_a_closing_channel_puts_back_what_it_held_recorded_or_not(
    broker: ThrowawayRedis,
) -> None:
    publish(broker)
    connection = Connection(broker.url, transport=TRANSPORT)
    held = deliver_both(connection)

    connection.close()  # a stopping worker, or Celery's restart of its consumer

    # The copy put back is marked redelivered; the one a running job holds is untouched.
    assert "redelivered" not in held[INFERENCE].headers
    assert waiting(broker, JOBS) == 1
    assert waiting(broker, PULLS) == 1
    assert cli(broker, "hlen", "unacked") == 0
    with Connection(broker.url, transport=TRANSPORT) as again:
        redelivered = deliver_both(again)
        assert redelivered[INFERENCE].delivery_info["redelivered"]
        for message in redelivered.values():
            message.ack()


def test_a_requeued_job_goes_back_from_the_workers_copy(broker: ThrowawayRedis) -> None:
    publish(broker)
    with Connection(broker.url, transport=TRANSPORT) as connection:
        delivered = deliver_both(connection)
        delivered[INFERENCE].reject(requeue=True)
        delivered[MODEL_PULL].reject(requeue=True)
        assert waiting(broker, JOBS) == 1
        assert waiting(broker, PULLS) == 1
        assert cli(broker, "hlen", "unacked") == 0


def test_a_close_without_redis_keeps_the_pulls_record_for_the_visibility_timeout(
    broker: ThrowawayRedis,
) -> None:
    """Redis away at the close: the restore stops at its first connection error, which
    reaches the caller as one (Celery reconnects); the pull's record stays for kombu's
    visibility timeout, the job is the sweeps'."""
    publish(broker)
    connection = Connection(
        broker.url, transport=TRANSPORT, transport_options={"socket_connect_timeout": 1}
    )
    deliver_both(connection)
    broker.stop()
    with contextlib.suppress(*connection.connection_errors):
        connection.close()
    broker.start()

    [recorded] = records(broker)
    assert MODEL_PULL in recorded
    assert waiting(broker, JOBS) == 0
