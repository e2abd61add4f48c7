"""The CDS path's own database writes: group commit, without a worker thread, on
connections that do not wait for the disk flush.

A database write per CDS call would cost the EHR more than every other check together;
concurrent calls share one write instead (``BatchWriter``), and ``GroupCommit`` puts the
rows of both tables of the path — the ``jti`` replay ledger and the cards issued for
monitoring — in the same batch: one transaction for all of them.

Neither table holds anything that must survive an OS crash (tokens expire within
minutes; a lost card row loses a count, never a card), so their connections skip the
flush: PostgreSQL ``synchronous_commit=off``, SQLite ``synchronous=NORMAL`` (WAL). The
clinical data keeps full durability on the service's main connections.

The writes run on the event loop, not in a worker thread. A thread gives up the GIL at
every database call and then waits up to the interpreter's switch interval (5 ms) to get
it back from the busy loop: under load the writes fell far behind the calls and every
waiting call with them. So PostgreSQL is written through psycopg's asyncio connections,
and SQLite — whose calls are short, the disk flush being off — directly, with a lock
timeout of zero: when another writer holds the database (the outbox, an administrator)
the batch is retried a little later and, in the end, handed to a worker thread that may
wait. What waits for the disk (SQLite's WAL checkpoint) or may be long (purges) runs in
a worker thread or in small chunks.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Generic, TypeVar

import psycopg
from fastapi.concurrency import run_in_threadpool
from psycopg.conninfo import make_conninfo, timeout_from_conninfo
from sqlalchemy import Connection, Dialect, Engine, Table, create_engine, event
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError

from service.db.base import (
    Database,
    default_connect_timeout,
    libpq_parameters,
    on_every_connection,
)

log = logging.getLogger(__name__)

MAX_WRITERS = 4  # PostgreSQL batches in flight at once; SQLite has one writer
UPKEEP_SECONDS = 1.0

Row = TypeVar("Row")
Result = TypeVar("Result")
Rows = list[dict[str, Any]]
Batch = list[tuple[Table, dict[str, Any]]]
#: Work done with a write, at most every ``UPKEEP_SECONDS`` (e.g. purging expired rows).
Upkeep = Callable[[Connection], None]


class WriteFailedError(Exception):
    """The database cannot be written now (down, unreachable, a missing table…)."""


class DatabaseBusyError(Exception):
    """Another connection holds SQLite's write lock: a write that must not wait gives way."""


class BatchWriter(Generic[Row, Result]):
    """Group commit: rows submitted while a write is in flight go together in the next one.

    Up to ``max_writers`` batches are in flight, so a small batch never holds up the next.
    """

    def __init__(
        self,
        write: Callable[[list[Row]], Awaitable[Sequence[Result | Exception]]],
        max_writers: int,
    ) -> None:
        self._write = write
        self._max_writers = max_writers
        self._pending: list[tuple[Row, asyncio.Future[Result]]] = []
        self._writers = 0
        self._tasks: set[asyncio.Task[None]] = set()  # the loop keeps only weak references

    @property
    def backlog(self) -> int:
        """Rows waiting for a write to start."""
        return len(self._pending)

    def submit(self, row: Row) -> asyncio.Future[Result]:
        """Queue ``row``; the future has the write's result for it (or its exception)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        self._pending.append((row, future))
        if self._writers < self._max_writers:
            self._writers += 1
            task = loop.create_task(self._drain())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return future

    async def flushed(self) -> None:
        """Return once every row submitted so far is written (or has failed)."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    results = await self._write([row for row, _ in batch])
                except Exception as error:  # e.g. the database is down: every waiter learns it
                    for _, future in batch:
                        future.set_exception(error)
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    if isinstance(result, Exception):  # this row's alone
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        finally:
            self._writers -= 1


class TableInsert:
    """A multi-row INSERT into one table, its SQL compiled once per database.

    SQLAlchemy's ``execute(insert(table), rows)`` builds its parameters row by row in
    Python, about as much work as the database's own insert. Here each value is converted
    by the column type's own bind processor (the conversion SQLAlchemy applies: UTC
    timestamps, JSON), and the rows go to the driver's ``executemany`` at once.
    """

    def __init__(self, table: Table, dialect: Dialect) -> None:
        columns = [c for c in table.columns if not c.primary_key]
        self._names = [c.name for c in columns]
        self._convert = [c.type.dialect_impl(dialect).bind_processor(dialect) for c in columns]
        quote = dialect.identifier_preparer.quote
        marker = "?" if dialect.paramstyle == "qmark" else "%s"
        names = ", ".join(quote(name) for name in self._names)
        markers = ", ".join([marker] * len(columns))
        # names from our own table metadata, quoted; the values go as parameters
        self.sql = f"INSERT INTO {quote(table.name)} ({names}) VALUES ({markers})"  # noqa: S608

    def parameters(self, rows: Rows) -> list[tuple[Any, ...]]:
        pairs = list(zip(self._names, self._convert, strict=True))
        return [
            tuple(convert(row[name]) if convert else row[name] for name, convert in pairs)
            for row in rows
        ]


