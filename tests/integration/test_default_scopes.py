"""Every write of a Kindreflex case, in a hospital whose EHR enforces SMART scopes, with the
scopes the service asks for by default (``DEFAULT_SCOPES``).

The sandbox EHR's FHIR facade refuses (403) each request, and each entry of a transaction,
that the access token's SMART 2 scopes do not allow; the refused save then waits in the
outbox for a new sign-in (``waiting-authorisation``), which brings it no further. The other
integration tests sign in with ``user/*.cruds``, so none proved that a hospital which grants
what we ask for can record a case: a referral's status change (a PUT of the ServiceRequest)
was refused in the demo while the default lacked ``patient/ServiceRequest.u``.

Our app runs in-process (Starlette's TestClient) on SQLite and PostgreSQL, registered with
the sandbox as a confidential SMART client (our JWKS given to the sandbox at registration,
as an EHR administrator may paste it) whose registration keeps the default scopes. The
nurse and the social worker each launch it as the EHR does: ``/launch`` → the sandbox's
authorize page, Allow → ``/callback``, which exchanges the code for the token the facade
then checks on every request. Then, through our own routes, each kind of write a case
makes, each delivered and on the FHIR server:
the nurse's niet-pluis with a new child (RelatedPerson, Observations, Flag, Provenance,
AuditEvent), her second save renaming that child (an update of the RelatedPerson), the
social worker's step 4 and step 6 referral to the VK (a ServiceRequest and the partner's
Organization: laid over as the partner directory says it where the EHR grants its update,
else created conditionally and left as it is, an EHR that grants no such update being a
third set of grants), the referral's new status (an update of the ServiceRequest with
If-Match), and the case's closing (an update of the Flag).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select

from sandbox.config import DEFAULT_APP_SCOPE, SmartClient
from sandbox.runner import Sandbox
from service.admin import partners_io
from service.app import create_app
from service.db.base import Database
from service.db.models import AppSession, OutboxEntry
from service.fhir import terminology
from service.keys import JWKS_PATH
from service.outbox import DeliveryState
from service.settings import load_settings
from service.tenant_config import (
    DEFAULT_SCOPES,
    EhrRegistration,
    TenantConfiguration,
    default_partners,
)
from smart_app.session import CSRF_HEADER, SESSION_COOKIE, cookie_name
from tests.support.casework import HandedOffCase, patient_at_triage
from tests.support.pages import Page, recorded_rows
from tests.support.sandbox import consent, running_sandbox
from tests.support.triage import written_by_kindreflex
from tests.support.write_path import search

pytestmark = pytest.mark.fhirserver

APP = "https://testserver"


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with running_sandbox() as sb:
        yield sb


#: An EHR that grants no wildcard: the rights of the defaults, type by type, and no more
#: (SMART 2: the scopes granted "may differ from the scopes requested … often true when
#: dealing with wildcard FHIR Resource scope requests"). Such an EHR was refused (review).
PER_TYPE = (
    "launch openid fhirUser offline_access patient/Patient.rs patient/Encounter.rs "
    "patient/Condition.rs patient/Observation.crs patient/RelatedPerson.crus "
    "patient/Flag.crus patient/ServiceRequest.crus patient/Provenance.crs "
    "patient/AuditEvent.c user/Organization.crus user/Practitioner.rs"
)
#: The same, but an EHR that lets no app update its Organizations (master data): the
#: update is an optional right (``service.scopes.OPTIONAL_RIGHTS``); refused, such an EHR's
#: every launch was (review).
NO_ORGANIZATION_UPDATE = PER_TYPE.replace("user/Organization.crus", "user/Organization.crs")
GRANTS = {
    "wildcards": DEFAULT_APP_SCOPE,
    "type-by-type": PER_TYPE,
    "no-organization-update": NO_ORGANIZATION_UPDATE,
}


@pytest.fixture(params=sorted(GRANTS))
def ehr_grants(request: pytest.FixtureRequest) -> str:
    """What the EHR allows our client: all it asks for, the same rights type by type, or
    those but the update of an Organization."""
    return GRANTS[request.param]


@pytest.fixture
def app(database: Database, database_url: str, sandbox: Sandbox, ehr_grants: str) -> FastAPI:
    """Our app, registered with the sandbox under a client id of its own; the hospital's
    registration names no scopes, so a launch asks for the default."""
    settings = load_settings(environment="test", database_url=database_url, public_url=APP)
    app = create_app(settings, database)
    client_id = f"kindreflex-{uuid.uuid4().hex[:8]}"
    jwks = TestClient(app, base_url=APP).get(JWKS_PATH).json()
    client = SmartClient(client_id, (f"{APP}/callback",), jwks=jwks, allowed_scope=ehr_grants)
    sandbox.register_client(client)
    registration = EhrRegistration(
        id="sandbox", name="Sandbox", fhir_base_url=sandbox.fhir_base_url, client_id=client_id
    )
    app.state.tenants.save(
        "default", TenantConfiguration(name="Testziekenhuis", registrations=[registration]), "test"
    )
    return app


def _launched(
    app: FastAPI, sandbox: Sandbox, user: str, patient: str, encounter: str | None
) -> tuple[TestClient, str]:
    """A browser that launched our app from the EHR as ``user``, and the page it opened."""
    browser = TestClient(app, base_url=APP, follow_redirects=False)
    launch = sandbox.create_launch(patient=patient, encounter=encounter, user=user)
    started = browser.get("/launch", params={"iss": sandbox.fhir_base_url, "launch": launch})
    assert started.status_code == 302, started.text
    back = consent(sandbox, httpx.get(started.headers["location"]), user=user)
    opened = browser.get(back)
    assert opened.status_code == 303, opened.text
    page = str(opened.headers["location"]).removeprefix(APP)
    return browser, page.partition("?")[0]  # the page, without the launch it names


def _session(app: FastAPI, browser: TestClient) -> AppSession:
    """The session the launch left in the browser (its cookie)."""
    name = cookie_name(SESSION_COOKIE, app.state.settings)  # __Host- on https
    session: AppSession | None = app.state.sessions.of_browser(browser.cookies[name], None)
    assert session is not None
    return session


def _granted(app: FastAPI, sandbox: Sandbox, browser: TestClient) -> set[str]:
    """The scopes of the access token the launch left in the browser's session."""
    token = app.state.session_tokens.access_token(_session(app, browser).id)
    grant = sandbox.auth.check_access_token(token)
    assert grant is not None
    return set(grant.scope.split())


