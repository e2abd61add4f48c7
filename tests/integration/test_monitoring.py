"""The monitoring figures (issue 5 §6): exact counts from what the use cases recorded, the
period's boundaries, tenant isolation, no patient identifier in any output, the role matrix,
the audit, the CSV and the FHIR MeasureReport (valid R4, on the guide's Measure).

SQLite and PostgreSQL (the ``database_url`` fixture), the real app (``create_app``), a
real sekmet FHIR server process. How the rows come about:

* triage saves (steps 1-3) through the real ``Triage.record_triage`` and social-service
  saves (steps 4-6) through the real ``Casework.record_step``, both on the FHIR server;
* CDS feedback through the real endpoint (JWT check off: ``environment="test"``);
* cards through real hook calls in one test; elsewhere INSERTED directly into
  ``cds_cards`` (the CDS service writes them off the response path, in batches), so that
  those tests can place cards at exact instants and presentations;
* to place a save in an earlier period, its outbox row's ``created_at`` is moved back by
  an UPDATE (the use cases stamp the present).
"""

from __future__ import annotations

import csv
import io
import json
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import delete, insert, select, update

from sandbox.fhir_server import FhirServer
from service import monitoring
from service.admin import access
from service.app import create_app
from service.casework import Casework
from service.db.base import Database, utcnow
from service.db.models import (
    AuditRecord,
    CdsCard,
    CdsFeedback,
    Concern,
    MonitoringFinding,
    MonitoringSave,
    OutboxEntry,
)
from service.fhir import terminology
from service.local_time import LOCAL_ZONE, local_today
from service.monitoring import Figure, Period, PeriodError
from service.protocol import (
    Child,
    ChildRelationship,
    Consultation,
    LivesWith,
    SafetyAssessment,
    Step,
    Step1Finding,
    Step2Finding,
    Step3Support,
    SupportAction,
    TeamDecision,
)
from service.settings import Settings
from service.social import Step4Input, Step5Input, Step6Input
from service.tenancy import TenantContext
from service.triage import KIND, TriageInput
from smart_app.admin import ADMIN_COOKIE
from smart_app.session import AppUser, LaunchContext, Role
from tests.support.cds import hook_body
from tests.support.sessions import User, signed_in
from tests.support.validator import validate
from tests.support.write_path import (
    LoopbackTokens,
    fhir_server,  # noqa: F401 - the module's FHIR server fixture
    make_tenant,
)

NURSE = "Practitioner/nurse-mon"
SOCIAL_WORKER = "Practitioner/sw-mon"
MEASURE_REPORT = "http://hl7.org/fhir/StructureDefinition/MeasureReport"
ENDPOINTS = ("/monitoring", "/monitoring.csv", "/monitoring/MeasureReport")


@dataclass
class World:
    app: FastAPI
    client: TestClient
    database: Database
    base_url: str
    hospital: TenantContext
    other: TenantContext
    names: list[str]  # every patient id, name, child name and flag id created: never shown

    def launch(
        self, tenant: TenantContext, user: str, role: Role, patient: str | None
    ) -> LaunchContext:
        session = signed_in(self.app, tenant, user, role, fhir_base_url=self.base_url)
        encounter = None
        if patient is not None:
            encounter = _post(self.base_url, _encounter(patient))["id"]
            self.names.append(encounter)
        roles = frozenset({role})
        return LaunchContext(
            session.session_id,
            tenant,
            "ehr",
            self.base_url,
            patient,
            encounter,
            AppUser(user, user, roles),
            language="nl",
            app_context=None,
        )

    def user(self, role: Role, tenant: TenantContext | None = None) -> User:
        return signed_in(self.app, tenant or self.hospital, f"Practitioner/{role}-x", role)


def _post(base_url: str, resource: dict[str, Any]) -> dict[str, Any]:
    answer = httpx.post(f"{base_url}/{resource['resourceType']}", json=resource, timeout=10)
    answer.raise_for_status()
    created: dict[str, Any] = answer.json()
    return created


def _encounter(patient_id: str) -> dict[str, Any]:
    return {
        "resourceType": "Encounter",
        "status": "in-progress",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "EMER"},
        "subject": {"reference": f"Patient/{patient_id}"},
    }


@pytest.fixture
def world(
    database_url: str,
    database: Database,
    fhir_server: FhirServer,  # noqa: F811
) -> Iterator[World]:
    base_url = fhir_server.base_url
    hospital = make_tenant(database, "default", base_url)
    other = make_tenant(database, "hospital-b", base_url)
    settings = Settings(environment="test", database_url=database_url, cds_jwt_required=False)
    app = create_app(settings, database)
    # one event loop for the whole test, as in production: the CDS path's writes finish
    # on the loop after the response (a loop per request would stop them half-way)
    with TestClient(app) as client:
        yield World(app, client, database, base_url, hospital, other, [])


def _child(world: World, name: str, born: date) -> Child:
    world.names.append(name)
    return Child(
        f"urn:uuid:{uuid.uuid4()}",
        name,
        born,
        ChildRelationship.NATURAL_CHILD,
        LivesWith.PERMANENTLY,
    )


