"""A real HTTP forward proxy on loopback, as a hospital's: CONNECT tunnels (https targets)
and absolute-URI requests (http targets), optionally behind Basic credentials, optionally
itself over TLS (an ``https://`` proxy). It records
every connection and every request it was asked, and resolves target names itself, from
``names`` (a test's stand-in for the proxy's DNS: the service never resolves them)."""

from __future__ import annotations

import base64
import select
import socket
import socketserver
import ssl
import threading
from dataclasses import dataclass
from urllib.parse import urlsplit

from tests.support.serving import Serving


@dataclass(frozen=True)
class Asked:
    """One request the proxy read: ``CONNECT host:port`` or ``GET http://host:port/path``."""

    method: str
    target: str
    proxy_authorization: str | None


class ForwardProxy(Serving):
    """Serves from a thread while entered, at ``url`` (``http://127.0.0.1:PORT``, or
    ``https://`` with ``tls``: the context of its certificate)."""

    def __init__(
        self,
        names: dict[str, str] | None = None,
        credentials: tuple[str, str] | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.names = dict(names or {})
        self.asked: list[Asked] = []
        self.connections = 0
        self._expected = None
        if credentials is not None:
            token = base64.b64encode(":".join(credentials).encode()).decode()
            self._expected = f"Basic {token}"
        owner = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                owner._handle(self)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        server = Server(("127.0.0.1", 0), Handler)
        if tls is not None:
            server.socket = tls.wrap_socket(server.socket, server_side=True)
        scheme = "http" if tls is None else "https"
        self.url = f"{scheme}://127.0.0.1:{server.server_address[1]}"
        super().__init__(server)
        self._lock = threading.Lock()

    def _handle(self, handler: socketserver.StreamRequestHandler) -> None:
        with self._lock:
            self.connections += 1
        while self._one_request(handler):
            pass

    def _one_request(self, handler: socketserver.StreamRequestHandler) -> bool:
        """Reads and answers one request; False when the connection is done."""
        line = handler.rfile.readline(65537).decode("latin-1").strip()
        if not line:
            return False
        headers: list[tuple[str, str]] = []
        while (header := handler.rfile.readline(65537).decode("latin-1").strip()) != "":
            name, _, value = header.partition(":")
            headers.append((name.strip(), value.strip()))
        method, target, _version = line.split(" ", 2)
        authorization = next((v for n, v in headers if n.lower() == "proxy-authorization"), None)
        with self._lock:
            self.asked.append(Asked(method, target, authorization))
        out = handler.wfile
        if self._expected is not None and authorization != self._expected:
            out.write(
                b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                b'Proxy-Authenticate: Basic realm="hospital"\r\nContent-Length: 0\r\n\r\n'
            )
            return True
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            upstream = self._connect(host.strip("[]"), int(port))
            if upstream is None:
                out.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                return True
            out.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            out.flush()
            _pipe(handler.connection, upstream)
            return False
        parts = urlsplit(target)
        upstream = self._connect(parts.hostname or "", parts.port or 80)
        if upstream is None:
            out.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            return True
        length = int(next((v for n, v in headers if n.lower() == "content-length"), "0"))
        body = handler.rfile.read(length) if length else b""
        path = parts.path or "/"
        if parts.query:
            path += f"?{parts.query}"
        forwarded = [
            (n, v)
            for n, v in headers
            if not n.lower().startswith("proxy-") and n.lower() != "connection"
        ]
        request = f"{method} {path} HTTP/1.1\r\n" + "".join(
            f"{n}: {v}\r\n" for n, v in [*forwarded, ("Connection", "close")]
        )
        upstream.sendall(request.encode("latin-1") + b"\r\n" + body)
        _pipe(handler.connection, upstream)  # the answer, until the server closes
        return False

    def _connect(self, host: str, port: int) -> socket.socket | None:
        """The proxy's own resolution: ``names``, or an address as written."""
        address = self.names.get(host.lower(), host)
        try:
            return socket.create_connection((address, port), timeout=5)
        except OSError:
            return None


def _pipe(client: socket.socket, upstream: socket.socket) -> None:
    """Copies bytes both ways until either side closes."""
    try:
        sockets = [client, upstream]
        while True:
            # TLS to the proxy: bytes it already decrypted are not the socket's to signal
            readable: list[socket.socket] = [
                s for s in sockets if isinstance(s, ssl.SSLSocket) and s.pending()
            ]
            if not readable:
                readable, _, _ = select.select(sockets, [], [], 10)
            if not readable:
                return
            for source in readable:
                data = source.recv(65536)
                if not data:
                    return
                (upstream if source is client else client).sendall(data)
    except OSError:
        return
    finally:
        upstream.close()
