"""Alembic environment: one connection, batch mode on SQLite (it cannot ALTER most things)."""

from __future__ import annotations

from alembic import context

from service.db import models  # noqa: F401 - registers every table on Base.metadata
from service.db.base import Base, make_engine

target_metadata = Base.metadata


def run_migrations() -> None:
    url = context.config.get_main_option("sqlalchemy.url")
    assert url, "sqlalchemy.url is not set"
    engine = make_engine(url)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run_migrations()
