"""Authentication of the EHR calling us: the CDS Hooks 2.0 JWT (``Authorization: Bearer``).

Checks, in order: an asymmetric ``alg``; a ``typ``, when given, of ``JWT``; an ``iss``
trusted by one of the tenant's EHR registrations (``cds_issuers``); the signing keys —
from the JWT's ``jku`` only when that URL is on the issuer's allow-list, else the
issuer's configured JWKS or its allow-listed JWKS URLs; the signature; ``aud`` = the
exact URL called; ``exp`` and ``iat`` (with a small leeway, a lifetime of at most five
minutes); ``sub`` (the EHR's CDS client id) on the issuer's allow-list when it has one;
and a ``jti`` never seen before for that issuer.
A failure raises :class:`CdsAuthError` with a reason the EHR's integrator can act on (the
router answers 401). Tokens and keys are never logged. A JWK Set is fetched over https
(plain http on loopback only), without redirects, in at most ``JWKS_TIMEOUT_SECONDS`` all
told and up to ``JWKS_MAX_BYTES``; a key it publishes with its private members verifies
nothing (anyone can sign with it) and is left out, logged at ERROR (``_published_keys``).
A key verifies only what its own members allow (RFC 7517 4.2-4.4, RFC 8725 3.1): none
with a ``use`` other than ``sig`` or a ``key_ops`` without ``verify``, only the algorithm
its ``alg`` names when it has one (``_by_kid``).

Cost on the hot path: keys are cached (``JWKS_TTL_SECONDS``; the keys last read stand
in while a refetch fails, see :class:`JwksCache`); the ``jti`` insert is the
one database write of a hook call; expired ``jti`` rows are purged about once a minute.
"""

from __future__ import annotations

import asyncio
import binascii
import functools
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any

import httpx
import jwt
import orjson
from sqlalchemy import Connection, Table, delete, select

from service.bounded_fetch import BodyTooLargeError, Bounds, UndecodableBodyError, fetch
from service.cds.batching import GroupCommit, WriteFailedError
from service.db.models import CdsSeenToken
from service.jwk_use import ALGORITHMS, verifiable_algorithms
from service.settings import over_tls
from service.single_flight import SingleFlight
from service.tenancy import TenantContext
from service.tenant_config import CdsIssuer, EhrRegistration, jwk_set, private_members
from service.text import is_one_line

log = logging.getLogger(__name__)