def _triage(
    world: World,
    tenant: TenantContext,
    children: tuple[Child, ...],
    assessment: SafetyAssessment | None,
    *,
    flagged_hours_ago: float = 0.0,
    times: int = 1,
    acute_danger: bool = False,
) -> str:
    """A nurse's save at triage for a new patient (``times`` > 1: the same input submitted
    again, as a double click does); returns the patient reference."""
    name = f"Patiënt {uuid.uuid4().hex[:8]}"
    patient = _post(world.base_url, {"resourceType": "Patient", "name": [{"text": name}]})["id"]
    world.names += [name, patient]
    ctx = world.launch(tenant, NURSE, "nurse", patient)
    at = utcnow() - timedelta(hours=flagged_hours_ago)
    step2 = step3 = None
    if assessment is not None:
        step2 = Step2Finding(
            recorded_by=NURSE,
            recorded_at=at + timedelta(seconds=30),
            assessment=assessment,
            reasons=("Kinderen vaak alleen thuis.",) if assessment != "no-concern" else (),
            acute_danger=acute_danger,
        )
    if assessment is SafetyAssessment.NO_CONCERN:
        step3 = Step3Support(
            recorded_by=NURSE,
            recorded_at=at + timedelta(seconds=60),
            actions=frozenset({SupportAction.ASK_REGULARLY}),
        )
    findings = TriageInput(
        step1=Step1Finding(recorded_by=NURSE, recorded_at=at, children=children),
        step2=step2,
        step3=step3,
    )
    world.app.state.triage.load_chart(ctx)  # the triage page: the worklist's name is from it
    for _ in range(times):
        assert world.app.state.triage.record_triage(ctx, findings).status == "delivered"
    return f"Patient/{patient}"


def _casework(world: World, tenant: TenantContext, patient_ref: str, *steps: Any) -> None:
    """The social worker's saves of steps 4-6 on the patient's case, in order."""
    with world.database.session() as session:
        concern = session.scalars(
            select(Concern).where(
                Concern.tenant_id == tenant.id, Concern.patient_ref == patient_ref
            )
        ).one()
        case_id, version = concern.id, concern.row_version
        world.names.append(concern.flag_identifier)
    ctx = world.launch(tenant, SOCIAL_WORKER, "social-worker", None)
    casework = Casework(world.database, world.app.state.outbox, LoopbackTokens(), 5.0)
    for step in steps:
        result = casework.record_step(ctx, case_id, version, step)
        assert result.status == "delivered"
        version = result.row_version


def _cards(world: World, tenant: TenantContext, *cards: tuple[str, str, datetime]) -> None:
    """Cards as the CDS service would record them: (presentation, indicator, issued_at)."""
    rows = [
        {
            "tenant_id": tenant.id,
            "service_id": "kindreflex-encounter-start",
            "card_uuid": str(uuid.uuid4()),
            "indicator": indicator,
            "reasons": [],
            "presentation": monitoring.presentation_key(b"", world.base_url, key, key, at.date()),
            "issued_at": at,
        }
        for key, indicator, at in cards
    ]
    with world.database.session() as session:
        session.execute(insert(CdsCard), rows)


def _feedback(world: World, card: str, outcome: str, reason: str | None, at: datetime) -> None:
    item: dict[str, Any] = {"card": card, "outcome": outcome, "outcomeTimestamp": at.isoformat()}
    if reason is not None:
        item["overrideReason"] = {"reason": {"code": reason}, "userComment": "Patiënt X zegt…"}
    answer = world.client.post(
        "/cds-services/kindreflex-encounter-start/feedback", json={"feedback": [item]}
    )
    assert answer.status_code == 200, answer.text


def _card_uuids(world: World, tenant: TenantContext) -> list[str]:
    with world.database.session() as session:
        query = select(CdsCard.card_uuid).where(CdsCard.tenant_id == tenant.id).order_by(CdsCard.id)
        return list(session.scalars(query))


def _figures(world: World, tenant: TenantContext, period: Period) -> monitoring.Figures:
    with world.database.session() as session:
        return monitoring.figures(session, tenant.id, period)


def _today() -> date:
    return local_today()


