"""The CDS path's own database writes: group commit on connections that do not wait for
the disk flush.

A database write per CDS call would cost the EHR more than every other check together;
concurrent calls share one write instead (``BatchWriter``). Up to ``max_writers``
batches are in flight, so a small batch never holds up the next one. The write runs in a
worker thread.

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
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any, Generic, TypeVar

from fastapi.concurrency import run_in_threadpool
from sqlalchemy import Connection, Engine, create_engine, event

from service.db.base import Database

MAX_WRITERS = 4  # batches in flight at once per table (PostgreSQL; SQLite has one writer)

Row = TypeVar("Row")
Result = TypeVar("Result")


class BatchWriter(Generic[Row, Result]):
    def __init__(self, write: Callable[[list[Row]], list[Result]], max_writers: int) -> None:
        self._write = write
        self._max_writers = max_writers
        self._pending: list[tuple[Row, asyncio.Future[Result]]] = []
        self._writers = 0
        self._tasks: set[asyncio.Task[None]] = set()  # the loop keeps only weak references

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
                try:
                    results = await run_in_threadpool(self._write, [row for row, _ in batch])
                except Exception as error:  # e.g. the database is down: every waiter learns it
                    for _, future in batch:
                        future.set_exception(error)
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    future.set_result(result)
        finally:
            self._writers -= 1


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

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """A connection in a transaction (SQLite) or in autocommit (PostgreSQL)."""
        with self._turn or nullcontext(), self._engine.begin() as connection:
            yield connection


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "busy_timeout=30000"):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()
