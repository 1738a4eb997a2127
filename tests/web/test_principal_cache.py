"""The principal cache: what one process forgets, every process forgets; a process that
cannot hear evictions serves nothing from its cache; entries age out."""

from __future__ import annotations

import time
import uuid

from redis import Redis

from web.security.principal_cache import PrincipalCache


def _listening(*caches: PrincipalCache) -> None:
    for cache in caches:
        cache.get("warm-up")  # starts its listener
        assert cache.listening.wait(5)


def test_a_forget_in_one_process_evicts_the_entry_in_another(redis_client: Redis) -> None:
    here, there = PrincipalCache(redis_client, ttl_s=60), PrincipalCache(redis_client, ttl_s=60)
    _listening(here, there)
    user = uuid.uuid4()
    there.put("jwt:abc", "principal", tags=[f"user:{user}"])
    there.put("jwt:other", "someone else", tags=[f"user:{uuid.uuid4()}"])
    assert there.get("jwt:abc") == "principal"

    here.forget(user_ids=[user])

    deadline = time.monotonic() + 5
    while there.get("jwt:abc") is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert there.get("jwt:abc") is None
    assert there.get("jwt:other") == "someone else"


def test_keys_and_logins_are_forgotten_by_their_own_tags(redis_client: Redis) -> None:
    cache = PrincipalCache(redis_client, ttl_s=60)
    _listening(cache)
    key, family = uuid.uuid4(), uuid.uuid4()
    cache.put("apikey:1", "by key", tags=[f"key:{key}"])
    cache.put("jwt:1", "by login", tags=[f"family:{family}"])
    cache.forget(api_key_ids=[key])
    assert cache.get("apikey:1") is None
    assert cache.get("jwt:1") == "by login"
    cache.forget(family_ids=[family])
    assert cache.get("jwt:1") is None


def test_a_cache_that_is_not_listening_serves_nothing() -> None:
    unreachable = Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    cache = PrincipalCache(unreachable, ttl_s=60)
    cache.put("jwt:x", "stale", tags=["user:x"])
    assert cache.get("jwt:x") is None
    assert not cache.listening.is_set()


def test_entries_age_out_and_zero_turns_it_off(redis_client: Redis) -> None:
    cache = PrincipalCache(redis_client, ttl_s=0.2)
    _listening(cache)
    cache.put("jwt:y", "fresh", tags=["user:y"])
    assert cache.get("jwt:y") == "fresh"
    time.sleep(0.3)
    assert cache.get("jwt:y") is None
    off = PrincipalCache(redis_client, ttl_s=0)
    off.put("jwt:z", "never", tags=["user:z"])
    assert off.get("jwt:z") is None
