"""The social worker's case page when the EHR changed a resource of ours on the real FHIR
server (sekmet stores what FHIR allows, whatever our profiles say): a coding of its own
beside ours is read, a resource it garbled is named on the page (never a 500), the API and
the forms say the same, a child it withdrew (``active`` false) is no part of the case.
Found by review: each of these was a 500, or a child silently left out of the case."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from html import unescape
from typing import Any, NamedTuple

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from sandbox.fhir_server import FhirServer
from service import retention
from service.casework import load_case_record
from service.db.base import Database, utcnow
from service.db.models import Concern, OutboxEntry
from service.fhir.client import FhirClient
from service.local_time import local_today
from service.outbox import DeliveryState
from service.protocol import ExpectedChild, PregnancyOf
from service.tenancy import TenantContext
from tests.support.casework import (
    SOCIAL_WORKER,
    STEP_4_FORM,
    STEP_6_FORM,
    error_summary,
    listed_cases,
    on_the_worklist,
    post_form,
    save_triage,
    triage_waiting_for_sign_in,
)
from tests.support.sessions import make_app, signed_in
from tests.support.validator import validate
from tests.support.write_path import (
    fhir_server,  # noqa: F401 - the module's FHIR server fixture
    make_tenant,
    search,
)

#: How an EHR that codes our findings too adds its own code: before ours.
SNOMED = {"system": "http://snomed.info/sct", "code": "225444004", "display": "At risk"}
#: What the page says of a resource it cannot read (then the resource and what is wrong).
CANNOT_READ = "in een vorm die Kindreflex niet kan lezen"


def _as_the_ehr_changed_it(base_url: str, resource: dict[str, Any]) -> None:
    url = f"{base_url}/{resource['resourceType']}/{resource['id']}"
    httpx.put(url, json=resource, timeout=10).raise_for_status()


def _step_2(base_url: str, patient: str) -> dict[str, Any]:
    (step_2,) = [
        o
        for o in search(base_url, "Observation", subject=patient)
        if o["code"]["coding"][0]["code"] == "step-2"
    ]
    return step_2


def _girl(base_url: str, patient: str) -> dict[str, Any]:
    (girl,) = [
        r
        for r in search(base_url, "RelatedPerson", patient=patient)
        if r["name"][0]["text"] == "Girl"
    ]
    return girl


class _Case(NamedTuple):
    """A niet-pluis triage saved and on the social worker's worklist."""

    app: FastAPI
    tenant: TenantContext
    base_url: str
    patient: str
    worker: TestClient
    case_id: int


def _a_triaged_case(database_url: str, database: Database, base_url: str) -> _Case:
    tenant = make_tenant(database, "default", base_url)
    app = make_app(database_url, database)
    patient = save_triage(app, tenant, base_url)
    worker, case_id = on_the_worklist(app, tenant, base_url)
    return _Case(app, tenant, base_url, patient, worker, case_id)


def _a_referred_case(
    database_url: str, database: Database, base_url: str
) -> tuple[_Case, dict[str, Any]]:
    """A triaged case taken through step 4 and referred at step 6, and its referral."""
    case = _a_triaged_case(database_url, database, base_url)
    worker, case_id = case.worker, case.case_id
    page = worker.get(f"/social/cases/{case_id}").text
    assert post_form(worker, page, case_id, "step-4", "s4", STEP_4_FORM).status_code == 303
    page = worker.get(f"/social/cases/{case_id}").text
    contact = {"contact_on": local_today().isoformat()}
    form = {**STEP_6_FORM, **contact}
    assert post_form(worker, page, case_id, "step-6", "s6", form).status_code == 303
    (referral,) = search(base_url, "ServiceRequest", subject=case.patient)
    return case, referral


def _text(response: httpx.Response) -> str:
    return " ".join(unescape(response.text).split())


