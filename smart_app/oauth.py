"""The OAuth 2 / OpenID Connect client side of SMART App Launch 2.x (no HTTP routes here).

Discovery of an EHR's authorization server, client authentication at its token
endpoint (``private_key_jwt`` with our keys, ``client_secret_basic``, or a public client),
the token requests, and verification of the OpenID Connect ``id_token``.

Every exchange with the EHR goes through :func:`ehr_client`: each fetch ends within
``EHR_FETCH_SECONDS`` all told and reads at most ``EHR_FETCH_MAX_BYTES``, so that an EHR
answering slowly, or without end, cannot hold a launch (and a thread of the pool every
hospital's pages share) for long. A fetch beyond either is a failure like an unreachable
EHR (too slow) or an unusable answer (too large).
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from datetime import timedelta
from typing import Any, Literal
from urllib.parse import parse_qsl, quote_plus, urljoin, urlsplit

import httpx
import jwt
import orjson

from service.bounded_fetch import BlockingClient, Bounds, UnreadableBodyError
from service.keys import ALGORITHMS, DEFAULT_ALGORITHM, Algorithm, KeyStore
from service.settings import over_tls
from service.tenant_config import ClientAuth, EhrRegistration

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# Asymmetric algorithms only: an id_token signed with "none" or HS* (keyed with our own
# public data) must never verify.
ID_TOKEN_ALGORITHMS = ("RS256", "RS384", "RS512", "ES256", "ES384", "PS256", "PS384")
CLOCK_SKEW_SECONDS = 60
# A SMART configuration, a JWK Set or a token response is a few KiB (tokens of a few
# KiB each, a launch context); a server answers within a second or two.
EHR_FETCH_SECONDS = 10.0
EHR_FETCH_MAX_BYTES = 1024 * 1024
# Access tokens live minutes to hours; an expires_in beyond this is a broken server.
MAX_TOKEN_LIFETIME = timedelta(days=366)
#: How long a launch uses an EHR's checked SMART configuration before reading it again
#: (``AuthServers``): a burst of launches asks the EHR once, and a changed configuration
#: (an EHR's upgrade) is followed within minutes.
DISCOVERY_SECONDS = 300.0
#: How long a launch is given the last failure to read an EHR's SMART configuration
#: (unreachable, too slow, unusable) before it is read again: a few seconds, so that an
#: EHR back up is used at once, and a flood of launches against one that is down costs a
#: fetch every few seconds, not a waiting thread each.
FAILED_DISCOVERY_SECONDS = 5.0
#: How long an EHR's SMART configuration (or failure) no launch asks for is kept in memory:
#: it is forgotten when a launch next looks any up (``AuthServers``). Kept for good, one
#: per FHIR base URL and client authentication ever launched from (registrations changed
#: or removed, hospitals come and gone) grew the process without bound. Longer than
#: ``DISCOVERY_SECONDS``: an EHR launched from every few minutes keeps its configuration,
#: and the other launches its last outcome while one reads it again.
DISCOVERY_FORGOTTEN_SECONDS = 600.0

FailureKind = Literal["ehr_unreachable", "ehr_unsupported", "token_failed", "id_token_invalid"]


class OAuthError(Exception):
    """The EHR's authorization server cannot be used or gave an unusable answer.

    ``kind`` selects the message shown to the user; ``detail`` is the technical reason
    (never contains a token or secret).
    """

    def __init__(self, kind: FailureKind, detail: str) -> None:
        super().__init__(detail)
        self.kind: FailureKind = kind
        self.detail = detail


@dataclass(frozen=True)
class AuthServer:
    """What we use from an EHR's ``.well-known/smart-configuration``.

    ``scopes_v1``: the server does not advertise SMART v2 scope syntax (``permission-v2``),
    so the launch asks in v1 syntax (``requested_scopes``). A SMART App Launch 1.0 server
    lists neither ``permission-v1`` nor ``-v2`` (2.0 introduced them) and knows only v1; a
    2.x server SHALL convey the capabilities it supports, so one without ``permission-v2``
    does not take v2 scopes, and SHOULD still take v1 scopes.
    ``assertion_alg``: how our ``private_key_jwt`` assertions are signed for this server.
    """

    authorization_endpoint: str
    token_endpoint: str
    issuer: str
    jwks_uri: str | None
    # defaults: launch states stored before these fields existed still load
    scopes_v1: bool = False
    assertion_alg: Algorithm = DEFAULT_ALGORITHM
    #: the server names itself in its authorization responses (RFC 9207 ``iss``)
    names_itself: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AuthServer:
        """As stored with a launch state; a field an instance of a newer version added is
        left aside (during a rolling update its callback may come here: a 500 it was)."""
        known = {f.name for f in fields(cls)}
        return cls(**{name: value for name, value in data.items() if name in known})


def ehr_client(timeout: float) -> BlockingClient:
    """The client of one launch or refresh: ``timeout`` bounds each network operation,
    ``EHR_FETCH_SECONDS`` and ``EHR_FETCH_MAX_BYTES`` each whole fetch."""
    return BlockingClient(Bounds(EHR_FETCH_SECONDS, EHR_FETCH_MAX_BYTES), timeout)


def pkce_challenge(verifier: str) -> str:
    """BASE64URL(SHA256(verifier)) without padding (RFC 7636, S256)."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def discover(http: BlockingClient, registration: EhrRegistration) -> AuthServer:
    """Fetch and check the EHR's SMART configuration against what this app needs."""
    base = registration.fhir_base_url
    document = _get_json(http, f"{base}/.well-known/smart-configuration")
    missing = [
        name
        for name in ("authorization_endpoint", "token_endpoint", "issuer")
        if not isinstance(document.get(name), str) or not document[name]
    ]
    if "S256" not in _strings(document, "code_challenge_methods_supported"):
        missing.append("PKCE S256")
    methods = _strings(document, "token_endpoint_auth_methods_supported")
    wanted_auth = registration.client_auth
    if wanted_auth != "none" and methods and wanted_auth not in methods:
        missing.append(f"token_endpoint_auth_methods_supported: {wanted_auth}")
    if missing:
        raise OAuthError("ehr_unsupported", ", ".join(missing))
    jwks_uri = document.get("jwks_uri")
    capabilities = _strings(document, "capabilities")
    server = AuthServer(
        authorization_endpoint=_endpoint(base, document, "authorization_endpoint"),
        token_endpoint=_endpoint(base, document, "token_endpoint"),
        issuer=document["issuer"],
        jwks_uri=_endpoint(base, document, "jwks_uri")
        if isinstance(jwks_uri, str) and jwks_uri
        else None,
        scopes_v1="permission-v2" not in capabilities,
        assertion_alg=_assertion_algorithm(document),
        names_itself=document.get("authorization_response_iss_parameter_supported") is True,
    )
    cleartext = [name for name, url in _contacted(base, server) if not over_tls(url)]
    if cleartext:
        raise OAuthError("ehr_unsupported", f"not https: {', '.join(cleartext)}")
    if taken := _taken_parameters(server.authorization_endpoint):
        # RFC 6749 3.1: "Request and response parameters MUST NOT be included more than once"
        raise OAuthError("ehr_unsupported", f"authorization_endpoint's query has {taken}")
    return server


