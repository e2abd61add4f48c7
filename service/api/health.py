"""Operations endpoints: liveness, readiness and Prometheus metrics.

They answer on the event loop, their checks in threads of their own (``_PROBE_THREADS``):
not in the thread pool the screens wait in. Screens waiting on one hospital's hung FHIR
server took all of its threads, and the probes then timed out with them: readiness took
every pod out of the Service and liveness restarted them, for every hospital (found by
an operations review).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from service.db.base import Database
from service.observability import Metrics

router = APIRouter(tags=["operations"])
#: A database check that hangs holds one; the next probe has the other.
_PROBE_THREADS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="probe")


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str


ReadinessCheck = Callable[[], CheckResult]
#: ``app.state.readiness_checks``: each check by the name ``/readyz?check=`` selects it by.
ReadinessChecks = dict[str, ReadinessCheck]


def database_check(database: Database) -> ReadinessCheck:
    """Whether the database answers and takes writes, asked on a connection outside the
    pool (``Database.probe_engine``): a pool that every request holds says this instance is
    busy, not that it should leave the Service (docs/architecture.md, *Persistence*). The
    detail says how full the pool is, so that a busy instance shows it."""

    def check() -> CheckResult:
        try:
            with database.probe_engine.connect() as connection:
                # a server that takes no writes (a standby after a fail-over) is not ready:
                # every save would fail on it while SELECT 1 said ready (found by review)
                if connection.dialect.name == "postgresql":
                    shown = connection.exec_driver_sql("SHOW transaction_read_only").scalar()
                    read_only = shown == "on"
                else:
                    read_only = False
                    connection.execute(text("SELECT 1"))
        except Exception as error:  # any failure means "not ready"
            return CheckResult("database", False, type(error).__name__)
        if read_only:
            return CheckResult("database", False, "read-only: it takes no writes")
        in_use = database.pool_in_use()
        if in_use is None:
            return CheckResult("database", True, "reachable")
        used, limit = in_use
        return CheckResult(
            "database", True, f"reachable; {used} of {limit} pooled connections in use"
        )

    return check


@router.get("/healthz", summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="The database answers and the outbox is delivering")
async def readyz(
    request: Request,
    check: Annotated[
        list[str] | None,
        Query(
            description="Only these checks (`database`, `outbox`); all of them when absent. "
            "Kubernetes' readiness probe asks for `database` only: a hospital FHIR server that "
            "takes no writes must not take the service out of its load balancer (the outbox "
            "keeps the writes meanwhile); alert on the full /readyz instead.",
        ),
    ] = None,
) -> JSONResponse:
    checks: ReadinessChecks = request.app.state.readiness_checks
    names = list(dict.fromkeys(check)) if check else list(checks)
    unknown = [name for name in names if name not in checks]
    if unknown:
        return JSONResponse(
            {"detail": f"unknown check {', '.join(unknown)[:100]}: one of {', '.join(checks)}"},
            status_code=400,
        )
    loop = asyncio.get_running_loop()
    results = [
        await loop.run_in_executor(_PROBE_THREADS, _run, name, checks[name]) for name in names
    ]
    ready = all(result.ok for result in results)
    body = {
        "status": "ready" if ready else "not ready",
        "checks": {r.name: {"ok": r.ok, "detail": r.detail} for r in results},
    }
    return JSONResponse(body, status_code=200 if ready else 503)


def _run(name: str, check: ReadinessCheck) -> CheckResult:
    """A check that raises (the outbox's query with the database down) is a failed check:
    the answer stays 503 with the reason, not a 500."""
    try:
        return check()
    except Exception as error:
        return CheckResult(name, False, type(error).__name__)


@router.get("/metrics", summary="Prometheus metrics")
async def metrics(request: Request) -> Response:
    registry: Metrics = request.app.state.metrics
    return Response(generate_latest(registry.registry), media_type=CONTENT_TYPE_LATEST)
