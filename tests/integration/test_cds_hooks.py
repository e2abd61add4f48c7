"""The CDS Hooks service over HTTP: real signed JWTs, JWKS served over real HTTP, SQLite
and PostgreSQL. Discovery, cards, authentication failures, malformed bodies, feedback."""

from __future__ import annotations

import asyncio
import base64
import codecs
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import httpx
import jwt
import psycopg
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from sandbox.keys import SigningKey
from service.app import create_app
from service.cds.router import MAX_BODY_BYTES
from service.db import migrate
from service.db.base import Base, Database
from service.db.models import CdsCard, CdsFeedback, CdsSeenToken
from service.fhir import terminology
from service.protocol import HagueTrigger
from service.settings import Settings
from service.tenancy import SecretBox, TenantDirectory
from service.tenant_config import HookSettings
from tests.support.any_json import ANY_JSON, paths, replaced
from tests.support.cds import (
    AUD,
    ENCOUNTER_START,
    PUBLIC_URL,
    Cds,
    Ehr,
    cds,
    ehr,
    hook_body,
    make_cds_app,
    only_card,
    tenant_config,
)
from tests.support.postgres import throwaway_postgres_database
from tests.support.prefetch import ENCOUNTER_ID, FULL_PREFETCH, a_code_of, concern_flag, prefetch
from tests.support.sandbox import JwksServer
from tests.support.served import Counted

__all__ = ["cds", "ehr"]  # the CDS tests' fixtures (tests/support/cds)

PATIENT_VIEW = "kindreflex-patient-view"


# --- discovery and cards -----------------------------------------------------------------


def test_discovery_lists_both_services_with_prefetch_templates(cds: Cds) -> None:
    response = cds.discover()
    assert response.status_code == 200, response.text
    services = {s["id"]: s for s in response.json()["services"]}
    assert set(services) == {ENCOUNTER_START, PATIENT_VIEW}
    assert services[ENCOUNTER_START]["hook"] == "encounter-start"
    templates = services[PATIENT_VIEW]["prefetch"]
    assert templates["patient"] == "Patient/{{context.patientId}}"
    assert set(templates) == {
        "patient",
        "encounter",
        "conditions",
        "relatedPersons",
        "flags",
        "findings",
    }


USAGE = {
    "nl": "Voor een kaart op maat van de patiënt zijn de prefetch of FHIR-toegang (fhirServer "
    "en fhirAuthorization) nodig; zonder een van beide volgt een algemene kaart.",
    "fr": "Pour une carte propre au patient, il faut le prefetch ou un accès FHIR (fhirServer "
    "et fhirAuthorization) ; sans l'un ni l'autre, la carte est générique.",
    "en": "For a card specific to the patient, send the prefetch or FHIR access (fhirServer "
    "and fhirAuthorization); without either, the card is generic.",
}

#: The services' description in discovery, for the EHR's administrator.
DESCRIPTION = {
    "nl": "Vraagt de Kindreflex te doen (de kinderen achter de volwassen patiënt zien) en "
    "waarschuwt bij een aanmelding uit het Haags protocol of een open Kindreflex-verontrusting.",
    "fr": "Invite à faire le Kindreflex (voir les enfants derrière le patient adulte) et avertit "
    "en cas de présentation relevant du protocole de La Haye ou de préoccupation Kindreflex "
    "ouverte.",
    "en": "Prompts the Kindreflex (see the children behind the adult patient) and warns on "
    "Hague-protocol presentations or an open concern.",
}


def test_discovery_tells_the_ehr_administrator_what_a_specific_card_needs(
    cds: Cds, database_url: str, database: Database
) -> None:
    """CDS Hooks 2.0 discovery's OPTIONAL usageRequirements, one sentence per service: the
    EHR's administrator read nowhere in it that without the prefetch or FHIR access the
    card is generic. In the language the GET asks for, else the calling registration's,
    else (no JWT check, no Accept-Language) English. The services' description likewise:
    it was English only, outside the catalogues."""

    def usage(answer: Any) -> set[str]:
        """The usage requirements, checked to come in the language of the description."""
        assert answer.status_code == 200, answer.text
        services = answer.json()["services"]
        assert len(services) == 2
        language = next(
            code for code, text in USAGE.items() if text == services[0]["usageRequirements"]
        )
        assert {service["description"] for service in services} == {DESCRIPTION[language]}
        return {service["usageRequirements"] for service in services}

    assert usage(cds.discover()) == {USAGE["nl"]}  # the registration's default language
    cds.configure(tenant_config(cds.ehr, language="fr"))
    assert usage(cds.discover()) == {USAGE["fr"]}
    token = cds.ehr.token(PUBLIC_URL + "/cds-services")
    asked = {"Authorization": f"Bearer {token}", "Accept-Language": "en-GB,nl;q=0.5"}
    assert usage(cds.client.get("/cds-services", headers=asked)) == {USAGE["en"]}

    settings = Settings(
        environment="test", public_url=PUBLIC_URL, database_url=database_url, cds_jwt_required=False
    )
    with TestClient(create_app(settings, database), base_url=PUBLIC_URL) as demo:
        assert usage(demo.get("/cds-services")) == {USAGE["en"]}
        nl = demo.get("/cds-services", headers={"Accept-Language": "nl-BE"})
        assert usage(nl) == {USAGE["nl"]}


def test_disabling_a_hook_takes_effect_at_once(cds: Cds) -> None:
    cds.configure(tenant_config(cds.ehr, HookSettings(enabled=["encounter-start"])))
    assert [s["id"] for s in cds.discover().json()["services"]] == [ENCOUNTER_START]
    refused = cds.call(PATIENT_VIEW, hook_body("patient-view"))
    assert refused.status_code == 404
    assert refused.json()["error"] == "unknown_service"

    cds.configure(tenant_config(cds.ehr, HookSettings(adult_age=16)))
    assert len(cds.discover().json()["services"]) == 2
    sixteen = prefetch(birth_date=f"{time.gmtime().tm_year - 17}-01-01")
    assert len(cds.call(body=hook_body(data=sixteen)).json()["cards"]) == 1


