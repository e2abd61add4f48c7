"""A real PgBouncer in front of a test database: how hospitals on Kubernetes often reach
PostgreSQL (CloudNativePG's Pooler is PgBouncer). Session pooling, the mode the install
guide asks for; its other settings PgBouncer's defaults."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import psycopg
from sqlalchemy.engine import make_url

from tests.support.processes import free_port

#: Where Debian's package puts it (not on a user's PATH); ``./dev test`` installs it.
PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"


@contextmanager
def pgbouncer_in_front_of(url: str) -> Iterator[str]:
    """``url``'s database through a PgBouncer of its own on a free port: its URL."""
    if not Path(PGBOUNCER).exists():  # not a skip: the suite promises this coverage
        raise RuntimeError("PgBouncer is not installed: ./dev test installs it (README)")
    target, port = make_url(url), free_port()
    directory = Path(tempfile.mkdtemp(prefix="kindreflex-pgbouncer-"))
    config = _configured(directory, target.database or "", target.host or "", target.port, port)
    (directory / "users.txt").write_text(f'"{target.username}" ""\n')
    directory.chmod(0o755)  # PgBouncer drops root for nobody (below), who must read these
    for written in directory.iterdir():
        written.chmod(0o644)
    # PgBouncer refuses to run as root
    command = [PGBOUNCER, *(["-u", "nobody"] if os.geteuid() == 0 else []), str(config)]
    log = tempfile.TemporaryFile()  # noqa: SIM115 - read when it fails to start
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    pooled = target.set(host="127.0.0.1", port=port)
    try:
        _wait_until_it_connects(
            pooled.set(drivername="postgresql").render_as_string(hide_password=False), process, log
        )
        yield pooled.render_as_string(hide_password=False)
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()
        shutil.rmtree(directory)


def _configured(directory: Path, database: str, host: str, port: int | None, listen: int) -> Path:
    config = directory / "pgbouncer.ini"
    config.write_text(
        f"[databases]\n{database} = host={host} port={port or 5432}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {listen}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {directory / 'users.txt'}\npool_mode = session\n"
    )
    return config


def _wait_until_it_connects(
    conninfo: str, process: subprocess.Popen[bytes], log: IO[bytes]
) -> None:
    give_up = time.monotonic() + 30
    while time.monotonic() < give_up:
        if process.poll() is not None:
            log.seek(0)
            raise RuntimeError(
                f"PgBouncer exited with {process.returncode}:\n{log.read().decode()}"
            )
        try:
            psycopg.connect(conninfo, connect_timeout=1).close()
            return
        except psycopg.OperationalError:
            time.sleep(0.05)  # polling interval of a readiness probe, not synchronisation
    raise TimeoutError("PgBouncer did not take connections within 30 s")