#: The parameters of our authorization request (``smart_app.launch``), each sent once.
AUTHORIZATION_PARAMETERS = frozenset(
    {"response_type", "client_id", "redirect_uri", "launch", "scope", "state", "aud",
     "code_challenge", "code_challenge_method", "nonce"}
)  # fmt: skip


def _taken_parameters(endpoint: str) -> str:
    """The parameters of ours the endpoint's own query names already, if any."""
    names = {name for name, _ in parse_qsl(urlsplit(endpoint).query, keep_blank_values=True)}
    return ", ".join(sorted(names & AUTHORIZATION_PARAMETERS))


class AuthServers:
    """The EHRs' checked SMART configurations (``discover``), each kept ``DISCOVERY_SECONDS``
    in this process: a launch (unauthenticated: anyone may start one) does not cost the
    EHR a request and a thread of the pool a wait each time. A failure is kept
    ``FAILED_DISCOVERY_SECONDS``: while an EHR is down or slow, a flood of launches gets its
    page at once instead of each holding a thread of the pool (every hospital's pages
    share it) for up to ``EHR_FETCH_SECONDS``. One launch reads the configuration again
    once it has expired; the others meanwhile get the expired outcome, and wait only when
    there is none yet (the first launches after a start, for that one read). Threads, not
    ``service.single_flight``: launches run on the route pool's threads, and each fetch on
    an event loop of its own (``ehr_client``), which that one's tasks cannot span.
    A configuration no launch has asked for in ``DISCOVERY_FORGOTTEN_SECONDS`` is forgotten
    at the next lookup (of any): the memory held follows the EHRs launched from lately.
    ``clock``: seconds, as ``time.monotonic``."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        # in the order they were last asked for: the least recently asked come first
        self._known: dict[tuple[str, ClientAuth], _Discovery] = {}

    def discover(self, registration: EhrRegistration, timeout: float) -> AuthServer:
        key = (registration.fhir_base_url, registration.client_auth)  # what discover reads
        known, fetching = self._claim(key)
        if fetching:
            known.fetch(registration, timeout, self._clock)
            return known.outcome()
        return known.latest().outcome()

    def assertion_algorithm(self, registration: EhrRegistration, timeout: float) -> Algorithm:
        """The assertion algorithm of a token request outside a launch (a refresh: the
        session keeps only the token endpoint), from the configuration the launches use,
        with their checks and their kept failure: a refresh does not ask the EHR each time.
        Only ``private_key_jwt`` signs an assertion: no other registration asks at all."""
        if registration.client_auth != "private_key_jwt":
            return DEFAULT_ALGORITHM
        return self.discover(registration, timeout).assertion_alg

    def _claim(self, key: tuple[str, ClientAuth]) -> tuple[_Discovery, bool]:
        """The discovery of ``key`` to use, and whether this launch is the one to fetch it
        (none is kept, or it has expired)."""
        with self._lock:
            now = self._clock()
            self._forget_unasked(now)
            known = self._known.pop(key, None)  # put back last: asked for most recently
            if known is None or known.expired(now):
                chosen, fetching = _Discovery(previous=known), True
            else:
                chosen, fetching = known, False
            chosen.asked_at = now
            self._known[key] = chosen
            return chosen, fetching

    def _forget_unasked(self, now: float) -> None:
        """Drop the discoveries not asked for in ``DISCOVERY_FORGOTTEN_SECONDS``: from the
        front of ``_known``, the least recently asked, so a lookup does not go through all."""
        while self._known:
            key, oldest = next(iter(self._known.items()))
            if now - oldest.asked_at < DISCOVERY_FORGOTTEN_SECONDS:
                return
            del self._known[key]


@dataclass
class _Discovery:
    """One read of a SMART configuration and its outcome, shared by the launches that ask
    until it expires; while it runs, the expired one it replaces (``previous``) answers."""

    previous: _Discovery | None = None
    asked_at: float = 0.0  # when a launch last looked it up (AuthServers' clock)
    done: threading.Event = field(default_factory=threading.Event)
    server: AuthServer | None = None
    failure: OAuthError | None = None
    finished_at: float | None = None

    def expired(self, now: float) -> bool:
        if self.finished_at is None:
            return False  # still fetching
        kept = DISCOVERY_SECONDS if self.server is not None else FAILED_DISCOVERY_SECONDS
        return now - self.finished_at >= kept

    def latest(self) -> _Discovery:
        """This one once read; until then the one it replaces, if any (read before: it is
        dropped once this one is done)."""
        previous = self.previous
        return self if previous is None or self.done.is_set() else previous

    def fetch(
        self, registration: EhrRegistration, timeout: float, clock: Callable[[], float]
    ) -> None:
        try:
            with ehr_client(timeout) as http:
                self.server = discover(http, registration)
        except OAuthError as failure:
            self.failure = failure
        finally:  # also after an unforeseen error (it reaches this launch alone): none hangs
            self.finished_at = clock()
            self.done.set()
            self.previous = None  # not kept alive, nor chained through the next one

    def outcome(self) -> AuthServer:
        """The configuration, or the fetch's failure, once fetched (``EHR_FETCH_SECONDS``
        at most). A waiter gives up a little after that: the fetch is bounded, but closing
        its client may wait on a DNS lookup that is not."""
        if not self.done.wait(EHR_FETCH_SECONDS + 2):
            raise OAuthError("ehr_unreachable", "SMART configuration not read in time")
        if self.server is not None:
            return self.server
        failure = self.failure or OAuthError("ehr_unreachable", "SMART configuration not read")
        # a new exception for each launch: one raised by all would gather all their tracebacks
        raise OAuthError(failure.kind, failure.detail)


def _contacted(fhir_base_url: str, server: AuthServer) -> list[tuple[str, str]]:
    """The URLs a launch sends secrets to or trusts keys from (the issuer: where the
    OpenID configuration naming the keys is read when the SMART one names none)."""
    keys = ("jwks_uri", server.jwks_uri) if server.jwks_uri else ("issuer", server.issuer)
    return [
        ("FHIR base URL", fhir_base_url),
        ("authorization_endpoint", server.authorization_endpoint),
        ("token_endpoint", server.token_endpoint),
        keys,
    ]


def _assertion_algorithm(smart_configuration: dict[str, Any]) -> Algorithm:
    """The algorithm our client assertions are signed with for this server.

    SMART 2.x: clients SHALL support RS384 and ES384, servers verify at least one and list
    it in ``token_endpoint_auth_signing_alg_values_supported``. RS384 unless the server
    lists only ES384 of the two (a server that lists neither, or nothing, gets RS384).
    """
    listed = _strings(smart_configuration, "token_endpoint_auth_signing_alg_values_supported")
    accepted = [algorithm for algorithm in ALGORITHMS if algorithm in listed]
    return accepted[0] if accepted else DEFAULT_ALGORITHM


def _endpoint(fhir_base_url: str, document: dict[str, Any], name: str) -> str:
    """The endpoint ``name`` of the SMART configuration. SMART 2.x: a legacy server's
    relative URL is resolved against the FHIR base URL (RFC 1808), as a browser's
    ``new URL(url, fhirBaseUrl)`` would; absolute ones stay. One that is no URL to send a
    browser or a request to (``https://[::1/``, a port past 65535) is the EHR's to mend:
    it raised ValueError, a bare 500 for the nurse (found by review)."""
    try:
        url: str = urljoin(fhir_base_url, document[name])
        parts = urlsplit(url)
        port = parts.port  # raises ValueError for what is no port
        if not parts.hostname or port == 0:
            raise ValueError("no host or no port")
        httpx.URL(url)  # what the requests are built with: its own checks of host and port
    except (ValueError, httpx.InvalidURL) as error:
        raise OAuthError("ehr_unsupported", f"{name} is not a usable URL ({error})") from None
    return url


#: A SMART v2 resource scope: context, resource type, permissions and an optional query.
_V2_SCOPE = re.compile(r"^(patient|user|system)/([A-Za-z]+|\*)\.([cruds]+)(\?.*)?$")


def requested_scopes(scopes: str, server: AuthServer) -> str:
    """The registration's scopes in the syntax the server understands.

    They are configured in SMART v2 syntax. A server that advertises only v1 syntax gets
    each v2 resource scope as its v1 equivalents (``r``/``s`` → ``read``, ``c``/``u``/``d`` →
    ``write``, the spec's mapping read backwards); a v2 query restriction has no v1 form
    and is dropped. Other scopes (``launch``, ``openid``…) and v1 scopes pass unchanged.
    """
    if not server.scopes_v1:
        return scopes
    converted: list[str] = []
    for scope in scopes.split():
        match = _V2_SCOPE.match(scope)
        if match is None:
            converted.append(scope)
            continue
        context, resource, permissions = match.group(1, 2, 3)
        if set(permissions) & set("rs"):
            converted.append(f"{context}/{resource}.read")
        if set(permissions) & set("cud"):
            converted.append(f"{context}/{resource}.write")
    return " ".join(dict.fromkeys(converted))


def request_token(
    http: BlockingClient,
    token_endpoint: str,
    registration: EhrRegistration,
    keys: KeyStore,
    form: dict[str, str],
    assertion_alg: Algorithm = DEFAULT_ALGORITHM,
) -> dict[str, Any]:
    """POST a token request with this registration's client authentication
    (``assertion_alg``: see ``AuthServer.assertion_alg``)."""
    body = dict(form)
    auth = httpx.Auth()  # the base class adds nothing: no HTTP authentication
    if registration.client_auth == "private_key_jwt":
        body["client_assertion_type"] = ASSERTION_TYPE
        body["client_assertion"] = keys.sign_client_assertion(
            token_endpoint, registration.client_id, assertion_alg
        )
    elif registration.client_auth == "client_secret_basic":
        if registration.client_secret is None:
            raise OAuthError(
                "token_failed",
                "client_secret_basic without a stored secret, or one that cannot be read "
                "(KINDREFLEX_SECRET_KEY changed): enter the secret again in the admin screen",
            )
        # RFC 6749 §2.3.1: id and secret are form-urlencoded before Basic encoding.
        auth = httpx.BasicAuth(
            quote_plus(registration.client_id),
            quote_plus(registration.client_secret.get_secret_value()),
        )
    else:
        body["client_id"] = registration.client_id
    response = _exchange(http, "POST", token_endpoint, "token endpoint", data=body, auth=auth)
    data = _json_object(response, "token_failed")
    if response.status_code != 200:
        reason = (
            data.get("error_description") or data.get("error") or f"HTTP {response.status_code}"
        )
        raise OAuthError("token_failed", str(reason))
    _check_token_response(data)
    return data


def _check_token_response(data: dict[str, Any]) -> None:
    """The fields a launch and a refresh use, in the types RFC 6749 gives them: a value of
    another shape is the EHR's fault, refused here rather than a failure further on."""
    access_token, token_type = data.get("access_token"), str(data.get("token_type", ""))
    if not isinstance(access_token, str) or not access_token or token_type.lower() != "bearer":
        raise OAuthError("token_failed", "no bearer access_token in the token response")
    for name in ("scope", "refresh_token"):
        if not isinstance(data.get(name, ""), str):
            raise OAuthError("token_failed", f"{name} in the token response is not a string")
    token_lifetime(data)


def token_lifetime(token_response: dict[str, Any]) -> timedelta | None:
    """The access token's lifetime (``expires_in``), None when the server gives none.

    RFC 6749 makes it a number of seconds; a numeric string, as some servers send, is read
    as one. Anything else, not above zero or beyond ``MAX_TOKEN_LIFETIME`` is refused.
    """
    value = token_response.get("expires_in")
    if value is None:
        return None
    try:
        seconds = float(value) if isinstance(value, int | float | str) else math.nan
    except ValueError:
        seconds = math.nan
    if isinstance(value, bool) or not 0 < seconds <= MAX_TOKEN_LIFETIME.total_seconds():
        raise OAuthError(
            "token_failed",
            "expires_in in the token response is not a number of seconds "
            f"above 0 and at most {int(MAX_TOKEN_LIFETIME.total_seconds())}",
        )
    return timedelta(seconds=seconds)


def verify_id_token(
    http: BlockingClient, id_token: str, server: AuthServer, client_id: str, nonce: str
) -> dict[str, Any]:
    """The id_token's claims after checking signature, iss, aud, exp/iat and nonce."""
    try:
        header = jwt.get_unverified_header(id_token)
    except jwt.PyJWTError as error:
        raise OAuthError("id_token_invalid", f"malformed id_token: {error}") from error
    algorithm = header.get("alg")
    if algorithm not in ID_TOKEN_ALGORITHMS:
        raise OAuthError("id_token_invalid", f"id_token algorithm {algorithm!r} not accepted")
    key = _verification_key(http, server, header.get("kid"), str(algorithm))
    try:
        claims: dict[str, Any] = jwt.decode(
            id_token,
            key,
            algorithms=[str(algorithm)],
            audience=client_id,
            issuer=server.issuer,
            leeway=CLOCK_SKEW_SECONDS,
            options={"require": ["iss", "sub", "aud", "exp", "iat"]},
        )
    except jwt.PyJWTError as error:
        raise OAuthError("id_token_invalid", str(error)) from error
    if claims.get("nonce") != nonce:
        raise OAuthError("id_token_invalid", "id_token nonce does not match the request")
    _check_authorized_party(claims, client_id)
    return claims


def _check_authorized_party(claims: dict[str, Any], client_id: str) -> None:
    """OpenID Connect Core 3.1.3.7: a token for several audiences names the party it was
    issued to in ``azp``, and an ``azp`` must be us (else it was issued to another client
    that merely lists us)."""
    azp, aud = claims.get("azp"), claims["aud"]
    if azp is None and isinstance(aud, list) and len(aud) > 1:
        raise OAuthError("id_token_invalid", "id_token has several audiences and no azp")
    if azp is not None and azp != client_id:
        raise OAuthError("id_token_invalid", "id_token azp is another client")


def _verification_key(http: BlockingClient, server: AuthServer, kid: object, algorithm: str) -> Any:
    jwks_uri = server.jwks_uri or _openid_jwks_uri(http, server.issuer)
    listed = _get_json(http, jwks_uri).get("keys")
    if not isinstance(listed, list):
        raise OAuthError("id_token_invalid", "the issuer's JWK Set has no list of keys")
    keys = [key for key in listed if isinstance(key, dict)]
    candidates = [key for key in keys if kid is None or key.get("kid") == kid]
    if len(candidates) != 1:
        raise OAuthError("id_token_invalid", f"no single issuer key with kid {kid!r}")
    try:
        return jwt.PyJWK(candidates[0], algorithm=algorithm).key
    except (jwt.PyJWTError, ValueError) as error:
        raise OAuthError("id_token_invalid", f"unusable issuer key: {error}") from error


def _openid_jwks_uri(http: BlockingClient, issuer: str) -> str:
    document = _get_json(http, f"{issuer.rstrip('/')}/.well-known/openid-configuration")
    if document.get("issuer") != issuer or not isinstance(document.get("jwks_uri"), str):
        raise OAuthError("ehr_unsupported", "OpenID configuration without a matching issuer")
    if not over_tls(document["jwks_uri"]):
        raise OAuthError("ehr_unsupported", "not https: the OpenID configuration's jwks_uri")
    return str(document["jwks_uri"])


def _get_json(http: BlockingClient, url: str) -> dict[str, Any]:
    response = _exchange(http, "GET", url, url)
    if response.status_code != 200:
        raise OAuthError("ehr_unreachable", f"{url}: HTTP {response.status_code}")
    return _json_object(response, "ehr_unsupported")


def _exchange(
    http: BlockingClient, method: str, url: str, name: str, **options: Any
) -> httpx.Response:
    """One request to the EHR (``name`` in the failure's detail); no whole answer in time is
    an unreachable EHR, one past the size limit (or not decodable) an unusable one."""
    try:
        return http.request(method, url, headers={"Accept": "application/json"}, **options)
    except UnreadableBodyError as error:
        raise OAuthError("ehr_unsupported", f"{name}: {error}") from error
    except (httpx.HTTPError, TimeoutError) as error:
        raise OAuthError("ehr_unreachable", f"{name}: {type(error).__name__}") from error
    except (httpx.InvalidURL, UnicodeError) as error:  # a host no name lookup can take
        raise OAuthError("ehr_unsupported", f"{name}: {type(error).__name__}") from error


def _json_object(response: httpx.Response, kind: FailureKind) -> dict[str, Any]:
    try:
        data = orjson.loads(response.content)  # no NaN nor Infinity, unlike json
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise OAuthError(kind, f"{response.url}: the answer is not a JSON object")
    return data


def _strings(document: dict[str, Any], name: str) -> list[str]:
    value = document.get(name)
    return [item for item in value if isinstance(item, str)] if isinstance(value, list) else []
