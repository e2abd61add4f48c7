"""Group commit: rows submitted together from many requests are written in one go.

A database write per CDS call would cost the EHR more than every other check together;
concurrent calls share one write instead. Up to ``max_writers`` batches are in flight,
so a small batch never holds up the next one. The write runs in a worker thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

from fastapi.concurrency import run_in_threadpool

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
