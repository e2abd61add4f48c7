"""The social worker's case pages (``smart_app.casefile``) on the real FHIR server process and
real PostgreSQL (and SQLite): who may open them, the forms of the steps the protocol allows
next, a refused save shown next to its field with the input kept, the conflict of a stale
form, CSRF, the FHIR server being down, and the printable referral with the VK's number."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import date, datetime, timedelta
from html import unescape
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from sandbox.fhir_server import FhirServer
from service import audit
from service.admin.config import validate_document
from service.db.base import Database, utcnow
from service.db.models import (
    AppSession,
    AuditRecord,
    Concern,
    OutboxEntry,
    TenantConfigVersion,
)
from service.fhir.client import FhirClient
from service.i18n import translate
from service.local_time import local_today
from service.protocol import (
    Child,
    ChildRelationship,
    ExpectedChild,
    LivesWith,
    PregnancyOf,
    SafetyAssessment,
    Step1Finding,
    Step2Finding,
)
from service.tenancy import SecretBox, TenantDirectory
from service.triage import TriageInput
from smart_app.casefile import referral_form
from smart_app.dates import shown_moment
from smart_app.session import AppUser, LaunchContext
from tests.support.casework import (
    COLLEAGUE,
    NURSE,
    REVOKED,
    SOCIAL_WORKER,
    STEP_4_FORM,
    STEP_6_FORM,
    case_page,
    error_summary,
    index_case,
    listed_cases,
    on_the_worklist,
    patient_at_triage,
    post_form,
    referred_today,
    save_triage,
    saved_from_the_page,
    triage_waiting_for_sign_in,
    triaged_case,
)
from tests.support.relay import SlowRelay
from tests.support.served import ServedJson
from tests.support.sessions import UNUSED_FHIR as FHIR
from tests.support.sessions import make_app, signed_in
from tests.support.validator import validate
from tests.support.write_path import (
    fhir_server,  # noqa: F401 - the module's FHIR server fixture
    make_tenant,
    search,
)


@contextmanager
def fhir_reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """What the app asks the FHIR server while in the block: "connect" for each client it
    opens, the resource type of each search and read. A spy: the real requests are made."""
    seen: list[str] = []
    connect, search, read = FhirClient.__init__, FhirClient.search, FhirClient.read

    def spied_connect(self: FhirClient, *args: Any, **kwargs: Any) -> None:
        seen.append("connect")
        connect(self, *args, **kwargs)

    def spied_search(self: FhirClient, resource_type: str, params: Mapping[str, str]) -> Any:
        seen.append(resource_type)
        return search(self, resource_type, params)

    def spied_read(self: FhirClient, resource_type: str, resource_id: str) -> Any:
        seen.append(f"{resource_type}/{resource_id}")
        return read(self, resource_type, resource_id)

    with monkeypatch.context() as patch:
        patch.setattr(FhirClient, "__init__", spied_connect)
        patch.setattr(FhirClient, "search", spied_search)
        patch.setattr(FhirClient, "read", spied_read)
        yield seen


def test_who_may_open_the_case_pages_and_what_a_missing_or_unreadable_case_shows(
    database_url: str, database: Database
) -> None:
    hospital = make_tenant(database, "default", FHIR)
    case_id = index_case(database, hospital, "Patient/1", utcnow())
    app = make_app(database_url, database)
    client = TestClient(app, follow_redirects=False)
    pages = [f"/social/cases/{case_id}", f"/social/cases/{case_id}/referral"]
    actions = ("step-4", "step-5", "step-6", "close", "referral-status")  # every form
    forms = [f"/social/cases/{case_id}/{a}" for a in actions]

    for url in pages:
        assert client.get(url).status_code == 401
    for url in forms:
        assert client.post(url, data={"row_version": "1"}).status_code == 401
    for role, user in (("nurse", "Practitioner/nurse-1"), ("admin", "Practitioner/admin")):
        headers = signed_in(app, hospital, user, role).headers  # type: ignore[arg-type]
        for url in pages:
            assert client.get(url, headers=headers).status_code == 403
        for url in forms:
            assert client.post(url, headers=headers, data={"row_version": "1"}).status_code == 403

    worker = signed_in(app, hospital, SOCIAL_WORKER, "social-worker").headers
    cookie_only = {"Cookie": worker["Cookie"]}
    # The FHIR server of this hospital does not answer: the page says so, offers no step.
    page = client.get(pages[0], headers=cookie_only)
    assert page.status_code == 200
    assert page.headers["cache-control"] == "no-store"
    assert "De FHIR-server antwoordt niet" in page.text
    assert 'id="s4-form"' not in page.text
    assert client.get(pages[1], headers=cookie_only).status_code == 404
    # After a save whose delivery waits (the outbox retries), the page says so.
    pending = client.get(pages[0], headers=cookie_only, params={"saved": "pending"})
    assert "de levering aan de FHIR-server loopt nog" in pending.text
    # A change without the session's CSRF token is refused before anything is read.
    for url in forms:
        assert client.post(url, headers=cookie_only, data={"row_version": "1"}).status_code == 403
    # A save while the FHIR server is down: nothing saved, the input shown again.
    down = client.post(
        forms[0],
        headers=worker,
        data={"row_version": "1", "decision": "acute-danger", "note": "Gesprek met oma."},
    )
    assert down.status_code == 503
    assert "er werd nog niets opgeslagen" in error_summary(down.text, "s4")
    assert down.text.count("er werd nog niets opgeslagen") == 1  # once: in the summary
    assert "Gesprek met oma." in down.text
    # Another hospital's social worker does not find this hospital's case.
    other = make_tenant(database, "other", FHIR)
    stranger = {"Cookie": signed_in(app, other, SOCIAL_WORKER, "social-worker").headers["Cookie"]}
    assert client.get(f"/t/other/social/cases/{case_id}", headers=stranger).status_code == 404
    missing = client.get("/social/cases/999999", headers=cookie_only)
    assert missing.status_code == 404
    assert "Dossier niet gevonden" in missing.text
    assert listed_cases(client.get("/social", headers=cookie_only).text).count(case_id) == 1


def test_a_case_refused_for_a_users_role_is_in_its_patients_audit_trail(
    database_url: str, database: Database
) -> None:
    """A data-protection officer answering the patient's access request must see who tried
    to open the case: the role check refused before any route's audit, and left no trace
    (found by review). On the case page, the referral summary and the API alike."""
    hospital = make_tenant(database, "default", FHIR)
    case_id = index_case(database, hospital, "Patient/1", utcnow())
    app = make_app(database_url, database)
    client = TestClient(app, follow_redirects=False)
    nurse = signed_in(app, hospital, "Practitioner/nurse-1", "nurse").headers
    asked = [f"/social/cases/{case_id}", f"/social/cases/{case_id}/referral"]
    asked.append(f"/api/cases/{case_id}")
    for url in asked:
        assert client.get(url, headers=nurse).status_code == 403
    for no_case in ("%C2%B2", "99999999999999999999", "0"):  # "²" is a digit to isdigit()
        assert client.get(f"/social/cases/{no_case}", headers=nurse).status_code == 403
    with database.session() as session:
        refused = session.scalars(select(AuditRecord).where(AuditRecord.outcome == "failure"))
        rows = [(r.actor, r.action, r.patient_ref) for r in refused]
    assert rows == [(f"{FHIR}/Practitioner/nurse-1", "read", "Patient/1")] * 3


def test_a_forms_address_opened_as_a_page_goes_to_the_page_of_that_form(
    database_url: str, database: Database
) -> None:
    """After a refused save the address bar shows the form's address; opened again (Enter,
    a restored tab, a bookmark) it answered FastAPI's raw JSON "Method Not Allowed" (found
    by review). A browser goes to the page that form belongs to; the API keeps its JSON."""
    hospital = make_tenant(database, "default", FHIR)
    make_tenant(database, "az-brugge", FHIR)
    case_id = index_case(database, hospital, "Patient/1", utcnow())
    client = TestClient(make_app(database_url, database), follow_redirects=False)
    browser = {"Accept": "text/html,application/xhtml+xml"}
    expected = {
        **{
            f"/social/cases/{case_id}/{form}": f"/social/cases/{case_id}"
            for form in ("step-4", "step-5", "step-6", "close", "referral-status", "claim")
        },
        "/admin/registrations": "/admin",
        "/t/az-brugge/admin/registrations/ehr/test": "/t/az-brugge/admin",
        "/t/az-brugge/admin/logout": "/t/az-brugge/admin",
    }
    for form, page in expected.items():
        answer = client.get(form, headers=browser)
        assert (answer.status_code, answer.headers.get("location")) == (303, page), form
    # the launch the form's address names stays the page's: not the browser's newest
    pinned = client.get(f"/social/cases/{case_id}/step-4?s=launch-a&x=1", headers=browser)
    assert pinned.headers["location"] == f"/social/cases/{case_id}?s=launch-a"
    assert client.head(f"/social/cases/{case_id}/step-4", headers=browser).status_code == 405
    api = client.get(f"/api/cases/{case_id}/claim", headers={"Accept": "application/json"})
    assert api.status_code == 405
    assert api.headers["content-type"] == "application/json"


def test_a_case_whose_save_waits_for_a_new_sign_in_says_how_to_send_it(
    database_url: str,
    database: Database,
    fhir_server: FhirServer,  # noqa: F811
) -> None:
    """The triage save that raised the concern waits for authorisation (its session ended
    before delivery): the Flag is not on the server, and the page says that a launch from
    the patient's chart sends it (``Outbox.adopt_session``), not only that it is on its way."""
    base_url = fhir_server.base_url
    hospital = make_tenant(database, "default", base_url)
    patient = f"Patient/{uuid.uuid4()}"
    case_id = index_case(database, hospital, patient, utcnow(), fhir_base_url=base_url)
    triage_waiting_for_sign_in(database, hospital, base_url, patient, case_id)
    app = make_app(database_url, database)
    worker = signed_in(app, hospital, SOCIAL_WORKER, "social-worker", fhir_base_url=base_url)

    page = TestClient(app).get(f"/social/cases/{case_id}", headers=worker.headers)

    assert page.status_code == 200
    assert "de levering wacht op een nieuwe aanmelding" in page.text
    assert "Open de Kindreflex vanuit het dossier van deze patiënt in het EPD" in page.text