def _scenario(world: World) -> None:
    """The hospital's day: four presentations at triage, two cases for the social service."""
    now = utcnow()
    _cards(
        world,
        world.hospital,
        ("enc-1", "warning", now),
        ("enc-1", "info", now),  # a second card for the same presentation (patient-view)
        ("enc-2", "info", now),
        ("enc-3", "info", now),
    )
    first, second, third = _card_uuids(world, world.hospital)[:3]
    _feedback(world, first, "accepted", None, now)
    _feedback(world, first, "accepted", None, now)  # the EHR retried: stored once
    _feedback(world, second, "overridden", "already-done", now)
    _feedback(world, third, "overridden", None, now)
    _feedback(world, str(uuid.uuid4()), "accepted", None, now)  # a card never issued here
    boy, girl = _child(world, "Noah", date(2022, 11, 3)), _child(world, "Emma", date(2017, 6, 21))
    niet_pluis = _triage(
        world,
        world.hospital,
        (boy, girl),
        SafetyAssessment.NIET_PLUIS,
        flagged_hours_ago=5,
        times=2,
    )
    unclear = _triage(
        world,
        world.hospital,
        (_child(world, "Lotte", date(2020, 1, 9)),),
        SafetyAssessment.UNCLEAR,
        flagged_hours_ago=1,
    )
    _triage(
        world,
        world.hospital,
        (_child(world, "Mila", date(2015, 3, 2)),),
        SafetyAssessment.NO_CONCERN,
    )
    _triage(world, world.hospital, (), None)  # no children: step 1 closes the case
    _casework(
        world,
        world.hospital,
        niet_pluis,
        Step4Input(
            decision=TeamDecision.CONCERNING_UNWILLING,
            consultations={Consultation.COLLEAGUE},
            discussed_with_patient=True,
        ),
        Step6Input(partner_id="vk-oost-vlaanderen", with_cooperation=False, patient_informed=True),
    )
    _casework(
        world,
        world.hospital,
        unclear,
        Step4Input(
            decision=TeamDecision.CONCERNING_WILLING,
            consultations={Consultation.EXPERT},
            discussed_with_patient=True,
        ),
        Step5Input(progress="improving"),
    )
    # hospital B: a card and a niet-pluis of its own, never in A's figures
    _cards(world, world.other, ("enc-b", "warning", now))
    _triage(
        world,
        world.other,
        (_child(world, "Finn", date(2019, 8, 8)),),
        SafetyAssessment.NIET_PLUIS,
    )


EXPECTED_A: dict[Figure, int] = {
    Figure.PRESENTATIONS_WITH_CARD: 3,
    Figure.CARDS_ACCEPTED: 1,
    Figure.CARDS_OVERRIDDEN: 2,
    Figure.STEP_1_DONE: 4,
    Figure.CHILDREN_RECORDED: 4,
    Figure.NIET_PLUIS: 1,
    Figure.UNCLEAR: 1,
    Figure.STEP_2_ACUTE_DANGER: 0,
    Figure.STEP_4_REACHED: 2,
    Figure.STEP_5_REACHED: 1,
    Figure.STEP_6_REACHED: 1,
    Figure.REFERRALS: 1,
    Figure.TIME_TO_DECISION: 2,
}


def test_the_figures_count_exactly_what_was_recorded_per_hospital(world: World) -> None:
    _scenario(world)
    today = Period(_today(), _today())
    a = _figures(world, world.hospital, today)
    assert {figure: value.count for figure, value in a} == EXPECTED_A
    assert a.values[Figure.PRESENTATIONS_WITH_CARD].breakdown == {"info": 3, "warning": 1}
    assert a.values[Figure.CARDS_OVERRIDDEN].breakdown == {"already-done": 1, "": 1}
    assert a.values[Figure.REFERRALS].breakdown == {"vk": 1}
    # decisions 5 h and 1 h after the flag (plus the seconds the test takes)
    assert a.values[Figure.TIME_TO_DECISION].hours == 3.0
    assert a.unreadable_saves == 0

    b = _figures(world, world.other, today)
    assert b.values[Figure.PRESENTATIONS_WITH_CARD].count == 1
    assert b.values[Figure.STEP_1_DONE].count == 1
    assert b.values[Figure.NIET_PLUIS].count == 1
    assert b.values[Figure.CARDS_ACCEPTED].count == 0
    assert b.values[Figure.STEP_4_REACHED].count == 0


def test_every_step_2_outcome_that_hands_the_patient_to_the_social_service_counts(
    world: World,
) -> None:
    """Only a niet-pluis was counted: an unclear situation, which leads to step 4 as well,
    and acute danger, which leads to step 4 or straight to step 6, were counted nowhere, and
    a hospital's report showed fewer patients handed to the social service than it had.
    Each has its line now; niet-pluis keeps its meaning, and the acute dangers are among
    the two lines above them."""
    for assessment, acute_danger, times in [
        (SafetyAssessment.NIET_PLUIS, False, 1),
        (SafetyAssessment.NIET_PLUIS, True, 1),
        (SafetyAssessment.UNCLEAR, False, 1),
        (SafetyAssessment.UNCLEAR, True, 2),  # sent twice: one finding
        (SafetyAssessment.NO_CONCERN, False, 1),
    ]:
        child = _child(world, "Lotte", date(2020, 1, 9))
        _triage(world, world.hospital, (child,), assessment, acute_danger=acute_danger, times=times)

    result = _figures(world, world.hospital, Period(_today(), _today()))

    step_2 = (Figure.NIET_PLUIS, Figure.UNCLEAR, Figure.STEP_2_ACUTE_DANGER)
    assert [result.values[figure].count for figure in step_2] == [2, 2, 2]
    page = world.client.get("/monitoring", headers=world.user("social-worker").headers)
    rows = [
        re.findall(
            r'data-figure="' + figure + r'">\s*<th scope="row">([^<]+)</th>\s*<td>(\d+)', page.text
        )
        for figure in step_2
    ]
    assert rows == [
        [("Niet-pluisgevoel", "2")],
        [("Onduidelijke situatie", "2")],
        [("Stap 2 met acuut gevaar (niet-pluis of onduidelijk)", "2")],
    ]


