"""The service behind a connection pooler: a real PgBouncer (session pooling) in front of
the test PostgreSQL, as hospitals on Kubernetes often run it (CloudNativePG's Pooler).

The CDS path's connections asked for their settings as startup options, which PgBouncer
refuses ("unsupported startup parameter: options"): behind one, every hook call failed
its replay check (found by trying). They are now set once a connection is open."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from service.cds.batching import CONNECT_TIMEOUT, PostgresWrites
from service.db import migrate
from service.db.base import Database
from service.db.models import CdsSeenToken
from tests.support.cds import (
    PUBLIC_URL,
    Cds,
    Ehr,
    ehr,
    make_cds_app,
    only_card,
    tenant_config,
)
from tests.support.pooler import paused, pgbouncer_in_front_of

__all__ = ["ehr"]  # the fixture

pytestmark = pytest.mark.postgres


@pytest.fixture
def pooled(postgres_url: str) -> Iterator[tuple[str, Database]]:
    """A migrated database (migrated through the pooler too) and the service's access to
    it, both through PgBouncer."""
    with pgbouncer_in_front_of(postgres_url) as url:
        migrate.upgrade(url)
        database = Database(url)
        try:
            yield url, database
        finally:
            database.dispose()


def test_hook_calls_are_answered_and_their_tokens_remembered_through_pgbouncer(
    pooled: tuple[str, Database], ehr: Ehr
) -> None:
    url, database = pooled
    app = make_cds_app(url, database)
    with TestClient(app, base_url=PUBLIC_URL) as client:
        cds = Cds(app, client, ehr, database)
        cds.configure(tenant_config(ehr))
        token = ehr.token(f"{PUBLIC_URL}/cds-services/kindreflex-encounter-start")

        card = only_card(cds.call(token=token))
        replayed = cds.call(token=token)

        assert card["summary"]  # answered: a card, not an error
        assert cds.count(CdsSeenToken) == 1
        assert replayed.status_code == 401, replayed.text  # the replay check holds


def test_the_cds_writes_skip_the_flush_and_bound_their_statements_through_pgbouncer(
    pooled: tuple[str, Database],
) -> None:
    """What the CDS path's connections were promised (``service.cds.batching``): no wait
    for the disk flush, a statement cut off after 5 s; the service's own, a lock waited
    for at most LOCK_TIMEOUT_SECONDS."""
    _, database = pooled
    writes = PostgresWrites(database)

    async def settings_of_a_cds_connection() -> tuple[str, str]:
        connection = await writes._connect()
        try:
            cursor = await connection.execute(
                "SELECT current_setting('synchronous_commit'), current_setting('statement_timeout')"
            )
            row = await cursor.fetchone()
            assert row is not None
            return row[0], row[1]
        finally:
            await connection.close()

    assert asyncio.run(settings_of_a_cds_connection()) == ("off", "5s")
    with writes._upkeep_engine.connect() as connection:
        upkeep = connection.execute(text("SELECT current_setting('synchronous_commit')"))
        assert upkeep.scalar() == "off"
    with database.session() as session:
        assert session.scalar(text("SELECT current_setting('lock_timeout')")) == "1min"


def test_a_cds_connection_gives_up_in_seconds_when_the_pooler_holds_its_statements(
    pooled: tuple[str, Database],
) -> None:
    """Behind a pooler the login succeeds at once, and the first statement waits for a
    server connection: up to PgBouncer's query_wait_timeout (120 s by default). The CDS
    path's connect was bounded, its settings were not, and a hook call waited that long
    (found by review). Connect and settings now fail together within CONNECT_TIMEOUT."""
    url, database = pooled
    writes = PostgresWrites(database)
    asyncio.run(_closed(writes))  # the pool knows the server: a login needs none now

    async def attempt() -> float:
        with paused(url):
            started = time.monotonic()
            with pytest.raises(psycopg.OperationalError):
                await writes._connect()
            return time.monotonic() - started

    assert asyncio.run(attempt()) < CONNECT_TIMEOUT + 2


async def _closed(writes: PostgresWrites) -> None:
    await (await writes._connect()).close()
