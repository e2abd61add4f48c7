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
from sqlalchemy.engine import URL, make_url

from tests.support.processes import free_port, stop

#: Where Debian's package puts it (not on a user's PATH); ``./dev test`` installs it.
PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"


@contextmanager
def pgbouncer_in_front_of(url: str) -> Iterator[str]:
    """``url``'s database through a PgBouncer of its own on a free port: its URL."""
    if not Path(PGBOUNCER).exists():  # not a skip: the suite promises this coverage
        raise RuntimeError("PgBouncer is not installed: ./dev test installs it (README)")
    target, port = make_url(url), free_port()
    with tempfile.TemporaryDirectory(prefix="kindreflex-pgbouncer-") as name:
        directory = Path(name)
        config = _configured(directory, target, port)
        (directory / "users.txt").write_text(f'"{target.username}" ""\n')
        directory.chmod(0o755)  # PgBouncer drops root for nobody (below), who must read these
        for written in directory.iterdir():
            written.chmod(0o644)
        # PgBouncer refuses to run as root
        command = [PGBOUNCER, *(["-u", "nobody"] if os.geteuid() == 0 else []), str(config)]
        pooled = target.set(host="127.0.0.1", port=port)
        with running_until_ready(command, pooled):
            yield pooled.render_as_string(hide_password=False)


@contextmanager
def running_until_ready(command: list[str], pooled: URL) -> Iterator[None]:
    """PgBouncer for the block, once it takes connections; stopped (killed if it must be)."""
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            conninfo = pooled.set(drivername="postgresql").render_as_string(hide_password=False)
            _wait_until_it_connects(conninfo, process, log)
            yield
        finally:
            stop(process)


def _configured(directory: Path, target: URL, listen: int) -> Path:
    config = directory / "pgbouncer.ini"
    config.write_text(
        f"[databases]\n{target.database} = host={target.host} port={target.port or 5432}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {listen}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {directory / 'users.txt'}\npool_mode = session\n"
        f"admin_users = {target.username}\n"  # its console: PAUSE, RESUME (paused)
    )
    return config


@contextmanager
def paused(pooled_url: str) -> Iterator[None]:
    """The pooler holds every new query for the block (its console's ``PAUSE``), as when
    the database behind it does not answer: a login still succeeds, a statement waits."""
    url = make_url(pooled_url)
    console = url.set(drivername="postgresql", database="pgbouncer")
    database = url.database
    with psycopg.connect(console.render_as_string(hide_password=False), autocommit=True) as admin:
        admin.execute(f"PAUSE {database}")
        try:
            yield
        finally:
            admin.execute(f"RESUME {database}")


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
