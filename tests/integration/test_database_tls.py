"""The database URL the install guide gives (``sslmode=verify-full&sslrootcert=system``)
verifies the database's certificate in the service image.

psycopg's binary wheel brings its own libpq and OpenSSL, whose trust store is a folder of
the wheel's builder that Debian does not have: ``sslrootcert=system`` trusted no CA at all
and every connection of the image failed "certificate verify failed" (found by review).
Only ``SSL_CERT_FILE`` points that OpenSSL elsewhere, so the image sets it to Debian's CA
bundle (tests/unit/test_deploy.py). A real PostgreSQL serving TLS with a certificate of a
test CA shows here that ``sslrootcert=system`` follows ``SSL_CERT_FILE``.
"""

from __future__ import annotations

import asyncio
import glob
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest

from service.cds.auth import SEEN_TOKENS
from service.cds.batching import GroupCommit, fast_writes
from service.db import migrate
from service.db.base import Database
from service.tenancy import SecretBox, TenantDirectory
from service.tenant_config import TenantConfiguration
from tests.support.processes import free_port
from tests.support.tls import private_ca

#: Debian's CA bundle (package ca-certificates, in the python slim images).
DEBIAN_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def _bin(name: str) -> str:
    found = shutil.which(name) or next(iter(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")), None)
    assert found, f"{name} not found: ./dev test installs PostgreSQL"
    return found


def _as_server_user(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as ``postgres`` then (./dev test runs as either)."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@pytest.fixture(scope="module")
def tls_postgres() -> Iterator[tuple[int, Path]]:
    """A PostgreSQL cluster of its own serving TLS with a certificate for 127.0.0.1 of a
    test CA: its port and the CA's certificate. (Not under pytest's temporary folder,
    which the server's user may not enter.)"""
    with tempfile.TemporaryDirectory(prefix="kindreflex-tls-postgres-") as folder:
        home = Path(folder)
        home.chmod(0o755)
        yield from _serving_tls(home)


def _serving_tls(home: Path) -> Iterator[tuple[int, Path]]:
    ca = private_ca(home)
    data = home / "data"
    data.mkdir(mode=0o700)
    if os.geteuid() == 0:
        shutil.chown(data, "postgres", "postgres")
    initdb = [_bin("initdb"), "-A", "trust", "-U", "postgres", "-D", str(data)]
    subprocess.run(_as_server_user(initdb), check=True, capture_output=True)
    for source, name in ((ca.server_chain, "server.crt"), (ca.server_key, "server.key")):
        shutil.copy(source, data / name)
        (data / name).chmod(0o600)
        if os.geteuid() == 0:
            shutil.chown(data / name, "postgres", "postgres")
    port = free_port()
    options = f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c ssl=on"
    pg_ctl = [_bin("pg_ctl"), "-s", "-D", str(data), "-l", str(data / "server.log"), "-o", options]
    subprocess.run(_as_server_user([*pg_ctl, "-w", "start"]), check=True)
    try:
        yield port, ca.ca_file
    finally:
        subprocess.run(_as_server_user([*pg_ctl, "-m", "immediate", "stop"]), check=False)


def _connect(port: int, ssl_cert_file: str) -> subprocess.CompletedProcess[str]:
    """A connection as the service makes it, in a process whose OpenSSL reads its trust
    store from ``ssl_cert_file`` alone, as in the image."""
    url = (
        f"host=127.0.0.1 port={port} user=postgres dbname=postgres "
        "sslmode=verify-full sslrootcert=system"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SSL_CERT", "PG"))}
    code = f"import psycopg; print(psycopg.connect({url!r}).info.pgconn.ssl_in_use)"
    env["SSL_CERT_FILE"] = ssl_cert_file
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )


def test_sslrootcert_system_trusts_the_ca_bundle_ssl_cert_file_names(
    tls_postgres: tuple[int, Path],
) -> None:
    port, ca_file = tls_postgres
    trusted = _connect(port, str(ca_file))
    assert trusted.returncode == 0, trusted.stderr
    assert trusted.stdout.strip() == "True"
    elsewhere = _connect(port, DEBIAN_CA_BUNDLE)  # a bundle without the test CA
    assert elsewhere.returncode != 0
    assert "certificate verify failed" in elsewhere.stderr


def test_the_cds_path_reads_the_ca_file_the_url_names_at_a_path_with_a_space(
    tls_postgres: tuple[int, Path], tmp_path: Path
) -> None:
    """README: `&sslrootcert=/path/ca.crt` after the '?', a space percent-encoded. The
    service's engine read `Hospital CA.crt`; the CDS path's own connections looked for
    `Hospital+CA.crt`, found no CA, and every hook call was a 503 (found by review)."""
    port, ca_file = tls_postgres
    with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres", autocommit=True) as admin:
        admin.execute("CREATE DATABASE kindreflex_ca_path")
    named = shutil.copy(ca_file, tmp_path / "Hospital CA.crt")
    url = (
        f"postgresql+psycopg://postgres@127.0.0.1:{port}/kindreflex_ca_path"
        f"?sslmode=verify-full&sslrootcert={quote(str(named))}"
    )
    migrate.upgrade(url)  # `kindreflex db upgrade`: the service's engine
    database = Database(url)
    try:
        tenant = TenantDirectory(database, SecretBox(None)).save(
            "default", TenantConfiguration(name="AZ"), actor="test"
        )
        row = {
            "tenant_id": tenant.id,
            "issuer": "https://ehr.example/cds",
            "jti": "over-tls",
            "expires_at": datetime.now(UTC) + timedelta(minutes=5),
        }

        async def first_use() -> bool:
            commits = GroupCommit(fast_writes(database))
            written = commits.submit(SEEN_TOKENS, row)
            await commits.flushed()
            return written.result()

        assert asyncio.run(first_use()) is True
    finally:
        database.dispose()