def _niet_pluis(at: datetime) -> TriageInput:
    """A nurse's step 1 (one child) and niet-pluis step 2, recorded at ``at``."""
    child = Child(
        f"urn:uuid:{uuid.uuid4()}",
        "Boy",
        date(2022, 11, 3),
        ChildRelationship.NATURAL_CHILD,
        LivesWith.PERMANENTLY,
    )
    return TriageInput(
        step1=Step1Finding(recorded_by=NURSE, recorded_at=at, children=(child,)),
        step2=Step2Finding(
            recorded_by=NURSE,
            recorded_at=at + timedelta(seconds=40),
            assessment=SafetyAssessment.NIET_PLUIS,
            acute_danger=False,
            who_helps=None,
            reasons=("Often left home alone.",),
        ),
    )


@pytest.mark.fhirserver
def test_a_refused_niet_pluis_stays_listed_says_it_was_refused_and_a_new_save_continues_it(
    database_url: str,
    database: Database,
    fhir_server: FhirServer,  # noqa: F811
) -> None:
    """The triage save writes the worklist's row in its local transaction, before the FHIR
    server has the Flag. A server refusing that save for good (a 422, as one validating the
    guide's profiles answers: ``failed``, never sent again) left the case on the worklist,
    its page saying "De zorg staat nog niet op de FHIR-server (levering loopt)": delivery
    under way, steps possible after it. They never were (found by review). The worry stays
    listed (a nurse flagged a child), but the page, the form and the API say the server
    refused the nurse's save, when and why, that none of it is on the record, and what to
    do: a nurse records the finding again, and her new save continues this very case."""
    with SlowRelay(fhir_server.base_url) as relay:
        hospital = make_tenant(database, "default", relay.url)
        app = make_app(database_url, database)
        patient_id, encounter_id = patient_at_triage(fhir_server.base_url)
        nurse = signed_in(
            app,
            hospital,
            NURSE,
            "nurse",
            fhir_base_url=relay.url,
            patient_id=patient_id,
            encounter_id=encounter_id,
        )
        launch = LaunchContext(
            nurse.session_id,
            hospital,
            "ehr",
            relay.url,
            patient_id,
            encounter_id,
            AppUser(NURSE, "Sofie Maes", frozenset({"nurse"})),
            language="nl",
            app_context=None,
        )
        relay.refused = [422]  # the server refuses the save's transaction
        saved = app.state.triage.record_triage(launch, _niet_pluis(utcnow() - timedelta(minutes=2)))
        assert saved.status == "failed"  # the nurse is told, and her save is never sent again
        with database.session() as session:
            (case,) = session.scalars(select(Concern)).all()
            entry = session.get(OutboxEntry, case.outbox_id)
            assert entry is not None
            assert (entry.kind, entry.state) == ("triage", "failed")
            refused_at = shown_moment(entry.created_at)

        worker = signed_in(app, hospital, SOCIAL_WORKER, "social-worker", fhir_base_url=relay.url)
        client = TestClient(app, headers=worker.headers)
        page = client.get(f"/social/cases/{case.id}")
        worklist = client.get("/social")
        api = client.get(f"/api/cases/{case.id}")
        form = client.post(
            f"/social/cases/{case.id}/step-4",
            data={**STEP_4_FORM, "row_version": str(case.row_version)},
        )
        api_step = client.post(
            f"/api/cases/{case.id}/step-4",
            json={"row_version": case.row_version, "decision": "acute-danger"},
        )

        # the nurse records the finding again: her new save continues the same case
        again = app.state.triage.record_triage(launch, _niet_pluis(utcnow()))
        reopened = client.get(f"/social/cases/{case.id}")
        listed_again = client.get("/social")

    assert page.status_code == 200
    # the page must not say the concern is on its way to the server: it never will be
    assert "levering loopt" not in page.text
    assert f"Wat de verpleegkundige op {refused_at} opsloeg, heeft de FHIR-server geweigerd" in (
        page.text
    )
    assert "(reden: FHIR server answered 422: error/not-supported:)" in page.text
    assert "Niets daarvan staat in het patiëntendossier" in page.text
    assert "Een verpleegkundige opent de Kindreflex vanuit het dossier van deze patiënt" in (
        page.text
    )
    assert "`kindreflex outbox refused`" in page.text
    assert 'id="s4-form"' not in page.text
    assert "Geweigerd door het EPD" in page.text  # its delivery, as the worklist says it
    # the worry stays on the worklist, marked refused, not waiting
    assert listed_cases(worklist.text) == [case.id]
    assert "Geweigerd door het EPD" in worklist.text
    assert "Wacht op verzending" not in worklist.text
    # a form sent all the same (an older page) is refused without "not yet"
    assert form.status_code == 409
    refusal = "de FHIR-server heeft de melding van de verpleegkundige geweigerd"
    assert refusal in error_summary(form.text, "s4")
    # "what you can do is said above": the page's own message comes first
    assert form.text.index("heeft de FHIR-server geweigerd (reden:") < form.text.index(refusal)
    assert "nog niet op de FHIR-server" not in form.text
    assert "She says they are fine alone for an hour." in form.text  # her input kept
    for answer in (api, api_step):
        assert answer.status_code == 409
        message = answer.json()["detail"]["message"]
        assert "refused the nurse's save" in message
        assert "never sent again" in message
        assert "kindreflex outbox refused" in message
    assert "pending" not in api.text

    assert again.status == "delivered"
    assert reopened.status_code == 200
    assert "geweigerd" not in reopened.text
    assert 'id="s4-form"' in reopened.text  # the team's decision is next: the case is workable
    assert listed_cases(listed_again.text) == [case.id]  # the same case, not a second one
    assert "Geweigerd door het EPD" not in listed_again.text


