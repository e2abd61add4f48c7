"""Cases for the social service's tests: a concern on the worklist index (no FHIR server
needed), a real niet-pluis save at triage on a real FHIR server, the case page's forms, and
the social worker's JSON API on a handed-off case."""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import httpx
from fastapi.testclient import TestClient
from sqlalchemy import update

from service.db.base import Database, utcnow
from service.db.models import Concern
from service.local_time import local_today
from service.outbox import DeliveryState, NewEntry, enqueue
from service.protocol import (
    Child,
    ChildRelationship,
    ExpectedChild,
    LivesWith,
    SafetyAssessment,
    Step1Finding,
    Step2Finding,
)
from service.tenancy import TenantContext
from service.triage import TriageInput
from smart_app.session import AppUser, LaunchContext
from tests.support.sessions import UNUSED_FHIR, make_app, signed_in
from tests.support.workshop import WORKSHOP_FACTORS
from tests.support.write_path import make_tenant

NURSE = "Practitioner/nurse"
SOCIAL_WORKER = "Practitioner/sw-1"
COLLEAGUE = "Practitioner/sw-2"


def index_case(
    database: Database,
    tenant: TenantContext,
    patient: str,
    at: datetime,
    assigned_to: str | None = None,
    status: str = "open",
    follow_up_due: date | None = None,
    fhir_base_url: str = UNUSED_FHIR,
    children_born: tuple[date, ...] = (date(2019, 5, 1),),
) -> int:
    """A concern on the worklist index, as the triage save writes it (no FHIR server; the
    patient is on ``fhir_base_url``, the server of :func:`signed_in`'s sessions by default)."""
    with database.session() as session:
        row = Concern(
            tenant_id=tenant.id,
            fhir_base_url=fhir_base_url,
            patient_ref=patient,
            patient_display=None,
            flag_identifier=str(uuid.uuid4()),  # a patient may have had several concerns
            flagged_at=at,
            flagged_by="Practitioner/nurse-1",
            triggers=[],
            children_birth_dates=[born.isoformat() for born in children_born],
            last_step="step-2",
            assigned_to=assigned_to,
            status=status,
            follow_up_due=follow_up_due,
        )
        session.add(row)
        session.flush()
        return row.id


def assignment_of(database: Database, case_id: int) -> tuple[str | None, int]:
    """Who a case is assigned to, and its row version."""
    with database.session() as session:
        row = session.get(Concern, case_id)
        assert row is not None
        return row.assigned_to, row.row_version


def patient_at_triage(base_url: str) -> tuple[str, str]:
    """A new adult patient with an emergency encounter (each test run its own)."""
    patient = httpx.post(
        f"{base_url}/Patient",
        json={
            "resourceType": "Patient",
            "name": [{"given": ["Moeder"], "family": uuid.uuid4().hex[:6]}],
            "birthDate": "1990-04-12",
        },
        timeout=10,
    ).json()
    return patient["id"], new_visit(base_url, f"Patient/{patient['id']}")


def new_visit(base_url: str, patient: str) -> str:
    """A new emergency encounter of the patient; returns its id."""
    encounter = httpx.post(
        f"{base_url}/Encounter",
        json={
            "resourceType": "Encounter",
            "status": "in-progress",
            "class": {
                "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                "code": "EMER",
            },
            "subject": {"reference": patient},
        },
        timeout=10,
    ).json()
    return str(encounter["id"])