def test_a_case_decided_again_counts_once_with_the_time_to_its_first_decision(
    world: World,
) -> None:
    """The team decided 24 h after the flag, forty days ago; the patient returns with a
    niet-pluis and the team decides again today. Before, today's report counted that
    second decision as the case's first, 40 days after its flag (found by review)."""
    child = _child(world, "Lotte", date(2020, 1, 9))
    patient = _triage(
        world, world.hospital, (child,), SafetyAssessment.NIET_PLUIS, flagged_hours_ago=2
    )
    decision = Step4Input(
        decision=TeamDecision.CONCERNING_WILLING,
        consultations={Consultation.EXPERT},
        discussed_with_patient=True,
    )
    _casework(world, world.hospital, patient, decision)
    _figures(world, world.hospital, Period(_today(), _today()))  # the saves are read
    decided = utcnow() - timedelta(days=40)
    with world.database.session() as session:  # as if all this was forty days ago
        session.execute(update(Concern).values(flagged_at=decided - timedelta(hours=24)))
        session.execute(
            update(MonitoringFinding)
            .where(MonitoringFinding.step == Step.STEP_4.value)
            .values(saved_at=decided, recorded_at=decided)
        )
    returning = world.launch(world.hospital, NURSE, "nurse", patient.removeprefix("Patient/"))
    later = utcnow()  # after the first decision, before the second
    again = TriageInput(
        step1=Step1Finding(recorded_by=NURSE, recorded_at=later, children=(child,)),
        step2=Step2Finding(
            recorded_by=NURSE,
            recorded_at=later,
            assessment=SafetyAssessment.NIET_PLUIS,
            reasons=("Opnieuw alleen thuis.",),
        ),
    )
    assert world.app.state.triage.record_triage(returning, again).status == "delivered"
    _casework(world, world.hospital, patient, decision)

    today = _figures(world, world.hospital, Period(_today(), _today()))
    assert today.values[Figure.TIME_TO_DECISION].count == 0
    then = decided.astimezone(LOCAL_ZONE).date()
    earlier = _figures(world, world.hospital, Period(then, then)).values[Figure.TIME_TO_DECISION]
    assert (earlier.count, earlier.hours) == (1, 24.0)
    both = _figures(world, world.hospital, Period(then, _today())).values[Figure.TIME_TO_DECISION]
    assert (both.count, both.hours) == (1, 24.0)


def test_cards_the_cds_service_returns_count_per_presentation(world: World) -> None:
    """End to end: real hook calls (JWT check off in the test environment) → cds_cards."""
    calls = [hook_body(encounter_id="enc-a"), hook_body(encounter_id="enc-a")]
    calls.append(hook_body(encounter_id="enc-b"))
    for body in calls:
        answer = world.client.post("/cds-services/kindreflex-encounter-start", json=body)
        assert len(answer.json()["cards"]) == 1, answer.text
    deadline = time.monotonic() + 10
    while len(_card_uuids(world, world.hospital)) < len(calls) and time.monotonic() < deadline:
        time.sleep(0.02)  # the CDS service records its cards off the EHR's wait: poll, bounded
    result = _figures(world, world.hospital, Period(_today(), _today()))
    assert result.values[Figure.PRESENTATIONS_WITH_CARD].count == 2
    assert _figures(world, world.other, Period(_today(), _today())).values[
        Figure.PRESENTATIONS_WITH_CARD
    ] == monitoring.Value(0)


def test_a_failed_or_conflicting_save_was_never_recorded_and_does_not_count(
    world: World,
) -> None:
    _triage(world, world.hospital, (_child(world, "Lou", date(2018, 2, 2)),), None)
    _triage(world, world.hospital, (), None)
    today = Period(_today(), _today())
    assert _figures(world, world.hospital, today).values[Figure.STEP_1_DONE].count == 2
    with world.database.session() as session:
        saves = select(OutboxEntry.id).where(OutboxEntry.kind == KIND)  # not a read's audit
        first = session.scalars(saves.order_by(OutboxEntry.id)).first()
        session.execute(update(OutboxEntry).where(OutboxEntry.id == first).values(state="failed"))
    assert _figures(world, world.hospital, today).values[Figure.STEP_1_DONE].count == 1


def test_each_save_is_read_once_and_stays_counted_after_an_outbox_purge(world: World) -> None:
    _triage(world, world.hospital, (_child(world, "Lou", date(2018, 2, 2)),), None)
    today = Period(_today(), _today())
    assert _figures(world, world.hospital, today).values[Figure.CHILDREN_RECORDED].count == 1
    with world.database.session() as session:
        saves = session.scalars(select(MonitoringSave.outbox_id)).all()
        assert len(saves) == 1
        # a purge of delivered entries (none exists today) must not lose what was counted
        session.execute(delete(AuditRecord))
        session.execute(delete(OutboxEntry))
    again = _figures(world, world.hospital, today)
    assert again.values[Figure.STEP_1_DONE].count == 1
    assert again.values[Figure.CHILDREN_RECORDED].count == 1
    with world.database.session() as session:
        assert session.scalars(select(MonitoringSave.outbox_id)).all() == saves


