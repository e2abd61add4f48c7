"""A real FHIR R4 server process (sekmet-fhir) for the sandbox EHR and the tests.

``FhirServer`` starts ``python -m sekmet.cli serve`` on a free loopback port with its data
(SQLite store, keys, traffic log) in a directory of its own, waits until ``GET /fhir/metadata``
answers, and stops the process again (SIGTERM, then SIGKILL after a grace period). It is a
context manager; an ``atexit`` hook stops a server that was never stopped explicitly (e.g.
after Ctrl-C), so no process is left behind.

sekmet answers without authentication on loopback (``server_auth.types: [none]``): the
sandbox's FHIR facade (``sandbox.ehr``) is what checks SMART access tokens.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import json
import os
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

import httpx

__all__ = ["FhirServer", "FhirServerError", "free_port"]


class FhirServerError(RuntimeError):
    """The FHIR server process could not be started or did not become ready."""


#: Where the ports :func:`free_port` hands out start: above the well-known and the common
#: registered ones, below the kernel's ephemeral range.
FIRST_FREE_PORT = 10_000
#: Fewer ports than this below the ephemeral range (a kernel tuned to hand out nearly all
#: of them) and :func:`free_port` asks the kernel for one instead.
MIN_ROOM = 1000
_handed_out: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that is free now, for a server about to start there.

    Chosen below the kernel's ephemeral range (:func:`_ephemeral_start`): a port the
    kernel gives for ``bind(0)`` lies inside it, and between its release and the server's
    own bind any outgoing connection of any process could take it as its source port, so
    that the server failed to start. Below the range only a server binding that very port
    can. Never the same port twice from this process: a server may not have bound the
    last one yet."""
    room = _ephemeral_start() - FIRST_FREE_PORT
    if room < MIN_ROOM:  # a kernel whose ephemeral range leaves no room below it
        return _any_free_port(host)
    for _ in range(1000):
        port = FIRST_FREE_PORT + secrets.randbelow(room)
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((host, port))
            except OSError as error:
                if error.errno in (errno.EADDRINUSE, errno.EACCES):
                    continue  # someone listens there, or it is still in TIME_WAIT
                raise  # not an IPv4 host of this machine: no port will do
        _handed_out.add(port)
        return port
    return _any_free_port(host)  # below the range, every port tried was taken


