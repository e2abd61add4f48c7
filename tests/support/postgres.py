"""Throw-away PostgreSQL databases on the test server, for the suite's fixtures and the
benchmarks (``tests/bench``)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

# The server the test suite creates its throw-away databases on (see README).
POSTGRES_ADMIN_URL = os.environ.get(
    "KINDREFLEX_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


@contextmanager
def throwaway_postgres_database() -> Iterator[str]:
    """The URL of a new, empty database on POSTGRES_ADMIN_URL's server, dropped on exit
    (forcibly: a test that failed may leave connections open)."""
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
    try:
        yield make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def refusing_connections(url: str) -> Iterator[None]:
    """The database at ``url`` down for the block, as a restart makes it: its connections
    are ended and new ones refused; then it takes them again."""
    with _changed(url, "ALLOW_CONNECTIONS false", "ALLOW_CONNECTIONS true"):
        yield


@contextmanager
def read_only(url: str) -> Iterator[None]:
    """The database at ``url`` takes no writes for the block, as a standby does when the
    service's connections reach it after a fail-over; its connections start anew."""
    on, off = "SET default_transaction_read_only = on", "RESET default_transaction_read_only"
    with _changed(url, on, off):
        yield


@contextmanager
def _changed(url: str, change: str, back: str) -> Iterator[None]:
    """``ALTER DATABASE … change`` for the block; its connections end at the start and at
    the end, so that each new one has the setting of the moment."""
    name = make_url(url).database
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")

    def alter(setting: str) -> None:
        with admin.connect() as connection:
            connection.execute(text(f'ALTER DATABASE "{name}" {setting}'))
            connection.execute(
                text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"),
                {"n": name},
            )

    try:
        alter(change)
        yield
    finally:
        alter(back)
        admin.dispose()
