"""The social service's journey through its JSON API, on the real FHIR server process and
real PostgreSQL (and SQLite): a nurse's niet-pluis at triage (the real triage save) puts
the patient on the case list; the social worker records step 4 with the workshop's factors
(seed 001) → concerning with resistance → step 6 referral to the VK; the ServiceRequest
on the server validates against the guide; an out-of-order step gets the protocol's
reason; a stale save gets 409; closing makes the Flag inactive."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime, time, timedelta
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from sandbox.fhir_server import FhirServer
from service import casework
from service.db.base import Database, utcnow
from service.fhir import mapping, terminology
from service.fhir.client import FhirClient
from service.local_time import LOCAL_ZONE, local_today
from service.protocol import (
    CaseClosure,
    CloseReason,
    SafetyAssessment,
    Step4Decision,
    earliest_contact,
    latest_follow_up,
)
from service.tenant_config import EhrRegistration
from tests.support.casework import REVOKED, HandedOffCase, new_visit, patient_at_triage, save_triage
from tests.support.sessions import make_app, signed_in
from tests.support.validator import validate
from tests.support.workshop import WORKSHOP_FACTORS
from tests.support.write_path import (
    fhir_server,  # noqa: F401 - the module's FHIR server fixture
    make_tenant,
    search,
)

SOCIAL_WORKER = "Practitioner/social-worker"


def _handed_off_case(database_url: str, database: Database, base_url: str) -> HandedOffCase:
    tenant = make_tenant(database, "default", base_url)
    app = make_app(database_url, database)
    client = TestClient(app)
    patient = save_triage(app, tenant, base_url)
    worker = signed_in(app, tenant, SOCIAL_WORKER, "social-worker", fhir_base_url=base_url).headers
    (case,) = client.get("/api/cases", headers=worker).json()["items"]
    return HandedOffCase(
        client, worker, base_url, patient, case["id"], case["row_version"], app, tenant
    )


@pytest.fixture
def case(
    database_url: str,
    database: Database,
    fhir_server: FhirServer,  # noqa: F811
) -> HandedOffCase:
    """A patient handed off at triage on the module's FHIR server, and the social
    worker's API on that case."""
    return _handed_off_case(database_url, database, fhir_server.base_url)


def _referrals_on(case: HandedOffCase) -> list[dict[str, Any]]:
    """The referrals (ServiceRequests) of the case's patient on the FHIR server."""
    return search(case.base_url, "ServiceRequest", subject=case.patient)


