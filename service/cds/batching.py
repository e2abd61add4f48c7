"""The CDS path's own database writes: group commit on connections that do not wait for
the disk flush.

A database write per CDS call would cost the EHR more than every other check together;
concurrent calls share one write instead (``BatchWriter``). Up to ``max_writers``
batches are in flight, so a small batch never holds up the next one. The write runs in a
worker thread. ``GroupCommit`` puts the rows of both tables of the path in the same
batch: a hook call's card record rides along with the next calls' jtis, one transaction
and one thread hop for all of them.

The two tables written on this path — the ``jti`` replay ledger and the cards issued for
monitoring — hold nothing that must survive an OS crash (tokens expire within minutes;
a lost card row loses a count, never a card), so ``FastWrites`` gives them connections
of their own without the flush: PostgreSQL ``synchronous_commit=off``, SQLite
``synchronous=NORMAL`` (WAL). The clinical data keeps full durability on the service's
main connections.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any, Generic, TypeVar

from fastapi.concurrency import run_in_threadpool
from sqlalchemy import Connection, Dialect, Engine, Table, create_engine, event
from sqlalchemy.exc import IntegrityError, OperationalError

from service.db.base import Database

MAX_WRITERS = 4  # batches in flight at once per table (PostgreSQL; SQLite has one writer)

Row = TypeVar("Row")
Result = TypeVar("Result")
Rows = list[dict[str, Any]]


class TableInsert:
    """A multi-row INSERT into one table, its SQL compiled once per database.

    SQLAlchemy's ``execute(insert(table), rows)`` builds its parameters row by row in
    Python, about as much work as the database's own insert. Here each value is converted
    by the column type's own bind processor (the conversion SQLAlchemy applies: UTC
    timestamps, JSON), and the rows go to the driver's ``executemany`` at once.
    """

    def __init__(self, table: Table, dialect: Dialect) -> None:
        self.table = table
        self._columns = [c for c in table.columns if not c.primary_key]
        self._convert = [
            c.type.dialect_impl(dialect).bind_processor(dialect) for c in self._columns
        ]
        quote = dialect.identifier_preparer.quote
        marker = "?" if dialect.paramstyle == "qmark" else "%s"
        columns = ", ".join(quote(c.name) for c in self._columns)
        markers = ", ".join([marker] * len(self._columns))
        # names from our own table metadata, quoted; the values go as parameters
        self.sql = f"INSERT INTO {quote(table.name)} ({columns}) VALUES ({markers})"  # noqa: S608

    def __call__(self, connection: Connection, rows: Rows) -> None:
        names = [c.name for c in self._columns]
        pairs = list(zip(names, self._convert, strict=True))
        parameters = [
            tuple(convert(row[name]) if convert else row[name] for name, convert in pairs)
            for row in rows
        ]
        connection.exec_driver_sql(self.sql, parameters)


class BatchWriter(Generic[Row, Result]):
    """Group commit: rows submitted while a write is in flight go together in the next one.

    ``write`` runs in a worker thread. ``write_now``, when given, is tried first on the
    event loop: it returns None to hand the batch to ``write``, and raises
    ``DatabaseBusyError`` to be tried again after ``BUSY_RETRIES`` (another writer's
    transaction is short; the thread would wait for the same lock, and costs more).
    """

    BUSY_RETRIES = (0.001, 0.002, 0.005, 0.01, 0.02)  # seconds; then the worker thread

    def __init__(
        self,
        write: Callable[[list[Row]], list[Result]],
        max_writers: int,
        write_now: Callable[[list[Row]], list[Result] | None] | None = None,
    ) -> None:
        self._write = write
        self._write_now = write_now
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

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                rows = [row for row, _ in batch]
                try:
                    results = await self._try_now(rows)
                    if results is None:
                        results = await run_in_threadpool(self._write, rows)
                except Exception as error:  # e.g. the database is down: every waiter learns it
                    for _, future in batch:
                        future.set_exception(error)
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    future.set_result(result)
        finally:
            self._writers -= 1

    async def flushed(self) -> None:
        """Return once every row submitted so far is written (or has failed)."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    async def _try_now(self, rows: list[Row]) -> list[Result] | None:
        if self._write_now is None:
            return None
        for delay in (0.0, *self.BUSY_RETRIES):
            if delay:
                await asyncio.sleep(delay)
            try:
                return self._write_now(rows)
            except DatabaseBusyError:
                continue
        return None


