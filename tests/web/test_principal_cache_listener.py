"""The principal cache's guards (tests/web/test_principal_cache.py has its main behaviour):
nothing is stored unless the cache hears evictions, a lost subscription empties it and it
listens again, a stopped cache serves nothing, and a failed broadcast still evicts here."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from redis import ConnectionPool, Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from web.security import principal_cache as module
from web.security.principal_cache import CHANNEL, PrincipalCache


@pytest.fixture
def caches() -> Iterator[list[PrincipalCache]]:
    """Caches made by a test, stopped after it (their listener threads end)."""
    made: list[PrincipalCache] = []
    yield made
    for cache in made:
        cache.stop()


@pytest.fixture
def listening(redis_client: Redis, caches: list[PrincipalCache]) -> PrincipalCache:
    cache = PrincipalCache(redis_client, ttl_s=60)
    caches.append(cache)
    cache.get("warm-up")
    assert cache.listening.wait(5)
    return cache


def _eventually(condition: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_an_entry_is_served_until_it_expires(listening: PrincipalCache) -> None:
    listening.put("jwt:a", "principal", tags=["user:a"])
    expires_at, tags, value = listening.entries["jwt:a"]
    assert (tags, value) == (frozenset({"user:a"}), "principal")
    assert 59 < expires_at - time.monotonic() <= 60
    assert listening.get("jwt:a") == "principal"
    assert listening.get("jwt:b") is None


def test_a_cache_that_is_off_starts_no_listener_and_stores_nothing(redis_client: Redis) -> None:
    off = PrincipalCache(redis_client, ttl_s=0)  # PRINCIPAL_CACHE_S=0
    assert off.get("jwt:x") is None
    assert off.listener is None
    off.listening.set()  # even were it listening
    off.put("jwt:x", "never", tags=["user:x"])
    assert off.entries == {}


def test_nothing_is_stored_while_the_cache_cannot_hear_evictions(redis_client: Redis) -> None:
    deaf = PrincipalCache(redis_client, ttl_s=60)  # its listener has not started
    deaf.put("jwt:x", "stale", tags=["user:x"])
    assert deaf.entries == {}


def test_an_eviction_takes_every_entry_with_a_wanted_tag_and_only_those(
    listening: PrincipalCache,
) -> None:
    user, key, family = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    listening.put("apikey:1", "key", tags=[f"user:{user}", f"key:{key}"])
    listening.put("jwt:1", "login", tags=[f"user:{user}", f"family:{family}"])
    listening.put("jwt:2", "someone else", tags=[f"user:{uuid.uuid4()}", f"family:{key}"])
    listening.forget(user_ids=[user])
    assert set(listening.entries) == {"jwt:2"}  # a key's id is no family's


def test_forgetting_nothing_tells_nobody(
    listening: PrincipalCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    published: list[object] = []
    monkeypatch.setattr(listening.redis, "publish", lambda *args: published.append(args))
    listening.put("jwt:1", "kept", tags=["user:1"])
    listening.forget()
    assert published == []
    assert listening.get("jwt:1") == "kept"
    listening.forget(api_key_ids=[uuid.UUID(int=1)], family_ids=[uuid.UUID(int=2)])
    [(channel, body)] = published
    # Every version of the web process must use this channel: in a rolling deploy, old and
    # new processes evict for each other.
    assert channel == CHANNEL == "omx:principals:forget"
    assert body == f'["key:{uuid.UUID(int=1)}", "family:{uuid.UUID(int=2)}"]'


def test_a_failed_broadcast_still_evicts_here(
    listening: PrincipalCache, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unreachable(*args: object) -> int:
        raise RedisConnectionError("Connection refused")

    user = uuid.uuid4()
    listening.put("jwt:1", "principal", tags=[f"user:{user}"])
    monkeypatch.setattr(listening.redis, "publish", unreachable)
    with caplog.at_level(logging.WARNING, logger=module.__name__):
        listening.forget(user_ids=[user])
    assert listening.entries == {}
    assert any(
        record.getMessage().startswith(f"could not tell other processes to forget ['user:{user}']")
        for record in caplog.records
    )


def test_a_lost_subscription_empties_the_cache_and_listens_again(
    redis_client: Redis, caches: list[PrincipalCache], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(module, "RETRY_S", 0.05)
    # Its own named connections, so that only its subscription is cut below (other suites
    # and live servers on this Redis keep theirs).
    name = f"principal-cache-test-{uuid.uuid4().hex[:8]}"
    # Built on a pool as the app's client is: a dropped connection surfaces (a client made
    # with Redis(host=...) would retry it away unseen).
    kwargs = {**redis_client.connection_pool.connection_kwargs, "client_name": name}
    own = Redis(connection_pool=ConnectionPool(**kwargs))
    cache = PrincipalCache(own, ttl_s=60)
    caches.append(cache)
    cache.get("warm-up")
    assert cache.listening.wait(5)
    cache.put("jwt:1", "principal", tags=["user:1"])
    first = cache.listener

    # Redis restarted, or the network dropped the connection.
    [subscriber] = [c for c in redis_client.client_list(_type="pubsub") if c["name"] == name]
    redis_client.client_kill_filter(_id=subscriber["id"])

    assert _eventually(lambda: cache.entries == {})
    assert _eventually(cache.listening.is_set)  # subscribed again, in the same thread
    assert cache.listener is first
    assert first is not None
    assert first.is_alive()
    cache.put("jwt:2", "again", tags=["user:2"])
    assert cache.get("jwt:2") == "again"
    own.close()


def test_an_idle_listener_keeps_listening(listening: PrincipalCache) -> None:
    """A quiet second (no eviction) is normal: it must not cost the cache its entries."""
    listening.put("jwt:1", "principal", tags=["user:1"])
    listener = listening.listener
    time.sleep(2.2)  # past two of the listener's one-second waits for a message
    assert listening.get("jwt:1") == "principal"
    assert listening.listener is listener


def test_a_listener_that_pings_keeps_listening(
    listening: PrincipalCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After PING_AFTER_S of silence it pings Redis (a dead connection shows up there), and
    goes on listening."""
    monkeypatch.setattr(module, "PING_AFTER_S", 0.1)
    listening.put("jwt:1", "principal", tags=["user:1"])
    time.sleep(2.2)  # a ping after the first quiet second, another after the second
    assert listening.get("jwt:1") == "principal"