def save_triage(
    app: Any,
    tenant: TenantContext,
    base_url: str,
    *,
    returning: str | None = None,
    assessment: SafetyAssessment = SafetyAssessment.NIET_PLUIS,
    acute_danger: bool = False,
    who_helps: str | None = None,
    nurse: str = NURSE,
    nurse_name: str = "Sofie Maes",
    expecting: ExpectedChild | None = None,
    with_children: bool = True,
    grown_up_son: bool = False,
) -> str:
    """The nurse's save at triage, as the nurse screen makes it; returns the patient ref.

    ``nurse``, ``nurse_name``: the launch's user (a launch that named no one carries the
    reference as its name). ``expecting``: the patient expects a child; with
    ``with_children=False`` the patient cares for no child (a concern about an unborn one);
    ``grown_up_son``: beside the two young children, a son of 26 ("Son").

    ``returning``: the patient (``Patient/<id>``) of an earlier triage, at a new visit now
    (a new encounter), with ``assessment`` (and ``acute_danger``, ``who_helps``) as step 2."""
    if returning is None:
        patient_id, encounter_id = patient_at_triage(base_url)
        earlier = utcnow() - timedelta(minutes=2)  # the triage came before the social service
        gauged = earlier + timedelta(seconds=40)
    else:
        patient_id, encounter_id = (
            returning.removeprefix("Patient/"),
            new_visit(base_url, returning),
        )
        earlier = gauged = utcnow()
    signed = signed_in(
        app,
        tenant,
        nurse,
        "nurse",
        fhir_base_url=base_url,
        patient_id=patient_id,
        encounter_id=encounter_id,
    )
    launch = LaunchContext(
        signed.session_id,
        tenant,
        "ehr",
        base_url,
        patient_id,
        encounter_id,
        AppUser(nurse, nurse_name, frozenset({"nurse"})),
        language="nl",
        app_context=None,
    )
    children: tuple[Child, ...] = (
        Child(
            f"urn:uuid:{uuid.uuid4()}",
            "Boy",
            date(2022, 11, 3),
            ChildRelationship.NATURAL_CHILD,
            LivesWith.PERMANENTLY,
        ),
        Child(
            f"urn:uuid:{uuid.uuid4()}",
            "Girl",
            date(2017, 6, 21),
            ChildRelationship.NATURAL_CHILD,
            LivesWith.PERMANENTLY,
        ),
    )
    if grown_up_son:
        son = Child(
            f"urn:uuid:{uuid.uuid4()}",
            "Son",
            date(2000, 2, 14),
            ChildRelationship.NATURAL_CHILD,
            LivesWith.NOT,
        )
        children = (*children, son)
    result = app.state.triage.record_triage(
        launch,
        TriageInput(
            step1=Step1Finding(
                recorded_by=nurse,
                recorded_at=earlier,
                children=children if with_children else (),
                expecting=expecting,
            ),
            step2=Step2Finding(
                recorded_by=nurse,
                recorded_at=gauged,
                assessment=assessment,
                acute_danger=acute_danger,
                who_helps=who_helps,
                reasons=()
                if assessment is SafetyAssessment.NO_CONCERN
                else ("New partner is irritated by the children.", "Often left home alone."),
            ),
        ),
    )
    assert result.status == "delivered"
    return f"Patient/{patient_id}"


def on_the_worklist(app: Any, tenant: TenantContext, base_url: str) -> tuple[TestClient, int]:
    """A social worker signed in on ``base_url`` (a browser that does not follow
    redirects) and the one case her worklist lists."""
    worker = signed_in(app, tenant, SOCIAL_WORKER, "social-worker", fhir_base_url=base_url)
    client = TestClient(app, follow_redirects=False, headers={"Cookie": worker.headers["Cookie"]})
    (case_id,) = listed_cases(client.get("/social").text)
    return client, case_id


@dataclass(frozen=True)
class TriagedCase:
    """A niet-pluis triage saved on a real FHIR server at the hospital ("default"): the
    app, the hospital, the patient, and the signed-in social worker's browser (it does not
    follow redirects) with the one case her worklist lists."""

    app: Any
    tenant: TenantContext
    patient: str
    client: TestClient
    id: int


def triaged_case(
    database_url: str, database: Database, base_url: str, **triage: Any
) -> TriagedCase:
    """A hospital on ``base_url``, the nurse's save at triage (:func:`save_triage` with
    ``triage``) and the case on the social worker's worklist."""
    tenant = make_tenant(database, "default", base_url)
    app = make_app(database_url, database)
    patient = save_triage(app, tenant, base_url, **triage)
    client, case_id = on_the_worklist(app, tenant, base_url)
    return TriagedCase(app, tenant, patient, client, case_id)


def listed_cases(worklist: str) -> list[int]:
    """The cases a worklist page links to (each link names the page's launch)."""
    found = re.findall(r'href="(?:/t/[a-z0-9-]+)?/social/cases/(\d+)\?s=[0-9a-f]{32}"', worklist)
    return [int(i) for i in found]


#: A step 4 form as a social worker fills it in: concerning, patient unwilling.
STEP_4_FORM = {
    "decision": "concerning-unwilling",
    "factor": ["partner-hostile-to-children", "children-left-alone", "asks-for-help"],
    "factor_text_partner-hostile-to-children": "New partner irritated by the children.",
    "consultation": ["colleague", "clb"],
    "discussed": "on",
    "patient_explanation": "She says they are fine alone for an hour.",
    "key_person": ["partner"],
    "team_members": "social worker ED\ndr. Janssens",
    "note": "Worries named; she stops the counselling.",
}
#: A step 6 form as a social worker fills it in: to the VK, without cooperation.
STEP_6_FORM = {
    "partner_id": "vk-oost-vlaanderen",
    "cooperation": "no",
    "informed": "yes",
    "contact_person": "An",
    "contact_channel": "phone",
    "follow_up_actions": "Tell the CLB who takes the next step.",
}

#: A referral's revocation as a social worker sends it (API body or form): with its reason.
REVOKED = {"status": "revoked", "note": "Made by mistake: the parket follows up."}


def hidden_field(html: str, form: str, name: str) -> str:
    """A hidden field of the form with id ``form``."""
    section = html[html.index(f'id="{form}"') :]
    found = re.search(rf'name="{name}" value="([^"]*)"', section)
    assert found is not None, f"{name} not in {form}"
    return found.group(1)


