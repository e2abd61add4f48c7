"""The CDS path's own writes (``service.cds.batching``): the jti ledger and the issued
cards committed together, on SQLite files and PostgreSQL, against real databases.

The lock held by "another writer" is a real SQLite write transaction on a second
connection, as the outbox or an administrator's save would hold it.
"""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy import Engine, event, func, insert, select

from service.cds.auth import PURGE_CHUNK, SEEN_TOKENS, ReplayCheckUnavailableError, SeenTokens
from service.cds.batching import (
    CONNECT_TIMEOUT,
    GroupCommit,
    PostgresWrites,
    SqliteWrites,
    WriteFailedError,
    fast_writes,
)
from service.cds.issued import CARDS, IssuedCards, Presentation
from service.cds.rules import Advice
from service.db import migrate
from service.db.base import Database
from service.db.models import CdsCard, CdsSeenToken
from service.tenancy import SecretBox, TenantDirectory
from service.tenant_config import TenantConfiguration

ISSUER = "https://ehr.example/cds"


def soon() -> datetime:
    """An expiry five minutes from the moment of the call: a module-level constant was past
    by the time a long test run reached these tests, and the purge removed its rows."""
    return datetime.now(UTC) + timedelta(minutes=5)


SEEN = Presentation("https://ehr.example/fhir", "p1", "enc-1", datetime.now(UTC).date())


@pytest.fixture
def tenant_id(database: Database) -> int:
    return (
        TenantDirectory(database, SecretBox(None))
        .save("default", TenantConfiguration(name="AZ"), actor="test")
        .id
    )


@pytest.fixture
def sqlite_database(tmp_path: Path) -> Iterator[Database]:
    url = f"sqlite:///{tmp_path / 'cds.db'}"
    migrate.upgrade(url)
    database = Database(url)
    TenantDirectory(database, SecretBox(None)).save(
        "default", TenantConfiguration(name="AZ"), actor="test"
    )
    try:
        yield database
    finally:
        database.dispose()


def count(database: Database, model: type[CdsCard] | type[CdsSeenToken]) -> int:
    with database.session() as session:
        return session.scalar(select(func.count()).select_from(model)) or 0


def test_concurrent_calls_share_writes_and_a_replay_in_the_same_batch_is_caught(
    database: Database, tenant_id: int
) -> None:
    async def calls() -> list[bool]:
        commits = GroupCommit(fast_writes(database))
        seen, issued = SeenTokens(commits), IssuedCards(commits, b"test")
        jtis = [uuid.uuid4().hex for _ in range(30)] + ["replayed", "replayed"]
        uses = [seen.first_use(tenant_id, ISSUER, jti, soon()) for jti in jtis]
        cards = [
            issued.record(tenant_id, "svc", str(uuid.uuid4()), Advice("info"), SEEN)
            for _ in range(10)
        ]
        results = await asyncio.gather(*uses)
        await asyncio.gather(*cards)
        await commits.flushed()
        return results

    results = asyncio.run(calls())
    assert results[:30] == [True] * 30
    assert sorted(results[30:]) == [False, True]  # exactly one of the two uses is accepted
    assert count(database, CdsSeenToken) == 31
    assert count(database, CdsCard) == 10  # the refused jti did not take the cards with it


def test_a_row_the_database_refuses_fails_alone_not_its_batch(
    database: Database, tenant_id: int
) -> None:
    """PostgreSQL refuses a NUL in text: the batch it was in failed, and every call in it
    (of any hospital) got 503 (found by fuzzing). Row by row, only that row fails."""

    async def calls() -> list[bool | BaseException]:
        commits = GroupCommit(fast_writes(database))
        seen = SeenTokens(commits)
        jtis = [uuid.uuid4().hex for _ in range(10)] + ["a\x00b"]
        uses = [seen.first_use(tenant_id, ISSUER, jti, soon()) for jti in jtis]
        results = await asyncio.gather(*uses, return_exceptions=True)
        await commits.flushed()
        return results

    results = asyncio.run(calls())
    assert results[:10] == [True] * 10
    if database.engine.dialect.name == "postgresql":
        assert isinstance(results[10], ReplayCheckUnavailableError)
        assert count(database, CdsSeenToken) == 10
    else:  # SQLite stores it
        assert results[10] is True


