"""Domain operations on accounts. They flush; the caller's unit of work commits."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.models import Role, User


class UserExistsError(Exception):
    def __init__(self, field: str) -> None:
        super().__init__(f"a user with this {field} already exists")
        self.field = field


def find_conflict(*, session: Session, username: str, email: str) -> str | None:
    """Which of username / email is taken (case-insensitively), if any."""
    taken = session.execute(
        select(func.lower(User.username), func.lower(User.email)).where(
            (func.lower(User.username) == username.lower())
            | (func.lower(User.email) == email.lower())
        )
    ).first()
    if taken is None:
        return None
    return "username" if taken[0] == username.lower() else "email"


def create_user(
    *, session: Session, username: str, email: str, password_hash: str, role: Role = Role.USER
) -> User:
    conflict = find_conflict(session=session, username=username, email=email)
    if conflict:
        raise UserExistsError(conflict)
    user = User(username=username, email=email, password_hash=password_hash, role=role)
    session.add(user)
    session.flush()
    return user
