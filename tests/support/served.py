"""A real HTTP server on loopback that answers every GET and POST with one JSON body: for
answers a real server will not give (an EHR's broken JWK Set, a chart a FHIR server
garbles, a token endpoint trickling its answer, a gateway compressing whatever was asked)
and for keys a test publishes."""

from __future__ import annotations

import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BufferedIOBase
from typing import Any

from tests.support.serving import Serving


class ServedJson(Serving):
    """Serves ``body`` at ``url`` from a thread while entered. ``body`` may be changed
    between requests; ``current()`` is what a request gets (a subclass may compute it) and
    ``send()`` how it is written. With ``encoding``, ``body`` is sent as that
    ``Content-Encoding`` (the test encodes it), whatever the request accepts; each request's
    ``Accept-Encoding`` is kept in ``accepted``."""

    def __init__(
        self,
        body: bytes = b"",
        path: str = "/",
        tls: ssl.SSLContext | None = None,
        encoding: str | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.body = body
        self.encoding = encoding
        self.accepted: list[str | None] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.accepted.append(self.headers.get("Accept-Encoding"))
                answer = owner.current()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                if owner.encoding is not None:
                    self.send_header("Content-Encoding", owner.encoding)
                self.send_header("Content-Length", str(len(answer)))  # of the encoded body
                self.end_headers()
                owner.send(self.wfile, answer)

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                self.do_GET()

            def log_message(self, format: str, *args: Any) -> None:
                return

        httpd = ThreadingHTTPServer((host, 0), Handler)
        if tls is not None:  # https, with the certificate the context holds
            httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
        scheme = "http" if tls is None else "https"
        self.url = f"{scheme}://{host}:{httpd.server_address[1]}{path}"
        super().__init__(httpd)

    def current(self) -> bytes:
        return self.body

    def send(self, out: BufferedIOBase, answer: bytes) -> None:
        """Writes the answer at once; a subclass may send it otherwise (slowly)."""
        out.write(answer)


class Counted(ServedJson):
    """A server that counts the requests it answered: "never fetched" is zero of them, "once"
    one of a burst of concurrent ones."""

    def __init__(self, body: bytes, path: str = "/") -> None:
        super().__init__(body, path)
        self.requests = 0
        self._counting = threading.Lock()  # requests are answered on threads of their own

    def current(self) -> bytes:
        with self._counting:
            self.requests += 1
        return self.body


class Trickled(ServedJson):
    """A server that sends ``body`` one byte at a time, ``pause`` seconds apart: every read
    gets a byte well within any per-read timeout (the fault under test)."""

    def __init__(self, body: bytes, pause: float, path: str = "/") -> None:
        super().__init__(body, path)
        self.pause = pause

    def send(self, out: BufferedIOBase, answer: bytes) -> None:
        started = time.monotonic()
        try:
            for sent, byte in enumerate(answer, 1):
                out.write(bytes([byte]))
                out.flush()
                # paced from the start: a loaded machine's oversleeping does not add up
                time.sleep(max(0.0, started + sent * self.pause - time.monotonic()))
        except ConnectionError:
            return  # the client gave up on the answer: what the test expects