def test_on_sqlite_the_writes_run_on_the_event_loop(sqlite_database: Database) -> None:
    threads: set[int] = set()

    def note_the_thread(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.startswith('INSERT INTO "cds_seen_tokens"') or "cds_seen_tokens" in statement:
            threads.add(threading.get_ident())

    async def calls() -> int:
        commits = GroupCommit(fast_writes(sqlite_database))
        rows = [token_row(uuid.uuid4().hex) for _ in range(20)]
        written = [commits.submit(SEEN_TOKENS, row) for row in rows]
        assert all(await asyncio.gather(*written))
        return threading.get_ident()

    event.listen(Engine, "before_cursor_execute", note_the_thread)
    try:
        loop_thread = asyncio.run(calls())
    finally:
        event.remove(Engine, "before_cursor_execute", note_the_thread)
    assert threads == {loop_thread}


def test_rows_written_by_the_fast_insert_read_back_as_the_orm_wrote_them(
    database: Database, tenant_id: int
) -> None:
    """The CDS path converts values itself (TableInsert): UTC timestamps and JSON must come
    back from the ORM exactly as they went in."""
    issued_at = datetime(2026, 11, 23, 21, 5, 7, 123456, tzinfo=UTC)
    row = {
        "tenant_id": tenant_id,
        "service_id": "svc",
        "card_uuid": str(uuid.uuid4()),
        "indicator": "warning",
        "reasons": ["domestic-violence", "open-concern"],
        "presentation": "k" * 64,
        "issued_at": issued_at,
    }

    async def write() -> bool:
        commits = GroupCommit(fast_writes(database))
        return await commits.submit(CARDS, row)

    assert asyncio.run(write()) is True
    with database.session() as session:
        card = session.scalars(select(CdsCard)).one()
        assert card.reasons == ["domestic-violence", "open-concern"]
        assert card.issued_at == issued_at
        recent = select(CdsCard).where(CdsCard.issued_at > issued_at - timedelta(seconds=1))
        assert session.scalars(recent).one() is card  # comparisons in SQL see the same time


@contextmanager
def another_writer(database: Database) -> Iterator[sqlite3.Connection]:
    """A write transaction on a second connection, as the outbox's committing a save;
    ``execute("COMMIT")`` on it lets go."""
    path = database.engine.url.database
    assert path is not None
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield connection
    finally:
        connection.close()


def test_while_another_writer_holds_sqlite_the_loop_goes_on_and_the_row_waits(
    sqlite_database: Database,
) -> None:
    async def call(other_writer: sqlite3.Connection) -> bool:
        commits = GroupCommit(fast_writes(sqlite_database))
        written = commits.submit(SEEN_TOKENS, token_row("held"))
        ticks = 0
        while ticks < 100:  # the loop keeps running while the database is held
            await asyncio.sleep(0)
            ticks += 1
        assert not written.done()
        other_writer.execute("COMMIT")
        return await written

    with another_writer(sqlite_database) as other_writer:
        assert asyncio.run(call(other_writer)) is True
    assert count(sqlite_database, CdsSeenToken) == 1


@pytest.mark.parametrize("limit_pages", [16_384, 8])
def test_a_write_ahead_log_past_its_limit_is_emptied_by_the_checkpoint(
    sqlite_database: Database, limit_pages: int
) -> None:
    """The checkpoint after a write copies the log into the database; a log grown past its
    limit is truncated as well (under a sustained load it never started over by itself)."""
    log = Path(f"{sqlite_database.engine.url.database}-wal")

    async def calls() -> None:
        writes = SqliteWrites(sqlite_database)
        writes.wal_limit_pages = limit_pages
        commits = GroupCommit(writes)
        SeenTokens(commits)  # its purge is the upkeep that a checkpoint follows
        rows = [token_row(uuid.uuid4().hex) for _ in range(500)]
        assert all(await asyncio.gather(*(commits.submit(SEEN_TOKENS, r) for r in rows)))
        await commits.flushed()  # the checkpoint included

    asyncio.run(calls())
    assert count(sqlite_database, CdsSeenToken) == 500
    pages = log.stat().st_size // 4096
    assert pages == 0 if limit_pages == 8 else pages > 8


def test_when_the_card_writes_fall_behind_the_calls_wait_for_their_row(
    sqlite_database: Database,
) -> None:
    async def calls(other_writer: sqlite3.Connection) -> None:
        commits = GroupCommit(fast_writes(sqlite_database))
        issued = IssuedCards(commits, b"test", max_backlog=2)

        def record() -> asyncio.Task[None]:
            card = str(uuid.uuid4())
            return asyncio.create_task(issued.record(1, "svc", card, Advice("info"), SEEN))

        first = record()
        await asyncio.sleep(0)  # the first batch is now being written (and waits)
        queued = [record() for _ in range(3)]
        await asyncio.sleep(0)
        assert first.done()  # below the bound nobody waits for the database
        assert [t.done() for t in queued] == [True, True, False]  # the third is over it
        other_writer.execute("COMMIT")
        await asyncio.gather(*queued)
        await commits.flushed()

    with another_writer(sqlite_database) as other_writer:
        asyncio.run(calls(other_writer))
    assert count(sqlite_database, CdsCard) == 4


def test_expired_jtis_are_purged_in_chunks(database: Database, tenant_id: int) -> None:
    expired = datetime.now(UTC) - timedelta(hours=1)
    rows = [token_row(f"old-{n}", tenant_id, expired) for n in range(PURGE_CHUNK + 10)]
    with database.engine.begin() as connection:
        connection.execute(insert(CdsSeenToken), [*rows, token_row("valid", tenant_id)])

    commits = GroupCommit(fast_writes(database))
    seen = SeenTokens(commits)
    with database.engine.begin() as connection:
        seen._purge_when_due(connection)
    assert count(database, CdsSeenToken) == 11  # one chunk, and the next one is due at once
    with database.engine.begin() as connection:
        seen._purge_when_due(connection)
    assert count(database, CdsSeenToken) == 1


def token_row(jti: str, tenant_id: int = 1, expires_at: datetime | None = None) -> dict[str, Any]:
    expiry = soon() if expires_at is None else expires_at
    return {"tenant_id": tenant_id, "issuer": ISSUER, "jti": jti, "expires_at": expiry}


def test_a_postgresql_that_does_not_answer_fails_the_write_instead_of_hanging() -> None:
    """A real socket that accepts the connection and then says nothing, as a hung server."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        database = Database(f"postgresql+psycopg://postgres@127.0.0.1:{port}/kindreflex")
        commits = GroupCommit(fast_writes(database))

        async def write() -> bool:
            written = commits.submit(SEEN_TOKENS, token_row("unanswered"))
            # a hang shows as TimeoutError here, not as the WriteFailedError expected
            await asyncio.wait_for(commits.flushed(), timeout=CONNECT_TIMEOUT + 10)
            return written.result()

        with pytest.raises(WriteFailedError):
            asyncio.run(write())
        database.dispose()


class _NoConnectionError(Exception):
    """Raised where the engine would connect: what it connects with is captured."""


def _what_the_engine_connects_with(database: Database) -> dict[str, str]:
    """The parameters the service's engine (``db upgrade``, the screens, /readyz) hands
    psycopg for a new connection, captured instead of connecting."""
    used: dict[str, Any] = {}

    def capture(_dialect: Any, _record: Any, _args: Any, kwargs: dict[str, Any]) -> None:
        used.update(kwargs)
        raise _NoConnectionError

    event.listen(database.engine, "do_connect", capture)
    try:
        with pytest.raises(_NoConnectionError):
            database.engine.connect()
    finally:
        event.remove(database.engine, "do_connect", capture)
    return {name: str(value) for name, value in used.items() if name != "context"}


@pytest.mark.parametrize(
    ("written", "timeout"),
    [
        # README: spaces in the password percent-encoded
        ("kindreflex:correct%20horse@db.hospital.example/kindreflex", CONNECT_TIMEOUT),
        # README: any libpq parameter after the '?'
        (
            "kindreflex@db.hospital.example/kindreflex"
            "?sslmode=verify-full&sslrootcert=/etc/kindreflex/Hospital%20CA.crt",
            CONNECT_TIMEOUT,
        ),
        (
            "kindreflex@db.hospital.example/kindreflex?options=-c%20search_path%3Dkr",
            CONNECT_TIMEOUT,
        ),
        ("kindreflex@db.hospital.example/kindreflex?connect_timeout=30", 30),
        (
            "kindreflex@/kindreflex?host=db1.hospital.example:5432&host=db2.hospital.example:5433",
            CONNECT_TIMEOUT,
        ),
    ],
)
def test_the_cds_path_connects_with_what_the_services_engine_connects_with(
    written: str, timeout: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CDS path opens psycopg connections of its own. It wrote the parsed URL back as a
    string: a percent-encoded space of the password came back bare, which libpq refuses
    ("unexpected spaces found", quoting the password), a space after the '?' came back as
    '+', which libpq takes as it is (``Hospital+CA.crt``, no such file), and of the hosts
    SQLAlchemy's multi-host form names only the last was left. Every hook call was a 503
    while /readyz said ready; and a connect_timeout the URL named was replaced by the
    path's own 3 s (found by review). The path's own timeout stays the default."""
    cds_uses: dict[str, str] = {}
    refused: list[str] = []

    async def connect(conninfo: str = "", *, autocommit: bool = False, **kwargs: Any) -> None:
        try:  # as psycopg reads them
            used = conninfo_to_dict(conninfo, **kwargs)
        except psycopg.ProgrammingError as error:
            refused.append(str(error))
            raise
        cds_uses.update({name: str(value) for name, value in used.items()})
        raise psycopg.OperationalError("no connection is made")

    monkeypatch.setattr(psycopg.AsyncConnection, "connect", connect)
    database = Database(f"postgresql+psycopg://{written}")
    try:
        engine_uses = _what_the_engine_connects_with(database)
        writes = fast_writes(database)

        async def write() -> None:
            submitted = GroupCommit(writes).submit(SEEN_TOKENS, token_row("parameters"))
            with pytest.raises(WriteFailedError):
                await asyncio.wait_for(submitted, timeout=10)

        asyncio.run(write())
    finally:
        database.dispose()
    assert refused == [], "libpq refuses the CDS path's parameters"
    cds_timeout, engine_timeout = (
        uses.pop("connect_timeout", None) for uses in (cds_uses, engine_uses)
    )
    assert cds_uses == engine_uses
    assert cds_timeout == str(timeout)
    if "connect_timeout" in written:
        assert engine_timeout == str(timeout)
    assert isinstance(writes, PostgresWrites)
    assert writes._connect_timeout == timeout  # an opening is given up on after as long
