"""The sandbox EHR as a CDS Hooks 2.0 client, against a CDS service test double."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
import pytest
from fastapi import FastAPI, Request

from sandbox.cds_client import resolve_template
from sandbox.config import SmartClient
from sandbox.runner import Sandbox
from tests.support.sandbox import SmartDance, pkce_pair, running_sandbox, serve_asgi

pytestmark = pytest.mark.fhirserver

PREFETCH = {
    "patient": "Patient/{{context.patientId}}",
    "encounter": "Encounter/{{context.encounterId}}",
    "conditions": "Condition?encounter={{context.encounterId}}",
    "children": "RelatedPerson?patient={{context.patientId}}",
    "concerns": "Flag?patient={{context.patientId}}&status=active",
    "user": "Practitioner/{{userPractitionerId}}",
    "unresolvable": "Observation?code={{context.medications}}",
}


@dataclass
class CdsDouble:
    """A test double of the *other* side: records what the EHR sends, answers one card."""

    base: str = ""
    calls: list[tuple[dict[str, str], dict[str, Any]]] = field(default_factory=list)
    discoveries: list[dict[str, str]] = field(default_factory=list)
    feedback: list[dict[str, Any]] = field(default_factory=list)

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/cds-services")
        async def discovery(request: Request) -> dict[str, Any]:
            self.discoveries.append(dict(request.headers))
            return {
                "services": [
                    {
                        "id": "kindreflex-encounter-start",
                        "hook": "encounter-start",
                        "title": "Kindreflex",
                        "description": "test double",
                        "prefetch": PREFETCH,
                    },
                    {
                        "id": "kindreflex-patient-view",
                        "hook": "patient-view",
                        "title": "Kindreflex",
                        "description": "test double",
                        "prefetch": {"patient": "Patient/{{context.patientId}}"},
                    },
                ]
            }

        @app.post("/cds-services/{service_id}")
        async def hook(service_id: str, request: Request) -> dict[str, Any]:
            body = await request.json()
            self.calls.append((dict(request.headers), body))
            return {
                "cards": [
                    {
                        "uuid": f"card-{len(self.calls)}",
                        "summary": "Doe de Kindreflex",
                        "indicator": "warning",
                        "detail": "**Partnergeweld** bij deze aanmelding.\n- stap 1\n- stap 2",
                        "source": {"label": "Kindreflex spoed"},
                        "links": [
                            {
                                "label": "Open Kindreflex",
                                "type": "smart",
                                "url": f"{self.base}/launch",
                                "appContext": '{"card":"x"}',
                            }
                        ],
                        "overrideReasons": [
                            {"code": "already-done", "display": "Kindreflex al gedaan"},
                            {"code": "no-children", "display": "Geen kinderen"},
                        ],
                    }
                ]
            }

        @app.post("/cds-services/{service_id}/feedback")
        async def feedback(service_id: str, request: Request) -> dict[str, Any]:
            body = await request.json()
            self.feedback.append({"service": service_id, "headers": dict(request.headers), **body})
            return {}

        return app


@pytest.fixture(scope="module")
def cds() -> Iterator[CdsDouble]:
    double = CdsDouble()
    with serve_asgi(double.app()) as base:
        double.base = base
        yield double


@pytest.fixture(scope="module")
def sandbox(cds: CdsDouble) -> Iterator[Sandbox]:
    client = SmartClient("cds-test-app", (f"{cds.base}/callback",))
    with running_sandbox(cds_base_url=cds.base, clients=(client,)) as sb:
        yield sb


def _ehr(sandbox: Sandbox, user: str = "nurse") -> httpx.Client:
    client = httpx.Client(base_url=sandbox.ehr_url, follow_redirects=True)
    client.post("/user", data={"user": user, "back": "/"})
    return client


def _verify_cds_jwt(sandbox: Sandbox, headers: dict[str, str], aud: str) -> dict[str, Any]:
    token = headers["authorization"].removeprefix("Bearer ")
    header = jwt.get_unverified_header(token)
    assert header["alg"] in ("ES384", "RS384")
    assert header["jku"] == sandbox.jwks_url
    keys = jwt.PyJWKSet.from_dict(httpx.get(header["jku"]).json())
    key = next(k for k in keys.keys if k.key_id == header["kid"])
    claims: dict[str, Any] = jwt.decode(
        token,
        key.key,
        algorithms=[header["alg"]],
        audience=aud,
        issuer=sandbox.ehr_url,
        options={"require": ["iss", "aud", "exp", "iat", "jti"]},
    )
    assert 0 < claims["exp"] - claims["iat"] <= 300
    assert claims["exp"] > time.time()
    return claims


def test_resolve_template() -> None:
    ctx = {
        "patientId": "p1",
        "encounterId": "e1",
        "userId": "Practitioner/u1",
        "draftOrders": {"ids": ["a", "b"]},
    }
    assert resolve_template("Patient/{{context.patientId}}", ctx) == "Patient/p1"
    assert (
        resolve_template("Condition?encounter={{ context.encounterId }}", ctx)
        == "Condition?encounter=e1"
    )
    assert resolve_template("Practitioner/{{userPractitionerId}}", ctx) == "Practitioner/u1"
    assert resolve_template("X?id={{context.draftOrders.ids}}", ctx) == "X?id=a,b"
    assert resolve_template("PractitionerRole/{{userPractitionerRoleId}}", ctx) is None
    assert resolve_template("Observation?code={{context.nothing}}", ctx) is None


def test_encounter_start_call_jwt_prefetch_and_card(sandbox: Sandbox, cds: CdsDouble) -> None:
    patient = sandbox.seeded.patient("karim-el-amrani")
    before = len(cds.calls)
    ehr = _ehr(sandbox)
    page = ehr.post(f"/patients/{patient.id}/triage")
    assert page.status_code == 200
    assert "Doe de Kindreflex" in page.text
    assert "<strong>Partnergeweld</strong>" in page.text  # detail rendered as markdown
    assert len(cds.calls) == before + 1
    headers, body = cds.calls[-1]

    url = f"{cds.base}/cds-services/kindreflex-encounter-start"
    claims = _verify_cds_jwt(sandbox, headers, url)
    assert claims["aud"] == url
    assert (
        _verify_cds_jwt(sandbox, cds.discoveries[-1], f"{cds.base}/cds-services")["jti"]
        != claims["jti"]
    )

    assert body["hook"] == "encounter-start"
    assert re.fullmatch(r"[0-9a-f-]{36}", body["hookInstance"])
    assert body["fhirServer"] == sandbox.fhir_base_url
    ctx = body["context"]
    assert ctx["patientId"] == patient.id
    assert ctx["userId"] == f"Practitioner/{sandbox.practitioner_id('nurse')}"
    assert ctx["encounterId"] == patient.arrived_encounter_id  # the waiting visit, now triaged

    pre = body["prefetch"]
    assert pre["patient"]["id"] == patient.id
    assert pre["encounter"]["status"] == "in-progress"
    assert pre["encounter"]["class"]["code"] == "EMER"
    assert pre["children"]["total"] == 1
    assert pre["concerns"]["total"] == 1
    assert pre["user"]["id"] == sandbox.practitioner_id("nurse")
    assert pre["conditions"]["resourceType"] == "Bundle"
    assert "unresolvable" not in pre
    assert sandbox.upstream_fhir_base_url not in str(pre)

    auth = body["fhirAuthorization"]
    assert auth["token_type"] == "Bearer"
    assert auth["subject"] == sandbox.config.cds_client_id
    assert 0 < auth["expires_in"] <= 300
    assert auth["scope"]
    r = httpx.get(
        f"{body['fhirServer']}/Flag",
        params={"patient": patient.id},
        headers={"Authorization": f"Bearer {auth['access_token']}"},
    )
    assert r.status_code == 200
    assert r.json()["total"] == 1


def test_jti_is_unique_per_call(sandbox: Sandbox, cds: CdsDouble) -> None:
    ehr = _ehr(sandbox)
    for key in ("an-peeters", "tom-wouters"):
        ehr.post(f"/patients/{sandbox.seeded.patient(key).id}/triage")
    jtis = [
        jwt.decode(h["authorization"][7:], options={"verify_signature": False})["jti"]
        for h, _ in cds.calls
    ]
    assert len(jtis) == len(set(jtis))


def test_smart_link_launches_in_an_iframe(sandbox: Sandbox, cds: CdsDouble) -> None:
    patient = sandbox.seeded.patient("jan-janssens")
    ehr = _ehr(sandbox, user="nurse")
    page = ehr.post(f"/patients/{patient.id}/triage")
    visit = str(page.url).rsplit("/", 1)[-1]
    launched = ehr.post(f"/visits/{visit}/cards/0/links/0")
    assert launched.status_code == 200
    m = re.search(r'<iframe[^>]+src="([^"]+)"', launched.text)
    assert m, launched.text
    src = httpx.URL(m.group(1).replace("&amp;", "&"))
    assert str(src).startswith(f"{cds.base}/launch?")
    assert src.params["iss"] == sandbox.fhir_base_url
    csp = launched.headers["content-security-policy"]
    assert f"frame-src 'self' {cds.base}" in csp or cds.base in csp.split("frame-src")[1]

    # the launch id carries patient, encounter, user and appContext into the token response
    app = SmartDance(sandbox, "cds-test-app", f"{cds.base}/callback")
    verifier, challenge = pkce_pair()
    consent = app.authorize(
        launch=src.params["launch"],
        challenge=challenge,
        scope="launch openid fhirUser patient/*.rs",
    )
    assert "Jan Janssens" in consent.text
    token = app.exchange(app.consent(consent)["code"][0], verifier)
    assert token.status == 200, token.body
    assert token.body["patient"] == patient.id
    assert token.body["encounter"] == patient.arrived_encounter_id
    assert token.body["appContext"] == '{"card":"x"}'


def test_override_posts_feedback(sandbox: Sandbox, cds: CdsDouble) -> None:
    patient = sandbox.seeded.patient("lotte-claes")
    ehr = _ehr(sandbox)
    page = ehr.post(f"/patients/{patient.id}/triage")
    visit = str(page.url).rsplit("/", 1)[-1]
    card_uuid = f"card-{len(cds.calls)}"
    after = ehr.post(f"/visits/{visit}/cards/0/override", data={"reason": "1", "comment": "nee"})
    assert after.status_code == 200
    fb = cds.feedback[-1]
    assert fb["service"] == "kindreflex-encounter-start"
    item = fb["feedback"][0]
    assert item["card"] == card_uuid
    assert item["outcome"] == "overridden"
    assert item["overrideReason"]["reason"]["code"] == "no-children"
    assert item["overrideReason"]["userComment"] == "nee"
    assert item["outcomeTimestamp"]
    _verify_cds_jwt(
        sandbox, fb["headers"], f"{cds.base}/cds-services/kindreflex-encounter-start/feedback"
    )
    assert f'data-card-uuid="{card_uuid}"' not in after.text  # the overridden card is dismissed


def test_patient_view_hook(sandbox: Sandbox, cds: CdsDouble) -> None:
    patient = sandbox.seeded.patient("noor-vermeulen")
    ehr = _ehr(sandbox, user="social-worker")
    page = ehr.post(f"/patients/{patient.id}/view")
    assert page.status_code == 200
    _, body = cds.calls[-1]
    assert body["hook"] == "patient-view"
    assert body["context"]["patientId"] == patient.id
    assert body["context"]["userId"] == f"Practitioner/{sandbox.practitioner_id('social-worker')}"
    assert body["prefetch"]["patient"]["birthDate"] == patient.birth_date


def test_a_second_triage_is_a_new_visit_with_the_same_trigger(
    sandbox: Sandbox, cds: CdsDouble
) -> None:
    patient = sandbox.seeded.patient("tom-wouters")
    ehr = _ehr(sandbox)
    ehr.post(f"/patients/{patient.id}/triage")
    first = cds.calls[-1][1]["prefetch"]["encounter"]
    ehr.post(f"/patients/{patient.id}/triage")
    second = cds.calls[-1][1]["prefetch"]["encounter"]
    assert second["id"] != first["id"]
    assert second["status"] == "in-progress"
    assert second["reasonCode"][0]["coding"] == first["reasonCode"][0]["coding"]
    assert second["reasonCode"][0]["coding"][0]["system"] == "http://snomed.info/sct"


def test_the_ehr_serves_its_pages_icon(sandbox: Sandbox) -> None:
    """A browser asks every page's icon at /favicon.ico: it was a 404, one more error in the
    console and the log on each page of the EHR."""
    icon = httpx.get(f"{sandbox.ehr_url}/favicon.ico", timeout=10)

    assert icon.status_code == 200
    assert icon.headers["content-type"] == "image/png"
    assert icon.content.startswith(b"\x89PNG\r\n\x1a\n")


def test_the_ehr_pages_speak_dutch(sandbox: Sandbox) -> None:
    """The EHR's pages are Dutch (lang nl-BE); their header, the index's CDS line, a visit's
    messages and a page gone were English."""
    ehr = _ehr(sandbox)
    patient = sandbox.seeded.patient("an-peeters")

    index = ehr.get("/")
    visit = ehr.post(f"/patients/{patient.id}/triage")
    feedback = ehr.post(visit.url.path + "/cards/99/override", data={"reason": "0"})
    gone = ehr.get("/visits/unknown")

    assert "SANDBOX (testomgeving)" in index.text
    assert "CDS-dienst:" in index.text
    assert "CDS-hook: encounter-start" in visit.text
    assert "Onbekende kaart." in feedback.text
    assert gone.status_code == 404
    assert "Onbekend EPD-scherm" in gone.text
    assert "Dit EPD-scherm bestaat niet (meer)." in gone.text
