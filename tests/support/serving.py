"""A test's own server on loopback, serving from a thread while entered (``with``)."""

from __future__ import annotations

import socketserver
import threading
from typing import Self


class Serving:
    """Serves ``server`` from a daemon thread while entered; on exit it is shut down, its
    socket closed and the thread joined."""

    def __init__(self, server: socketserver.BaseServer) -> None:
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
