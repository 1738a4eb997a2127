"""Schemas shared by every resource: pagination."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Generic, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from db.fleet import canonical_model_name

ItemT = TypeVar("ItemT")
MODEL_NAME_MAX = 255  # the model_name and models.name columns


def fits_with_its_tag(name: str) -> str:
    """A model name is stored with its tag (`:latest` when none is given): that must fit too."""
    if len(canonical_model_name(name)) > MODEL_NAME_MAX:
        raise ValueError(f"with its tag (:latest if none), at most {MODEL_NAME_MAX} characters")
    return name


def _as_utc(value: datetime) -> datetime:
    """A time without an offset is taken as UTC (never the database session's zone); one with
    an offset is moved to UTC here, because PostgreSQL refuses offsets beyond 15:59 that
    Python accepts (up to 23:59), and a time near year 1 or 9999 can leave Python's range."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("the time is out of range") from None


# A point in time given by a client (a filter bound), always aware and in UTC.
UtcDateTime = Annotated[datetime, AfterValidator(_as_utc)]


class PageQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")

    page: int = Field(default=1, ge=1, le=100_000)
    per_page: int = Field(default=20, ge=1, le=100)

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.per_page


class Page(BaseModel, Generic[ItemT]):
    items: list[ItemT]
    total: int
    page: int
    per_page: int


class Items(BaseModel, Generic[ItemT]):
    """A short, complete list (no paging)."""

    items: list[ItemT]
