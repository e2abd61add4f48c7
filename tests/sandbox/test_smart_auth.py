"""The sandbox's SMART authorization server and FHIR facade, driven like a real app would."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import jwt
import pytest

from sandbox.config import SmartClient
from sandbox.runner import Sandbox
from tests.support.sandbox import (
    JwksServer,
    SmartDance,
    client_assertion,
    new_key,
    pkce_pair,
    redirect_params,
    running_sandbox,
)

pytestmark = pytest.mark.fhirserver

CONFIDENTIAL = "test-confidential-app"
PUBLIC = "test-public-app"
REDIRECT = "http://127.0.0.1:9/callback"  # never followed: the test reads the Location header


@pytest.fixture(scope="module")
def client_key_jwks() -> Iterator[JwksServer]:
    with JwksServer(new_key("test-app-key-1", "ES384")) as server:
        yield server


@pytest.fixture(scope="module")
def sandbox(client_key_jwks: JwksServer) -> Iterator[Sandbox]:
    clients = (
        SmartClient(CONFIDENTIAL, (REDIRECT,), jwks_uri=client_key_jwks.url),
        SmartClient(PUBLIC, (REDIRECT,)),
    )
    with running_sandbox(clients=clients, roles_claim="kindreflex_roles") as sb:
        yield sb


@pytest.fixture
def app(sandbox: Sandbox, client_key_jwks: JwksServer) -> SmartDance:
    return SmartDance(sandbox, CONFIDENTIAL, REDIRECT, client_key_jwks.keys[0])


def _verify_id_token(sandbox: Sandbox, token: str, client_id: str) -> dict[str, object]:
    conf = httpx.get(sandbox.smart_configuration_url).json()
    keys = jwt.PyJWKSet.from_dict(httpx.get(conf["jwks_uri"]).json())
    kid = jwt.get_unverified_header(token)["kid"]
    key = next(k for k in keys.keys if k.key_id == kid)
    claims: dict[str, object] = jwt.decode(
        token, key.key, algorithms=["RS256"], audience=client_id, issuer=conf["issuer"]
    )
    return claims


def test_smart_configuration(sandbox: Sandbox) -> None:
    conf = httpx.get(sandbox.smart_configuration_url).json()
    for cap in (
        "launch-ehr",
        "launch-standalone",
        "client-public",
        "client-confidential-asymmetric",
        "context-ehr-patient",
        "context-ehr-encounter",
        "sso-openid-connect",
        "permission-v2",
        "authorize-post",
    ):
        assert cap in conf["capabilities"]
    assert conf["code_challenge_methods_supported"] == ["S256"]
    assert set(conf["token_endpoint_auth_methods_supported"]) == {"private_key_jwt", "none"}
    assert conf["authorization_endpoint"] == sandbox.authorize_url
    oidc = httpx.get(f"{sandbox.issuer}/.well-known/openid-configuration").json()
    assert oidc["issuer"] == conf["issuer"] == sandbox.issuer
    meta = httpx.get(f"{sandbox.fhir_base_url}/metadata").json()
    assert meta["resourceType"] == "CapabilityStatement"
    assert sandbox.upstream_fhir_base_url not in str(meta)


def test_full_ehr_launch_with_private_key_jwt(sandbox: Sandbox, app: SmartDance) -> None:
    patient = sandbox.seeded.patient("jan-janssens")
    result = app.launch_and_token(
        patient=patient.id,
        encounter=patient.arrived_encounter_id,
        app_context='{"hook":"encounter-start"}',
    )
    assert result.status == 200, result.body
    body = result.body
    assert body["token_type"] == "Bearer"
    assert body["patient"] == patient.id
    assert body["encounter"] == patient.arrived_encounter_id
    assert body["appContext"] == '{"hook":"encounter-start"}'
    assert body["expires_in"] > 0
    assert "patient/*.rs" in body["scope"].split()
    assert body["refresh_token"]

    claims = _verify_id_token(sandbox, body["id_token"], CONFIDENTIAL)
    assert (
        claims["fhirUser"]
        == f"{sandbox.fhir_base_url}/Practitioner/{sandbox.practitioner_id('nurse')}"
    )
    assert claims["kindreflex_roles"] == ["nurse"]

    auth = {"Authorization": f"Bearer {body['access_token']}"}
    r = httpx.get(f"{sandbox.fhir_base_url}/Patient/{patient.id}", headers=auth)
    assert r.status_code == 200
    assert r.json()["id"] == patient.id
    user = httpx.get(str(claims["fhirUser"]), headers=auth)
    assert user.status_code == 200  # the app can read its user (fhirUser) on the facade
    assert user.json()["resourceType"] == "Practitioner"
    search = httpx.get(
        f"{sandbox.fhir_base_url}/Encounter", params={"patient": patient.id}, headers=auth
    )
    assert search.status_code == 200
    assert sandbox.fhir_base_url in search.text
    assert sandbox.upstream_fhir_base_url not in search.text  # clients only see the facade

    no_token = httpx.get(f"{sandbox.fhir_base_url}/Patient/{patient.id}")
    assert no_token.status_code == 401
    assert no_token.headers["www-authenticate"].startswith("Bearer")
    bad_token = httpx.get(
        f"{sandbox.fhir_base_url}/Patient/{patient.id}",
        headers={"Authorization": "Bearer not-a-token"},
    )
    assert bad_token.status_code == 401


def test_code_is_single_use_and_pkce_is_checked(sandbox: Sandbox, app: SmartDance) -> None:
    patient = sandbox.seeded.patient("an-peeters")
    launch = sandbox.create_launch(patient=patient.id)
    verifier, challenge = pkce_pair()
    back = app.consent(
        app.authorize(
            launch=launch, scope="launch openid fhirUser patient/*.rs", challenge=challenge
        )
    )
    assert back["state"] == ["st-1"]
    wrong = app.exchange(back["code"][0], verifier + "x")
    assert wrong.status == 400
    assert wrong.body["error"] == "invalid_grant"
    # the code was consumed by the failed attempt: no second try with the right verifier
    again = app.exchange(back["code"][0], verifier)
    assert again.body["error"] == "invalid_grant"


def test_pkce_and_aud_are_required(sandbox: Sandbox, app: SmartDance) -> None:
    patient = sandbox.seeded.patient("an-peeters")
    no_pkce = app.authorize(
        launch=sandbox.create_launch(patient=patient.id),
        scope="launch patient/*.rs",
        challenge=None,
    )
    assert no_pkce.status_code == 303
    assert redirect_params(no_pkce)["error"] == ["invalid_request"]
    _, challenge = pkce_pair()
    wrong_aud = app.authorize(
        launch=sandbox.create_launch(patient=patient.id),
        scope="launch patient/*.rs",
        challenge=challenge,
        aud="http://elsewhere.example/fhir",
    )
    assert redirect_params(wrong_aud)["error"] == ["invalid_request"]
    unknown_launch = app.authorize(launch="nope", scope="launch patient/*.rs", challenge=challenge)
    assert redirect_params(unknown_launch)["error"] == ["invalid_request"]
    bad_redirect = httpx.get(
        sandbox.authorize_url,
        params={
            "response_type": "code",
            "client_id": CONFIDENTIAL,
            "redirect_uri": "http://evil.example/cb",
            "scope": "launch",
            "state": "s",
            "aud": sandbox.fhir_base_url,
        },
    )
    assert bad_redirect.status_code == 400  # never redirect to an unregistered URI


def test_deny_redirects_with_access_denied(sandbox: Sandbox, app: SmartDance) -> None:
    patient = sandbox.seeded.patient("an-peeters")
    _, challenge = pkce_pair()
    page = app.authorize(
        launch=sandbox.create_launch(patient=patient.id),
        scope="launch patient/*.rs",
        challenge=challenge,
        state="deny-me",
    )
    back = app.consent(page, decision="deny")
    assert back["error"] == ["access_denied"]
    assert back["state"] == ["deny-me"]
    assert "code" not in back


def _code(sandbox: Sandbox, app: SmartDance) -> tuple[str, str]:
    patient = sandbox.seeded.patient("tom-wouters")
    verifier, challenge = pkce_pair()
    page = app.authorize(
        launch=sandbox.create_launch(patient=patient.id),
        scope="launch openid fhirUser patient/*.rs",
        challenge=challenge,
    )
    return app.consent(page)["code"][0], verifier


def test_expired_client_assertion_is_rejected(sandbox: Sandbox, app: SmartDance) -> None:
    code, verifier = _code(sandbox, app)
    assert app.key is not None
    stale = client_assertion(app.key, CONFIDENTIAL, sandbox.token_url, now=time.time() - 600)
    r = app.exchange(code, verifier, assertion=stale)
    assert r.status == 401
    assert r.body["error"] == "invalid_client"


def test_assertion_signed_by_an_unregistered_key_is_rejected(
    sandbox: Sandbox, app: SmartDance
) -> None:
    code, verifier = _code(sandbox, app)
    intruder = new_key("test-app-key-1", "ES384")  # same kid, different key
    forged = client_assertion(intruder, CONFIDENTIAL, sandbox.token_url)
    r = app.exchange(code, verifier, assertion=forged)
    assert r.status == 401
    assert r.body["error"] == "invalid_client"


def test_assertion_with_wrong_audience_or_replayed_jti_is_rejected(
    sandbox: Sandbox, app: SmartDance
) -> None:
    assert app.key is not None
    code, verifier = _code(sandbox, app)
    wrong_aud = client_assertion(app.key, CONFIDENTIAL, f"{sandbox.issuer}/elsewhere")
    assert app.exchange(code, verifier, assertion=wrong_aud).body["error"] == "invalid_client"
    code, verifier = _code(sandbox, app)
    once = client_assertion(app.key, CONFIDENTIAL, sandbox.token_url, jti="same-jti")
    assert app.exchange(code, verifier, assertion=once).status == 200
    code, verifier = _code(sandbox, app)
    replay = client_assertion(app.key, CONFIDENTIAL, sandbox.token_url, jti="same-jti")
    assert app.exchange(code, verifier, assertion=replay).body["error"] == "invalid_client"


def test_confidential_client_must_authenticate(sandbox: Sandbox, app: SmartDance) -> None:
    code, verifier = _code(sandbox, app)
    r = httpx.post(
        sandbox.token_url,
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT,
            "code_verifier": verifier,
            "client_id": CONFIDENTIAL,
        },
    )
    assert r.status_code == 401
    assert r.json()["error"] == "invalid_client"


def test_refresh_rotates_and_keeps_context(sandbox: Sandbox, app: SmartDance) -> None:
    patient = sandbox.seeded.patient("els-goossens")
    first = app.launch_and_token(patient=patient.id, user="social-worker")
    assert first.status == 200
    refreshed = app.token(
        {"grant_type": "refresh_token", "refresh_token": first.body["refresh_token"]}
    )
    assert refreshed.status == 200, refreshed.body
    assert refreshed.body["patient"] == patient.id
    assert refreshed.body["access_token"] != first.body["access_token"]
    claims = _verify_id_token(sandbox, refreshed.body["id_token"], CONFIDENTIAL)
    assert claims["kindreflex_roles"] == ["social-worker"]
    r = httpx.get(
        f"{sandbox.fhir_base_url}/RelatedPerson",
        params={"patient": patient.id},
        headers={"Authorization": f"Bearer {refreshed.body['access_token']}"},
    )
    assert r.status_code == 200
    assert r.json()["total"] == 2
    reused = app.token(
        {"grant_type": "refresh_token", "refresh_token": first.body["refresh_token"]}
    )
    assert reused.body["error"] == "invalid_grant"


def test_public_client_and_expired_access_token(sandbox: Sandbox) -> None:
    public = SmartDance(sandbox, PUBLIC, REDIRECT)
    patient = sandbox.seeded.patient("lotte-claes")
    result = public.launch_and_token(
        patient=patient.id, scope="launch openid fhirUser patient/*.cruds"
    )
    assert result.status == 200, result.body
    auth = {"Authorization": f"Bearer {result.body['access_token']}"}
    assert (
        httpx.get(
            f"{sandbox.fhir_base_url}/Condition", params={"patient": patient.id}, headers=auth
        ).json()["total"]
        == 1
    )
    expired = sandbox.issue_token(scope="user/*.cruds", lifetime=0)
    r = httpx.get(
        f"{sandbox.fhir_base_url}/Patient/{patient.id}",
        headers={"Authorization": f"Bearer {expired}"},
    )
    assert r.status_code == 401


def test_writes_through_the_facade(sandbox: Sandbox) -> None:
    patient = sandbox.seeded.patient("an-peeters")
    token = sandbox.issue_token(scope="user/*.cruds")
    auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}
    obs = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "test"},
        "subject": {"reference": f"{sandbox.fhir_base_url}/Patient/{patient.id}"},
    }
    r = httpx.post(f"{sandbox.fhir_base_url}/Observation", json=obs, headers=auth)
    assert r.status_code == 201, r.text
    assert r.headers["location"].startswith(sandbox.fhir_base_url)
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:3f2a1c7e-0000-4000-8000-000000000001",
                "resource": obs,
                "request": {"method": "POST", "url": "Observation"},
            }
        ],
    }
    read_only = sandbox.issue_token(scope="user/*.rs")
    denied = httpx.post(
        sandbox.fhir_base_url, json=bundle, headers={"Authorization": f"Bearer {read_only}"}
    )
    assert denied.status_code == 403
    ok = httpx.post(sandbox.fhir_base_url, json=bundle, headers=auth)
    assert ok.status_code == 200, ok.text
    assert sandbox.upstream_fhir_base_url not in ok.text
    assert any(q.status == 403 for q in sandbox.fhir_requests)

    # The refusal names what the scopes do not allow, not every entry of the transaction.
    location = ok.json()["entry"][0]["response"]["location"]  # absolute, with the version
    stored = location.removeprefix(f"{sandbox.fhir_base_url}/").split("/_history")[0]
    update = {
        "fullUrl": f"{sandbox.fhir_base_url}/{stored}",
        "resource": {**obs, "id": stored.split("/")[-1], "status": "amended"},
        "request": {"method": "PUT", "url": stored},
    }
    create_only = sandbox.issue_token(scope="patient/*.rs patient/*.c")
    refused = httpx.post(
        sandbox.fhir_base_url,
        json={**bundle, "entry": [*bundle["entry"], update]},
        headers={"Authorization": f"Bearer {create_only}"},
    )
    assert refused.status_code == 403
    (issue,) = refused.json()["issue"]
    assert issue["diagnostics"] == "the token's scopes do not allow Observation.u"
