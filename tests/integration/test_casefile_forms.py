"""The case page's forms with input a hurried social worker sends (``smart_app.casefile``),
on the real FHIR server process: an unanswered question is refused next to its field,
never recorded as an answer, and nothing is written."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from html import unescape
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from sandbox.fhir_server import FhirServer
from service import casework
from service.db.base import Database, utcnow
from service.db.models import AppSession, AuditRecord, OutboxEntry
from service.fhir import terminology
from service.fhir.client import FhirClient, FhirRejected
from service.local_time import local, local_today
from service.outbox import DeliveryState
from service.protocol import SafetyAssessment, earliest_contact, latest_follow_up
from smart_app.casefile import referral_form
from smart_app.session import CSRF_HEADER
from tests.support.casework import (
    COLLEAGUE,
    REVOKED,
    SOCIAL_WORKER,
    STEP_4_FORM,
    STEP_6_FORM,
    TriagedCase,
    case_page,
    decided_and_referred,
    error_summary,
    hidden_field,
    index_case,
    listed_cases,
    on_the_worklist,
    post_form,
    referred_today,
    save_triage,
    saved_from_the_page,
    triage_waiting_for_sign_in,
    triaged_case,
)
from tests.support.relay import SlowRelay
from tests.support.sessions import UNUSED_FHIR, make_app, signed_in
from tests.support.write_path import (
    fhir_server,  # noqa: F401 - the module's FHIR server fixture
    make_tenant,
    search,
)


def _case_before_step_4(
    database_url: str, database: Database, base_url: str
) -> tuple[TestClient, int, str, str]:
    """A niet-pluis triage: the client of a signed-in social worker, the case id, the
    patient and the case page (with the step 4 form)."""
    case = triaged_case(database_url, database, base_url)
    return case.client, case.id, case.patient, case_page(case.client, case.id)


def _case_after_step_4(
    database_url: str, database: Database, base_url: str, decision: str = "concerning-unwilling"
) -> tuple[TestClient, int, str, str]:
    """A niet-pluis triage and the team's ``decision``: the client of a signed-in social
    worker, the case id, the patient and the case page (with the next step's form)."""
    client, case_id, patient, page = _case_before_step_4(database_url, database, base_url)
    decided = {**STEP_4_FORM, "decision": decision}
    after = saved_from_the_page(client, page, case_id, "step-4", "s4", decided)
    return client, case_id, patient, after


def _case_referred(
    database_url: str, database: Database, base_url: str
) -> tuple[TestClient, int, str, str]:
    """:func:`_case_after_step_4`, then a referral to the VK (step 6) today: the client,
    the case id, the patient and the case page after it."""
    client, case_id, patient, page = _case_after_step_4(database_url, database, base_url)
    return client, case_id, patient, referred_today(client, page, case_id)


def _findings_of(base_url: str, patient: str, step: str) -> list[dict[str, Any]]:
    """The patient's Kindreflex findings of ``step`` (``"step-5"``) on the FHIR server."""
    code = f"{terminology.code_system_url('kindreflex-step')}|{step}"
    return search(base_url, "Observation", subject=patient, code=code)


@dataclass(frozen=True)
class _Cases:
    """New cases at the hospital on the module's FHIR server, each brought to a point of
    the protocol (:func:`_case_before_step_4` and the others on ``base_url``)."""

    database_url: str
    database: Database
    base_url: str

    def triaged(self, **triage: Any) -> TriagedCase:
        """:func:`triaged_case` with ``triage``."""
        return triaged_case(self.database_url, self.database, self.base_url, **triage)

    def before_step_4(self) -> tuple[TestClient, int, str, str]:
        """:func:`_case_before_step_4`."""
        return _case_before_step_4(self.database_url, self.database, self.base_url)

    def after_step_4(
        self, decision: str = "concerning-unwilling"
    ) -> tuple[TestClient, int, str, str]:
        """:func:`_case_after_step_4` with ``decision``."""
        return _case_after_step_4(self.database_url, self.database, self.base_url, decision)

    def referred(self) -> tuple[TestClient, int, str, str]:
        """:func:`_case_referred`."""
        return _case_referred(self.database_url, self.database, self.base_url)


@pytest.fixture
def cases(
    database_url: str,
    database: Database,
    fhir_server: FhirServer,  # noqa: F811
) -> _Cases:
    """New cases on the module's FHIR server."""
    return _Cases(database_url, database, fhir_server.base_url)


@pytest.mark.parametrize(
    ("question", "anchor"), [("cooperation", "s6-cooperation"), ("informed", "s6-informed")]
)
def test_a_referral_with_a_yes_no_question_unanswered_is_refused_not_recorded_as_no(
    cases: _Cases,
    question: str,
    anchor: str,
) -> None:
    # Before, an unanswered "with the patient's cooperation" was written to the FHIR server
    # as "without cooperation" (and "informed" as "not informed").
    base_url = cases.base_url
    client, case_id, patient, page = cases.after_step_4()
    fields = {key: value for key, value in STEP_6_FORM.items() if key != question}

    refused = post_form(
        client, page, case_id, "step-6", "s6", {**fields, "contact_on": "2026-01-02"}
    )

    assert refused.status_code == 422
    assert "<title>Fout: Dossier " in refused.text  # a tab or a screen reader says so first
    assert f'href="#{anchor}"' in error_summary(refused.text, "s6")
    assert f'id="{anchor}-error"' in refused.text
    assert "Tell the CLB who takes the next step." in refused.text  # the input is kept
    assert search(base_url, "ServiceRequest", subject=patient) == []
    assert client.get("/api/cases").json()["items"][0]["last_step"] == "step-4"


def test_an_agreed_actions_date_in_the_past_is_shown_at_that_action_not_at_the_next_check(
    cases: _Cases,
) -> None:
    # Before, the message "a follow-up date does not lie in the past" stood at the next
    # follow-up, whose date was right; the wrong date was an agreed action's.
    base_url = cases.base_url
    client, case_id, patient, page = cases.after_step_4("concerning-willing")
    today = local_today()
    fields = {
        "progress": "improving",
        "action_text_1": "The school calls when the children are absent.",
        "action_on_1": (today - timedelta(days=1)).isoformat(),
        "next_follow_up": (today + timedelta(days=7)).isoformat(),
    }

    refused = post_form(client, page, case_id, "step-5", "s5", fields)

    assert refused.status_code == 422
    assert 'href="#s5-action-on-1"' in error_summary(refused.text, "s5")
    error = refused.text[refused.text.index('id="s5-action-on-1-error"') :]
    assert "afspraak 2 ligt in het verleden" in unescape(error[: error.index("</p>")])
    assert 'aria-describedby="s5-action-on-1-error" aria-invalid="true"' in refused.text
    assert 'id="s5-next-follow-up-error"' not in refused.text
    assert "The school calls when the children are absent." in refused.text
    assert _findings_of(base_url, patient, "step-5") == []


def test_a_referral_sent_twice_says_it_was_saved_not_that_someone_else_changed_the_case(
    cases: _Cases,
) -> None:
    # A double click sends the form twice; the browser shows the second answer. Before, it
    # said someone else had changed the case and asked to save again, with the input in the
    # step 6 form (offered again after a referral): a second referral to the VK.
    base_url = cases.base_url
    client, case_id, patient, page = cases.after_step_4()
    fields = {**STEP_6_FORM, "contact_on": local_today().isoformat()}

    first = post_form(client, page, case_id, "step-6", "s6", fields)
    second = post_form(client, page, case_id, "step-6", "s6", fields)

    assert first.status_code == 303
    assert second.status_code == 409
    said = error_summary(second.text, "s6")
    assert "U hebt dit dossier net opgeslagen vanuit deze aanmelding" in said
    assert "Iemand anders" not in said
    assert len(search(base_url, "ServiceRequest", subject=patient)) == 1


def test_a_closing_sent_twice_says_it_was_saved_not_only_that_the_case_is_closed(
    cases: _Cases,
) -> None:
    # Before, the second answer of a double-clicked "Afsluiten" said only "this case is
    # closed", as if a colleague had closed it: the social worker could not tell her own
    # closing (with her reason) went through.
    base_url = cases.base_url
    client, case_id, patient, page = cases.referred()

    first = post_form(client, page, case_id, "close", "close", {"reason": "referred"})
    second = post_form(client, page, case_id, "close", "close", {"reason": "referred"})

    assert first.status_code == 303
    assert second.status_code == 409
    assert "U hebt dit dossier net afgesloten vanuit deze aanmelding" in second.text
    assert "Dit dossier is afgesloten; er wordt niets meer vastgelegd." not in second.text
    (flag,) = search(base_url, "Flag", subject=patient)
    assert flag["status"] == "inactive"


def test_a_step_refused_because_a_colleague_moved_the_case_on_shows_the_typed_note_back(
    cases: _Cases,
) -> None:
    """Two social workers on one case at step 5: while one writes the progress note of a
    follow-up conversation, a colleague records step 5 "improving" with no next follow-up
    (step 5 is over). Her save was refused (409, right), but the page offered no step 5 form
    any more and her note was shown nowhere: it was lost (found by review). The note is
    shown back read-only; nothing of hers is recorded."""
    base_url = cases.base_url
    case = cases.triaged()
    client, case_id, patient = case.client, case.id, case.patient
    decision = {**STEP_4_FORM, "decision": "concerning-willing"}  # step 5 is due
    page = saved_from_the_page(
        client, case_page(client, case_id), case_id, "step-4", "s4", decision
    )
    colleague = signed_in(case.app, case.tenant, COLLEAGUE, "social-worker", fhir_base_url=base_url)
    version = int(hidden_field(page, "s5-form", "row_version"))
    moved_on = TestClient(case.app).post(
        f"/api/cases/{case_id}/step-5",
        headers=colleague.headers,
        json={"row_version": version, "progress": "improving"},
    )
    assert moved_on.status_code == 200, moved_on.text

    note = "Huisbezoek 14/3: moeder heeft de afspraak met het CGG afgezegd; vriend weer in huis."
    fields = {"progress": "not-restored", "action": ["work-with-family"], "note": note}
    refused = post_form(client, page, case_id, "step-5", "s5", fields)

    assert refused.status_code == 409
    shown = unescape(refused.text)
    assert 'id="s5-form"' not in shown
    assert "Het dossier biedt dit formulier niet meer aan" in shown
    assert f"readonly>{note}</textarea>" in shown
    assert '<label for="kept-1">Notitie</label>' in shown  # said what it was: not "Uw tekst 1"
    assert len(_findings_of(base_url, patient, "step-5")) == 1


def test_the_step_4_form_takes_as_much_text_as_the_service_keeps(
    database_url: str,
    database: Database,
    fhir_server: FhirServer,  # noqa: F811
) -> None:
    # A browser cuts pasted text at the field's maxlength without a word: the step 4 note
    # was cut at 3,000 characters where the service keeps 4,000. As on the nurse's page, no
    # field has a maxlength now: a text too long is refused next to it, saying the limit
    # (test_step_4s_note_and_explanation_too_long_are_refused_next_to_their_fields).
    tenant = make_tenant(database, "default", fhir_server.base_url)
    app = make_app(database_url, database)
    save_triage(app, tenant, fhir_server.base_url)
    worker = signed_in(
        app, tenant, SOCIAL_WORKER, "social-worker", fhir_base_url=fhir_server.base_url
    )
    client = TestClient(app, headers={"Cookie": worker.headers["Cookie"]})
    (case_id,) = listed_cases(client.get("/social").text)
    page = client.get(f"/social/cases/{case_id}").text
    form = page[page.index('id="s4-form"') : page.index("</form>", page.index('id="s4-form"'))]

    assert 'name="note"' in form
    assert "maxlength" not in form


def test_a_case_page_shown_while_the_fhir_server_is_down_is_an_audited_read(
    database_url: str, database: Database
) -> None:
    # The page still shows the worklist's row (the patient, the children's ages, who
    # flagged it); before, nothing of that read was audited when the server did not answer.
    hospital = make_tenant(database, "default", UNUSED_FHIR)
    case_id = index_case(database, hospital, "Patient/1", utcnow())
    app = make_app(database_url, database)
    worker = signed_in(app, hospital, SOCIAL_WORKER, "social-worker").headers
    client = TestClient(app, headers={"Cookie": worker["Cookie"]})

    page = client.get(f"/social/cases/{case_id}")

    assert "De FHIR-server antwoordt niet" in page.text
    with database.session() as session:
        reads = session.execute(
            select(AuditRecord.actor, AuditRecord.patient_ref, AuditRecord.outcome).where(
                AuditRecord.action == "read"
            )
        ).all()
    assert [tuple(r) for r in reads] == [(f"{UNUSED_FHIR}/{SOCIAL_WORKER}", "Patient/1", "failure")]


def test_the_printed_referral_gives_the_concerns_reasons_after_a_later_visit_without_concern(
    database_url: str,
    database: Database,
    fhir_server: FhirServer,  # noqa: F811
) -> None:
    # The Kindreflex is done at every contact: a nurse who finds no concern at the next
    # visit keeps the concern open. Before, the referral summary took that latest step 2,
    # which has no reasons, and the facility was told nothing of why there is a concern.
    base_url = fhir_server.base_url
    tenant = make_tenant(database, "default", base_url)
    app = make_app(database_url, database)
    patient = save_triage(app, tenant, base_url)
    save_triage(app, tenant, base_url, returning=patient, assessment=SafetyAssessment.NO_CONCERN)
    client, case_id = on_the_worklist(app, tenant, base_url)
    decided_and_referred(client, case_id)

    summary = client.get(f"/social/cases/{case_id}/referral")

    assert summary.status_code == 200
    assert "New partner is irritated by the children." in summary.text


def test_a_step_the_fhir_server_rejects_is_shown_again_with_the_input_not_as_saved(
    cases: _Cases,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A rejection (4xx) is final: nothing reaches the case and its row goes back. Before,
    # the page said "saved" and showed the step's form again empty: the referral typed was
    # gone. A mock, because the sandbox FHIR server accepts everything this form can send.
    base_url = cases.base_url
    client, case_id, patient, page = cases.after_step_4()
    outcome = {"resourceType": "OperationOutcome", "issue": [{"severity": "error"}]}

    def rejected(self: FhirClient, bundle: dict[str, Any]) -> Any:
        raise FhirRejected(422, outcome)

    monkeypatch.setattr(FhirClient, "transaction", rejected)
    fields = {**STEP_6_FORM, "contact_on": local_today().isoformat()}
    refused = post_form(client, page, case_id, "step-6", "s6", fields)

    assert refused.status_code == 502
    assert "er werd niets vastgelegd" in error_summary(refused.text, "s6")
    assert "Tell the CLB who takes the next step." in refused.text
    assert search(base_url, "ServiceRequest", subject=patient) == []


def test_every_field_the_form_got_wrong_is_shown_at_once(
    cases: _Cases,
) -> None:
    # Before, only the first was named: the social worker corrected one field per save.
    base_url = cases.base_url
    client, case_id, patient, page = cases.after_step_4()
    fields = {k: v for k, v in STEP_6_FORM.items() if k not in ("cooperation", "informed")}

    refused = post_form(client, page, case_id, "step-6", "s6", {**fields, "contact_on": "30-02"})

    assert refused.status_code == 422
    said = error_summary(refused.text, "s6")
    for anchor in ("s6-cooperation", "s6-informed", "s6-contact-on"):  # the date's own field
        assert f'href="#{anchor}"' in said
        assert f'id="{anchor}-error"' in refused.text
    assert search(base_url, "ServiceRequest", subject=patient) == []


def test_the_history_shows_the_services_and_consultations_of_step_5(
    cases: _Cases,
) -> None:
    # Before, step 5's supporting services and consultations were recorded but the case's
    # history left them out: nobody could see who was involved in restoring safety.
    client, case_id, _, page = cases.after_step_4("concerning-willing")
    fields = {"progress": "improving", "service": ["caw"], "consultation": ["expert"]}

    after = saved_from_the_page(client, page, case_id, "step-5", "s5", fields)

    start = after.index('id="history-heading"')
    history = after[start : after.index("</section>", start)]
    step_5 = history[history.rindex("<li>") :]
    assert terminology.display("partner-type", "caw", "nl") in step_5
    assert terminology.display("consultation-type", "expert", "nl") in step_5


def test_a_reason_for_not_informing_the_patient_next_to_informed_is_refused(
    cases: _Cases,
) -> None:
    # Before, "informed: yes" was recorded with a reason why the patient was not informed
    # (typed before switching to yes), and the facility's summary said both.
    base_url = cases.base_url
    client, case_id, patient, page = cases.after_step_4()
    fields = {
        **STEP_6_FORM,
        "informed": "yes",
        "not_informed_reason": "She would take the children away.",
        "contact_on": local_today().isoformat(),
    }

    refused = post_form(client, page, case_id, "step-6", "s6", fields)

    assert refused.status_code == 422
    assert 'href="#s6-not-informed-reason"' in error_summary(refused.text, "s6")
    assert 'id="s6-not-informed-reason-error"' in refused.text
    assert search(base_url, "ServiceRequest", subject=patient) == []


def test_the_history_shows_who_helps_on_a_bad_day_as_the_nurse_recorded_it(
    cases: _Cases,
) -> None:
    # Before, the nurse's answer at step 2 was recorded but the case's history left it out.
    case = cases.triaged(who_helps="Her sister, who lives next door.")

    page = case_page(case.client, case.id)

    start = page.index('id="history-heading"')
    history = page[start : page.index("</section>", start)]
    assert "Wie helpt op een slechte dag" in history
    assert "Her sister, who lives next door." in history


def test_a_referred_case_closes_after_a_later_visit_without_concern(
    cases: _Cases,
) -> None:
    # The Kindreflex is done at every contact. Before, the nurse's "no concern" at the
    # patient's next visit after the referral took the close form away and closing was
    # refused ("a step is still due"), though the case was referred.
    base_url = cases.base_url
    case = cases.triaged()
    client, case_id, patient = case.client, case.id, case.patient
    decided_and_referred(client, case_id)
    no_concern = SafetyAssessment.NO_CONCERN
    save_triage(case.app, case.tenant, base_url, returning=patient, assessment=no_concern)
    page = client.get(f"/social/cases/{case_id}").text

    assert 'id="close-form"' in page
    closed = post_form(client, page, case_id, "close", "close", {"reason": "referred"})
    assert closed.status_code == 303, closed.text
    (flag,) = search(base_url, "Flag", subject=patient)
    assert flag["status"] == "inactive"


def test_the_case_page_and_the_referral_write_dates_as_the_nurses_page_does(
    cases: _Cases,
) -> None:
    # Before, they showed ISO dates ("geboren 1990-04-12", "2026-05-17 16:58", a follow-up
    # "2026-05-24") where the nurse's page writes dd/mm/jjjj; an EHR that knows only the
    # year of birth made it "geboren 1990", as if the 1st of January were meant.
    base_url = cases.base_url
    client, case_id, patient, page = cases.after_step_4("concerning-willing")
    stored = httpx.get(f"{base_url}/{patient}", timeout=10).json()
    httpx.put(f"{base_url}/{patient}", json={**stored, "birthDate": "1990"}, timeout=10)
    today = local_today()
    action_on, next_check = today + timedelta(days=3), today + timedelta(days=7)
    fields = {
        "progress": "not-restored",
        "action_text_0": "The school calls when the children are absent.",
        "action_on_0": action_on.isoformat(),  # the date input's own form
        "next_follow_up": next_check.isoformat(),
    }
    after_5 = saved_from_the_page(client, page, case_id, "step-5", "s5", fields)
    fields = {**STEP_6_FORM, "contact_on": today.isoformat()}
    after_6 = saved_from_the_page(client, after_5, case_id, "step-6", "s6", fields)
    summary = client.get(f"/social/cases/{case_id}/referral").text

    # the status says the first check planned: here the agreed action's, before the next
    assert f"volgende opvolging {action_on:%d/%m/%Y}" in after_5
    assert f"children are absent. ({action_on:%d/%m/%Y})</li>" in after_5
    assert f"<dd>{next_check:%d/%m/%Y}</dd>" in after_5
    assert f"<dd>{today:%d/%m/%Y} · An · " in after_6  # the contact with the VK
    for html in (after_5, after_6, summary):
        assert "(geboren in 1990)" in html
        assert not re.search(r"\d{4}-\d{2}-\d{2}", _text(html)), _text(html)
    assert f"Afgedrukt op {today:%d/%m/%Y}" in summary
    # when the concern was flagged, each finding recorded and the referral made: Belgian
    # time, ISO for machines
    moments = re.findall(r'<time datetime="([^"]+)">([^<]+)</time>', after_6)
    assert len(moments) == 7  # the flag, steps 1, 2, 4, 5 and 6, the referral's status
    for machine, shown in moments:
        assert local(datetime.fromisoformat(machine)).strftime("%d/%m/%Y %H:%M") == shown


def _text(html: str) -> str:
    """What a page shows, without its markup (its attributes keep their machine forms)."""
    return re.sub(r"<[^>]*>", " ", html)


def test_the_history_names_the_facility_a_case_was_referred_to(
    cases: _Cases,
) -> None:
    # Before, the history named only the facility's type (VK): which of the VKs the case
    # went to was on the printable referral only.
    *_, after = cases.referred()

    history = after[after.index('<ol class="history">') : after.index("</ol>")]
    facility = "Vertrouwenscentrum Kindermishandeling (VK): Vertrouwenscentrum Kindermishandeling"
    assert f"<dd>{facility} Oost-Vlaanderen · " in history  # its type, then its name


def test_step_5s_unknown_codes_and_a_note_too_long_are_refused_next_to_their_fields(
    cases: _Cases,
) -> None:
    # Before, the error summary linked to them, but the fields said nothing: no message
    # beside them, nothing for a screen reader on the field itself.
    base_url = cases.base_url
    client, case_id, patient, page = cases.after_step_4("concerning-willing")
    fields = {
        "progress": "improving",
        "action": ["made-up-action"],
        "consultation": ["made-up-consultation"],
        "note": "n" * 4001,  # a paste gone wrong, past the textarea's maxlength
    }

    refused = post_form(client, page, case_id, "step-5", "s5", fields)

    assert refused.status_code == 422
    anchors = ("s5-actions", "s5-consultations", "s5-note")
    _assert_refused_at_their_fields(refused.text, "s5", anchors)
    assert "n" * 4001 in refused.text  # the input is kept
    assert _findings_of(base_url, patient, "step-5") == []


def test_step_4s_note_and_explanation_too_long_are_refused_next_to_their_fields(
    cases: _Cases,
) -> None:
    # Before, the error summary linked to them, but the fields said nothing.
    base_url = cases.base_url
    client, case_id, patient, page = cases.before_step_4()
    fields = {**STEP_4_FORM, "patient_explanation": "e" * 4001, "note": "n" * 4001}

    refused = post_form(client, page, case_id, "step-4", "s4", fields)

    assert refused.status_code == 422
    _assert_refused_at_their_fields(refused.text, "s4", ("s4-explanation", "s4-note"))
    assert "e" * 4001 in refused.text  # the input is kept
    assert "n" * 4001 in refused.text
    assert _findings_of(base_url, patient, "step-4") == []


def test_step_6s_note_and_contact_refused_next_to_their_fields(
    cases: _Cases,
) -> None:
    # Before, the summary linked the note to a field that said nothing, and the person to
    # the contact's fieldset: the message stood there, not at the field to correct.
    base_url = cases.base_url
    client, case_id, patient, page = cases.after_step_4()
    person = "p" * 201  # past the input's maxlength of 200
    contact = {"contact_on": local_today().isoformat(), "contact_person": person}
    fields = {**STEP_6_FORM, **contact, "contact_channel": "pigeon", "note": "n" * 4001}

    refused = post_form(client, page, case_id, "step-6", "s6", fields)

    assert refused.status_code == 422
    anchors = ("s6-contact-person", "s6-contact-channel", "s6-note")
    _assert_refused_at_their_fields(refused.text, "s6", anchors)
    assert 'id="s6-contact-error"' not in refused.text
    assert f'value="{person}"' in refused.text  # the input is kept
    assert "n" * 4001 in refused.text
    assert search(base_url, "ServiceRequest", subject=patient) == []


_NO_CONTACT_PERSON = {
    "nl": "Noem met wie u contact had bij de voorziening. Geen contact? Zet de datum dan terug"
    ' op vandaag en het kanaal op "Telefonisch".',
    "fr": "Indiquez avec qui vous avez eu contact au service. Pas de contact ? Remettez alors"
    ' la date à aujourd\'hui et le canal sur "Par téléphone".',
    "en": "Name whom you contacted at the facility. No contact? Then set the date back to today"
    ' and the channel to "By phone".',
}


@pytest.mark.parametrize(
    ("language", "changed"),
    [
        ("nl", {"contact_channel": "email"}),
        ("fr", {"contact_on": "yesterday"}),
        ("en", {"contact_on": "yesterday", "contact_channel": "letter"}),
    ],
)
def test_a_facility_contact_without_its_person_is_refused_not_dropped(
    cases: _Cases,
    database: Database,
    language: str,
    changed: dict[str, str],
) -> None:
    # Found by review: a social worker who set the day she phoned the VK or chose "email",
    # but named no one, saw step 6 saved; the contact she entered was dropped without a word.
    base_url = cases.base_url
    client, case_id, patient, page = cases.after_step_4()
    _speaks(database, language)
    page = client.get(f"/social/cases/{case_id}").text
    yesterday = (local_today() - timedelta(days=1)).isoformat()
    contact = {
        "contact_on": local_today().isoformat(),
        **{name: yesterday if value == "yesterday" else value for name, value in changed.items()},
        "contact_person": "",
    }

    refused = post_form(client, page, case_id, "step-6", "s6", {**STEP_6_FORM, **contact})

    assert refused.status_code == 422
    _assert_refused_at_their_fields(refused.text, "s6", ("s6-contact-person",))
    error = refused.text[refused.text.index('id="s6-contact-person-error"') :]
    assert _NO_CONTACT_PERSON[language] in unescape(error[: error.index("</p>")])
    if "contact_on" in changed:  # the input is kept
        assert f'name="contact_on" min="{earliest_contact(local_today())}"' in refused.text
        assert f'max="{local_today()}" value="{yesterday}"' in refused.text
    if "contact_channel" in changed:
        assert f'<option value="{changed["contact_channel"]}" selected>' in refused.text
    assert "Tell the CLB who takes the next step." in refused.text
    assert search(base_url, "ServiceRequest", subject=patient) == []
    assert _findings_of(base_url, patient, "step-6") == []


def test_a_referral_with_the_contact_left_as_drawn_is_saved_without_a_contact(
    cases: _Cases,
) -> None:
    # The page draws the contact as today, by phone: sent so without a person, there was no
    # contact to record (yet), and the referral is saved without one, as before.
    base_url = cases.base_url
    client, case_id, patient, page = cases.after_step_4()
    untouched = {"contact_on": local_today().isoformat(), "contact_person": ""}

    saved = post_form(client, page, case_id, "step-6", "s6", {**STEP_6_FORM, **untouched})

    assert saved.status_code == 303
    after = client.get(f"/social/cases/{case_id}").text
    assert "<dt>Contact met de voorziening</dt>" not in after
    assert len(search(base_url, "ServiceRequest", subject=patient)) == 1


def test_a_referral_status_note_too_long_is_refused_next_to_the_note(
    cases: _Cases,
) -> None:
    # Before, the error summary linked to the note, but the note said nothing: no message
    # beside it, nothing for a screen reader on the field itself.
    base_url = cases.base_url
    client, case_id, patient, page = cases.after_step_4()
    page = referred_today(client, page, case_id)
    note = "n" * 4001  # a paste gone wrong, past the textarea's maxlength
    (request,) = search(base_url, "ServiceRequest", subject=patient)
    form, fields = referral_form(request["id"]), {"referral_id": request["id"], "note": note}

    refused = post_form(
        client, page, case_id, "referral-status", form, {**fields, "status": "on-hold"}
    )

    assert refused.status_code == 422
    _assert_refused_at_their_fields(refused.text, form, (f"{form}-note",))
    assert note in refused.text  # the input is kept
    (request,) = search(base_url, "ServiceRequest", subject=patient)
    assert request["status"] == "active"


def test_an_earlier_referral_still_running_has_its_own_form_naming_its_facility(
    cases: _Cases,
) -> None:
    # The VK first, then the police after the team's acute danger: the page showed and
    # changed only the latest referral, without naming its facility, and the VK's stayed
    # active for good. Now each referral is listed with its facility and, while it runs,
    # its own form; a refused save keeps its input in the form it was typed in.
    base_url = cases.base_url
    client, case_id, patient, page = cases.referred()
    acute = {**STEP_4_FORM, "decision": "acute-danger"}
    page = saved_from_the_page(client, page, case_id, "step-4", "s4", acute)
    page = referred_today(client, page, case_id, partner_id="politie")
    by_kind = {
        r["performerType"]["coding"][0]["code"]: r
        for r in search(base_url, "ServiceRequest", subject=patient)
    }
    vk, police = referral_form(by_kind["vk"]["id"]), referral_form(by_kind["police"]["id"])

    listed = page[page.index('id="referral-heading"') :]
    assert listed.index(f'id="{police}-heading"') < listed.index(f'id="{vk}-heading"')
    vk_heading = _text_of(listed, f"{vk}-heading")
    assert "Vertrouwenscentrum Kindermishandeling Oost-Vlaanderen" in vk_heading
    assert "Politie" in _text_of(listed, f"{police}-heading")
    for form in (vk, police):  # each its own form, its fields labelled
        assert f'id="{form}-form"' in page
        assert f'<label for="{form}-status">' in page
        assert f'<label for="{form}-note">' in page

    note = "n" * 4001
    vk_id = {"referral_id": by_kind["vk"]["id"]}
    refused = post_form(
        client, page, case_id, "referral-status", vk, {**vk_id, "status": "revoked", "note": note}
    )
    assert refused.status_code == 422
    _assert_refused_at_their_fields(refused.text, vk, (f"{vk}-note",))
    assert _text_of(refused.text, f"{vk}-note", "</textarea>") == note  # in the VK's form
    assert _text_of(refused.text, f"{police}-note", "</textarea>") == ""

    elsewhere = {"referral_id": "another-cases-referral", "status": "revoked"}
    unknown = post_form(client, page, case_id, "referral-status", vk, elsewhere)
    assert unknown.status_code == 422
    assert "hoort niet (meer) bij dit dossier" in unknown.text
    assert {r["status"] for r in search(base_url, "ServiceRequest", subject=patient)} == {"active"}

    why = {"status": "revoked", "note": "The police follow up."}
    revoked = post_form(client, page, case_id, "referral-status", vk, {**vk_id, **why})
    assert revoked.status_code == 303, revoked.text
    statuses = {
        r["performerType"]["coding"][0]["code"]: r["status"]
        for r in search(base_url, "ServiceRequest", subject=patient)
    }
    assert statuses == {"vk": "revoked", "police": "active"}
    page = client.get(f"/social/cases/{case_id}").text
    assert f'id="{vk}-form"' not in page  # final: no form, its status still said
    assert "De verwijzing is nu: ingetrokken." in _text_of(page, f"{vk}-heading", "</section>")
    assert f'id="{police}-form"' in page


def test_each_referral_lists_the_notes_of_its_status_changes_with_who_and_when(
    cases: _Cases,
) -> None:
    # "Why, or what the facility said": the note of each status change went to the
    # ServiceRequest on the FHIR server and was shown nowhere in Kindreflex. A colleague
    # taking the case over could not read why the VK's referral was paused, then revoked,
    # nor what the EHR's users noted on it.
    base_url = cases.base_url
    client, case_id, patient, page = cases.referred()
    (request,) = search(base_url, "ServiceRequest", subject=patient)
    form, referral_id = referral_form(request["id"]), {"referral_id": request["id"]}
    paused = {**referral_id, "status": "on-hold", "note": "VK wacht op het gezin.\nBel maandag."}
    assert post_form(client, page, case_id, "referral-status", form, paused).status_code == 303
    (request,) = search(base_url, "ServiceRequest", subject=patient)
    by_the_ehr = {"authorString": "Dr. Peeters", "time": "2026-12-01T09:30:00+01:00"}
    noted = {**request, "note": [*request["note"], {**by_the_ehr, "text": "Moeder belde <3>."}]}
    url = f"{base_url}/ServiceRequest/{request['id']}"
    assert httpx.put(url, json=noted, timeout=10).status_code == 200
    page = client.get(f"/social/cases/{case_id}").text
    revoked = {**referral_id, "status": "revoked", "note": "Dubbele melding: de politie volgt."}
    page = saved_from_the_page(client, page, case_id, "referral-status", form, revoked)
    notes = _text_of(page, f"{form}-notes-heading", "</ul>")
    assert notes.startswith("Notities bij deze verwijzing")
    lines = [line.strip() for line in notes.split("\n") if line.strip()][1:]
    today = local_today().strftime("%d/%m/%Y")
    assert lines[0].startswith(f"{today} ")
    assert lines[0].endswith(f" · {SOCIAL_WORKER}")
    assert lines[1:3] == ["VK wacht op het gezin.", "Bel maandag."]
    assert lines[3:5] == ["01/12/2026 09:30 · Dr. Peeters", "Moeder belde <3>."]
    assert lines[5].startswith(f"{today} ")
    assert lines[5].endswith(f" · {SOCIAL_WORKER}")
    assert lines[6:] == ["Dubbele melding: de politie volgt."]
    assert "Moeder belde &lt;3&gt;." in page  # the EHR's text, escaped


def test_a_referral_is_revoked_only_with_its_reason(
    cases: _Cases,
) -> None:
    # Revoking withdraws the hospital's referral of the children to the VK, for good (a
    # revoked referral does not change again), and the page and the API took it without a
    # word of why: the record said the referral was withdrawn and nobody could tell whether
    # the VK declined, the family moved, or it was made by mistake. Now the reason is asked
    # where it is typed, the note of that referral's form; the other changes keep it optional.
    base_url = cases.base_url
    client, case_id, patient, page = cases.referred()
    (request,) = search(base_url, "ServiceRequest", subject=patient)
    form, referral_id = referral_form(request["id"]), {"referral_id": request["id"]}

    refused = post_form(
        client, page, case_id, "referral-status", form, {**referral_id, "status": "revoked"}
    )

    assert refused.status_code == 422
    _assert_refused_at_their_fields(refused.text, form, (f"{form}-note",))
    assert "waarom de verwijzing wordt ingetrokken" in _text_of(
        refused.text, f"{form}-note-error", "</p>"
    )
    assert 'value="revoked" selected' in refused.text  # the choice is kept
    (request,) = search(base_url, "ServiceRequest", subject=patient)
    assert request["status"] == "active"
    api = client.put(
        f"/api/cases/{case_id}/referral",
        json={
            "row_version": int(hidden_field(page, f"{form}-form", "row_version")),
            "status": "revoked",
            "note": " ",
        },
        headers={CSRF_HEADER: hidden_field(page, f"{form}-form", "csrf_token")},
    )
    assert api.status_code == 422, api.text
    assert api.json()["detail"]["code"] == "revocation-reason-required"
    paused = {**referral_id, "status": "on-hold"}  # a pause needs no reason
    page = saved_from_the_page(client, page, case_id, "referral-status", form, paused)
    why = {**referral_id, "status": "revoked", "note": "Het gezin verhuisde naar Antwerpen."}
    assert post_form(client, page, case_id, "referral-status", form, why).status_code == 303
    (request,) = search(base_url, "ServiceRequest", subject=patient)
    assert request["status"] == "revoked"
    assert request["note"][-1]["text"] == "Het gezin verhuisde naar Antwerpen."


@pytest.mark.parametrize("closed_in", ["kindreflex", "ehr"])
def test_a_closed_case_says_when_and_why_it_was_closed(
    cases: _Cases,
    closed_in: str,
) -> None:
    # The case page of a closed case said "afgesloten · Stap 6" and nothing more: the
    # reason chosen and the "Toelichting" typed when closing it were written to the Flag
    # and shown nowhere (the API's `closure` alone), nor when it was closed. Reviewing
    # closed cases, or the patient back at the ED, a social worker could not read why the
    # hospital stopped following the family.
    base_url = cases.base_url
    client, case_id, patient, page = cases.referred()
    (flag,) = search(base_url, "Flag", subject=patient)
    if closed_in == "kindreflex":
        why = {"reason": "other", "reason_text": "VK nam het over;\nmoeder verhuist naar Gent."}
        assert post_form(client, page, case_id, "close", "close", why).status_code == 303
        expected = "Andere reden: VK nam het over;\nmoeder verhuist naar Gent."
        (flag,) = search(base_url, "Flag", subject=patient)
    else:  # closed in the EHR, without Kindreflex's reason
        flag = {**flag, "status": "inactive"}
        flag["period"] = {**flag["period"], "end": "2026-12-07T09:05:00+01:00"}
        url = f"{base_url}/Flag/{flag['id']}"
        assert httpx.put(url, json=flag, timeout=10).status_code == 200
        expected = "reden niet vermeld"

    page = client.get(f"/social/cases/{case_id}").text

    closed = _text_of(page, "about-closed", "</dd>")
    ended = local(datetime.fromisoformat(flag["period"]["end"])).strftime("%d/%m/%Y %H:%M")
    assert closed == f"Afgesloten{ended} · {expected}"
    assert 'id="close-form"' not in page
    api = client.get(f"/api/cases/{case_id}").json()
    assert datetime.fromisoformat(api["closed_at"]) == datetime.fromisoformat(flag["period"]["end"])


@pytest.mark.parametrize("another_case_open", [False, True])
def test_revoking_the_last_referral_of_a_case_closed_as_referred_says_what_became_of_it(
    cases: _Cases,
    another_case_open: bool,
) -> None:
    # The case closed as "referred", its only referral revoked on the closed case's page:
    # before, the page said "saved" and the case stayed closed, no facility holding it.
    # Now it is reopened, the page says so and offers step 6 again; when a later visit
    # opened another case of the patient, it stays closed and the page says where the
    # children are followed.
    base_url = cases.base_url
    case = cases.triaged()
    client, case_id, patient = case.client, case.id, case.patient
    page = decided_and_referred(client, case_id)
    saved_from_the_page(client, page, case_id, "close", "close", {"reason": "referred"})
    if another_case_open:
        save_triage(case.app, case.tenant, base_url, returning=patient)
    (request,) = search(base_url, "ServiceRequest", subject=patient)
    form = referral_form(request["id"])
    page = client.get(f"/social/cases/{case_id}").text

    revoked = post_form(
        client,
        page,
        case_id,
        "referral-status",
        form,
        {"referral_id": request["id"], **REVOKED},
    )

    assert revoked.status_code == 303, revoked.text
    page = client.get(revoked.headers["location"]).text
    said = _text_of(page, "reopening", "</p>")
    flags = {f["status"] for f in search(base_url, "Flag", subject=patient)}
    if another_case_open:
        assert said.startswith("Het dossier blijft afgesloten: de patiënt heeft een ander open")
        assert flags == {"inactive", "active"}  # the other case's
        assert 'id="s6-form"' not in page
    else:
        assert said.startswith("Het dossier is heropend: geen enkele doorverwijzing staat nog")
        assert flags == {"active"}
        assert 'id="s6-form"' in page  # a new referral
        assert listed_cases(client.get("/social").text) == [case_id]


def _text_of(html: str, element_id: str, end: str = "</h3>") -> str:
    """The text of the element ``element_id`` up to ``end``, tags left out."""
    start = html.index(">", html.index(f'id="{element_id}"')) + 1
    return unescape(re.sub(r"<[^>]+>", "", html[start : html.index(end, start)]))


#: The message of each date bound, as the case page says it in each language.
_TOO_FAR = {
    "nl": "Een opvolgdatum ligt ten hoogste een jaar vooruit.",
    "fr": "Une date de suivi se situe au plus un an à l'avance.",
    "en": "A follow-up date lies at most a year ahead.",
}
_TOO_LONG_AGO = {
    "nl": "Het contact met de voorziening ligt ten hoogste een jaar terug.",
    "fr": "Le contact avec le service date d'au plus un an.",
    "en": "The contact with the facility lies at most a year back.",
}


def _speaks(database: Database, language: str) -> None:
    """The social worker's session speaks ``language`` (signed_in opens it in Dutch)."""
    with database.session() as session:
        session.execute(
            update(AppSession)
            .where(AppSession.fhir_user == SOCIAL_WORKER)
            .values(language=language)
        )


@pytest.mark.parametrize("language", ["nl", "fr", "en"])
def test_a_follow_up_more_than_a_year_ahead_is_refused_next_to_its_date(
    cases: _Cases,
    database: Database,
    language: str,
) -> None:
    # Before, a year typed wrong (2062 for 2026) was recorded and put on the worklist.
    base_url = cases.base_url
    client, case_id, patient, page = cases.after_step_4("concerning-willing")
    _speaks(database, language)
    page = client.get(f"/social/cases/{case_id}").text
    latest = latest_follow_up(local_today())
    # the date inputs offer no date the service refuses
    assert f'name="next_follow_up" min="{local_today()}" max="{latest}"' in page
    assert f'name="action_on_0" min="{local_today()}" max="{latest}"' in page
    far = (latest + timedelta(days=1)).isoformat()

    refused = post_form(
        client, page, case_id, "step-5", "s5", {"progress": "improving", "next_follow_up": far}
    )

    assert refused.status_code == 422
    _assert_refused_at_their_fields(refused.text, "s5", ("s5-next-follow-up",))
    error = refused.text[refused.text.index('id="s5-next-follow-up-error"') :]
    assert _TOO_FAR[language] in unescape(error[: error.index("</p>")])
    assert f'value="{far}"' in refused.text  # the input is kept

    # an agreed action's date is shown at that action, not at the right next check
    action = {"action_text_0": "Call the school.", "action_on_0": far}
    fields = {"progress": "improving", "next_follow_up": latest.isoformat(), **action}
    refused = post_form(client, page, case_id, "step-5", "s5", fields)
    assert refused.status_code == 422
    _assert_refused_at_their_fields(refused.text, "s5", ("s5-action-on-0",))
    assert 'id="s5-next-follow-up-error"' not in refused.text

    # every wrong date at once, each at its field: they came one per save (found by review)
    past = (local_today() - timedelta(days=1)).isoformat()
    fields = {"progress": "improving", "next_follow_up": far, **action, "action_on_0": past}
    refused = post_form(client, page, case_id, "step-5", "s5", fields)
    assert refused.status_code == 422
    _assert_refused_at_their_fields(refused.text, "s5", ("s5-action-on-0", "s5-next-follow-up"))
    assert _findings_of(base_url, patient, "step-5") == []


@pytest.mark.parametrize("language", ["nl", "fr", "en"])
def test_a_facility_contact_more_than_a_year_back_is_refused_next_to_its_date(
    cases: _Cases,
    database: Database,
    language: str,
) -> None:
    # Before, a year typed wrong (2002 for 2026) told the facility of a contact 24 years ago.
    base_url = cases.base_url
    client, case_id, patient, page = cases.after_step_4()
    _speaks(database, language)
    page = client.get(f"/social/cases/{case_id}").text
    earliest = earliest_contact(local_today())
    assert f'name="contact_on" min="{earliest}" max="{local_today()}"' in page
    typo = local_today().replace(year=2002, day=1).isoformat()

    refused = post_form(client, page, case_id, "step-6", "s6", {**STEP_6_FORM, "contact_on": typo})

    assert refused.status_code == 422
    _assert_refused_at_their_fields(refused.text, "s6", ("s6-contact-on",))
    error = refused.text[refused.text.index('id="s6-contact-on-error"') :]
    assert _TOO_LONG_AGO[language] in unescape(error[: error.index("</p>")])
    assert f'value="{typo}"' in refused.text  # the input is kept
    assert search(base_url, "ServiceRequest", subject=patient) == []

    on_the_bound = {**STEP_6_FORM, "contact_on": earliest.isoformat()}
    assert post_form(client, page, case_id, "step-6", "s6", on_the_bound).status_code == 303


def _assert_refused_at_their_fields(html: str, form: str, anchors: tuple[str, ...]) -> None:
    """Each field's message stands next to it, the field points to it (aria-describedby,
    aria-invalid) and the form's error summary links to the field."""
    said = error_summary(html, form)
    for anchor in anchors:
        assert f'href="#{anchor}"' in said
        assert f'id="{anchor}-error"' in html
        assert re.search(
            rf'id="{anchor}"[^>]* aria-describedby="{anchor}-error" aria-invalid="true"', html
        ), anchor


def test_a_step_on_a_case_read_in_part_is_refused_on_the_page(
    cases: _Cases,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Beyond the pages a case reads, the page offered (and took) the team's decision a second
    # time: the findings read still asked for it. Now refused with its reason, nothing written.
    client, case_id, patient, _ = cases.after_step_4("concerning-willing")
    monkeypatch.setattr(casework, "FINDINGS_PAGE_SIZE", 2)  # steps 1 and 2: step 4 unread
    monkeypatch.setattr(casework, "MAX_SEARCH_PAGES", 1)
    page = client.get(f"/social/cases/{case_id}").text
    assert 'id="history-incomplete"' in page

    again = post_form(client, page, case_id, "step-4", "s4", STEP_4_FORM)

    assert again.status_code == 409
    assert "Niet bewaard: de FHIR-server bewaart meer geschiedenis" in unescape(again.text)
    assert len(_findings_of(cases.base_url, patient, "step-4")) == 1


def test_a_choice_left_open_and_a_text_too_long_say_what_to_do(
    cases: _Cases,
) -> None:
    # Before, each said "Vul dit veld correct in.": in the summary, neither which field it
    # was nor what to do (a team decision not chosen read like a field filled in wrongly).
    base_url = cases.base_url
    client, case_id, patient, page = cases.before_step_4()
    undecided = {key: value for key, value in STEP_4_FORM.items() if key != "decision"}

    refused = post_form(client, page, case_id, "step-4", "s4", {**undecided, "note": "n" * 4001})

    assert refused.status_code == 422
    said = unescape(error_summary(refused.text, "s4"))
    assert '<a href="#s4-decision">Teambeslissing: kies een van de mogelijkheden.</a>' in said
    assert '<a href="#s4-note">Te lang: ten hoogste 4000 tekens. Kort de tekst in.</a>' in said
    assert "Vul dit veld correct in." not in refused.text

    page = saved_from_the_page(client, page, case_id, "step-4", "s4", STEP_4_FORM)
    unanswered = {
        key: value
        for key, value in STEP_6_FORM.items()
        if key not in ("partner_id", "cooperation", "informed")
    }
    refused = post_form(client, page, case_id, "step-6", "s6", unanswered)

    assert refused.status_code == 422
    said = unescape(error_summary(refused.text, "s6"))
    for question in (
        "Voorziening of instantie",
        "Met medewerking van de patiënt",
        "Patiënt ingelicht en voorbereid",
    ):
        assert f"{question}: kies een van de mogelijkheden." in said
    assert search(base_url, "ServiceRequest", subject=patient) == []


def test_a_facility_named_as_its_kind_is_not_read_out_twice(
    cases: _Cases,
) -> None:
    # Before, step 6's choices at acute danger read "Politie: Politie" (the kind, then the
    # directory's name for it); a facility with a name of its own keeps both.
    _, _, _, page = cases.after_step_4("acute-danger")

    labels = {
        found.group(1): re.sub(r"\s+", " ", unescape(found.group(2))).strip()
        for found in re.finditer(r'<label for="s6-partner-([^"]+)">(.*?)</label>', page, re.S)
    }

    assert labels["politie"] == "Politie"
    assert labels["vk-oost-vlaanderen"] == (
        "Vertrouwenscentrum Kindermishandeling (VK): "
        "Vertrouwenscentrum Kindermishandeling Oost-Vlaanderen · 09 216 73 30"
    )


def test_the_printed_referral_to_the_police_names_it_once(
    cases: _Cases,
) -> None:
    """The printed referral to a facility the directory names as its kind read "Politie:
    Politie", and so did the case's history; both name it once now, as step 6's choice."""
    client, case_id, _, page = cases.after_step_4("acute-danger")
    referred_today(client, page, case_id, partner_id="politie")

    summary = client.get(f"/social/cases/{case_id}/referral").text
    history = client.get(f"/social/cases/{case_id}").text

    (callee,) = re.findall(r'<p class="callee">(.*?)</p>', summary, re.S)
    assert callee.strip() == "<strong>Politie</strong>"
    assert "Politie: Politie" not in _text(history)
    assert "Politie · " in history


def test_step_4_says_every_problem_of_the_form_at_once(
    cases: _Cases,
) -> None:
    """Step 4 said one problem per save: first the missing team decision, and only on the
    next save that the patient's explanation needs "discussed" ticked. Both are said at
    once now, as on the nurse's page, each next to its field, nothing recorded."""
    base_url = cases.base_url
    client, case_id, patient, page = cases.before_step_4()
    fields = {k: v for k, v in STEP_4_FORM.items() if k not in ("decision", "discussed")}

    refused = post_form(client, page, case_id, "step-4", "s4", fields)

    assert refused.status_code == 422
    _assert_refused_at_their_fields(refused.text, "s4", ("s4-decision", "s4-discussed"))
    assert str(STEP_4_FORM["patient_explanation"]) in refused.text  # the input is kept
    assert _findings_of(base_url, patient, "step-4") == []


def test_no_step_is_taken_while_the_cases_previous_save_is_on_its_way(
    cases: _Cases,
    database: Database,
) -> None:
    """The case's latest save not yet on the FHIR server, its page offered the next step
    again, built on the case without that save; the save delivered first made the second
    a conflict, though the user had been told it was saved, and her decision was lost
    (found by review). The page now says the save is on its way and offers no step until
    it is delivered; a form sent meanwhile is refused with its input kept."""
    base_url = cases.base_url
    client, case_id, patient, page = cases.before_step_4()
    tenant = make_tenant(database, "default", base_url)
    waiting = triage_waiting_for_sign_in(database, tenant, base_url, patient, case_id)

    shown = client.get(f"/social/cases/{case_id}").text
    note = "Tweede beslissing van het team"
    refused = post_form(client, page, case_id, "step-4", "s4", {**STEP_4_FORM, "note": note})

    assert 'id="save-on-its-way"' in shown
    assert 'id="s4-form"' not in shown
    assert 'id="close-form"' not in shown
    assert refused.status_code == 409
    assert "de vorige registratie van dit dossier is nog onderweg" in unescape(refused.text)
    assert note in refused.text  # the input, kept
    assert _findings_of(base_url, patient, "step-4") == []
    with database.session() as session:
        saves = select(func.count()).where(OutboxEntry.kind != "audit")  # not a read's
        assert session.scalar(saves) == 2  # the nurse's two: no third

    # a save waiting for a sign-in is not retried by itself: the page does not say it is
    told = unescape(client.get(f"/social/cases/{case_id}?saved=pending").text)
    assert "wacht op een nieuwe aanmelding" in told
    assert "automatisch opnieuw geprobeerd" not in told

    with database.session() as session:  # delivered: the team's decision can be recorded
        session.execute(
            update(OutboxEntry)
            .where(OutboxEntry.id == waiting)
            .values(state=DeliveryState.DELIVERED)
        )
    assert 'id="s4-form"' in client.get(f"/social/cases/{case_id}").text


def test_a_token_the_fhir_server_refuses_says_to_open_the_app_again(
    database_url: str,
    database: Database,
    fhir_server: FhirServer,  # noqa: F811
) -> None:
    """The FHIR server (or its gateway) answering 401 to the launch's token was said as
    "the FHIR server refused to read the case", which does not tell the social worker what
    to do (found by review). The relay stands for that gateway: sekmet checks no token."""
    with SlowRelay(fhir_server.base_url) as gateway:
        client, case_id, _, page = _case_before_step_4(database_url, database, gateway.url)
        # every request refused while it lasts, the outbox worker's deliveries too (each a
        # 401 that makes its entry wait for a sign-in, not retried): far more than are made
        gateway.refused = [401] * 100
        shown = client.get(f"/social/cases/{case_id}")
        refused = post_form(client, page, case_id, "step-4", "s4", STEP_4_FORM)

    assert shown.status_code == 200
    assert "open de app opnieuw vanuit het EPD" in unescape(shown.text)
    assert "weigerde" not in shown.text
    assert refused.status_code == 401
    assert "er werd niets opgeslagen. Open de app opnieuw" in unescape(refused.text)
    assert str(STEP_4_FORM["note"]) in unescape(refused.text)  # the input, kept


def test_the_api_says_to_open_the_app_again_when_the_fhir_server_refuses_the_token(
    database_url: str,
    database: Database,
    fhir_server: FhirServer,  # noqa: F811
) -> None:
    """The case page says "open the app again from the EHR" when the FHIR server (or its
    gateway) refuses the launch's token; the JSON API answered the same refusal, on a read
    and on a save, with 502 "The FHIR server refused to read the case: …": its client was
    told the server is broken, not that its user must sign in again (found by review). A
    refusal of the request itself stays a 502, no longer said as a refused read."""
    with SlowRelay(fhir_server.base_url) as gateway:
        client, case_id, _, page = _case_before_step_4(database_url, database, gateway.url)
        version = int(hidden_field(page, "s4-form", "row_version"))
        step_4 = {
            "row_version": version,
            "decision": "acute-danger",
            "discussed_with_patient": True,
        }
        gateway.refused = [401] * 100  # every request while it lasts (as the page's test)
        read = client.get(f"/api/cases/{case_id}")
        csrf = {CSRF_HEADER: hidden_field(page, "s4-form", "csrf_token")}
        save = client.post(f"/api/cases/{case_id}/step-4", headers=csrf, json=step_4)
        gateway.refused = [400] * 100  # the request refused, not the token
        refused = client.get(f"/api/cases/{case_id}")

    for answer in (read, save):
        assert answer.status_code == 401, answer.text
        assert "open the app from the EHR again" in answer.json()["detail"]
    assert refused.status_code == 502, refused.text
    assert refused.json()["detail"].startswith("The FHIR server refused the request: ")


def test_a_form_sent_after_the_session_ended_shows_its_text_back_and_saves_nothing(
    cases: _Cases,
    database: Database,
) -> None:
    """A social worker's notes, typed over an afternoon in a case page left open, were
    lost when the session had ended meanwhile: the refusal showed a message only."""
    client, case_id, _, page = cases.before_step_4()
    with database.session() as session:
        session.execute(update(AppSession).values(expires_at=utcnow() - timedelta(minutes=1)))
        waiting = session.scalar(select(func.count()).select_from(OutboxEntry))

    def sent_from(site: str) -> str:
        headers = {"Sec-Fetch-Site": site}
        refused = post_form(client, page, case_id, "step-4", "s4", STEP_4_FORM, headers)
        assert refused.status_code == 401
        return unescape(refused.text)

    own_page = sent_from("same-origin")
    assert "Wat u typte is niet bewaard" in own_page
    for typed in ("note", "patient_explanation", "team_members"):
        assert f"readonly>{STEP_4_FORM[typed]}</textarea>" in own_page
    assert str(STEP_4_FORM["factor_text_partner-hostile-to-children"]) in own_page
    assert "concerning-unwilling" not in own_page  # a choice, not text typed
    # another site's form would have our page show its text as the user's own
    assert "Wat u typte" not in sent_from("cross-site")
    with database.session() as session:
        assert session.scalar(select(func.count()).select_from(OutboxEntry)) == waiting


def test_the_case_page_gives_the_protocols_advice_for_the_next_step(
    cases: _Cases,
) -> None:
    """Seed 002, step 4: "Bij schoolgaande kinderen: betrek ook CLB"; seed 001, step 4:
    involving children needs their consent. The protocol worked both out, no screen showed
    them (found by review)."""
    _, _, _, page = cases.before_step_4()

    advice = {
        kind: " ".join(text.split())
        for kind, text in re.findall(r'<li data-advice="([a-z-]+)">(.*?)</li>', page, re.S)
    }

    assert advice.keys() == {"child-consent", "clb"}
    assert "kinderen ook het CLB" in advice["clb"]
    assert "Boy" in advice["clb"]  # 4 years old: at school from 2.5
    assert "Girl" in advice["clb"]
    assert "hun toestemming" in advice["child-consent"]
