"""db/session.py: what each session asks of the server, and how the pool hands out its
connections, checked on real connections."""

from __future__ import annotations

import time
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import sessionmaker

from config.settings import Settings
from db.session import Database, build_engine

# The test database must exist (and be migrated) even when this module runs alone.
pytestmark = pytest.mark.usefixtures("database")


def _engine(settings_overrides: dict[str, Any], pool_size: int = 1, **changes: Any) -> Any:
    return build_engine(Settings(**{**settings_overrides, **changes}), pool_size=pool_size)


def test_the_server_ends_a_transaction_whose_client_went_quiet(
    settings_overrides: dict[str, Any],
) -> None:
    engine = _engine(settings_overrides, db_idle_in_transaction_timeout_s=0.2)
    watcher = _engine(settings_overrides)
    try:
        with engine.connect() as connection:  # a transaction from its first statement on
            assert connection.scalar(text("SHOW idle_in_transaction_session_timeout")) == "200ms"
            pid = connection.scalar(text("SELECT pg_backend_pid()"))
            time.sleep(1)  # the client goes quiet inside its transaction
            with watcher.connect() as other:
                sessions = text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid")
                assert other.scalar(sessions, {"pid": pid}) == 0  # ended, its locks with it
            with pytest.raises(OperationalError, match="server closed the connection"):
                connection.execute(text("SELECT 1"))
    finally:
        engine.dispose()
        watcher.dispose()


def test_options_in_the_database_url_are_kept_and_zero_sends_none(
    settings_overrides: dict[str, Any],
) -> None:
    url = settings_overrides["database_url"]
    with_options = f"{url}{'&' if '?' in url else '?'}options=-c%20statement_timeout%3D1234"
    engine = _engine(settings_overrides, database_url=with_options)
    off = _engine(settings_overrides, db_idle_in_transaction_timeout_s=0)
    try:
        with engine.connect() as connection:
            assert connection.scalar(text("SHOW statement_timeout")) == "1234ms"
            assert connection.scalar(text("SHOW idle_in_transaction_session_timeout")) == "30s"
        with off.connect() as connection:  # the server's own default (0 here)
            assert connection.scalar(text("SHOW idle_in_transaction_session_timeout")) == "0"
    finally:
        engine.dispose()
        off.dispose()


def test_a_request_after_a_quiet_spell_reopens_at_most_the_connection_it_takes(
    settings_overrides: dict[str, Any],
) -> None:
    """A burst left two connections in the pool and both aged past DB_POOL_RECYCLE_S. The
    first request after it replaces the one it takes; the next must reuse that one, not
    take the other stale one and reopen it too (what a first-in, first-out pool did to a
    counted request in CI)."""
    engine = _engine(settings_overrides, pool_size=2, db_pool_recycle_s=1)
    opened: list[object] = []
    event.listen(engine.pool, "connect", lambda *_: opened.append(None))
    try:
        with engine.connect() as first, engine.connect() as second:  # the burst
            first.scalar(text("SELECT 1"))
            second.scalar(text("SELECT 1"))
        time.sleep(1.2)  # both past recycling age
        with engine.connect() as connection:
            connection.scalar(text("SELECT 1"))
        assert len(opened) == 3  # the burst's two and the replacement
        with engine.connect() as connection:
            connection.scalar(text("SELECT 1"))
        assert len(opened) == 3
    finally:
        engine.dispose()


def test_one_call_sends_each_statement_as_its_own_transaction_and_hands_back_none_open(
    settings_overrides: dict[str, Any],
) -> None:
    """`Database.one_call`: a Core connection in autocommit (two statements there would be
    two transactions), which goes back to the pool as it came, autocommit off, whether the
    block ended or raised."""
    engine = _engine(settings_overrides)
    database = Database(engine, sessionmaker(engine))
    try:
        with database.one_call() as connection:
            first = connection.scalar(text("SELECT txid_current()"))
            second = connection.scalar(text("SELECT txid_current()"))
        assert first != second

        def fails_inside() -> None:
            with database.one_call() as connection:
                connection.scalar(text("SELECT 1"))
                raise ZeroDivisionError

        with pytest.raises(ZeroDivisionError):
            fails_inside()
        with engine.connect() as connection:  # the pool's one connection, as it came
            assert connection.connection.dbapi_connection.autocommit is False
            first = connection.scalar(text("SELECT txid_current()"))
            assert connection.scalar(text("SELECT txid_current()")) == first
    finally:
        engine.dispose()
