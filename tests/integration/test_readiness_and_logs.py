"""What the operations endpoints and the server's logs do for a hospital's platform.

- Kubernetes' readiness probe must not take every pod out of the Service when a hospital's
  FHIR server takes no writes (the outbox keeps them), while the full ``/readyz`` still
  says so for alerting; with the database down ``/readyz`` names the failing checks.
- ``serve --workers N`` logs JSON lines from every worker, with no query string (the SMART
  redirect's authorization code).

That the manifests point at these paths is in ``tests/unit/test_deploy.py``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import yaml
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError

from service import audit
from service.app import create_app
from service.audit import AuditAction, AuditFact, Channel
from service.cli import KEEP_ALIVE_SECONDS, build_parser
from service.db.base import Database, utcnow
from service.db.models import OutboxEntry, Tenant
from service.observability import JsonFormatter
from service.outbox import READY_MAX_AGE
from service.settings import Settings
from tests.support.processes import free_port, running
from tests.support.write_path import make_tenant

DEPLOYMENT = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes" / "deployment.yaml"
FHIR_DOWN = "http://127.0.0.1:9/fhir"  # nothing listens there


def probe_path(probe: str) -> str:
    deployment: dict[str, Any] = yaml.safe_load(DEPLOYMENT.read_text())
    path: str = deployment["spec"]["template"]["spec"]["containers"][0][probe]["httpGet"]["path"]
    return path


def _stale_pending_write(database: Database) -> None:
    """A pending write the hospital's FHIR server has not taken for longer than readiness
    allows."""
    tenant = make_tenant(database, "default", FHIR_DOWN)
    fact = AuditFact(
        actor="Practitioner/nurse-1",
        action=AuditAction.SEARCH,
        patient_ref="Patient/p1",
        entities=("RelatedPerson/7",),
        outcome="success",
        at=utcnow(),
    )
    with database.session() as session:
        row = audit.record_read(session, Channel(tenant.id, "ehr", FHIR_DOWN, "s1"), fact)
        session.flush()
        session.execute(
            update(OutboxEntry)
            .where(OutboxEntry.id == row.outbox_id)
            .values(created_at=utcnow() - READY_MAX_AGE - timedelta(minutes=1))
        )


def test_a_fhir_server_that_takes_no_writes_fails_readyz_but_not_the_readiness_probe(
    database_url: str, database: Database
) -> None:
    """Else every pod leaves the Service at once: CDS cards and saves stop for every
    hospital while the outbox could have kept the writes."""
    _stale_pending_write(database)
    app = create_app(Settings(environment="test", database_url=database_url), database)
    client = TestClient(app)  # no lifespan: no worker delivers meanwhile
    full = client.get("/readyz")
    assert full.status_code == 503
    assert full.json()["checks"]["outbox"]["ok"] is False
    assert full.json()["checks"]["database"]["ok"] is True
    probe = client.get(probe_path("readinessProbe"))
    assert probe.status_code == 200
    assert list(probe.json()["checks"]) == ["database"]
    assert client.get(probe_path("livenessProbe")).status_code == 200
    unknown = client.get("/readyz", params={"check": "fhir"})
    assert unknown.status_code == 400
    assert "database, outbox" in unknown.json()["detail"]


def test_with_the_database_down_readyz_names_both_failing_checks_instead_of_a_500() -> None:
    url = "postgresql+psycopg://kindreflex@127.0.0.1:9/kindreflex"  # nothing listens there
    database = Database(url)
    try:
        app = create_app(Settings(environment="test", database_url=url), database)
        answer = TestClient(app).get("/readyz")
    finally:
        database.dispose()
    assert answer.status_code == 503
    checks = answer.json()["checks"]
    assert checks["database"]["ok"] is False
    assert checks["outbox"] == {"ok": False, "detail": "OperationalError"}


def test_the_probes_answer_while_the_screens_hold_every_thread_of_the_pool(
    database_url: str, database: Database
) -> None:
    """Screens waiting on a hung FHIR server held all of the thread pool's threads, and
    the probes waited behind them: readiness then took every pod out of the Service and
    liveness restarted them (found by an operations review). Here the pool's threads are
    all taken, as by those screens; the probes answer all the same."""
    app = create_app(Settings(environment="test", database_url=database_url), database)

    async def probes() -> list[httpx.Response]:
        limiter = anyio.to_thread.current_default_thread_limiter()
        screens = [object() for _ in range(int(limiter.total_tokens))]
        for screen in screens:
            await limiter.acquire_on_behalf_of(screen)
        transport = httpx.ASGITransport(app=app)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://kr") as client:
                return [
                    await asyncio.wait_for(client.get(path), timeout=10)
                    for path in ("/healthz", probe_path("readinessProbe"), "/readyz", "/metrics")
                ]
        finally:
            for screen in screens:
                limiter.release_on_behalf_of(screen)

    assert [answer.status_code for answer in asyncio.run(probes())] == [200, 200, 200, 200]


def test_serve_with_several_workers_logs_json_lines_and_no_query_string(tmp_path: Path) -> None:
    """uvicorn spawns its workers without the parent's logging: they printed plain text and
    dropped every INFO line. The SMART redirect's code is a secret: no query in the logs."""
    env = {**os.environ, "KINDREFLEX_DATABASE_URL": f"sqlite:///{tmp_path / 'kr.db'}"}
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "service.cli", "serve", "--port", str(port), "--workers", "2"]
    with running(command, f"{base}/healthz", env) as server:
        httpx.get(f"{base}/callback", params={"state": "s", "code": "the-code-4711"})
    output = server.output()
    lines = [json.loads(line) for line in output.splitlines()]  # every line is JSON
    access = [line["msg"] for line in lines if line["logger"] == "uvicorn.access"]
    assert any('"GET /callback HTTP/1.1" 400' in msg for msg in access), output
    assert "the-code-4711" not in output


