"""A real HTTP relay in front of a FHIR server that answers every request ``delay`` seconds
after it came: a server slow on each request, each answer within the client's timeout (the
fault under test: many such answers, one page view). Like a reverse proxy configured for the
server, it writes its own base URL in the answers for the server's (a search's ``next``
links), so a client pages through it.

It can also stand for a throttling gateway: while ``throttled`` holds answers (status and
``Retry-After``), each request is answered with the next of them instead of being passed
on, as a rate limiter in front of a FHIR server answers. While ``refused`` holds statuses,
each request is likewise answered with the next of them, a 4xx refusing a search parameter
the server does not support. And for a server answering what ours must survive,
``rewrite`` changes every answer's body passed back, and ``ignored`` names search
parameters dropped from each request passed on: a lenient server ignoring parameters it
does not support, which answers with more than was asked.

And for a server slow to take a transaction up (a queue in front of it, a lock it waits
for) while it answers searches at once: ``holding`` transactions are held, not passed on,
until the test releases them or a later transaction comes; then they are applied in the
order they came. A client that gave up waiting does not cancel one: it is applied all the
same, as a real server applies a request whose client has gone away."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlencode

import httpx

from tests.support.serving import Serving

#: What a throttling gateway answers (``SlowRelay.throttled``), as a FHIR server would.
_THROTTLED_OUTCOME = {
    "resourceType": "OperationOutcome",
    "issue": [{"severity": "error", "code": "throttled"}],
}
#: What a server refusing a search parameter answers (``SlowRelay.refused``).
_REFUSED_OUTCOME = {
    "resourceType": "OperationOutcome",
    "issue": [{"severity": "error", "code": "not-supported"}],
}
#: What a server validating Bundles answers a PUT entry without ``fullUrl`` (``strict``).
_INVALID_BUNDLE_OUTCOME = {
    "resourceType": "OperationOutcome",
    "issue": [{"severity": "error", "code": "invalid", "diagnostics": "Bundle.entry.fullUrl"}],
}
#: The headers passed on: what a FHIR exchange needs, not the connection's own.
_PASSED = ("Accept", "Authorization", "Content-Type", "If-Match", "If-None-Exist", "Prefer")


class SlowRelay(Serving):
    """Passes each request to ``upstream`` (a FHIR base URL) and its answer back ``delay``
    seconds after the request came, or when the server answered if later (0: at once; may be
    changed between requests). ``url`` is the relay's base URL, with ``upstream``'s path;
    ``asked`` counts the requests passed on, each as it arrives: once a client has an
    answer, its request is counted. ``throttled``: answers ``(status, Retry-After or
    None)`` given, one each, to the next requests in place of the server's (those requests
    are not passed on, nor counted in ``asked``); ``refused``: statuses answered likewise,
    with a ``not-supported`` OperationOutcome. ``rewrite``: a change made to each answer's
    body (None: none). ``ignored``: the names of the query parameters left out of each
    request passed on. ``strict``: a transaction with an entry other than a POST without a
    ``fullUrl`` is refused (400), as a server validating Bundles against R4 refuses it.
    ``page_size``: the page size of each search in a batch that asks none (``_count``), as
    a server with that default page size answers (None: the server's own).

    Transactions (Bundles of that type POSTed to the base URL; not a batch) are passed on
    one at a time, in the order they came. ``holding``: how many of the next transactions
    are held back, not passed on until :meth:`release` or until a later transaction comes,
    which goes after them (a server takes up what it received in order); ``transactions``
    counts the transactions to pass on, ``applied`` those the server has answered
    (:meth:`settled` waits for them)."""

    def __init__(self, upstream: str, delay: float = 0.0) -> None:
        self.delay = delay
        self.asked = 0
        self.throttled: list[tuple[int, str | None]] = []
        self.refused: list[int] = []
        self.ignored: set[str] = set()
        self.rewrite: Callable[[bytes], bytes] | None = None
        self.strict = False
        self.page_size: int | None = None
        self.holding = 0
        self.transactions = 0
        self.applied = 0
        self._released = 0  # the transactions (by the order they came) free to go
        self._order = threading.Condition()
        owner = self
        origin = httpx.URL(upstream).copy_with(path="/", query=None)
        base_path = httpx.URL(upstream).path.rstrip("/")

        class Handler(BaseHTTPRequestHandler):
            def _relay(self) -> None:
                arrived = time.monotonic()
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if owner.throttled:
                    status, retry_after = owner.throttled.pop(0)
                    self._instead(status, _THROTTLED_OUTCOME, retry_after)
                    return
                if owner.refused:
                    self._instead(owner.refused.pop(0), _REFUSED_OUTCOME, None)
                    return
                if owner.strict and _without_full_url(body):
                    self._instead(400, _INVALID_BUNDLE_OUTCOME, None)
                    return
                owner.asked += 1
                if owner.page_size is not None:
                    body = _paged(body, owner.page_size)
                if self.command == "POST" and self.path.rstrip("/") == base_path:
                    bundle = _bundle(body)
                    transaction = bundle is not None and bundle.get("type") == "transaction"
                else:
                    transaction = False
                if transaction:
                    answer = owner._in_turn(lambda: self._passed_on(body))
                else:
                    answer = self._passed_on(body)
                # the fault itself, not synchronisation: the answer leaves ``delay`` after the
                # request came (or when the server answered, if later), so a loaded machine's
                # slower server does not add to the delay and push an answer past a timeout
                time.sleep(max(0.0, owner.delay - (time.monotonic() - arrived)))
                with contextlib.suppress(ConnectionError):  # the client gave up: expected
                    self._answer(answer)

            def _passed_on(self, body: bytes) -> httpx.Response:
                headers = {name: value for name in _PASSED if (value := self.headers.get(name))}
                return httpx.request(
                    self.command,
                    str(origin.join(self._heeded())),
                    content=body,
                    headers=headers,
                    timeout=30,
                )

            def _answer(self, answer: httpx.Response) -> None:
                self.send_response(answer.status_code)
                for name in ("Content-Type", "ETag", "Location"):
                    if name in answer.headers:
                        self.send_header(name, answer.headers[name])
                content = answer.content.replace(upstream.encode(), owner.url.encode())
                if owner.rewrite is not None:
                    content = owner.rewrite(content)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            def _heeded(self) -> str:
                """The request's path and query without the ``ignored`` parameters."""
                if not owner.ignored:
                    return self.path
                path, _, query = self.path.partition("?")
                pairs = parse_qsl(query, keep_blank_values=True)
                kept = [(k, v) for k, v in pairs if k not in owner.ignored]
                return f"{path}?{urlencode(kept)}" if kept else path

            def _instead(
                self, status: int, outcome: dict[str, Any], retry_after: str | None
            ) -> None:
                content = json.dumps(outcome).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/fhir+json")
                if retry_after is not None:
                    self.send_header("Retry-After", retry_after)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            do_GET = do_POST = do_PUT = _relay  # noqa: N815 - http.server's names

            def log_message(self, format: str, *args: Any) -> None:
                return

        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        port = httpd.server_address[1]
        self.url = str(httpx.URL(upstream).copy_with(host="127.0.0.1", port=port))
        super().__init__(httpd)

    def _in_turn(self, apply: Callable[[], httpx.Response]) -> httpx.Response:
        """``apply`` (a transaction passed on) once it may go: released, and every
        transaction that came before it answered by the server (see ``holding``)."""
        with self._order:
            turn = self.transactions
            self.transactions += 1
            if self.holding:
                self.holding -= 1
            else:  # a later transaction: those held before it go now, then it
                self._released = self.transactions
            self._order.notify_all()
            self._order.wait_for(lambda: self._released > turn and self.applied == turn)
        try:
            return apply()
        finally:
            with self._order:
                self.applied += 1
                self._order.notify_all()

    def release(self) -> None:
        """Let the transactions held go (see ``holding``), in the order they came."""
        with self._order:
            self.holding = 0
            self._released = self.transactions
            self._order.notify_all()

    def settled(self, within: float = 30.0) -> bool:
        """Whether every transaction received has been applied, waiting for it up to
        ``within`` seconds (released: the server's own time, on a loaded machine)."""
        with self._order:
            return self._order.wait_for(lambda: self.applied == self.transactions, within)

    def __exit__(self, *exc: object) -> None:
        self.release()  # nothing is left waiting for a test that ended
        super().__exit__(*exc)


def _bundle(body: bytes) -> dict[str, Any] | None:
    """``body`` read as a Bundle, else None."""
    try:
        bundle = json.loads(body) if body else None
    except ValueError:
        return None
    return bundle if isinstance(bundle, dict) and bundle.get("resourceType") == "Bundle" else None


def _without_full_url(body: bytes) -> bool:
    """Whether ``body`` is a Bundle with an entry lacking the ``fullUrl`` R4 requires of it:
    only a POST's may be empty (Bundle.entry.fullUrl)."""
    bundle = _bundle(body)
    return bundle is not None and any(
        "fullUrl" not in entry and entry.get("request", {}).get("method") != "POST"
        for entry in bundle.get("entry", [])
    )


def _paged(body: bytes, page_size: int) -> bytes:
    """``body`` with ``_count=page_size`` in each search of a batch that asks none."""
    bundle = _bundle(body)
    if bundle is None or bundle.get("type") != "batch":
        return body
    for entry in bundle.get("entry", []):
        url = entry.get("request", {}).get("url", "")
        if "?" in url and "_count" not in dict(parse_qsl(url.partition("?")[2])):
            entry["request"]["url"] = f"{url}&_count={page_size}"
    return json.dumps(bundle).encode()