@pytest.mark.fhirserver
@pytest.mark.parametrize(
    ("state", "reason", "said"),
    [
        ("conflict", "FHIR server answered 412", "geweigerd: het patiëntendossier was intussen"),
        ("failed", None, "heeft de FHIR-server geweigerd. Niets daarvan"),
    ],
)
def test_a_refused_niet_pluis_in_conflict_or_without_a_reason_says_so(
    database_url: str,
    database: Database,
    fhir_server: FhirServer,  # noqa: F811
    state: str,
    reason: str | None,
    said: str,
) -> None:
    """A triage save refused as a conflict (the record changed meanwhile) says so, not a
    technical reason; one whose reason was not recorded says it was refused, naming none.
    Neither says its delivery is under way."""
    base_url = fhir_server.base_url
    hospital = make_tenant(database, "default", base_url)
    patient = f"Patient/{uuid.uuid4()}"
    case_id = index_case(database, hospital, patient, utcnow(), fhir_base_url=base_url)
    entry_id = triage_waiting_for_sign_in(database, hospital, base_url, patient, case_id)
    with database.session() as session:
        entry = session.get(OutboxEntry, entry_id)
        assert entry is not None
        entry.state, entry.last_error = state, reason
        refused_at = shown_moment(entry.created_at)
    app = make_app(database_url, database)
    worker = signed_in(app, hospital, SOCIAL_WORKER, "social-worker", fhir_base_url=base_url)

    page = TestClient(app).get(f"/social/cases/{case_id}", headers=worker.headers)

    assert page.status_code == 200
    assert f"Wat de verpleegkundige op {refused_at} opsloeg, heeft de FHIR-server" in page.text
    assert said in page.text
    assert "reden:" not in page.text
    assert "levering" not in page.text
    assert "`kindreflex outbox refused`" in page.text


def test_a_case_of_another_ehr_shown_on_its_page_is_in_its_patients_trail(
    database_url: str, database: Database
) -> None:
    """The page of a case recorded through the hospital's other EHR says to open it there,
    and shows the worklist's row of it all the same (patient, children's ages, triggers).
    That read was audited with no patient at all: ``kindreflex audit --patient`` never
    found it. It is the patient's on the case's own server, not on the session's."""
    hospital = make_tenant(database, "default", FHIR)
    other_ehr = "http://127.0.0.1:9/ehr-b/fhir"  # never called: the session is not of it
    case_id = index_case(database, hospital, "Patient/7", utcnow(), fhir_base_url=other_ehr)
    app = make_app(database_url, database)
    worker = signed_in(app, hospital, SOCIAL_WORKER, "social-worker")

    page = TestClient(app).get(f"/social/cases/{case_id}", headers=worker.headers)

    assert page.status_code == 200
    assert "vastgelegd via een ander patiëntendossier (EPD)" in page.text
    assert "Patient/7" in page.text
    with database.session() as session:
        # as ``kindreflex audit --patient Patient/7`` asks: the server found from the trail
        query = audit.one_patient(session, audit.TrailQuery(hospital.id, patient_ref="Patient/7"))
        rows = [(r["actor"], r["action"], r["outcome"]) for r in audit.trail(session, query)]
    assert query.fhir_base_url == other_ehr
    # named as her own EHR names her: the Practitioner/sw-1 of the other EHR is someone else
    assert rows == [(f"{FHIR}/{SOCIAL_WORKER}", "read", "failure")]


