"""Password hashing (bcrypt) and the password policy."""

from __future__ import annotations

import bcrypt

MIN_PASSWORD_LENGTH = 10
# bcrypt reads at most 72 bytes; refusing longer input avoids silent truncation.
MAX_PASSWORD_BYTES = 72
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


def password_problems(password: str, *, username: str | None = None) -> list[str]:
    """Why `password` is not acceptable; an empty list when it is."""
    problems = []
    if len(password) < MIN_PASSWORD_LENGTH:
        problems.append(f"must be at least {MIN_PASSWORD_LENGTH} characters long")
    if len(password.encode()) > MAX_PASSWORD_BYTES:
        problems.append(f"must be at most {MAX_PASSWORD_BYTES} bytes long")
    if username and password.lower() == username.lower():
        problems.append("must not be the username")
    if password.lower() in COMMON_PASSWORDS:
        problems.append("is too common")
    return problems


def hash_password(password: str, rounds: int = 12) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds)).decode()


def verify_password(password: str, password_hash: str) -> bool:
    """False for a wrong password and for a hash that is not bcrypt (erased accounts)."""
    try:
        return bcrypt.checkpw(password.encode()[:MAX_PASSWORD_BYTES], password_hash.encode())
    except ValueError:
        return False


def spend_verification_time(password: str, rounds: int) -> None:
    """Do the work of one verification, so an unknown user answers as slowly as a known one."""
    bcrypt.checkpw(password.encode()[:MAX_PASSWORD_BYTES], _dummy_hash(rounds))


_DUMMY_HASHES: dict[int, bytes] = {}


def _dummy_hash(rounds: int) -> bytes:
    if rounds not in _DUMMY_HASHES:
        _DUMMY_HASHES[rounds] = bcrypt.hashpw(b"not-a-real-password", bcrypt.gensalt(rounds))
    return _DUMMY_HASHES[rounds]
