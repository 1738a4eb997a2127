"""Engine, pooled connections and the unit of work.

One `Database` per process. Data-access code receives a `Session` and only
flushes; whoever opened the unit of work (a web request, a task) commits once. The hot
path's calls of database functions (admit, claim, finish) may receive a Core `Connection`
instead (`Database.one_call`): `Executor`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, make_url, text
from sqlalchemy.orm import Session, SessionTransaction, sessionmaker

from config.settings import Settings

# What a data-access function of one Core statement runs it on: a unit of work's session
# (its connection) or a Core connection (`Database.one_call`).
Executor = Session | Connection


def core_connection(executor: Executor) -> Connection:
    return executor.connection() if isinstance(executor, Session) else executor


def build_engine(
    settings: Settings, pool_size: int | None = None, max_overflow: int | None = None
) -> Engine:
    engine = create_engine(
        settings.database_url,
        pool_size=pool_size or settings.db_pool_size,
        max_overflow=settings.db_max_overflow if max_overflow is None else max_overflow,
        pool_recycle=settings.db_pool_recycle_s,
        # Last in, first out: a checkout takes the connection used last, so the ones a quiet
        # process does not need stay idle at the bottom, instead of every checkout taking
        # the one idle longest, the likeliest to be past DB_POOL_RECYCLE_S (a close and a
        # new connection in the middle of a request, every 5 min per pooled connection).
        pool_use_lifo=True,
        pool_timeout=settings.db_pool_timeout_s,
        pool_pre_ping=settings.db_pool_pre_ping,
        echo=settings.db_echo,
        connect_args={
            "connect_timeout": settings.db_connect_timeout_s,
            # A database behind a dead link (no RST, just silence) must fail a query, not
            # hang it until the kernel gives up (~15 min): sent data unacknowledged for
            # DB_TCP_USER_TIMEOUT_S fails the connection, and keepalives probe idle ones.
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
            "tcp_user_timeout": int(settings.db_tcp_user_timeout_s * 1000),
            **_server_options(settings),
        },
        # Keep parameter values out of exception messages and logs.
        hide_parameters=True,
    )
    event.listen(engine, "do_connect", _connect_within(settings.db_connect_timeout_s))
    return engine


def _server_options(settings: Settings) -> dict[str, str]:
    """What each session asks of the server, for a client that vanishes. A host cut off
    between two statements of a transaction leaves the server waiting on it with its row
    locks held until the server's TCP keepalive (two hours by default) finds it gone: the
    server ends such a transaction after DB_IDLE_IN_TRANSACTION_TIMEOUT_S. Sent as libpq's
    startup `options`, after any in DATABASE_URL; PgBouncer refuses those, so behind it the
    setting is 0 and the server's own configuration says it (docker/postgres)."""
    if not settings.db_idle_in_transaction_timeout_s:
        return {}
    own = make_url(settings.database_url).query.get("options", "")
    if not isinstance(own, str):  # `options` given more than once
        own = " ".join(own)
    idle_ms = int(settings.db_idle_in_transaction_timeout_s * 1000)
    return {"options": f"{own} -c idle_in_transaction_session_timeout={idle_ms}".strip()}


