"""Throwaway PostgreSQL and Redis servers of a benchmark's own, configured for measuring.

The machine's PostgreSQL and Redis are shared with other people's test runs, so their CPU and
counters say nothing about one stack. A cost benchmark starts these instead: every process of
the cluster and the redis-server is then ours, and whatever they count is our stack's doing
(plus our own measurement queries, which stay out of the application's database). They are
the fault tests' servers (tests/support/throwaway.py) with a production server's durability
and the statistics a measurement reads:

    with measured_postgres() as pg, unpersisted_redis() as redis:
        pg.url("ollamamax"), redis.url
"""

from __future__ import annotations

from tests.support.throwaway import ThrowawayPostgres, ThrowawayRedis

MEASURED_SETTINGS = {
    "fsync": "on",  # fsync and synchronous_commit at their defaults, as in production
    "shared_preload_libraries": "pg_stat_statements",
    # Room for every distinct statement of a run: an evicted entry loses its calls.
    "pg_stat_statements.max": "10000",
    "pg_stat_statements.track": "top",
    "pg_stat_statements.track_utility": "on",  # BEGIN, COMMIT, SET count as statements
    # Planning apart from execution: a statement sent unprepared is planned at every call.
    "pg_stat_statements.track_planning": "on",
}


def measured_postgres() -> ThrowawayPostgres:
    return ThrowawayPostgres(settings=MEASURED_SETTINGS)


def unpersisted_redis() -> ThrowawayRedis:
    """Nothing written to disk: a benchmark never restarts it."""
    return ThrowawayRedis(persist=False)