def test_a_listener_that_fails_to_start_retries(
    redis_client: Redis,
    caches: list[PrincipalCache],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(module, "RETRY_S", 0.05)
    cache = PrincipalCache(redis_client, ttl_s=60)
    caches.append(cache)
    real = cache._subscribe_and_evict
    attempts: list[int] = []

    def flaky() -> None:
        attempts.append(1)
        if len(attempts) == 1:
            raise ValueError("not a Redis error: the listener survives it too")
        real()

    monkeypatch.setattr(cache, "_subscribe_and_evict", flaky)
    with caplog.at_level(logging.WARNING, logger=module.__name__):
        cache.get("warm-up")
        assert cache.listening.wait(5)
    assert len(attempts) == 2
    assert [record.getMessage() for record in caplog.records] == [
        "principal cache not listening (not a Redis error: the listener survives it too);"
        " serving without it"
    ]


def test_a_dead_listener_is_started_again_on_the_next_use(
    redis_client: Redis, caches: list[PrincipalCache], monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = PrincipalCache(redis_client, ttl_s=60)
    caches.append(cache)
    monkeypatch.setattr(cache, "_run", lambda: None)  # a thread that ends at once
    cache.get("warm-up")
    first = cache.listener
    assert first is not None
    first.join(5)
    cache.get("warm-up")
    assert cache.listener is not first


def test_a_stopped_cache_serves_nothing(
    listening: PrincipalCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(module, "RETRY_S", 0.05)
    listening.put("jwt:1", "principal", tags=["user:1"])
    listener = listening.listener
    listening.stop()
    assert listener is not None
    listener.join(5)
    assert not listener.is_alive()
    assert not listening.listening.is_set()
    assert listening.entries == {}
    assert listening.get("jwt:1") is None
    assert listening.listener is listener  # not started again