def test_a_coding_of_the_ehrs_before_ours_is_read_and_a_finding_it_garbled_is_named(
    database_url: str,
    database: Database,
    fhir_server: FhirServer,  # noqa: F811
) -> None:
    app, tenant, base_url, patient, worker, case_id = _a_triaged_case(
        database_url, database, fhir_server.base_url
    )
    browser = TestClient(
        app, follow_redirects=False, raise_server_exceptions=False, headers=worker.headers
    )
    api = signed_in(app, tenant, SOCIAL_WORKER, "social-worker", fhir_base_url=base_url).headers

    # The EHR codes the nurse's niet-pluis too: its SNOMED code first. It was read as the
    # step 2's assessment ("'225444004' is not a valid SafetyAssessment"): a 500.
    step_2 = _step_2(base_url, patient)
    step_2["valueCodeableConcept"]["coding"].insert(0, SNOMED)
    _as_the_ehr_changed_it(base_url, step_2)
    page = browser.get(f"/social/cases/{case_id}")
    assert page.status_code == 200
    assert CANNOT_READ not in _text(page)
    assert 'id="s4-form"' in page.text  # the case replays: the team decision is next

    # The EHR keeps only its own code: the finding says no assessment of ours. The page
    # names the Observation and what is wrong; no step is offered.
    step_2["valueCodeableConcept"]["coding"] = [SNOMED]
    _as_the_ehr_changed_it(base_url, step_2)
    garbled = browser.get(f"/social/cases/{case_id}")
    assert garbled.status_code == 200
    named = (
        f"De FHIR-server bewaart Observation/{step_2['id']} {CANNOT_READ} "
        "(valueCodeableConcept has no code of CodeSystem safety-assessment)"
    )
    assert named in _text(garbled)
    assert 'id="s4-form"' not in garbled.text

    # A save from the page read before: nothing saved, the input kept, the same words.
    save = post_form(worker, page.text, case_id, "step-4", "s4", STEP_4_FORM)
    assert save.status_code == 502
    assert f"Observation/{step_2['id']} {CANNOT_READ}" in unescape(error_summary(save.text, "s4"))
    assert "er werd niets opgeslagen" in _text(save)
    assert "She says they are fine alone for an hour." in save.text
    # The API says it too, for a read and for a save.
    read = browser.get(f"/api/cases/{case_id}", headers=api)
    step_4 = browser.post(
        f"/api/cases/{case_id}/step-4",
        headers=api,
        json={"row_version": 1, "decision": "acute-danger", "discussed_with_patient": True},
    )
    for answer in (read, step_4):
        assert answer.status_code == 502
        assert answer.json()["detail"] == (
            f"The FHIR server holds Observation/{step_2['id']} in a form Kindreflex cannot "
            "read (valueCodeableConcept has no code of CodeSystem safety-assessment); "
            "nothing was saved. Tell the EHR's administrators."
        )
    assert browser.get("/social").status_code == 200  # the worklist is unaffected


def test_a_concern_flag_whose_start_the_ehr_cut_to_a_month_is_named(
    database_url: str,
    database: Database,
    fhir_server: FhirServer,  # noqa: F811
) -> None:
    """A partial period.start is valid FHIR; the case's history starts there (a 500)."""
    app, _tenant, base_url, patient, worker, case_id = _a_triaged_case(
        database_url, database, fhir_server.base_url
    )
    browser = TestClient(
        app, follow_redirects=False, raise_server_exceptions=False, headers=worker.headers
    )
    (flag,) = search(base_url, "Flag", patient=patient)
    flag["period"]["start"] = flag["period"]["start"][:7]
    _as_the_ehr_changed_it(base_url, flag)

    page = browser.get(f"/social/cases/{case_id}")

    assert page.status_code == 200
    assert (
        f"Flag/{flag['id']} {CANNOT_READ} "
        "(period.start is not a dateTime with a time and a time zone)"
    ) in _text(page)


