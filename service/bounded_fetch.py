"""Fetching from another party's server within a deadline and a size cap.

httpx's timeout bounds each network operation, not the answer: a server sending one byte
every few seconds (each well within the timeout) holds the request, and whatever waits for
it, for as long as it likes; and a body is read whole into memory however large it is.
:func:`fetch` bounds both: the whole exchange (connecting, sending, the headers and the
body) ends within ``Bounds.seconds`` or raises ``TimeoutError``, and a body growing past
``Bounds.max_bytes`` is refused there (:class:`BodyTooLargeError`).

Answers may come gzip-compressed (asked for: FHIR JSON shrinks about tenfold; and some
gateways compress whatever was asked). The cap counts the decoded body, what is held and
parsed; it is decoded here as it comes, a bounded step at a time (``zlib``'s
``max_length``), because httpx's decoder inflates each piece whole: a few KiB of a
compressed stream of zeros would become any number of MiB before a cap could look. A
decompression bomb is refused having held about the cap. An encoding not decoded here
(br, zstd: not asked for) and a corrupt or cut compressed stream are
:class:`UndecodableBodyError`; callers treat both errors alike (:class:`UnreadableBodyError`:
an answer they cannot use), never as garbage to parse.

The CDS service awaits it on its event loop (an issuer's JWK Set, the prefetch fallback's
FHIR batch). The SMART app's routes, its token refresh and the FHIR client
(``service.fhir.client``, used by the routes and the outbox worker) run in threads: they
fetch through :class:`BlockingClient`, which runs the same coroutine on a loop of their
own, because a blocking socket has no deadline for a whole answer.
"""

from __future__ import annotations

import asyncio
import zlib
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


#: Asked of every server. deflate is not: it gains nothing over gzip (the same compression),
#: and some servers send a raw deflate stream under that name, which RFC 9110 does not.
ACCEPT_ENCODING = "gzip"

#: zlib's ``wbits`` for each content coding decoded (RFC 9110 8.4.1): gzip's header, or
#: zlib's (``deflate``, sent unasked). ``x-gzip`` is gzip (RFC 9110 8.4.1.3).
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}

#: The most a compressed body is inflated by at once: what is held beyond the body so far.
DECODE_STEP = 256 * 1024


class UnreadableBodyError(Exception):
    """The answer's body cannot be used: too large, or not decodable."""


class BodyTooLargeError(UnreadableBodyError):
    """The answer's body grew past the limit; it was not read further."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(f"the answer is larger than {max_bytes} bytes")
        self.max_bytes = max_bytes


class UndecodableBodyError(UnreadableBodyError):
    """The answer's body is in an encoding not decoded here, or its compressed data is
    corrupt or cut short."""


class _Body:
    """A body as it comes, refused past ``max_bytes``."""

    def __init__(self, max_bytes: int) -> None:
        self.content = bytearray()
        self._max_bytes = max_bytes

    def add(self, raw: bytes) -> None:
        self._keep(raw)

    def whole(self) -> bytes:
        return bytes(self.content)

    def _keep(self, piece: bytes) -> None:
        self.content += piece
        if len(self.content) > self._max_bytes:
            raise BodyTooLargeError(self._max_bytes)

    def _room(self) -> int:
        """One byte past the cap: a piece that large is refused."""
        return self._max_bytes + 1 - len(self.content)


class _InflatedBody(_Body):
    """A compressed body (zlib's ``wbits`` tell which format), inflated as it comes."""

    def __init__(self, max_bytes: int, wbits: int) -> None:
        super().__init__(max_bytes)
        self._wbits = wbits
        self._stream = zlib.decompressobj(wbits)
        self._compressed = False  # any compressed data came

    def add(self, raw: bytes) -> None:
        """Inflates ``raw`` a step at a time, each step ending at ``DECODE_STEP`` bytes or
        one past the cap; zlib keeps the input a step leaves (``unconsumed_tail``)."""
        self._compressed = self._compressed or bool(raw)
        data, pending_output = raw, False
        while data or pending_output:
            if self._stream.eof:  # a further gzip member follows (RFC 1952 2.2)
                self._stream = zlib.decompressobj(self._wbits)
            limit = min(DECODE_STEP, self._room())
            try:
                piece = self._stream.decompress(data, limit)
            except zlib.error as error:
                raise UndecodableBodyError(f"the compressed answer is corrupt ({error})") from error
            self._keep(piece)
            # a full step may have left output inside zlib, its input all taken
            pending_output = len(piece) == limit and not self._stream.eof
            data = self._stream.unused_data if self._stream.eof else self._stream.unconsumed_tail

    def whole(self) -> bytes:
        """The whole body, its compressed stream ended (an empty body is empty)."""
        if self._compressed and not self._stream.eof:
            raise UndecodableBodyError("the compressed answer is cut short")
        return super().whole()


def _body(headers: httpx.Headers, max_bytes: int) -> _Body:
    """The body of an answer with these headers, decoded per its ``Content-Encoding``."""
    wbits = _wbits(headers.get_list("Content-Encoding", split_commas=True))
    return _Body(max_bytes) if wbits is None else _InflatedBody(max_bytes, wbits)


def _wbits(codings: list[str]) -> int | None:
    """zlib's ``wbits`` for a body's content codings; None when not encoded."""
    named = [coding.lower() for coding in codings if coding.lower() not in ("", "identity")]
    if not named:
        return None
    if len(named) == 1 and named[0] in _WBITS:
        return _WBITS[named[0]]
    shown = ", ".join(named)[:60]  # the server's words, in logs: kept short
    raise UndecodableBodyError(f"the answer is encoded as {shown!r}, which is not decoded here")


async def fetch(
    client: httpx.AsyncClient,
    request: httpx.Request,
    bounds: Bounds,
    auth: httpx.Auth | None = None,
) -> httpx.Response:
    """The answer to ``request``, its body read, within ``bounds``.

    Raises ``TimeoutError``, :class:`BodyTooLargeError`, :class:`UndecodableBodyError` or
    ``httpx.HTTPError``. A gzip body is asked for, and decoded here (the cap counts the
    decoded bytes). The answer keeps the status, the decoded body and the headers but
    those of the encoding (:data:`_OF_THE_ENCODING`): none left to make httpx decode it
    again. (A throttling server's ``Retry-After`` was lost with them.)
    """
    request.headers["Accept-Encoding"] = ACCEPT_ENCODING
    async with asyncio.timeout(bounds.seconds):
        response = await client.send(request, auth=auth, stream=True)
        try:
            body = _body(response.headers, bounds.max_bytes)
            async for chunk in response.aiter_raw():
                body.add(chunk)
            content = body.whole()
        finally:
            await response.aclose()
    headers = [
        (name, value)
        for name, value in response.headers.multi_items()
        if name.lower() not in _OF_THE_ENCODING
    ]
    return httpx.Response(response.status_code, headers=headers, content=content, request=request)


#: The headers describing the body as sent, not as :func:`fetch` returns it (decoded, whole).
_OF_THE_ENCODING = frozenset({"content-encoding", "content-length", "transfer-encoding"})


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