class GroupCommit:
    """Rows of the CDS path's tables, committed together: one transaction per batch."""

    def __init__(self, writes: SqliteWrites | PostgresWrites) -> None:
        self._writes = writes
        self._upkeep: list[Upkeep] = []
        self._next_upkeep = 0.0
        self._batches: BatchWriter[tuple[Table, dict[str, Any]], bool] = BatchWriter(
            self._write, writes.writers
        )

    @property
    def backlog(self) -> int:
        return self._batches.backlog

    def add_upkeep(self, task: Upkeep) -> None:
        """Run ``task`` with a write, at most every ``UPKEEP_SECONDS``."""
        self._upkeep.append(task)

    def submit(self, table: Table, row: dict[str, Any]) -> asyncio.Future[bool]:
        """Insert ``row`` (every column but the primary key) into ``table``. The future is
        True once it is committed, False when a unique constraint refused it, and has a
        ``WriteFailedError`` when the database cannot be written."""
        return self._batches.submit((table, row))

    async def flushed(self) -> None:
        """Return once every row submitted so far is written, and the upkeep they started
        has finished (at shutdown; in tests)."""
        await self._batches.flushed()
        await self._writes.settled()

    async def _write(self, batch: Batch) -> Sequence[bool | Exception]:
        now = time.monotonic()
        upkeep: list[Upkeep] = []
        if now >= self._next_upkeep:
            self._next_upkeep = now + UPKEEP_SECONDS
            upkeep = self._upkeep
        try:
            return await self._writes.write(batch, upkeep)
        except (SQLAlchemyError, psycopg.Error) as error:
            raise WriteFailedError(type(error).__name__) from error


def _in_thread(running: set[asyncio.Future[None]], work: Callable[..., None], *args: Any) -> None:
    """Start ``work`` in a worker thread without waiting for it; ``running`` holds it until
    it ends (``settled``). A failure is logged: the next upkeep tries again."""
    future = asyncio.get_running_loop().run_in_executor(None, work, *args)
    running.add(future)
    future.add_done_callback(running.discard)
    future.add_done_callback(_log_upkeep_failure)


def _log_upkeep_failure(future: asyncio.Future[None]) -> None:
    error = future.exception()
    if error is not None:
        log.warning("CDS write upkeep failed", extra={"fields": {"error": type(error).__name__}})


def _by_table(batch: Batch) -> dict[Table, Rows]:
    grouped: dict[Table, Rows] = {}
    for table, row in batch:
        grouped.setdefault(table, []).append(row)
    return grouped


class _Inserts:
    """The ``TableInsert`` of each table, for one database."""

    def __init__(self, dialect: Dialect) -> None:
        self._dialect = dialect
        self._by_table: dict[Table, TableInsert] = {}

    def __call__(self, table: Table) -> TableInsert:
        insert = self._by_table.get(table)
        if insert is None:
            insert = self._by_table[table] = TableInsert(table, self._dialect)
        return insert