def test_from_the_case_list_to_the_referral_to_the_vk(
    case: HandedOffCase,
) -> None:
    (listed,) = case.client.get("/api/cases", headers=case.headers).json()["items"]
    assert listed["patient"] == case.patient
    assert listed["last_step"] == "step-2"
    decided = case.send(
        "step-4",
        {
            "row_version": case.row_version,
            "decision": "concerning-unwilling",
            "factors": WORKSHOP_FACTORS,
            "consultations": ["colleague", "clb"],
            "discussed_with_patient": True,
            "note": "Worries named; she stops the counselling.",
            "key_persons": [{"role": "partner"}, {"role": "other", "text": "neighbour"}],
            "patient_explanation": "She says the children are fine alone for an hour.",
            "team_members": ["social worker ED", "dr. Janssens, paediatrician"],
        },
    )
    assert decided.status_code == 200, decided.text
    assert decided.json()["status"] == "delivered"
    assert decided.json()["next_steps"] == ["step-6"]
    version = decided.json()["row_version"]

    out_of_order = case.send(
        "step-5",
        {"row_version": version, "progress": "improving", "note": "Better."},
    )
    assert out_of_order.status_code == 422
    assert out_of_order.json()["detail"]["code"] == "step-out-of-order"
    assert "Next is step 6" in out_of_order.json()["detail"]["message"]

    referred = case.send(
        "step-6",
        {
            "row_version": version,
            "partner_id": "vk-oost-vlaanderen",
            "with_cooperation": False,
            "patient_informed": True,
            "follow_up_actions": ["Tell the CLB who takes the next step."],
            "contact": {"on": str(local_today()), "person": "An", "channel": "phone"},
        },
    )
    assert referred.status_code == 200, referred.text
    assert referred.json()["status"] == "delivered"

    (request,) = _referrals_on(case)
    assert validate(request) == []
    assert request["priority"] == "routine"  # no acute danger: said, not left to R4
    step_system = terminology.code_system_url("kindreflex-step")
    (decision,) = search(
        case.base_url, "Observation", subject=case.patient, code=f"{step_system}|step-4"
    )
    assert validate(decision) == []
    assert request["reasonReference"] == [{"reference": f"Observation/{decision['id']}"}]
    components = {c["code"]["coding"][0]["code"] for c in decision["component"]}
    assert {"key-person", "patient-explanation", "team-member"} <= components
    (step_6,) = search(
        case.base_url, "Observation", subject=case.patient, code=f"{step_system}|step-6"
    )
    assert validate(step_6) == []
    assert mapping.finding_from_observation(step_6).contact.person == "An"  # type: ignore[union-attr]
    organization = httpx.get(f"{case.base_url}/{request['performer'][0]['reference']}", timeout=10)
    assert organization.json()["name"].startswith("Vertrouwenscentrum")
    assert len(request["supportingInfo"]) == 2

    stale = case.refer_to_vk(version)
    assert stale.status_code == 409
    assert "Nothing was overwritten" in stale.json()["detail"]["message"]
    assert len(_referrals_on(case)) == 1

    on_hold = case.send(
        "referral",
        {
            "row_version": referred.json()["row_version"],
            "status": "on-hold",
            "note": "The VK waits until the mother is home.",
        },
    )
    assert on_hold.status_code == 200, on_hold.text
    assert on_hold.json()["status"] == "delivered"
    (request,) = _referrals_on(case)
    assert request["status"] == "on-hold"
    assert request["note"][-1]["text"] == "The VK waits until the mother is home."
    assert request["note"][-1]["authorReference"] == {"reference": SOCIAL_WORKER}
    assert validate(request) == []

    without_reason = case.send(
        "close",
        {"row_version": on_hold.json()["row_version"]},
    )
    assert without_reason.status_code == 422
    other_without_text = case.send(
        "close",
        {"row_version": on_hold.json()["row_version"], "reason": "other"},
    )
    assert other_without_text.status_code == 422
    assert other_without_text.json()["detail"]["code"] == "close-reason-text-required"
    closed = case.send(
        "close",
        {
            "row_version": on_hold.json()["row_version"],
            "reason": "referred",
            "reason_text": "The VK follows up.",
        },
    )
    assert closed.status_code == 200, closed.text
    (flag,) = search(case.base_url, "Flag", subject=case.patient)
    assert flag["status"] == "inactive"
    assert "end" in flag["period"]
    assert validate(flag) == []
    assert mapping.closure_from_flag(flag) == CaseClosure(
        CloseReason.REFERRED, "The VK follows up."
    )
    listed = case.client.get("/api/cases", headers=case.headers, params={"status": "closed"}).json()
    assert [item["id"] for item in listed["items"]] == [case.id]
    again = case.send(
        "close", {"row_version": closed.json()["row_version"], "reason": "safety-restored"}
    )
    assert again.status_code == 409
    # not the claim's wording ("a closed case is not assigned") for every change
    assert again.json()["detail"]["message"] == "This case is closed; nothing was changed."

    # A later concern of the same patient has its own referrals (here one made a day later).
    later = {k: v for k, v in request.items() if k not in ("id", "meta")}
    later["identifier"] = [{**request["identifier"][0], "value": str(uuid.uuid4())}]
    later["authoredOn"] = (utcnow() + timedelta(days=1)).isoformat()
    assert httpx.post(f"{case.base_url}/ServiceRequest", json=later, timeout=10).status_code == 201

    # The referral outlives the hospital's concern: its status is still kept up to date.
    completed = case.send(
        "referral",
        {"row_version": closed.json()["row_version"], "status": "completed"},
    )
    assert completed.status_code == 200, completed.text
    on_server = _referrals_on(case)
    assert sorted((r["id"] == request["id"], r["status"]) for r in on_server) == [
        (False, "on-hold"),  # the later concern's referral, untouched
        (True, "completed"),
    ]
    (request,) = [r for r in on_server if r["id"] == request["id"]]
    assert validate(request) == []
    reopened = case.send(
        "referral",
        {"row_version": completed.json()["row_version"], "status": "active"},
    )
    assert reopened.status_code == 422
    assert reopened.json()["detail"]["code"] == "referral-status-final"
    stale_status = case.send(
        "referral",
        {"row_version": closed.json()["row_version"], **REVOKED},
    )
    assert stale_status.status_code == 409
    assert {r["status"] for r in _referrals_on(case)} == {
        "completed",
        "on-hold",
    }

    history = case.client.get(f"/api/cases/{case.id}", headers=case.headers)
    assert history.status_code == 200, history.text
    opened = history.json()
    assert opened["status"] == "closed"
    assert opened["closure"] == {"reason": "referred", "text": "The VK follows up."}
    assert [f["step"] for f in opened["findings"]] == ["step-1", "step-2", "step-4", "step-6"]
    assert opened["findings"][2]["content"]["key_persons"] == [
        {"role": "partner", "text": None},
        {"role": "other", "text": "neighbour"},
    ]
    assert opened["findings"][3]["content"]["contact"]["person"] == "An"
    (referral_view,) = opened["referrals"]
    assert (referral_view["status"], referral_view["target"]) == ("completed", "vk")
    assert referral_view["notes"][-1]["text"] == "The VK waits until the mother is home."
    assert referral_view["facility_name"].startswith("Vertrouwenscentrum")
    assert referral_view["facility_telecom"][0]["system"] == "phone"
    assert len(opened["children"]) == 2


def test_the_apis_answers_about_children_are_never_kept_by_the_browser(
    case: HandedOffCase,
) -> None:
    """The worklist and a case as JSON carry what the pages do (names, the children's
    birth dates, notes), on workstations several people share. The pages were never
    cached; these answers, and the API's refusals, had no Cache-Control at all."""
    answers = [
        case.client.get("/api/cases", headers=case.headers),
        case.client.get(f"/api/cases/{case.id}", headers=case.headers),
        case.client.get("/api/cases/999999", headers=case.headers),  # not found
        case.client.get("/api/cases"),  # not signed in
    ]
    assert [a.status_code for a in answers] == [200, 200, 404, 401]
    assert {a.headers.get("cache-control") for a in answers} == {"no-store"}


def test_a_case_with_a_step_still_due_is_not_closed(
    case: HandedOffCase,
) -> None:

    refused = case.send(
        "close",
        {"row_version": case.row_version, "reason": "safety-restored"},
    )

    assert refused.status_code == 409
    assert "step-4" in refused.json()["detail"]["message"]
    (flag,) = search(case.base_url, "Flag", subject=case.patient)
    assert flag["status"] == "active"