def test_a_save_that_cannot_be_read_back_is_reported_not_guessed(world: World) -> None:
    step_code = {"system": terminology.code_system_url("kindreflex-step"), "code": "step-2"}
    broken = {  # a step 2 finding without its business identifier
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"resource": {"resourceType": "Observation", "code": {"coding": [step_code]}}}],
    }
    with world.database.session() as session:
        session.execute(
            insert(OutboxEntry),
            [
                {
                    "tenant_id": world.hospital.id,
                    "kind": "triage",
                    "registration_id": "ehr",
                    "fhir_base_url": world.base_url,
                    "session_id": "s",
                    "author": NURSE,
                    "patient_ref": "Patient/x",
                    "bundle": broken,
                    "state": "delivered",
                    "next_attempt_at": utcnow(),
                }
            ],
        )
    today = Period(_today(), _today())
    result = _figures(world, world.hospital, today)
    assert (result.unreadable_saves, result.values[Figure.NIET_PLUIS].count) == (1, 0)
    page = world.client.get("/monitoring", headers=world.user("admin").headers)
    assert "1 opgeslagen registraties konden niet gelezen worden" in page.text


def test_the_period_includes_both_days_whole_in_brussels_time(world: World) -> None:
    period = Period(date(2026, 3, 1), date(2026, 3, 31))
    # Brussels is UTC+1 in March until the 29th, then UTC+2
    start = datetime(2026, 2, 28, 23, 0, tzinfo=UTC)
    end = datetime(2026, 3, 31, 22, 0, tzinfo=UTC)
    assert (period.start, period.end) == (start, end)
    tick = timedelta(microseconds=1)
    _cards(
        world,
        world.hospital,
        ("before", "info", start - tick),
        ("first-instant", "info", start),
        ("last-instant", "info", end - tick),
        ("after", "info", end),
    )
    assert _figures(world, world.hospital, period).values[Figure.PRESENTATIONS_WITH_CARD].count == 2
    # a save counts in the period it was made in
    _triage(world, world.hospital, (), None)
    with world.database.session() as session:
        session.execute(
            update(OutboxEntry).values(created_at=end - tick).where(OutboxEntry.kind == "triage")
        )
    assert _figures(world, world.hospital, period).values[Figure.STEP_1_DONE].count == 1
    march_31 = Period(date(2026, 3, 31), date(2026, 3, 31))
    assert _figures(world, world.hospital, march_31).values[Figure.STEP_1_DONE].count == 1
    april = Period(date(2026, 4, 1), date(2026, 4, 30))
    assert _figures(world, world.hospital, april).values[Figure.STEP_1_DONE].count == 0


@pytest.mark.parametrize(
    ("first", "last", "code"),
    [
        (date(2026, 3, 2), date(2026, 3, 1), "ends-before-start"),
        (date(2025, 1, 1), date(2026, 1, 2), "too-long"),
    ],
)
def test_a_period_that_cannot_be_reported_on_says_why(first: date, last: date, code: str) -> None:
    with pytest.raises(PeriodError) as raised:
        Period(first, last)
    assert raised.value.code == code


@pytest.mark.parametrize(
    ("first", "last"),
    [
        (date(9999, 12, 1), date(9999, 12, 31)),
        (date(1, 1, 1), date(1, 1, 5)),
        (date(1999, 12, 31), date(2000, 1, 1)),
        (date(2999, 12, 31), date(3000, 1, 1)),
    ],
)
def test_a_period_beyond_the_services_years_is_refused_with_its_bounds(
    first: date, last: date
) -> None:
    with pytest.raises(PeriodError) as raised:
        Period(first, last)
    assert raised.value.code == "out-of-range"
    assert "between 2000-01-01 and 2999-12-31" in str(raised.value)


def test_the_first_and_last_days_of_the_services_years_are_reported() -> None:
    # midnight in Brussels (winter: UTC+1), in UTC
    assert Period(date(2000, 1, 1), date(2000, 1, 1)).start == datetime(
        1999, 12, 31, 23, tzinfo=UTC
    )
    assert Period(date(2999, 12, 31), date(2999, 12, 31)).end == datetime(
        2999, 12, 31, 23, tzinfo=UTC
    )


def test_a_period_of_a_whole_year_is_reported() -> None:
    assert Period(date(2024, 1, 1), date(2024, 12, 31)).last == date(2024, 12, 31)  # leap year
    assert Period(date(2025, 1, 1), date(2026, 1, 1)).first == date(2025, 1, 1)  # 366 days


