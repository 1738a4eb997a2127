"""One way to page through a query: a total, one page of rows, the pydantic shape."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel
from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from web.schemas.common import Page, PageQuery

ReadT = TypeVar("ReadT", bound=BaseModel)


def paginate(
    session: Session,
    query: Select[Any],
    order_by: tuple[Any, ...],
    page: PageQuery,
    schema: type[ReadT],
) -> dict[str, Any]:
    """`{items, total, page, per_page}` for `query` (a select of one entity)."""
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(query.order_by(*order_by).offset(page.offset).limit(page.per_page))
    return Page[schema](  # type: ignore[valid-type]
        items=[schema.model_validate(row) for row in rows],
        total=total,
        page=page.page,
        per_page=page.per_page,
    ).model_dump(mode="json")