def test_serve_keeps_idle_connections_open_longer_than_a_reverse_proxy_does(
    tmp_path: Path,
) -> None:
    """ingress-nginx reuses an idle connection for up to 60 s: uvicorn's own 5 s made it
    send a CDS call into a connection being closed (a 502). The option reaches uvicorn:
    with 1 s the server closes an idle connection after about that long."""
    assert KEEP_ALIVE_SECONDS > 60
    assert build_parser().parse_args(["serve"]).timeout_keep_alive == KEEP_ALIVE_SECONDS
    env = {**os.environ, "KINDREFLEX_DATABASE_URL": f"sqlite:///{tmp_path / 'kr.db'}"}
    port = free_port()
    command = [sys.executable, "-m", "service.cli", "serve", "--port", str(port)]
    with (
        running([*command, "--timeout-keep-alive", "1"], f"http://127.0.0.1:{port}/healthz", env),
        socket.create_connection(("127.0.0.1", port), timeout=10) as connection,
    ):
        connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: kindreflex\r\n\r\n")
        answer = b""
        while not answer.endswith(b'{"status":"ok"}'):  # the head and the body may come apart
            chunk = connection.recv(4096)
            assert chunk, f"closed before the whole answer: {answer!r}"
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 200")
        idle_since = time.monotonic()
        assert connection.recv(4096) == b""  # blocks until the server closes the connection
        assert time.monotonic() - idle_since < 4  # uvicorn's own default would be 5 s


def test_a_database_error_is_logged_without_the_values_of_the_statement(
    database: Database,
) -> None:
    """A failed write's error reaches the log (uvicorn logs a 500's traceback); its values
    are a patient's name and children's birth dates. Before, SQLAlchemy's message listed
    them ("[parameters: ('An Peeters', …)]") and PostgreSQL's named the key it matched
    ("DETAIL: Key (slug)=(…)")."""
    with database.session() as session:
        session.add(Tenant(slug="peeters-2016", name="An Peeters 2016-04-03"))
    with pytest.raises(IntegrityError) as refused, database.session() as session:
        session.add(Tenant(slug="peeters-2016", name="An Peeters 2016-04-03"))
    assert "An Peeters" not in str(refused.value)
    assert "hidden" in str(refused.value)  # SQLAlchemy says the values were left out

    error = refused.value
    record = logging.LogRecord(
        "uvicorn.error", logging.ERROR, __file__, 1, "Exception in ASGI application", None,
        (type(error), error, error.__traceback__),
    )  # fmt: skip
    logged = json.loads(JsonFormatter().format(record))["exc"]
    assert "IntegrityError" in logged
    for value in ("An Peeters", "2016-04-03", "peeters-2016"):
        assert value not in logged
