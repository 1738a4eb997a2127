"""A socket outlives the moment it was authorized: its credential is checked again while it
stays open, so logging out, revoking a key or an access token's expiry closes it (1008).
Its seat in the account's WebSocket quota is renewed on the same rounds."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError

from db.credentials import api_key_usable
from db.session import Database
from web.realtime.seats import Seat
from web.security.principal import Principal
from web.security.tokens import REVOKED_FAMILY_KEY

log = logging.getLogger(__name__)


@dataclass
class Access:
    principal: Principal
    expires_at: float | None  # epoch seconds: an access token's `exp`
    recheck_s: float
    redis: Redis
    database: Database
    seat: Seat | None = None  # its place in the account's WebSocket quota
    next_check: float = 0.0

    def __post_init__(self) -> None:
        self.next_check = time.monotonic() + self.recheck_s

    def lapsed(self) -> str | None:
        """None while the credential holds; otherwise the error code to close with."""
        if self.seat is not None:
            self.seat.renew_if_due()
        if self.expires_at is not None and time.time() >= self.expires_at:
            return "token_expired"
        if time.monotonic() < self.next_check:
            return None
        self.next_check = time.monotonic() + self.recheck_s
        try:
            return self._revoked()
        except (RedisError, SQLAlchemyError) as error:
            # The feed may be down with them; the next check decides.
            log.warning("could not re-check a socket's credential: %s", error)
            return None

    def _revoked(self) -> str | None:
        principal = self.principal
        if principal.family_id is not None:
            if self.redis.exists(REVOKED_FAMILY_KEY.format(principal.family_id)):
                return "token_revoked"
        elif principal.api_key_id is not None:
            with self.database.unit_of_work() as session:
                if not api_key_usable(session=session, key_id=principal.api_key_id):
                    return "invalid_api_key"
        return None