def test_the_screen_csv_and_measure_report_show_the_figures_and_no_patient(world: World) -> None:
    _scenario(world)
    headers = world.user("social-worker").headers
    when = {"from": _today().isoformat(), "to": _today().isoformat()}

    page = world.client.get("/monitoring", headers=headers, params=when)
    assert page.status_code == 200
    assert '<html lang="nl">' in page.text
    assert "Niet-pluisgevoel" in page.text
    assert '<th scope="col">Aantal</th>' in page.text
    assert 'data-figure="step-1-done">' in page.text
    # dates and decimals as a Dutch page writes them (before: "2026-05-17" and "3.0")
    day = _today().strftime("%d/%m/%Y")
    assert f"<caption>Kindreflex-cijfers van {day} tot en met {day}</caption>" in page.text
    median_row = page.text.split('data-figure="time-to-decision">')[1].split("</tr>")[0]
    assert "<td>3,0</td>" in median_row

    download = world.client.get("/monitoring.csv", headers=headers, params=when)
    assert download.status_code == 200
    assert download.headers["content-type"].startswith("text/csv; charset=utf-8")
    assert download.headers["content-disposition"] == (
        f'attachment; filename="kindreflex-monitoring-default-{_today()}-{_today()}.csv"'
    )
    rows = list(csv.DictReader(io.StringIO(download.content.decode("utf-8-sig"))))
    totals = {r["figure"]: int(r["count"]) for r in rows if not r["breakdown"]}
    assert totals == {figure.value: count for figure, count in EXPECTED_A.items()}
    assert {(r["breakdown"], r["count"]) for r in rows if r["figure"] == "referrals"} == {
        ("", "1"),
        ("vk", "1"),
    }
    median = next(r for r in rows if r["figure"] == "time-to-decision")
    assert median["median_hours"] == "3.0"

    report = world.client.get("/monitoring/MeasureReport", headers=headers, params=when)
    assert report.status_code == 200
    assert report.headers["content-type"].startswith("application/fhir+json")
    for text in (page.text, download.content.decode("utf-8-sig"), report.text):
        for name in world.names:
            assert name not in text
        assert "Patient/" not in text
        assert "Encounter/" not in text


def test_an_ehr_override_code_cannot_become_a_spreadsheet_formula(world: World) -> None:
    """A reason the EHR added to the card's (CDS Hooks lets it) is stored as sent."""
    _cards(world, world.hospital, ("enc-1", "info", utcnow()))
    (card,) = _card_uuids(world, world.hospital)
    row = {
        "tenant_id": world.hospital.id,
        "service_id": "kindreflex-encounter-start",
        "card_uuid": card,
        "outcome": "overridden",
        "override_code": "=HYPERLINK(1)",
        "outcome_at": utcnow(),
    }
    with world.database.session() as session:
        session.execute(insert(CdsFeedback), [row])
    when = {"from": _today().isoformat(), "to": _today().isoformat()}
    download = world.client.get("/monitoring.csv", headers=world.user("admin").headers, params=when)
    rows = list(csv.DictReader(io.StringIO(download.content.decode("utf-8-sig"))))
    (reason,) = [r for r in rows if r["figure"] == "cards-overridden" and r["breakdown"]]
    assert (reason["breakdown"], reason["breakdown_label"]) == ("'=HYPERLINK(1)", "'=HYPERLINK(1)")


def test_an_ehr_reason_with_the_code_of_one_of_ours_is_counted_apart(world: World) -> None:
    """An EHR may add its own override reasons; one whose code happens to be ours
    ("not-now") is another reason, not the nurse choosing ours."""
    _cards(world, world.hospital, ("enc-1", "info", utcnow()), ("enc-2", "info", utcnow()))
    ours, theirs = _card_uuids(world, world.hospital)
    ehr_system = "urn:oid:1.2.840.114350.1"
    rows = [
        {
            "tenant_id": world.hospital.id,
            "service_id": "kindreflex-encounter-start",
            "card_uuid": card,
            "outcome": "overridden",
            "override_system": system,
            "override_code": "not-now",
            "outcome_at": utcnow(),
        }
        for card, system in (
            (ours, terminology.code_system_url("cds-override-reason")),
            (theirs, ehr_system),
        )
    ]
    with world.database.session() as session:
        session.execute(insert(CdsFeedback), rows)
    when = {"from": _today().isoformat(), "to": _today().isoformat()}
    download = world.client.get("/monitoring.csv", headers=world.user("admin").headers, params=when)
    lines = list(csv.DictReader(io.StringIO(download.content.decode("utf-8-sig"))))
    reasons = {
        r["breakdown"]: r["count"]
        for r in lines
        if r["figure"] == "cards-overridden" and r["breakdown"]
    }
    assert reasons == {"not-now": "1", f"{ehr_system}|not-now": "1"}


def test_a_card_dismissed_twice_counts_once_under_its_latest_reason(world: World) -> None:
    """CDS Hooks 2.0 asks the EHR to report each of the user's interactions with a card: one
    dismissed twice, with two reasons, counted once in the figure and under each reason, so
    the lines (the MeasureReport's strata) outnumbered the cards (found by review)."""
    now = utcnow()
    _cards(world, world.hospital, ("enc-1", "info", now), ("enc-2", "info", now))
    twice, once = _card_uuids(world, world.hospital)
    _feedback(world, twice, "overridden", "not-now", now - timedelta(minutes=5))
    _feedback(world, twice, "overridden", "already-done", now)  # the nurse's latest word
    _feedback(world, once, "overridden", "not-now", now)

    overridden = _figures(world, world.hospital, Period(_today(), _today())).values[
        Figure.CARDS_OVERRIDDEN
    ]

    assert overridden.count == 2
    assert dict(overridden.breakdown) == {"already-done": 1, "not-now": 1}


