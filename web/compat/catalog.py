"""The registry as the front doors show it: what callers may ask for by name."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select

from db.fleet import canonical_model_name
from db.models import Model, ModelStatus
from web.database import get_session


def available_models() -> Sequence[Model]:
    """Models held by a node and not disabled, by name."""
    return (
        get_session()
        .scalars(select(Model).where(Model.status == ModelStatus.AVAILABLE).order_by(Model.name))
        .all()
    )


def model_named(name: str, *, available_only: bool = False) -> Model | None:
    """The model `name` (a missing tag means `:latest`), unless disabled; with
    `available_only`, unless no node holds it either."""
    model = get_session().scalar(select(Model).where(Model.name == canonical_model_name(name)))
    if model is None or model.status == ModelStatus.DISABLED:
        return None
    if available_only and model.status != ModelStatus.AVAILABLE:
        return None
    return model