class GroupCommit:
    """Rows of the CDS path's tables, committed together: one transaction per batch.

    On SQLite a batch is written on the event loop itself (``FastWrites.begin_now``): in a
    worker thread every SQLite call gives up the GIL and then waits up to the interpreter's
    switch interval to get it back from the busy loop, so under load the writes fell far
    behind the calls. The loop never waits for the database: when another writer holds
    it (the outbox, an administrator), the batch is tried again a little later, and in the
    end in the worker thread. Upkeep tasks (purging expired rows, in small chunks) run
    with a write at most every ``UPKEEP_SECONDS``; SQLite's WAL checkpoint, which waits
    for the disk, runs in a worker thread.
    """

    UPKEEP_SECONDS = 1.0

    def __init__(self, writes: FastWrites) -> None:
        self._writes = writes
        self._upkeep: list[Callable[[Connection], None]] = []
        self._next_upkeep = 0.0
        self._checkpoints: set[asyncio.Future[None]] = set()
        self._inserts: dict[Table, TableInsert] = {}
        self._batches: BatchWriter[tuple[Table, dict[str, Any]], bool] = BatchWriter(
            self._write, writes.writers, self._write_now if writes.can_write_now else None
        )

    @property
    def backlog(self) -> int:
        return self._batches.backlog

    async def flushed(self) -> None:
        """Return once every row submitted so far is written, and a checkpoint started by
        them has finished (at shutdown; in tests)."""
        await self._batches.flushed()
        if self._checkpoints:
            await asyncio.wait(set(self._checkpoints))

    def add_upkeep(self, task: Callable[[Connection], None]) -> None:
        """Run ``task`` with a write, in its transaction, at most every ``UPKEEP_SECONDS``."""
        self._upkeep.append(task)

    def submit(self, table: Table, row: dict[str, Any]) -> asyncio.Future[bool]:
        """Insert ``row`` (every column but the primary key) into ``table``. The future is
        True once it is committed, False when a unique constraint refused it, and has the
        exception when the database cannot be written."""
        return self._batches.submit((table, row))

    def _write_now(self, items: list[tuple[Table, dict[str, Any]]]) -> list[bool] | None:
        try:
            with self._writes.begin_now() as connection:
                upkeep = self._insert_all(connection, items)
        except IntegrityError:  # the thread tells which row it was
            return None
        if upkeep:
            checkpoint = asyncio.get_running_loop().run_in_executor(None, self._writes.checkpoint)
            self._checkpoints.add(checkpoint)
            checkpoint.add_done_callback(self._checkpoints.discard)
        return [True] * len(items)

    def _write(self, items: list[tuple[Table, dict[str, Any]]]) -> list[bool]:
        """In a worker thread: each table's rows in one INSERT; row by row after a refusal,
        to tell which row it was."""
        try:
            with self._writes.begin() as connection:
                self._insert_all(connection, items)
        except IntegrityError:
            return [self._write_one(table, row) for table, row in items]
        return [True] * len(items)

    def _write_one(self, table: Table, row: dict[str, Any]) -> bool:
        try:
            with self._writes.begin() as connection:
                self._insert(table, connection)(connection, [row])
        except IntegrityError:
            return False
        return True

    def _insert_all(
        self, connection: Connection, items: list[tuple[Table, dict[str, Any]]]
    ) -> bool:
        """Each table's rows in one INSERT, and the upkeep when due (then True)."""
        by_table: dict[Table, Rows] = {}
        for table, row in items:
            by_table.setdefault(table, []).append(row)
        for table, rows in by_table.items():
            self._insert(table, connection)(connection, rows)
        now = time.monotonic()
        if now < self._next_upkeep:
            return False
        self._next_upkeep = now + self.UPKEEP_SECONDS
        for task in self._upkeep:
            task(connection)
        return True

    def _insert(self, table: Table, connection: Connection) -> TableInsert:
        insert = self._inserts.get(table)
        if insert is None:
            insert = self._inserts[table] = TableInsert(table, connection.dialect)
        return insert


