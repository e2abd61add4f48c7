"""Fixtures shared by every test: databases on SQLite and on the real PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

# The helpers in tests/support assert too (only_card, assert_tied, the workshop's episodes):
# their failures are explained as a test module's are. Before any of them is imported.
pytest.register_assert_rewrite("tests.support")

from service.db import migrate  # noqa: E402
from service.db.base import Database  # noqa: E402
from tests.support.postgres import throwaway_postgres_database  # noqa: E402


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database, once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'kindreflex.db'}"
        return
    with throwaway_postgres_database() as url:
        yield url


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """An empty PostgreSQL database, for what only PostgreSQL does (mark the test postgres)."""
    with throwaway_postgres_database() as url:
        yield url


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    """A migrated database on each backend."""
    migrate.upgrade(database_url)
    db = Database(database_url)
    try:
        yield db
    finally:
        db.dispose()
