"""Authentication of the EHR calling us: the CDS Hooks 2.0 JWT (``Authorization: Bearer``).

Checks, in order: an asymmetric ``alg``; an ``iss`` trusted by one of the tenant's EHR
registrations (``cds_issuers``); the signing keys — from the JWT's ``jku`` only when that
URL is on the issuer's allow-list, else the issuer's configured JWKS or its allow-listed
JWKS URLs; the signature; ``aud`` = the exact URL called; ``exp`` and ``iat`` (with a small
leeway, a lifetime of at most five minutes); and a ``jti`` never seen before for that
issuer. A failure raises :class:`CdsAuthError` with a reason the EHR's integrator can act
on (the router answers 401). Tokens and keys are never logged.

Cost on the hot path: keys are cached (``JWKS_TTL_SECONDS``); the ``jti`` insert is the
one database write of a hook call; expired ``jti`` rows are purged about once a minute.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
from sqlalchemy import delete, insert
from sqlalchemy.exc import IntegrityError

from service.db.base import Database
from service.db.models import CdsSeenToken
from service.tenancy import TenantContext
from service.tenant_config import CdsIssuer, EhrRegistration

ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"}
)
LEEWAY_SECONDS = 30
MAX_LIFETIME_SECONDS = 300  # bounds how long a jti must be remembered
JWKS_TTL_SECONDS = 300.0
JWKS_REFETCH_SECONDS = 30.0  # an unknown kid refetches, but not more often than this
JWKS_TIMEOUT_SECONDS = 3.0
PURGE_EVERY_SECONDS = 60.0


class CdsAuthError(Exception):
    """The call is not authenticated; ``str(error)`` is the reason given to the caller."""


@dataclass(frozen=True)
class Caller:
    """An authenticated EHR: the issuer and the registration that trusts it."""

    issuer: str
    registration: EhrRegistration


def trusted_issuer(tenant: TenantContext, iss: str) -> tuple[EhrRegistration, CdsIssuer] | None:
    for registration in tenant.config.registrations:
        for issuer in registration.cds_issuers:
            if issuer.iss == iss:
                return registration, issuer
    return None


class JwksCache:
    """JWK Sets by URL, kept ``JWKS_TTL_SECONDS``; shared by all tenants of the process."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client
        self._sets: dict[str, tuple[float, jwt.PyJWKSet]] = {}

    async def keys(self, url: str, kid: str | None) -> list[jwt.PyJWK]:
        now = time.monotonic()
        cached = self._sets.get(url)
        fresh = cached is not None and now - cached[0] < JWKS_TTL_SECONDS
        if cached is not None and fresh and (kid is None or _by_kid(cached[1], kid)):
            return _matching(cached[1], kid)
        if cached is not None and fresh and now - cached[0] < JWKS_REFETCH_SECONDS:
            return _matching(cached[1], kid)
        keyset = await self._fetch(url)
        self._sets[url] = (time.monotonic(), keyset)
        return _matching(keyset, kid)

    async def _fetch(self, url: str) -> jwt.PyJWKSet:
        try:
            response = await self._client.get(url, timeout=JWKS_TIMEOUT_SECONDS)
            response.raise_for_status()
            return jwt.PyJWKSet.from_dict(response.json())
        except (httpx.HTTPError, ValueError, jwt.PyJWTError) as error:
            raise CdsAuthError(
                f"the issuer's JWK Set at {url} could not be read ({type(error).__name__})"
            ) from error


def _by_kid(keyset: jwt.PyJWKSet, kid: str) -> bool:
    return any(key.key_id == kid for key in keyset.keys)


def _matching(keyset: jwt.PyJWKSet, kid: str | None) -> list[jwt.PyJWK]:
    return [key for key in keyset.keys if kid is None or key.key_id == kid]


class SeenTokens:
    """The replay check: remembers each accepted (tenant, iss, jti) until the token expires."""

    def __init__(self, database: Database) -> None:
        self._database = database
        self._next_purge = 0.0
        self._lock = threading.Lock()

    def first_use(self, tenant_id: int, issuer: str, jti: str, expires_at: datetime) -> bool:
        """Record the token; False when it was seen before (a replay). Runs in a worker thread."""
        row = {"tenant_id": tenant_id, "issuer": issuer, "jti": jti, "expires_at": expires_at}
        try:
            with self._database.engine.begin() as connection:
                connection.execute(insert(CdsSeenToken), row)
        except IntegrityError:
            return False
        self._purge_when_due()
        return True

    def _purge_when_due(self) -> None:
        with self._lock:
            now = time.monotonic()
            if now < self._next_purge:
                return
            self._next_purge = now + PURGE_EVERY_SECONDS
        cutoff = datetime.now(UTC) - timedelta(seconds=LEEWAY_SECONDS)
        with self._database.engine.begin() as connection:
            connection.execute(delete(CdsSeenToken).where(CdsSeenToken.expires_at < cutoff))