def test_a_child_the_ehr_garbled_is_named_and_one_it_withdrew_is_no_part_of_the_case(
    database_url: str,
    database: Database,
    fhir_server: FhirServer,  # noqa: F811
) -> None:
    """A child of ours with a date of birth the EHR cut to a month (valid FHIR) was left out
    of the case without a word: the case page lacked her, and a referral naming all the
    children did not name her. The case cannot be read, and the page says which child.
    A child the EHR withdrew (``active`` false) was still one: she is not in the case,
    though the step 1 names her."""
    _app, _tenant, base_url, patient, worker, case_id = _a_triaged_case(
        database_url, database, fhir_server.base_url
    )
    girl = _girl(base_url, patient)
    (flag,) = search(base_url, "Flag", patient=patient)
    concern = flag["identifier"][0]["value"]

    _as_the_ehr_changed_it(base_url, {**girl, "birthDate": "2017-06"})
    page = worker.get(f"/social/cases/{case_id}")
    assert page.status_code == 200
    assert (
        f"RelatedPerson/{girl['id']} {CANNOT_READ} (birthDate is not a full date (YYYY-MM-DD))"
    ) in _text(page)
    assert 'id="s4-form"' not in page.text

    _as_the_ehr_changed_it(base_url, {**girl, "active": False})
    page = worker.get(f"/social/cases/{case_id}")
    assert CANNOT_READ not in _text(page)
    assert "Boy" in page.text
    assert "Girl" not in page.text
    assert 'id="s4-form"' in page.text
    with FhirClient(base_url, lambda: "loopback", 10.0) as client:
        record, _ = load_case_record(client, patient, concern)
    (boy,) = record.child_refs  # what a referral names
    assert record.children[boy].name == "Boy"
    assert f"RelatedPerson/{girl['id']}" not in record.children


def test_a_concern_closed_in_the_ehr_is_not_reopened_by_a_step_and_leaves_the_worklist(
    database_url: str,
    database: Database,
    fhir_server: FhirServer,  # noqa: F811
) -> None:
    """The EHR closes the concern (its Flag inactive with an end) while the worklist still
    has it open. Before, the team's step 4 wrote the Flag back as active, its end and close
    reason gone. Now the form says the case was closed in the EHR, the Flag stays as the
    EHR left it, and the case page (which the refused form is) shows it closed and takes
    it off the open worklist."""
    case = _a_triaged_case(database_url, database, fhir_server.base_url)
    base_url, patient, worker, case_id = case.base_url, case.patient, case.worker, case.case_id
    page = worker.get(f"/social/cases/{case_id}").text
    (flag,) = search(base_url, "Flag", subject=patient)
    flag["status"] = "inactive"
    flag["period"]["end"] = flag["period"]["start"]
    _as_the_ehr_changed_it(base_url, flag)

    refused = post_form(worker, page, case_id, "step-4", "s4", STEP_4_FORM)
    assert refused.status_code == 409
    assert "werd in het EPD afgesloten" in _text(refused)  # the page shows it closed
    assert 'id="s4-form"' not in refused.text
    (kept,) = search(base_url, "Flag", subject=patient)
    assert kept["status"] == "inactive"
    assert kept["period"]["end"] == flag["period"]["end"]
    step_system = "https://kindreflex-ed.be/fhir/CodeSystem/kindreflex-step"
    assert search(base_url, "Observation", subject=patient, code=f"{step_system}|step-4") == []

    assert 'id="s4-form"' not in worker.get(f"/social/cases/{case_id}").text
    assert case_id not in listed_cases(worker.get("/social").text)
    with database.session() as session:  # its days open count up to the EHR's closing
        closed_at = session.scalar(select(Concern.closed_at).where(Concern.id == case_id))
    assert closed_at == datetime.fromisoformat(flag["period"]["end"])


def test_a_concern_closed_in_the_ehr_shows_closed_at_once_unless_a_save_may_reopen_it(
    database_url: str,
    database: Database,
    fhir_server: FhirServer,  # noqa: F811
) -> None:
    """The first case page after the EHR closed the concern showed it open and offered the
    steps (the worklist row was read before it was reconciled); and a nurse's niet-pluis
    still on its way, which reopens the Flag when it is delivered, lost its case from the
    worklist (found by review). The page now shows it closed at once, and a case whose
    latest save is still on its way stays listed until that save is delivered."""
    case = _a_triaged_case(database_url, database, fhir_server.base_url)
    base_url, patient, worker, case_id = case.base_url, case.patient, case.worker, case.case_id
    (flag,) = search(base_url, "Flag", subject=patient)
    _as_the_ehr_changed_it(base_url, {**flag, "status": "inactive"})
    # the nurse's niet-pluis of a next visit, unsent
    entry_id = triage_waiting_for_sign_in(database, case.tenant, base_url, patient, case_id)

    worker.get(f"/social/cases/{case_id}")
    assert case_id in listed_cases(worker.get("/social").text)

    with database.session() as session:  # delivered: the EHR's closing stands
        session.execute(
            update(OutboxEntry)
            .where(OutboxEntry.id == entry_id)
            .values(state=DeliveryState.DELIVERED)
        )
    first = worker.get(f"/social/cases/{case_id}").text
    assert 'id="s4-form"' not in first
    assert 'id="close-form"' not in first
    assert case_id not in listed_cases(worker.get("/social").text)


