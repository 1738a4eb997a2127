"""Alembic environment: the URL comes from our settings; partitions are not drift."""

from __future__ import annotations

import re

from alembic import context
from sqlalchemy import create_engine, pool

from config.settings import get_settings
from db import models  # noqa: F401  (fills Base.metadata for autogenerate and check)
from db.base import Base

# Monthly partitions and the default partition are created by SQL functions,
# not by the models, so autogenerate must not report them as extra tables.
PARTITION_NAME = re.compile(r"^audit_log_entries_(\d{4}_\d{2}|default)$")


def include_name(name: str | None, type_: str, parent_names: object) -> bool:
    return not (type_ == "table" and name is not None and PARTITION_NAME.match(name))


def run_migrations(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        include_name=include_name,
        compare_type=True,
        compare_server_default=False,
    )
    with context.begin_transaction():
        context.run_migrations()


def main() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        run_migrations(connection)
        return
    url = context.config.get_main_option("sqlalchemy.url") or get_settings().database_url
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        run_migrations(connection)


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported: run against a database")
main()
