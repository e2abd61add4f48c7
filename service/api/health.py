"""Operations endpoints: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from service.db.base import Database
from service.observability import Metrics

router = APIRouter(tags=["operations"])


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str


ReadinessCheck = Callable[[], CheckResult]


def database_check(database: Database) -> ReadinessCheck:
    def check() -> CheckResult:
        try:
            with database.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except Exception as error:  # any failure means "not ready"
            return CheckResult("database", False, type(error).__name__)
        return CheckResult("database", True, "reachable")

    return check


@router.get("/healthz", summary="The process is alive")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="The database answers and the outbox is delivering")
def readyz(request: Request) -> JSONResponse:
    checks: list[ReadinessCheck] = request.app.state.readiness_checks
    results = [check() for check in checks]
    ready = all(result.ok for result in results)
    body = {
        "status": "ready" if ready else "not ready",
        "checks": {r.name: {"ok": r.ok, "detail": r.detail} for r in results},
    }
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/metrics", summary="Prometheus metrics")
def metrics(request: Request) -> Response:
    registry: Metrics = request.app.state.metrics
    return Response(generate_latest(registry.registry), media_type=CONTENT_TYPE_LATEST)
