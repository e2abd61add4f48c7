"""Run the Alembic migrations programmatically (``kindreflex db upgrade``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from alembic import command
from alembic.config import Config
from sqlalchemy.exc import OperationalError

MIGRATIONS = "service.db:migrations"
#: How long a migration statement may wait for a table lock on PostgreSQL. While an
#: ALTER TABLE waits in the lock queue, every query of the running service on that table
#: queues behind it: a long report or a stuck transaction would stall the service until
#: the Job's deadline. Past this wait the migration fails, is rolled back whole
#: (PostgreSQL's DDL is transactional) and the Job tries again (``backoffLimit``).
LOCK_TIMEOUT_MS = 10_000


class MigrationLockedError(RuntimeError):
    """A migration gave up waiting for a lock another connection holds; nothing changed."""


def alembic_config(database_url: str, lock_timeout_ms: int = LOCK_TIMEOUT_MS) -> Config:
    config = Config()
    config.attributes["lock_timeout_ms"] = lock_timeout_ms
    config.set_main_option("script_location", MIGRATIONS)
    # Alembic's ini interpolation would read '%' in a password as a placeholder.
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(
    database_url: str, revision: str = "heads", *, lock_timeout_ms: int = LOCK_TIMEOUT_MS
) -> None:
    """Bring the database to the newest schema (all heads: features migrate independently).

    Raises ``MigrationLockedError`` when a lock could not be had in time."""
    with _lock_waits_bounded():
        command.upgrade(alembic_config(database_url, lock_timeout_ms), revision)


def downgrade(database_url: str, revision: str = "base") -> None:
    with _lock_waits_bounded():
        command.downgrade(alembic_config(database_url), revision)


@contextmanager
def _lock_waits_bounded() -> Iterator[None]:
    try:
        yield
    except OperationalError as error:
        if getattr(error.orig, "sqlstate", None) != LOCK_NOT_AVAILABLE:
            raise
        raise MigrationLockedError(
            "another connection holds a lock on a table this migration changes; nothing "
            "was changed. Try again when it is released (PostgreSQL's pg_locks and "
            "pg_stat_activity show which session holds it)."
        ) from error


LOCK_NOT_AVAILABLE = "55P03"  # PostgreSQL's SQLSTATE for a lock_timeout