def test_a_concern_the_ehr_retracted_leaves_the_worklist_and_its_names_go_with_the_retention(
    database_url: str,
    database: Database,
    fhir_server: FhirServer,  # noqa: F811
) -> None:
    """A Flag the EHR marked entered-in-error is no concern. Before, the case stayed open on
    the worklist for good, refusing every step and closing, and the retention never
    emptied its patient's name (found by review)."""
    case = _a_triaged_case(database_url, database, fhir_server.base_url)
    (flag,) = search(case.base_url, "Flag", subject=case.patient)
    _as_the_ehr_changed_it(case.base_url, {**flag, "status": "entered-in-error"})

    case.worker.get(f"/social/cases/{case.case_id}")  # reconciled with the server

    assert case.case_id not in listed_cases(case.worker.get("/social").text)
    assert retention.purge(database, timedelta(0)).closed_cases == 1


def test_a_closed_case_opened_after_the_retention_keeps_its_name_forgotten(
    database_url: str,
    database: Database,
    fhir_server: FhirServer,  # noqa: F811
) -> None:
    """The retention empties the patient's name of a case closed long enough; opening the
    case page wrote it back into the worklist's index, until the next purge (found by
    review). The page still names the patient: it reads the FHIR server."""
    case = _a_triaged_case(database_url, database, fhir_server.base_url)
    (flag,) = search(case.base_url, "Flag", subject=case.patient)
    _as_the_ehr_changed_it(case.base_url, {**flag, "status": "inactive"})
    case.worker.get(f"/social/cases/{case.case_id}")  # reconciled: closed
    assert retention.purge(database, timedelta(0)).closed_cases == 1

    page = case.worker.get(f"/social/cases/{case.case_id}")

    assert page.status_code == 200
    name = search(case.base_url, "Patient", _id=case.patient.removeprefix("Patient/"))[0]
    assert name["name"][0]["family"] in _text(page)
    with database.session() as session:
        concern = session.get(Concern, case.case_id)
        assert concern is not None
        assert (concern.status, concern.patient_display) == ("closed", None)


def test_a_referral_whose_facility_the_ehr_named_by_display_only_still_opens(
    database_url: str,
    database: Database,
    fhir_server: FhirServer,  # noqa: F811
) -> None:
    """The EHR rewrote a referral's performer as a name without a reference, and took our
    coding from its performerType (FHIR allows both): the case page, the printable
    referral and the case in the API were a 500, the case closed to every step (found by
    review). They open; the API says the referral names no Organization."""
    case, referral = _a_referred_case(database_url, database, fhir_server.base_url)
    base_url, worker, case_id = case.base_url, case.worker, case.case_id
    edited = {
        **referral,
        "performer": [{"display": "VK Oost-Vlaanderen"}],
        "performerType": {"text": "Vertrouwenscentrum"},
    }
    _as_the_ehr_changed_it(base_url, edited)

    shown = worker.get(f"/social/cases/{case_id}")
    printed = worker.get(f"/social/cases/{case_id}/referral")
    read = worker.get(f"/api/cases/{case_id}", headers={"Accept": "application/json"})

    assert (shown.status_code, printed.status_code, read.status_code) == (200, 200, 200)
    assert 'id="close-form"' in shown.text  # the case goes on: referred, it may be closed
    assert "VK Oost-Vlaanderen" in _text(printed)  # the facility, as the EHR names it now
    (view,) = read.json()["referrals"]
    assert (view["id"], view["performer"], view["target"]) == (referral["id"], None, None)


