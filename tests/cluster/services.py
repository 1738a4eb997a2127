"""What the cluster's non-application hosts run: the data host's PostgreSQL, Redis and broker
(each a throwaway server of its own, from Debian's binaries, listening on the data host's
address), and the load balancer's HAProxy."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Protocol

from tests.cluster.hosts import Host
from tests.support.rabbitmq import ThrowawayRabbitMQ
from tests.support.throwaway import ThrowawayPostgres, ThrowawayRedis

DATABASE = "ollamamax"
PROXY_PORT = 8080
API_PORT = 11400


class Broker(Protocol):
    """A broker the data host runs: `start` brings it up there and answers the URL that
    CELERY_BROKER_URL takes; `close` ends it."""

    name: str

    def start(self, data: Host) -> str: ...

    def close(self) -> None: ...


class RedisBroker:
    """A Redis of its own for the broker (port 6380), apart from the events' Redis, as the
    production topology draws it: a broker restart then never touches pub/sub or limits."""

    name = "redis"

    def __init__(self) -> None:
        self.server: ThrowawayRedis | None = None
        self.data: Host | None = None

    def start(self, data: Host) -> str:
        self.server, self.data = ThrowawayRedis(6380, persist=False, host=data.address), data
        with data.inside():
            self.server.start()
        return self.server.url

    def close(self) -> None:
        if self.server is not None and self.data is not None:
            with self.data.inside():
                self.server.close()


class RabbitBroker:
    """A RabbitMQ node of its own on the data host (5672), as compose's `rabbitmq` profile
    draws it: durable priority queues, publisher confirms, no visibility timeout."""

    name = "rabbitmq"

    def __init__(self) -> None:
        self.server: ThrowawayRabbitMQ | None = None
        self.data: Host | None = None

    def start(self, data: Host) -> str:
        self.server, self.data = ThrowawayRabbitMQ(port=5672, host=data.address), data
        with data.inside():  # the node and the epmd it starts live on the data host
            self.server.start()
        return self.server.url

    def close(self) -> None:
        if self.server is not None and self.data is not None:
            with self.data.inside():
                self.server.close()


class DataHost:
    """PostgreSQL (migrated) and Redis on the data host."""

    def __init__(self, host: Host) -> None:
        self.host = host
        # Two API processes, four workers and beat keep ~150 connections between them.
        self.postgres = ThrowawayPostgres(
            5432, host=host.address, settings={"max_connections": "300"}
        )
        self.redis = ThrowawayRedis(6379, persist=False, host=host.address)

    def start(self) -> tuple[str, str]:
        """Start both; the database URL and the Redis URL."""
        with self.host.inside():
            self.postgres.start()
            database_url = self.postgres.migrated(DATABASE)
            self.redis.start()
        return database_url, self.redis.url

    def close(self) -> None:
        with self.host.inside():
            self.redis.close()
            self.postgres.close()


def haproxy_binary() -> str | None:
    return shutil.which("haproxy")


def haproxy_config(listen: str, backends: dict[str, str], folder: Path) -> Path:
    """HAProxy in front of the API hosts (`name -> address`).

    - WebSockets: HTTP mode passes `Upgrade` through and, once upgraded, the connection is a
      tunnel that lives `timeout tunnel`; our own heartbeats keep it busy far below that.
    - Streaming: HAProxy forwards what the server sends as it comes (it never buffers a
      whole response); `option http-no-delay` also stops it waiting to fill packets.
    - `option forwardfor` appends the client's address to X-Forwarded-For; the API hosts
      trust it only from this host (TRUSTED_PROXIES), and read the last entry.
    - The check is readiness (`/health/ready`: PostgreSQL, Redis, the broker within
      HEALTH_CHECK_TIMEOUT_S), not liveness: an API host cut off from the data host leaves
      the rotation after two failed checks instead of answering half the calls with 503.
      A refused connection is retried on the other server (`retry-on conn-failure`,
      `option redispatch`), so a dead API host costs new calls nothing.
    """
    servers = "\n".join(
        f"    server {name} {address}:{API_PORT} check inter 500ms fall 2 rise 2"
        for name, address in backends.items()
    )
    text = f"""global
    maxconn 4096

defaults
    mode http
    option http-no-delay
    option forwardfor
    option redispatch
    retries 3
    retry-on conn-failure
    timeout connect 2s
    timeout client 120s
    timeout server 120s
    timeout tunnel 1h
    timeout check 3s

frontend api
    bind {listen}:{PROXY_PORT}
    http-request set-header X-Forwarded-Proto http
    default_backend api_hosts

backend api_hosts
    balance roundrobin
    # Which API host answered: tests pick the one to kill by it, operators debug with it.
    http-response set-header X-Served-By %s
    option httpchk GET /health/ready
    http-check expect status 200
{servers}
"""
    path = folder / "haproxy.cfg"
    path.write_text(text)
    return path
