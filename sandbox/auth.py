"""A SMART App Launch 2.x authorization server for the sandbox EHR.

EHR launch (and standalone launch with a patient picker): ``/authorize`` (GET or POST) checks
the client, its exact redirect URI, ``aud`` = the FHIR facade base, ``state``, PKCE S256 and
the launch id, then shows a login/consent page (pick a sandbox user; Allow / Deny). ``/token``
exchanges the code (PKCE verified; client authenticated with ``private_key_jwt`` against the
client's registered ``jwks_uri``/``jwks``, or a public client) for an opaque access token, a
refresh token and an RS256 ``id_token`` carrying ``fhirUser`` and the user's roles. The
``refresh_token`` grant rotates the refresh token.

All state lives in memory: the sandbox is a development and test tool.
"""

from __future__ import annotations

import base64
import hashlib
import html
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
import jwt
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from .config import SandboxConfig, SmartClient
from .keys import SigningKey
from .scopes import parse_scopes, scope_allows
from .seed import USERS, SandboxUser

__all__ = ["AuthServer", "Grant", "LaunchContext", "build_auth_router", "pkce_challenge"]


def _granted(requested: str, allowed: str) -> str:
    """What a real EHR grants of ``requested``: the scopes the client is allowed, a resource
    scope when one of the allowed covers each of its interactions. Less than asked is
    possible (SMART's token response says what was granted)."""
    names = set(allowed.split())
    grants = parse_scopes(allowed)

    def covered(scope: str) -> bool:
        wanted = parse_scopes(scope)
        return bool(wanted) and all(
            any(g.context in (w.context, "user") and g.allows(w.resource_type, i) for g in grants)
            for w in wanted
            for i in w.interactions
        )

    def narrowed(scope: str) -> list[str]:
        """A scope the client may not have whole, as what it may of it (SMART 2: "the
        scopes ultimately granted ... may differ ... often true when dealing with wildcard
        FHIR Resource scope requests"): a wildcard as the types it may, ``patient/*.c`` →
        ``patient/Observation.c`` …; a type with the interactions it may, as an EHR that
        lets no app update its Organizations grants ``user/Organization.crs`` of
        ``user/Organization.crus``."""
        return [
            f"{w.context}/{kind}.{''.join(i for i in 'cruds' if i in letters)}"
            for w in parse_scopes(scope)
            for g in grants
            if g.context == w.context
            and (kind := g.resource_type if w.resource_type == "*" else w.resource_type)
            and g.resource_type in ("*", kind)
            and (letters := g.interactions & w.interactions)
        ]

    granted: list[str] = []
    for scope in requested.split():
        granted += [scope] if scope in names or covered(scope) else narrowed(scope)
    return " ".join(dict.fromkeys(granted))


ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
MAX_ASSERTION_LIFETIME = 300