def test_a_case_page_or_referral_of_no_case_of_this_hospital_is_a_refused_read_on_record(
    database_url: str, database: Database
) -> None:
    """Another hospital's case id, or none, typed into the address bar: the page says the
    case does not exist. That was not recorded at all (the API's 404 was): a social worker
    trying ids left no trace for the data-protection officer."""
    hospital = make_tenant(database, "default", FHIR)
    app = make_app(database_url, database)
    worker = signed_in(app, hospital, SOCIAL_WORKER, "social-worker")
    client = TestClient(app)

    pages = [
        client.get(f"/social/cases/{path}", headers=worker.headers)
        for path in ("999999", "999999/referral")
    ]
    form = {"row_version": "1", "progress": "improving"}
    pages.append(client.post("/social/cases/999999/step-5", headers=worker.headers, data=form))

    assert [page.status_code for page in pages] == [404, 404, 404]
    with database.session() as session:
        rows = session.execute(
            select(
                AuditRecord.actor, AuditRecord.action, AuditRecord.outcome, AuditRecord.patient_ref
            )
        ).all()
    worker_named = f"{FHIR}/{SOCIAL_WORKER}"
    assert [tuple(row) for row in rows] == [(worker_named, "read", "failure", None)] * 2 + [
        (worker_named, "update", "failure", None)
    ]


@pytest.mark.parametrize(
    "answer",
    [b"<html><body>Sign in to the proxy</body></html>", b'{"resourceType": "Patient"}'],
    ids=["a-proxy-page", "not-a-bundle"],
)
def test_a_fhir_answer_that_is_not_fhir_is_named_as_such_not_as_an_outage(
    database_url: str, database: Database, answer: bytes
) -> None:
    # A real HTTP server in place of the FHIR server: sekmet never answers this way.
    with ServedJson(answer, path="/fhir") as served:
        hospital = make_tenant(database, "default", served.url)
        case_id = index_case(database, hospital, "Patient/1", utcnow(), fhir_base_url=served.url)
        app = make_app(database_url, database)
        client = TestClient(app, follow_redirects=False)
        worker = signed_in(
            app, hospital, SOCIAL_WORKER, "social-worker", fhir_base_url=served.url
        ).headers

        page = client.get(f"/social/cases/{case_id}", headers={"Cookie": worker["Cookie"]})
        save = client.post(
            f"/social/cases/{case_id}/step-4",
            headers=worker,
            data={"row_version": "1", "decision": "acute-danger", "note": "Gesprek met oma."},
        )
        api = client.post(
            f"/api/cases/{case_id}/step-4",
            headers=worker,
            json={"row_version": 1, "decision": "acute-danger", "discussed_with_patient": True},
        )

    assert page.status_code == 200
    assert "een antwoord dat geen FHIR is" in page.text
    assert "antwoordt niet" not in page.text
    assert 'id="s4-form"' not in page.text
    assert save.status_code == 502
    assert "er werd niets opgeslagen" in save.text
    assert "Gesprek met oma." in save.text
    assert api.status_code == 502
    assert "not FHIR" in api.text
    assert client.get("/api/cases", headers=worker).json()["items"][0]["last_step"] == "step-2"


