"""Alembic environment: one connection, batch mode on SQLite (it cannot ALTER most things)."""

from __future__ import annotations

from alembic import context

from service.db import models  # noqa: F401 - registers every table on Base.metadata
from service.db.base import Base, make_engine
from service.db.migrate import LOCK_TIMEOUT_MS

target_metadata = Base.metadata
#: The advisory lock one upgrade of the schema holds at a time ("KRED" in ASCII).
MIGRATION_LOCK = 0x4B524544


def run_migrations() -> None:
    url = context.config.get_main_option("sqlalchemy.url")
    assert url, "sqlalchemy.url is not set"
    engine = make_engine(url)
    with engine.connect() as connection:
        if connection.dialect.name == "postgresql":  # see LOCK_TIMEOUT_MS
            timeout = int(context.config.attributes.get("lock_timeout_ms", LOCK_TIMEOUT_MS))
            connection.exec_driver_sql(f"SET lock_timeout = {timeout}")
            connection.commit()  # the setting stays for the session; the migration's
            # transaction starts afresh below
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            if connection.dialect.name == "postgresql":
                # Two upgrades at once (a Job retried, a person at the console): the second
                # waits here for the first to commit, then finds the schema current. It
                # failed half-way with a traceback before (a unique violation creating a
                # type); the wait is bounded by the lock_timeout above.
                connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
            context.run_migrations()
    engine.dispose()


run_migrations()
