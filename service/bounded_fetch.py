"""Fetching from another party's server within a deadline and a size cap.

httpx's timeout bounds each network operation, not the answer: a server sending one byte
every few seconds (each well within the timeout) holds the request, and whatever waits for
it, for as long as it likes; and a body is read whole into memory however large it is.
:func:`fetch` bounds both: the whole exchange (connecting, sending, the headers and the
body) ends within ``Bounds.seconds`` or raises ``TimeoutError``, and a body growing past
``Bounds.max_bytes`` is refused there (:class:`BodyTooLargeError`).

The CDS service awaits it on its event loop (an issuer's JWK Set, the prefetch fallback's
FHIR batch). The SMART app's routes, its token refresh and the FHIR client
(``service.fhir.client``, used by the routes and the outbox worker) run in threads: they
fetch through :class:`BlockingClient`, which runs the same coroutine on a loop of their
own, because a blocking socket has no deadline for a whole answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Self, TypeVar

import httpx

from service import outbound

T = TypeVar("T")


@dataclass(frozen=True)
class Bounds:
    """How long a whole fetch may take, and how large its body may be."""

    seconds: float
    max_bytes: int


class BodyTooLargeError(Exception):
    """The answer's body grew past the limit; it was not read further."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(f"the answer is larger than {max_bytes} bytes")
        self.max_bytes = max_bytes


async def fetch(
    client: httpx.AsyncClient,
    request: httpx.Request,
    bounds: Bounds,
    auth: httpx.Auth | None = None,
) -> httpx.Response:
    """The answer to ``request``, its body read, within ``bounds``.

    Raises ``TimeoutError``, :class:`BodyTooLargeError` or ``httpx.HTTPError``. Only an
    uncompressed body is asked for and counted (a compressed one could inflate past any
    cap in one piece); the answer keeps the status and the body, not the headers.
    """
    request.headers["Accept-Encoding"] = "identity"
    async with asyncio.timeout(bounds.seconds):
        response = await client.send(request, auth=auth, stream=True)
        try:
            body = bytearray()
            async for chunk in response.aiter_raw():
                body += chunk
                if len(body) > bounds.max_bytes:
                    raise BodyTooLargeError(bounds.max_bytes)
        finally:
            await response.aclose()
    return httpx.Response(response.status_code, content=bytes(body), request=request)


class BlockingClient:
    """:func:`fetch` for code running in a thread; a context manager, like ``httpx.Client``.

    ``timeout`` still bounds each network operation; ``bounds`` every whole fetch (a
    request may name tighter ones: a screen's budget, ``service.fhir.client``). No
    redirects are followed: a server's answer is taken from the URL it was asked at.
    """

    def __init__(self, bounds: Bounds, timeout: float) -> None:
        self._bounds = bounds
        self._closed = False
        self._runner = asyncio.Runner()
        self._client = httpx.AsyncClient(
            timeout=timeout, follow_redirects=False, transport=outbound.async_transport()
        )

    def request(
        self,
        method: str,
        url: str,
        *,
        auth: httpx.Auth | None = None,
        bounds: Bounds | None = None,
        **options: Any,
    ) -> httpx.Response:
        """``options`` as ``httpx.AsyncClient.build_request`` takes them (headers, data…);
        ``bounds`` this fetch's own, in place of the client's (a caller's shorter deadline)."""
        request = self._client.build_request(method, url, **options)
        within = bounds or self._bounds
        return _outside_a_running_loop(
            lambda: self._runner.run(fetch(self._client, request, within, auth))
        )

    def close(self) -> None:
        """Closes the connections and the event loop; closing again does nothing."""
        if self._closed:
            return
        self._closed = True

        def close_all() -> None:
            try:
                self._runner.run(self._client.aclose())
            finally:
                self._runner.close()

        _outside_a_running_loop(close_all)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _outside_a_running_loop(call: Callable[[], T]) -> T:
    """``call()`` in this thread, or in one of its own while this thread runs an event loop.

    The client's loop cannot run inside another: a blocking caller whose thread also runs
    one would get a ``RuntimeError``. Playwright's synchronous API runs one, and the browser
    tests build the demo (which seeds the FHIR server) and read the FHIR server in its
    thread. The caller still waits: blocking.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return call()
    with ThreadPoolExecutor(max_workers=1) as thread:
        return thread.submit(call).result()
