"""db/session.py: what each session asks of the server, checked on a real connection."""

from __future__ import annotations

import time
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from config.settings import Settings
from db.session import build_engine


def _engine(settings_overrides: dict[str, Any], **changes: Any) -> Any:
    return build_engine(Settings(**{**settings_overrides, **changes}), pool_size=1)


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