def test_a_domestic_violence_presentation_gets_a_warning_card_with_a_smart_link(cds: Cds) -> None:
    data = prefetch(reasons=(a_code_of(HagueTrigger.DOMESTIC_VIOLENCE),))
    card = only_card(cds.call(body=hook_body(data=data)))
    assert card["indicator"] == "warning"
    assert card["summary"] == "Doe de Kindreflex — aanleiding: huiselijk geweld"
    assert "partnergeweld" in card["detail"]
    (link,) = card["links"]
    assert (link["type"], link["url"]) == ("smart", f"{PUBLIC_URL}/launch")
    assert '"reasons":["domestic-violence"]' in link["appContext"]
    assert uuid.UUID(card["uuid"])
    assert cds.fhir_requests() == 0  # answered from prefetch


def test_minor_step_1_done_and_open_concern(cds: Cds) -> None:
    minor = prefetch(birth_date=f"{time.gmtime().tm_year - 10}-01-01")
    assert cds.call(body=hook_body(data=minor)).json() == {"cards": []}
    concern = only_card(cds.call(body=hook_body(data=prefetch(flags=(concern_flag(),)))))
    assert concern["indicator"] == "warning"
    assert "open verontrusting" in concern["summary"]


def test_a_trigger_on_an_encounter_entered_in_error_makes_no_warning(cds: Cds) -> None:
    """Found by review: Encounter.status was never read (``situation._NO_PRESENTATION``)."""
    data = prefetch(reasons=(a_code_of(HagueTrigger.DOMESTIC_VIOLENCE),))
    data["encounter"]["status"] = "entered-in-error"
    card = only_card(cds.call(body=hook_body(data=data)))
    assert card["indicator"] == "info"
    assert "huiselijk geweld" not in card["summary"] + card["detail"]


def test_language_from_accept_language_else_the_registration_default(cds: Cds) -> None:
    french = only_card(cds.call(headers={"Accept-Language": "fr-BE,fr;q=0.9"}))
    assert french["summary"].startswith("Faites le Kindreflex")
    cds.configure(tenant_config(cds.ehr, language="en"))
    assert only_card(cds.call())["summary"].startswith("Do the Kindreflex")


def test_patient_view_without_an_encounter_still_prompts(cds: Cds) -> None:
    body = hook_body("patient-view", encounter_id=None)
    assert only_card(cds.call(PATIENT_VIEW, body))["indicator"] == "info"


@pytest.mark.parametrize(
    "url",
    ["kindreflex.be", "/over-kindreflex", "javascript:alert(document.domain)", "https://[::1"],
)
def test_a_source_url_stored_before_it_was_checked_is_left_out_of_the_card(
    cds: Cds, url: str
) -> None:
    """CDS Hooks 2.0, Card > Source: ``url`` is "an optional absolute URL to load (via
    GET, in a browser context)". ``HookSettings.source_url`` was any text, copied into every
    card's ``source.url`` (review). A save refuses it now; a configuration stored before
    still loads (its hospital must keep its cards) and its cards keep the source's label,
    without the link, and their warning (``CardBook``): the call is not refused."""
    cds.configure(tenant_config(cds.ehr, HookSettings(source_url=url)))  # as stored before
    data = prefetch(reasons=(a_code_of(HagueTrigger.DOMESTIC_VIOLENCE),))
    card = only_card(cds.call(body=hook_body(data=data)))
    assert card["source"] == {"label": "Kindreflex"}
    assert card["indicator"] == "warning"

    cds.configure(tenant_config(cds.ehr, HookSettings(source_url="https://www.az-gent.be/kr")))
    assert only_card(cds.call())["source"]["url"] == "https://www.az-gent.be/kr"


# --- authentication ----------------------------------------------------------------------


def hs256_token(ehr: Ehr) -> str:
    now = int(time.time())
    claims = {"iss": ehr.issuer, "aud": AUD, "iat": now, "exp": now + 60, "jti": "x"}
    return jwt.encode(claims, "shared-secret-is-not-accepted", algorithm="HS256")


def foreign_key_token(ehr: Ehr) -> str:
    impostor = SigningKey.generate(ehr.key.kid, "ES384")  # same kid, another key
    now = int(time.time())
    claims = {"iss": ehr.issuer, "aud": AUD, "iat": now, "exp": now + 60, "jti": "y"}
    return impostor.sign(claims, headers={"jku": ehr.jwks_url})


NOW = int(time.time())
BAD_TOKENS: dict[str, tuple[Callable[[Ehr], str], str]] = {
    "expired": (lambda e: e.token(AUD, iat=NOW - 400, exp=NOW - 100), "expired"),
    "wrong aud": (lambda e: e.token(f"{PUBLIC_URL}/cds-services"), "aud must be the URL called"),
    # a list may name us among others (RFC 7519), but one without us is for another service
    "aud list without us": (
        lambda e: e.token(["https://other.example/cds-services/x"]),
        "aud must be the URL called",
    ),
    "unknown iss": (lambda e: e.token(AUD, iss="https://evil.example"), "not registered"),
    "jku not allow-listed": (
        lambda e: e.token(AUD, headers={"jku": "http://127.0.0.1:9/keys.json"}),
        "allow-list",
    ),
    "HS256": (hs256_token, "not accepted"),
    "other key": (foreign_key_token, "does not verify"),
    "too long-lived": (lambda e: e.token(AUD, exp=int(time.time()) + 3600), "longer than"),
    "issued in the future": (
        lambda e: e.token(AUD, iat=int(time.time()) + 600, exp=int(time.time()) + 700),
        "future",
    ),
    "no jti": (lambda e: e.token(AUD, jti=None), "jti"),
    "iat not a number": (lambda e: e.token(AUD, iat="today"), "must be numbers"),
    # NaN is not JSON (RFC 8259): the claims do not parse
    "iat NaN": (lambda e: e.token(AUD, iat=float("nan")), "not a JWT"),
    "crit extension": (
        lambda e: e.token(AUD, headers={"crit": ["urn:example:ext"], "urn:example:ext": 1}),
        "crit",
    ),
    "not a JWT": (lambda e: "not-a-jwt", "not a JWT"),
    # CDS Hooks 2.0, the JWT header: typ "Fixed value: JWT". An access token (RFC 9068) or
    # a DPoP proof signed by the same keys is another kind of token (RFC 8725 3.11)
    "an access token": (lambda e: e.token(AUD, headers={"typ": "at+jwt"}), "typ"),
    "a DPoP proof": (lambda e: e.token(AUD, headers={"typ": "dpop+jwt"}), "typ"),
    "typ not a string": (lambda e: e.token(AUD, headers={"typ": ["JWT"]}), "typ"),
}


