"""RabbitMQ for tests: a virtual host of the test's own on the machine's server, or a
throwaway server of its own for a test that needs other server settings or stops it.

    vhost = add_vhost()          # on the machine's RabbitMQ (127.0.0.1:5672, guest)
    url = amqp_url(vhost)
    ...
    delete_vhost(vhost)          # its queues and messages with it

    with ThrowawayRabbitMQ({"consumer_timeout": 3000}) as rabbit:  # advanced.config terms
        rabbit.url

Virtual hosts are made with `rabbitmqctl` (root, or the rabbitmq account, may run it). The
machine's server is never stopped or reconfigured: only what a test created is deleted.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import amqp

from tests.support.throwaway import Throwaway, free_port

# Where the machine's RabbitMQ answers; TEST_AMQP_URL moves it (its user must be allowed to
# use a new virtual host: rabbitmqctl set_permissions runs for it).
SHARED_URL = os.environ.get("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
SERVER_BIN = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")


def amqp_url(vhost: str, base: str = SHARED_URL) -> str:
    parts = urlsplit(base)
    return parts._replace(path="/" + quote(vhost, safe="")).geturl()


def answers(url: str = SHARED_URL) -> bool:
    try:
        connection = amqp.Connection(
            f"{urlsplit(url).hostname}:{urlsplit(url).port or 5672}",
            userid=urlsplit(url).username or "guest",
            password=urlsplit(url).password or "guest",
            connect_timeout=2,
        )
        connection.connect()
        connection.close()
    except (OSError, amqp.exceptions.AMQPError):
        return False
    return True


def unavailable_reason() -> str | None:
    """Why the amqp tests cannot run here, or None. docker/local-services.sh starts Debian's
    RabbitMQ when none answers, so under `make test` this is None."""
    if shutil.which("rabbitmqctl") is None:
        return "no rabbitmqctl on this machine (docker/local-services.sh installs RabbitMQ)"
    if not answers():
        return f"no RabbitMQ answers at {urlsplit(SHARED_URL).netloc.split('@')[-1]}"
    return None


def _ctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=60)


def add_vhost(prefix: str = "omx-test") -> str:
    """A new virtual host on the machine's server that SHARED_URL's user may use."""
    name = f"{prefix}-{uuid.uuid4().hex[:10]}"
    _ctl("add_vhost", name)
    _ctl("set_permissions", "-p", name, urlsplit(SHARED_URL).username or "guest", ".*", ".*", ".*")
    return name


def delete_vhost(name: str) -> None:
    _ctl("delete_vhost", name)


class ThrowawayRabbitMQ(Throwaway):
    """A RabbitMQ node of its own (Debian's rabbitmq-server, run from its folder) on
    <host>:<port> (127.0.0.1, or a cluster host's address), guest allowed, no plugins;
    `advanced` goes into its advanced.config as the `rabbit` application's settings (for
    settings rabbitmq.conf cannot express, such as a channel tick short enough to enforce a
    consumer_timeout of seconds)."""

    name = "rabbitmq"

    def __init__(
        self,
        advanced: dict[str, int] | None = None,
        port: int | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        super().__init__("omx-throwaway-rabbitmq-", port, host)
        self.dist_port = free_port()
        self.node = f"omx{self.port}@localhost"
        terms = ", ".join(f"{{{key}, {value}}}" for key, value in (advanced or {}).items())
        (self.folder / "advanced.config").write_text(f"[{{rabbit, [{terms}]}}].\n")
        (self.folder / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = {host}:{self.port}\nloopback_users = none\n"
        )
        (self.folder / "enabled_plugins").write_text("[].\n")

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@{self.host}:{self.port}//"

    def _spawn(self) -> subprocess.Popen[bytes]:
        folder = str(self.folder)
        env: dict[str, Any] = {
            **os.environ,
            "HOME": folder,  # its own Erlang cookie
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONFIG_FILE": f"{folder}/rabbitmq.conf",
            "RABBITMQ_ADVANCED_CONFIG_FILE": f"{folder}/advanced.config",
            "RABBITMQ_ENABLED_PLUGINS_FILE": f"{folder}/enabled_plugins",
            "RABBITMQ_MNESIA_BASE": f"{folder}/mnesia",
            "RABBITMQ_LOG_BASE": f"{folder}/log",
            "RABBITMQ_PID_FILE": f"{folder}/pid",
        }
        return self._popen([str(SERVER_BIN)], env=env)

    def _answers(self) -> bool:
        return answers(self.url)

    def _ask_to_stop(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)  # the Erlang VM stops the node cleanly
