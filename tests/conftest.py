"""Fixtures shared by every test: databases on SQLite and on the real PostgreSQL."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from service.db import migrate
from service.db.base import Database

# The server the test suite creates its throw-away databases on (see README).
POSTGRES_ADMIN_URL = os.environ.get(
    "KINDREFLEX_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


def _create_postgres_database() -> str:
    name = f"kindreflex_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as error:
        # Not a skip: the suite promises PostgreSQL coverage, so an absent server fails loudly.
        raise RuntimeError(
            f"PostgreSQL is not reachable at {make_url(POSTGRES_ADMIN_URL)!r}: start it "
            "(README, 'Running the tests') or set KINDREFLEX_TEST_POSTGRES_URL"
        ) from error
    finally:
        admin.dispose()
    return make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)


def _drop_postgres_database(url: str) -> None:
    name = make_url(url).database
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database, once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'kindreflex.db'}"
        return
    url = _create_postgres_database()
    try:
        yield url
    finally:
        _drop_postgres_database(url)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """An empty PostgreSQL database, for what only PostgreSQL does (mark the test postgres)."""
    url = _create_postgres_database()
    try:
        yield url
    finally:
        _drop_postgres_database(url)


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    """A migrated database on each backend."""
    migrate.upgrade(database_url)
    db = Database(database_url)
    try:
        yield db
    finally:
        db.dispose()