def test_the_measure_report_is_valid_r4_on_the_guides_measure(world: World) -> None:
    _scenario(world)
    when = {"from": _today().isoformat(), "to": _today().isoformat()}
    answer = world.client.get(
        "/monitoring/MeasureReport", headers=world.user("admin").headers, params=when
    )
    report = answer.json()
    assert validate(report, MEASURE_REPORT) == []
    measure = terminology.guide().examples[f"Measure/{monitoring.MEASURE_ID}"]
    assert validate(dict(measure)) == []
    assert report["measure"] == measure["url"]
    assert (report["status"], report["type"]) == ("complete", "summary")
    assert report["period"] == {"start": _today().isoformat(), "end": _today().isoformat()}
    # one group per group of the Measure, same codes, same population and stratifier codes
    assert [g["code"]["coding"][0]["code"] for g in report["group"]] == [
        g["code"]["coding"][0]["code"] for g in measure["group"]
    ]
    initial = {
        "coding": [
            {
                "system": "http://terminology.hl7.org/CodeSystem/measure-population",
                "code": "initial-population",
                "display": "Initial Population",
            }
        ]
    }
    for ours, defined in zip(report["group"], measure["group"], strict=True):
        (population,) = ours["population"]
        assert population["code"] == defined["population"][0]["code"] == initial  # a cohort
        stratifiers = [s["code"][0]["coding"][0]["code"] for s in ours.get("stratifier", [])]
        assert stratifiers == [
            s["code"]["coding"][0]["code"] for s in defined.get("stratifier", [])
        ]
    by_code = {g["code"]["coding"][0]["code"]: g for g in report["group"]}
    assert by_code["step-1-done"]["population"][0]["count"] == 4
    assert by_code["time-to-decision"]["measureScore"]["value"] == 3.0
    assert by_code["referrals"]["stratifier"][0]["stratum"] == [
        {
            "value": {"coding": [terminology.coding("partner-type", "vk")]},
            "population": [{"code": initial, "count": 1}],
        }
    ]


@pytest.mark.parametrize(
    ("role", "status"),
    [(None, 401), ("nurse", 403), ("social-worker", 200), ("admin", 200)],
    ids=["anonymous", "nurse", "social-worker", "admin"],
)
@pytest.mark.parametrize("prefix", ["", "/t/hospital-b"], ids=["default", "prefixed"])
def test_only_the_social_service_and_admins_see_the_figures(
    world: World, role: Role | None, status: int, prefix: str
) -> None:
    tenant = world.other if prefix else world.hospital
    headers = world.user(role, tenant).headers if role else {}
    for endpoint in ENDPOINTS:
        answer = world.client.get(f"{prefix}{endpoint}", headers=headers)
        assert answer.status_code == status, (endpoint, answer.text)
    if status == 403:
        assert "de sociale dienst en beheerders" in answer.text


def _admin_headers(token: str, carried: str) -> dict[str, str]:
    """An admin session token as the admin pages accept it: their cookie or a Bearer."""
    if carried == "cookie":
        return {"Cookie": f"{ADMIN_COOKIE}={token}"}
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize("carried", ["cookie", "bearer"])
@pytest.mark.parametrize("prefix", ["", "/t/hospital-b"], ids=["default", "prefixed"])
def test_an_admin_signed_in_with_a_bootstrap_token_sees_the_figures_of_their_hospital(
    world: World, carried: str, prefix: str
) -> None:
    tenant = world.other if prefix else world.hospital
    other = world.hospital if prefix else world.other
    token, _ = access.issue_bootstrap_token(world.database, tenant.id)
    mine = access.redeem_bootstrap_token(world.database, tenant.id, token, "Els")
    token, _ = access.issue_bootstrap_token(world.database, other.id)
    theirs = access.redeem_bootstrap_token(world.database, other.id, token, "Jan")
    when = {"from": "2026-01-01", "to": "2026-01-31"}
    if carried == "cookie":  # the admin screen leads there
        overview = world.client.get(f"{prefix}/admin", headers=_admin_headers(mine.token, carried))
        assert f'<a href="{prefix}/monitoring">Monitoringcijfers</a>' in overview.text

    for endpoint in ENDPOINTS:
        url = f"{prefix}{endpoint}"
        answer = world.client.get(url, headers=_admin_headers(mine.token, carried), params=when)
        assert answer.status_code == 200, (endpoint, answer.text)
        foreign = world.client.get(url, headers=_admin_headers(theirs.token, carried))
        assert foreign.status_code == 403, endpoint  # another hospital's admin
        unknown = world.client.get(url, headers=_admin_headers("not-a-token", carried))
        assert unknown.status_code == 401, endpoint

    with world.database.session() as session:
        rows = session.scalars(select(AuditRecord).order_by(AuditRecord.id)).all()
        seen = [(r.tenant_id, r.actor, r.entities[0].rsplit("=", 1)[1]) for r in rows]
        servers = {r.fhir_base_url for r in rows}
    assert seen == [(tenant.id, mine.actor, shown) for shown in ("screen", "csv", "measure-report")]
    assert servers == {None}  # signed in here, not launched from an EHR


def test_an_ended_admin_session_is_refused(world: World) -> None:
    token, _ = access.issue_bootstrap_token(world.database, world.hospital.id)
    issued = access.redeem_bootstrap_token(world.database, world.hospital.id, token, "Els")
    headers = _admin_headers(issued.token, "bearer")
    assert world.client.get("/monitoring", headers=headers).status_code == 200
    assert world.client.delete("/admin/api/session", headers=headers).status_code == 204

    assert world.client.get("/monitoring", headers=headers).status_code == 401