def _any_free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def _ephemeral_start() -> int:
    """The first port of the kernel's ephemeral range (Linux; IANA's 49152 elsewhere)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 49_152


class FhirServer:
    """One sekmet FHIR server process.

    >>> with FhirServer() as fhir:          # doctest: +SKIP
    ...     httpx.get(f"{fhir.base_url}/metadata")
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        data_dir: str | os.PathLike[str] | None = None,
        startup_timeout: float = 30.0,
        log_traffic: bool = False,
    ) -> None:
        self.host = host
        self._requested_port = port
        self.port = port
        self._data_dir_arg = Path(data_dir) if data_dir is not None else None
        self._tmp_dir: str | None = None
        self.data_dir: Path | None = None
        self.startup_timeout = startup_timeout
        self.log_traffic = log_traffic
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: Path | None = None
        self.startup_seconds: float | None = None

    # -- public API ---------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        """The FHIR base URL, e.g. ``http://127.0.0.1:43123/fhir`` (no trailing slash)."""
        if not self.port:
            raise FhirServerError("the FHIR server has not been started")
        return f"http://{self.host}:{self.port}/fhir"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> FhirServer:
        """Start the process and block until ``GET /fhir/metadata`` answers 200."""
        if self.running:
            return self
        t0 = time.monotonic()
        if self._data_dir_arg is None:
            self._tmp_dir = tempfile.mkdtemp(prefix="kindreflex-sekmet-")
            self.data_dir = Path(self._tmp_dir)
        else:
            self.data_dir = self._data_dir_arg
            self.data_dir.mkdir(parents=True, exist_ok=True)
        attempts = (
            1 if self._requested_port else 3
        )  # a free port may be taken between probe and bind
        last_error: Exception | None = None
        for _ in range(attempts):
            self.port = self._requested_port or free_port(self.host)
            try:
                self._spawn()
                self._wait_ready(t0 + self.startup_timeout)
            except FhirServerError as exc:
                last_error = exc
                self._terminate()
                continue
            self.startup_seconds = time.monotonic() - t0
            atexit.register(self.stop)
            return self
        self._cleanup_dir()
        raise FhirServerError(str(last_error))

    def stop(self) -> None:
        """Stop the process (idempotent) and remove a temporary data directory."""
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)
        self._terminate()
        self._cleanup_dir()

    def log_text(self) -> str:
        """The server's stdout/stderr so far (for diagnostics)."""
        if self._log_file is None or not self._log_file.exists():
            return ""
        return self._log_file.read_text(errors="replace")

    def inbound_requests(self) -> int:
        """FHIR requests the server received so far (its traffic log: ``log_traffic``).

        sekmet writes a request's row only after sending the answer, so the request a client
        was last answered may not be counted yet: fit for totals over many requests, not for
        an exact count right after an answer (count at a relay in front of the server)."""
        if not self.log_traffic or self.data_dir is None:
            raise RuntimeError("start the server with log_traffic=True to count its requests")
        with contextlib.closing(sqlite3.connect(self.data_dir / "sekmet.db")) as connection:
            row = connection.execute(
                "SELECT count(*) FROM traffic WHERE direction = 'inbound' AND url LIKE '%/fhir%'"
            ).fetchone()
        return int(row[0])

    def __enter__(self) -> FhirServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- internals ------------------------------------------------------------------------------
    def _settings(self) -> dict[str, object]:
        assert self.data_dir is not None
        return {
            "base_url": f"http://{self.host}:{self.port}/fhir",
            "host": self.host,
            "port": self.port,
            "data_dir": str(self.data_dir),
            "db_path": str(self.data_dir / "sekmet.db"),
            "own_private_key_path": str(self.data_dir / "keys" / "sekmet_private.pem"),
            "facility_name": "Kindreflex sandbox hospital",
            "server_auth": {"types": ["none"]},
            # sekmet's order/claim simulator would answer ServiceRequests (our step 6
            # referrals) on its own: not wanted in an EHR sandbox.
            "simulator": {"enabled": False},
            "log_inbound": self.log_traffic,
        }

    def _spawn(self) -> None:
        assert self.data_dir is not None
        config = self.data_dir / "sekmet-settings.json"  # YAML is a superset of JSON
        config.write_text(json.dumps(self._settings(), indent=2))
        self._log_file = self.data_dir / "sekmet.log"
        env = dict(os.environ)
        env["SEKMET_CONFIG"] = str(config)
        for var in ("SEKMET_BASE_URL", "SEKMET_DB", "SEKMET_PUBLIC_URL", "SEKMET_PORT"):
            env.pop(var, None)
        cmd = [
            sys.executable,
            "-m",
            "sekmet.cli",
            "serve",
            "--config",
            str(config),
            "--host",
            self.host,
            "--port",
            str(self.port),
        ]
        with self._log_file.open("ab") as log:
            self._proc = subprocess.Popen(
                cmd,
                cwd=str(self.data_dir),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # own process group: a terminal's Ctrl-C reaches us, and we stop the child
                # deliberately (and wait for it) instead of racing its own SIGINT handling.
                start_new_session=True,
            )

    def _wait_ready(self, deadline: float) -> None:
        url = f"http://{self.host}:{self.port}/fhir/metadata"
        delay = 0.02
        with httpx.Client(timeout=2.0) as client:
            while True:
                if self._proc is None or self._proc.poll() is not None:
                    raise FhirServerError(
                        f"sekmet exited with code {self._proc.returncode if self._proc else '?'}:\n"
                        f"{self.log_text()[-3000:]}"
                    )
                try:
                    r = client.get(url, headers={"Accept": "application/fhir+json"})
                    if (
                        r.status_code == 200
                        and r.json().get("resourceType") == "CapabilityStatement"
                    ):
                        return
                except (httpx.TransportError, ValueError):
                    pass
                if time.monotonic() > deadline:
                    raise FhirServerError(
                        f"sekmet did not answer {url} within {self.startup_timeout}s:\n"
                        f"{self.log_text()[-3000:]}"
                    )
                # polling interval of a readiness probe with a deadline (not synchronisation)
                time.sleep(delay)
                delay = min(delay * 1.5, 0.2)

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def _cleanup_dir(self) -> None:
        if self._tmp_dir is not None:
            shutil.rmtree(self._tmp_dir, ignore_errors=True)
            self._tmp_dir = None