def test_step_5_follow_ups_keep_the_case_open_and_show_on_the_worklist(
    case: HandedOffCase,
) -> None:
    willing = case.decide("concerning-willing", case.row_version)
    assert willing.status_code == 200, willing.text
    today = local_today()

    first = case.send(
        "step-5",
        {
            "row_version": willing.json()["row_version"],
            "progress": "improving",
            "actions": ["work-with-family"],
            "agreed_actions": [{"text": "Appointment at the CAW", "follow_up_on": str(today)}],
            "next_follow_up": str(today),
            "note": "First conversation; the mother agrees to go to the CAW.",
        },
    )

    assert first.status_code == 200, first.text
    assert first.json()["next_steps"] == ["step-3", "step-5"]
    (listed,) = case.client.get("/api/cases", headers=case.headers).json()["items"]
    assert (listed["follow_up_due"], listed["overdue"]) == (str(today), False)
    step_system = terminology.code_system_url("kindreflex-step")
    (progress,) = search(
        case.base_url, "Observation", subject=case.patient, code=f"{step_system}|step-5"
    )
    assert validate(progress) == []
    assert mapping.finding_from_observation(progress).next_follow_up == today  # type: ignore[union-attr]

    # an agreed action's check is a follow-up too (found by review: never on the worklist)
    action = {"text": "Home visit by the CAW", "follow_up_on": str(today + timedelta(days=9))}
    agreed = case.send(
        "step-5",
        {
            "row_version": first.json()["row_version"],
            "progress": "improving",
            "agreed_actions": [action],
            "next_follow_up": str(today + timedelta(days=14)),
        },
    )
    assert agreed.status_code == 200, agreed.text
    (listed,) = case.client.get("/api/cases", headers=case.headers).json()["items"]
    assert listed["follow_up_due"] == action["follow_up_on"]
    last = case.send(
        "step-5",
        {
            "row_version": agreed.json()["row_version"],
            "progress": "improving",
            "note": "Follow-up: the CAW sees her weekly.",
        },
    )

    assert last.status_code == 200, last.text
    assert last.json()["next_steps"] == ["step-3"]
    (listed,) = case.client.get("/api/cases", headers=case.headers).json()["items"]
    assert (listed["follow_up_due"], listed["overdue"]) == (None, False)
    past = case.send(
        "step-5",
        {
            "row_version": last.json()["row_version"],
            "progress": "improving",
            "next_follow_up": str(today - timedelta(days=1)),
        },
    )
    assert past.status_code == 422


def test_dates_a_year_out_of_reach_are_refused_with_their_reason(
    case: HandedOffCase,
) -> None:
    # Before, a follow-up in 2062 and a facility contact in 2002 (years typed wrong) were
    # recorded on the FHIR server.
    willing = case.decide("concerning-willing", case.row_version)
    assert willing.status_code == 200, willing.text
    version = willing.json()["row_version"]
    far = str(latest_follow_up(local_today()) + timedelta(days=1))
    for body in (
        {"next_follow_up": far},
        {"agreed_actions": [{"text": "Call the school", "follow_up_on": far}]},
    ):
        refused = case.send("step-5", {"row_version": version, "progress": "not-restored", **body})

        assert refused.status_code == 422, refused.text
        detail = refused.json()["detail"]
        assert detail["code"] == "follow-up-too-far-ahead"
        assert f"The follow-up date {far} lies more than a year ahead" in detail["message"]
    step_system = terminology.code_system_url("kindreflex-step")
    step_5 = f"{step_system}|step-5"
    assert search(case.base_url, "Observation", subject=case.patient, code=step_5) == []

    not_restored = case.send("step-5", {"row_version": version, "progress": "not-restored"})
    assert not_restored.status_code == 200, not_restored.text
    typo = str(earliest_contact(local_today()) - timedelta(days=1))
    refused = case.refer_to_vk(not_restored.json()["row_version"], contacted_on=typo)

    assert refused.status_code == 422, refused.text
    detail = refused.json()["detail"]
    assert detail["code"] == "contact-too-long-ago"
    assert f"on {typo} lies more than a year back" in detail["message"]
    assert _referrals_on(case) == []


