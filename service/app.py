"""The application factory: wires settings, database, tenants and routers together."""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import math
from collections.abc import AsyncIterator, MutableMapping
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlencode

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.telemetry import TelemetryConfig
from prometheus_client import Counter
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import smart_app
from service import casework, keys, outbound
from service.api import health
from service.api.deps import for_each_hospital
from service.cds.fastpath import CdsFastPath
from service.cds.router import DEFAULT_HEADERS, MAX_BODY_BYTES, CdsState, new_cds_state
from service.cds.router import router as cds_router
from service.db.base import Database
from service.fhir import terminology
from service.observability import CLIENT_CLOSED, Metrics, MetricsMiddleware, configure_logging
from service.outbox import Outbox, OutboxWorker
from service.settings import Settings, get_settings
from service.tenancy import SecretBox, TenantDirectory
from service.triage import Triage
from smart_app.admin import router as admin_router
from smart_app.casefile import router as casefile_router
from smart_app.errors import JSON_API, PageError, handle_invalid_page_request, handle_page_error
from smart_app.monitoring import router as monitoring_router
from smart_app.nurse import icon_router
from smart_app.nurse import router as nurse_router
from smart_app.security import ANY_FRAME, page_headers
from smart_app.session import LAUNCH_PARAM
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


def _credentials_in_query(scope: MutableMapping[str, Any]) -> bool:
    """The SMART launch and callback, whose query strings are credentials (the EHR's launch
    token, the authorization code, the state): FastAPI's span carries a request's whole
    query (``url.query``), which the access log drops (found by review: sent to the
    hospital's collector as it was). A registration's own redirect URI
    (``/callback/{hospital}/{registration}``) too."""
    segments = str(scope.get("path", "")).rstrip("/").split("/")
    return segments[-1] in ("launch", "callback") or segments[1:2] == ["callback"]


#: Switched on: requests traced and measured, but not those, and no log records of
#: FastAPI's own: they carry an exception's message and stack whole, past the scrubbing of
#: our log formatter (a database error's values: ``observability.JsonFormatter``).
_TELEMETRY: TelemetryConfig = {"logs": False, "exclude": _credentials_in_query}


class KindreflexApp(FastAPI):
    """The app, with the CDS Hooks endpoints answered before its middleware stack: the EHR
    waits on those calls (``service.cds.fastpath``)."""

    def build_middleware_stack(self) -> ASGIApp:
        # DefaultHeaders outside Starlette's outermost layer (ServerErrorMiddleware), so
        # that its plain-text 500 has them too; inside the fast path, which sets its own.
        stack = DefaultHeaders(super().build_middleware_stack())
        return CdsFastPath(stack, self.state.metrics)


def create_app(settings: Settings | None = None, database: Database | None = None) -> FastAPI:
    """Build the ASGI app. The database schema must already be migrated (``db upgrade``)."""
    settings = settings or get_settings()
    if not logging.getLogger().handlers:
        # a worker process of `serve --workers N`: uvicorn spawns it with no logging set up
        # (`kindreflex` configured only the parent), which would drop every INFO line and
        # print the rest as plain text
        configure_logging(settings.log_level)
    database = database or Database.of(settings)
    metrics = Metrics()
    if settings.guide_dir is not None:
        terminology.configure(settings.guide_dir)
    terminology.guide()  # a missing or broken guide stops the start, not the first card
    outbound.configure(  # where the service may connect, and through which proxy, for all
        settings.outbound_allow, settings.outbound_proxy, settings.outbound_no_proxy
    )

    app = KindreflexApp(
        title="Kindreflex-ED",
        summary="The Flemish Kindreflex in the emergency department: CDS Hooks and SMART on FHIR",
        version="0.1.0",
        lifespan=_lifespan,
        telemetry=_TELEMETRY if settings.opentelemetry else _NO_TELEMETRY,
        # The API's pages for people (Swagger UI, ReDoc) run a script FastAPI loads from a
        # public CDN, of a version that moves: on the hospital's service origin, next to
        # the sessions of nurses and social workers, in production never. The document
        # itself (/openapi.json), which an integrator generates a client from, stays.
        docs_url=None if settings.environment == "production" else "/docs",
        redoc_url=None if settings.environment == "production" else "/redoc",
    )
    app.state.settings = settings
    app.state.database = database
    app.state.metrics = metrics
    app.state.tenants = TenantDirectory(database, SecretBox(settings.secret_key))
    app.state.readiness_checks = {"database": health.database_check(database)}
    app.state.cds = new_cds_state(database, metrics.registry, settings.secret_key)

    app.include_router(health.router)
    for_each_hospital(app, cds_router)  # CDS Hooks
    app.state.keys = keys.KeyStore(database, settings)
    app.include_router(keys.router)
    smart_app.install(app)  # SMART launch, sessions, their error pages
    _install_write_path(app, settings, database)
    for_each_hospital(app, nurse_router)  # the nurse's triage screen (steps 1-3)
    app.include_router(icon_router)  # /favicon.ico
    for_each_hospital(app, admin_router)  # the EHR administrator's screen and API
    for_each_hospital(app, social_router)  # the social service's cases (issue 5)
    for_each_hospital(app, casefile_router)  # the social worker's case pages
    for_each_hospital(app, monitoring_router)  # the monitoring figures (issue 5 §6)
    app.add_exception_handler(RequestValidationError, _validation_failed)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(ClientDisconnect, client_gone)
    # The CDS hooks' limit (they apply it themselves, before this) is the app's: the largest
    # bodies elsewhere are an admin's imports (the partner directory: 5 KiB as YAML, a
    # region's FHIR Bundle some hundred KiB; the configuration YAML).
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # outside BodyLimit: counts the 413s
    # (DefaultHeaders is outside all of them, and outside Starlette's 500: KindreflexApp)

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
    lease_renewal_failures = Counter(
        "kindreflex_outbox_lease_renewal_failures_total",
        "Lease renewals of a running delivery the database refused (alert on any: a lease "
        "that runs out lets another instance send the entry again).",
        registry=app.state.metrics.registry,
    )
    outbox = Outbox(
        database,
        app.state.session_tokens,
        timeout=settings.fhir_timeout_seconds,
        retry_base=settings.outbox_interval_seconds,
        deliveries=deliveries,
        lease_renewal_failures=lease_renewal_failures,
    )
    casework.install(outbox)  # a refused social save puts its worklist row back
    app.state.outbox = outbox
    app.state.triage = Triage(
        database, outbox, app.state.session_tokens, settings.fhir_timeout_seconds
    )
    app.state.readiness_checks["outbox"] = outbox.readiness_check()


