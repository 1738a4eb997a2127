"""The client host: where tests call the API (through the proxy, or one API host directly),
follow WebSockets, and look at the data host's rows and events, every socket opened in the
client's namespace. `api` answers like Flask's test client (`post`, `get`, `status_code`,
`get_json()`), so tests/pipeline/jobs.py's helpers drive the cluster unchanged."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import requests
import websocket
from redis import Redis
from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker
from sqlalchemy.pool import NullPool

from db.models import Role
from db.session import Database
from tests.cluster.hosts import Host
from tests.conftest import make_committed_user
from tests.factories import TEST_PASSWORD
from tests.support.identity import bearer
from tests.support.ws import connect
from workers.events import EventLog

T = TypeVar("T")


class Reply:
    """A `requests` answer in the shape tests/pipeline/jobs.py reads."""

    def __init__(self, response: requests.Response) -> None:
        self.response = response
        self.status_code = response.status_code
        self.headers = response.headers

    def get_json(self) -> Any:
        return self.response.json()


class Api:
    def __init__(self, client: ClientHost, base_url: str) -> None:
        self.client, self.base_url = client, base_url

    def request(self, method: str, path: str, timeout: float = 30, **kwargs: Any) -> Reply:
        with self.client.host.inside():
            return Reply(
                requests.request(method, f"{self.base_url}{path}", timeout=timeout, **kwargs)
            )

    def get(self, path: str, **kwargs: Any) -> Reply:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Reply:
        return self.request("POST", path, **kwargs)


class ClientHost:
    def __init__(self, host: Host, base_url: str) -> None:
        self.host = host
        self.base_url = base_url  # the proxy
        self.api = Api(self, base_url)
        self.database_url = ""
        self.redis_url = ""

    def direct(self, api_host: Host, port: int) -> Api:
        """Calls to one API host, bypassing the proxy."""
        return Api(self, f"http://{api_host.address}:{port}")

    def answers(self, url: str) -> bool:
        try:
            with self.host.inside():
                return requests.get(url, timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def inside(self, work: Callable[[], T]) -> T:
        with self.host.inside():
            return work()

    @contextmanager
    def database(self) -> Iterator[Database]:
        """The data host's database, reached from here (no pool: every connection is opened
        inside the client's namespace, when it is used)."""
        with self.host.inside():
            engine = create_engine(self.database_url, poolclass=NullPool)
            try:
                yield Database(engine, sessionmaker(engine, expire_on_commit=False))
            finally:
                engine.dispose()

    def login(self, role: Role = Role.USER) -> dict[str, str]:
        """A new account (written to the database, as tests/pipeline does) and its bearer
        headers, logged in through the proxy."""
        with self.database() as database:
            user = make_committed_user(database, role)
        reply = self.api.post(
            "/api/v1/auth/login", json={"username": user.username, "password": TEST_PASSWORD}
        )
        assert reply.status_code == 200, reply.get_json()
        return bearer(reply.get_json()["access_token"])

    def events(self, request_id: str) -> list[dict[str, Any]]:
        with self.host.inside(), Redis.from_url(self.redis_url) as redis:
            return EventLog(redis, ttl_s=3600).replay(request_id)

    def websocket(self, path: str, token: str) -> websocket.WebSocket:
        with self.host.inside():
            return connect(self.base_url, path, token)
