"""Launched app sessions: who is using the app, for which patient, with which tokens.

After a SMART launch the browser holds an opaque random secret in the cookie
``kindreflex_session`` (``Secure; HttpOnly; SameSite=None; Partitioned``: the app runs in
an EHR iframe), beside those of the same user's last launches in that browser (at most
``MAX_LAUNCHES_PER_BROWSER``, newest first); the database holds each one's SHA-256, the
launch context and the EHR's tokens. A page of a launch's patient names its launch
(``LAUNCH_PARAM``), so that the patients' charts open in several tabs of the EHR each
keep theirs; a page naming none is the newest launch's.

* Tokens are sealed with ``KINDREFLEX_SECRET_KEY`` when it is set. Without it they are
  stored in clear — the embedded default for single-machine installs and the demo; the
  service warns at start in production. Either way they are never logged and never reach
  the browser, and a session row is deleted once expired (``SESSION_LIFETIME``).
* A session unused for ``KINDREFLEX_SESSION_IDLE_MINUTES`` ends for its user as an expired
  one does (shared workstations); each request records its use, to the minute
  (``ACTIVITY_RESOLUTION``). The outbox does not look at it: a save waiting for delivery
  is sent with the session's tokens, refreshed, until the session's 8 hours are up.
* Roles: everyone the EHR launches us for is a clinician at triage, so every session has
  ``nurse``; ``social-worker`` and ``admin`` come only from the registration's role
  mapping (an id_token claim and its values).
* A session is bound to its EHR registration as launched (``registration_fingerprint``:
  its FHIR base, client and role mapping): once an administrator changes one of them, or
  removes the registration, its pages are refused as after its expiry.
* CSRF: a synchroniser token per session, sent back in the form field ``csrf_token`` or
  the header ``X-CSRF-Token``. A form is checked against the session its page names: a
  page of a launch the cookie no longer holds is refused, never saved for another.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal, get_args
from urllib.parse import urlencode

from fastapi import Depends, Request
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from service import retention
from service.api.deps import tenant_slug
from service.audit import actor_url
from service.db.base import Database, utcnow
from service.db.models import AppSession, Tenant
from service.fhir.client import FhirUnavailable, ReauthorisationRequired
from service.i18n import Language, negotiate
from service.keys import KeyStore, Sealer, UnsealError
from service.scopes import save_rights_not_granted
from service.session_use import ACTIVITY_RESOLUTION, last_use, record_use
from service.settings import Settings
from service.tenancy import SecretBox, TenantContext, TenantDirectory, UnknownTenantError
from service.tenant_config import EhrRegistration
from smart_app.errors import PageError, Said
from smart_app.oauth import (
    AuthServers,
    OAuthError,
    ehr_client,
    request_token,
    token_lifetime,
)
from smart_app.security import digest, page_headers, tokens_match

__all__ = [
    "LAUNCH_PARAM",
    "SESSION_COOKIE",
    "AppUser",
    "LaunchContext",
    "NewSession",
    "ReauthorisationRequired",
    "Role",
    "SessionStore",
    "SessionTokens",
    "client_identity",
    "cookie_name",
    "csrf_token",
    "current_launch",
    "end_launches",
    "registration_fingerprint",
    "require_role",
    "security_headers",
    "served_over_https",
    "session_cookie",
    "verify_csrf",
]

log = logging.getLogger(__name__)

Role = Literal["nurse", "social-worker", "admin"]
ROLES: tuple[Role, ...] = get_args(Role)
SESSION_COOKIE = "kindreflex_session"  # its name as served: cookie_name
#: The query parameter that names the launch a page belongs to (its session's id; not a
#: credential: the cookie is).
LAUNCH_PARAM = "s"
#: Launches one browser keeps at once. A nurse may have several patients' charts open in
#: tabs of the EHR, each with its launch: the cookie holds their secrets, newest first,
#: and each page names its own (``LAUNCH_PARAM``), so that a tab never acts for the
#: patient another tab launched.
MAX_LAUNCHES_PER_BROWSER = 5
SESSION_LIFETIME = timedelta(hours=8)  # one shift; the EHR relaunches per patient anyway
REFRESH_MARGIN = timedelta(seconds=60)  # refresh a token this long before it expires
DEFAULT_TOKEN_LIFETIME = timedelta(minutes=5)  # when a token response has no expires_in
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"


@dataclass(frozen=True)
class AppUser:
    fhir_user: str
    name: str
    roles: frozenset[Role]


@dataclass(frozen=True)
class LaunchContext:
    """The launch a request belongs to. ``session_id`` is a public handle, not the cookie."""

    session_id: str
    tenant: TenantContext
    registration_id: str
    fhir_base_url: str
    patient_id: str | None
    encounter_id: str | None
    user: AppUser
    language: Language
    app_context: str | None
    path_prefix: str = ""  # "" or "/t/<tenant>": where the app's own links start
    need_patient_banner: bool = True  # SMART: False when the EHR already shows the patient
    csrf: str = field(default="", repr=False, compare=False)
    #: What the session's token grants: its token response's ``scope`` (as requested when
    #: absent, RFC 6749 5.1), or its latest refresh's. The optional rights
    #: (``service.scopes.OPTIONAL_RIGHTS``) are used only where it names them.
    scope: str = ""

    @property
    def registration(self) -> EhrRegistration | None:
        return self.tenant.config.registration_by_id(self.registration_id)

    @property
    def actor(self) -> str:
        """The user as the audit trail names them (``service.audit.actor_url``)."""
        return actor_url(self.user.fhir_user, self.fhir_base_url)


@dataclass(frozen=True)
class NewSession:
    """What a completed launch hands to the session store."""

    tenant_id: int
    registration_id: str
    #: ``registration_fingerprint`` of the registration the launch went through, as it
    #: was when the user's roles were read with its mapping
    registration_fingerprint: str
    path_prefix: str
    fhir_base_url: str
    token_endpoint: str
    user: AppUser
    language: Language
    patient_id: str | None
    encounter_id: str | None
    app_context: str | None
    launch_details: dict[str, Any]  # need_patient_banner, smart_style_url, fhirContext
    scope: str
    access_token: str
    refresh_token: str | None
    access_expires_at: datetime


def token_expiry(token_response: dict[str, Any]) -> datetime:
    """When the access token of a checked token response (``oauth.request_token``) expires."""
    return utcnow() + (token_lifetime(token_response) or DEFAULT_TOKEN_LIFETIME)


class SessionStore:
    """Creates, finds and expires app sessions (and expired launch states)."""

    def __init__(self, database: Database, settings: Settings) -> None:
        self._database = database
        self._sealer = Sealer(settings.secret_key, "session-tokens")
        #: A session unused this long is refused, as after its ``expires_at``.
        self.idle_limit = timedelta(minutes=settings.session_idle_minutes)

    def create(self, new: NewSession) -> tuple[str, str]:
        """Store the session; returns its id and the cookie secret (for the browser only)."""
        session_id, secret = secrets.token_hex(16), secrets.token_urlsafe(32)
        now = utcnow()
        with self._database.session() as session:
            session.add(
                AppSession(
                    id=session_id,
                    cookie_hash=digest(secret),
                    csrf_token=secrets.token_urlsafe(32),
                    tenant_id=new.tenant_id,
                    registration_id=new.registration_id,
                    registration_fingerprint=new.registration_fingerprint,
                    path_prefix=new.path_prefix,
                    fhir_base_url=new.fhir_base_url,
                    token_endpoint=new.token_endpoint,
                    fhir_user=new.user.fhir_user,
                    user_name=new.user.name,
                    roles=sorted(new.user.roles),
                    language=new.language,
                    patient_id=new.patient_id,
                    encounter_id=new.encounter_id,
                    app_context=new.app_context,
                    launch_details=new.launch_details,
                    scope=new.scope,
                    access_token=self._sealer.seal(new.access_token),
                    refresh_token=(
                        None if new.refresh_token is None else self._sealer.seal(new.refresh_token)
                    ),
                    sealed=self._sealer.active,
                    access_expires_at=new.access_expires_at,
                    created_at=now,
                    expires_at=now + SESSION_LIFETIME,
                    last_active_at=now,
                )
            )
        return session_id, secret

    def of_browser(self, cookie: str, launch: str | None) -> AppSession | None:
        """The session of the launch ``launch`` among the cookie's; without one, the
        browser's newest launch. Never another launch than the one named. It may have
        ended (``expires_at`` past): its language still says how to tell the user so."""
        held = browser_launches(cookie)
        if not held:  # no secret of ours in the cookie (cut, forged, another app's)
            return None
        if launch is None:
            query = select(AppSession).where(AppSession.cookie_hash == digest(held[0]))
        else:
            query = select(AppSession).where(
                AppSession.id == launch, AppSession.cookie_hash.in_(map(digest, held))
            )
        with self._database.session() as session:
            return session.scalar(query)

    def with_launch(self, cookie: str | None, secret: str) -> str:
        """The session cookie after the new launch whose secret is ``secret``: that secret
        first, then the same user's earlier launches the browser holds (at most
        ``MAX_LAUNCHES_PER_BROWSER`` in all). Another user's are dropped: on a shared
        workstation, a tab of the previous user must not act as them. The same user is the
        same ``fhirUser`` of the same EHR of the same hospital: a relative ``fhirUser``
        (``Practitioner/5``) of another EHR or hospital is someone else (found by review)."""
        earlier = browser_launches(cookie)
        with self._database.session() as session:
            new = session.scalars(
                select(AppSession).where(AppSession.cookie_hash == digest(secret))
            ).one()
            theirs = set(
                session.scalars(
                    select(AppSession.cookie_hash).where(
                        AppSession.cookie_hash.in_([digest(held) for held in earlier]),
                        AppSession.tenant_id == new.tenant_id,
                        AppSession.registration_id == new.registration_id,
                        AppSession.fhir_base_url == new.fhir_base_url,
                        AppSession.fhir_user == new.fhir_user,
                    )
                )
            )
        kept = [held for held in earlier if digest(held) in theirs]
        return ".".join([secret, *kept][:MAX_LAUNCHES_PER_BROWSER])

    def idle(self, row: AppSession, now: datetime) -> bool:
        """Whether the session lay unused past the idle limit."""
        return last_use(row) + self.idle_limit <= now

    def touch(self, row: AppSession, now: datetime) -> None:
        """Record a request of the session (``service.session_use``: one write a minute at
        most, none for the requests of one page)."""
        if last_use(row) > now - ACTIVITY_RESOLUTION:
            return  # without opening a database session
        with self._database.session() as session:
            record_use(session, row, now)

    def purge_expired(self) -> None:
        """Delete expired sessions (with their tokens) and abandoned launch states."""
        with self._database.session() as session:
            retention.drop_expired_launches(session, utcnow())


def end_launches(session: Session, cookie: str) -> None:
    """Sign the browser's launches out now (all of them are its user's), in the caller's
    transaction: their pages are refused from here on, as after their expiry, and they go
    with their tokens at the next purge. As after an expiry, a save made in one is still
    delivered with its access token while that is fresh (``TokenSource.access_token``),
    then waits for the next sign-in."""
    hashes = [digest(secret) for secret in browser_launches(cookie)]
    session.execute(
        update(AppSession)
        .where(AppSession.cookie_hash.in_(hashes), AppSession.expires_at > utcnow())
        .values(expires_at=utcnow())
    )


def browser_launches(cookie: str | None) -> list[str]:
    """The secrets of the browser's launches the session cookie holds, newest first; what
    is no secret of ours (a cookie another site's page set, a broken value) is left out."""
    held = (cookie or "").split(".")
    return [secret for secret in held if _SECRET.fullmatch(secret)][:MAX_LAUNCHES_PER_BROWSER]


_SECRET = re.compile(r"[A-Za-z0-9_\-]{43}")  # secrets.token_urlsafe(32)


def sessions_of(request: Request) -> SessionStore:
    store: SessionStore = request.app.state.sessions
    return store


def cookie_name(name: str, settings: Settings) -> str:
    """A cookie's name as the app sets and reads it: ``__Host-`` before it on https, so
    that only this host sets it, Secure, on ``/`` (RFC 6265bis 4.1.3.2). Without the
    prefix, another app of the hospital's domain could plant one with ``Domain=`` that the
    browser sends beside ours (found by review). On plain http on this machine (the demo)
    browsers refuse a prefixed cookie: the name as it is. A session set before 2026-12-05,
    by the plain name on https, ends at the upgrade (the EHR opens the app again)."""
    return f"__Host-{name}" if served_over_https(settings) else name


def served_over_https(settings: Settings) -> bool:
    """Whether the app's public URL is https (else plain http on this machine: the demo)."""
    return str(settings.public_url).startswith("https://")


def session_cookie(request: Request) -> str | None:
    """The browser's session cookie: the secrets of its launches."""
    return request.cookies.get(cookie_name(SESSION_COOKIE, request.app.state.settings))


def current_launch(request: Request) -> LaunchContext:
    """The request's launch; a missing, expired or other hospital's session → 401 page."""
    tenants: TenantDirectory = request.app.state.tenants
    try:
        tenant = tenants.get(tenant_slug(request))
    except UnknownTenantError as error:
        # whether the hospital exists but is not set up yet: for the log, not for anyone
        raise PageError(404, "unknown_tenant", logged={"reason": error.reason}) from error
    cookie = session_cookie(request)
    launch = request.query_params.get(LAUNCH_PARAM)
    row = sessions_of(request).of_browser(cookie, launch) if cookie else None
    if row is None or row.tenant_id != tenant.id:
        raise PageError(401, "session_missing", frame_origins=all_frame_origins(tenant))
    # the page that says so, and shows back what she typed, in the language she worked in,
    # not the workstation browser's (found by review)
    language, frames = negotiate([row.language]), all_frame_origins(tenant)
    now, store = utcnow(), sessions_of(request)
    if row.expires_at <= now:
        raise PageError(401, "session_missing", language=language, frame_origins=frames)
    if store.idle(row, now):
        # unused too long at a shared workstation: ended for its user as at its 8 hours
        # (its tokens still deliver its saves waiting in the outbox: SessionTokens)
        raise PageError(
            401,
            "session_missing",
            language=language,
            frame_origins=frames,
            logged={"reason": "the session lay unused past the idle limit"},
        )
    if changed := _registration_changed(tenant, row):
        # an administrator removed the EHR (retired, or compromised), pointed it at another
        # server, gave it another client or another role mapping: its sessions end now,
        # not when their 8 hours are up. The page is the expired session's, which shows
        # back the text of a form sent now (``errors.FREE_TEXT``)
        raise PageError(
            401, "session_missing", language=language, frame_origins=frames, logged=changed
        )
    store.touch(row, now)
    return LaunchContext(
        session_id=row.id,
        tenant=tenant,
        registration_id=row.registration_id,
        fhir_base_url=row.fhir_base_url,
        patient_id=row.patient_id,
        encounter_id=row.encounter_id,
        user=AppUser(
            fhir_user=row.fhir_user,
            name=row.user_name,
            roles=frozenset(role for role in row.roles if role in ROLES),
        ),
        language=language,
        app_context=row.app_context,
        path_prefix=row.path_prefix,
        need_patient_banner=row.launch_details.get("need_patient_banner") is not False,
        csrf=row.csrf_token,
        scope=row.scope,
    )


def pinned(ctx: LaunchContext, page: str) -> str:
    """The address of ``page`` (a path of the app, with or without a query) for the launch
    ``ctx``: what a redirect gives, so that the page it leads to, and its forms, stay with
    that launch when another tab launches meanwhile."""
    separator = "&" if "?" in page else "?"
    return f"{ctx.path_prefix}{page}{separator}{urlencode({LAUNCH_PARAM: ctx.session_id})}"


def client_identity(registration: EhrRegistration) -> dict[str, str]:
    """What makes a registration the same EHR and client: where its credentials may go,
    and whom the EHR issued a session's tokens to. Its client secret is no part of it: a
    secret rotated keeps the client (and is never written into a fingerprint)."""
    return {
        "fhir_base_url": registration.fhir_base_url,
        "client_id": registration.client_id,
        "client_auth": registration.client_auth,
    }


def registration_fingerprint(registration: EhrRegistration) -> str:
    """What a session is bound to of the registration it was launched through: its EHR
    and client (``client_identity``) and the role mapping its user's roles were read with
    (each list's values as a set: their order and repeats change no one's role). SHA-256
    of their canonical JSON. The rest (name, frame origins, scopes, language, CDS issuers,
    own redirect URI) binds nothing: the decision in docs/architecture.md."""
    mapping = registration.roles
    bound = client_identity(registration) | {
        "roles": {
            "claim": mapping.claim,
            "social_worker": sorted(set(mapping.social_worker)),
            "admin": sorted(set(mapping.admin)),
        }
    }
    canonical = json.dumps(bound, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _registration_changed(tenant: TenantContext, row: AppSession) -> dict[str, str] | None:
    """Why the session no longer holds for the EHR registration it was launched through
    (the refusal's log fields), or None while it does."""
    registration = tenant.config.registration_by_id(row.registration_id)
    if registration is None or registration.fhir_base_url != row.fhir_base_url:
        return {"reason": "the session's EHR registration was removed or moved"}
    if row.registration_fingerprint is None:
        return {"reason": "the session was launched before sessions were bound to a client"}
    if row.registration_fingerprint != registration_fingerprint(registration):
        return {"reason": "the session's EHR registration has another client or role mapping"}
    return None


LaunchDep = Annotated[LaunchContext, Depends(current_launch)]


def require_role(role: Role) -> Callable[[LaunchContext], LaunchContext]:
    """A dependency: the launch, if its user has ``role``; otherwise a 403 page."""

    def dependency(ctx: LaunchDep) -> LaunchContext:
        if role not in ctx.user.roles:
            raise PageError(
                403,
                "forbidden_role",
                language=ctx.language,
                frame_origins=frame_origins(ctx),
                role=Said(f"smart.role.{role}"),
            )
        return ctx

    return dependency


def csrf_token(ctx: LaunchContext) -> str:
    """The token every form of this session must send back (field ``csrf_token``)."""
    return ctx.csrf


async def verify_csrf(request: Request, ctx: LaunchDep) -> None:
    """Refuse a state-changing request without this session's CSRF token (403 page)."""
    presented = request.headers.get(CSRF_HEADER)
    content_type = request.headers.get("content-type", "")
    if presented is None and content_type.startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        value = (await request.form()).get(CSRF_FIELD)
        presented = value if isinstance(value, str) else None
    if not tokens_match(presented, ctx.csrf):
        raise PageError(403, "csrf_failed", language=ctx.language, frame_origins=frame_origins(ctx))


def frame_origins(ctx: LaunchContext) -> tuple[str, ...]:
    registration = ctx.registration
    return tuple(registration.frame_origins) if registration else ()


def all_frame_origins(tenant: TenantContext) -> tuple[str, ...]:
    """Every origin any of the tenant's EHRs frames us from (for pages before a launch)."""
    return tuple(dict.fromkeys(o for r in tenant.config.registrations for o in r.frame_origins))


def security_headers(ctx: LaunchContext) -> dict[str, str]:
    """Headers for every app page: CSP with the registered EHR's frame-ancestors, no-store…"""
    return page_headers(frame_origins(ctx))


class SessionTokens:
    """Hands out a valid access token for a session, refreshing it shortly before expiry.

    A refresh happens once even under concurrent requests: a lock per session (striped)
    in this process, and ``SELECT … FOR UPDATE`` on the session row across instances
    (PostgreSQL; SQLite deployments are single-instance). ``auth_servers``: the EHRs'
    SMART configurations the launches read (``app.state.auth_servers``), which a
    ``private_key_jwt`` refresh needs for its assertion's algorithm.
    """

    LOCK_STRIPES = 64

    def __init__(
        self,
        database: Database,
        settings: Settings,
        *,
        keys: KeyStore | None = None,
        tenants: TenantDirectory | None = None,
        auth_servers: AuthServers | None = None,
    ) -> None:
        self._database = database
        self._timeout = settings.fhir_timeout_seconds
        self._sealer = Sealer(settings.secret_key, "session-tokens")
        self._keys = keys or KeyStore(database, settings)
        self._tenants = tenants or TenantDirectory(database, SecretBox(settings.secret_key))
        self._auth_servers = auth_servers or AuthServers()
        self._locks = [threading.Lock() for _ in range(self.LOCK_STRIPES)]

    def access_token(self, session_id: str) -> str:
        """A live access token.

        A token that is not yet due for refresh is handed out even after the app session
        has ended: the outbox delivers a save the user made while signed in with it. Pages
        check the session's end themselves (``SessionStore``), so no user acts on an ended
        session this way. The idle limit is the pages' only: a session unused past it
        still refreshes its token for the outbox until its ``expires_at``.

        Raises ``ReauthorisationRequired`` when none can be had without the user (a refresh
        is due but refused, there is no refresh token, or the session has ended so it may
        not refresh) and ``FhirUnavailable`` when the EHR's token endpoint cannot be reached
        and the token has expired (retry later).
        """
        try:
            with self._database.session() as session:
                row = session.get(AppSession, session_id)
                if row is not None and self._fresh(row):
                    return self._sealer.open(row.access_token, row.sealed)
            with self._locks[zlib.crc32(session_id.encode()) % self.LOCK_STRIPES]:
                return self._refresh(session_id)
        except UnsealError as error:  # the secret key changed: only a new launch helps
            raise ReauthorisationRequired(str(error)) from error

    def _refresh(self, session_id: str) -> str:
        with self._database.session() as session:
            row = session.scalar(
                select(AppSession).where(AppSession.id == session_id).with_for_update()
            )
            if row is None or row.expires_at <= utcnow():
                raise ReauthorisationRequired("the app session is unknown or has expired")
            current = self._sealer.open(row.access_token, row.sealed)
            if self._fresh(row):  # another request refreshed while we waited
                return current
            if row.refresh_token is None:
                return self._still_valid(row, current, "no refresh token was granted")
            registration = self._registration(session.get(Tenant, row.tenant_id), row)
            refresh_token = self._sealer.open(row.refresh_token, row.sealed)
            try:
                algorithm = self._auth_servers.assertion_algorithm(registration, self._timeout)
                with ehr_client(self._timeout) as http:
                    answer = request_token(
                        http,
                        row.token_endpoint,
                        registration,
                        self._keys,
                        {
                            "grant_type": "refresh_token",
                            "refresh_token": refresh_token,
                        },
                        algorithm,
                    )
            except OAuthError as failure:
                log.warning(
                    "token refresh failed",
                    extra={"fields": {"session": session_id, "reason": failure.detail}},
                )
                if failure.kind == "ehr_unreachable" and row.access_expires_at <= utcnow():
                    raise FhirUnavailable(f"token refresh: {failure.detail}") from failure
                return self._still_valid(row, current, failure.detail)
            granted = str(answer.get("scope") or row.scope)
            if dropped := save_rights_not_granted(row.scope, granted):
                # as the launch refuses it: the saves would wait for a sign-in while the
                # nurse reads "delivery follows" (found by review). Not kept; past expiry,
                # a new sign-in. An optional right dropped is taken (the scope stored says
                # it: a later referral creates its facility instead of updating it).
                reason = f"the refresh no longer grants {' '.join(dropped)}"
                log.warning(
                    "token refresh refused",
                    extra={"fields": {"session": session_id, "reason": reason}},
                )
                return self._still_valid(row, current, reason)
            # Servers may rotate the refresh token. The one kept is sealed again with the new
            # access token: ``sealed`` speaks for both, and a session stored before the secret
            # key was set kept its refresh token in the clear, marked sealed (review).
            refresh_token = str(answer.get("refresh_token") or refresh_token)
            row.access_token = self._sealer.seal(str(answer["access_token"]))
            row.refresh_token = self._sealer.seal(refresh_token)
            row.sealed = self._sealer.active
            row.access_expires_at = token_expiry(answer)
            row.scope = granted
            return str(answer["access_token"])

    def _registration(self, tenant: Tenant | None, row: AppSession) -> EhrRegistration:
        if tenant is None:
            raise ReauthorisationRequired("the session's hospital no longer exists")
        config = self._tenants.get(tenant.slug).config
        registration = config.registration_by_id(row.registration_id)
        if registration is None:
            raise ReauthorisationRequired("the session's EHR registration was removed")
        if registration.fhir_base_url != row.fhir_base_url:
            # the registration now names another EHR: its credentials (a client secret) must
            # not go to the token endpoint the session was launched with
            raise ReauthorisationRequired("the session's EHR registration names another server")
        return registration

    @staticmethod
    def _fresh(row: AppSession) -> bool:
        return row.access_expires_at - REFRESH_MARGIN > utcnow()

    @staticmethod
    def _still_valid(row: AppSession, current: str, reason: str) -> str:
        """Within the margin the old token still works; past expiry the user must sign in."""
        if row.access_expires_at > utcnow():
            return current
        raise ReauthorisationRequired(f"the access token expired and cannot be refreshed: {reason}")