@pytest.mark.parametrize(("status", "shown"), [("draft", "concept"), ("unknown", "onbekend")])
def test_a_referral_the_ehr_set_to_a_status_we_do_not_write_is_shown_with_it(
    database_url: str,
    database: Database,
    fhir_server: FhirServer,  # noqa: F811
    status: str,
    shown: str,
) -> None:
    """The EHR set the latest referral to an R4 request-status Kindreflex does not write: the
    case page was a 500 (no label for it; found by review). It shows the referral with
    that status, says it is not followed up here and offers no form to change it (a
    change is refused, ``casework.referral_transaction``); the API says the same status."""
    case, referral = _a_referred_case(database_url, database, fhir_server.base_url)
    base_url, worker, case_id = case.base_url, case.worker, case.case_id
    _as_the_ehr_changed_it(base_url, {**referral, "status": status})

    quiet = TestClient(case.app, raise_server_exceptions=False, headers=worker.headers)
    quiet.cookies = worker.cookies
    shown_page = quiet.get(f"/social/cases/{case_id}")
    read = quiet.get(f"/api/cases/{case_id}", headers={"Accept": "application/json"})

    assert (shown_page.status_code, read.status_code) == (200, 200)
    assert f"De verwijzing is nu: {shown}." in _text(shown_page)
    assert "Kindreflex volgt een verwijzing met deze stand niet op" in _text(shown_page)
    assert f"/social/cases/{case_id}/referral-status" not in shown_page.text
    assert [r["status"] for r in read.json()["referrals"]] == [status]


def test_a_step_keeps_what_the_ehr_added_to_the_concern_flag(
    database_url: str,
    database: Database,
    fhir_server: FhirServer,  # noqa: F811
) -> None:
    """The team's step replaced the Flag's code, category and subject with ours: the EHR's
    own coding of the concern, its category and the patient's display were gone from the
    server (found by review). They stay, ours beside them, as after a nurse's save."""
    case = _a_triaged_case(database_url, database, fhir_server.base_url)
    base_url, patient, worker, case_id = case.base_url, case.patient, case.worker, case.case_id
    (flag,) = search(base_url, "Flag", subject=patient)
    theirs = {"system": "http://example.org/ehr-flag-category", "code": "social-work"}
    _as_the_ehr_changed_it(
        base_url,
        {
            **flag,
            "code": {**flag["code"], "coding": [*flag["code"]["coding"], SNOMED]},
            "category": [*flag["category"], {"coding": [theirs]}],
            "subject": {**flag["subject"], "display": "Mevrouw X"},
        },
    )

    page = worker.get(f"/social/cases/{case_id}").text
    assert post_form(worker, page, case_id, "step-4", "s4", STEP_4_FORM).status_code == 303

    (after,) = search(base_url, "Flag", subject=patient)
    assert SNOMED in after["code"]["coding"]
    assert {"coding": [theirs]} in after["category"]
    assert after["subject"]["display"] == "Mevrouw X"
    assert flag["code"]["coding"][0] in after["code"]["coding"]  # ours, beside theirs
    last_step = [e for e in after["extension"] if e["url"].endswith("concern-last-step")]
    assert [e["valueCoding"]["code"] for e in last_step] == ["step-4"]
    assert validate(after) == []


def _step(base_url: str, patient: str, step: str) -> dict[str, Any]:
    (found,) = [
        o
        for o in search(base_url, "Observation", subject=patient)
        if o["code"]["coding"][0]["code"] == step
    ]
    return found