def test_a_long_case_is_read_page_by_page(
    database_url: str,
    database: Database,
    fhir_server: FhirServer,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Before, one page of 500 findings (and 100 referrals) was read and further pages were
    # not followed: a longer case silently lost part of its history. Two findings a page
    # here: five findings take three pages of the real server's ``next`` links.
    monkeypatch.setattr(casework, "FINDINGS_PAGE_SIZE", 2)
    pages: list[str] = []
    request = FhirClient._request

    def counted(self: FhirClient, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        if url.startswith(f"{self.base_url}/Observation"):
            pages.append(url)
        return request(self, method, url, *args, **kwargs)

    monkeypatch.setattr(FhirClient, "_request", counted)
    case = _handed_off_case(database_url, database, fhir_server.base_url)
    saved = case.decide("concerning-willing", case.row_version)
    today = str(local_today())
    for _ in range(2):  # each save replays the case as read: all of it, or the save is refused
        assert saved.status_code == 200, saved.text
        body = {"progress": "improving", "next_follow_up": today}
        saved = case.send("step-5", {"row_version": saved.json()["row_version"], **body})
    assert saved.status_code == 200, saved.text
    pages.clear()

    opened = case.client.get(f"/api/cases/{case.id}", headers=case.headers).json()

    steps = [f["step"] for f in opened["findings"]]
    assert steps == ["step-1", "step-2", "step-4", "step-5", "step-5"]
    assert opened["history_complete"] is True
    assert len(pages) == 3  # the first page, then two next links
    assert all("_count=2" in url for url in pages[1:])


def _referred_twice(case: HandedOffCase) -> int:
    """Decide the case concerning-unwilling and refer it to the VK twice; its row version."""
    saved = case.decide("concerning-unwilling", case.row_version)
    for _ in range(2):
        assert saved.status_code == 200, saved.text
        saved = case.refer_to_vk(saved.json()["row_version"])
    assert saved.status_code == 200, saved.text
    return int(saved.json()["row_version"])


def test_a_case_longer_than_a_read_takes_says_its_history_is_incomplete(
    database_url: str,
    database: Database,
    fhir_server: FhirServer,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Beyond the pages a case reads, the page and the API say so instead of hiding it.
    monkeypatch.setattr(casework, "REFERRALS_PAGE_SIZE", 1)
    case = _handed_off_case(database_url, database, fhir_server.base_url)
    _referred_twice(case)
    incomplete = "de geschiedenis hieronder is onvolledig"

    monkeypatch.setattr(casework, "MAX_SEARCH_PAGES", 1)
    opened = case.client.get(f"/api/cases/{case.id}", headers=case.headers).json()
    page = case.client.get(f"/social/cases/{case.id}", headers=case.headers).text
    assert (opened["history_complete"], len(opened["referrals"])) == (False, 1)
    assert incomplete in page

    monkeypatch.setattr(casework, "MAX_SEARCH_PAGES", 2)
    opened = case.client.get(f"/api/cases/{case.id}", headers=case.headers).json()
    page = case.client.get(f"/social/cases/{case.id}", headers=case.headers).text
    assert (opened["history_complete"], len(opened["referrals"])) == (True, 2)
    assert incomplete not in page


def _step_4_findings(case: HandedOffCase) -> list[dict[str, Any]]:
    step = f"{terminology.code_system_url('kindreflex-step')}|step-4"
    return search(case.base_url, "Observation", subject=case.patient, code=step)


def test_a_case_read_in_part_is_not_changed(
    case: HandedOffCase,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Beyond the pages a case reads, a change ruled on part of its history could be wrong:
    # before, the team's decision (on the page not read) was taken a second time, as the
    # findings read still asked for it. Now the step and the closing are refused, nothing
    # is written; the case is still shown, saying its history is incomplete.
    decided = case.decide("concerning-willing", case.row_version)
    assert decided.status_code == 200, decided.text
    version = decided.json()["row_version"]
    monkeypatch.setattr(casework, "FINDINGS_PAGE_SIZE", 2)  # steps 1 and 2: step 4 unread
    monkeypatch.setattr(casework, "MAX_SEARCH_PAGES", 1)

    again = case.decide("concerning-willing", version)
    closing = case.send("close", {"row_version": version, "reason": "safety-restored"})
    opened = case.client.get(f"/api/cases/{case.id}", headers=case.headers)

    for refused in (again, closing):
        assert refused.status_code == 409, refused.text
        assert "more of this case's history" in refused.json()["detail"]["message"]
    assert len(_step_4_findings(case)) == 1
    assert opened.status_code == 200
    assert opened.json()["history_complete"] is False


def test_a_referral_status_is_not_changed_when_not_every_referral_was_read(
    database_url: str,
    database: Database,
    fhir_server: FhirServer,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The latest referral may be among those not read: before, the status went to the
    # latest of those read, here the older referral.
    monkeypatch.setattr(casework, "REFERRALS_PAGE_SIZE", 1)
    case = _handed_off_case(database_url, database, fhir_server.base_url)
    row_version = _referred_twice(case)
    before = sorted((r["id"], r["status"]) for r in _referrals_on(case))
    monkeypatch.setattr(casework, "MAX_SEARCH_PAGES", 1)

    changed = case.send("referral", {"row_version": row_version, "status": "completed"})

    assert changed.status_code == 409, changed.text
    assert "more of this case's history" in changed.json()["detail"]["message"]
    assert sorted((r["id"], r["status"]) for r in _referrals_on(case)) == before


def _referred_to_the_vk_then_the_police(case: HandedOffCase) -> tuple[str, str, int]:
    """The VK first; then the team finds acute danger and involves the police (two step 6s).
    The ids of the VK's and the police's ServiceRequests, and the case's row version."""
    referred = case.referred_after_an_unwilling_decision()
    assert referred.status_code == 200, referred.text
    decided = case.decide("acute-danger", referred.json()["row_version"])
    assert decided.status_code == 200, decided.text
    police = {"partner_id": "politie", "with_cooperation": False, "patient_informed": True}
    referred = case.send("step-6", {"row_version": decided.json()["row_version"], **police})
    assert referred.status_code == 200, referred.text
    by_target = {mapping.referral_target(r): r["id"] for r in _referrals_on(case)}
    return by_target["vk"], by_target["police"], int(referred.json()["row_version"])


def test_a_status_note_by_a_social_worker_signed_in_as_a_practitioner_role_names_her(
    case: HandedOffCase,
) -> None:
    """R4's Annotation.authorReference admits no PractitionerRole: the note of a user whose
    fhirUser is one names her by her name (authorString), and the FHIR server keeps the
    update. The mapping's test alone covered it; here the API's save reaches the server
    and the ServiceRequest read back from it carries the note."""
    referred = case.referred_after_an_unwilling_decision()
    assert referred.status_code == 200, referred.text
    role = "PractitionerRole/sw-role"
    signed = signed_in(
        case.app, case.tenant, role, "social-worker", fhir_base_url=case.base_url, name="An Peeters"
    )
    as_her_role = dataclasses.replace(case, headers=signed.headers)

    on_hold = as_her_role.send(
        "referral",
        {
            "row_version": referred.json()["row_version"],
            "status": "on-hold",
            "note": "The VK calls back on Monday.",
        },
    )

    assert on_hold.status_code == 200, on_hold.text
    assert on_hold.json()["status"] == "delivered"
    (request,) = _referrals_on(case)
    assert request["status"] == "on-hold"
    (note,) = request["note"]
    assert note["authorString"] == "An Peeters"
    assert "authorReference" not in note
    assert note["text"] == "The VK calls back on Monday."
    assert validate(request) == []


def test_an_earlier_referral_still_running_is_followed_up_after_a_later_one(
    case: HandedOffCase,
) -> None:
    """After a referral to the police the VK's stayed active for good: the API changed only
    the latest referral. Now the body names the referral; without a name it is still the
    latest (the API's earlier meaning)."""
    vk, police, version = _referred_to_the_vk_then_the_police(case)

    completed = case.send(
        "referral",
        {"row_version": version, "referral_id": vk, "status": "completed", "note": "VK done."},
    )

    assert completed.status_code == 200, completed.text
    on_server = {r["id"]: r for r in _referrals_on(case)}
    assert (on_server[vk]["status"], on_server[police]["status"]) == ("completed", "active")
    assert on_server[vk]["note"][-1]["text"] == "VK done."
    assert validate(on_server[vk]) == []
    unnamed = case.send(
        "referral", {"row_version": completed.json()["row_version"], "status": "on-hold"}
    )
    assert unnamed.status_code == 200, unnamed.text
    statuses = {r["id"]: r["status"] for r in _referrals_on(case)}
    assert statuses == {vk: "completed", police: "on-hold"}
    opened = case.client.get(f"/api/cases/{case.id}", headers=case.headers).json()
    assert [(r["id"], r["status"]) for r in opened["referrals"]] == [
        (police, "on-hold"),
        (vk, "completed"),
    ]


def test_another_cases_referral_is_not_changed_through_this_case(
    case: HandedOffCase,
) -> None:
    """A referral id is looked up among this case's referrals only: another patient's is
    refused with nothing written, as is an id that is no FHIR id."""
    version = case.referred_after_an_unwilling_decision().json()["row_version"]
    other_patient = save_triage(case.app, case.tenant, case.base_url)
    listed = case.client.get("/api/cases", headers=case.headers).json()["items"]
    (other_row,) = [c for c in listed if c["patient"] == other_patient]
    other_case = dataclasses.replace(
        case, patient=other_patient, id=other_row["id"], row_version=other_row["row_version"]
    )
    assert other_case.referred_after_an_unwilling_decision().status_code == 200
    (other,) = search(case.base_url, "ServiceRequest", subject=other_patient)
    before = {r["id"]: r["meta"]["versionId"] for r in [other, *_referrals_on(case)]}

    foreign = case.send(
        "referral", {"row_version": version, "referral_id": other["id"], "status": "revoked"}
    )
    garbled = case.send(
        "referral", {"row_version": version, "referral_id": "../Patient/1", "status": "revoked"}
    )

    assert foreign.status_code == 422, foreign.text
    assert "not one of this case's referrals" in foreign.json()["detail"]["message"]
    assert garbled.status_code == 422, garbled.text
    after = search(case.base_url, "ServiceRequest", subject=other_patient)
    after += _referrals_on(case)
    assert {r["id"]: r["meta"]["versionId"] for r in after} == before
    assert {r["status"] for r in after} == {"active"}
    row = case.client.get(f"/api/cases/{case.id}", headers=case.headers).json()
    assert row["row_version"] == version  # the case's row is not touched either


def test_a_safe_home_is_closed_as_safety_restored_not_as_referred(
    case: HandedOffCase,
) -> None:
    safe = case.send(
        "step-4",
        {"row_version": case.row_version, "decision": "safe", "consultations": ["expert"]},
    )
    assert safe.status_code == 200, safe.text
    version = safe.json()["row_version"]

    referred = case.send(
        "close",
        {"row_version": version, "reason": "referred"},
    )
    assert referred.status_code == 422
    assert referred.json()["detail"]["code"] == "not-referred"
    assert search(case.base_url, "Flag", subject=case.patient)[0]["status"] == "active"

    restored = case.send(
        "close",
        {"row_version": version, "reason": "safety-restored"},
    )
    assert restored.status_code == 200, restored.text
    (flag,) = search(case.base_url, "Flag", subject=case.patient)
    assert mapping.closure_from_flag(flag) == CaseClosure(CloseReason.SAFETY_RESTORED)
    assert validate(flag) == []
    no_referral = case.send(
        "referral",
        {"row_version": restored.json()["row_version"], "status": "completed"},
    )
    assert no_referral.status_code == 409
    assert "no referral" in no_referral.json()["detail"]["message"]


def test_a_referral_changed_on_the_fhir_server_meanwhile_is_not_overwritten(
    case: HandedOffCase,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The facility's own system updates the ServiceRequest between the service's read and
    its write: a real second writer on the real FHIR server, interleaved at that moment."""
    referred = case.referred_after_an_unwilling_decision()
    assert referred.json()["status"] == "delivered", referred.text
    read_referral = casework._referral

    def read_then_the_facility_writes(
        client: Any, record: Any, referral_id: str | None
    ) -> dict[str, Any]:
        as_read = read_referral(client, record, referral_id)
        theirs = {**as_read, "note": [{"text": "VK: case taken on by An."}]}
        url = f"{case.base_url}/ServiceRequest/{as_read['id']}"
        assert httpx.put(url, json=theirs, timeout=10).status_code == 200
        return as_read

    monkeypatch.setattr(casework, "_referral", read_then_the_facility_writes)
    refused = case.send("referral", {"row_version": referred.json()["row_version"], **REVOKED})
    assert refused.status_code == 409, refused.text
    assert "Nothing was overwritten" in refused.json()["detail"]["message"]
    (request,) = _referrals_on(case)
    assert request["status"] == "active"  # our revocation did not land on their change
    assert request["note"] == [{"text": "VK: case taken on by An."}]

    monkeypatch.undo()  # the social worker opens the case again and redoes the change
    current = case.client.get(f"/api/cases/{case.id}", headers=case.headers).json()
    redone = case.send("referral", {"row_version": current["row_version"], **REVOKED})
    assert redone.status_code == 200, redone.text
    (request,) = _referrals_on(case)
    assert request["status"] == "revoked"
    assert request["note"][0] == {"text": "VK: case taken on by An."}  # theirs is kept
    assert validate(request) == []


def test_a_case_whose_referral_was_revoked_is_not_closed_as_referred(
    case: HandedOffCase,
) -> None:
    """The hospital revoked its only referral: no facility took the family over. Before,
    the case could still be closed as "referred" (the protocol looked for a step 6, not at
    the referral's status) and nobody followed the family. Another reason still closes it."""
    referred = case.referred_after_an_unwilling_decision()
    revoked = case.send("referral", {"row_version": referred.json()["row_version"], **REVOKED})
    assert revoked.status_code == 200, revoked.text
    version = revoked.json()["row_version"]

    refused = case.send("close", {"row_version": version, "reason": "referred"})
    assert refused.status_code == 422, refused.text
    assert refused.json()["detail"]["code"] == "referrals-revoked"
    (flag,) = search(case.base_url, "Flag", subject=case.patient)
    assert flag["status"] == "active"
    closing = {"row_version": version, "reason": "other", "reason_text": "VK declined"}
    closed = case.send("close", closing)
    assert closed.status_code == 200, closed.text


def _closed_as(case: HandedOffCase, row_version: int, reason: str) -> int:
    """The case closed with ``reason`` (and a text); its row version after."""
    body = {"row_version": row_version, "reason": reason, "reason_text": "VK takes it on."}
    closed = case.send("close", body)
    assert closed.status_code == 200, closed.text
    return int(closed.json()["row_version"])


def _open_cases(case: HandedOffCase) -> list[tuple[int, str]]:
    """The social worker's worklist of open cases: each case's id and its last step."""
    listed = case.client.get("/api/cases", headers=case.headers).json()["items"]
    return [(item["id"], item["last_step"]) for item in listed]


def test_revoking_the_only_referral_of_a_case_closed_as_referred_reopens_it(
    case: HandedOffCase,
) -> None:
    """The case was closed as "referred" (the VK took it over); then the hospital revoked
    that referral. Before, the case stayed closed as "referred" while no facility held it:
    off the worklist, its Flag inactive (no warning at the next visit), nobody following
    the children. Now the revocation reopens it in the same transaction."""
    referred = case.referred_after_an_unwilling_decision()
    closed = _closed_as(case, referred.json()["row_version"], "referred")
    assert _open_cases(case) == []

    revoked = case.send(
        "referral", {"row_version": closed, "status": "revoked", "note": "VK declined."}
    )

    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["status"] == "delivered"
    (flag,) = search(case.base_url, "Flag", subject=case.patient)
    assert flag["status"] == "active"
    assert "end" not in flag["period"]
    closing = terminology.extension_url("concern-close-reason")
    assert closing not in {e["url"] for e in flag.get("extension", [])}
    assert validate(flag) == []
    (request,) = _referrals_on(case)
    assert request["status"] == "revoked"
    assert validate(request) == []
    # one write, one signature: the Provenance names the referral and the reopened Flag
    signed = search(case.base_url, "Provenance", target=f"Flag/{flag['id']}")
    targets = {t["reference"] for p in signed for t in p["target"]}
    assert f"ServiceRequest/{request['id']}" in targets
    # back on the worklist, step 6 (a new referral) open
    assert _open_cases(case) == [(case.id, "step-6")]
    opened = case.client.get(f"/api/cases/{case.id}", headers=case.headers).json()
    assert (opened["status"], opened["closure"]) == ("open", None)
    assert "step-6" in opened["next_steps"]
    # and the social worker is told
    assert revoked.json()["reopening"] == "reopened"
    assert "step-6" in revoked.json()["next_steps"]
    # still no closing as "referred" while no referral stands; a new referral is recorded
    version = opened["row_version"]
    refused = case.send("close", {"row_version": version, "reason": "referred"})
    assert refused.json()["detail"]["code"] == "referrals-revoked"
    assert case.refer_to_vk(version).status_code == 200


def test_a_case_closed_as_referred_stays_closed_while_a_referral_stands(
    case: HandedOffCase,
) -> None:
    """Revoking one referral while another stands (the police's, after the VK's) leaves
    the case closed as "referred": a facility holds it. Revoking the last one reopens it."""
    vk, police, version = _referred_to_the_vk_then_the_police(case)
    closed = _closed_as(case, version, "referred")

    first = case.send("referral", {"row_version": closed, "referral_id": vk, **REVOKED})

    assert first.status_code == 200, first.text
    assert first.json()["reopening"] is None
    (flag,) = search(case.base_url, "Flag", subject=case.patient)
    assert flag["status"] == "inactive"
    assert mapping.closure_from_flag(flag) == CaseClosure(CloseReason.REFERRED, "VK takes it on.")
    assert _open_cases(case) == []
    last = {"row_version": first.json()["row_version"], "referral_id": police}
    second = case.send("referral", {**last, **REVOKED})
    assert second.json()["reopening"] == "reopened"
    assert _open_cases(case) == [(case.id, "step-6")]


def test_a_case_closed_as_safe_stays_closed_when_its_referral_is_revoked(
    database_url: str,
    database: Database,
    fhir_server: FhirServer,  # noqa: F811
) -> None:
    """Closed for another reason than "referred": the case never rested on the referral."""
    safe = _handed_off_case(database_url, database, fhir_server.base_url)
    referred = safe.referred_after_an_unwilling_decision()
    closed = _closed_as(safe, referred.json()["row_version"], "safety-restored")
    revoked = safe.send("referral", {"row_version": closed, **REVOKED})
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["reopening"] is None
    (flag,) = search(safe.base_url, "Flag", subject=safe.patient)
    assert flag["status"] == "inactive"
    assert mapping.closure_from_flag(flag) == CaseClosure(
        CloseReason.SAFETY_RESTORED, "VK takes it on."
    )
    opened = safe.client.get(f"/api/cases/{safe.id}", headers=safe.headers).json()
    assert opened["status"] == "closed"


def test_revoking_the_last_referral_keeps_the_case_closed_when_another_is_open(
    case: HandedOffCase,
) -> None:
    """One open case per patient: a later visit's niet-pluis opened a new case, where the
    children are followed. Revoking the earlier case's last referral is recorded, that case
    stays closed, and the answer says why."""
    referred = case.referred_after_an_unwilling_decision()
    closed = _closed_as(case, referred.json()["row_version"], "referred")
    save_triage(case.app, case.tenant, case.base_url, returning=case.patient)
    ((new_case, _),) = _open_cases(case)

    revoked = case.send("referral", {"row_version": closed, **REVOKED})

    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["reopening"] == "kept-closed"
    (request,) = _referrals_on(case)
    assert request["status"] == "revoked"
    flags = {f["status"]: f for f in search(case.base_url, "Flag", subject=case.patient)}
    assert mapping.closure_from_flag(flags["inactive"]) == CaseClosure(
        CloseReason.REFERRED, "VK takes it on."
    )
    assert _open_cases(case) == [(new_case, "step-2")]
    assert new_case != case.id
    opened = case.client.get(f"/api/cases/{case.id}", headers=case.headers).json()
    assert opened["status"] == "closed"


def test_a_new_case_opened_while_the_revocation_is_saved_keeps_the_earlier_closed(
    case: HandedOffCase,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A nurse's niet-pluis opens a new case of the patient just after the revocation
    found none open: the earlier case is not reopened beside it (one open case per
    patient), the revocation is recorded all the same and says the case stays closed."""
    referred = case.referred_after_an_unwilling_decision()
    closed = _closed_as(case, referred.json()["row_version"], "referred")
    looked = casework.Casework._reopening

    def looked_then_a_nurse_saves(self: Any, concern: Any, reopens: bool) -> Any:
        found = looked(self, concern, reopens)
        save_triage(case.app, case.tenant, case.base_url, returning=case.patient)
        return found

    monkeypatch.setattr(casework.Casework, "_reopening", looked_then_a_nurse_saves)
    revoked = case.send("referral", {"row_version": closed, **REVOKED})

    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["reopening"] == "kept-closed"
    (request,) = _referrals_on(case)
    assert request["status"] == "revoked"
    flags = sorted(f["status"] for f in search(case.base_url, "Flag", subject=case.patient))
    assert flags == ["active", "inactive"]  # the new case's, and the earlier one closed
    ((open_case, _),) = _open_cases(case)
    assert open_case != case.id


def test_a_case_whose_referral_the_ehr_withdrew_is_not_closed_as_referred(
    case: HandedOffCase,
) -> None:
    """Someone marks the case's only referral entered in error in the EHR. The summary then
    says there is no referral, and the closing as "referred" passed all the same: the Flag
    said a facility took the case over when the record holds no referral to one (review)."""
    referred = case.referred_after_an_unwilling_decision()
    assert referred.json()["status"] == "delivered", referred.text
    (request,) = _referrals_on(case)
    withdrawn = {**request, "status": "entered-in-error"}
    url = f"{case.base_url}/ServiceRequest/{request['id']}"
    assert httpx.put(url, json=withdrawn, timeout=10).status_code == 200

    version = referred.json()["row_version"]
    refused = case.send("close", {"row_version": version, "reason": "referred"})

    assert refused.status_code == 422, refused.text
    assert refused.json()["detail"]["code"] == "no-referral-stands"
    (flag,) = search(case.base_url, "Flag", subject=case.patient)
    assert flag["status"] == "active"
    closing = {"row_version": version, "reason": "other", "reason_text": "referral withdrawn"}
    assert case.send("close", closing).status_code == 200


def test_the_next_visit_during_the_follow_up_leaves_the_case_workable(
    case: HandedOffCase,
) -> None:
    """Seed 000: the Kindreflex at every contact. The nurse's steps 1-2 at the patient's next
    visit (no concern this time) do not close the team's follow-up, nor block it."""
    willing = case.decide("concerning-willing", case.row_version)
    assert willing.status_code == 200, willing.text

    save_triage(
        case.app,
        case.tenant,
        case.base_url,
        returning=case.patient,
        assessment=SafetyAssessment.NO_CONCERN,
    )

    opened = case.client.get(f"/api/cases/{case.id}", headers=case.headers)
    assert opened.status_code == 200, opened.text
    assert opened.json()["next_steps"] == ["step-3", "step-5"]
    progress = case.send(
        "step-5",
        {
            "row_version": willing.json()["row_version"],
            "progress": "improving",
            "note": "The CAW sees her weekly.",
        },
    )
    assert progress.status_code == 200, progress.text


def test_a_new_concern_after_a_closed_one_starts_at_the_team_decision(
    case: HandedOffCase,
) -> None:
    unwilling = case.decide("concerning-unwilling", case.row_version)
    referred = case.refer_to_vk(unwilling.json()["row_version"], contacted_on=str(local_today()))
    closed = case.send(
        "close", {"row_version": referred.json()["row_version"], "reason": "referred"}
    )
    assert closed.status_code == 200, closed.text

    save_triage(case.app, case.tenant, case.base_url, returning=case.patient)

    (new,) = case.client.get("/api/cases", headers=case.headers).json()["items"]
    assert new["id"] != case.id
    opened = case.client.get(f"/api/cases/{new['id']}", headers=case.headers).json()
    # the earlier concern's referral route (steps 5 and 6) does not carry into this one
    assert opened["next_steps"] == ["step-4"]
    assert [f["step"] for f in opened["findings"]] == ["step-1", "step-2"]
    earlier = case.client.get(f"/api/cases/{case.id}", headers=case.headers).json()
    assert [f["step"] for f in earlier["findings"]] == ["step-1", "step-2", "step-4", "step-6"]


def test_a_facility_called_after_midnight_in_belgium_is_called_today(
    case: HandedOffCase,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Between midnight and 01:00 (02:00 in summer) the UTC date is still yesterday's. The
    clock is set to 00:30 in Brussels (the time of day cannot be caused otherwise); the
    social worker's "today" is the Belgian date."""
    tomorrow = (utcnow() + timedelta(days=1)).astimezone(LOCAL_ZONE).date()
    half_past_midnight = datetime.combine(tomorrow, time(0, 30), tzinfo=LOCAL_ZONE)
    assert half_past_midnight.astimezone(UTC).date() < tomorrow
    monkeypatch.setattr(casework, "local_now", lambda: half_past_midnight)
    unwilling = case.decide("concerning-unwilling", case.row_version)
    assert unwilling.status_code == 200, unwilling.text

    referred = case.refer_to_vk(unwilling.json()["row_version"], contacted_on=str(tomorrow))

    assert referred.status_code == 200, referred.text


def test_a_patient_name_longer_than_the_worklist_column_is_cut_not_a_500(
    case: HandedOffCase,
) -> None:
    patient = httpx.get(f"{case.base_url}/{case.patient}", timeout=10).json()
    patient["name"] = [{"text": "Van " + "der Berghe-" * 40 + "\u200b"}]
    httpx.put(f"{case.base_url}/{case.patient}", json=patient, timeout=10).raise_for_status()

    opened = case.client.get(f"/api/cases/{case.id}", headers=case.headers)

    assert opened.status_code == 200, opened.text
    (listed,) = case.client.get("/api/cases", headers=case.headers).json()["items"]
    assert listed["patient_display"] == ("Van " + "der Berghe-" * 40)[:200]


def test_a_second_ehr_of_the_hospital_has_its_own_patients_and_cases(
    case: HandedOffCase,
    fhir_server: FhirServer,  # noqa: F811
) -> None:
    """A hospital with two EHRs has two FHIR servers, on which Patient/123 may be two
    people. (The second server here is the same process under another address: the patient
    ids coincide, which is what the test needs.)"""
    second_ehr = fhir_server.base_url.replace("127.0.0.1", "localhost")
    assert second_ehr != fhir_server.base_url

    second = EhrRegistration(id="ehr-2", name="EPD 2", fhir_base_url=second_ehr, client_id="kr")
    config = case.tenant.config.model_copy(
        update={"registrations": [*case.tenant.config.registrations, second]}
    )
    tenant = case.app.state.tenants.save("default", config, actor="test")  # what the app serves
    save_triage(case.app, tenant, second_ehr, returning=case.patient)

    listed = case.client.get("/api/cases", headers=case.headers).json()["items"]
    assert len(listed) == 2  # not joined to the first EHR's open concern
    other = next(c["id"] for c in listed if c["id"] != case.id)
    refused = case.client.get(f"/api/cases/{other}", headers=case.headers)
    assert refused.status_code == 409
    assert "another EHR" in refused.json()["detail"]["message"]
    from_second = signed_in(
        case.app, tenant, SOCIAL_WORKER, "social-worker", fhir_base_url=second_ehr
    ).headers
    assert case.client.get(f"/api/cases/{other}", headers=from_second).status_code == 200


def test_acute_danger_is_marked_on_the_worklist_until_the_team_decides_otherwise(
    case: HandedOffCase,
) -> None:
    (listed,) = case.client.get("/api/cases", headers=case.headers).json()["items"]
    assert listed["acute_danger"] is False

    save_triage(case.app, case.tenant, case.base_url, returning=case.patient, acute_danger=True)

    (listed,) = case.client.get("/api/cases", headers=case.headers).json()["items"]
    assert listed["acute_danger"] is True  # the same concern, now acute
    screen = case.client.get("/social", headers=case.headers).text
    assert "data-acute-danger" in screen
    assert "Acuut gevaar" in screen
    willing = case.decide("concerning-willing", listed["row_version"])
    assert willing.status_code == 200, willing.text
    (listed,) = case.client.get("/api/cases", headers=case.headers).json()["items"]
    assert listed["acute_danger"] is False


def test_a_referral_to_the_police_after_the_teams_acute_danger_is_stat(
    case: HandedOffCase,
) -> None:
    """The team finds acute danger and involves the police: the ServiceRequest on the
    EHR's server says priority stat (to be actioned immediately). Without it R4 reads the
    referral as of normal priority, and the police's or the parket's queue as routine."""
    decided = case.decide("acute-danger", case.row_version)
    assert decided.status_code == 200, decided.text

    referred = case.send(
        "step-6",
        {
            "row_version": decided.json()["row_version"],
            "partner_id": "politie",
            "with_cooperation": False,
            "patient_informed": True,
        },
    )

    assert referred.status_code == 200, referred.text
    (request,) = _referrals_on(case)
    assert request["performerType"]["coding"][0]["code"] == "police"
    assert request["priority"] == "stat"
    assert validate(request) == []


def test_the_social_workers_text_reaches_fhir_clean_and_a_garbled_reference_is_refused(
    case: HandedOffCase,
) -> None:
    # FHIR strings may not hold control characters and PostgreSQL cannot store a NUL: typed
    # text is cleaned (service.text's rule), an identifier is refused, never changed.
    garbled_ref = case.send(
        "step-4",
        {"row_version": case.row_version, "decision": "safe", "encounter_ref": "Encounter/1\n"},
    )
    assert garbled_ref.status_code == 422
    assert "one line" in garbled_ref.text

    decided = case.send(
        "step-4",
        {
            "row_version": case.row_version,
            "decision": "concerning-unwilling",
            "consultations": ["colleague"],
            "discussed_with_patient": True,
            "note": "\u200bGesprek\x00 met oma.\u00ad",
            "patient_explanation": "\u200b \u200b",
            "team_members": ["\ufeff", "dr. Janssens\x07"],
            "key_persons": [{"role": "other", "text": "buurvrouw\x1b"}],
        },
    )

    assert decided.status_code == 200, decided.text
    step_system = terminology.code_system_url("kindreflex-step")
    (observation,) = search(
        case.base_url, "Observation", subject=case.patient, code=f"{step_system}|step-4"
    )
    assert validate(observation) == []
    finding = mapping.finding_from_observation(observation)
    assert isinstance(finding, Step4Decision)
    assert finding.note == "Gesprek met oma."
    assert finding.patient_explanation is None
    assert finding.team_members == ("dr. Janssens",)
    assert finding.key_persons[0].text == "buurvrouw"


def test_a_step_names_only_a_visit_of_the_cases_patient(
    case: HandedOffCase,
) -> None:
    """The API's ``encounter_ref`` (the visit a step was recorded in, when not the one that
    raised the concern) was written as the finding's and the referral's ``encounter``
    whatever it named: another patient's visit put the team's decision about these children
    in that patient's record (found by review). Now it must be an Encounter of the case's
    patient on the FHIR server; anything else is refused, nothing written."""
    _, someone_elses = patient_at_triage(case.base_url)
    decision = {
        "row_version": case.row_version,
        "decision": "concerning-unwilling",
        "consultations": ["colleague"],
        "discussed_with_patient": True,
    }
    for wrong in (f"Encounter/{someone_elses}", "Encounter/no-such-visit", case.patient):
        refused = case.send("step-4", {**decision, "encounter_ref": wrong})
        assert refused.status_code == 422, (wrong, refused.text)
        assert "encounter" in refused.text
    assert _step_4_findings(case) == []

    later_visit = f"Encounter/{new_visit(case.base_url, case.patient)}"
    decided = case.send("step-4", {**decision, "encounter_ref": later_visit})
    assert decided.status_code == 200, decided.text
    (recorded,) = _step_4_findings(case)
    assert recorded["encounter"] == {"reference": later_visit}
    assert validate(recorded) == []