class CdsAuthenticator:
    def __init__(self, jwks: JwksCache, seen: SeenTokens) -> None:
        self._jwks = jwks
        self.seen = seen

    async def verify(
        self, authorization: str | None, tenant: TenantContext, audience: str
    ) -> tuple[Caller, dict[str, Any]]:
        """The caller and the verified claims; the ``jti`` is NOT yet recorded (see ``seen``)."""
        token = _bearer(authorization)
        header, unverified = _peek(token)
        iss = unverified.get("iss")
        trusted = trusted_issuer(tenant, iss) if isinstance(iss, str) else None
        if trusted is None:
            raise CdsAuthError(f"issuer {iss!r} is not registered for this hospital")
        registration, issuer = trusted
        keys = await self._keys(issuer, header)
        claims = _verified_claims(token, keys, header["alg"], issuer.iss, audience)
        return Caller(issuer.iss, registration), claims

    async def _keys(self, issuer: CdsIssuer, header: dict[str, Any]) -> list[jwt.PyJWK]:
        kid = header.get("kid") if isinstance(header.get("kid"), str) else None
        jku = header.get("jku")
        if jku is not None:
            if jku not in issuer.jku:
                raise CdsAuthError(f"jku {jku!r} is not on the allow-list of issuer {issuer.iss!r}")
            return await self._jwks.keys(jku, kid)
        if issuer.jwks is not None:
            try:
                return _matching(jwt.PyJWKSet.from_dict(issuer.jwks), kid)
            except jwt.PyJWTError as error:
                raise CdsAuthError(f"the configured JWKS of {issuer.iss!r} is unusable") from error
        keys = [key for url in issuer.jku for key in await self._jwks.keys(url, kid)]
        if not keys:
            raise CdsAuthError(f"no keys are configured for issuer {issuer.iss!r}")
        return keys


def _bearer(authorization: str | None) -> str:
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise CdsAuthError("missing 'Authorization: Bearer <JWT>' header")
    return token.strip()


def _peek(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims before verification: only to choose the issuer and its keys."""
    try:
        header = jwt.get_unverified_header(token)
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as error:
        raise CdsAuthError(f"the bearer token is not a JWT ({error})") from error
    if header.get("alg") not in ALGORITHMS:
        raise CdsAuthError(
            f"alg {header.get('alg')!r} is not accepted; use one of {sorted(ALGORITHMS)}"
        )
    return header, claims


def _verified_claims(
    token: str, keys: list[jwt.PyJWK], algorithm: str, issuer: str, audience: str
) -> dict[str, Any]:
    if not keys:
        raise CdsAuthError("no key of the issuer matches the JWT's kid")
    failure: Exception | None = None
    for key in keys:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=audience,
                issuer=issuer,
                leeway=LEEWAY_SECONDS,
                options={"require": ["iss", "aud", "exp", "iat", "jti"], "strict_aud": False},
            )
        except jwt.InvalidSignatureError as error:
            failure = error  # try the issuer's next key
            continue
        except (jwt.PyJWTError, ValueError, TypeError) as error:
            raise CdsAuthError(_reason(error, audience)) from error
        _check_lifetime(claims)
        return claims
    raise CdsAuthError("the JWT signature does not verify with the issuer's keys") from failure


def _reason(error: Exception, audience: str) -> str:
    if isinstance(error, jwt.InvalidAudienceError):
        return f"aud must be the URL called: {audience}"
    if isinstance(error, jwt.ExpiredSignatureError):
        return "the JWT has expired"
    if isinstance(error, jwt.ImmatureSignatureError):
        return "the JWT is issued in the future (iat/nbf): check the EHR's clock"
    if isinstance(error, jwt.MissingRequiredClaimError):
        return f"the JWT lacks the required claim '{error.claim}'"
    return f"the JWT is invalid ({type(error).__name__})"


def _check_lifetime(claims: dict[str, Any]) -> None:
    if not isinstance(claims["jti"], str) or not 0 < len(claims["jti"]) <= 255:
        raise CdsAuthError("jti must be a non-empty string of at most 255 characters")
    if claims["exp"] - claims["iat"] > MAX_LIFETIME_SECONDS + LEEWAY_SECONDS:
        raise CdsAuthError(f"the JWT lives longer than {MAX_LIFETIME_SECONDS} seconds (exp - iat)")


def expiry(claims: dict[str, Any]) -> datetime:
    return datetime.fromtimestamp(int(claims["exp"]), UTC)
