"""SMART App Launch 2.x, EHR launch: ``GET /launch`` and ``GET /callback``.

``/launch?iss=…&launch=…`` (also ``/t/{tenant}/launch``) finds the tenant's EHR
registration by ``iss``, reads the EHR's ``.well-known/smart-configuration`` (kept a few
minutes, a failure a few seconds: ``oauth.AuthServers``) and sends the browser to its
authorization endpoint with PKCE S256, a single-use expiring ``state`` bound to this
browser by a short-lived cookie, and an OpenID Connect ``nonce``.

``/launch`` is unauthenticated by nature (the EHR's browser calls it) and each call stores
a launch state for ``LAUNCH_LIFETIME``: a hospital with ``MAX_LAUNCHES_IN_FLIGHT`` states
outstanding gets a 503 page with ``Retry-After`` instead, before the EHR is asked anything
and without a write, so that a flood of launches cannot grow the table without bound. The
ingress's rate limit per client IP is the first line (README, *On Kubernetes*).

``/callback`` (one redirect URI for every tenant: the state row remembers the tenant;
a registration with ``own_redirect_uri`` is answered at ``/callback/{tenant}/{id}`` only)
consumes the state, exchanges the code with the registration's client authentication,
verifies the id_token, stores the tokens server-side and sets the session cookie.
Anything wrong → a translated page; a refused launch writes no session.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
from collections.abc import Callable
from datetime import timedelta
from typing import Annotated, Any, NamedTuple, TypeVar, cast
from urllib.parse import urlencode, urlsplit, urlunsplit

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse
from sqlalchemy import delete, func, select
from sqlalchemy.engine import CursorResult

from service import audit
from service.audit import AuditAction, AuditFact, Channel, actor_url
from service.db.base import Database, utcnow
from service.db.models import LaunchState, Tenant
from service.fhir.mapping import FHIR_ID, REFERENCE_TYPE
from service.i18n import negotiate
from service.keys import KeyStore
from service.outbox import Outbox
from service.scopes import save_rights_not_granted
from service.settings import Settings
from service.tenancy import TenantContext, TenantDirectory, UnknownTenantError
from service.tenant_config import EhrRegistration
from smart_app.errors import PageError
from smart_app.oauth import (
    AuthServer,
    AuthServers,
    OAuthError,
    ehr_client,
    pkce_challenge,
    request_token,
    requested_scopes,
    verify_id_token,
)
from smart_app.security import digest, iframe_cookie, tokens_match
from smart_app.session import (
    LAUNCH_PARAM,
    SESSION_COOKIE,
    SESSION_LIFETIME,
    AppUser,
    NewSession,
    Role,
    SessionStore,
    all_frame_origins,
    client_identity,
    cookie_name,
    registration_fingerprint,
    session_cookie,
    token_expiry,
)
from smart_app.social import PATIENT_CASE_PAGE, TRIAGE_PAGE, WORKLIST_PAGE

log = logging.getLogger(__name__)
T = TypeVar("T")

LAUNCH_LIFETIME = timedelta(minutes=10)
#: Launch states of one hospital in flight at once (unexpired, not yet used by /callback).
#: The busiest Belgian EDs see a few hundred patients a day, a few dozen in the peak hour;
#: a state lives until its callback, seconds later, or ``LAUNCH_LIFETIME`` when abandoned.
#: Even with every ward launching too, a hospital keeps well under a hundred in flight.
#: The bound is far above that because reaching it locks the hospital's nurses out until
#: states expire: at 1000 a flood of under two launches a second, within the ingress's
#: limit from a handful of addresses, would do it; 20 000 needs over 30 a second for ten
#: minutes, a flood the ingress and the operator's alert must meet anyway, and still bounds
#: the table at about 1–2 KB a row, some 40 MB a hospital. Not a setting: no hospital
#: needs another value. The count precedes the EHR's answer and the
#: insert follows it, so the launches in flight at that moment (at most 40 per instance,
#: the thread pool of the app's routes) may each pass: the bound holds within that margin.
MAX_LAUNCHES_IN_FLIGHT = 20_000
FHIR_USER_MAX = 500  # the session's column
#: The patient or a relative (SMART: fhirUser may be a Patient or a RelatedPerson), not
#: the hospital's staff: such a user is not let in.
_NOT_STAFF = frozenset({"Patient", "RelatedPerson"})
#: Whom Kindreflex can name as the author of what it writes: the R4 elements it names its
#: user in (Observation.performer, Flag.author, ServiceRequest.requester,
#: Provenance.agent.who, AuditEvent.agent.who) admit a Practitioner or PractitionerRole,
#: not a Person, which SMART also allows as fhirUser. A referral's status note
#: (Annotation.author[x]) admits no PractitionerRole: it names such a user by their name
#: (``service.fhir.mapping.referral_with_status``).
_AUTHORS = frozenset({"Practitioner", "PractitionerRole"})
USER_NAME_MAX = 200  # the session's column; a longer display name is cut there
BINDING_COOKIE_PREFIX = "kindreflex_launch_"  # its name as served: session.cookie_name

#: Served with and without the ``/t/{tenant}`` prefix.
router = APIRouter(tags=["SMART App Launch"])
#: An unknown ``iss`` is shown to the EHR's administrator up to this many characters.
MAX_SHOWN_ISS = 120
#: Served once, un-prefixed: the single redirect URI registered with every EHR.
callback_router = APIRouter(tags=["SMART App Launch"])


@router.get("/launch", summary="SMART EHR launch (iss, launch)")
def launch(request: Request, iss: str | None = None, launch: str | None = None) -> RedirectResponse:
    tenant = _tenant(request)
    frames = all_frame_origins(tenant)
    if not iss or not launch:
        raise PageError(400, "missing_parameters", frame_origins=frames)
    registration = tenant.config.registration_for_iss(iss)
    if registration is None:
        # named as the technical detail, cut: anyone can link here, and the page must not
        # say a stranger's sentence as the app's own words (found by review)
        shown = iss if len(iss) <= MAX_SHOWN_ISS else iss[: MAX_SHOWN_ISS - 1] + "…"
        raise PageError(400, "unknown_iss", frame_origins=frames, detail=shown)
    if registration.client_auth == "client_secret_basic" and registration.client_secret is None:
        # its secret could not be read (KINDREFLEX_SECRET_KEY changed): said before the
        # EHR's sign-in, which could only end at a token request we cannot make
        raise PageError(503, "secret_unreadable", **_page_for(registration))
    database: Database = request.app.state.database
    _refuse_when_busy(database, tenant, registration)
    settings: Settings = request.app.state.settings
    servers: AuthServers = request.app.state.auth_servers
    server = _call(
        registration, lambda: servers.discover(registration, settings.fhir_timeout_seconds)
    )
    state, verifier, nonce, browser = (secrets.token_urlsafe(32) for _ in range(4))
    answered_at = registration_redirect_uri(settings, tenant.slug, registration)
    sessions: SessionStore = request.app.state.sessions
    sessions.purge_expired()
    with database.session() as session:
        session.add(
            LaunchState(
                state_hash=digest(state),
                browser_hash=digest(browser),
                tenant_id=tenant.id,
                registration_id=registration.id,
                path_prefix=_path_prefix(request, tenant),
                code_verifier=verifier,
                nonce=nonce,
                server=server.to_json()
                | {_LAUNCHED_FOR: client_identity(registration), _ANSWERED_AT: answered_at},
                expires_at=utcnow() + LAUNCH_LIFETIME,
            )
        )
    query = {
        "response_type": "code",
        "client_id": registration.client_id,
        "redirect_uri": answered_at,
        "launch": launch,
        "scope": requested_scopes(registration.scopes, server),
        "state": state,
        # SMART: in an EHR launch aud is the launch's iss, as the EHR wrote it (the
        # registration's base has no trailing slash; an EHR may compare aud exactly)
        "aud": iss,
        "code_challenge": pkce_challenge(verifier),
        "code_challenge_method": "S256",
        "nonce": nonce,
    }
    response = RedirectResponse(_with_query(server.authorization_endpoint, query), 302)
    _set_cookie(response, _binding_cookie(state, settings), browser, LAUNCH_LIFETIME)
    return response


class AuthorizationAnswer(NamedTuple):
    """The query of an authorization response (RFC 6749 4.1.2, RFC 9207's ``iss``), as
    either redirect URI receives it."""

    state: str | None
    code: str | None
    error: str | None
    error_description: str | None
    iss: str | None


def _authorization_answer(
    state: str | None = None,
    code: str | None = None,
    error: str | None = None,
    error_description: str | None = None,
    iss: str | None = None,
) -> AuthorizationAnswer:
    return AuthorizationAnswer(state, code, error, error_description, iss)


AnswerDep = Annotated[AuthorizationAnswer, Depends(_authorization_answer)]


@callback_router.get("/callback", summary="SMART authorization redirect")
def callback(request: Request, answer: AnswerDep) -> RedirectResponse:
    return _authorized(request, redirect_uri(request.app.state.settings), answer)


@callback_router.get(
    "/callback/{hospital}/{registration_id}",
    summary="SMART authorization redirect of a registration with its own redirect URI",
)
def own_callback(
    request: Request, hospital: str, registration_id: str, answer: AnswerDep
) -> RedirectResponse:
    answered_at = _own_redirect_uri(request.app.state.settings, hospital, registration_id)
    return _authorized(request, answered_at, answer)


def _authorized(
    request: Request, answered_at: str, authorization: AuthorizationAnswer
) -> RedirectResponse:
    """The authorization response ``answered_at`` (the redirect URI it came to): the
    session, or the page saying why not."""
    state, code, error, error_description, iss = authorization
    pending, tenant = _consume_state(request, state)
    registration = _registration(tenant, pending)
    page = _page_for(registration)
    server = AuthServer.from_json(pending.server)
    _answered_at(pending, answered_at, redirect_uri(request.app.state.settings), page)
    _answered_by(server, iss, page)
    if error == "access_denied":
        raise PageError(403, "access_denied", **page)
    if error or not code:
        raise PageError(400, "authorization_failed", detail=error_description or error, **page)
    settings: Settings = request.app.state.settings
    keys: KeyStore = request.app.state.keys
    with ehr_client(settings.fhir_timeout_seconds) as http:
        answer = _call(
            registration,
            lambda: request_token(
                http,
                server.token_endpoint,
                registration,
                keys,
                {
                    "grant_type": "authorization_code",
                    "code": code,
                    "redirect_uri": answered_at,
                    "code_verifier": pending.code_verifier,
                },
                server.assertion_alg,
            ),
        )
        id_token = answer.get("id_token")
        if not isinstance(id_token, str):
            raise PageError(400, "id_token_invalid", detail="no id_token (scope openid)", **page)
        claims = _call(
            registration,
            lambda: verify_id_token(http, id_token, server, registration.client_id, pending.nonce),
        )
    new = _new_session(tenant, registration, pending, server, answer, claims)
    sessions: SessionStore = request.app.state.sessions
    session_id, secret = sessions.create(new)
    if new.patient_id is not None:
        # Writes for this patient that waited for a new sign-in go out with this session.
        outbox: Outbox = request.app.state.outbox
        patient_ref = f"Patient/{new.patient_id}"
        outbox.adopt_session(tenant.id, registration.id, new.fhir_base_url, patient_ref, session_id)
    _audit_sign_in(request.app.state.database, tenant, registration, new, session_id)
    log.info(
        "app launched",
        extra={
            "fields": {
                "tenant": tenant.slug,
                "registration": registration.id,
                "user": new.user.fhir_user,
                "roles": sorted(new.user.roles),
            }
        },
    )
    start = _start_page(new, session_id)
    response = RedirectResponse(f"{settings.public_url}{pending.path_prefix}{start}", 303)
    cookie = sessions.with_launch(session_cookie(request), secret)
    _set_cookie(response, cookie_name(SESSION_COOKIE, settings), cookie, SESSION_LIFETIME)
    _set_cookie(response, _binding_cookie(state or "", settings), "", timedelta(0))  # used up
    return response


def _refuse_when_busy(
    database: Database, tenant: TenantContext, registration: EhrRegistration
) -> None:
    """503 while the hospital has ``MAX_LAUNCHES_IN_FLIGHT`` launch states outstanding,
    with a ``Retry-After`` of when the first of them expires (the page in the EHR's
    language, logged and counted as every refused request: ``smart_app.errors``, /metrics)."""
    now = utcnow()
    with database.session() as session:
        in_flight, first_expiry = session.execute(
            select(func.count(), func.min(LaunchState.expires_at)).where(
                LaunchState.tenant_id == tenant.id, LaunchState.expires_at > now
            )
        ).one()
    if in_flight < MAX_LAUNCHES_IN_FLIGHT:
        return
    raise PageError(
        503,
        "launch_busy",
        # not on the page: anyone may call /launch, and would read a live gauge of the
        # hospital and its slug
        logged={"tenant": tenant.slug, "in_flight": in_flight, "at_most": MAX_LAUNCHES_IN_FLIGHT},
        retry_after_seconds=max(1, math.ceil((first_expiry - now).total_seconds())),
        **_page_for(registration),
    )


def _start_page(new: NewSession, session_id: str) -> str:
    """Where the launch opens the app: a triage visit (a patient and an encounter) on the
    nurse's screen; a social worker's launch without a patient on the worklist, and from
    a patient's chart on that patient's case (during a visit, only an open one: else the
    triage, see ``smart_app.social.patient_case_page``). The page names the launch
    (``LAUNCH_PARAM``): a launch in another tab must not take it over."""
    if "social-worker" not in new.user.roles:
        page = TRIAGE_PAGE
    elif new.patient_id is None:
        page = WORKLIST_PAGE
    else:
        page = PATIENT_CASE_PAGE
    return f"{page}?{urlencode({LAUNCH_PARAM: session_id})}"


def _audit_sign_in(
    database: Database,
    tenant: TenantContext,
    registration: EhrRegistration,
    new: NewSession,
    session_id: str,
) -> None:
    """The sign-in in the audit trail; for a patient's chart also as an AuditEvent on the
    EHR's server (without a patient there is no compartment to write it in)."""
    patient_ref = f"Patient/{new.patient_id}" if new.patient_id else None
    actor = actor_url(new.user.fhir_user, registration.fhir_base_url)
    fact = AuditFact(actor, AuditAction.LOGIN, patient_ref, (), "success", utcnow())
    with database.session() as session:
        if patient_ref is None:
            audit.record_local(session, tenant.id, fact, registration.fhir_base_url)
        else:
            channel = Channel(tenant.id, registration.id, registration.fhir_base_url, session_id)
            audit.record_read(session, channel, fact)


def _with_query(endpoint: str, parameters: dict[str, str]) -> str:
    """``endpoint`` with ``parameters`` after the query it may have already, kept as written:
    RFC 6749 3.1, the endpoint's query "MUST be retained" (``…/authorize?p=signin``). A
    second ``?`` put the whole request inside its ``p``, and decoding the query to encode
    it again changed its values (found by review). ``oauth.discover`` refuses an endpoint
    whose query names one of ``parameters`` (each may be sent once)."""
    parts = urlsplit(endpoint)
    query = "&".join(part for part in (parts.query, urlencode(parameters)) if part)
    return urlunsplit(parts._replace(query=query))


def redirect_uri(settings: Settings) -> str:
    """The redirect URI every EHR of every hospital may answer at."""
    return f"{settings.public_url}/callback"


def registration_redirect_uri(
    settings: Settings, tenant_slug: str, registration: EhrRegistration
) -> str:
    """Where the EHR sends the browser back: the registration's own redirect URI when it
    has one (``own_redirect_uri``: only its launches are taken there, and none of its at
    ``/callback``), else the shared one."""
    if registration.own_redirect_uri:
        return _own_redirect_uri(settings, tenant_slug, registration.id)
    return redirect_uri(settings)


def _own_redirect_uri(settings: Settings, tenant_slug: str, registration_id: str) -> str:
    return f"{settings.public_url}/callback/{tenant_slug}/{registration_id}"


def roles_from_claims(registration: EhrRegistration, claims: dict[str, Any]) -> frozenset[Role]:
    """Every launched clinician is a nurse; other roles only through the registration's mapping.

    EHRs send the claim as a list of strings or as one space-separated string. Another shape
    (objects, a number) is refused, not read as no role: the EHR's administrator learns of the
    mistake at once, rather than a social worker later, as a screen she may not open.
    """
    name = registration.roles.claim
    value = claims.get(name, [])
    if isinstance(value, str):
        value = value.split()
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise OAuthError(
            "id_token_invalid", f"the id_token claim {name!r} is not a list of strings"
        )
    granted = set(value)
    roles: set[Role] = {"nurse"}
    if granted & set(registration.roles.social_worker):
        roles.add("social-worker")
    if granted & set(registration.roles.admin):
        roles.add("admin")
    return frozenset(roles)


def _tenant(request: Request) -> TenantContext:
    tenants: TenantDirectory = request.app.state.tenants
    settings: Settings = request.app.state.settings
    slug = str(request.path_params.get("tenant") or settings.default_tenant)
    try:
        return tenants.get(slug)
    except UnknownTenantError as error:
        raise PageError(404, "unknown_tenant", logged={"reason": error.reason}) from error


def _path_prefix(request: Request, tenant: TenantContext) -> str:
    return f"/t/{tenant.slug}" if "tenant" in request.path_params else ""


def _answered_by(server: AuthServer, iss: str | None, page: dict[str, Any]) -> None:
    """The authorization response comes from the server the launch went to (RFC 9207).

    Every hospital's EHRs answer at the one ``/callback``: a registered EHR that sent the
    browser on to another EHR with our client and this launch's state would otherwise
    receive the other's code and our PKCE verifier (found by review: an authorization
    server mix-up). A server that names itself must, and must name itself; one that does
    not say it does is taken at the state's word, at the redirect URI the launch asked for
    (``_answered_at``). At the shared ``/callback`` that leaves a mix-up open for such an
    EHR, whatever the client authentication: the attacker's EHR that receives the other's
    code cannot redeem it itself with a ``private_key_jwt`` or secret client, but it chose
    the PKCE challenge and nonce of a launch the attacker started in their own browser,
    whose callback then exchanges the code, our credentials and all (RFC 9700 4.4.1). A
    registration with its own redirect URI closes it (RFC 9700 4.4.2)."""
    if iss is None and not server.names_itself:
        return
    if iss != server.issuer:
        raise PageError(
            400,
            "authorization_failed",
            detail=f"the authorization response names issuer {iss!r}, not {server.issuer!r}",
            **page,
        )


def _answered_at(pending: LaunchState, answered_at: str, shared: str, page: dict[str, Any]) -> None:
    """The authorization response came to the redirect URI the launch asked for: a
    registration with its own is answered there only, and nothing else is taken there.

    For an EHR that does not name itself (RFC 9207), this is what tells a mix-up (RFC 9700
    4.4.2): the attacker's registered EHR, sent a nurse's launch, sends her browser on to
    that EHR with our client id and her state. Its code then comes back to the
    registration's own URI, which refuses a state of another, before any token request:
    neither the code nor our PKCE verifier reach the attacker's token endpoint, to be
    exchanged in a launch of the attacker's. A launch stored before the URI was recorded
    asked for the ``shared`` one."""
    if answered_at != pending.server.get(_ANSWERED_AT, shared):
        raise PageError(
            400,
            "authorization_failed",
            detail="the authorization response came to another redirect URI than the launch's",
            **page,
        )


def _consume_state(request: Request, state: str | None) -> tuple[LaunchState, TenantContext]:
    """The launch this callback completes; single use, unexpired, from the same browser.

    Only the browser that started the launch uses its state up: another that learnt it
    (from an EHR's log, a Referer) is refused and leaves it to the nurse (found by review:
    it was used up first, and her own callback refused as "already used")."""
    if not state:
        raise PageError(400, "bad_state", detail="no state")
    database: Database = request.app.state.database
    browser = request.cookies.get(_binding_cookie(state, request.app.state.settings))
    with database.session() as session:
        pending = session.get(LaunchState, digest(state))
        if pending is not None and (
            browser is None or not tokens_match(digest(browser), pending.browser_hash)
        ):
            raise PageError(400, "bad_state", detail="state not started in this browser")
        # The DELETE decides a race between two callbacks: only one removes the row.
        removed = cast(
            CursorResult[Any],
            session.execute(delete(LaunchState).where(LaunchState.state_hash == digest(state))),
        )
        slug = (
            None
            if pending is None
            else session.scalar(select(Tenant.slug).where(Tenant.id == pending.tenant_id))
        )
    if pending is None or removed.rowcount != 1 or slug is None:
        raise PageError(400, "bad_state", detail="unknown or already used state")
    if pending.expires_at <= utcnow():
        raise PageError(400, "bad_state", detail="expired state")
    try:
        return pending, request.app.state.tenants.get(slug)
    except UnknownTenantError as error:
        raise PageError(400, "bad_state", detail=str(error)) from error


#: The launch state's record of the registration the sign-in was started for.
_LAUNCHED_FOR = "launched_for"
#: The launch state's record of the redirect URI its authorization request named.
_ANSWERED_AT = "redirect_uri"


def _registration(tenant: TenantContext, pending: LaunchState) -> EhrRegistration:
    """The registration the sign-in was started for, as it is now. One an administrator
    removed, or pointed at another EHR or client while the user was signing in, is
    refused: its credentials (a client secret) must not go to the token endpoint found
    for the old one, nor the old EHR's user and patient become a session on the new."""
    registration = tenant.config.registration_by_id(pending.registration_id)
    identity = None if registration is None else client_identity(registration)
    if registration is None:
        detail = "EHR unregistered"
    elif pending.server.get(_LAUNCHED_FOR, identity) != identity:
        # (a sign-in started before this check was released recorded none: let it end)
        detail = "the EHR registration changed during the sign-in"
    else:
        return registration
    raise PageError(400, "bad_state", frame_origins=all_frame_origins(tenant), detail=detail)


def _page_for(registration: EhrRegistration) -> dict[str, Any]:
    return {
        "language": registration.default_language,
        "frame_origins": tuple(registration.frame_origins),
    }


def _call(registration: EhrRegistration, step: Callable[[], T]) -> T:
    """Run one exchange with the EHR; its failure becomes the matching page."""
    try:
        return step()
    except OAuthError as failure:
        status = 400 if failure.kind == "id_token_invalid" else 502
        raise PageError(
            status, failure.kind, detail=failure.detail, **_page_for(registration)
        ) from failure


def _new_session(
    tenant: TenantContext,
    registration: EhrRegistration,
    pending: LaunchState,
    server: AuthServer,
    answer: dict[str, Any],
    claims: dict[str, Any],
) -> NewSession:
    page = _page_for(registration)
    fhir_user = claims.get("fhirUser")
    if not isinstance(fhir_user, str) or not fhir_user:
        raise PageError(
            400, "id_token_invalid", detail="no fhirUser claim (scope fhirUser)", **page
        )
    if len(fhir_user) > FHIR_USER_MAX:
        raise PageError(
            400, "id_token_invalid", detail=f"fhirUser longer than {FHIR_USER_MAX}", **page
        )
    typed = REFERENCE_TYPE.search(fhir_user)
    kind = typed.group(1) if typed else "unknown"
    logged = {"fhir_user_type": kind}  # the type, never the user
    if kind in _NOT_STAFF:
        # a patient portal or a proxy launched with this client would get the nurse's
        # screens and record findings as their author
        raise PageError(403, "not_staff", logged=logged, **page)
    if kind not in _AUTHORS:
        # every launched user may record a triage (a nurse, whatever else): each save would
        # name them where R4 admits no Person, refused by a server that checks reference
        # types, invalid on one that does not
        raise PageError(403, "not_practitioner", logged=logged, **page)
    roles = _call(registration, lambda: roles_from_claims(registration, claims))
    patient = _call(registration, lambda: _fhir_id(answer.get("patient"), "patient"))
    # Triage is about one patient; the social service's worklist and the admin screen are
    # opened from the EHR without one.
    if patient is None and roles == {"nurse"}:
        # a social worker whose role the registration's mapping does not know is taken for
        # a nurse: the log names what the claim held, for the EHR's administrator
        claim = registration.roles.claim
        held = {"roles_claim": claim, "roles_held": str(claims.get(claim, ""))[:200]}
        raise PageError(400, "no_patient", logged=logged | held, **page)
    granted = answer.get("scope")
    if isinstance(granted, str):  # absent: as requested (RFC 6749 5.1)
        missing = save_rights_not_granted(registration.scopes, granted)
        if missing:
            detail = f"not granted: {' '.join(missing)}"
            raise PageError(403, "scope_not_granted", detail=detail, logged=logged, **page)
    refresh = answer.get("refresh_token")
    return NewSession(
        tenant_id=tenant.id,
        registration_id=registration.id,
        registration_fingerprint=registration_fingerprint(registration),
        path_prefix=pending.path_prefix,
        fhir_base_url=registration.fhir_base_url,
        token_endpoint=server.token_endpoint,
        user=AppUser(
            fhir_user=fhir_user,
            name=_display_name(claims, fhir_user)[:USER_NAME_MAX],
            roles=roles,
        ),
        language=negotiate([_str(claims.get("locale")), registration.default_language]),
        patient_id=patient,
        encounter_id=_call(registration, lambda: _encounter(answer)),
        app_context=_app_context(answer.get("appContext")),
        launch_details={
            name: answer[name]
            for name in ("need_patient_banner", "smart_style_url", "fhirContext", "intent")
            if name in answer
        },
        scope=str(answer.get("scope") or requested_scopes(registration.scopes, server)),
        access_token=str(answer["access_token"]),
        refresh_token=refresh if isinstance(refresh, str) and refresh else None,
        access_expires_at=token_expiry(answer),
    )


def _encounter(answer: dict[str, Any]) -> str | None:
    """``encounter`` (SMART v1 style), else an Encounter reference in ``fhirContext`` (v2)."""
    if answer.get("encounter") is not None:
        return _fhir_id(answer["encounter"], "encounter")
    context = answer.get("fhirContext") or []
    if not isinstance(context, list):
        raise OAuthError("token_failed", "fhirContext in the token response is not a list")
    for item in context:
        reference = item.get("reference") if isinstance(item, dict) else None
        if isinstance(reference, str) and reference.startswith("Encounter/"):
            return _fhir_id(reference.removeprefix("Encounter/"), "fhirContext's Encounter")
    return None


def _fhir_id(value: object, name: str) -> str | None:
    """A resource id of the launch context; none when the EHR gives none (null or "")."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not FHIR_ID.fullmatch(value):
        raise OAuthError("token_failed", f"{name} in the token response is not a FHIR id")
    return value


def _app_context(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value)  # some EHRs send the CDS Hooks appContext as parsed JSON


def _display_name(claims: dict[str, Any], fhir_user: str) -> str:
    given_family = " ".join(
        part for part in (_str(claims.get("given_name")), _str(claims.get("family_name"))) if part
    )
    return (
        _str(claims.get("name"))
        or given_family
        or _str(claims.get("preferred_username"))
        or (fhir_user)
    )


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _binding_cookie(state: str, settings: Settings) -> str:
    """One binding cookie per launch, so that two tabs launching at once do not collide."""
    return cookie_name(BINDING_COOKIE_PREFIX + digest(state)[:16], settings)


def _set_cookie(response: RedirectResponse, name: str, value: str, lifetime: timedelta) -> None:
    response.headers.append("set-cookie", iframe_cookie(name, value, int(lifetime.total_seconds())))
