"""A real HTTP relay in front of a FHIR server that answers every request ``delay`` seconds
late: a server slow on each request, each answer within the client's timeout (the fault
under test: many such answers, one page view). Like a reverse proxy configured for the
server, it writes its own base URL in the answers for the server's (a search's ``next``
links), so a client pages through it.

It can also stand for a throttling gateway: while ``throttled`` holds answers (status and
``Retry-After``), each request is answered with the next of them instead of being passed
on, as a rate limiter in front of a FHIR server answers. And for a server answering what
ours must survive, ``rewrite`` changes every answer's body passed back."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

from tests.support.serving import Serving

#: What a throttling gateway answers (``SlowRelay.throttled``), as a FHIR server would.
_THROTTLED_OUTCOME = {
    "resourceType": "OperationOutcome",
    "issue": [{"severity": "error", "code": "throttled"}],
}
#: The headers passed on: what a FHIR exchange needs, not the connection's own.
_PASSED = ("Accept", "Authorization", "Content-Type", "If-Match", "If-None-Exist", "Prefer")


class SlowRelay(Serving):
    """Passes each request to ``upstream`` (a FHIR base URL) and its answer back ``delay``
    seconds later (0: at once; may be changed between requests). ``url`` is the relay's base
    URL, with ``upstream``'s path; ``asked`` counts the requests passed on, each as it
    arrives: once a client has an answer, its request is counted. ``throttled``: answers
    ``(status, Retry-After or None)`` given, one each, to the next requests in place of the
    server's (those requests are not passed on, nor counted in ``asked``). ``rewrite``: a
    change made to each answer's body (None: none)."""

    def __init__(self, upstream: str, delay: float = 0.0) -> None:
        self.delay = delay
        self.asked = 0
        self.throttled: list[tuple[int, str | None]] = []
        self.rewrite: Callable[[bytes], bytes] | None = None
        owner = self
        origin = httpx.URL(upstream).copy_with(path="/", query=None)

        class Handler(BaseHTTPRequestHandler):
            def _relay(self) -> None:
                if owner.throttled:
                    self.rfile.read(int(self.headers.get("Content-Length", "0")))
                    self._throttle(*owner.throttled.pop(0))
                    return
                owner.asked += 1
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                headers = {name: value for name in _PASSED if (value := self.headers.get(name))}
                answer = httpx.request(
                    self.command,
                    str(origin.join(self.path)),
                    content=body,
                    headers=headers,
                    timeout=30,
                )
                time.sleep(owner.delay)  # the fault itself, not synchronisation
                with contextlib.suppress(ConnectionError):  # the client gave up: expected
                    self._answer(answer)

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

            def _throttle(self, status: int, retry_after: str | None) -> None:
                content = json.dumps(_THROTTLED_OUTCOME).encode()
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