def _as_the_ehr_grants(granted: set[str], ehr_grants: str) -> None:
    """The launch took the grant: what was asked for, or its rights type by type."""
    if ehr_grants == DEFAULT_APP_SCOPE:
        assert granted == set(DEFAULT_SCOPES.split())
    else:
        assert "patient/Observation.c" in granted
        assert not [scope for scope in granted if "*" in scope]


def _latest_save(database: Database, kind: str) -> OutboxEntry:
    with database.session() as session:
        entry = session.scalars(
            select(OutboxEntry).where(OutboxEntry.kind == kind).order_by(OutboxEntry.id.desc())
        ).first()
        assert entry is not None
        return entry


def _delivered(database: Database, kind: str) -> None:
    """The latest save of ``kind`` was delivered: its outbox entry neither waits for a new
    sign-in (the facade's 403) nor failed."""
    entry = _latest_save(database, kind)
    assert entry.state == DeliveryState.DELIVERED, (entry.state, entry.last_error)


def _audited(sandbox: Sandbox, patient_ref: str) -> set[str]:
    """What the AuditEvents of the patient on the FHIR server say was done (login, create…)."""
    events = search(sandbox.upstream_fhir_base_url, "AuditEvent", entity=patient_ref, _count="200")
    return {coding["code"] for e in events for coding in e.get("subtype", [])}


def _vk_as_written_long_ago(upstream: str) -> dict[str, Any]:
    """The VK's Organization on the FHIR server as an earlier referral wrote it, under a
    name the partner directory no longer gives it (the module's first run creates it)."""
    partner = f"{terminology.identifier_system('partner')}|vk-oost-vlaanderen"
    found = search(upstream, "Organization", identifier=partner)
    (vk,) = [e for e in default_partners().entries if e.id == "vk-oost-vlaanderen"]
    written = {**partners_io.organization(vk), "name": "VK Oost-Vlaanderen (old name)"}
    if found:
        url = f"{upstream}/Organization/{found[0]['id']}"
        answer = httpx.put(url, json={**written, "id": found[0]["id"]}, timeout=10)
    else:
        answer = httpx.post(f"{upstream}/Organization", json=written, timeout=10)
    assert answer.status_code in (200, 201), answer.text
    result: dict[str, Any] = answer.json()
    return result


def _triage_form(page: Page, **fields: str) -> dict[str, Any]:
    return {
        "csrf_token": page.csrf,
        "page_id": page.value("page_id"),
        "patient_name": page.value("patient_name"),
        **fields,
    }


