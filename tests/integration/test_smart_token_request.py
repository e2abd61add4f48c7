"""The OAuth client against a scripted authorization server over real HTTP: discovery checks
and ``client_secret_basic`` (the sandbox EHR only speaks private_key_jwt and public clients)."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import jwt
import pytest
from pydantic import SecretStr

from service.db.base import Database
from service.keys import KeyStore
from service.settings import load_settings
from service.tenant_config import EhrRegistration
from smart_app import oauth
from smart_app.oauth import (
    EHR_FETCH_MAX_BYTES,
    AuthServers,
    OAuthError,
    discover,
    ehr_client,
    request_token,
    requested_scopes,
    verify_id_token,
)
from tests.support.served import ServedJson, Trickled


class ScriptedServer:
    """GET answers ``documents[path]``; POST answers ``token_answer`` and is kept."""

    def __init__(self) -> None:
        self.documents: dict[str, tuple[int, str]] = {}
        self.token_answer: tuple[int, dict[str, Any]] = (200, {})
        self.token_requests: list[tuple[dict[str, str], dict[str, list[str]]]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, body = owner.documents.get(self.path, (404, "{}"))
                self._send(status, body)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                form = parse_qs(self.rfile.read(length).decode())
                owner.token_requests.append((dict(self.headers), form))
                status, body = owner.token_answer
                self._send(status, json.dumps(body))

            def _send(self, status: int, body: str) -> None:
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    scripted = ScriptedServer()
    try:
        yield scripted
    finally:
        scripted.close()


def _registration(server: ScriptedServer, **changes: Any) -> EhrRegistration:
    base = EhrRegistration(
        id="epd", name="EPD", fhir_base_url=f"{server.url}/fhir", client_id="kindreflex app"
    )
    return base.model_copy(update=changes)


def _configuration(server: ScriptedServer, **changes: Any) -> None:
    document = {
        "issuer": server.url,
        "authorization_endpoint": f"{server.url}/authorize",
        "token_endpoint": f"{server.url}/token",
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_basic"],
    }
    document.update(changes)
    server.documents["/fhir/.well-known/smart-configuration"] = (200, json.dumps(document))


def test_discovery_reports_what_the_ehr_lacks(server: ScriptedServer) -> None:
    _configuration(server, code_challenge_methods_supported=["plain"], token_endpoint=None)
    with ehr_client(timeout=5) as http, pytest.raises(OAuthError) as refused:
        discover(http, _registration(server))
    assert refused.value.kind == "ehr_unsupported"
    assert "token_endpoint" in refused.value.detail
    assert "PKCE S256" in refused.value.detail

    server.documents["/fhir/.well-known/smart-configuration"] = (200, "<html>not json</html>")
    with ehr_client(timeout=5) as http, pytest.raises(OAuthError) as not_json:
        discover(http, _registration(server))
    assert not_json.value.kind == "ehr_unsupported"


def test_relative_endpoints_of_a_legacy_server_are_resolved_against_the_fhir_base(
    server: ScriptedServer,
) -> None:
    """SMART 2.x: clients SHOULD read relative endpoint URLs relative to the FHIR base URL."""
    _configuration(server, authorization_endpoint="/auth/authorize", token_endpoint="token",
                   jwks_uri="../keys")  # fmt: skip
    with ehr_client(timeout=5) as http:
        found = discover(http, _registration(server))
    assert found.authorization_endpoint == f"{server.url}/auth/authorize"
    assert found.token_endpoint == f"{server.url}/token"
    assert found.jwks_uri == f"{server.url}/keys"


def test_endpoints_in_cleartext_off_this_machine_are_refused(server: ScriptedServer) -> None:
    """SMART 2.x: codes, tokens and client credentials go only to servers over TLS."""
    _configuration(server, token_endpoint="http://ehr.example/token",
                   jwks_uri="https://ehr.example/jwks")  # fmt: skip
    with ehr_client(timeout=5) as http, pytest.raises(OAuthError) as refused:
        discover(http, _registration(server))
    assert refused.value.kind == "ehr_unsupported"
    assert refused.value.detail == "not https: token_endpoint"

    _configuration(server, token_endpoint="https://ehr.example/token", jwks_uri=None)
    server.documents["/.well-known/openid-configuration"] = (
        200, json.dumps({"issuer": server.url, "jwks_uri": "http://ehr.example/jwks"}),
    )  # fmt: skip
    with ehr_client(timeout=5) as http:
        found = discover(http, _registration(server))  # the FHIR base is on the loopback
        with pytest.raises(OAuthError, match="not https: the OpenID configuration's jwks_uri"):
            verify_id_token(http, _an_rs256_jwt(), found, "kindreflex app", "nonce")


def _an_rs256_jwt() -> str:
    """A JWT with an RS256 header; refused before its (bogus) signature is looked at."""
    header = base64.urlsafe_b64encode(b'{"alg":"RS256","kid":"k"}').rstrip(b"=").decode()
    return f"{header}.e30.c2ln"


@pytest.mark.parametrize(
    ("capabilities", "v1"),
    [
        (["launch-ehr", "permission-v1"], True),
        (["launch-ehr", "permission-v1", "permission-v2"], False),
        (["launch-ehr", "permission-v2"], False),
        # neither: a SMART App Launch 1.0 server (2.0 introduced both), which knows only v1;
        # it was sent the configured v2 scopes, which it could not read
        (["launch-ehr"], True),
    ],
)
def test_a_server_not_advertising_v2_scopes_is_asked_in_v1_syntax(
    server: ScriptedServer, capabilities: list[str], v1: bool
) -> None:
    _configuration(server, capabilities=capabilities)
    registration = _registration(server)
    with ehr_client(timeout=5) as http:
        found = discover(http, registration)
    scopes = requested_scopes(registration.scopes, found)
    if not v1:
        assert scopes == registration.scopes
        return
    assert scopes == (
        "launch openid fhirUser offline_access patient/*.read patient/*.write "
        "patient/RelatedPerson.write patient/ServiceRequest.write patient/Flag.write "
        "user/Organization.read user/Organization.write user/Practitioner.read"
    )
    narrow = "launch patient/Observation.rs?category=exam patient/Patient.r user/*.cruds"
    assert requested_scopes(narrow, found) == (
        "launch patient/Observation.read patient/Patient.read user/*.read user/*.write"
    )


@pytest.mark.parametrize(
    ("advertised", "expected"),
    [
        (["ES384"], "ES384"),
        (["ES384", "RS384"], "RS384"),
        (["RS384"], "RS384"),
        (None, "RS384"),  # not advertised
    ],
)
def test_the_client_assertion_is_signed_with_an_algorithm_the_server_verifies(
    server: ScriptedServer, database: Database, advertised: list[str] | None, expected: str
) -> None:
    """SMART 2.x: clients SHALL support RS384 and ES384; a server verifies at least one."""
    _configuration(server, token_endpoint_auth_signing_alg_values_supported=advertised)
    server.token_answer = (200, {"access_token": "at", "token_type": "Bearer"})
    keys = KeyStore(database, load_settings(database_url="sqlite://", environment="test"))
    registration = _registration(server)
    with ehr_client(timeout=5) as http:
        found = discover(http, registration)
        request_token(http, found.token_endpoint, registration, keys, {}, found.assertion_alg)
    assert AuthServers().assertion_algorithm(registration, 5) == expected  # a refresh's
    _, form = server.token_requests[-1]
    (assertion,) = form["client_assertion"]
    header = jwt.get_unverified_header(assertion)
    assert header["alg"] == expected
    (public,) = [k for k in keys.jwks()["keys"] if k["kid"] == header["kid"]]
    claims = jwt.decode(
        assertion, jwt.PyJWK(public).key, algorithms=[expected], audience=found.token_endpoint
    )
    assert claims["iss"] == claims["sub"] == registration.client_id


def test_client_secret_basic_sends_the_urlencoded_secret_only_in_the_header(
    server: ScriptedServer, database: Database
) -> None:
    _configuration(server)
    server.token_answer = (200, {"access_token": "at", "token_type": "bearer", "patient": "p"})
    registration = _registration(
        server, client_auth="client_secret_basic", client_secret=SecretStr("s3cret:+/ x")
    )
    keys = KeyStore(database, load_settings(database_url="sqlite://", environment="test"))
    with ehr_client(timeout=5) as http:
        server_config = discover(http, registration)
        answer = request_token(
            http, server_config.token_endpoint, registration, keys, {"grant_type": "x"}
        )
    assert answer["access_token"] == "at"
    headers, form = server.token_requests[-1]
    # RFC 6749 §2.3.1: both parts form-urlencoded before the Basic encoding.
    expected = base64.b64encode(b"kindreflex+app:s3cret%3A%2B%2F+x").decode()
    assert headers["Authorization"] == f"Basic {expected}"
    assert "client_secret" not in form
    assert "client_assertion" not in form


def test_a_refused_token_request_carries_the_servers_reason(
    server: ScriptedServer, database: Database
) -> None:
    _configuration(server)
    server.token_answer = (400, {"error": "invalid_grant", "error_description": "code used"})
    keys = KeyStore(database, load_settings(database_url="sqlite://", environment="test"))
    with ehr_client(timeout=5) as http, pytest.raises(OAuthError) as refused:
        request_token(http, f"{server.url}/token", _registration(server), keys, {})
    assert refused.value.kind == "token_failed"
    assert refused.value.detail == "code used"
    _, form = server.token_requests[-1]
    assert form["client_assertion_type"] == [
        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    ]


def test_a_token_endpoint_whose_host_no_name_lookup_takes_is_the_ehrs_to_mend(
    server: ScriptedServer, database: Database
) -> None:
    """A host URL parsers take and the name lookup refuses (an invalid IDNA label): an
    UnicodeError, a bare 500 at the callback (found by review)."""
    keys = KeyStore(database, load_settings(database_url="sqlite://", environment="test"))
    with ehr_client(timeout=5) as http, pytest.raises(OAuthError) as refused:
        request_token(http, "https://xn--a.example/token", _registration(server), keys, {})
    assert refused.value.kind == "ehr_unsupported"
    assert "token endpoint" in refused.value.detail


def test_a_token_endpoint_answering_too_slowly_or_too_much_is_refused_in_time(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each byte comes within the per-read timeout, the whole answer would take 30 s; then
    one past the size limit. Also what a refresh meets (same request)."""
    monkeypatch.setattr(oauth, "EHR_FETCH_SECONDS", 2.0)  # 10 s: the launch tests wait that
    answer = json.dumps({"access_token": "a", "token_type": "Bearer"}).encode()
    registration = EhrRegistration(
        id="epd", name="EPD", fhir_base_url="http://127.0.0.1/fhir", client_id="kindreflex app"
    )
    keys = KeyStore(database, load_settings(database_url="sqlite://", environment="test"))
    with Trickled(answer, pause=30 / len(answer)) as slow, ehr_client(timeout=5) as http:
        started = time.monotonic()
        with pytest.raises(OAuthError) as refused:
            request_token(http, slow.url, registration, keys, {})
        assert time.monotonic() - started < 2.0 + 5  # room for a loaded machine; the answer: 30 s
    assert (refused.value.kind, refused.value.detail) == (
        "ehr_unreachable",
        "token endpoint: TimeoutError",
    )

    padded = answer[:-1] + b" " * EHR_FETCH_MAX_BYTES + b"}"
    with (
        ServedJson(padded) as flood,
        ehr_client(timeout=5) as http,
        pytest.raises(OAuthError) as refused,
    ):
        request_token(http, flood.url, registration, keys, {})
    assert (refused.value.kind, refused.value.detail) == (
        "ehr_unsupported",
        f"token endpoint: the answer is larger than {EHR_FETCH_MAX_BYTES} bytes",
    )


@pytest.mark.parametrize("keys", [None, 5, "keys", {"kty": "RSA"}])
def test_an_issuer_jwk_set_without_a_list_of_keys_refuses_the_id_token_not_a_500(
    keys: object,
) -> None:
    """``{"keys": null}`` made the callback iterate None: a bare 500 instead of the page
    that says the user was not confirmed (found by review)."""
    with ServedJson(json.dumps({"keys": keys}).encode()) as jwks, ehr_client(timeout=5) as http:
        server = oauth.AuthServer("https://ehr.example/auth", "https://ehr.example/token",
                                  "https://ehr.example", jwks.url)  # fmt: skip
        with pytest.raises(OAuthError) as refused:
            verify_id_token(http, _an_rs256_jwt(), server, "kindreflex", "nonce")
    assert (refused.value.kind, refused.value.detail) == (
        "id_token_invalid",
        "the issuer's JWK Set has no list of keys",
    )