def test_from_the_worklist_through_step_4_and_step_6_to_the_printable_referral(
    database_url: str,
    database: Database,
    fhir_server: FhirServer,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base_url = fhir_server.base_url
    case = triaged_case(database_url, database, base_url)
    patient, client, case_id = case.patient, case.client, case.id

    assert patient in client.get("/social").text  # the launch carried no name
    page = client.get(f"/social/cases/{case_id}").text
    stored = httpx.get(f"{base_url}/{patient}", timeout=10).json()["name"][0]
    name = f"{stored['given'][0]} {stored['family']}"
    assert f"{name} (geboren 12/04/1990)" in page  # as the hospital's FHIR server names her
    assert name in client.get("/social").text  # the worklist learnt it when the case was opened
    assert "New partner is irritated by the children." in page  # the nurse's reasons
    assert 'id="s4-form"' in page
    assert 'id="s5-form"' not in page
    assert 'id="s6-form"' not in page
    assert 'id="close-form"' not in page

    # Without consultation the protocol refuses: the reason next to the field, input kept.
    refused = post_form(client, page, case_id, "step-4", "s4", {**STEP_4_FORM, "consultation": []})
    assert refused.status_code == 422
    assert 'id="s4-consultations-error"' in refused.text
    assert "She says they are fine alone for an hour." in refused.text
    assert 'value="partner-hostile-to-children" checked' in refused.text
    # The form's error summary links to the field; casefile.js moves the focus to it.
    summary = error_summary(refused.text, "s4")
    assert 'href="#s4-consultations"' in summary
    fieldset = '<fieldset id="s4-consultations" tabindex="-1"'
    assert f'{fieldset} aria-describedby="s4-consultations-error"' in refused.text
    assert "casefile.js" in refused.text

    # A team the API refuses (21 names): before, the message was lost (no such anchor on
    # the page) and the social worker saw the form again without a word.
    team = "\n".join(f"member {i}" for i in range(21))
    refused = post_form(
        client, page, case_id, "step-4", "s4", {**STEP_4_FORM, "team_members": team}
    )
    assert refused.status_code == 422
    assert 'href="#s4-team"' in error_summary(refused.text, "s4")
    assert 'id="s4-team-error"' in refused.text
    assert 'aria-describedby="s4-team-hint s4-team-error" aria-invalid="true"' in refused.text

    saved = post_form(client, page, case_id, "step-4", "s4", STEP_4_FORM)
    assert saved.status_code == 303, saved.text
    after_4 = client.get(saved.headers["location"]).text
    assert "Opgeslagen en naar het dossier van het ziekenhuis geschreven." in after_4
    assert 'id="s6-form"' in after_4
    # the team decided: step 4 stays offered for an acute danger found later, for that only
    assert 'value="concerning-unwilling"' not in _hidden_section(after_4, "s4-decision")
    assert 'value="acute-danger"' in _hidden_section(after_4, "s4-decision")
    assert "09 216 73 30" in after_4  # the VK of the directory, with its number
    assert "parket" not in _hidden_section(after_4, "s6-partner").lower()  # no acute danger

    # A second social worker's form from before the save: the conflict, nothing overwritten.
    stale = post_form(client, page, case_id, "step-4", "s4", {**STEP_4_FORM, "decision": "safe"})
    assert stale.status_code == 409
    assert "Er werd niets overschreven" in stale.text
    step_system = "https://kindreflex-ed.be/fhir/CodeSystem/kindreflex-step"
    assert len(search(base_url, "Observation", subject=patient, code=f"{step_system}|step-4")) == 1

    contact = {"contact_on": utcnow().date().isoformat()}
    referred = post_form(client, after_4, case_id, "step-6", "s6", {**STEP_6_FORM, **contact})
    assert referred.status_code == 303, referred.text
    (request,) = search(base_url, "ServiceRequest", subject=patient)
    assert validate(request) == []
    with fhir_reads(monkeypatch) as asked:
        after_6 = client.get(referred.headers["location"]).text
    # one connection, three searches for the case and one for its referrals with the facility
    assert asked == ["connect", "Flag", "Patient", "Observation", "ServiceRequest"]
    assert "Vertrouwenscentrum Kindermishandeling Oost-Vlaanderen" in after_6
    assert 'id="close-form"' in after_6
    assert f'href="/social/cases/{case_id}/referral?s=' in after_6

    summary = client.get(f"/social/cases/{case_id}/referral")
    assert summary.status_code == 200
    assert summary.headers["cache-control"] == "no-store"
    assert "Vertrouwenscentrum Kindermishandeling Oost-Vlaanderen" in summary.text
    assert f"{name} (geboren 12/04/1990)" in summary.text
    assert 'href="tel:092167330"' in summary.text
    assert "New partner irritated by the children." in summary.text
    assert "Tell the CLB who takes the next step." in summary.text
    assert "she stops the counselling" not in summary.text  # the team's notes stay home
    assert "data-acute-danger" not in summary.text  # a routine referral, not urgent
    # who refers, and the contact already made, for the facility's call (found by review:
    # the sheet said neither), and the children with their birth dates, to find them
    referred_by = summary.text[summary.text.index('id="by-heading"') :]
    assert referred_by.startswith('id="by-heading">Verwezen door</h2>')
    assert f"<p>{SOCIAL_WORKER}, Ziekenhuis DEFAULT · <time" in referred_by
    assert " · An · " in summary.text  # the contact with the facility: the day, whom, how
    assert re.search(r"\(\d{2}/\d{2}/\d{4}, \d+ (jaar|maanden)\)</li>", summary.text)

    form, referral_id = referral_form(request["id"]), {"referral_id": request["id"]}
    paused = post_form(
        client, after_6, case_id, "referral-status", form, {**referral_id, "status": "on-hold"}
    )
    assert paused.status_code == 303, paused.text
    after_6 = client.get(f"/social/cases/{case_id}").text
    assert "De verwijzing is nu: gepauzeerd." in after_6
    (request,) = search(base_url, "ServiceRequest", subject=patient)
    assert request["status"] == "on-hold"
    assert validate(request) == []

    closed = post_form(client, after_6, case_id, "close", "close", {"reason": "other"})
    assert closed.status_code == 422
    assert 'id="close-reason-text-error"' in closed.text
    done = post_form(client, after_6, case_id, "close", "close", {"reason": "referred"})
    assert done.status_code == 303
    (flag,) = search(base_url, "Flag", subject=patient)
    assert flag["status"] == "inactive"
    closed_page = client.get(f"/social/cases/{case_id}").text
    assert f'id="{form}-form"' in closed_page  # the facility's work goes on
    with database.session() as session:
        reads = session.scalars(
            select(AuditRecord.actor).where(
                AuditRecord.patient_ref == patient, AuditRecord.action == "read"
            )
        ).all()
    assert f"{base_url}/{SOCIAL_WORKER}" in reads  # opening the case is an audited read
    assert 'id="close-form"' not in closed_page
    assert 'id="s6-form"' not in closed_page


def test_a_concern_about_an_expected_child_opens_and_its_referral_names_that_child(
    database_url: str,
    database: Database,
    fhir_server: FhirServer,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A pregnant patient who cares for no child, and the nurse's niet-pluis (she drinks
    during the pregnancy): the social worker opens the case and takes steps 4 and 6. Before,
    the step 1 came back from the server as "no children, nothing expected" (the pregnancy
    was an Observation nothing linked to it), the replay refused the step 2, and the case
    page said the FHIR server refused to read the case, with no step 4 form; a referral
    would have said ``"supportingInfo": []``."""
    base_url = fhir_server.base_url
    due = local_today() + timedelta(days=90)
    expecting = ExpectedChild(PregnancyOf.PATIENT, due)
    case = triaged_case(database_url, database, base_url, expecting=expecting, with_children=False)
    patient, client, case_id = case.patient, case.client, case.id

    with fhir_reads(monkeypatch) as asked:
        page = client.get(f"/social/cases/{case_id}")
    assert page.status_code == 200
    assert translate("nl", "casefile.unreadable.fhir-refused") not in page.text
    assert 'id="s4-form"' in page.text
    assert asked.count("Observation") == 1  # the pregnancy comes with the step findings
    # what the case is about: the page says it, in the about section and step 1's history
    expected = f"<dt>Verwacht kind</dt><dd>De cliënt is zwanger (uitgerekend op {due:%d/%m/%Y})"
    assert page.text.count(expected) == 2
    record_type = "https://kindreflex-ed.be/fhir/CodeSystem/record-type"
    step_system = "https://kindreflex-ed.be/fhir/CodeSystem/kindreflex-step"
    (pregnancy,) = search(base_url, "Observation", subject=patient, code=f"{record_type}|")
    (step_1,) = search(base_url, "Observation", subject=patient, code=f"{step_system}|step-1")
    expected_child = f"Observation/{pregnancy['id']}"
    assert step_1["hasMember"] == [{"reference": expected_child}]  # the transaction's link
    assert validate(step_1) == []
    assert validate(pregnancy) == []  # the expecting-child Observation, as the server holds it
    _refer_from_the_page(client, page.text, case_id)
    (request,) = search(base_url, "ServiceRequest", subject=patient)
    assert request["supportingInfo"] == [{"reference": expected_child}]
    assert validate(request) == []


def test_a_referral_about_all_children_names_the_minors_and_the_expected_child_not_an_adult(
    database_url: str,
    database: Database,
    fhir_server: FhirServer,  # noqa: F811
) -> None:
    """A patient with two young children, a son of 26 and a pregnancy: the referral the
    social worker makes from the case page (about all children) names the young children
    and the expected child, and the printed referral lists the same. Before, it named the
    son too (the Kindreflex concerns minors) and left the unborn child out because born
    children existed; the printed sheet listed every child of the case."""
    base_url = fhir_server.base_url
    due = local_today() + timedelta(days=90)
    expecting = ExpectedChild(PregnancyOf.PATIENT, due)
    case = triaged_case(database_url, database, base_url, expecting=expecting, grown_up_son=True)
    patient, client, case_id = case.patient, case.client, case.id
    page = case_page(client, case_id)
    assert "Son" in page  # the case shows every child recorded
    _refer_from_the_page(client, page, case_id)

    (request,) = search(base_url, "ServiceRequest", subject=patient)
    named = {info["reference"] for info in request["supportingInfo"]}
    people = {
        f"RelatedPerson/{p['id']}": p for p in search(base_url, "RelatedPerson", patient=patient)
    }
    record_type = "https://kindreflex-ed.be/fhir/CodeSystem/record-type"
    (pregnancy,) = search(base_url, "Observation", subject=patient, code=f"{record_type}|")
    young = {ref for ref, person in people.items() if person["name"][0]["text"] in ("Boy", "Girl")}
    assert named == {*young, f"Observation/{pregnancy['id']}"}
    assert validate(request) == []
    printed = client.get(f"/social/cases/{case_id}/referral").text
    who = printed[printed.index('id="who-heading"') : printed.index('id="concern-heading"')]
    assert "Boy" in who
    assert "Girl" in who
    assert "Son" not in who
    assert f"uitgerekend op {due:%d/%m/%Y}" in who


def test_acute_danger_found_after_a_referral_to_the_vk_reaches_the_parket(
    database_url: str,
    database: Database,
    fhir_server: FhirServer,  # noqa: F811
) -> None:
    """The team decided "concerning, unwilling" and referred to the VK; then the danger
    becomes acute. Before, the case page offered no step 4 and the parket and the police
    were not among the facilities: the social worker could not record what the seed asks
    ("Er is acuut gevaar: betrek het parket en/of de politie"). Now the page offers the
    team's decision "acute danger" alone, and after it the parket."""
    base_url = fhir_server.base_url
    patient, client, case_id = _referred_from_the_page(database_url, database, base_url)

    page = client.get(f"/social/cases/{case_id}").text
    decisions = _hidden_section(page, "s4-decision")
    assert 'value="acute-danger"' in decisions
    assert 'value="safe"' not in decisions
    assert "parket" not in _hidden_section(page, "s6-partner").lower()
    acute = {**STEP_4_FORM, "decision": "acute-danger"}
    saved = post_form(client, page, case_id, "step-4", "s4", acute)
    assert saved.status_code == 303, saved.text
    after = client.get(saved.headers["location"]).text
    assert "parket" in _hidden_section(after, "s6-partner").lower()
    step_system = "https://kindreflex-ed.be/fhir/CodeSystem/kindreflex-step"
    decided = search(base_url, "Observation", subject=patient, code=f"{step_system}|step-4")
    assert len(decided) == 2
    assert all(validate(observation) == [] for observation in decided)


def test_the_printed_referral_names_every_referral_of_the_case_with_its_status(
    database_url: str,
    database: Database,
    fhir_server: FhirServer,  # noqa: F811
) -> None:
    """The VK first, then the police when the danger became acute, and the police's
    referral revoked: the printed summary printed only the police's, without its status,
    as if it were running, and said nothing of the VK's still running. Now it says where
    the referral it is about stands and lists every referral of the case, newest first,
    each with its facility, date and status as the case page words them."""
    base_url = fhir_server.base_url
    patient, client, case_id = _referred_from_the_page(database_url, database, base_url)
    acute = {**STEP_4_FORM, "decision": "acute-danger"}
    page = saved_from_the_page(client, case_page(client, case_id), case_id, "step-4", "s4", acute)
    page = referred_today(client, page, case_id, partner_id="politie")
    (revoked,) = [
        r
        for r in search(base_url, "ServiceRequest", subject=patient)
        if r["performerType"]["coding"][0]["code"] == "police"
    ]
    form, fields = referral_form(revoked["id"]), {"referral_id": revoked["id"]}
    done = post_form(client, page, case_id, "referral-status", form, {**fields, **REVOKED})
    assert done.status_code == 303, done.text

    printed = client.get(f"/social/cases/{case_id}/referral").text

    call = printed[printed.index('id="call-heading"') : printed.index('id="by-heading"')]
    assert "Politie" in call
    assert "De verwijzing is nu: ingetrokken." in call
    listed = printed[printed.index('id="referrals-heading"') : printed.index('id="who-heading"')]
    assert "<caption>Alle verwijzingen van dit dossier, de recentste eerst</caption>" in listed
    rows = [  # the body's rows: facility, date, status
        [re.sub(r"<[^>]+>", "", cell) for cell in re.findall(r"<td>(.*?)</td>", row)]
        for row in re.findall(r"<tr>(<td>.*?)</tr>", listed)
    ]
    assert [(facility, status) for facility, _, status in rows] == [
        ("Politie", "ingetrokken"),
        (
            "Vertrouwenscentrum Kindermishandeling (VK): "
            "Vertrouwenscentrum Kindermishandeling Oost-Vlaanderen",
            "lopend",
        ),
    ]
    assert all(re.fullmatch(r"\d{2}/\d{2}/\d{4} \d{2}:\d{2}", on) for _, on, _ in rows)


@pytest.mark.parametrize(
    ("language", "urgent"),
    [
        ("nl", "Acuut gevaar: deze verwijzing is dringend."),
        ("fr", "Danger aigu : cette orientation est urgente."),
        ("en", "Acute danger: this referral is urgent."),
    ],
)
def test_the_printed_referral_after_a_nurses_acute_danger_says_it_is_urgent(
    database_url: str,
    database: Database,
    fhir_server: FhirServer,  # noqa: F811
    language: str,
    urgent: str,
) -> None:
    """The nurse found acute danger at triage and the social worker called the VK at once,
    the patient not informed first. The ServiceRequest is a "stat" referral, but the sheet
    printed for the call said nothing of the danger: the nurse's reasons, no team decision
    (there is none), "not informed" with its reason. Now the call's section says, first,
    that the referral is urgent; a routine one's does not (the journey's test)."""
    base_url = fhir_server.base_url
    case = triaged_case(database_url, database, base_url, acute_danger=True)
    patient, client, case_id = case.patient, case.client, case.id
    page = case_page(client, case_id)
    fields = {
        **STEP_6_FORM,
        "informed": "no",
        "not_informed_reason": "Informing her first puts the children at risk.",
        "contact_on": local_today().isoformat(),
    }
    assert post_form(client, page, case_id, "step-6", "s6", fields).status_code == 303
    (request,) = search(base_url, "ServiceRequest", subject=patient)
    assert request["priority"] == "stat"
    with database.session() as session:
        session.execute(update(AppSession).values(language=language))

    printed = client.get(f"/social/cases/{case_id}/referral").text

    call = printed[printed.index('id="call-heading"') : printed.index('id="by-heading"')]
    found = re.search(r'<p class="acute" data-acute-danger><strong>(.*?)</strong></p>', call)
    assert found is not None, call
    assert unescape(found.group(1)) == urgent
    assert call.index("data-acute-danger") < call.index('class="phones"')


def _refer_from_the_page(client: TestClient, page: str, case_id: int) -> None:
    """The team's decision (STEP_4_FORM) and the referral to the VK, contacted today, as
    the social worker saves them from the case page."""
    saved = post_form(client, page, case_id, "step-4", "s4", STEP_4_FORM)
    assert saved.status_code == 303, saved.text
    after_4 = client.get(saved.headers["location"]).text
    contact = {"contact_on": utcnow().date().isoformat()}
    referred = post_form(client, after_4, case_id, "step-6", "s6", {**STEP_6_FORM, **contact})
    assert referred.status_code == 303, referred.text


def _referred_from_the_page(
    database_url: str, database: Database, base_url: str
) -> tuple[str, TestClient, int]:
    """A niet-pluis triage on the social worker's worklist, referred from the case page
    (:func:`_refer_from_the_page`): the patient, her client and the case id."""
    case = triaged_case(database_url, database, base_url)
    _refer_from_the_page(case.client, case_page(case.client, case.id), case.id)
    return case.patient, case.client, case.id


def _hidden_section(html: str, anchor: str) -> str:
    start = html.index(f'id="{anchor}"')
    return html[start : html.index("</fieldset>", start)]


def test_the_case_names_its_people_from_the_same_searches_and_corrects_the_worklist(
    database_url: str,
    database: Database,
    fhir_server: FhirServer,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base_url = fhir_server.base_url
    nurse, worker = f"Practitioner/n-{uuid.uuid4()}", f"Practitioner/sw-{uuid.uuid4()}"
    for reference, name in (
        (nurse, {"given": ["Sofie"], "family": "Maes"}),
        (worker, {"text": "An Peeters"}),
    ):
        practitioner = {"resourceType": "Practitioner", "id": reference.split("/")[1]}
        httpx.put(
            f"{base_url}/{reference}", json={**practitioner, "name": [name]}, timeout=10
        ).raise_for_status()
    tenant = make_tenant(database, "default", base_url)
    app = make_app(database_url, database)
    client = TestClient(app)
    save_triage(app, tenant, base_url, nurse=nurse, nurse_name=nurse)  # the launch named no one
    an = signed_in(app, tenant, worker, "social-worker", fhir_base_url=base_url).headers
    colleague = signed_in(app, tenant, COLLEAGUE, "social-worker", fhir_base_url=base_url).headers
    (case,) = client.get("/api/cases", headers=an).json()["items"]
    assert (case["flagged_by"], case["flagged_by_display"]) == (nurse, None)
    decision = {
        "decision": "concerning-unwilling",
        "consultations": ["colleague"],
        "discussed_with_patient": True,
    }
    decided = client.post(
        f"/api/cases/{case['id']}/step-4", headers=an, json={"row_version": 1, **decision}
    )
    assert decided.status_code == 200, decided.text
    assigned = client.put(  # a colleague assigns it by reference: no name known yet
        f"/api/cases/{case['id']}/assignment",
        headers=colleague,
        json={"assignee": worker, "row_version": 2},
    )
    assert assigned.status_code == 200, assigned.text

    with fhir_reads(monkeypatch) as seen:
        opened = client.get(f"/api/cases/{case['id']}", headers=colleague)

    assert opened.status_code == 200, opened.text
    authors = {
        (f["step"], f["recorded_by"], f["recorded_by_display"]) for f in opened.json()["findings"]
    }
    assert authors == {
        ("step-1", nurse, "Sofie Maes"),
        ("step-2", nurse, "Sofie Maes"),
        ("step-4", worker, "An Peeters"),
    }
    # the names came with the case's searches: no request per person
    assert not [asked for asked in seen if asked.startswith("Practitioner")]
    assert (seen.count("Flag"), seen.count("Observation")) == (1, 1)
    (listed,) = client.get("/api/cases", headers=an).json()["items"]
    assert (listed["flagged_by_display"], listed["assigned_to_display"]) == (
        "Sofie Maes",
        "An Peeters",
    )
    page = client.get(f"/social/cases/{case['id']}", headers={"Cookie": colleague["Cookie"]})
    assert "Sofie Maes" in page.text
    assert "An Peeters" in page.text
    assert nurse not in page.text
    assert worker not in page.text


def test_opening_a_case_tells_the_worklist_its_acute_danger(
    database_url: str,
    database: Database,
    fhir_server: FhirServer,  # noqa: F811
) -> None:
    """A concern indexed from its Flag (``triage.concern_index_row``) starts without acute
    danger, which the Flag does not carry; its step 2 found it. Opening the case tells the
    worklist, whose "acute danger first" order then has it first."""
    base_url = fhir_server.base_url
    tenant = make_tenant(database, "default", base_url)
    app = make_app(database_url, database)
    client = TestClient(app)
    save_triage(app, tenant, base_url, acute_danger=True)
    save_triage(app, tenant, base_url)  # newer, no acute danger
    with database.session() as session:
        acute = session.scalars(select(Concern).where(Concern.acute_danger)).one()
        acute.acute_danger = False  # as indexed from its Flag
    worker = signed_in(app, tenant, SOCIAL_WORKER, "social-worker", fhir_base_url=base_url)
    listed = {"sort": "acute-first"}
    first = client.get("/api/cases", headers=worker.headers, params=listed).json()["items"][0]
    assert first["id"] != acute.id

    assert client.get(f"/social/cases/{acute.id}", headers=worker.headers).status_code == 200

    first = client.get("/api/cases", headers=worker.headers, params=listed).json()["items"][0]
    assert (first["id"], first["acute_danger"]) == (acute.id, True)


def _referred_to_the_parket_and_closed(
    database_url: str, database: Database, base_url: str
) -> tuple[TestClient, int]:
    """A case the team found in acute danger, referred to the parket and closed from the
    case page, with the social worker's client."""
    case = triaged_case(database_url, database, base_url)
    client, case_id = case.client, case.id
    acute = {**STEP_4_FORM, "decision": "acute-danger"}
    page = saved_from_the_page(client, case_page(client, case_id), case_id, "step-4", "s4", acute)
    page = referred_today(client, page, case_id, partner_id="parket")
    closed = post_form(client, page, case_id, "close", "close", {"reason": "referred"})
    assert closed.status_code == 303, closed.text
    return client, case_id


def test_a_closed_acute_case_stays_acute_on_the_worklist(
    database_url: str,
    database: Database,
    fhir_server: FhirServer,  # noqa: F811
) -> None:
    """The team found acute danger and referred to the parket; closing the case took the
    acute-danger mark off its worklist row, and opening it put the mark back (found by
    review). The closed worklist keeps it, before and after the case is opened."""
    client, case_id = _referred_to_the_parket_and_closed(
        database_url, database, fhir_server.base_url
    )

    def marked_acute() -> bool:
        worklist = client.get("/social", params={"status": "closed"}).text
        row = re.search(rf'<tr data-case="{case_id}">.*?</tr>', worklist, re.S)
        assert row is not None
        return "data-acute-danger" in row.group(0)

    assert marked_acute()
    assert client.get(f"/social/cases/{case_id}").status_code == 200  # opened again
    assert marked_acute()


def test_a_case_closed_the_day_it_was_flagged_says_so_a_month_later(
    database_url: str,
    database: Database,
    fhir_server: FhirServer,  # noqa: F811
) -> None:
    """Its days open counted on after the closing, to the day it was looked at (found by
    review): a month later the case page and the API say 0 days, as on the day it was
    closed, and the page says it was open that long. The row is moved a month back, as it
    would read then."""
    client, case_id = _referred_to_the_parket_and_closed(
        database_url, database, fhir_server.base_url
    )
    month = timedelta(days=30)
    with database.session() as session:
        row = session.get(Concern, case_id)
        assert row is not None
        assert row.closed_at is not None  # the closing kept its moment
        row.flagged_at, row.updated_at = row.flagged_at - month, row.updated_at - month
        row.closed_at -= month

    (item,) = client.get("/api/cases", params={"status": "closed"}).json()["items"]
    page = client.get(f"/social/cases/{case_id}").text

    assert item["days_open"] == 0
    assert "(was 0 dagen open)" in page  # in the past: the count stopped at the closing


def _spaced_partner_id(document: dict[str, Any]) -> dict[str, Any]:
    """The configuration ``document`` with the VK's partner id as an admin's JSON, a FHIR
    Bundle or quoted YAML could give it: ``"vk-oost-vlaanderen "``."""
    entries = [
        {**e, "id": f"{e['id']} "} if e["id"] == "vk-oost-vlaanderen" else e
        for e in document["partners"]["entries"]
    ]
    return {**document, "partners": {**document["partners"], "entries": entries}}


@pytest.mark.parametrize("how", ["submitted", "stored-before"])
def test_a_partner_id_given_with_a_space_around_it_can_be_referred_to(
    database_url: str,
    database: Database,
    fhir_server: FhirServer,  # noqa: F811
    how: str,
) -> None:
    """The directory reads a partner id without the spaces around it, its entry kept them:
    step 6 to that partner was a 500 (found by review), whether the admin submitted the
    id so or a configuration stored before holds it. The referral goes to the partner,
    named by its id as the directory reads it."""
    base_url = fhir_server.base_url
    tenant = make_tenant(database, "default", base_url)
    if how == "submitted":
        document = _spaced_partner_id(tenant.config.model_dump(mode="json"))
        TenantDirectory(database, SecretBox(None)).save(
            "default", validate_document(document), actor="admin"
        )
    else:
        with database.session() as session:
            stored = session.scalars(select(TenantConfigVersion)).one()
            stored.document = _spaced_partner_id(stored.document)
    app = make_app(database_url, database)
    patient = save_triage(app, tenant, base_url)
    client, case_id = on_the_worklist(app, tenant, base_url)
    page = client.get(f"/social/cases/{case_id}").text
    page = saved_from_the_page(client, page, case_id, "step-4", "s4", STEP_4_FORM)
    assert 'value="vk-oost-vlaanderen"' in _hidden_section(page, "s6-partner")

    vk = {**STEP_6_FORM, "partner_id": "vk-oost-vlaanderen"}
    referred = post_form(
        client, page, case_id, "step-6", "s6", {**vk, "contact_on": local_today().isoformat()}
    )

    assert referred.status_code == 303, referred.text
    shown = client.get(f"/social/cases/{case_id}/referral").text
    assert "Vertrouwenscentrum Kindermishandeling Oost-Vlaanderen" in shown
    (request,) = search(base_url, "ServiceRequest", subject=patient)
    facility = httpx.get(f"{base_url}/{request['performer'][0]['reference']}", timeout=10)
    assert "vk-oost-vlaanderen" in [i["value"] for i in facility.json()["identifier"]]


def test_a_nurses_name_is_cut_to_its_column_and_shown_as_text(
    database_url: str,
    database: Database,
    fhir_server: FhirServer,  # noqa: F811
) -> None:
    base_url = fhir_server.base_url
    name = "<b>Sofie</b> Maes" + " van Damme" * 40  # no Practitioner on the server
    tenant = make_tenant(database, "default", base_url)
    app = make_app(database_url, database)
    save_triage(app, tenant, base_url, nurse=f"Practitioner/n-{uuid.uuid4()}", nurse_name=name)
    worker = signed_in(app, tenant, SOCIAL_WORKER, "social-worker", fhir_base_url=base_url)
    client = TestClient(app, headers={"Cookie": worker.headers["Cookie"]})

    with database.session() as session:
        case_id, stored = session.execute(select(Concern.id, Concern.flagged_by_display)).one()
    assert stored == name[:200]
    for shown in (client.get("/social").text, client.get(f"/social/cases/{case_id}").text):
        assert "&lt;b&gt;Sofie&lt;/b&gt; Maes van Damme" in shown
        assert "<b>" not in shown