def _connect_within(timeout_s: float) -> Callable[..., Any]:
    """libpq applies connect_timeout only to a blocking connect. Where psycopg2 has been made
    cooperative (gunicorn's gevent workers install a wait callback), it connects without
    blocking and the timeout is ignored: a server that takes the connection and never
    answers would hang the request for good. There, the connect runs under a gevent timeout
    that fails it as libpq would."""

    def connect(dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
        dbapi = dialect.loaded_dbapi
        extensions = getattr(dbapi, "extensions", None)
        if extensions is None or extensions.get_wait_callback() is None:
            return None  # a blocking connect: libpq keeps its own time
        from gevent import Timeout

        expired = dbapi.OperationalError(f"timeout expired (no answer within {timeout_s} s)")
        with Timeout(timeout_s, expired):
            return dialect.connect(*cargs, **cparams)

    return connect


@dataclass
class Database:
    engine: Engine
    session_factory: sessionmaker[Session]
    # False: `one_statement` runs in an ordinary transaction (a test bound to one
    # connection's transaction, whose statements must stay in it).
    autocommit: bool = True

    @classmethod
    def from_settings(
        cls, settings: Settings, pool_size: int | None = None, max_overflow: int | None = None
    ) -> Database:
        """`pool_size` overrides DB_POOL_SIZE for a process that knows its concurrency, and
        `max_overflow` DB_MAX_OVERFLOW."""
        engine = build_engine(settings, pool_size, max_overflow)
        return cls(engine, sessionmaker(engine, expire_on_commit=False))

    @contextmanager
    def unit_of_work(self) -> Iterator[Session]:
        """A session that commits once if the block succeeds and rolls back if it raises."""
        with _committed_once(self.session_factory()) as session:
            yield session

    @contextmanager
    def one_statement(self) -> Iterator[Session]:
        """A unit of work that is one statement, sent in autocommit: the statement is its
        own transaction, so psycopg2 sends no BEGIN before it and no COMMIT after it (a unit
        of work of one statement costs three round trips; this, one). For one statement
        only: two statements here would be two transactions.

        The pooled connection's psycopg2 `autocommit` is switched on for the block and off
        before it goes back, which sends nothing; SQLAlchemy's isolation_level="AUTOCOMMIT"
        would reset the level at each check-in with a `SET default_transaction_isolation`,
        a round trip of its own."""
        with _committed_once(self.session_factory()) as session:
            if not self.autocommit:
                yield session
                return
            with _in_autocommit(session.connection()):
                yield session

    @contextmanager
    def one_call(self) -> Iterator[Connection]:
        """`one_statement` for a statement that needs nothing of the ORM (a call of one of
        the hot path's database functions): a pooled Core connection, in autocommit, with
        no session around it. The session's bookkeeping (its transaction's states, begin
        and commit, its events) cost about 55 µs of CPU per statement over the Core
        connection's (`python -m bench.per_call`: 180 against 125 µs for a `SELECT 1`), on
        each of a job's three statements."""
        if not self.autocommit:
            with self.one_statement() as session:
                yield session.connection()
            return
        with self.engine.connect() as connection, _in_autocommit(connection):
            yield connection
            connection.commit()  # nothing on the wire in autocommit; ends SQLAlchemy's

    def dispose(self) -> None:
        self.engine.dispose()


@contextmanager
def _in_autocommit(connection: Connection) -> Iterator[None]:
    """psycopg2's `autocommit` on for the block, and off again before the pooled connection
    goes back unless it died meanwhile (why not SQLAlchemy's level: `Database.one_statement`)."""
    raw = connection.connection.dbapi_connection
    assert raw is not None
    raw.autocommit = True
    try:
        yield
    finally:
        if not raw.closed:
            raw.autocommit = False


@contextmanager
def _committed_once(session: Session) -> Iterator[Session]:
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


AUDIT_CONTEXT_KEY = "audit_context"
_AUDIT_FIELDS = ("user_id", "ip_address", "user_agent", "request_id")
_SET_AUDIT_CONTEXT = text(
    "SELECT set_config('ollamamax.user_id', :user_id, true),"
    " set_config('ollamamax.ip_address', :ip_address, true),"
    " set_config('ollamamax.user_agent', :user_agent, true),"
    " set_config('ollamamax.request_id', :request_id, true)"
)


def set_audit_context(
    session: Session,
    *,
    user_id: str | None = None,
    ip_address: str | None = None,
    user_agent: str | None = None,
    request_id: str | None = None,
) -> None:
    """Tell the audit trigger who acts in this session's transactions.

    The values are kept on the session and applied with `set_config(..., true)`
    at the start of every transaction: transaction-local, so they never leak to
    the next user of a pooled connection and they work behind PgBouncer in
    transaction mode. Values left out keep what was set before.
    """
    context = session.info.setdefault(AUDIT_CONTEXT_KEY, {})
    given = dict(zip(_AUDIT_FIELDS, (user_id, ip_address, user_agent, request_id), strict=True))
    context.update({name: value for name, value in given.items() if value is not None})
    if session.in_transaction():
        _execute_audit_context(session.connection(), context)


@event.listens_for(Session, "after_begin")
def _apply_audit_context_on_begin(
    session: Session, _transaction: SessionTransaction, connection: Connection
) -> None:
    context = session.info.get(AUDIT_CONTEXT_KEY)
    if context:
        _execute_audit_context(connection, context)


def _execute_audit_context(connection: Connection, context: dict[str, str]) -> None:
    connection.execute(
        _SET_AUDIT_CONTEXT,
        {name: str(context.get(name) or "") for name in _AUDIT_FIELDS},
    )
