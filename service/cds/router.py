"""CDS Hooks 2.0 endpoints: discovery, the two Kindreflex services, and feedback.

Mounted at the root (the default hospital) and under ``/t/{tenant}``. Every call is
authenticated with the EHR's JWT (``service.cds.auth``) unless the deployment turned the
check off for the local demo. Errors are JSON ``{"error": <code>, "reason": <text>}``:
400 for a malformed body, 401 for authentication, 404 for an unknown or disabled service
(feedback: an unknown one only; cards shown before a service was turned off keep theirs),
413 for a body over ``MAX_BODY_BYTES``, 503 when the replay check cannot be written, the
hospital's configuration cannot be read or the database cannot take the feedback now.
503 means "retry later" to the EHR, so data
that can never be stored is a 400 (``service.cds.schemas`` checks it before the write).
A call whose patient data can be neither read from the prefetch nor fetched gets the
generic card (200), not the 412 CDS Hooks 2.0 asks for then: a deliberate deviation
(issue 4; docs/architecture.md, "CDS cards").

Feedback's override reason is the Coding the user chose: one of the card's
``overrideReasons``, or one the EHR added ("A CDS Client MAY augment the override reasons
presented to the user with its own reasons", CDS Hooks 2.0). The EHR's own are stored as
sent, and the monitoring figures count them apart from ours by their system
(``service.monitoring``); they were refused (400), and every item of the post with them.
Only a code that names our CodeSystem yet is none of its codes is refused: that is no
reason anyone chose. Ours are the whole CodeSystem, not only those the hospital
configures now: a card shown before an administrator changed the list may be answered.

The handlers resolve the tenant and settings by calling ``service.api.deps`` directly
rather than through ``Depends``: FastAPI runs sync dependencies in its thread pool, a
thread hop per call on the path where the EHR waits.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from prometheus_client import Counter
from pydantic import SecretStr, ValidationError
from sqlalchemy.exc import DataError, DBAPIError, SQLAlchemyError, StatementError

from service import outbound
from service.api.deps import settings_of, tenant_slug, tenants_of
from service.cds import prefetch
from service.cds.auth import (
    Caller,
    CdsAuthenticator,
    CdsAuthError,
    JwksCache,
    ReplayCheckUnavailableError,
    SeenTokens,
    expiry,
)
from service.cds.batching import GroupCommit, fast_writes
from service.cds.cards import CardTarget
from service.cds.configured import ConfiguredHooks
from service.cds.issued import IssuedCards, Presentation
from service.cds.rules import advise
from service.cds.schemas import FeedbackRequest, HookContext, HookRequest
from service.cds.situation import of_this_context, situation_of
from service.cds.vocabulary import Vocabulary, guide_vocabulary
from service.db.base import Database, insert_new, utcnow
from service.db.models import CdsFeedback
from service.i18n import negotiate, translate
from service.local_time import local_today
from service.monitoring import presentation_secret
from service.settings import Settings, over_tls
from service.tenancy import TenantContext, UnknownTenantError
from service.tenant_config import Hook, base_url_key
from service.text import without_bom

log = logging.getLogger(__name__)
router = APIRouter(tags=["cds-hooks"])

#: Service id → hook. The ids are part of the EHR's configuration: never rename them.
SERVICES: dict[str, Hook] = {
    "kindreflex-encounter-start": "encounter-start",
    "kindreflex-patient-view": "patient-view",
}
#: A hook call's body, prefetch included, is read no further (a few KiB is usual).
MAX_BODY_BYTES = 4 * 2**20


@dataclass(frozen=True)
class CdsState:
    """What the CDS endpoints keep per app: keys, the replay ledger, HTTP clients, metrics."""

    authenticator: CdsAuthenticator
    commits: GroupCommit
    issued: IssuedCards
    configured: ConfiguredHooks
    fhir_http: httpx.AsyncClient  # counts every request it sends (the "one FHIR request" rule)
    fhir_requests: Counter
    cards: dict[str, Any]  # the cards counter's series by indicator ("none": no card)


def cds_state(request: Request) -> CdsState:
    state: CdsState = request.app.state.cds
    return state


def new_cds_state(database: Database, registry: Any, secret_key: SecretStr | None) -> CdsState:
    """Built with the app, so that the first hook call after a start does not pay for it
    (the HTTP clients' imports and set-up took seconds on a loaded machine)."""
    fhir_requests = Counter(
        "kindreflex_cds_fhir_requests_total",
        "HTTP requests sent to FHIR servers by CDS hook calls (prefetch missing).",
        registry=registry,
    )

    async def count(_: httpx.Request) -> None:
        fhir_requests.inc()

    # no redirects: the EHR's access token must not follow a redirect to another host
    jwks_http = httpx.AsyncClient(follow_redirects=False, transport=outbound.async_transport())
    fhir_http = httpx.AsyncClient(
        follow_redirects=False,
        transport=outbound.async_transport(),
        event_hooks={"request": [count]},
    )
    commits = GroupCommit(fast_writes(database))
    cards = Counter(
        "kindreflex_cds_cards_total",
        "CDS cards returned, by indicator ('none' when no card).",
        ["indicator"],
        registry=registry,
    )
    return CdsState(
        authenticator=CdsAuthenticator(JwksCache(jwks_http), SeenTokens(commits)),
        commits=commits,
        issued=IssuedCards(commits, presentation_secret(secret_key)),
        configured=ConfiguredHooks(),
        fhir_http=fhir_http,
        fhir_requests=fhir_requests,
        cards={indicator: cards.labels(indicator) for indicator in ("info", "warning", "none")},
    )


#: What every answer of the service says unless it says otherwise: the CDS answers here
#: and in ``service.cds.fastpath`` (a constant, nothing per call), the rest of the app
#: through ``service.app.DefaultHeaders``.
DEFAULT_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


class _Json(JSONResponse):
    """Plain JSON encoded by orjson: no jsonable_encoder walk, and several times faster than
    the standard library on a card (the cards and errors hold only str, int, list, dict).

    ``Cache-Control: no-store``, as every other answer of the service has it: a card says
    why a patient may have children at risk, and a browser-based EHR calls the hooks from
    the workstation (found by review: the fast path answers before the app's default);
    ``X-Content-Type-Options: nosniff`` likewise (a constant header, nothing per call)."""

    def init_headers(self, headers: Mapping[str, str] | None = None) -> None:
        super().init_headers({**DEFAULT_HEADERS, **(headers or {})})

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def _ok(content: dict[str, Any]) -> JSONResponse:
    return _Json(content)


def cds_error(status: int, code: str, reason: str) -> JSONResponse:
    headers = {"WWW-Authenticate": f'Bearer error="{code}"'} if status == 401 else None
    return _Json({"error": code, "reason": reason}, status_code=status, headers=headers)


def _refused(error: CdsAuthError | ReplayCheckUnavailableError) -> JSONResponse:
    if isinstance(error, ReplayCheckUnavailableError):
        return cds_error(503, "unavailable", "the replay check cannot be made now; retry later")
    return cds_error(401, "invalid_token", str(error))


class _TooLargeError(Exception):
    pass


async def _body(request: Request) -> bytes:
    """The request body (JSON: :func:`without_bom`), read no further than ``MAX_BODY_BYTES``."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise _TooLargeError
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _TooLargeError
        chunks.append(chunk)
    return without_bom(b"".join(chunks))


def _too_large() -> JSONResponse:
    limit = f"{MAX_BODY_BYTES // 2**20} MiB"
    reason = f"the body is larger than {limit}; send less prefetch"
    return cds_error(413, "request_too_large", reason)


def _invalid(error: ValidationError) -> JSONResponse:
    problems = "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}"
        for e in error.errors(include_url=False)[:5]
    )
    return cds_error(400, "invalid_request", problems)


async def _authenticate(
    request: Request,
    tenant: TenantContext,
    settings: Settings,
    state: CdsState,
    service_path: str | None = None,
) -> Caller | None:
    """The calling EHR, or None when the deployment switched the check off (demo only).

    ``aud`` names the URL called or, when given, ``service_path``: the service a
    feedback call is about. CDS Hooks 2.0 defines ``aud`` for discovery and service calls
    only, so an EHR may name either for feedback; both are ours, and the ``jti`` ledger,
    shared by every endpoint, still lets a JWT be used once."""
    if not settings.cds_jwt_required:
        return None
    called = settings.public_url + request.scope["path"]
    audiences = (called,) if service_path is None else (called, settings.public_url + service_path)
    authenticator = state.authenticator
    caller, claims = await authenticator.verify(
        request.headers.get("authorization"), tenant, audiences
    )
    first_use = await authenticator.seen.first_use(
        tenant.id, caller.issuer, claims["jti"], expiry(claims)
    )
    if not first_use:
        raise CdsAuthError("this jti was already used: a JWT is good for one call only")
    return caller


async def _hospital(request: Request) -> tuple[TenantContext, Settings]:
    return await tenants_of(request).current(tenant_slug(request)), settings_of(request)


def _cds_errors(
    handler: Callable[..., Awaitable[JSONResponse]],
) -> Callable[..., Awaitable[JSONResponse]]:
    """An unknown hospital is a 404 in the CDS error shape, on the router and the fast path;
    a hospital whose configuration cannot be read now (the database down as it is read
    again) a 503 to retry, as the replay check's: it was a 500 (found by review)."""

    @functools.wraps(handler)
    async def answer(*args: Any, **kwargs: Any) -> JSONResponse:
        try:
            return await handler(*args, **kwargs)
        except UnknownTenantError as error:
            return cds_error(404, "unknown_tenant", str(error))
        except SQLAlchemyError:  # logged by TenantDirectory, without the query
            reason = "the hospital's configuration cannot be read now; retry later"
            return cds_error(503, "unavailable", reason)

    return answer


def _tenant_prefix(request: Request, tenant: TenantContext) -> str:
    return f"/t/{tenant.slug}" if "tenant" in request.path_params else ""


def _enabled_hook(tenant: TenantContext, service_id: str) -> Hook | None:
    hook = SERVICES.get(service_id)
    return hook if hook in tenant.config.hooks.enabled else None


@router.get("/cds-services", response_model=None)
@_cds_errors
async def discovery(request: Request) -> JSONResponse:
    tenant, settings = await _hospital(request)
    try:
        caller = await _authenticate(request, tenant, settings, cds_state(request))
    except (CdsAuthError, ReplayCheckUnavailableError) as error:
        return _refused(error)
    templates = prefetch.templates(guide_vocabulary())
    # description and usageRequirements are read by the EHR's administrator: in the
    # language the GET asks for, else the calling registration's, else English (a discovery
    # without either: the demo without JWT check), not Dutch as a card
    language = negotiate(
        [
            request.headers.get("accept-language"),
            caller.registration.default_language if caller else None,
            "en",
        ]
    )
    usage = translate(language, "cds.discovery.usage")
    description = translate(language, "cds.discovery.description")
    return _ok(
        {
            "services": [
                {
                    "hook": hook,
                    "id": service_id,
                    "title": "Kindreflex",
                    "description": description,
                    "prefetch": templates,
                    "usageRequirements": usage,
                }
                for service_id, hook in SERVICES.items()
                if hook in tenant.config.hooks.enabled
            ]
        }
    )


@router.post("/cds-services/{service_id}", response_model=None)
@_cds_errors
async def call_service(service_id: str, request: Request) -> JSONResponse:
    tenant, settings = await _hospital(request)
    hook = _enabled_hook(tenant, service_id)
    if hook is None:
        return cds_error(404, "unknown_service", f"no CDS service '{service_id}' is enabled here")
    state = cds_state(request)
    try:
        caller = await _authenticate(request, tenant, settings, state)
    except (CdsAuthError, ReplayCheckUnavailableError) as error:
        return _refused(error)
    try:
        body = HookRequest.model_validate_json(await _body(request))
        context = HookContext.model_validate(body.context)
    except ValidationError as error:
        return _invalid(error)
    except _TooLargeError:
        return _too_large()
    if body.hook != hook:
        return cds_error(400, "invalid_request", f"service '{service_id}' answers hook '{hook}'")
    if hook == "encounter-start" and context.encounterId is None:
        reason = "context.encounterId is required for encounter-start"
        return cds_error(400, "invalid_request", reason)
    if not context.for_care_staff:
        # Least privilege: the Kindreflex is the care staff's (the nurse's reflex, the social
        # service's follow-up). A patient portal or a proxy viewing the record (patient-view
        # allows a Patient or RelatedPerson user; the proxy may be the partner a domestic
        # violence trigger is about) got the warning with its reasons, an open concern, and
        # the link to the nurses' app. Now no card: nothing read from the FHIR server, no
        # card recorded. encounter-start names a Practitioner or PractitionerRole only; a
        # Patient there gets the same empty answer, not a 400 the EHR would show as a fault.
        state.cards["none"].inc()
        return _ok({"cards": []})
    configured = state.configured.of(tenant)
    data = await _patient_data(body, context, configured.vocabulary, caller, tenant, state)
    today = local_today()  # ages count on the Belgian calendar day
    situation = situation_of(data, context.encounterId)
    advice = advise(situation, configured.hooks, configured.vocabulary, today)
    state.cards[advice.indicator if advice else "none"].inc()
    if advice is None:
        return _ok({"cards": []})
    registration = caller.registration if caller else None
    language = negotiate(
        [
            request.headers.get("accept-language"),
            registration.default_language if registration else None,
        ]
    )
    target = CardTarget(
        launch_url=f"{settings.public_url}{_tenant_prefix(request, tenant)}/launch",
        hook=hook,
        hook_instance=str(body.hookInstance),
    )
    result = configured.cards.card(advice, language, target)
    fhir_server = (
        str(body.fhirServer)
        if body.fhirServer
        else (registration.fhir_base_url if registration else "")
    )
    # keyed, so that one encounter is one presentation whichever way its server is written
    # (with fhirServer, parsed, or without it, the registered base): it counted twice
    seen = Presentation(base_url_key(fhir_server), context.patientId, context.encounterId, today)
    await state.issued.record(tenant.id, service_id, result["uuid"], advice, seen)
    return _ok({"cards": [result]})


async def _patient_data(
    body: HookRequest,
    context: HookContext,
    vocabulary: Vocabulary,
    caller: Caller | None,
    tenant: TenantContext,
    state: CdsState,
) -> dict[str, Any]:
    """Prefetch about the context's patient and encounter, completed by at most one FHIR
    request to the calling EHR's own server."""
    given = body.prefetch or {}
    data = of_this_context(given, context.patientId, context.encounterId)
    if len(data) < len(given):  # the EHR's to fix; which patient is never logged
        log.warning(
            "prefetch about another patient or encounter left out",
            extra={"fields": {"keys": sorted(set(given) - set(data))}},
        )
    queries = prefetch.missing_queries(vocabulary, data, context.patientId, context.encounterId)
    if not queries:
        return data
    if body.fhirServer is None or body.fhirAuthorization is None:
        _log_unreadable(body, caller, list(queries))
        return data
    server = str(body.fhirServer).rstrip("/")
    if body.fhirServer.username or body.fhirServer.password:
        # the same server as a registered base (``base_url_key``), but httpx would send the
        # name and password in place of the EHR's token; a base is registered without them
        log.warning("fhirServer has a user name or password: the card is generic")
        return data
    # the EHR's token goes only to the FHIR server registered for that EHR, never elsewhere
    registrations = [caller.registration] if caller else tenant.config.registrations
    if base_url_key(server) not in {base_url_key(r.fhir_base_url) for r in registrations}:
        # the EHR administrator's to fix (another base, or another path)
        log.warning("fhirServer is not the registered FHIR base: the card is generic")
        return data
    if not over_tls(server):  # RFC 6750: bearer tokens over TLS only (one stored unchecked)
        log.warning("fhirServer is not https: the token is not sent, the card is generic")
        return data
    data.update(
        await prefetch.fetch(state.fhir_http, server, body.fhirAuthorization.access_token, queries)
    )
    return data


def _log_unreadable(body: HookRequest, caller: Caller | None, missing: list[str]) -> None:
    """Why the card may be the generic one, for the EHR administrator, once per such call
    as the other reasons are (a count of them is a count of such cards): the hook, who
    called, the prefetch keys left out and what the call lacks; never which patient."""
    access = {"fhirServer": body.fhirServer, "fhirAuthorization": body.fhirAuthorization}
    log.warning(
        "the prefetch is incomplete and the call gives no FHIR server to read the rest: "
        "the card may be generic; have the EHR prefetch every key of the discovery document",
        extra={
            "fields": {
                "hook": body.hook,
                "registration": caller.registration.id if caller else None,
                "issuer": caller.issuer if caller else None,
                "missing_prefetch": missing,
                "missing_access": [name for name, given in access.items() if given is None],
            }
        },
    )


@router.post("/cds-services/{service_id}/feedback", response_model=None)
@_cds_errors
async def feedback(service_id: str, request: Request) -> JSONResponse:
    tenant, settings = await _hospital(request)
    # a service turned off since: its cards shown before still get their feedback (an EHR
    # does not send a 404's again, and the figures lost it: found by review)
    if service_id not in SERVICES:
        return cds_error(404, "unknown_service", f"no CDS service '{service_id}' is known here")
    try:
        service = request.scope["path"].removesuffix("/feedback")
        caller = await _authenticate(request, tenant, settings, cds_state(request), service)
    except (CdsAuthError, ReplayCheckUnavailableError) as error:
        return _refused(error)
    try:
        body = FeedbackRequest.model_validate_json(await _body(request))
    except ValidationError as error:
        return _invalid(error)
    except _TooLargeError:
        return _too_large()
    unoffered = _unoffered_reason(body, cds_state(request).configured.of(tenant).vocabulary)
    if unoffered is not None:
        return cds_error(400, "invalid_request", unoffered)
    database: Database = request.app.state.database
    issuer = caller.issuer if caller else None
    try:
        await run_in_threadpool(_store_feedback, database, tenant.id, service_id, issuer, body)
    except SQLAlchemyError as error:
        log.warning("CDS feedback not stored", extra={"fields": {"error": type(error).__name__}})
        if _refused_as_data(error):
            return cds_error(400, "invalid_request", "a value of the feedback cannot be stored")
        return cds_error(503, "unavailable", "the feedback cannot be stored now; retry later")
    return _ok({})


def _unoffered_reason(body: FeedbackRequest, vocabulary: Vocabulary) -> str | None:
    """Why an item's override reason names our CodeSystem with a code it does not have;
    None when none does. (Another system's, or a code without a system, is the EHR's.)"""
    offered = vocabulary.override_reasons["en"]  # the same codes in every language
    system = vocabulary.override_reason_system
    for index, item in enumerate(body.feedback):
        reason = item.reason
        if reason is None or reason.system != system or reason.code in offered:
            continue
        return (
            f"feedback.{index}.overrideReason.reason: {reason.code!r} is not a code of "
            f"{system} ({', '.join(sorted(offered))})"
        )
    return None


def _refused_as_data(error: SQLAlchemyError) -> bool:
    """The database (or the conversion for it) refused a value: a retry cannot succeed.
    The schema's checks should leave none; any other error is the database's state."""
    converting = isinstance(error, StatementError) and not isinstance(error, DBAPIError)
    return converting or isinstance(error, DataError)


def _store_feedback(
    database: Database, tenant_id: int, service_id: str, issuer: str | None, body: FeedbackRequest
) -> None:
    """All items or none; an item already stored (a client retry) is skipped."""
    rows = [
        {
            "tenant_id": tenant_id,
            "service_id": service_id,
            "card_uuid": str(item.card),
            "outcome": item.outcome,
            "override_system": reason.system if reason else None,
            "override_code": reason.code if reason else None,
            "outcome_at": item.outcomeTimestamp,
            "issuer": issuer,
            "received_at": utcnow(),
        }
        for item in body.feedback
        for reason in [item.reason]
    ]
    with database.engine.begin() as connection:
        insert_new(connection, CdsFeedback, rows)
