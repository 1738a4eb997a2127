"""The web process's pool of PostgreSQL connections (web/app.py)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event

from web import create_app


def test_the_web_process_keeps_the_connections_a_burst_opened(
    settings_overrides: dict[str, Any],
) -> None:
    """SQLAlchemy closes an overflow connection when it comes back to a full pool: the web's
    pool has none, and keeps all DB_POOL_SIZE + DB_MAX_OVERFLOW it may open."""
    app = create_app({**settings_overrides, "db_pool_size": 3, "db_max_overflow": 2})
    engine = app.extensions["db"].engine
    closed: list[object] = []
    event.listen(engine.pool, "close", lambda *_: closed.append(1))
    try:
        burst = [engine.connect() for _ in range(5)]  # the most this process may open
        for connection in burst:
            connection.close()
        assert closed == []
        assert engine.pool.checkedin() == 5
    finally:
        engine.dispose()