class SqliteWrites:
    """SQLite: written on the event loop, never waiting for a lock (see the module doc).

    A file database only: an in-memory one is the test suite's, shared through one
    connection with the rest of the service, and is written in a worker thread.
    """

    writers = 1
    BUSY_RETRIES = (0.001, 0.002, 0.005, 0.01, 0.02)  # seconds; then the worker thread
    TRUNCATE_WAIT_MS = 100
    wal_limit_pages = 16_384  # 64 MiB of 4 KiB pages

    def __init__(self, database: Database) -> None:
        url = database.engine.url
        self._inserts = _Inserts(database.engine.dialect)
        self._turn = threading.Lock()  # one writer of this process at a time
        self._checkpoints: set[asyncio.Future[None]] = set()
        self._now: Engine | None = None
        if url.database in (None, "", ":memory:"):
            self._engine = database.engine
            return
        self._engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, pool_size=2
        )
        event.listen(self._engine, "connect", _sqlite_pragmas)
        # no wait for a lock (timeout 0) and no checkpoint: both would stop the loop
        self._now = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 0}, pool_size=1
        )
        event.listen(self._now, "connect", _sqlite_pragmas_now)

    async def write(self, batch: Batch, upkeep: list[Upkeep]) -> list[bool]:
        if self._now is not None:
            for delay in (0.0, *self.BUSY_RETRIES):
                if delay:
                    await asyncio.sleep(delay)
                try:
                    return self._write_now(self._now, batch, upkeep)
                except DatabaseBusyError:
                    continue
                except IntegrityError:
                    break  # the thread tells which row it was
        return await run_in_threadpool(self._write_waiting, batch, upkeep)

    async def settled(self) -> None:
        if self._checkpoints:
            await asyncio.wait(set(self._checkpoints))

    def _write_now(self, engine: Engine, batch: Batch, upkeep: list[Upkeep]) -> list[bool]:
        with self._begin_now(engine) as connection:
            self._insert(connection, batch, upkeep)
        if upkeep:
            _in_thread(self._checkpoints, self._checkpoint)
        return [True] * len(batch)

    def _write_waiting(self, batch: Batch, upkeep: list[Upkeep]) -> list[bool]:
        """In a worker thread; row by row after a refusal, to tell which row it was."""
        try:
            with self._begin() as connection:
                self._insert(connection, batch, upkeep)
        except IntegrityError:
            return [self._write_one(table, row) for table, row in batch]
        return [True] * len(batch)

    def _write_one(self, table: Table, row: dict[str, Any]) -> bool:
        try:
            with self._begin() as connection:
                self._insert(connection, [(table, row)], [])
        except IntegrityError:
            return False
        return True

    def _insert(self, connection: Connection, batch: Batch, upkeep: list[Upkeep]) -> None:
        for table, rows in _by_table(batch).items():
            insert = self._inserts(table)
            connection.exec_driver_sql(insert.sql, insert.parameters(rows))
        for task in upkeep:
            task(connection)

    @contextmanager
    def _begin(self) -> Iterator[Connection]:
        with self._turn, self._engine.begin() as connection:
            yield connection

    @contextmanager
    def _begin_now(self, engine: Engine) -> Iterator[Connection]:
        """A transaction that never waits: ``DatabaseBusyError`` when another writer of
        this process or another holds the database."""
        if not self._turn.acquire(blocking=False):
            raise DatabaseBusyError("a write of this process is in progress")
        try:
            with engine.begin() as connection:
                yield connection
        except OperationalError as error:
            if "locked" not in str(error.orig) and "busy" not in str(error.orig):
                raise
            raise DatabaseBusyError("another connection holds the database") from error
        finally:
            self._turn.release()

    def _checkpoint(self) -> None:
        """Copy the write-ahead log into the database; passive: never blocks a writer.

        Under a sustained load the log never starts over by itself: writers append to it
        while the passive copy runs, and it grew without bound (140 MB in six seconds of
        the benchmark). Past ``wal_limit_pages`` it is copied and truncated, which holds
        writers off meanwhile (they retry, see ``write``) and waits at most
        ``TRUNCATE_WAIT_MS`` for readers; if they are not done, the next checkpoint tries
        again."""
        with self._engine.connect() as connection:
            log_pages = connection.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)").one()[1]
            if log_pages > self.wal_limit_pages:
                connection.exec_driver_sql(f"PRAGMA busy_timeout={self.TRUNCATE_WAIT_MS}")
                try:
                    connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
                finally:
                    connection.exec_driver_sql(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")


class PostgresWrites:
    """PostgreSQL: psycopg's asyncio connections, ``synchronous_commit=off``; up to
    ``MAX_WRITERS`` batches in flight, each on a connection of its own. Upkeep runs in a
    worker thread on a synchronous connection, never holding up a batch."""

    writers = MAX_WRITERS

    def __init__(self, database: Database) -> None:
        url = database.engine.url
        # what the service's engine connects with, quoted by psycopg (``libpq_parameters``)
        parameters = libpq_parameters(database.engine, CONNECT_TIMEOUT)
        self._conninfo = make_conninfo("", **parameters)
        # an opening is given up on when psycopg would: the same connect_timeout, read as
        # libpq reads it (at least 2 s; 0 or less is psycopg's long default, not "never")
        self._connect_timeout = timeout_from_conninfo(parameters)
        self._inserts = _Inserts(database.engine.dialect)
        self._idle: list[psycopg.AsyncConnection[Any]] = []
        self._upkeep_engine = create_engine(
            url,
            pool_size=1,
            max_overflow=0,
            connect_args=default_connect_timeout(url, CONNECT_TIMEOUT),
        )
        on_every_connection(self._upkeep_engine, SESSION_SETTINGS)
        self._upkeeps: set[asyncio.Future[None]] = set()
        self._abandoned: set[asyncio.Future[psycopg.AsyncConnection[Any]]] = set()

    async def write(self, batch: Batch, upkeep: list[Upkeep]) -> list[bool | Exception]:
        if upkeep:
            _in_thread(self._upkeeps, self._run_upkeep, upkeep)
        try:
            await self._insert(batch)
        except (psycopg.IntegrityError, psycopg.DataError):
            # row by row, to tell which row it was: a value PostgreSQL refuses (a NUL in a
            # text) failed every call of the batch, of every hospital (found by fuzzing)
            return [await self._write_one(table, row) for table, row in batch]
        return [True] * len(batch)

    async def settled(self) -> None:
        if self._upkeeps:
            await asyncio.wait(set(self._upkeeps))

    async def _write_one(self, table: Table, row: dict[str, Any]) -> bool | Exception:
        try:
            await self._insert([(table, row)])
        except psycopg.IntegrityError:
            return False
        except psycopg.DataError as error:
            return WriteFailedError(type(error).__name__)
        return True

    async def _insert(self, batch: Batch) -> None:
        connection = self._idle.pop() if self._idle else await self._connect()
        try:
            async with connection.transaction(), connection.cursor() as cursor:
                for table, rows in _by_table(batch).items():
                    insert = self._inserts(table)
                    await cursor.executemany(insert.sql, insert.parameters(rows))
        finally:
            if connection.closed or connection.broken:
                await connection.close()
            else:
                self._idle.append(connection)

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        """Bounded: a database that does not answer must fail the call, not hang the EHR.
        Its settings too: behind a pooler the login succeeds at once and the first
        statement waits for a server connection (found by review). An opening given up
        on is left to end by itself: psycopg cancels a waiting statement for up to 10 s."""
        opening = asyncio.ensure_future(self._open())
        done, _ = await asyncio.wait({opening}, timeout=self._connect_timeout)
        if not done:
            opening.cancel()
            self._abandoned.add(opening)  # the loop keeps only weak references
            opening.add_done_callback(self._abandoned.discard)
            raise psycopg.errors.ConnectionTimeout("the database did not answer in time")
        return opening.result()

    async def _open(self) -> psycopg.AsyncConnection[Any]:
        connection = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
        try:
            await connection.execute(SESSION_SETTINGS)
        except BaseException:
            await connection.close()
            raise
        return connection

    def _run_upkeep(self, upkeep: list[Upkeep]) -> None:
        with self._upkeep_engine.begin() as connection:
            for task in upkeep:
                task(connection)


#: Seconds; a ``connect_timeout`` the database URL names is used instead.
CONNECT_TIMEOUT = 3
#: Set once a connection is open, not as startup options (``db.base.on_every_connection``):
#: as those, every CDS call failed its replay check behind PgBouncer (found by trying).
SESSION_SETTINGS = (
    "SELECT set_config('synchronous_commit', 'off', false),"
    " set_config('statement_timeout', '5000', false)"
)


def fast_writes(database: Database) -> SqliteWrites | PostgresWrites:
    """The CDS path's connections for the service's database."""
    if database.engine.url.get_backend_name() == "sqlite":
        return SqliteWrites(database)
    return PostgresWrites(database)


BUSY_TIMEOUT_MS = 30_000  # the worker thread's connections wait for a lock this long


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    busy_timeout = f"busy_timeout={BUSY_TIMEOUT_MS}"
    _pragmas(dbapi_connection, "journal_mode=WAL", "synchronous=NORMAL", busy_timeout)


def _sqlite_pragmas_now(dbapi_connection: Any, _record: Any) -> None:
    _pragmas(dbapi_connection, "journal_mode=WAL", "synchronous=NORMAL", "wal_autocheckpoint=0")


def _pragmas(dbapi_connection: Any, *pragmas: str) -> None:
    cursor = dbapi_connection.cursor()
    for pragma in pragmas:
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()