#: Property tests that spoil one field of a good request with arbitrary JSON.
SPOILED_INPUT = settings(
    deadline=None,
    derandomize=True,  # the same examples every run
    suppress_health_check=[HealthCheck.function_scoped_fixture],  # each call is independent
)


def b64url(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


@settings(SPOILED_INPUT, max_examples=300)
@given(part=st.sampled_from(["header", "claims"]), data=st.data())
def test_a_jwt_with_any_json_in_any_field_is_refused_with_401_never_a_500(
    cds: Cds, part: str, data: st.DataObject
) -> None:
    """The token's header and claims are the caller's JSON too: spoil any field of a good
    token (its signature then fails, if nothing else does first)."""
    header_b64, claims_b64, signature = cds.ehr.token(AUD).split(".")
    segments = {
        "header": json.loads(base64.urlsafe_b64decode(header_b64 + "==")),
        "claims": json.loads(base64.urlsafe_b64decode(claims_b64 + "==")),
    }
    where = data.draw(st.sampled_from(paths(segments[part])[1:]))
    segments[part] = replaced(segments[part], where, data.draw(ANY_JSON))
    token = f"{b64url(segments['header'])}.{b64url(segments['claims'])}.{signature}"
    response = cds.call(token=token)
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "invalid_token"
    assert response.json()["reason"]


@pytest.mark.parametrize("case", list(BAD_TOKENS))
def test_a_bad_token_is_refused_with_401_and_a_reason(cds: Cds, case: str) -> None:
    make, reason = BAD_TOKENS[case]
    response = cds.call(token=make(cds.ehr))
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "invalid_token"
    assert reason in response.json()["reason"]
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert cds.count(CdsSeenToken) == 0


@pytest.mark.parametrize("typ", ["JWT", "jwt", "application/jwt", None])
def test_a_jwt_typed_as_a_jwt_or_untyped_is_accepted(cds: Cds, typ: str | None) -> None:
    """RFC 7515 4.1.9: typ is a media type, case-insensitive, "application/" left out.
    Decision: a token without typ is accepted (CDS Hooks 2.0 has the EHR send it, but
    leaving it out names no other kind of token); pinned here."""
    assert cds.call(token=cds.ehr.token(AUD, headers={"typ": typ})).status_code == 200


def test_no_authorization_header_is_refused(cds: Cds) -> None:
    response = cds.client.post(f"/cds-services/{ENCOUNTER_START}", json=hook_body())
    assert response.status_code == 401
    assert "Authorization: Bearer" in response.json()["reason"]
    assert cds.client.get("/cds-services").status_code == 401


def test_a_replayed_token_is_refused_also_by_another_instance(
    cds: Cds, database_url: str, database: Database
) -> None:
    token = cds.ehr.token(AUD)
    assert cds.call(token=token).status_code == 200
    replay = cds.call(token=token)
    assert replay.status_code == 401
    assert "already used" in replay.json()["reason"]
    # a second instance of the service shares the replay ledger through the database
    with TestClient(make_cds_app(database_url, database), base_url=PUBLIC_URL) as other:
        again = other.post(
            f"/cds-services/{ENCOUNTER_START}",
            json=hook_body(),
            headers={"Authorization": f"Bearer {token}"},
        )
    assert again.status_code == 401
    assert cds.count(CdsSeenToken) == 1


def test_keys_configured_for_the_issuer_need_no_jku(cds: Cds) -> None:
    cds.configure(tenant_config(cds.ehr, jwks={"keys": [cds.ehr.key.public_jwk()]}))
    now = int(time.time())
    claims = {"iss": cds.ehr.issuer, "aud": AUD, "iat": now, "exp": now + 60, "jti": "z1"}
    assert cds.call(token=cds.ehr.key.sign(claims)).status_code == 200
    # A jku the issuer did not allow-list is never fetched: with keys configured, those
    # verify (the spec lets an EHR name its JWK Set, MAY); every such call was a 401.
    elsewhere = cds.ehr.token(AUD, headers={"jku": "https://attacker.example/jwks.json"})
    assert cds.call(token=elsewhere).status_code == 200
    forged = SigningKey.generate("forged", "ES384").sign(
        {**claims, "jti": "z2"}, headers={"jku": "https://attacker.example/jwks.json"}
    )
    assert cds.call(token=forged).status_code == 401


def test_an_issuer_with_a_client_allow_list_refuses_other_subjects(cds: Cds) -> None:
    config = tenant_config(cds.ehr)
    registration = config.registrations[0]
    issuer = registration.cds_issuers[0].model_copy(update={"subjects": ["ehr-client"]})
    registration = registration.model_copy(update={"cds_issuers": [issuer]})
    cds.configure(config.model_copy(update={"registrations": [registration]}))
    assert cds.call().status_code == 200  # Ehr.token signs with sub "ehr-client"
    refused = cds.call(token=cds.ehr.token(AUD, sub="another-client"))
    assert refused.status_code == 401
    assert "another-client" in refused.json()["reason"]
    assert cds.call(token=cds.ehr.token(AUD, sub=None)).status_code == 401


def test_a_hospital_only_accepts_its_own_ehrs(cds: Cds) -> None:
    other = SigningKey.generate("b-key", "ES384")
    with JwksServer(other) as jwks:
        hospital_b = Ehr(other, jwks.url, "https://ehr.az-brugge.example/cds")
        cds.configure(tenant_config(hospital_b), slug="az-brugge")
        prefix = "/t/az-brugge"
        path = f"{PUBLIC_URL}{prefix}/cds-services/{ENCOUNTER_START}"
        own = cds.call(prefix=prefix, token=hospital_b.token(path))
        assert own.status_code == 200, own.text
        assert only_card(own)["links"][0]["url"] == f"{PUBLIC_URL}{prefix}/launch"
        # hospital A's EHR signs correctly for hospital B's URL: still not B's EHR
        assert cds.call(prefix=prefix, token=cds.ehr.token(path)).status_code == 401
        # and B's EHR cannot call hospital A
        assert cds.call(token=hospital_b.token(AUD)).status_code == 401


# --- malformed requests ------------------------------------------------------------------

MALFORMED: dict[str, tuple[str, dict[str, Any] | bytes, int]] = {
    "not JSON": (ENCOUNTER_START, b"{not json", 400),
    "hookInstance not a UUID": (ENCOUNTER_START, hook_body(hookInstance="abc"), 400),
    "context is a string": (ENCOUNTER_START, hook_body(context="p1"), 400),
    "context missing": (
        ENCOUNTER_START,
        {k: v for k, v in hook_body().items() if k != "context"},
        400,
    ),
    "no encounter for encounter-start": (ENCOUNTER_START, hook_body(encounter_id=None), 400),
    "query injection in patientId": (
        ENCOUNTER_START,
        hook_body(context={"userId": "Practitioner/n", "patientId": "p1&_count=1000"}),
        400,
    ),
    "prefetch value is a list": (ENCOUNTER_START, hook_body(data={"patient": []}), 400),
    "hook of another service": (ENCOUNTER_START, hook_body("patient-view"), 400),
    "authorization without server": (
        ENCOUNTER_START,
        hook_body(
            fhirAuthorization={
                "access_token": "t",
                "token_type": "Bearer",
                "expires_in": 60,
                "scope": "patient/*.rs",
                "subject": "cds",
            }
        ),
        400,
    ),
    "unknown service": ("no-such-service", hook_body(), 404),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_request_gets_a_4xx_with_a_reason(cds: Cds, case: str) -> None:
    service, body, status = MALFORMED[case]
    response = cds.call(service, body)
    assert response.status_code == status, response.text
    assert response.json()["error"] in {"invalid_request", "unknown_service"}
    assert response.json()["reason"]


@pytest.mark.parametrize(
    "authorization",
    [
        {"token_type": "bearer"},  # RFC 6749: the token type is case-insensitive
        {"subject": None},  # required by CDS Hooks, yet no reason to refuse the card
        {"expires_in": 0},
    ],
    ids=["lower-case bearer", "no subject", "expired"],
)
def test_a_call_whose_fhir_authorization_cannot_be_used_still_gets_its_card(
    cds: Cds, authorization: dict[str, Any]
) -> None:
    """The prefetch holds all the rules need: a fhirAuthorization the service would use
    only for the fallback refused the whole call, and the EHR showed no card (found by a
    review against the spec)."""
    given = {
        "access_token": "t",
        "token_type": "Bearer",
        "expires_in": 60,
        "scope": "patient/*.rs",
        "subject": "cds",
    } | authorization
    body = hook_body(
        data=prefetch(flags=(concern_flag(),)),
        fhirServer="https://ehr.az-gent.example/fhir",
        fhirAuthorization={k: v for k, v in given.items() if v is not None},
    )
    card = only_card(cds.call(body=body))
    assert card["indicator"] == "warning"
    assert "open verontrusting" in card["summary"]


def test_a_prefetch_key_the_service_did_not_ask_for_is_left_alone(cds: Cds) -> None:
    """The spec's own example prefetch holds ``"user": "123"``: not a resource."""
    body = hook_body(data=prefetch() | {"user": "123", "other": [1, 2]})
    assert only_card(cds.call(body=body))["indicator"] == "info"


def test_a_call_opening_with_a_utf_8_byte_order_mark_gets_its_card(cds: Cds) -> None:
    """RFC 8259 §8.1: a parser MAY ignore a byte order mark rather than treat it as an
    error. A call sent with one (a tool on Windows) was a 400 "Invalid JSON", and the EHR
    showed no card; its feedback was refused alike."""
    json_type = {"Content-Type": "application/json"}
    body = codecs.BOM_UTF8 + json.dumps(hook_body()).encode()
    card = only_card(cds.call(body=body, headers=json_type))
    assert card["indicator"] == "info"

    path = f"/cds-services/{ENCOUNTER_START}/feedback"
    feedback = {
        "card": card["uuid"],
        "outcome": "accepted",
        "outcomeTimestamp": "2026-11-23T10:16:00Z",
    }
    sent = codecs.BOM_UTF8 + json.dumps({"feedback": [feedback]}).encode()
    token = cds.ehr.token(PUBLIC_URL + path)
    answer = cds.client.post(
        path, content=sent, headers=json_type | {"Authorization": f"Bearer {token}"}
    )
    assert answer.status_code == 200, answer.text
    assert cds.count(CdsFeedback) == 1


def test_a_body_over_the_limit_is_refused_with_413_before_it_is_parsed(cds: Cds) -> None:
    padding = "x" * MAX_BODY_BYTES
    response = cds.call(body=hook_body(padding=padding))
    assert response.status_code == 413, response.text
    assert response.json()["error"] == "request_too_large"
    assert cds.count(CdsCard) == 0


def test_an_unexpected_error_on_a_cds_path_is_a_json_500_and_counted(
    cds: Cds, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fault we cannot cause from outside (every input is checked), so it is injected: the
    rules raise. The EHR gets the CDS error shape, and the metrics count the 500."""

    def broken(*_: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr("service.cds.router.advise", broken)
    response = cds.call()
    assert response.status_code == 500
    assert response.json()["error"] == "internal"
    assert "a bug" not in response.text
    metrics = cds.client.get("/metrics").text
    line = 'method="POST",route="/cds-services/{service_id}",status="500"'
    assert f"kindreflex_http_requests_total{{{line}}} 1.0" in metrics


def test_request_metrics_keep_the_route_template_and_a_bounded_set_of_methods(cds: Cds) -> None:
    indicator = only_card(cds.call())["indicator"]
    cds.client.request("BREW", "/healthz")
    metrics = cds.client.get("/metrics").text
    assert f'kindreflex_cds_cards_total{{indicator="{indicator}"}} 1.0' in metrics
    line = 'method="POST",route="/cds-services/{service_id}",status="200"'
    assert f"kindreflex_http_requests_total{{{line}}} 1.0" in metrics
    assert 'method="OTHER"' in metrics
    assert "BREW" not in metrics


#: a call with every kind of prefetch resource (FULL_PREFETCH), so that every field can be spoiled
VALID_CALL = hook_body(data=FULL_PREFETCH, hookInstance="9b1deb4d-3b7d-4bad-9bdd-2b0d7b3dcb6d")


@settings(SPOILED_INPUT, max_examples=400)
@given(where=st.sampled_from(paths(VALID_CALL)), data=st.data())
def test_any_field_of_a_hook_call_with_any_json_gets_a_card_or_a_4xx_never_a_500(
    cds: Cds, where: tuple[Any, ...], data: st.DataObject
) -> None:
    body = replaced(VALID_CALL, where, data.draw(ANY_JSON))
    sent = json.dumps(body).encode()
    response = cds.call(body=sent, headers={"Content-Type": "application/json"})
    assert response.status_code in (200, 400), response.text
    answer = response.json()
    assert ("cards" in answer) if response.status_code == 200 else answer["reason"]


# --- feedback ----------------------------------------------------------------------------


def feedback_call(cds: Cds, items: list[dict[str, Any]]) -> Any:
    path = f"/cds-services/{ENCOUNTER_START}/feedback"
    token = cds.ehr.token(PUBLIC_URL + path)
    return cds.client.post(
        path, json={"feedback": items}, headers={"Authorization": f"Bearer {token}"}
    )


#: The system of the override reasons the cards offer (the guide's CodeSystem).
OVERRIDE_REASON_SYSTEM = terminology.code_system_url("cds-override-reason")
VALID_FEEDBACK = {
    "feedback": [
        {
            "card": "0b8f1c7e-5d55-4a8e-9a45-3f4b7a1e2c10",
            "outcome": "overridden",
            "overrideReason": {
                "reason": {"system": OVERRIDE_REASON_SYSTEM, "code": "no-children"},
                "userComment": "c",
            },
            "outcomeTimestamp": "2026-11-23T10:15:00+01:00",
        }
    ]
}


@settings(SPOILED_INPUT, max_examples=200)
@given(where=st.sampled_from(paths(VALID_FEEDBACK)), data=st.data())
def test_feedback_with_any_json_in_any_field_is_stored_or_refused_never_a_500(
    cds: Cds, where: tuple[Any, ...], data: st.DataObject
) -> None:
    body = replaced(VALID_FEEDBACK, where, data.draw(ANY_JSON))
    path = f"/cds-services/{ENCOUNTER_START}/feedback"
    token = cds.ehr.token(PUBLIC_URL + path)
    sent = json.dumps(body).encode()  # an infinity drawn goes as `Infinity`, as an EHR may
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    response = cds.client.post(path, content=sent, headers=headers)
    assert response.status_code in (200, 400), response.text
    assert response.status_code == 200 or response.json()["reason"]


def test_feedback_is_stored_once_per_outcome(cds: Cds) -> None:
    card = only_card(cds.call())
    override = card["overrideReasons"][2]
    assert override["system"] == terminology.code_system_url("cds-override-reason")
    items = [
        {
            "card": card["uuid"],
            "outcome": "overridden",
            "overrideReason": {"reason": override, "userComment": "named the son Jonas"},
            "outcomeTimestamp": "2026-11-23T10:15:00+01:00",
        },
        {
            "card": str(uuid.uuid4()),
            "outcome": "accepted",
            "outcomeTimestamp": "2026-11-23T10:16:00Z",
        },
    ]
    assert feedback_call(cds, items).status_code == 200
    assert feedback_call(cds, items).status_code == 200  # a client retry
    with cds.database.session() as session:
        rows = session.scalars(select(CdsFeedback).order_by(CdsFeedback.outcome_at)).all()
        assert [(r.card_uuid, r.outcome, r.override_code) for r in rows] == [
            (card["uuid"], "overridden", "no-children"),
            (items[1]["card"], "accepted", None),
        ]
        assert rows[0].issuer == cds.ehr.issuer
        assert rows[0].override_system == override["system"]
        assert rows[0].outcome_at.hour == 9  # stored in UTC
        assert "Jonas" not in str([vars(r) for r in rows])  # free text is never kept


def test_feedback_may_name_the_service_it_is_about_as_its_aud(cds: Cds) -> None:
    """CDS Hooks 2.0 says what ``aud`` is for discovery and service calls, not for
    feedback: an EHR may name the service the feedback is about (it got 401 before). No
    other URL will do, and the hook call's own JWT is not good for its feedback too."""
    item = {
        "card": str(uuid.uuid4()),
        "outcome": "accepted",
        "outcomeTimestamp": "2026-11-23T10:16:00Z",
    }
    path = f"/cds-services/{ENCOUNTER_START}/feedback"

    def feedback_with(token: str) -> Any:
        headers = {"Authorization": f"Bearer {token}"}
        return cds.client.post(path, json={"feedback": [item]}, headers=headers)

    assert feedback_with(cds.ehr.token(AUD)).status_code == 200
    for elsewhere in (
        f"{PUBLIC_URL}/cds-services",
        f"{PUBLIC_URL}/cds-services/kindreflex-patient-view",
    ):
        refused = feedback_with(cds.ehr.token(elsewhere))
        assert refused.status_code == 401, elsewhere
        assert "aud must be the URL called" in refused.json()["reason"]
    used = cds.ehr.token(AUD)
    assert cds.call(token=used).status_code == 200
    replayed = feedback_with(used)
    assert replayed.status_code == 401
    assert "already used" in replayed.json()["reason"]
    assert cds.count(CdsFeedback) == 1


def test_feedback_on_a_card_of_a_hook_turned_off_since_is_stored(cds: Cds) -> None:
    """Found by review: a 404, which an EHR does not send again; the card's outcome was
    lost to the figures. A service id that was never ours is still a 404."""
    card = only_card(cds.call())
    cds.configure(tenant_config(cds.ehr, HookSettings(enabled=["patient-view"])))
    item = {"card": card["uuid"], "outcome": "accepted", "outcomeTimestamp": "2026-11-23T10:16:00Z"}

    assert feedback_call(cds, [item]).status_code == 200
    assert cds.count(CdsFeedback) == 1
    path = "/cds-services/kindreflex-nothing/feedback"
    token = cds.ehr.token(PUBLIC_URL + path)
    unknown = cds.client.post(
        path, json={"feedback": [item]}, headers={"Authorization": f"Bearer {token}"}
    )
    assert (unknown.status_code, unknown.json()["error"]) == (404, "unknown_service")


def test_a_hospital_configuration_that_cannot_be_read_is_a_503_to_retry(cds: Cds) -> None:
    """Found by review: the database failing as a hospital's configuration is read (again)
    was a 500, which an EHR takes for a fault of ours, not a moment to retry. The fault is
    caused for real: the table is renamed under the running service."""
    # saved as another instance of the service would: this one has not read it yet
    TenantDirectory(cds.database, SecretBox(None)).save("az-gent", tenant_config(cds.ehr), "t")
    with cds.database.engine.begin() as connection:
        connection.exec_driver_sql("ALTER TABLE tenants RENAME TO tenants_away")
    try:
        answers = [cds.call(prefix="/t/az-gent"), cds.discover(prefix="/t/az-gent")]
    finally:
        with cds.database.engine.begin() as connection:
            connection.exec_driver_sql("ALTER TABLE tenants_away RENAME TO tenants")
    for answer in answers:
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"] == "unavailable"
    assert cds.call(prefix="/t/az-gent").status_code == 200  # read again once it answers


@pytest.mark.parametrize(
    "item",
    [
        {"card": "not-a-uuid", "outcome": "accepted", "outcomeTimestamp": "2026-11-23T10:00:00Z"},
        {"card": str(uuid.uuid4()), "outcome": "maybe", "outcomeTimestamp": "2026-11-23T10:00:00Z"},
        *(
            {
                "card": str(uuid.uuid4()),
                "outcome": "accepted",
                "outcomeTimestamp": moment,
            }
            for moment in (
                "0001-01-01T00:00:00+14:00",
                "9999-12-31T23:59:59-14:00",
                # CDS Hooks 2.0: a string, an RFC 3339 date-time. These were read as Unix
                # seconds, or milliseconds by their size, and as midnight
                1795428000,
                1795428000000,
                "1795428000",
                "2026-11-23",
            )
        ),
        *(
            {
                "card": str(uuid.uuid4()),
                "outcome": "overridden",
                "overrideReason": {"reason": reason},
                "outcomeTimestamp": "2026-11-23T10:00:00Z",
            }
            for reason in (
                {"code": "not-now\u0000"},
                {"code": "not-now", "system": "urn:" + "x" * 500},
                {"code": "bogus", "system": terminology.code_system_url("cds-override-reason")},
            )
        ),
    ],
    ids=[
        "card not a uuid",
        "unknown outcome",
        "before year 1 in UTC",
        "after year 9999 in UTC",
        "a number",
        "a number of milliseconds",
        "digits as text",
        "a date without a time",
        "NUL in the code",
        "system longer than its column",
        "a code our CodeSystem does not have",
    ],
)
def test_bad_feedback_is_refused_and_nothing_is_stored(cds: Cds, item: dict[str, Any]) -> None:
    """A 400, not a 503: the EHR retries a 503, and this data would never be stored."""
    good = {
        "card": str(uuid.uuid4()),
        "outcome": "accepted",
        "outcomeTimestamp": "2026-11-23T10:00:00Z",
    }
    response = feedback_call(cds, [good, item])
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_request"
    assert cds.count(CdsFeedback) == 0
    assert feedback_call(cds, []).status_code == 400


def test_aud_may_be_a_list_naming_the_url_called(cds: Cds) -> None:
    assert cds.call(token=cds.ehr.token(["https://other.example", AUD])).status_code == 200


def test_a_burst_of_calls_fetches_the_issuers_keys_once(cds: Cds) -> None:
    key = SigningKey.generate("burst-key", "ES384")
    with Counted(json.dumps({"keys": [key.public_jwk()]}).encode(), "/jwks.json") as jwks:
        issuer = Ehr(key, jwks.url, "https://ehr.burst.example/cds")
        cds.configure(tenant_config(issuer))

        async def burst() -> list[int]:
            transport = httpx.ASGITransport(app=cds.app)
            async with httpx.AsyncClient(transport=transport, base_url=PUBLIC_URL) as client:
                calls = [
                    client.post(
                        f"/cds-services/{ENCOUNTER_START}",
                        json=hook_body(),
                        headers={"Authorization": f"Bearer {issuer.token(AUD)}"},
                    )
                    for _ in range(20)
                ]
                return [r.status_code for r in await asyncio.gather(*calls)]

        assert asyncio.run(burst()) == [200] * 20
        assert jwks.requests == 1


def test_without_the_replay_ledger_the_call_is_refused_with_503_not_500(cds: Cds) -> None:
    """A real fault: the ledger's table is gone (as with a database that refuses writes)."""
    Base.metadata.tables[CdsSeenToken.__tablename__].drop(cds.database.engine)
    response = cds.call()
    assert response.status_code == 503, response.text
    assert response.json()["error"] == "unavailable"


def test_feedback_may_name_a_cards_reason_by_its_code_alone(cds: Cds) -> None:
    item = {
        "card": str(uuid.uuid4()),
        "outcome": "overridden",
        "overrideReason": {"reason": {"code": "not-now"}},
        "outcomeTimestamp": "2026-11-23T10:00:00Z",
    }
    assert feedback_call(cds, [item]).status_code == 200
    with cds.database.session() as session:
        assert session.scalars(select(CdsFeedback.override_code)).all() == ["not-now"]


def test_feedback_as_a_conforming_ehr_may_send_it_is_stored(cds: Cds) -> None:
    """CDS Hooks 2.0: "A CDS Client MAY augment the override reasons presented to the user
    with its own reasons"; outcomeTimestamp is "ISO timestamp in UTC". An EHR's own reason,
    a timestamp without an offset and a reason sent with an accepted card were each
    refused (400), and every item of the post with them (found by review)."""
    ehr_reason = {"system": "urn:oid:1.2.840.114350.1", "code": "9", "display": "Busy"}
    items = [
        {
            "card": str(uuid.uuid4()),
            "outcome": "overridden",
            "overrideReason": {"reason": ehr_reason},
            "outcomeTimestamp": "2026-11-23T10:00:00Z",
        },
        {
            "card": str(uuid.uuid4()),
            "outcome": "accepted",
            "overrideReason": {"reason": {"code": "not-now"}},
            "outcomeTimestamp": "2026-11-23T10:05:00",
        },
    ]
    assert feedback_call(cds, items).status_code == 200
    with cds.database.session() as session:
        rows = session.scalars(select(CdsFeedback).order_by(CdsFeedback.outcome_at)).all()
        stored = [(r.outcome, r.override_system, r.override_code) for r in rows]
        assert stored == [
            ("overridden", "urn:oid:1.2.840.114350.1", "9"),
            ("accepted", None, None),  # an accepted card has no reason to count
        ]
        assert rows[1].outcome_at.isoformat() == "2026-11-23T10:05:00+00:00"


def test_feedback_that_cannot_be_stored_gets_503_not_500(cds: Cds) -> None:
    Base.metadata.tables[CdsFeedback.__tablename__].drop(cds.database.engine)
    item = {
        "card": str(uuid.uuid4()),
        "outcome": "accepted",
        "outcomeTimestamp": "2026-11-23T10:00:00Z",
    }
    response = feedback_call(cds, [item])
    assert response.status_code == 503, response.text
    assert response.json()["error"] == "unavailable"


def recorded_cards(cds: Cds, expected: int) -> list[CdsCard]:
    """The cards recorded for monitoring; the write is off the response path, so poll."""
    deadline = time.monotonic() + 10
    while True:
        with cds.database.session() as session:
            rows = list(session.scalars(select(CdsCard).order_by(CdsCard.id)))
        if len(rows) >= expected or time.monotonic() > deadline:
            return rows
        time.sleep(0.02)  # polling a background write with a deadline, not synchronisation


def test_one_encounter_is_one_presentation_whether_or_not_the_call_names_its_server(
    cds: Cds,
) -> None:
    """Found by review: a call with ``fhirServer`` (as pydantic writes it) and one without
    (the registered base, as the admin typed it) keyed the same encounter apart, and the
    figures counted two presentations."""
    cds.configure(tenant_config(cds.ehr, fhir_base_url="https://EHR.az-gent.example:443/fhir"))
    named = hook_body(fhirServer="https://ehr.az-gent.example/fhir/")
    only_card(cds.call(body=named))
    only_card(cds.call())  # no fhirServer: the registered base

    first, second = recorded_cards(cds, 2)

    assert first.presentation == second.presentation


def test_each_returned_card_is_recorded_for_monitoring_without_patient_ids(cds: Cds) -> None:
    warning = prefetch(reasons=(a_code_of(HagueTrigger.SUBSTANCE_ABUSE),))
    first = only_card(cds.call(body=hook_body(data=warning)))
    second = only_card(cds.call(body=hook_body(data=warning)))  # the same presentation
    minor = prefetch(birth_date=f"{time.gmtime().tm_year - 10}-01-01")
    assert cds.call(body=hook_body(data=minor)).json() == {"cards": []}  # no card, no row
    rows = recorded_cards(cds, 2)
    assert [(r.card_uuid, r.indicator, r.reasons) for r in rows] == [
        (first["uuid"], "warning", ["substance-abuse"]),
        (second["uuid"], "warning", ["substance-abuse"]),
    ]
    assert rows[0].presentation == rows[1].presentation
    assert len(rows[0].presentation) == 64  # an HMAC-SHA-256 key, not the encounter or patient id
    assert ENCOUNTER_ID not in rows[0].presentation
    assert rows[0].service_id == ENCOUNTER_START


@pytest.mark.parametrize(
    ("service", "hook", "user"),
    [
        (PATIENT_VIEW, "patient-view", "RelatedPerson/proxy-1"),
        (PATIENT_VIEW, "patient-view", "Patient/p1"),
        (ENCOUNTER_START, "encounter-start", "Patient/p1"),
    ],
)
def test_no_kindreflex_card_for_a_patient_or_proxy_user(
    cds: Cds, service: str, hook: str, user: str
) -> None:
    """patient-view's ``userId`` may be a Patient or RelatedPerson, "when a patient or their
    proxy are viewing the record"; the service accepted them and never read ``userId``
    again, so a patient portal or a proxy (a RelatedPerson, possibly the partner the
    domestic-violence trigger is about) got "Doe de Kindreflex — aanleiding: open
    verontrusting, huiselijk geweld" and the SMART link to the nurses' app (review).
    The Kindreflex is the care staff's (least privilege): no card, none recorded.
    encounter-start names a Practitioner or PractitionerRole; a Patient there is answered
    the same, not refused."""
    data = prefetch(reasons=(a_code_of(HagueTrigger.DOMESTIC_VIOLENCE),), flags=(concern_flag(),))
    body = hook_body(hook, data=data)
    body["context"]["userId"] = user
    response = cds.call(service, body)
    assert response.status_code == 200, response.text
    cards = response.json()["cards"]
    shown = [(c["indicator"], c["summary"]) for c in cards]
    assert cards == [], f"{user} is shown {shown}"

    staff = hook_body(hook, data=data)
    staff["context"]["userId"] = "PractitionerRole/nurse-1"
    card = only_card(cds.call(service, staff))
    assert card["indicator"] == "warning"
    # recorded in the order they were answered: the staff's card alone, not the patient's
    assert [row.card_uuid for row in recorded_cards(cds, 1)] == [card["uuid"]]
    # nor is anything read for them from the EHR's FHIR server with the EHR's token
    unfetched = hook_body(
        hook,
        data={},
        fhirServer="https://ehr.az-gent.example/fhir",
        fhirAuthorization={"access_token": "t", "token_type": "Bearer", "expires_in": 60,
                           "scope": "patient/*.rs", "subject": "cds"},
    )  # fmt: skip
    unfetched["context"]["userId"] = user
    assert cds.call(service, unfetched).json() == {"cards": []}
    assert cds.fhir_requests() == 0


@pytest.mark.postgres
def test_a_configuration_read_waiting_on_the_database_does_not_stop_the_event_loop(
    ehr: Ehr,
) -> None:
    """The hospital's configuration is read again every few seconds. A real lock on its
    table (as a slow or hung database) holds that read: meanwhile the service answers
    other requests, and the hook call completes once the lock is gone."""
    with throwaway_postgres_database() as url:
        migrate.upgrade(url)
        database = Database(url)
        TenantDirectory(database, SecretBox(None)).save("default", tenant_config(ehr), "test")
        app = make_cds_app(url, database)  # a fresh instance: its first call reads the table
        locker = psycopg.connect(url.replace("postgresql+psycopg", "postgresql"))
        locker.execute("LOCK TABLE tenant_config_versions IN ACCESS EXCLUSIVE MODE")
        release = threading.Timer(20, locker.commit)  # if the loop were stopped, still end
        release.start()
        answered_while_locked: list[bool] = []

        async def scenario() -> int:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url=PUBLIC_URL) as client:
                path = f"/cds-services/{ENCOUNTER_START}"
                headers = {"Authorization": f"Bearer {ehr.token(PUBLIC_URL + path)}"}
                call = asyncio.create_task(client.post(path, json=hook_body(), headers=headers))
                await _until_a_query_waits_for_a_lock(url)
                health = await client.get("/healthz")
                answered_while_locked.append(health.status_code == 200 and not call.done())
                locker.commit()
                return (await call).status_code

        try:
            assert asyncio.run(scenario()) == 200
        finally:
            release.cancel()
            locker.close()
            database.dispose()
        assert answered_while_locked == [True]


async def _until_a_query_waits_for_a_lock(url: str) -> None:
    """Poll (bounded) until PostgreSQL shows a query of this database waiting for a lock."""
    name = make_url(url).database
    deadline = time.monotonic() + 10
    async with await psycopg.AsyncConnection.connect(
        url.replace("postgresql+psycopg", "postgresql"), autocommit=True
    ) as watcher:
        while time.monotonic() < deadline:
            waiting = await watcher.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                "AND wait_event_type = 'Lock'",
                (name,),
            )
            row = await waiting.fetchone()
            if row and row[0]:
                return
            await asyncio.sleep(0.01)
    raise AssertionError("the configuration read never waited for the lock")


@pytest.mark.postgres
def test_a_hook_call_is_answered_with_a_database_password_whose_spaces_are_percent_encoded(
    ehr: Ehr, caplog: pytest.LogCaptureFixture
) -> None:
    """README: spaces in the password are written %20. `db upgrade`, `serve` and /readyz
    worked, and every hook call was a 503: the CDS path's own connections got the password
    with a bare space, which libpq refused with an error quoting it (found by review). The
    test server trusts its clients: the password is sent, not checked."""
    password = "correct horse battery staple"
    caplog.set_level(logging.DEBUG)
    with throwaway_postgres_database() as plain:
        parsed = make_url(plain)
        url = (
            f"postgresql+psycopg://{parsed.username}:{quote(password, safe='')}"
            f"@{parsed.host}:{parsed.port or 5432}/{parsed.database}"
        )
        assert "%20" in url
        migrate.upgrade(url)
        database = Database(url)
        try:
            app = make_cds_app(url, database)
            with TestClient(app, base_url=PUBLIC_URL) as client:
                app.state.tenants.save("default", tenant_config(ehr), actor="test")
                assert client.get("/readyz", params={"check": "database"}).status_code == 200
                path = f"/cds-services/{ENCOUNTER_START}"
                headers = {"Authorization": f"Bearer {ehr.token(PUBLIC_URL + path)}"}
                response = client.post(path, json=hook_body(), headers=headers)
            assert response.status_code == 200, response.text
            with database.session() as session:  # its jti is in the replay ledger
                assert session.scalar(select(func.count()).select_from(CdsSeenToken)) == 1
        finally:
            database.dispose()
    assert password not in caplog.text


def test_prefetch_about_another_patient_or_encounter_is_not_read_as_this_ones(cds: Cds) -> None:
    """CDS Hooks: prefetched data is what the template asks for the call's context, and the
    service checks it. Before, prefetch an EHR got wrong (a cache, a chart switched
    meanwhile) was read as the context's: another patient's open concern, or another
    encounter's domestic-violence presentation, gave this patient a warning card, and a
    child's Patient record hid an adult's card. Such a key is now left out, as if not
    prefetched (here, with no FHIR server to ask, the card says less)."""
    elsewhere = {**concern_flag(), "subject": {"reference": "Patient/someone-else"}}
    concern = only_card(cds.call(body=hook_body(data=prefetch(flags=(elsewhere,)))))
    assert "open verontrusting" not in concern["summary"]
    violence = prefetch(reasons=(a_code_of(HagueTrigger.DOMESTIC_VIOLENCE),))
    violence["encounter"]["id"] = "enc-of-another-visit"
    assert "huiselijk geweld" not in only_card(cds.call(body=hook_body(data=violence)))["summary"]
    child = prefetch(birth_date=f"{time.gmtime().tm_year - 10}-01-01")
    child["patient"]["id"] = "kid-2"
    adult_card = only_card(cds.call(body=hook_body(data=child)))  # not the child's: no card
    assert adult_card["summary"].startswith("Doe de Kindreflex")
    # the same data about the context's patient and encounter is read as before, named
    # relative or absolute, versioned, or by an identifier only
    for subject in (
        {"reference": "https://ehr.example.be/fhir/Patient/p1"},
        {"reference": "Patient/p1/_history/3"},
        {"identifier": {"system": "https://www.ehealth.fgov.be/ssin", "value": "90050112345"}},
    ):
        ours = {**concern_flag(), "subject": subject}
        own = only_card(cds.call(body=hook_body(data=prefetch(flags=(ours,)))))
        assert "open verontrusting" in own["summary"]
    assert cds.fhir_requests() == 0
