"""One unit of work per request: commit once on success, roll back on any error."""

from __future__ import annotations

import logging
from collections.abc import Callable

from flask import Flask, Response, current_app, g, request
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from db.session import Database, set_audit_context
from web.errors import (
    database_unavailable_response,
    database_unreachable,
    handle_integrity_error,
    handle_unexpected_error,
)

log = logging.getLogger(__name__)


def get_db() -> Database:
    database: Database = current_app.extensions["db"]
    return database


def get_session() -> Session:
    """The request's session, opened on first use and tagged for the audit trigger."""
    if "db_session" not in g:
        session = get_db().session_factory()
        set_audit_context(
            session,
            ip_address=request.remote_addr,
            user_agent=request.user_agent.string[:512] or None,
            request_id=g.get("request_id"),
            user_id=g.get("audit_user_id"),  # once the caller is known
        )
        g.db_session = session
    return g.db_session  # type: ignore[no-any-return]


def after_commit(callback: Callable[[], None]) -> None:
    """Run `callback` once this request's changes are committed (never if they are not).

    For side effects that must not happen for data that was rolled back, such as handing
    a new request to the broker. A failing callback is logged; the answer stands.
    """
    g.setdefault("after_commit", []).append(callback)


def _run_after_commit() -> None:
    for callback in g.pop("after_commit", []):
        try:
            callback()
        except Exception:
            log.exception("after-commit step failed")


def keep_changes_on_error() -> None:
    """Commit this request's changes even though it answers with an error.

    For records that must outlive a refusal: a failed login's counter and audit entry, the
    revocation that follows a reused refresh token. Call it just before raising.
    """
    g.keep_changes_on_error = True


def _discard(session: Session) -> None:
    """Roll back; a connection that died meanwhile has nothing left to undo (the pool drops
    it), so a failure here must not turn the answer into a 500."""
    try:
        session.rollback()
    except SQLAlchemyError as error:
        log.warning("rollback failed: %s", type(error).__name__)


def commit_or_rollback(response: Response) -> Response:
    """Runs before the response leaves, so a failed commit still changes the answer."""
    session: Session | None = g.get("db_session")
    if session is None:
        return response
    if response.status_code >= 400 and not g.get("keep_changes_on_error"):
        _discard(session)
        return response
    try:
        session.commit()
    except IntegrityError as error:
        _discard(session)
        return handle_integrity_error(error)
    except SQLAlchemyError as error:
        _discard(session)
        if database_unreachable(error):
            log.warning("commit failed: database unreachable: %s", type(error).__name__)
            return database_unavailable_response("The change could not be saved; try again.")
        return handle_unexpected_error(error)
    _run_after_commit()
    return response


def end_unit_of_work(*, commit: bool = True) -> None:
    """Commit (or roll back) and release the request's session now, for a request that goes
    on long after its database work is done (a WebSocket): an open socket must not hold a
    database connection."""
    session: Session | None = g.pop("db_session", None)
    if session is None:
        return
    try:
        if commit:
            session.commit()
            _run_after_commit()
    finally:
        _close(session)


def _close(session: Session) -> None:
    try:
        session.close()  # rolls back whatever was not committed
    except SQLAlchemyError as error:  # a dead connection: the pool has dropped it
        log.warning("closing the session failed: %s", type(error).__name__)


def close_session(_error: BaseException | None = None) -> None:
    session: Session | None = g.pop("db_session", None)
    if session is not None:
        _close(session)


def init_database(app: Flask, database: Database) -> None:
    app.extensions["db"] = database
    app.after_request(commit_or_rollback)
    app.teardown_request(close_session)