def test_a_whole_case_is_recorded_with_the_default_scopes(
    app: FastAPI, database: Database, sandbox: Sandbox, ehr_grants: str
) -> None:
    upstream = sandbox.upstream_fhir_base_url
    patient_id, encounter_id = patient_at_triage(upstream)
    patient_ref = f"Patient/{patient_id}"
    nurse, opened = _launched(app, sandbox, "nurse", patient_id, encounter_id)
    assert opened == "/app/triage"
    _as_the_ehr_grants(_granted(app, sandbox, nurse), ehr_grants)

    # (1) The nurse's niet-pluis, with a child not yet in the record.
    page = Page(nurse.get("/app/triage"))
    (new_child,) = page.child_refs()
    saved = nurse.post(
        "/app/triage",
        data=_triage_form(
            page,
            **{
                "child-0-ref": new_child,
                "child-0-name": "Lina",
                "child-0-birth_date": "03/07/2019",
                "child-0-relationship": "NCHILD",
                "child-0-lives_with": "permanently",
            },
            assessment="niet-pluis",
            reasons="Letsels passen niet bij verhaal",
        ),
    )
    _delivered(database, "triage")
    assert 'data-save-status="delivered"' in saved.text
    written = written_by_kindreflex(upstream, patient_ref)
    assert {"RelatedPerson", "Observation", "Flag", "Provenance"} <= set(written)
    assert "create" in _audited(sandbox, patient_ref)

    # (2) Her next save renames the child: an update of the RelatedPerson.
    page = Page(nurse.get("/app/triage"))
    rows = recorded_rows(page)
    assert rows["child-0-ref"].startswith("RelatedPerson/")
    rows["child-0-name"] = "Lina Maria"
    renamed = nurse.post(
        "/app/triage",
        data=_triage_form(page, **rows, assessment="niet-pluis", reasons="Nog steeds zorgen"),
    )
    _delivered(database, "triage")
    assert 'data-save-status="delivered"' in renamed.text
    children = search(upstream, "RelatedPerson", patient=patient_ref)
    assert [(c["name"][0]["text"], c["meta"]["versionId"]) for c in children] == [
        ("Lina Maria", "2")
    ]
    assert "transaction" in _audited(sandbox, patient_ref)  # findings created, a child updated

    # (3) The social worker, launched from the patient's chart: step 4, then the referral.
    browser, opened = _launched(app, sandbox, "social-worker", patient_id, None)
    assert opened == "/social/patient"
    _as_the_ehr_grants(_granted(app, sandbox, browser), ehr_grants)
    csrf = _session(app, browser).csrf_token
    (listed,) = browser.get("/api/cases").json()["items"]
    assert listed["patient"] == patient_ref
    case = HandedOffCase(
        browser,
        {CSRF_HEADER: csrf},
        upstream,
        patient_ref,
        listed["id"],
        listed["row_version"],
        app,
        app.state.tenants.get("default"),
    )

    def delivered(answer: httpx.Response) -> int:
        """The change was delivered; the case's new row version."""
        assert answer.status_code == 200, answer.text
        _delivered(database, "social")
        assert answer.json()["status"] == "delivered"
        version: int = answer.json()["row_version"]
        return version

    version = delivered(case.decide("concerning-unwilling", case.row_version))
    outdated = _vk_as_written_long_ago(upstream)
    version = delivered(case.refer_to_vk(version))
    (referral,) = search(upstream, "ServiceRequest", subject=patient_ref)
    performer = referral["performer"][0]["reference"]
    assert performer == f"Organization/{outdated['id']}"
    facility = httpx.get(f"{upstream}/{performer}", timeout=10).json()
    if ehr_grants == NO_ORGANIZATION_UPDATE:  # created once, left as it is: not refused
        assert facility["name"] == outdated["name"]
        assert facility["meta"]["versionId"] == outdated["meta"]["versionId"]
    else:  # as the partner directory says it now
        assert facility["name"].startswith("Vertrouwenscentrum")

    # (4) The referral's new status: a PUT of the ServiceRequest with If-Match.
    version = delivered(case.send("referral", {"row_version": version, "status": "on-hold"}))
    (referral,) = search(upstream, "ServiceRequest", subject=patient_ref)
    assert referral["status"] == "on-hold"

    # (5) The case closed: an update of the Flag.
    delivered(case.send("close", {"row_version": version, "reason": "referred"}))
    (flag,) = search(upstream, "Flag", patient=patient_ref)
    assert flag["status"] == "inactive"

    # Nothing the facade refused, the sign-ins' and reads' AuditEvents included (queued for
    # the outbox worker: one cycle of it here).
    app.state.outbox.run_once(limit=100)
    with database.session() as session:
        states = set(session.scalars(select(OutboxEntry.state)))
    assert states == {DeliveryState.DELIVERED}
    ours = app.state.tenants.get("default").config.registrations[0].client_id
    refused = [r for r in sandbox.fhir_requests if r.client_id == ours and r.status == 403]
    assert refused == []