def test_a_session_of_another_hospital_is_refused(world: World) -> None:
    headers = world.user("social-worker", world.other).headers
    assert world.client.get("/monitoring", headers=headers).status_code in (401, 403)


def test_every_view_is_audited_without_a_patient(world: World) -> None:
    headers = world.user("admin").headers
    when = {"from": "2026-01-01", "to": "2026-03-31"}
    for endpoint in ENDPOINTS:
        assert world.client.get(endpoint, headers=headers, params=when).status_code == 200
    with world.database.session() as session:
        rows = session.scalars(select(AuditRecord).order_by(AuditRecord.id)).all()
        seen = [(r.actor, r.action, r.patient_ref, r.entities, r.outcome) for r in rows]
        servers = {r.fhir_base_url for r in rows}
    what = "Measure/kindreflex-ed-monitoring?from=2026-01-01&to=2026-03-31&format="
    assert seen == [
        (f"{world.base_url}/Practitioner/admin-x", "search-type", None, [what + shown], "success")
        for shown in ("screen", "csv", "measure-report")
    ]
    assert servers == {world.base_url}  # the EHR the admin launched from


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ({"from": "2026-03-02", "to": "2026-03-01"}, "De periode eindigt voor ze begint."),
        ({"from": "2025-01-01", "to": "2026-03-01"}, "Een periode telt hoogstens 366 dagen."),
        ({"from": "2026-02-30", "to": "2026-03-01"}, "'2026-02-30' is geen datum"),
        ({"from": "2026-03-01", "to": "morgen" * 50}, "'morgenmorgenmorgenmo' is geen datum"),
        ({"from": "9999-12-01", "to": "9999-12-31"}, "ligt tussen 2000-01-01 en 2999-12-31"),
        ({"from": "0001-01-01", "to": "0001-01-05"}, "ligt tussen 2000-01-01 en 2999-12-31"),
    ],
    ids=[
        "reversed",
        "too-long",
        "not-a-date",
        "not-a-date-at-all",
        "the calendar's last days",
        "the calendar's first days",
    ],
)
def test_a_bad_period_gets_a_clear_400_in_every_form_and_is_not_audited(
    world: World, params: dict[str, str], reason: str
) -> None:
    headers = world.user("social-worker").headers
    page = world.client.get("/monitoring", headers=headers, params=params)
    assert page.status_code == 400
    assert reason in page.text.replace("&#39;", "'")
    # the reason is read with both dates of the period (and announced)
    assert 'role="alert" class="error" id="period-problem"' in page.text
    assert page.text.count('aria-describedby="period-problem" aria-invalid="true"') == 2
    download = world.client.get("/monitoring.csv", headers=headers, params=params)
    assert download.status_code == 400
    assert download.text
    report = world.client.get("/monitoring/MeasureReport", headers=headers, params=params)
    assert report.status_code == 400
    outcome = json.loads(report.text)
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["code"] == "invalid"
    with world.database.session() as session:
        assert session.scalars(select(AuditRecord)).all() == []


def test_without_a_period_the_screen_shows_this_month_so_far(world: World) -> None:
    page = world.client.get("/monitoring", headers=world.user("social-worker").headers)
    assert page.status_code == 200
    today = _today()
    assert f'value="{today.replace(day=1).isoformat()}"' in page.text
    assert f'value="{today.isoformat()}"' in page.text


@pytest.mark.parametrize(
    ("codes", "code_system"),
    [(monitoring.Figure, "monitoring-figure"), (monitoring.Breakdown, "monitoring-breakdown")],
)
def test_the_figure_codes_are_the_guides(codes: type[StrEnum], code_system: str) -> None:
    assert terminology.code_differences(codes, code_system) == (set(), set())


@pytest.mark.parametrize("prefix", ["", "/t/hospital-b"], ids=["default", "prefixed"])
def test_the_monitoring_screen_leads_back_to_where_its_viewer_came_from(
    world: World, prefix: str
) -> None:
    """The monitoring screen had no way back: an admin returns to the admin screen, a
    social worker to the worklist, from the banner as on the other screens."""
    tenant = world.other if prefix else world.hospital
    token, _ = access.issue_bootstrap_token(world.database, tenant.id)
    admin = access.redeem_bootstrap_token(world.database, tenant.id, token, "Els")
    worker = world.user("social-worker", tenant).headers

    from_admin = world.client.get(
        f"{prefix}/monitoring", headers=_admin_headers(admin.token, "cookie")
    )
    from_worklist = world.client.get(f"{prefix}/monitoring", headers=worker)

    banner = r'<header class="banner">.*?<nav aria-label="Navigatie">(.*?)</nav>'
    link = r'<a href="([^"]+)">([^<]+)</a>'
    (admin_nav,) = re.findall(banner, from_admin.text, re.S)
    (worker_nav,) = re.findall(banner, from_worklist.text, re.S)
    assert re.findall(link, admin_nav) == [(f"{prefix}/admin", "Terug naar het beheer")]
    assert re.findall(link, worker_nav) == [(f"{prefix}/social", "Terug naar de werklijst")]
    assert world.client.get(f"{prefix}/social", headers=worker).status_code == 200