def test_findings_the_ehr_made_break_the_protocol_are_named_not_a_refusal(
    database_url: str,
    database: Database,
    fhir_server: FhirServer,  # noqa: F811
) -> None:
    """Findings each readable that the protocol refuses to replay (the EHR made the team's
    decision name a relative who is no child of the case, or moved it before the nurse's
    step 2) were shown as "the FHIR server refused to read the case", and the API
    answered 422 with the protocol's words, as if the social worker's input broke a rule
    (found by review). The page, a save and the API name the finding where the replay
    stops and the rule, never a value of it; nothing is saved."""
    app, tenant, base_url, patient, worker, case_id = _a_triaged_case(
        database_url, database, fhir_server.base_url
    )
    browser = TestClient(
        app, follow_redirects=False, raise_server_exceptions=False, headers=worker.headers
    )
    api = signed_in(app, tenant, SOCIAL_WORKER, "social-worker", fhir_base_url=base_url).headers
    page = browser.get(f"/social/cases/{case_id}").text
    assert post_form(worker, page, case_id, "step-4", "s4", STEP_4_FORM).status_code == 303
    after_4 = browser.get(f"/social/cases/{case_id}").text
    assert 'id="s6-form"' in after_4
    step_4 = _step(base_url, patient, "step-4")
    grandmother = httpx.post(
        f"{base_url}/RelatedPerson",
        json={"resourceType": "RelatedPerson", "patient": {"reference": patient}},
        timeout=10,
    ).json()  # the EHR's own record of a relative: no child of ours

    _as_the_ehr_changed_it(
        base_url, {**step_4, "focus": [{"reference": f"RelatedPerson/{grandmother['id']}"}]}
    )
    shown = browser.get(f"/social/cases/{case_id}")
    assert shown.status_code == 200
    named = (
        f"Observation/{step_4['id']} {CANNOT_READ} (the findings, replayed in the order "
        "recorded, break the Kindreflex protocol's rule unknown-child here)"
    )
    assert named in _text(shown)
    assert "weigerde het dossier te lezen" not in _text(shown)
    assert 'id="s6-form"' not in shown.text
    # A save from the page read before: refused as the case unreadable, nothing written.
    contact = {"contact_on": utcnow().date().isoformat()}
    save = post_form(worker, after_4, case_id, "step-6", "s6", {**STEP_6_FORM, **contact})
    assert save.status_code == 502
    assert f"Observation/{step_4['id']} {CANNOT_READ}" in unescape(error_summary(save.text, "s6"))
    assert "er werd niets opgeslagen" in _text(save)
    assert search(base_url, "ServiceRequest", subject=patient) == []
    assert [o for o in search(base_url, "Observation", subject=patient) if _is_step_6(o)] == []
    read = browser.get(f"/api/cases/{case_id}", headers=api)
    assert read.status_code == 502
    assert read.json()["detail"] == (
        f"The FHIR server holds Observation/{step_4['id']} in a form Kindreflex cannot read "
        "(the findings, replayed in the order recorded, break the Kindreflex protocol's rule "
        "unknown-child here); nothing was saved. Tell the EHR's administrators."
    )

    # The EHR dates the team's decision before the nurse's step 2: out of order.
    step_2 = _step(base_url, patient, "step-2")
    before_2 = datetime.fromisoformat(step_2["effectiveDateTime"]) - timedelta(seconds=20)
    _as_the_ehr_changed_it(base_url, {**step_4, "effectiveDateTime": before_2.isoformat()})
    shown = browser.get(f"/social/cases/{case_id}")
    assert f"Observation/{step_4['id']} {CANNOT_READ}" in _text(shown)
    assert "rule step-out-of-order here" in _text(shown)


def _is_step_6(observation: dict[str, Any]) -> bool:
    return any(c.get("code") == "step-6" for c in observation["code"]["coding"])


#: A note the EHR's user adds to a finding of ours (FHIR Annotation, with its author).
EHR_NOTE = {
    "authorString": "Dr. Peeters (EPD)",
    "time": "2026-12-04T10:15:00+01:00",
    "text": "Father called; he wants no contact with the hospital.",
}


