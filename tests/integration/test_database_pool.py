"""The PostgreSQL connection pool is sized by the settings, and readiness does not wait on it.

A hospital behind PgBouncer, or running several replicas, sizes each instance's pool for
its PostgreSQL's ``max_connections`` (README, *On PostgreSQL*); the pool was fixed in
code. Readiness asked through that pool: with every connection held by requests, the
probe waited for one (30 s, the pool's timeout, past the probe's 3 s) and the pod was
taken out of its Service for being busy (docs/architecture.md, *Persistence*).

The pool's connections are held here by the test itself, checked out and kept until it
lets them go: no sleeps, no load.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Connection, create_engine, text
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.pool import QueuePool

from service.app import create_app
from service.db import migrate
from service.db.base import Database
from service.settings import Settings
from tests.support.postgres import POSTGRES_ADMIN_URL

pytestmark = pytest.mark.postgres


def settings(url: str, pool_size: int, max_overflow: int) -> Settings:
    """As the environment gives them (``KINDREFLEX_DATABASE_POOL_SIZE=…``)."""
    return Settings(
        _env_file=None,
        environment="test",
        database_url=url,
        database_pool_size=str(pool_size),
        database_max_overflow=str(max_overflow),
    )


@contextmanager
def held(database: Database, count: int) -> Iterator[list[Connection]]:
    """``count`` of the pool's connections, each having asked the database, held until the
    block ends, as requests waiting on a slow statement hold them."""
    with ExitStack() as stack:
        connections = [stack.enter_context(database.engine.connect()) for _ in range(count)]
        for connection in connections:
            connection.execute(text("SELECT 1"))
        yield connections


def backends(url: str) -> int:
    """The server's connections to the database of ``url`` (not the admin's own)."""
    name = url.rsplit("/", 1)[1].split("?")[0]
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            return int(
                connection.execute(
                    text("SELECT count(*) FROM pg_stat_activity WHERE datname = :n"), {"n": name}
                ).scalar_one()
            )
    finally:
        admin.dispose()


def test_the_pool_opens_and_keeps_as_many_connections_as_the_settings_say(
    postgres_url: str,
) -> None:
    database = Database.of(settings(postgres_url, pool_size=2, max_overflow=1))
    try:
        with held(database, 3):
            assert backends(postgres_url) == 3
            # a fourth waits for one of them (the pool's 30 s): asked not to wait, it fails
            pool = database.engine.pool
            assert isinstance(pool, QueuePool)
            pool._timeout = 0  # its wait, which has no public setter
            with pytest.raises(PoolTimeoutError):
                database.engine.connect()
        # the overflow's connection is closed when given back; the pool's two are kept
        assert backends(postgres_url) == 2
    finally:
        database.dispose()


def test_readiness_answers_at_once_with_every_pooled_connection_held(postgres_url: str) -> None:
    """Ready: the database answers and takes writes, asked on a connection of its own. The
    detail says the pool is full, for the operator who looks at a busy instance."""
    migrate.upgrade(postgres_url)
    configured = settings(postgres_url, pool_size=1, max_overflow=1)
    database = Database.of(configured)
    try:
        client = TestClient(create_app(configured, database))  # no lifespan: no outbox worker
        with held(database, 2):
            probe = client.get("/readyz", params={"check": "database"})
            full = client.get("/readyz")
        assert probe.status_code == 200, probe.text
        assert probe.json()["checks"]["database"] == {
            "ok": True,
            "detail": "reachable; 2 of 2 pooled connections in use",
        }
        assert full.status_code == 200, full.text
        assert full.json()["checks"]["outbox"] == {"ok": True, "detail": "empty"}
        # the readiness checks' connections were closed, not kept beside the pool's one
        assert backends(postgres_url) == 1
    finally:
        database.dispose()


def test_on_sqlite_the_pool_settings_change_nothing(tmp_path: Path) -> None:
    """SQLite keeps SQLAlchemy's own pool, whatever the settings say, and readiness asks
    through it as before (an in-memory database is the one connection it holds)."""
    url = f"sqlite:///{tmp_path / 'kr.db'}"
    default, configured = Database(url), Database.of(settings(url, pool_size=1, max_overflow=0))
    try:
        assert configured.engine.pool.status() == default.engine.pool.status()
        assert configured.probe_engine is configured.engine
        assert configured.pool_in_use() is None
    finally:
        default.dispose()
        configured.dispose()
