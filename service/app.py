"""The application factory: wires settings, database, tenants and routers together."""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.telemetry import TelemetryConfig
from prometheus_client import Counter
from starlette.types import ASGIApp

import smart_app
from service import keys
from service.api import health
from service.cds.fastpath import CdsFastPath
from service.cds.router import CdsState, new_cds_state
from service.cds.router import router as cds_router
from service.db.base import Database
from service.fhir import terminology
from service.observability import Metrics, MetricsMiddleware
from service.outbox import Outbox, OutboxWorker
from service.settings import Settings, get_settings
from service.tenancy import SecretBox, TenantDirectory
from service.triage import Triage
from smart_app.admin import router as admin_router
from smart_app.casefile import router as casefile_router
from smart_app.monitoring import router as monitoring_router
from smart_app.nurse import router as nurse_router
from smart_app.social import router as social_router

log = logging.getLogger(__name__)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Background work of one instance: the outbox worker delivers pending FHIR writes; at
    shutdown the CDS path's pending writes are finished."""
    worker = OutboxWorker(app.state.outbox, app.state.settings.outbox_interval_seconds)
    worker.start()
    _freeze_startup_heap()
    try:
        yield
    finally:
        cds: CdsState = app.state.cds
        await cds.commits.flushed()  # the cards returned so far are recorded
        await asyncio.to_thread(worker.stop)


@functools.cache  # once per process: a test run builds many apps
def _freeze_startup_heap() -> None:
    """Keep what start-up loaded (the FHIR guide, the app) out of the garbage collector.

    A full collection walks every object: with the guide in memory that took about 130 ms,
    a pause every CDS call in flight shared (it was the hook's p99). These objects live as
    long as the process anyway.
    """
    gc.collect()
    gc.freeze()


#: FastAPI's own OpenTelemetry off (``KINDREFLEX_OPENTELEMETRY``): it checked the global
#: providers, reading the environment, on every request — the CDS hook's included.
_NO_TELEMETRY: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}


class KindreflexApp(FastAPI):
    """The app, with the CDS Hooks endpoints answered before its middleware stack: the EHR
    waits on those calls (``service.cds.fastpath``)."""

    def build_middleware_stack(self) -> ASGIApp:
        return CdsFastPath(super().build_middleware_stack(), self.state.metrics)


def create_app(settings: Settings | None = None, database: Database | None = None) -> FastAPI:
    """Build the ASGI app. The database schema must already be migrated (``db upgrade``)."""
    settings = settings or get_settings()
    database = database or Database(settings.database_url)
    metrics = Metrics()
    if settings.guide_dir is not None:
        terminology.configure(settings.guide_dir)
    terminology.guide()  # a missing or broken guide stops the start, not the first card

    app = KindreflexApp(
        title="Kindreflex-ED",
        summary="The Flemish Kindreflex in the emergency department: CDS Hooks and SMART on FHIR",
        version="0.1.0",
        lifespan=_lifespan,
        telemetry=None if settings.opentelemetry else _NO_TELEMETRY,
    )
    app.state.settings = settings
    app.state.database = database
    app.state.metrics = metrics
    app.state.tenants = TenantDirectory(database, SecretBox(settings.secret_key))
    app.state.readiness_checks = [health.database_check(database)]
    app.state.cds = new_cds_state(database, metrics.registry)

    app.include_router(health.router)
    app.include_router(cds_router)  # CDS Hooks for the default hospital
    app.include_router(cds_router, prefix="/t/{tenant}")
    app.state.keys = keys.KeyStore(database, settings)
    app.include_router(keys.router)
    smart_app.install(app)  # SMART launch, sessions, their error pages
    _install_write_path(app, settings, database)
    app.include_router(nurse_router)  # the nurse's triage screen (steps 1-3)
    app.include_router(nurse_router, prefix="/t/{tenant}")
    app.include_router(admin_router)  # the EHR administrator's screen and API
    app.include_router(admin_router, prefix="/t/{tenant}")
    app.include_router(social_router)  # the social service's cases (issue 5)
    app.include_router(social_router, prefix="/t/{tenant}")
    for prefix in ("", "/t/{tenant}"):  # the social worker's case pages
        app.include_router(casefile_router, prefix=prefix)
    app.include_router(monitoring_router)  # the monitoring figures (issue 5 §6)
    app.include_router(monitoring_router, prefix="/t/{tenant}")
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    if not settings.cds_jwt_required:
        log.warning(
            "CDS Hooks JWT verification is OFF: any caller can ask for cards. "
            "Only acceptable for the local demo.",
            extra={"fields": {"environment": settings.environment}},
        )
    return app


def _install_write_path(app: FastAPI, settings: Settings, database: Database) -> None:
    """The outbox (with its readiness check) and the triage save; both need SMART's tokens."""
    deliveries = Counter(
        "kindreflex_outbox_deliveries_total",
        "FHIR write deliveries by resulting state (alert on failed and conflict).",
        ["state"],
        registry=app.state.metrics.registry,
    )
    outbox = Outbox(
        database,
        app.state.session_tokens,
        timeout=settings.fhir_timeout_seconds,
        retry_base=settings.outbox_interval_seconds,
        deliveries=deliveries,
    )
    app.state.outbox = outbox
    app.state.triage = Triage(
        database, outbox, app.state.session_tokens, settings.fhir_timeout_seconds
    )
    app.state.readiness_checks.append(outbox.readiness_check())