def pkce_challenge(verifier: str) -> str:
    """BASE64URL(SHA256(verifier)) without padding (RFC 7636, S256)."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class LaunchContext:
    id: str
    patient: str | None
    encounter: str | None
    user: str | None  # sandbox user key
    app_context: str | None
    expires_at: float
    intent: str | None = None


@dataclass(frozen=True)
class Grant:
    """What an access token, code or refresh token stands for."""

    client_id: str
    scope: str
    user: str | None = None
    patient: str | None = None
    encounter: str | None = None
    app_context: str | None = None
    nonce: str | None = None
    expires_at: float = 0.0
    kind: str = "smart"  # smart | cds


@dataclass(frozen=True)
class _Code:
    grant: Grant
    redirect_uri: str
    code_challenge: str
    expires_at: float


@dataclass
class _Pending:
    id: str
    client: SmartClient
    params: dict[str, str]
    launch: LaunchContext | None
    scope: str
    created: float


class OAuthError(Exception):
    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status

    def response(self) -> JSONResponse:
        return JSONResponse(
            {"error": self.error, "error_description": self.description},
            status_code=self.status,
            headers={"Cache-Control": "no-store", "Pragma": "no-cache"},
        )


@dataclass
class AuthServer:
    config: SandboxConfig
    issuer: str  # the sandbox EHR root URL
    fhir_base: str  # the facade base = aud of authorization requests
    id_token_key: SigningKey
    practitioners: dict[str, str]  # user key -> Practitioner id
    clients: dict[str, SmartClient] = field(default_factory=dict)
    http: httpx.AsyncClient | None = None
    _launches: dict[str, LaunchContext] = field(default_factory=dict)
    _pending: dict[str, _Pending] = field(default_factory=dict)
    _codes: dict[str, _Code] = field(default_factory=dict)
    _tokens: dict[str, Grant] = field(default_factory=dict)
    _refresh: dict[str, Grant] = field(default_factory=dict)
    _jtis: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        for c in self.config.clients:
            self.register_client(c)

    # -- URLs ------------------------------------------------------------------------------------
    @property
    def authorize_url(self) -> str:
        return f"{self.issuer}/authorize"

    @property
    def token_url(self) -> str:
        return f"{self.issuer}/token"

    @property
    def jwks_url(self) -> str:
        return f"{self.issuer}/.well-known/jwks.json"

    def now(self) -> float:
        return self.config.clock()

    # -- registry -----------------------------------------------------------------------------
    def register_client(self, client: SmartClient) -> None:
        with self._lock:
            self.clients[client.client_id] = client

    def user(self, key: str | None) -> SandboxUser | None:
        return next((u for u in USERS if u.key == key), None)

    def fhir_user(self, key: str) -> str:
        return f"{self.fhir_base}/Practitioner/{self.practitioners[key]}"

    # -- launches and tokens --------------------------------------------------------------------
    def create_launch(
        self,
        *,
        patient: str | None,
        encounter: str | None = None,
        user: str | None = "nurse",
        app_context: str | None = None,
        intent: str | None = None,
    ) -> str:
        """Record an EHR launch context; returns the opaque ``launch`` parameter."""
        lid = secrets.token_urlsafe(16)
        ctx = LaunchContext(
            lid,
            patient,
            encounter,
            user,
            app_context,
            self.now() + self.config.launch_lifetime,
            intent,
        )
        with self._lock:
            self._launches[lid] = ctx
        return lid

    def issue_access_token(self, grant: Grant, lifetime: int | None = None) -> tuple[str, int]:
        """An opaque bearer token for the FHIR facade; returns (token, expires_in)."""
        life = self.config.access_token_lifetime if lifetime is None else lifetime
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._tokens[token] = replace(grant, expires_at=self.now() + life)
        return token, life

    def check_access_token(self, token: str | None) -> Grant | None:
        """The grant of a live access token, or ``None`` (unknown or expired)."""
        if not token:
            return None
        with self._lock:
            grant = self._tokens.get(token)
        if grant is None or grant.expires_at <= self.now():
            return None
        return grant

    def revoke_all(self) -> None:
        with self._lock:
            self._tokens.clear()
            self._refresh.clear()

    # -- /authorize -----------------------------------------------------------------------------
    def begin_authorize(self, params: dict[str, str]) -> _Pending | Response:
        client = self.clients.get(params.get("client_id", ""))
        if client is None:
            return _error_page(
                "Unknown client_id", f"client_id {params.get('client_id')!r} is not registered."
            )
        redirect_uri = params.get("redirect_uri", "")
        if redirect_uri not in client.redirect_uris:
            return _error_page(
                "Unregistered redirect_uri",
                f"redirect_uri {redirect_uri!r} is not registered for this client.",
            )
        state = params.get("state")

        def fail(error: str, description: str) -> Response:
            return self._answer(
                redirect_uri,
                {
                    "error": error,
                    "error_description": description,
                    **({"state": state} if state else {}),
                },
            )

        if params.get("response_type") != "code":
            return fail("unsupported_response_type", "response_type must be 'code'")
        if not state:
            return fail("invalid_request", "state is required")
        if params.get("aud", "").rstrip("/") != self.fhir_base:
            return fail("invalid_request", f"aud must be the FHIR base {self.fhir_base}")
        if not params.get("code_challenge"):
            return fail("invalid_request", "PKCE code_challenge is required")
        if params.get("code_challenge_method") != "S256":
            return fail("invalid_request", "code_challenge_method must be S256")
        scope = params.get("scope", "").strip()
        if not scope:
            return fail("invalid_scope", "scope is required")
        scope = _granted(scope, client.allowed_scope)
        if not scope:
            return fail("invalid_scope", "no requested scope is allowed")
        launch: LaunchContext | None = None
        launch_id = params.get("launch")
        if launch_id:
            with self._lock:
                launch = self._launches.get(launch_id)
            if launch is None or launch.expires_at <= self.now():
                return fail("invalid_request", "unknown or expired launch")
        elif "launch" in scope.split():
            return fail(
                "invalid_request", "scope 'launch' requires a launch parameter (EHR launch)"
            )
        pending = _Pending(
            secrets.token_urlsafe(16), client, dict(params), launch, scope, self.now()
        )
        with self._lock:
            self._pending[pending.id] = pending
        return pending

    def decide(
        self, pending_id: str, decision: str, user: str | None, patient: str | None
    ) -> Response:
        with self._lock:
            pending = self._pending.pop(pending_id, None)
        if pending is None or pending.created + self.config.launch_lifetime <= self.now():
            return _error_page(
                "Authorization expired", "This authorization request is unknown or expired."
            )
        p = pending.params
        state = p["state"]
        if decision != "allow":
            return self._answer(
                p["redirect_uri"],
                {
                    "error": "access_denied",
                    "error_description": "The user denied access",
                    "state": state,
                },
            )
        launch = pending.launch
        user_key = user or (launch.user if launch else None) or "nurse"
        if self.user(user_key) is None:
            return self._answer(
                p["redirect_uri"],
                {"error": "access_denied", "error_description": "unknown user", "state": state},
            )
        grant = Grant(
            client_id=pending.client.client_id,
            scope=pending.scope,
            user=user_key,
            patient=(launch.patient if launch else None) or patient,
            encounter=launch.encounter if launch else None,
            app_context=launch.app_context if launch else None,
            nonce=p.get("nonce"),
        )
        code = secrets.token_urlsafe(24)
        with self._lock:
            if launch is not None:
                self._launches.pop(launch.id, None)  # a launch authorizes once
            self._codes[code] = _Code(
                grant,
                p["redirect_uri"],
                p["code_challenge"],
                self.now() + self.config.code_lifetime,
            )
        return self._answer(p["redirect_uri"], {"code": code, "state": state})

    # -- /token ---------------------------------------------------------------------------------
    async def token(self, form: dict[str, str]) -> dict[str, Any]:
        grant_type = form.get("grant_type")
        if grant_type == "authorization_code":
            return await self._token_from_code(form)
        if grant_type == "refresh_token":
            return await self._token_from_refresh(form)
        raise OAuthError("unsupported_grant_type", f"grant_type {grant_type!r} is not supported")

    async def _token_from_code(self, form: dict[str, str]) -> dict[str, Any]:
        with self._lock:
            entry = self._codes.pop(form.get("code", ""), None)  # single use
        if entry is None or entry.expires_at <= self.now():
            raise OAuthError("invalid_grant", "unknown, used or expired authorization code")
        client = await self.authenticate_client(form, expected_client=entry.grant.client_id)
        if form.get("redirect_uri") != entry.redirect_uri:
            raise OAuthError(
                "invalid_grant", "redirect_uri does not match the authorization request"
            )
        verifier = form.get("code_verifier", "")
        if not verifier or not secrets.compare_digest(
            pkce_challenge(verifier), entry.code_challenge
        ):
            raise OAuthError("invalid_grant", "PKCE verification failed (code_verifier)")
        return self._token_response(client, entry.grant)

    async def _token_from_refresh(self, form: dict[str, str]) -> dict[str, Any]:
        token = form.get("refresh_token", "")
        with self._lock:
            grant = self._refresh.get(token)
        if grant is None or grant.expires_at <= self.now():
            raise OAuthError("invalid_grant", "unknown, used or expired refresh token")
        client = await self.authenticate_client(form, expected_client=grant.client_id)
        requested = form.get("scope")
        if requested:
            extra = set(requested.split()) - set(grant.scope.split())
            if extra:
                raise OAuthError(
                    "invalid_scope", f"scope not granted before: {' '.join(sorted(extra))}"
                )
            grant = replace(grant, scope=requested)
        # as a real EHR may: the client's rights as they are now (an administrator narrowed
        # them since the launch)
        grant = replace(grant, scope=_granted(grant.scope, client.allowed_scope))
        with self._lock:
            self._refresh.pop(token, None)  # rotation
        return self._token_response(client, grant)

    def _token_response(self, client: SmartClient, grant: Grant) -> dict[str, Any]:
        access, expires_in = self.issue_access_token(grant)
        refresh = secrets.token_urlsafe(32)
        with self._lock:
            self._refresh[refresh] = replace(
                grant, expires_at=self.now() + self.config.refresh_token_lifetime
            )
        body: dict[str, Any] = {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": expires_in,
            "scope": grant.scope,
            "refresh_token": refresh,
            "need_patient_banner": False,
        }
        if grant.patient:
            body["patient"] = grant.patient
        if grant.encounter:
            body["encounter"] = grant.encounter
            body["fhirContext"] = [{"reference": f"Encounter/{grant.encounter}"}]
        if grant.app_context is not None:
            body["appContext"] = grant.app_context
        scopes = grant.scope.split()
        if "openid" in scopes and ("fhirUser" in scopes or "profile" in scopes) and grant.user:
            body["id_token"] = self.id_token(client.client_id, grant)
        return body

    def id_token(self, client_id: str, grant: Grant) -> str:
        assert grant.user is not None
        user = self.user(grant.user)
        assert user is not None
        now = int(self.now())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": self.practitioners[user.key],
            "aud": client_id,
            "iat": now,
            "exp": now + self.config.access_token_lifetime,
            "fhirUser": self.fhir_user(user.key).removeprefix(
                f"{self.fhir_base}/" if self.config.relative_fhir_user else ""
            ),
            "name": user.display,
            "given_name": user.given,
            "family_name": user.family,
            "preferred_username": user.key,
            self.config.roles_claim: [user.role],
        }
        if grant.nonce:
            claims["nonce"] = grant.nonce
        return self.id_token_key.sign(claims)

    # -- client authentication ------------------------------------------------------------------
    async def authenticate_client(self, form: dict[str, str], expected_client: str) -> SmartClient:
        assertion = form.get("client_assertion")
        if assertion:
            if form.get("client_assertion_type") != ASSERTION_TYPE:
                raise OAuthError(
                    "invalid_client", f"client_assertion_type must be {ASSERTION_TYPE}", 401
                )
            client_id = await self.verify_client_assertion(assertion)
            if form.get("client_id") and form["client_id"] != client_id:
                raise OAuthError("invalid_client", "client_id does not match the assertion", 401)
        else:
            client_id = form.get("client_id", "")
            client = self.clients.get(client_id)
            if client is None:
                raise OAuthError("invalid_client", "unknown client_id", 401)
            if not client.public:
                raise OAuthError(
                    "invalid_client",
                    "confidential client: private_key_jwt client_assertion required",
                    401,
                )
        if client_id != expected_client:
            raise OAuthError("invalid_grant", "the grant was issued to another client")
        return self.clients[client_id]

    async def verify_client_assertion(self, assertion: str) -> str:
        """Verify a ``private_key_jwt`` client assertion; returns the client_id."""
        try:
            header = jwt.get_unverified_header(assertion)
            unverified = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise OAuthError("invalid_client", f"malformed client assertion: {exc}", 401) from exc
        client = self.clients.get(str(unverified.get("iss", "")))
        if client is None or client.public:
            raise OAuthError("invalid_client", "assertion iss is not a confidential client", 401)
        alg = header.get("alg")
        if alg not in self.config.client_assertion_algs:
            raise OAuthError("invalid_client", f"assertion alg {alg!r} not accepted", 401)
        jku = header.get("jku")
        if jku and jku != client.jwks_uri:
            raise OAuthError("invalid_client", "assertion jku is not the registered jwks_uri", 401)
        keys = await self._client_keys(client)
        kid = header.get("kid")
        candidates = [k for k in keys if (kid is None or k.get("kid") == kid)]
        if not candidates:
            raise OAuthError("invalid_client", f"no registered key with kid {kid!r}", 401)
        last: Exception | None = None
        for jwk in candidates:
            try:
                key = jwt.PyJWK(jwk, algorithm=alg)
                claims = jwt.decode(
                    assertion,
                    key.key,
                    algorithms=[alg],
                    audience=self.token_url,
                    issuer=client.client_id,
                    options={"require": ["iss", "sub", "aud", "exp", "jti"]},
                )
                break
            except (jwt.PyJWTError, ValueError) as exc:
                last = exc
        else:
            raise OAuthError("invalid_client", f"client assertion rejected: {last}", 401)
        if claims.get("sub") != client.client_id:
            raise OAuthError("invalid_client", "assertion sub must equal iss (the client_id)", 401)
        now = self.now()
        exp = float(claims["exp"])
        if exp <= now:  # also checked by PyJWT against the real clock
            raise OAuthError("invalid_client", "client assertion expired", 401)
        if exp > now + MAX_ASSERTION_LIFETIME + 30:
            raise OAuthError(
                "invalid_client", "client assertion exp is more than 5 minutes ahead", 401
            )
        jti = str(claims["jti"])
        with self._lock:
            self._jtis = {j: e for j, e in self._jtis.items() if e > now}
            if jti in self._jtis:
                raise OAuthError("invalid_client", "client assertion jti replayed", 401)
            self._jtis[jti] = exp
        return client.client_id

    async def _client_keys(self, client: SmartClient) -> list[dict[str, Any]]:
        if client.jwks is not None:
            return list(client.jwks.get("keys", []))
        assert client.jwks_uri is not None
        http = self.http or httpx.AsyncClient(timeout=10.0)
        try:
            r = await http.get(client.jwks_uri, headers={"Accept": "application/json"})
            r.raise_for_status()
            keys = r.json().get("keys", [])
        except (httpx.HTTPError, ValueError) as exc:
            raise OAuthError(
                "invalid_client", f"could not fetch the client's jwks_uri: {exc}", 401
            ) from exc
        finally:
            if self.http is None:
                await http.aclose()
        return [k for k in keys if isinstance(k, dict)]

    def _answer(self, redirect_uri: str, params: dict[str, str]) -> RedirectResponse:
        """The authorization response, naming its issuer as RFC 9207 has it: a client that
        registered with several servers knows which one answered (no mix-up); unless
        configured not to (``SandboxConfig.names_itself``)."""
        named = {"iss": self.issuer} if self.config.names_itself else {}
        return _redirect(redirect_uri, {**params, **named})

    # -- discovery documents --------------------------------------------------------------------
    def smart_configuration(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "jwks_uri": self.jwks_url,
            "authorization_endpoint": self.authorize_url,
            "token_endpoint": self.token_url,
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "token_endpoint_auth_methods_supported": ["private_key_jwt", "none"],
            "token_endpoint_auth_signing_alg_values_supported": list(
                self.config.client_assertion_algs
            ),
            "scopes_supported": [
                "openid",
                "fhirUser",
                "launch",
                "launch/patient",
                "launch/encounter",
                "offline_access",
                "online_access",
                "patient/*.cruds",
                "user/*.cruds",
                "patient/*.rs",
                "user/*.rs",
                "patient/*.read",
                "user/*.read",
            ],
            "response_types_supported": ["code"],
            "code_challenge_methods_supported": ["S256"],
            "authorization_response_iss_parameter_supported": self.config.names_itself,
            "capabilities": [
                "launch-ehr",
                "launch-standalone",
                "client-public",
                "client-confidential-asymmetric",
                "context-ehr-patient",
                "context-ehr-encounter",
                "context-standalone-patient",
                "sso-openid-connect",
                "permission-v1",
                "permission-v2",
                "permission-patient",
                "permission-user",
                "permission-offline",
                "permission-online",
                "authorize-post",
            ],
        }

    def openid_configuration(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "jwks_uri": self.jwks_url,
            "authorization_endpoint": self.authorize_url,
            "token_endpoint": self.token_url,
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": [self.id_token_key.alg],
            "token_endpoint_auth_methods_supported": ["private_key_jwt", "none"],
            "claims_supported": [
                "iss",
                "sub",
                "aud",
                "exp",
                "iat",
                "nonce",
                "fhirUser",
                "name",
                "given_name",
                "family_name",
                "preferred_username",
                self.config.roles_claim,
            ],
            "scopes_supported": ["openid", "fhirUser", "profile"],
        }

    def grant_allows(self, grant: Grant, needed: list[tuple[str, str]]) -> bool:
        return scope_allows(parse_scopes(grant.scope), needed)


# -- HTTP ------------------------------------------------------------------------------------------
def _redirect(uri: str, params: dict[str, str]) -> RedirectResponse:
    parts = urlsplit(uri)
    query = parse_qsl(parts.query, keep_blank_values=True) + list(params.items())
    return RedirectResponse(urlunsplit(parts._replace(query=urlencode(query))), status_code=303)


PAGE_CSP = (
    "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "form-action *; frame-ancestors 'self'"
)


def _error_page(title: str, message: str) -> HTMLResponse:
    body = (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}"
        f"</title></head><body><h1>{html.escape(title)}</h1><p role='alert'>"
        f"{html.escape(message)}</p></body></html>"
    )
    return HTMLResponse(body, status_code=400, headers={"Content-Security-Policy": PAGE_CSP})


def build_auth_router(
    auth: AuthServer,
    render: Callable[..., HTMLResponse],
    patient_names: Callable[[], dict[str, str]],
) -> APIRouter:
    router = APIRouter()

    async def authorize(request: Request, params: dict[str, str]) -> Response:
        started = auth.begin_authorize(params)
        if isinstance(started, Response):
            return started
        launch = started.launch
        if auth.config.auto_consent and launch is not None and launch.user:
            return auth.decide(started.id, "allow", launch.user, None)
        names = patient_names()
        standalone_patient = launch is None and "launch/patient" in started.scope.split()
        return render(
            "consent.html",
            client=started.client,
            pending=started,
            scopes=started.scope.split(),
            users=USERS,
            selected_user=(launch.user if launch else None) or "nurse",
            patient_name=names.get(launch.patient, launch.patient)
            if launch and launch.patient
            else None,
            patients=names if standalone_patient else None,
        )

    @router.get("/authorize")
    async def authorize_get(request: Request) -> Response:
        return await authorize(request, dict(request.query_params))

    @router.post("/authorize")
    async def authorize_post(request: Request) -> Response:
        form = await request.form()
        return await authorize(request, {k: str(v) for k, v in form.items()})

    @router.post("/authorize/decision")
    async def decision(request: Request) -> Response:
        form = await request.form()
        f = {k: str(v) for k, v in form.items()}
        return auth.decide(
            f.get("request_id", ""), f.get("decision", ""), f.get("user"), f.get("patient")
        )

    @router.post("/token")
    async def token(request: Request) -> Response:
        form = await request.form()
        try:
            body = await auth.token({k: str(v) for k, v in form.items()})
        except OAuthError as exc:
            return exc.response()
        return JSONResponse(body, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})

    @router.get("/.well-known/openid-configuration")
    async def openid_configuration() -> JSONResponse:
        return JSONResponse(auth.openid_configuration())

    return router