class DatabaseBusyError(Exception):
    """Another connection holds SQLite's write lock: a write that must not wait gives way."""


class FastWrites:
    """Connections for the CDS path's writes, and how many batches may be in flight.

    PostgreSQL runs in autocommit: a batch is one multi-row INSERT, atomic on its own.
    SQLite keeps transactions (in autocommit its executemany would commit every row), and
    its writers take turns on a lock of this process: SQLite's own wait for a busy
    database sleeps up to 100 ms at a time.
    """

    def __init__(self, database: Database) -> None:
        url = database.engine.url
        self.sqlite = url.get_backend_name() == "sqlite"
        self.writers = 1 if self.sqlite else MAX_WRITERS
        self._turn = threading.Lock() if self.sqlite else None
        self._now_engine: Engine | None = None
        if not self.sqlite:
            self._engine: Engine = create_engine(
                url,
                pool_size=MAX_WRITERS * 2,
                max_overflow=0,
                pool_recycle=300,
                connect_args={"options": "-c synchronous_commit=off"},
            ).execution_options(isolation_level="AUTOCOMMIT")
        elif url.database in (None, "", ":memory:"):  # one shared in-memory database
            self._engine = database.engine
        else:
            self._engine = create_engine(
                url, connect_args={"check_same_thread": False, "timeout": 30}, pool_size=2
            )
            event.listen(self._engine, "connect", _sqlite_pragmas)
            # no wait for a lock (timeout 0) and no checkpoint: both would stop the loop
            self._now_engine = create_engine(
                url, connect_args={"check_same_thread": False, "timeout": 0}, pool_size=1
            )
            event.listen(self._now_engine, "connect", _sqlite_pragmas_now)

    @property
    def can_write_now(self) -> bool:
        """Whether ``begin_now`` may be used (a SQLite file)."""
        return self._now_engine is not None

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """A connection in a transaction (SQLite) or in autocommit (PostgreSQL)."""
        with self._turn or nullcontext(), self._engine.begin() as connection:
            yield connection

    def checkpoint(self) -> None:
        """Copy SQLite's write-ahead log into the database (it waits for the disk: call it
        in a worker thread). Passive: never blocks a writer. A no-op on PostgreSQL."""
        if self._now_engine is not None:
            with self._engine.connect() as connection:
                connection.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")

    @contextmanager
    def begin_now(self) -> Iterator[Connection]:
        """A SQLite transaction that never waits: ``DatabaseBusyError`` when another writer
        of this process or another holds the database."""
        if self._now_engine is None or self._turn is None:
            raise RuntimeError("begin_now needs a SQLite file: check can_write_now")
        if not self._turn.acquire(blocking=False):
            raise DatabaseBusyError("a write of this process is in progress")
        try:
            with self._now_engine.begin() as connection:
                yield connection
        except OperationalError as error:
            if "locked" not in str(error.orig) and "busy" not in str(error.orig):
                raise
            raise DatabaseBusyError("another connection holds the database") from error
        finally:
            self._turn.release()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    _pragmas(dbapi_connection, "journal_mode=WAL", "synchronous=NORMAL", "busy_timeout=30000")


def _sqlite_pragmas_now(dbapi_connection: Any, _record: Any) -> None:
    _pragmas(dbapi_connection, "journal_mode=WAL", "synchronous=NORMAL", "wal_autocheckpoint=0")


def _pragmas(dbapi_connection: Any, *pragmas: str) -> None:
    cursor = dbapi_connection.cursor()
    for pragma in pragmas:
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()