_ALGORITHMS = {name: jwt.get_algorithm_by_name(name) for name in ALGORITHMS}
LEEWAY_SECONDS = 30
MAX_LIFETIME_SECONDS = 300  # bounds how long a jti must be remembered
JWKS_TTL_SECONDS = 300.0
JWKS_REFETCH_SECONDS = 30.0  # an unknown kid refetches, but not more often than this
JWKS_TIMEOUT_SECONDS = 3.0  # the whole fetch, not each read
JWKS_RETRY_SECONDS = 5.0  # after a failed fetch, the set is not asked for again sooner
JWKS_STALE_SECONDS = 3600.0  # the keys last read verify this long while a refetch fails
JWKS_MAX_BYTES = 256 * 1024  # a JWK Set of a few keys is a few KiB
JWKS_BOUNDS = Bounds(JWKS_TIMEOUT_SECONDS, JWKS_MAX_BYTES)
PURGE_EVERY_SECONDS = 60.0
PURGE_CHUNK = 2000  # rows deleted at once
SEEN_TOKENS: Table = CdsSeenToken.__table__  # type: ignore[assignment]


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
    """JWK Sets by URL, kept ``JWKS_TTL_SECONDS``; shared by all tenants of the process.

    Concurrent calls that miss the cache wait for one shared fetch, so a burst of hook
    calls after start-up or a key rotation costs the EHR one JWKS request, not fifty.

    When a refetch fails, the keys last read keep verifying for ``JWKS_STALE_SECONDS``
    (the issuer's key server down is no reason to refuse every card), and the set is not
    asked for again within ``JWKS_RETRY_SECONDS``: the ``iss`` is read before any
    signature, so anyone naming a trusted issuer made one fetch per call, each waiting up
    to ``JWKS_TIMEOUT_SECONDS``, and a set that could not be read dropped keys that still
    worked (found by review). A set never read is fetched again at the next call.
    """

    def __init__(
        self, client: httpx.AsyncClient, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._client = client
        self._clock = clock
        self._sets: dict[str, tuple[float, KeysByKid]] = {}
        self._failed_at: dict[str, float] = {}
        self._fetches: SingleFlight[str, KeysByKid] = SingleFlight()

    async def keys(self, url: str, kid: str | None, issuer: str) -> KeysByAlg:
        """The keys of the set at ``url`` under ``kid``, by the algorithm each may verify;
        ``issuer`` (whose call needs them) is named in the log of what the fetch found wrong."""
        cached = self._sets.get(url)
        if cached is not None:
            age = self._clock() - cached[0]
            known = kid is None or kid in cached[1]
            # an unknown kid may be a rotated key: refetch, at most every JWKS_REFETCH_SECONDS
            if age < JWKS_TTL_SECONDS and (known or age < JWKS_REFETCH_SECONDS):
                return cached[1].get(kid, _NO_KEYS)
            failed_at = self._failed_at.get(url)
            if failed_at is not None and self._clock() - failed_at < JWKS_RETRY_SECONDS:
                return self._last_read(cached, kid, None)
        fetch = self._fetches.start(url, lambda: self._fetch(url, issuer))
        try:
            return (await asyncio.shield(fetch)).get(kid, _NO_KEYS)
        except CdsAuthError as error:
            self._failed_at[url] = self._clock()
            return self._last_read(cached, kid, error)

    def _last_read(
        self, cached: tuple[float, KeysByKid] | None, kid: str | None, error: CdsAuthError | None
    ) -> KeysByAlg:
        """The keys last read while they may stand in for a set that cannot be read now."""
        if cached is None or self._clock() - cached[0] >= JWKS_STALE_SECONDS:
            raise error or CdsAuthError("the issuer's JWK Set could not be read again in time")
        if error is not None:
            log.warning("an issuer's JWK Set could not be read: the keys last read stand in")
        return cached[1].get(kid, _NO_KEYS)

    async def _fetch(self, url: str, issuer: str) -> KeysByKid:
        if not over_tls(url):  # RFC 7515 4.1.2: keys read in clear could be swapped on the way
            raise CdsAuthError(f"the issuer's JWK Set at {url} is not served over https")
        headers = {"Accept": "application/jwk-set+json, application/json"}
        request = self._client.build_request("GET", url, headers=headers)
        try:
            # every hook call of the issuer waits for this one fetch: it is bounded
            response = await fetch(self._client, request, JWKS_BOUNDS)
            response.raise_for_status()
            document = orjson.loads(response.content)  # depth-limited, unlike json
        except BodyTooLargeError as error:
            raise CdsAuthError(
                f"the issuer's JWK Set at {url} is larger than {error.max_bytes} bytes"
            ) from error
        except (httpx.HTTPError, ValueError, TimeoutError, UndecodableBodyError) as error:
            raise CdsAuthError(
                f"the issuer's JWK Set at {url} could not be read ({type(error).__name__})"
            ) from error
        try:
            keys = _published_keys(document, url, issuer)
        except ValueError as error:
            raise CdsAuthError(f"the issuer's JWK Set at {url} is unusable: {error}") from error
        self._sets[url] = (self._clock(), keys)
        self._failed_at.pop(url, None)
        return keys


#: Keys by the algorithm (a JWT header's ``alg``) each may verify.
KeysByAlg = Mapping[str, list[jwt.PyJWK]]
#: The keys of a JWK Set by ``kid``; under ``None`` all of them (a JWT without a kid).
KeysByKid = dict[str | None, KeysByAlg]
_NO_KEYS: KeysByAlg = MappingProxyType({})


def _published_keys(document: object, url: str, issuer: str) -> KeysByKid:
    """A fetched JWK Set's keys, but those published with private members: anyone who
    read the set can sign with such a key, so it verifies nothing. It is left out (a call
    signed with it is refused as by an unknown key), and the EHR's administrator is told
    at ERROR, once per fetch: the issuer, the URL, each such key's kid and its private
    members' names, never their values. A set of only such keys is read as empty, not
    as unreadable: the keys last read (the same key pair, perhaps) do not stand in."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        return _by_kid(jwk_set(document), issuer, url)  # refused there, saying why
    exposed = [key for key in document["keys"] if private_members(key)]
    if not exposed:
        return _by_kid(jwk_set(document), issuer, url)
    described = [{"kid": key.get("kid"), "members": private_members(key)} for key in exposed]
    log.error(
        "an issuer's JWK Set publishes private keys: they are not used; have the EHR's "
        "supplier replace them and publish only the public keys",
        extra={"fields": {"issuer": issuer, "jwks_url": url, "keys": described}},
    )
    public = [key for key in document["keys"] if not private_members(key)]
    if not public:
        return {None: _NO_KEYS}
    return _by_kid(jwk_set({**document, "keys": public}), issuer, url)


def _by_kid(keyset: jwt.PyJWKSet, issuer: str, url: str | None) -> KeysByKid:
    """Indexed once per fetch by kid and alg, not searched on every call: a hook call looks
    up the keys that may verify its header's alg, and nothing else.

    A key verifies only the algorithms its type, size and curve allow, and of those only
    what its own ``use``, ``key_ops`` and ``alg`` allow (``jwk_use.verifiable_algorithms``,
    the rule an admin's save of a configured set is checked with too); a key those members
    leave of no use here is left out and the EHR's administrator told at WARNING, once per
    fetch: the issuer, the URL (None: the configured set), each key's kid and the member,
    never a key's values. A key with none of them verifies any algorithm its type and
    curve allow."""
    keys: dict[str | None, dict[str, list[jwt.PyJWK]]] = {None: {}}
    unusable: list[dict[str, object]] = []
    for key in keyset.keys:
        algorithms, member = verifiable_algorithms(key)
        if member is not None:
            unusable.append({"kid": key.key_id, "member": member})
        for alg in algorithms:
            keys[None].setdefault(alg, []).append(key)
            if key.key_id is not None:
                keys.setdefault(key.key_id, {}).setdefault(alg, []).append(key)
    if unusable:
        log.warning(
            "an issuer's JWK Set holds keys whose use, key_ops or alg forbids verifying a "
            "hook call's JWT signature: they are not used",
            extra={"fields": {"issuer": issuer, "jwks_url": url, "keys": unusable}},
        )
    return dict(keys)


class SeenTokens:
    """The replay check: remembers each accepted (tenant, iss, jti) until the token expires.

    It is the one database write a hook call waits for, so it is made cheap:

    * group commit (``GroupCommit``) — calls arriving together share one INSERT, on the
      event loop, with no wait for the disk flush (``service.cds.batching``). An
      application crash loses nothing; a database server or OS crash may forget the last
      fraction of a second of jtis, of tokens that expire within five minutes anyway.
    """

    def __init__(self, commits: GroupCommit) -> None:
        self._commits = commits
        self._next_purge = 0.0
        commits.add_upkeep(self._purge_when_due)

    async def first_use(self, tenant_id: int, issuer: str, jti: str, expires_at: datetime) -> bool:
        """Record the token; False when it was seen before (a replay)."""
        row = {"tenant_id": tenant_id, "issuer": issuer, "jti": jti, "expires_at": expires_at}
        try:
            return await self._commits.submit(SEEN_TOKENS, row)
        except WriteFailedError as error:
            raise ReplayCheckUnavailableError(str(error)) from error

    def _purge_when_due(self, connection: Connection) -> None:
        """Delete expired rows, a chunk at a time (a write may run on the event loop)."""
        now = time.monotonic()
        if now < self._next_purge:
            return
        cutoff = datetime.now(UTC) - timedelta(seconds=LEEWAY_SECONDS)
        expired = select(CdsSeenToken.id).where(CdsSeenToken.expires_at < cutoff).limit(PURGE_CHUNK)
        deleted = connection.execute(delete(CdsSeenToken).where(CdsSeenToken.id.in_(expired)))
        more = deleted.rowcount == PURGE_CHUNK
        self._next_purge = now + (0 if more else PURGE_EVERY_SECONDS)


class ReplayCheckUnavailableError(RuntimeError):
    """The jti ledger cannot be written (database down): the call cannot be authenticated."""


class CdsAuthenticator:
    def __init__(self, jwks: JwksCache, seen: SeenTokens) -> None:
        self._jwks = jwks
        self.seen = seen

    async def verify(
        self, authorization: str | None, tenant: TenantContext, audiences: tuple[str, ...]
    ) -> tuple[Caller, dict[str, Any]]:
        """The caller and the verified claims; the ``jti`` is NOT yet recorded (see ``seen``).
        ``aud`` must name one of ``audiences``, the first being the URL called."""
        token = _Token.parse(_bearer(authorization))
        iss = token.claims.get("iss")
        trusted = trusted_issuer(tenant, iss) if isinstance(iss, str) else None
        if trusted is None:
            raise CdsAuthError(f"issuer {iss!r} is not registered for this hospital")
        registration, issuer = trusted
        token.verify_signature(await self._keys(issuer, token.header))
        _check_claims(token.claims, issuer.iss, audiences, time.time())
        if issuer.subjects and token.claims.get("sub") not in issuer.subjects:
            raise CdsAuthError(f"sub {token.claims.get('sub')!r} is not a client of this issuer")
        return Caller(issuer.iss, registration), token.claims

    async def _keys(self, issuer: CdsIssuer, header: dict[str, Any]) -> list[jwt.PyJWK]:
        """The issuer's keys that may verify the header's alg (checked by ``_Token.parse``)."""
        kid = header.get("kid") if isinstance(header.get("kid"), str) else None
        alg = header["alg"]
        jku = header.get("jku")
        if jku is not None and jku in issuer.jku:
            return (await self._jwks.keys(jku, kid, issuer.iss)).get(alg, [])
        # A jku off the allow-list is never fetched. With keys configured for the issuer it
        # is left aside, as a header the spec lets the EHR send (MAY), and those keys
        # verify; it refused every call of such an EHR before (found by review).
        if jku is not None and issuer.jwks is None:
            raise CdsAuthError(f"jku {jku!r} is not on the allow-list of issuer {issuer.iss!r}")
        if issuer.jwks is not None:
            try:
                configured = _configured_keys(orjson.dumps(issuer.jwks), issuer.iss)
                return configured.get(kid, _NO_KEYS).get(alg, [])
            except ValueError as error:  # stored before a save checked it (SUBMITTED)
                raise CdsAuthError(
                    f"the configured JWK Set of {issuer.iss!r} is unusable: {error}"
                ) from error
        keys = [
            key
            for url in issuer.jku
            for key in (await self._jwks.keys(url, kid, issuer.iss)).get(alg, [])
        ]
        if not keys:
            raise CdsAuthError(f"no keys are configured for issuer {issuer.iss!r}")
        return keys


@functools.lru_cache(maxsize=64)
def _configured_keys(jwks: bytes, issuer: str) -> KeysByKid:
    """A configured JWK Set, parsed once (building an RSA or EC key object costs more than
    checking a signature with it); keyed by its JSON, so a changed configuration misses."""
    return _by_kid(jwk_set(orjson.loads(jwks)), issuer, None)


def _bearer(authorization: str | None) -> str:
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise CdsAuthError("missing 'Authorization: Bearer <JWT>' header")
    return token.strip()


@dataclass(frozen=True)
class _Token:
    """A compact JWS, split and decoded. (PyJWT's own parsing checks the base64 alphabet
    character by character in Python, which cost more than the signature check itself.)"""

    header: dict[str, Any]
    claims: dict[str, Any]
    signing_input: bytes
    signature: bytes

    @classmethod
    def parse(cls, token: str) -> _Token:
        try:
            header_b64, claims_b64, signature_b64 = token.split(".")
            header, claims = orjson.loads(_b64(header_b64)), orjson.loads(_b64(claims_b64))
            signature = _b64(signature_b64)
        except (ValueError, binascii.Error) as error:
            raise CdsAuthError("the bearer token is not a JWT (compact JWS)") from error
        if not isinstance(header, dict) or not isinstance(claims, dict):
            raise CdsAuthError("the bearer token is not a JWT (header and claims are objects)")
        if "crit" in header:  # RFC 7515 4.1.11: no JWS extension is understood here
            raise CdsAuthError("JWS header 'crit' names extensions this service does not support")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in ALGORITHMS:
            raise CdsAuthError(f"alg {alg!r} is not accepted; use one of {sorted(ALGORITHMS)}")
        typ = header.get("typ")
        if typ is not None and not _typed_as_jwt(typ):
            # CDS Hooks 2.0: typ "Fixed value: JWT". Another type names another kind of
            # token the EHR's keys sign (an access token, a DPoP proof): RFC 8725 3.11
            raise CdsAuthError(f"typ {typ!r} names another kind of token; a CDS call's is 'JWT'")
        return cls(header, claims, f"{header_b64}.{claims_b64}".encode(), signature)

    def verify_signature(self, keys: list[jwt.PyJWK]) -> None:
        """Passes when one of ``keys``, the issuer's that may verify the header's alg
        (``_by_kid``), verifies the signature."""
        name = self.header["alg"]
        algorithm = _ALGORITHMS[name]
        if not keys:
            raise CdsAuthError(f"no key of the issuer matches the JWT's kid and alg {name}")
        for key in keys:
            try:
                if algorithm.verify(self.signing_input, key.key, self.signature):
                    return
            except (TypeError, ValueError, AttributeError):
                continue  # a key of another type: try the next one
        raise CdsAuthError("the JWT signature does not verify with the issuer's keys")


def _typed_as_jwt(typ: object) -> bool:
    """RFC 7515 4.1.9: a media type, so case-insensitive, ``application/`` left out or not.
    A token without ``typ`` is accepted (a decision: it names no other kind of token)."""
    return isinstance(typ, str) and typ.lower() in {"jwt", "application/jwt"}


def _b64(segment: str) -> bytes:
    """base64url, its padding left out (RFC 7515 section 2); a character outside base64 is
    an error, not skipped."""
    data = segment.encode("ascii").translate(_URL_ALPHABET) + b"=" * (-len(segment) % 4)
    return binascii.a2b_base64(data, strict_mode=True)


_URL_ALPHABET = bytes.maketrans(b"-_", b"+/")


def _check_claims(
    claims: dict[str, Any], issuer: str, audiences: tuple[str, ...], now: float
) -> None:
    """iss, aud, exp, iat (and nbf) with LEEWAY_SECONDS; jti present; a short lifetime."""
    for name in ("iss", "aud", "exp", "iat", "jti"):
        if claims.get(name) is None:
            raise CdsAuthError(f"the JWT lacks the required claim '{name}'")
    exp, iat, nbf = claims["exp"], claims["iat"], claims.get("nbf", 0)
    if not (_finite_number(exp) and _finite_number(iat) and _finite_number(nbf)):
        raise CdsAuthError("exp, iat and nbf must be numbers (seconds since the epoch)")
    if claims["iss"] != issuer:
        raise CdsAuthError(f"iss must be {issuer!r}")
    aud = claims["aud"]
    if not any(ours == aud or (isinstance(aud, list) and ours in aud) for ours in audiences):
        raise CdsAuthError(f"aud must be the URL called: {' or '.join(audiences)}")
    if now > exp + LEEWAY_SECONDS:
        raise CdsAuthError("the JWT has expired")
    if iat > now + LEEWAY_SECONDS or nbf > now + LEEWAY_SECONDS:
        raise CdsAuthError("the JWT is issued in the future (iat/nbf): check the EHR's clock")
    if exp - iat > MAX_LIFETIME_SECONDS + LEEWAY_SECONDS:
        raise CdsAuthError(f"the JWT lives longer than {MAX_LIFETIME_SECONDS} seconds (exp - iat)")
    jti = claims["jti"]
    if not isinstance(jti, str) or not 0 < len(jti) <= 255 or not is_one_line(jti):
        # a NUL reached the replay ledger: PostgreSQL refused the batch it was in, every
        # hospital's calls with it (found by fuzzing)
        raise CdsAuthError("jti must be 1 to 255 characters of text, no control characters")


def _finite_number(value: Any) -> bool:
    # NaN and Infinity would slip through every comparison (orjson refuses them; the check
    # stays so that it does not depend on the parser)
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def expiry(claims: dict[str, Any]) -> datetime:
    """Until when the ``jti`` is remembered: ``exp`` rounded UP to the second, so that the
    ledger never forgets a token (exp 100.9) that is still accepted (until 100.9 + leeway)."""
    return datetime.fromtimestamp(math.ceil(claims["exp"]), UTC)