def post_form(
    client: TestClient,
    html: str,
    case_id: int,
    action: str,
    form: str,
    fields: Mapping[str, object],
    headers: Mapping[str, str] | None = None,
) -> httpx.Response:
    """Send ``fields`` with the form's CSRF token and row version, as the page would."""
    body = {
        "csrf_token": hidden_field(html, f"{form}-form", "csrf_token"),
        "row_version": hidden_field(html, f"{form}-form", "row_version"),
        **fields,
    }
    answer: httpx.Response = client.post(
        f"/social/cases/{case_id}/{action}", data=body, headers=headers
    )
    return answer


def case_page(client: TestClient, case_id: int) -> str:
    """The case page as the social worker's browser gets it now."""
    page: str = client.get(f"/social/cases/{case_id}").text
    return page


def saved_from_the_page(
    client: TestClient,
    page: str,
    case_id: int,
    action: str,
    form: str,
    fields: Mapping[str, object],
) -> str:
    """``fields`` sent with ``page``'s form (:func:`post_form`) and accepted (303): the
    case page after it."""
    saved = post_form(client, page, case_id, action, form, fields)
    assert saved.status_code == 303, saved.text
    return case_page(client, case_id)


def referred_today(client: TestClient, page: str, case_id: int, **fields: object) -> str:
    """Step 6 saved from ``page``: :data:`STEP_6_FORM` (to the VK) with ``fields``,
    contacted today; the case page after it."""
    referral = {**STEP_6_FORM, "contact_on": local_today().isoformat(), **fields}
    return saved_from_the_page(client, page, case_id, "step-6", "s6", referral)


def decided_and_referred(client: TestClient, case_id: int) -> str:
    """The team's decision (:data:`STEP_4_FORM`) and the referral to the VK, contacted
    today, saved from the case page: the case page after them."""
    page = case_page(client, case_id)
    decided = saved_from_the_page(client, page, case_id, "step-4", "s4", STEP_4_FORM)
    return referred_today(client, decided, case_id)


def error_summary(html: str, form: str) -> str:
    """The error summary at the head of form ``form``: announced and focusable."""
    start = html.index(f'id="{form}-error-summary"')
    opening = html[html.rindex("<div", 0, start) : html.index(">", start)]
    assert 'role="alert"' in opening
    assert 'tabindex="-1"' in opening
    assert "data-error-summary" in opening
    return html[start : html.index("</div>", start)]


def triage_waiting_for_sign_in(
    database: Database, tenant: TenantContext, base_url: str, patient: str, case_id: int
) -> int:
    """A nurse's triage save of ``patient`` whose session ended before delivery: it waits
    for a new launch (``Outbox.adopt_session``), as the case's latest save. Its id."""
    with database.session() as session:
        entry = enqueue(
            session,
            tenant.id,
            NewEntry(
                kind="triage",
                registration_id="ehr",
                fhir_base_url=base_url,
                session_id="ended",
                author="Practitioner/nurse-1",
                patient_ref=patient,
                bundle={"resourceType": "Bundle", "type": "transaction", "entry": []},
            ),
        )
        entry.state = DeliveryState.WAITING_AUTHORISATION
        session.flush()
        session.execute(update(Concern).where(Concern.id == case_id).values(outbox_id=entry.id))
        return entry.id


@dataclass(frozen=True)
class HandedOffCase:
    """A patient handed off at triage, as the case list shows it, and the social worker's
    API on that case."""

    client: TestClient
    headers: dict[str, str]
    base_url: str
    patient: str
    id: int
    row_version: int
    app: Any
    tenant: TenantContext

    def decide(self, decision: str, row_version: int) -> httpx.Response:
        """The team's step 4 decision, a colleague consulted and the worries discussed."""
        body = {
            "decision": decision,
            "consultations": ["colleague"],
            "discussed_with_patient": True,
        }
        return self.send("step-4", {"row_version": row_version, **body})

    def refer_to_vk(self, row_version: int, contacted_on: str | None = None) -> httpx.Response:
        """Step 6: the VK, without cooperation, the patient informed; called on a day."""
        body: dict[str, Any] = {
            "partner_id": "vk-oost-vlaanderen",
            "with_cooperation": False,
            "patient_informed": True,
        }
        if contacted_on is not None:
            body["contact"] = {"on": contacted_on, "person": "An", "channel": "phone"}
        return self.send("step-6", {"row_version": row_version, **body})

    def referred_after_an_unwilling_decision(self) -> httpx.Response:
        """Step 4 "concerning, unwilling" with the workshop's factors, then step 6 to the VK."""
        decided = self.send(
            "step-4",
            {
                "row_version": self.row_version,
                "decision": "concerning-unwilling",
                "factors": WORKSHOP_FACTORS,
                "consultations": ["colleague"],
                "discussed_with_patient": True,
            },
        )
        return self.refer_to_vk(decided.json()["row_version"])

    def send(self, action: str, body: dict[str, Any]) -> httpx.Response:
        """A change of the case: ``PUT …/referral``, else ``POST …/<action>``."""
        method = "PUT" if action == "referral" else "POST"
        answer: httpx.Response = self.client.request(
            method, f"/api/cases/{self.id}/{action}", headers=self.headers, json=body
        )
        return answer
