"""Calls on the event loop that need the same slow result at once share one computation.

Used where a burst of calls would otherwise start the same fetch or database read many
times over: the issuers' JWK Sets (``service.cds.auth``) and the hospitals'
configuration (``service.tenancy``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

Key = TypeVar("Key", bound=Hashable)
Value = TypeVar("Value")


class SingleFlight(Generic[Key, Value]):
    def __init__(self) -> None:
        self._running: dict[Key, asyncio.Task[Value]] = {}

    def start(self, key: Key, work: Callable[[], Awaitable[Value]]) -> asyncio.Task[Value]:
        """The task computing ``key``, started with ``work()`` unless one is running on this
        event loop. Await it through ``asyncio.shield``: a caller that gives up must not
        cancel it for the others."""
        loop = asyncio.get_running_loop()
        running = self._running.get(key)
        if running is None or running.get_loop() is not loop:
            running = loop.create_task(_awaited(work))
            self._running[key] = running
            running.add_done_callback(lambda done: self._forget(key, done))
        return running

    def _forget(self, key: Key, done: asyncio.Task[Value]) -> None:
        if self._running.get(key) is done:
            del self._running[key]
        if not done.cancelled():
            done.exception()  # retrieved: when nobody awaited it, the caller's work logs it


async def _awaited(work: Callable[[], Awaitable[Value]]) -> Value:
    return await work()