class _BodyTooLargeError(Exception):
    pass


class BodyLimit:
    """Refuses a request body over ``limit`` bytes with 413 before the app buffers it.

    A declared ``Content-Length`` over the limit is refused before the app runs. A body
    without one (chunked) is counted as the app reads it: past the limit, the read fails
    and whatever the app made of that failure is replaced by the 413.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.limit:
            await _too_large(scope["path"], self.limit)(scope, receive, send)
            return
        received = 0
        answered = False  # the app's response began before the body was too large

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise _BodyTooLargeError
            return message

        async def send_unless_too_large(message: Message) -> None:
            nonlocal answered
            if received > self.limit:  # the app's answer to a body it never got whole
                return
            answered = answered or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, send_unless_too_large)
        except Exception:
            if received <= self.limit or answered:
                raise
        if received > self.limit and not answered:
            await _too_large(scope["path"], self.limit)(scope, receive, send)


class DefaultHeaders:
    """``Cache-Control: no-store`` and ``X-Content-Type-Options: nosniff`` on every answer
    that does not say otherwise (the static assets and the JWKS say how long to keep them).
    The pages set both themselves; the JSON APIs carry the same children's names and notes
    (the social worklist and cases, the admin's configuration), and a browser on a shared
    workstation must not keep them on its disk. ``nosniff``: a browser never reads a JSON
    or YAML answer (``/api/cases``, ``/admin/api/config.yaml``, ``/metrics``) as a script
    or a page, whatever text a user put in it (found by a route sweep). The outermost
    layer but the CDS fast path (``KindreflexApp``): Starlette's plain-text 500 for an
    exception no handler takes has them too. (The CDS hooks are answered before it, and
    say so themselves: ``service.cds.router``.)"""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_defaults(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in DEFAULT_HEADERS.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_with_defaults)


def _too_large(path: str, limit: int) -> Response:
    """413: the APIs' JSON error, or a short page in the app's three languages (the app's
    error pages are translated messages; this one is a plain text)."""
    mib = limit // 2**20
    if JSON_API.fullmatch(path):
        return JSONResponse({"detail": f"the request body is larger than {mib} MiB"}, 413)
    text = (
        f"Het verzoek is te groot (ten hoogste {mib} MiB).\n"
        f"La requête est trop volumineuse ({mib} Mio au plus).\n"
        f"The request is too large (at most {mib} MiB).\n"
    )
    return PlainTextResponse(text, 413, headers=page_headers(ANY_FRAME))


async def client_gone(request: Request, error: Exception) -> Response:
    """The client went away while sending its body (a nurse's Wi-Fi dropping mid-save, an
    EHR giving up on a hook call): nothing was read, so nothing is written. It was a 500
    with an ERROR traceback, counted for 5xx alerting (found by fuzzing). Nobody reads
    this answer."""
    log.info("client closed the request", extra={"fields": {"path": request.url.path}})
    return Response(status_code=CLIENT_CLOSED)


async def _http_error(request: Request, error: Exception) -> Response:
    """FastAPI's answer to an HTTP error, but a browser's address that names no page gets
    the app's "page not found" in the user's language, where FastAPI answered the English
    JSON ``{"detail": "Not Found"}`` (no title, no language: found by review); a form the
    page cannot parse (forged: over a thousand multipart fields) gets a page likewise. In
    the browser's language: an address that names nothing reads no session. An address
    only a form posts to, opened as a page (the address bar after a refused save, a tab
    restored), goes to the page that form belongs to (FastAPI: JSON "Method Not Allowed")."""
    assert isinstance(error, StarletteHTTPException)
    browsing = "text/html" in request.headers.get("accept", "")
    if browsing and not JSON_API.fullmatch(request.url.path):
        page = _page_of_form(request) if error.status_code == 405 else None
        if page is not None and request.method == "GET":
            return RedirectResponse(page, status_code=303)
        if error.status_code == 404:
            return await handle_page_error(request, PageError(404, "page_not_found"))
        if error.status_code == 400:  # Starlette's: a form it cannot parse (>1000 fields…)
            return await handle_page_error(request, PageError(400, "form_unreadable"))
    return await http_exception_handler(request, error)


def _page_of_form(request: Request) -> str | None:
    """The nearest address above ``request``'s that the app serves as a page: the case a
    step's form belongs to (``/social/cases/7/step-4`` → ``/social/cases/7``), the admin
    screen of its forms. With the launch the form's address named (``?s=``): without it
    the page was the browser's newest launch's, perhaps another tab's patient."""
    parts = request.url.path.rstrip("/").split("/")
    launch = request.query_params.get(LAUNCH_PARAM)
    pinned = f"?{urlencode({LAUNCH_PARAM: launch})}" if launch else ""
    for end in range(len(parts) - 1, 1, -1):
        path = "/".join(parts[:end])
        scope = {**request.scope, "path": path, "method": "GET"}
        if any(route.matches(scope)[0] is Match.FULL for route in request.app.router.routes):
            return path + pinned
    return None


async def _validation_failed(request: Request, error: Exception) -> Response:
    """FastAPI's 422 for a request that fails validation, with what it echoes made JSON
    and short.

    FastAPI echoes the value it refused (``input``) and where it was (``loc``, which holds
    the name of a field it did not expect); a NaN or an infinity (``1e400``) in a JSON body
    was echoed as a float that JSON cannot carry, and the answer became a 500; so were a
    lone surrogate (``"\\ud800"``, which JSON may write and UTF-8 cannot) and the bytes of
    a body that is no UTF-8 (sent as ``text/plain``); and a string of megabytes (a code
    refused for its length) was echoed whole.
    """
    assert isinstance(error, RequestValidationError)
    page = await handle_invalid_page_request(request, error.errors())  # a screen's: a page
    if page is not None:
        return page
    detail = [_echoable(problem) for problem in jsonable_encoder(_encodable(error.errors()))]
    return JSONResponse({"detail": detail}, status_code=422)


#: How much of a refused string a 422 repeats: enough to recognise it.
ECHOED_CHARACTERS = 100
#: How many items of a refused list, or fields of a refused object, a 422 repeats.
ECHOED_ITEMS = 10


def _echoable(problem: dict[str, Any]) -> dict[str, Any]:
    """One problem of a 422 with its ``input`` and ``loc`` cut short."""
    return problem | {key: _cut(problem[key]) for key in ("input", "loc") if key in problem}


def _cut(value: Any) -> Any:
    """``value`` (JSON-like) with every string cut to ``ECHOED_CHARACTERS``, every list and
    object to ``ECHOED_ITEMS``, an ellipsis standing for the rest (a list refused for its
    length, or a whole body that misses a field, was echoed whole)."""
    if isinstance(value, str) and len(value) > ECHOED_CHARACTERS:
        return value[:ECHOED_CHARACTERS] + "…"
    more = len(value) > ECHOED_ITEMS if isinstance(value, dict | list) else False
    if isinstance(value, dict):
        shown = list(value.items())[:ECHOED_ITEMS]
        return {_cut(key): _cut(item) for key, item in shown} | ({"…": "…"} if more else {})
    if isinstance(value, list):
        return [_cut(item) for item in value[:ECHOED_ITEMS]] + (["…"] if more else [])
    return value


def _encodable(value: Any) -> Any:
    """``value`` as JSON in UTF-8 can carry it: bytes decoded (a byte that is no UTF-8 as
    U+FFFD), a lone surrogate written as its escape (``\\ud800``), a non-finite float as
    text ("nan", "inf")."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {_encodable(key): _encodable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_encodable(item) for item in value]
    return value
