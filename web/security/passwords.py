"""Password hashing (bcrypt), the password policy (zxcvbn) and constant-work verification."""

from __future__ import annotations

import re

import bcrypt
from flask import current_app, has_app_context
from zxcvbn import zxcvbn

from config.settings import get_settings
from web.errors import ValidationFailed

MIN_PASSWORD_LENGTH = 10
# bcrypt reads at most 72 bytes; refusing longer input avoids silent truncation.
MAX_PASSWORD_BYTES = 72
# Refused whatever their estimated strength: our own name and its obvious variants, which a
# general-purpose estimator does not know to be guessed first here.
COMMON_PASSWORDS = frozenset(
    {
        "1234567890",
        "123456789a",
        "changeme123",
        "iloveyou123",
        "letmein1234",
        "password12",
        "password123",
        "password1234",
        "qwerty1234",
        "qwertyuiop",
        "welcome123",
        "administrator",
        "admin12345",
        "ollamamax123",
    }
)
# Words zxcvbn should treat as guessed first, besides the account's own name and email.
SITE_WORDS = ("ollamamax", "ollama", "omx")


def _min_score() -> int:
    settings = current_app.extensions["settings"] if has_app_context() else get_settings()
    return int(settings.password_min_score)


def _user_inputs(username: str | None, email: str | None) -> list[str]:
    """What zxcvbn should treat as guessed first: our name, the account's username and email,
    and their parts ("carol.smith2" also gives "carol" and "smith")."""
    values = [value.lower() for value in (username, email) if value]
    if email:
        local, _, domain = email.lower().partition("@")
        values += [local, domain]
    parts = [part for value in values for part in re.split(r"[^a-z]+", value) if len(part) >= 3]
    return list(dict.fromkeys([*SITE_WORDS, *values, *parts]))


def password_problems(
    password: str,
    *,
    username: str | None = None,
    email: str | None = None,
    min_score: int | None = None,
) -> list[str]:
    """Why `password` is not acceptable; an empty list when it is.

    Length first (at least MIN_PASSWORD_LENGTH characters, at most MAX_PASSWORD_BYTES bytes,
    not whitespace only), then the account's own name and email, a short local list, and
    zxcvbn's strength estimate, which knows common passwords, names, words, keyboard runs,
    repeats, dates and the account's own details (passed as its user inputs). The estimate
    must reach `min_score` (PASSWORD_MIN_SCORE, 0 to 4) out of 4.
    """
    problems = []
    if not password.strip():
        problems.append("must not be whitespace only")
    if len(password) < MIN_PASSWORD_LENGTH:
        problems.append(f"must be at least {MIN_PASSWORD_LENGTH} characters long")
    if len(password.encode()) > MAX_PASSWORD_BYTES:
        problems.append(f"must be at most {MAX_PASSWORD_BYTES} bytes long")
    if problems:
        return problems  # the estimate is pointless for these (and slow for long input)
    if username and password.lower() == username.lower():
        problems.append("must not be the username")
    if email and password.lower() == email.lower():
        problems.append("must not be the email")
    if password.lower() in COMMON_PASSWORDS:
        problems.append("is too common")
    required = _min_score() if min_score is None else min_score
    estimate = zxcvbn(password, user_inputs=_user_inputs(username, email))
    if estimate["score"] < required:
        warning = estimate["feedback"].get("warning") or ""
        problems.append(
            f"is too easy to guess (strength {estimate['score']} of 4, at least {required} "
            "needed" + (f": {warning.rstrip('.')}" if warning else "") + ")"
        )
    return problems


def refuse_weak_password(
    password: str, *, username: str, email: str, field: str = "password"
) -> None:
    """422 when `password` breaks the policy for this account (web/security/passwords.py)."""
    problems = password_problems(password, username=username, email=email)
    if problems:
        message = "password " + "; ".join(problems)
        raise ValidationFailed(
            details=[{"field": f"body.{field}", "message": message, "type": "policy"}]
        )


def hash_password(password: str, rounds: int = 12) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds)).decode()


def verify_password(password: str, password_hash: str) -> bool:
    """False for a wrong password and for a hash that is not bcrypt (erased accounts)."""
    try:
        return _checkpw(password, password_hash.encode())
    except ValueError:
        return False


def verify_with_constant_work(password: str, password_hash: str | None, rounds: int) -> bool:
    """Exactly one bcrypt verification whatever the case, so that the answer's time tells
    nothing: against `password_hash` when there is one to check, otherwise (an unknown or
    inactive account, a hash that is not bcrypt) against a dummy hash of cost `rounds`, and
    then False. A caller that will refuse anyway (a locked account) still calls this."""
    if password_hash is not None:
        try:
            return _checkpw(password, password_hash.encode())
        except ValueError:
            pass
    _checkpw(password, _dummy_hash(rounds))
    return False


def _checkpw(password: str, hashed: bytes) -> bool:
    """The one place a password is verified (tests count the calls)."""
    return bcrypt.checkpw(password.encode()[:MAX_PASSWORD_BYTES], hashed)


_DUMMY_HASHES: dict[int, bytes] = {}


def _dummy_hash(rounds: int) -> bytes:
    if rounds not in _DUMMY_HASHES:
        _DUMMY_HASHES[rounds] = bcrypt.hashpw(b"not-a-real-password", bcrypt.gensalt(rounds))
    return _DUMMY_HASHES[rounds]