def test_a_note_the_ehr_added_to_a_finding_is_not_read_as_the_recorders(
    database_url: str,
    database: Database,
    fhir_server: FhirServer,  # noqa: F811
) -> None:
    """A note the EHR added to the team's decision was joined to the social worker's note
    and shown as hers, under her name, on the case page and in the API (found by review).
    Hers is the note written with the finding; the EHR's is shown as added in the EHR, by
    its author."""
    app, tenant, base_url, patient, worker, case_id = _a_triaged_case(
        database_url, database, fhir_server.base_url
    )
    api = signed_in(app, tenant, SOCIAL_WORKER, "social-worker", fhir_base_url=base_url).headers
    page = worker.get(f"/social/cases/{case_id}").text
    assert post_form(worker, page, case_id, "step-4", "s4", STEP_4_FORM).status_code == 303
    step_4 = _step(base_url, patient, "step-4")
    _as_the_ehr_changed_it(base_url, {**step_4, "note": [*step_4["note"], EHR_NOTE]})

    shown = worker.get(f"/social/cases/{case_id}")
    assert shown.status_code == 200
    notes = re.findall(r'<dd class="note">(.*?)</dd>', unescape(shown.text), re.DOTALL)
    assert notes == ["Worries named; she stops the counselling."]
    assert (
        "<dt>Notitie toegevoegd in het EPD door Dr. Peeters (EPD)</dt>"
        '<dd class="added-note">Father called; he wants no contact with the hospital.</dd>'
    ) in unescape(shown.text)
    (decision,) = [
        f for f in worker.get(f"/api/cases/{case_id}", headers=api).json()["findings"]
        if f["step"] == "step-4"
    ]  # fmt: skip
    assert decision["content"]["note"] == "Worries named; she stops the counselling."
    assert decision["added_notes"] == [
        {"author": "Dr. Peeters (EPD)", "time": "2026-12-04T10:15:00+01:00",
         "text": "Father called; he wants no contact with the hospital."}
    ]  # fmt: skip


def test_a_pregnancy_only_case_saved_before_the_step_1_named_its_pregnancy_opens(
    database_url: str,
    database: Database,
    fhir_server: FhirServer,  # noqa: F811
) -> None:
    """Until 2026-12-04 the triage save wrote a step 1 without ``hasMember`` naming the
    pregnancy Observation written with it: read back, a pregnancy-only step 1 said "no
    children, nothing expected", the replay refused the step 2, and the case could not be
    opened (found by review). The pregnancy written in the same save (same patient,
    encounter, author and moment) is the step 1's: the case opens, without a data repair."""
    base_url = fhir_server.base_url
    tenant = make_tenant(database, "default", base_url)
    app = make_app(database_url, database)
    due = local_today() + timedelta(days=90)
    expecting = ExpectedChild(PregnancyOf.PATIENT, due)
    patient = save_triage(app, tenant, base_url, expecting=expecting, with_children=False)
    worker, case_id = on_the_worklist(app, tenant, base_url)
    step_1 = _step(base_url, patient, "step-1")
    (pregnancy,) = step_1.pop("hasMember")
    _as_the_ehr_changed_it(base_url, step_1)  # as the save wrote it before 2026-12-04

    page = worker.get(f"/social/cases/{case_id}")

    assert page.status_code == 200
    assert CANNOT_READ not in _text(page)
    assert 'id="s4-form"' in page.text
    expected = f"<dt>Verwacht kind</dt><dd>De cliënt is zwanger (uitgerekend op {due:%d/%m/%Y})"
    assert page.text.count(expected) == 2  # the case's, and its step 1's
    concern = search(base_url, "Flag", patient=patient)[0]["identifier"][0]["value"]
    with FhirClient(base_url, lambda: "loopback", 10.0) as client:
        record, _ = load_case_record(client, patient, concern)
    assert record.expecting_ref == pregnancy["reference"]  # what a referral names


def test_a_concern_closed_in_the_ehr_is_opened_with_the_version_its_closing_gave(
    database_url: str,
    database: Database,
    fhir_server: FhirServer,  # noqa: F811
) -> None:
    """Closing a concern the EHR closed moves its row version on (a nurse's save that read
    it open must not join it). The case as opened then carried the version before: the
    first change from it (a referral's status, which a closed case takes) was refused as
    someone else's (found by review)."""
    case = _a_triaged_case(database_url, database, fhir_server.base_url)
    (flag,) = search(case.base_url, "Flag", subject=case.patient)
    _as_the_ehr_changed_it(case.base_url, {**flag, "status": "inactive"})

    opened = case.worker.get(f"/api/cases/{case.case_id}").json()
    again = case.worker.get(f"/api/cases/{case.case_id}").json()

    with database.session() as session:
        stored = session.scalar(select(Concern.row_version).where(Concern.id == case.case_id))
    assert opened["status"] == again["status"] == "closed"
    assert opened["row_version"] == again["row_version"] == stored
