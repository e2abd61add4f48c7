"""Steps 4 and 6 of the social service on the real FHIR server process, through the outbox
(SQLite and PostgreSQL): the sandbox's open concern (Karim El Amrani) read from the server,
the workshop's factors → concerning with resistance → referral to the VK; the referral
ServiceRequest as stored validates against the guide. Two social workers saving from the
same reading: the second is refused by If-Match and nothing is overwritten."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import date, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import pytest
from sqlalchemy import select

from sandbox.fhir_server import FhirServer, free_port
from sandbox.seed import SeedResult, seed
from service.admin import partners_io
from service.casework import (
    CaseNotOnServerError,
    CaseRecord,
    Casework,
    FhirChangedConflict,
    Referral,
    StepResult,
    load_case_record,
    referred_facilities,
    replayed,
    step_transaction,
)
from service.db.base import Database, utcnow
from service.db.models import AuditRecord, Concern, OutboxEntry
from service.fhir import mapping, terminology
from service.fhir.client import FhirClient, FhirUnavailable, search_params
from service.outbox import DeliveryState, NewEntry, Outbox, enqueue
from service.partners import load_default_directory
from service.protocol import (
    CaseClosure,
    Child,
    ChildRelationship,
    CloseReason,
    HagueTrigger,
    LivesWith,
    SafetyAssessment,
    Step,
    Step1Finding,
    Step2Finding,
)
from service.social import CaseFilter, Step4Input, Step6Input, list_cases
from service.tenant_config import PartnerPhone, default_partners
from service.triage import Triage, TriageInput
from smart_app.session import AppUser, LaunchContext, Role
from tests.support.casework import new_visit, patient_at_triage
from tests.support.partners import vk_organization
from tests.support.relay import SlowRelay
from tests.support.validator import validate
from tests.support.workshop import WORKSHOP_FACTORS
from tests.support.write_path import (
    Clock,
    LoopbackTokens,
    count,
    fhir_server,  # noqa: F401 - the module's FHIR server fixture
    make_outbox,
    make_tenant,
    search,
)

SOCIAL_WORKER = "Practitioner/social-worker"


@pytest.fixture(scope="module")
def seeded(fhir_server: FhirServer) -> SeedResult:  # noqa: F811 - the fixture above
    return seed(fhir_server.base_url)


@pytest.fixture
def fhir(fhir_server: FhirServer) -> Iterator[FhirClient]:  # noqa: F811
    with FhirClient(fhir_server.base_url, lambda: "loopback", 10.0) as client:
        yield client


def _karim(fhir: FhirClient, seeded: SeedResult) -> CaseRecord:
    karim = seeded.patient("karim-el-amrani")
    flag = fhir.read("Flag", karim.flag_ids[0])
    system = terminology.identifier_system("concern")
    (ours,) = [i["value"] for i in flag["identifier"] if i["system"] == system]
    record, _ = load_case_record(fhir, f"Patient/{karim.id}", ours)
    return record


def _deliver(
    database: Database, tenant_id: int, base_url: str, record: CaseRecord, bundle: dict[str, Any]
) -> DeliveryState:
    """The save's path: the bundle committed to the outbox first, then one delivery."""
    with database.session() as session:
        entry = enqueue(
            session,
            tenant_id,
            NewEntry(
                kind="social",
                registration_id="ehr",
                fhir_base_url=base_url,
                session_id="session-of-the-social-worker",
                author=SOCIAL_WORKER,
                patient_ref=record.patient_ref,
                bundle=bundle,
            ),
        )
    return make_outbox(database, Clock()).deliver(entry.id)


def _step4(record: CaseRecord, identifier: str) -> dict[str, Any]:
    decision = Step4Input.model_validate(
        {
            "decision": "concerning-unwilling",
            "factors": WORKSHOP_FACTORS,
            "consultations": ["colleague", "clb"],
            "discussed_with_patient": True,
            "note": "Worries named concretely; he refuses any help for Yasmine.",
        }
    ).finding(SOCIAL_WORKER, utcnow())
    return step_transaction(
        record, decision, finding_identifier=identifier, actor=SOCIAL_WORKER, now=utcnow()
    ).bundle


def _referral_to_the_vk(
    record: CaseRecord, run: str, facility: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The transaction of a step 6 referral to the VK (finding ``s6-<run>``, ServiceRequest
    ``r-<run>``); ``facility``: its Organization as the directory publishes it, the default
    directory's VK unless given, laid over the one on the server as a session granted the
    update of Organizations does (``casework.updates_facilities``)."""
    referral = Step6Input(
        partner_id="vk-oost-vlaanderen",
        with_cooperation=False,
        patient_informed=True,
        follow_up_actions=["Tell the CLB who takes the next step."],
    ).finding(SOCIAL_WORKER, utcnow(), load_default_directory())
    return step_transaction(
        record,
        referral,
        finding_identifier=f"s6-{run}",
        referral=Referral(
            f"r-{run}",
            facility or vk_organization(),
            tuple(record.child_refs.values()),
            acute_danger=False,
            updates_facility=True,
        ),
        actor=SOCIAL_WORKER,
        now=utcnow(),
    ).bundle


def _finding(base_url: str, identifier: str) -> list[dict[str, Any]]:
    system = terminology.identifier_system("finding")
    return search(base_url, "Observation", identifier=f"{system}|{identifier}")


def test_the_team_decision_and_the_referral_to_the_vk_reach_the_fhir_server(
    database: Database,
    fhir_server: FhirServer,  # noqa: F811
    fhir: FhirClient,
    seeded: SeedResult,
) -> None:
    tenant = make_tenant(database, "default", fhir_server.base_url)
    record = _karim(fhir, seeded)
    assert len(record.child_refs) == 1  # Yasmine
    run = uuid.uuid4().hex  # the module's server is shared by both databases' runs

    state = _deliver(database, tenant.id, fhir_server.base_url, record, _step4(record, f"s4-{run}"))

    assert state is DeliveryState.DELIVERED
    (decision,) = _finding(fhir_server.base_url, f"s4-{run}")
    assert validate(decision) == []
    after_4, findings = load_case_record(fhir, record.patient_ref, _flag_value(record))
    assert findings[-1][1].step is Step.STEP_4  # the history, from the same search
    assert after_4.reason_ref == f"Observation/{decision['id']}"
    assert after_4.flag["meta"]["versionId"] != record.flag["meta"]["versionId"]
    # the step's finding created and the Flag updated: the AuditEvent says a transaction (it
    # said "update" of the finding it created: found by review)
    events = search(fhir_server.base_url, "AuditEvent", entity=f"Observation/{decision['id']}")
    assert [(e["action"], e["subtype"][0]["code"]) for e in events] == [("E", "transaction")]

    assert (
        _deliver(
            database, tenant.id, fhir_server.base_url, after_4, _referral_to_the_vk(after_4, run)
        )
        is DeliveryState.DELIVERED
    )

    system = terminology.identifier_system("referral")
    (stored,) = search(fhir_server.base_url, "ServiceRequest", identifier=f"{system}|r-{run}")
    assert validate(stored) == []
    partner = f"{terminology.identifier_system('partner')}|vk-oost-vlaanderen"
    (vk,) = search(fhir_server.base_url, "Organization", identifier=partner)
    assert validate(vk) == []
    assert stored["performer"] == [{"reference": f"Organization/{vk['id']}"}]
    assert stored["reasonReference"] == [{"reference": f"Observation/{decision['id']}"}]
    assert [r["reference"] for r in stored["supportingInfo"]] == list(record.child_refs.values())
    (step6,) = _finding(fhir_server.base_url, f"s6-{run}")
    assert step6["basedOn"] == [{"reference": f"ServiceRequest/{stored['id']}"}]
    flag = fhir.read("Flag", record.flag["id"])
    assert validate(flag) == []
    last_step = terminology.extension_url("concern-last-step")
    assert [e["valueCoding"]["code"] for e in flag["extension"] if e["url"] == last_step] == [
        "step-6"
    ]
    # a server that ignored the search's _include: the facility is read on its own
    no_include: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "entry": []}
    facilities = referred_facilities(fhir, [stored], no_include)
    assert facilities[f"Organization/{vk['id']}"]["name"] == vk["name"]


def test_the_second_of_two_social_workers_saving_from_the_same_reading_is_refused(
    database: Database,
    fhir_server: FhirServer,  # noqa: F811
    fhir: FhirClient,
    seeded: SeedResult,
) -> None:
    tenant = make_tenant(database, "default", fhir_server.base_url)
    record = _karim(fhir, seeded)  # both opened the case now
    run = uuid.uuid4().hex
    first, second = _step4(record, f"a-{run}"), _step4(record, f"b-{run}")

    assert _deliver(database, tenant.id, fhir_server.base_url, record, first) is (
        DeliveryState.DELIVERED
    )
    assert _deliver(database, tenant.id, fhir_server.base_url, record, second) is (
        DeliveryState.CONFLICT
    )
    # The transaction is atomic: the second decision is not on the server at all.
    assert len(_finding(fhir_server.base_url, f"a-{run}")) == 1
    assert count(fhir_server.base_url, "Observation", identifier=_identifier(f"b-{run}")) == 0


def _identifier(value: str) -> str:
    return f"{terminology.identifier_system('finding')}|{value}"


def _flag_value(record: CaseRecord) -> str:
    system = terminology.identifier_system("concern")
    (ours,) = [i["value"] for i in record.flag["identifier"] if i["system"] == system]
    return str(ours)


def test_a_step_or_a_closing_whose_answer_was_lost_is_delivered_not_a_conflict(
    database: Database,
    fhir_server: FhirServer,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The FHIR server applies a social save, but its answer never reaches us (a timeout,
    a dropped connection). Social saves had no witness, so the retry sent the transaction
    again: its Flag update's If-Match named the version before our own update → 412, the
    save shown as a conflict ("someone else changed this case, redo your input") and
    audited as a failure although it was recorded. The lost answer is the one fault mocked:
    each transaction is sent for real, then FhirUnavailable is raised."""
    base_url = fhir_server.base_url
    patient_id, clock, outbox, case, casework, social_worker = _triaged_case(database, base_url)
    sent = FhirClient.transaction

    def answer_lost(client: FhirClient, bundle: dict[str, Any]) -> dict[str, Any]:
        sent(client, bundle)
        raise FhirUnavailable("POST: ReadTimeout")

    step = Step4Input.model_validate(
        {"decision": "safe", "factors": WORKSHOP_FACTORS, "consultations": ["colleague"]}
    )

    def record(version: int) -> StepResult:
        return casework.record_step(social_worker, case.id, version, step)

    def close(version: int) -> StepResult:
        closure = CaseClosure(CloseReason.SAFETY_RESTORED)
        return casework.close_case(social_worker, case.id, version, closure)

    saves: list[StepResult] = []
    for save in (record, close):
        monkeypatch.setattr(FhirClient, "transaction", answer_lost)
        result = save(saves[-1].row_version if saves else case.row_version)
        assert result.status == "pending"
        monkeypatch.setattr(FhirClient, "transaction", sent)
        clock.advance(3600)
        outbox.run_once()  # the save, and the AuditEvent of the case's reading
        assert outbox.state_of(result.outbox_id) is DeliveryState.DELIVERED
        saves.append(result)

    with database.session() as session:
        outcomes = session.scalars(
            select(AuditRecord.outcome).where(
                AuditRecord.outbox_id.in_([s.outbox_id for s in saves])
            )
        ).all()
    assert outcomes == ["success", "success"]  # no failure audited for saves recorded
    with FhirClient(base_url, lambda: "loopback", 10.0) as client:
        flag, findings = load_case_record(client, f"Patient/{patient_id}", case.flag_identifier)
    assert [f.step for _, f in findings].count(Step.STEP_4) == 1
    assert flag.flag["status"] == "inactive"


@pytest.mark.parametrize("save", ["step", "closing"])
def test_a_social_save_in_doubt_that_lands_before_its_resend_is_delivered_and_stays_saved(
    database: Database,
    fhir_server: FhirServer,  # noqa: F811
    save: str,
) -> None:
    """The FHIR server takes a social save's transaction up late: the social worker's own
    attempt stops waiting (3 s), "pending"; the server applies it later, after the
    worker's next attempt asked the witness (nothing yet), just before the copy it sent
    again. That copy's If-Match on the Flag names the version the first copy moved: 412.
    It was a ``conflict``: the social worker told someone else changed the case, the
    refusal hook put the worklist row back (a closed case open again) and a failure
    audited, though the record held her save. Now the 412 to a resend asks the witness
    again: delivered, the row as she saved it. A step's witness is its finding; a closing
    creates nothing with an identifier, and its witness is its Provenance, by the Flag and
    the moment.

    Real FHIR server; the relay in front of it holds the save's transaction until the
    next comes, then applies them in order (tests/support/relay)."""
    step = Step4Input.model_validate(
        {"decision": "safe", "factors": WORKSHOP_FACTORS, "consultations": ["colleague"]}
    )
    with SlowRelay(fhir_server.base_url) as late:
        triaged = _triaged_case(database, late.url)
        patient_id, clock, outbox, case, casework, social_worker = triaged
        version = case.row_version
        if save == "closing":
            version = casework.record_step(social_worker, case.id, version, step).row_version
        before = late.transactions  # the triage's, the step's before a closing
        late.holding = 1  # the server takes the save's transaction up late
        if save == "step":
            result = casework.record_step(social_worker, case.id, version, step)
        else:
            result = casework.close_case(social_worker, case.id, version, CLOSURE)
        assert result.status == "pending"
        clock.advance(3600)  # the settle window long past: the server is slower still
        # the save's next attempt; run_once would first send the AuditEvents of the case's
        # readings, due earlier, and the held copy would land before the witness is asked
        assert outbox.deliver(result.outbox_id) is DeliveryState.DELIVERED
        assert late.transactions - before == 2  # the save's, and its copy sent again
        assert late.settled()

    with database.session() as session:
        row = session.get(Concern, case.id)
        assert row is not None
        status = "closed" if save == "closing" else "open"
        assert (row.status, row.row_version) == (status, result.row_version)  # not put back
        outcomes = session.scalars(
            select(AuditRecord.outcome).where(AuditRecord.outbox_id == result.outbox_id)
        ).all()
        entry = session.get(OutboxEntry, result.outbox_id)
        assert entry is not None
        witness = entry.witness or ""
    assert outcomes == ["success"]  # no failure audited
    kind, _, query = witness.partition("?")  # the finding, or the closing's Provenance: once
    assert count(fhir_server.base_url, kind, **search_params(query)) == 1
    with FhirClient(fhir_server.base_url, lambda: "loopback", 10.0) as client:
        flag, findings = load_case_record(client, f"Patient/{patient_id}", case.flag_identifier)
    assert [f.step for _, f in findings].count(Step.STEP_4) == 1
    assert flag.flag["status"] == ("inactive" if save == "closing" else "active")


class _TriagedCase(NamedTuple):
    """A niet-pluis saved at triage and delivered, and the social worker who takes it up."""

    patient_id: str
    clock: Clock
    outbox: Outbox
    case: Concern
    casework: Casework
    social_worker: LaunchContext


def _triaged_case(database: Database, base_url: str) -> _TriagedCase:
    tenant = make_tenant(database, "default", base_url)
    clock = Clock()
    outbox = make_outbox(database, clock)
    patient_id, encounter_id = patient_at_triage(base_url)

    def launch(user: str, role: Role) -> LaunchContext:
        return LaunchContext(
            uuid.uuid4().hex,
            tenant,
            "ehr",
            base_url,
            patient_id,
            encounter_id,
            AppUser(user, user, frozenset({role})),
            language="nl",
            app_context=None,
        )

    nurse = launch("Practitioner/nurse", "nurse")
    triage = Triage(database, outbox, LoopbackTokens(), 5.0)
    assert triage.record_triage(nurse, _niet_pluis(nurse.user.fhir_user)).status == "delivered"
    with database.session() as session:
        (case,) = session.scalars(select(Concern).where(Concern.tenant_id == tenant.id)).all()
    casework = Casework(database, outbox, LoopbackTokens(), 5.0)
    return _TriagedCase(
        patient_id, clock, outbox, case, casework, launch(SOCIAL_WORKER, "social-worker")
    )


def _niet_pluis(nurse: str, child_name: str = "Girl") -> TriageInput:
    at = utcnow() - timedelta(minutes=2)
    child = Child(
        f"urn:uuid:{uuid.uuid4()}",
        child_name,
        date(2017, 6, 21),
        ChildRelationship.NATURAL_CHILD,
        LivesWith.PERMANENTLY,
    )
    return TriageInput(
        step1=Step1Finding(recorded_by=nurse, recorded_at=at, children=(child,)),
        step2=Step2Finding(
            recorded_by=nurse,
            recorded_at=at + timedelta(seconds=40),
            assessment=SafetyAssessment.NIET_PLUIS,
            reasons=("Often left home alone.",),
            triggers=frozenset({HagueTrigger.DOMESTIC_VIOLENCE}),
        ),
    )


def test_a_closing_the_fhir_server_refuses_leaves_the_case_open_to_close_again(
    database: Database,
    fhir_server: FhirServer,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Closing a case commits the index row as closed, then delivers. When If-Match refused
    the delivery (someone changed the Flag on the FHIR server meanwhile), the Flag stayed
    active but the case was closed on the worklist: hidden from the open cases, and the
    social worker, told to redo the closing, was refused ("this case is closed"). The
    change on the server is made for real, by a hook just before our transaction."""
    base_url = fhir_server.base_url
    patient_id, _, _, case, casework, social_worker = _triaged_case(database, base_url)
    step = Step4Input.model_validate(
        {"decision": "safe", "factors": WORKSHOP_FACTORS, "consultations": ["colleague"]}
    )
    decided = casework.record_step(social_worker, case.id, case.row_version, step)

    sent = FhirClient.transaction

    def someone_changes_the_flag_first(client: FhirClient, bundle: dict[str, Any]) -> Any:
        flag = next(e["resource"] for e in bundle["entry"] if e["request"]["method"] == "PUT")
        _someone_changes(f"{base_url}/Flag/{flag['id']}")
        monkeypatch.setattr(FhirClient, "transaction", sent)
        return sent(client, bundle)

    monkeypatch.setattr(FhirClient, "transaction", someone_changes_the_flag_first)
    closure = CaseClosure(CloseReason.SAFETY_RESTORED)
    with pytest.raises(FhirChangedConflict) as refused:
        casework.close_case(social_worker, case.id, decided.row_version, closure)

    with database.session() as session:
        row = session.get(Concern, case.id)
        assert row is not None
        assert (row.status, row.row_version) == ("open", refused.value.current_version)
    again = casework.close_case(social_worker, case.id, refused.value.current_version, closure)
    assert again.status == "delivered"
    with FhirClient(base_url, lambda: "loopback", 10.0) as client:
        flag, _ = load_case_record(client, f"Patient/{patient_id}", case.flag_identifier)
    assert flag.flag["status"] == "inactive"
    # and what the EHR added to the Flag meanwhile survived our update of it (it was dropped:
    # the update replaced the Flag's whole extension list with ours)
    assert "urn:test:ehr-note" in {e["url"] for e in flag.flag.get("extension", [])}


def test_a_closing_the_fhir_server_refuses_to_the_worker_leaves_the_case_open_to_close_again(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The FHIR server is down when the case is closed: the closing waits in the outbox and
    the worklist shows the case closed. Meanwhile someone changes the Flag on the server;
    back up, the worker's delivery of the closing meets If-Match (a real 412). Only a
    refusal the saving request recorded put the index row back: the case stayed closed on
    the worklist while its Flag stayed active, and redoing the closing was refused ("this
    case is closed"). The server is stopped for real, between the closing's reading of the
    case and its delivery."""
    data_dir, port = tmp_path / "fhir-data", free_port()
    with FhirServer(port=port, data_dir=data_dir) as server:
        base_url = server.base_url
        triaged = _triaged_case(database, base_url)
        patient_id, clock, outbox, case, casework, social_worker = triaged
        closing = _closing_waits(server, triaged, monkeypatch)

    def open_cases() -> dict[int, tuple[int, str | None]]:
        """The worklist's open cases: their row version and their latest save's state."""
        with database.session() as session:
            page = list_cases(
                session,
                case.tenant_id,
                SOCIAL_WORKER,
                CaseFilter(),
                limit=50,
                cursor=None,
                today=utcnow().date(),
            )
        return {c.id: (c.row_version, c.delivery.state if c.delivery else None) for c in page.items}

    assert case.id not in open_cases()  # closed on the worklist while the closing waits
    with FhirServer(port=port, data_dir=data_dir) as server_again:
        flag_url = f"{server_again.base_url}/Flag/{_flag_id(closing.outbox_id, database)}"
        _someone_changes(flag_url)
        clock.advance(3600)
        outbox.run_once()  # the worker: the closing, and the AuditEvents of the readings
        assert outbox.state_of(closing.outbox_id) is DeliveryState.CONFLICT

        assert case.id in open_cases(), "the refused closing left the case closed"
        version, delivery = open_cases()[case.id]
        assert delivery == "conflict"  # the worklist shows why it is open again
        assert version > closing.row_version  # a form still showing the closing is stale
        again = casework.close_case(social_worker, case.id, version, CLOSURE)
        assert again.status == "delivered"
        with FhirClient(server_again.base_url, lambda: "loopback", 10.0) as client:
            flag, _ = load_case_record(client, f"Patient/{patient_id}", case.flag_identifier)
    assert flag.flag["status"] == "inactive"
    assert case.id not in open_cases()


def test_a_niet_pluis_while_a_closing_waits_continues_that_concern_not_a_second_one(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The closing waits in the outbox (the server is down) when the patient comes back and
    the nurse finds niet-pluis. Her save raised a second concern Flag beside the first;
    the server then refused the closing (someone changed the Flag meanwhile): two active
    Flags, and the first one's case closed on the worklist, never to be closed again
    (found by review). Her save now continues the concern whose closing waits."""
    data_dir, port = tmp_path / "fhir-data", free_port()
    with FhirServer(port=port, data_dir=data_dir) as server:
        base_url = server.base_url
        triaged = _triaged_case(database, base_url)
        patient_id, clock, outbox, case, _, social_worker = triaged
        patient_ref = f"Patient/{patient_id}"
        nurse = replace(
            social_worker,
            encounter_id=new_visit(base_url, patient_ref),
            user=AppUser("Practitioner/nurse", "Practitioner/nurse", frozenset({"nurse"})),
        )
        closing = _closing_waits(server, triaged, monkeypatch)
    triage = Triage(database, outbox, LoopbackTokens(), 5.0)
    saved = triage.record_triage(nurse, _niet_pluis(nurse.user.fhir_user, "Her sister"))
    assert saved.status == "pending"

    with FhirServer(port=port, data_dir=data_dir) as server_again:
        flag_url = f"{server_again.base_url}/Flag/{_flag_id(closing.outbox_id, database)}"
        _someone_changes(flag_url)
        clock.advance(3600)
        outbox.run_once()
        assert outbox.state_of(closing.outbox_id) is DeliveryState.CONFLICT
        assert outbox.state_of(saved.outbox_id) is DeliveryState.DELIVERED
        flags = httpx.get(
            f"{server_again.base_url}/Flag", params={"patient": patient_ref}, timeout=10
        ).json()

    active = [e["resource"] for e in flags.get("entry", []) if e["resource"]["status"] == "active"]
    assert [f["identifier"][0]["value"] for f in active] == [case.flag_identifier]
    with database.session() as session:
        rows = session.scalars(select(Concern).where(Concern.patient_ref == patient_ref)).all()
    assert [(r.id, r.status) for r in rows] == [(case.id, "open")]


CLOSURE = CaseClosure(CloseReason.SAFETY_RESTORED)


def _closing_waits(
    server: FhirServer, triaged: _TriagedCase, monkeypatch: pytest.MonkeyPatch
) -> StepResult:
    """The team finds the home safe (delivered), then the case is closed while the FHIR
    server stops for real, between the closing's reading of the case and its delivery:
    the closing waits in the outbox."""
    step = Step4Input.model_validate(
        {"decision": "safe", "factors": WORKSHOP_FACTORS, "consultations": ["colleague"]}
    )
    case, outbox = triaged.case, triaged.outbox
    decided = triaged.casework.record_step(triaged.social_worker, case.id, case.row_version, step)
    assert decided.status == "delivered"
    delivered_at_once = outbox.deliver

    def server_down_first(entry_id: int, *, timeout: float | None = None) -> DeliveryState:
        server.stop()
        return delivered_at_once(entry_id, timeout=timeout)

    monkeypatch.setattr(outbox, "deliver", server_down_first)
    closing = triaged.casework.close_case(
        triaged.social_worker, case.id, decided.row_version, CLOSURE
    )
    monkeypatch.setattr(outbox, "deliver", delivered_at_once)
    assert closing.status == "pending"
    return closing


def _someone_changes(flag_url: str) -> None:
    """Someone changes the Flag on the FHIR server (a note of the EHR's): its version moves."""
    current = httpx.get(flag_url, timeout=10).json()
    note = {"url": "urn:test:ehr-note", "valueString": "seen by the GP"}
    changed = {**current, "extension": [*current.get("extension", []), note]}
    httpx.put(flag_url, json=changed, timeout=10).raise_for_status()


def _flag_id(outbox_id: int, database: Database) -> str:
    """The id of the Flag an outbox entry updates."""
    with database.session() as session:
        entry = session.get(OutboxEntry, outbox_id)
        assert entry is not None
        bundle = entry.bundle
    (flag,) = [e for e in bundle["entry"] if e["request"]["method"] == "PUT"]
    return str(flag["resource"]["id"])


#: What an EHR labels a resource with (``meta.tag``, ``meta.security``); an update of ours
#: must keep them: a dropped security label can widen who may read the resource.
EHR_TAG = {"system": "https://ehr.example.org/tags", "code": "reviewed-by-gp"}
EHR_SECURITY = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality",
    "code": "R",
}


def test_a_step_keeps_the_tags_and_security_labels_the_ehr_put_on_the_flag(
    database: Database,
    fhir_server: FhirServer,  # noqa: F811
) -> None:
    """The EHR labelled the concern Flag (a tag, a security label). The social service's
    update of the Flag (steps 4-6, closing) replaced its whole ``meta`` with the mapping's
    (only our profile), so the labels were gone after the team decision."""
    base_url = fhir_server.base_url
    patient_id, _, _, case, casework, social_worker = _triaged_case(database, base_url)
    with FhirClient(base_url, lambda: "loopback", 10.0) as client:
        before, _ = load_case_record(client, f"Patient/{patient_id}", case.flag_identifier)
    labelled = {
        **before.flag,
        "meta": {**before.flag["meta"], "tag": [EHR_TAG], "security": [EHR_SECURITY]},
    }
    url = f"{base_url}/Flag/{before.flag['id']}"
    httpx.put(url, json=labelled, timeout=10).raise_for_status()

    step = Step4Input.model_validate(
        {"decision": "safe", "factors": WORKSHOP_FACTORS, "consultations": ["colleague"]}
    )
    assert casework.record_step(social_worker, case.id, case.row_version, step).status == (
        "delivered"
    )

    with FhirClient(base_url, lambda: "loopback", 10.0) as client:
        after, _ = load_case_record(client, f"Patient/{patient_id}", case.flag_identifier)
    meta = after.flag["meta"]
    assert (meta["tag"], meta["security"]) == ([EHR_TAG], [EHR_SECURITY])
    assert meta["profile"] == [terminology.profile_url("kindreflex-open-concern")]
    assert int(meta["versionId"]) > int(before.flag["meta"]["versionId"]) + 1  # ours came
    assert validate(after.flag) == []


def test_a_referral_names_the_cases_children_and_the_finding_that_led_to_it(
    database: Database,
    fhir_server: FhirServer,  # noqa: F811
    fhir: FhirClient,
) -> None:
    """Another child on the chart (one the nurse took off the list stays there) is not the
    case's, and a nurse's "no concern" at a later visit is no reason for a referral: the
    referral names the case's children and the team's decision (found by review: it named
    every child of the chart and the latest step 2, 4 or 5, whatever it said)."""
    base_url = fhir_server.base_url
    triaged = _triaged_case(database, base_url)
    patient_ref = f"Patient/{triaged.patient_id}"
    other = Child("other", "Broer", date(2015, 3, 2), ChildRelationship.NATURAL_CHILD,
                  LivesWith.PERMANENTLY)  # fmt: skip
    not_in_the_case = mapping.child_related_person(
        other, patient_ref=patient_ref, identifier=mapping.identifier("child")
    )
    httpx.post(f"{base_url}/RelatedPerson", json=not_in_the_case, timeout=10).raise_for_status()
    record, _ = load_case_record(fhir, patient_ref, triaged.case.flag_identifier)
    assert len(record.children) == 2
    (girl,) = record.child_refs.values()
    assert record.children[girl].name == "Girl"

    run = uuid.uuid4().hex
    tenant_id = triaged.case.tenant_id
    assert _deliver(database, tenant_id, base_url, record, _step4(record, f"s4-{run}")) is (
        DeliveryState.DELIVERED
    )
    (decision,) = _finding(base_url, f"s4-{run}")
    later_visit = Step2Finding(
        recorded_by="Practitioner/nurse",
        recorded_at=utcnow(),
        encounter_ref=f"Encounter/{new_visit(base_url, patient_ref)}",
        assessment=SafetyAssessment.NO_CONCERN,
    )
    no_concern = mapping.finding_observation(
        later_visit,
        patient_ref=patient_ref,
        encounter_ref=later_visit.encounter_ref,
        child_refs=record.child_refs,
        identifier=mapping.identifier("finding"),
    )
    httpx.post(f"{base_url}/Observation", json=no_concern, timeout=10).raise_for_status()

    after_4, _ = load_case_record(fhir, patient_ref, triaged.case.flag_identifier)
    assert after_4.reason_ref == f"Observation/{decision['id']}"
    bundle = _referral_to_the_vk(after_4, run)
    assert _deliver(database, tenant_id, base_url, after_4, bundle) is DeliveryState.DELIVERED
    system = terminology.identifier_system("referral")
    (stored,) = search(base_url, "ServiceRequest", identifier=f"{system}|r-{run}")
    assert validate(stored) == []
    assert stored["reasonReference"] == [{"reference": f"Observation/{decision['id']}"}]
    assert stored["supportingInfo"] == [{"reference": girl}]


def test_a_later_no_children_at_triage_keeps_the_child_on_the_open_concern(
    database: Database,
    fhir_server: FhirServer,  # noqa: F811
    fhir: FhirClient,
) -> None:
    """At a later visit the patient says there are no children (the girl lives elsewhere
    now). The concern about her goes on: before, the case lost her (no child on the case
    page, the team's decision about her refused as "unknown child", a referral naming
    nobody)."""
    base_url = fhir_server.base_url
    triaged = _triaged_case(database, base_url)
    patient_ref = f"Patient/{triaged.patient_id}"
    nurse = replace(
        triaged.social_worker,
        encounter_id=new_visit(base_url, patient_ref),
        user=AppUser("Practitioner/nurse", "Practitioner/nurse", frozenset({"nurse"})),
    )
    no_children = Step1Finding(recorded_by="Practitioner/nurse", recorded_at=utcnow())
    triage = Triage(database, triaged.outbox, LoopbackTokens(), 5.0)
    assert triage.record_triage(nurse, TriageInput(step1=no_children)).status == "delivered"

    record, findings = load_case_record(fhir, patient_ref, triaged.case.flag_identifier)

    (girl,) = record.child_refs.values()
    assert record.children[girl].name == "Girl"
    case = replayed(record, findings)
    assert case.has_open_concern
    decision = Step4Input.model_validate(
        {
            "decision": "concerning-willing",
            "factors": WORKSHOP_FACTORS,
            "consultations": ["colleague"],
            "discussed_with_patient": True,
            "children_heard": [{"child_ref": girl, "consent_given": True}],
        }
    ).finding(SOCIAL_WORKER, utcnow())
    assert case.record(decision).current_step is Step.STEP_4


def _retract(base_url: str, resource: dict[str, Any]) -> None:
    """What an EHR does with a resource written in error."""
    retracted = {**resource, "status": "entered-in-error"}
    url = f"{base_url}/{resource['resourceType']}/{resource['id']}"
    httpx.put(url, json=retracted, timeout=10).raise_for_status()


def test_what_the_ehr_retracted_is_no_part_of_the_case_and_a_retracted_concern_takes_no_step(
    database: Database,
    fhir_server: FhirServer,  # noqa: F811
    fhir: FhirClient,
) -> None:
    """A team decision marked entered in error is not the case's route, and a Flag marked so
    is not written back as active by the next save (found by review: both were used)."""
    base_url = fhir_server.base_url
    patient_id, _, _, case, casework, social_worker = _triaged_case(database, base_url)
    patient_ref = f"Patient/{patient_id}"
    unwilling = Step4Input.model_validate(
        {"decision": "concerning-unwilling", "factors": WORKSHOP_FACTORS,
         "consultations": ["colleague"], "discussed_with_patient": True}
    )  # fmt: skip
    decided = casework.record_step(social_worker, case.id, case.row_version, unwilling)
    assert decided.status == "delivered"
    record, findings = load_case_record(fhir, patient_ref, case.flag_identifier)
    assert [f.step for _, f in findings][-1] is Step.STEP_4
    step_code = f"{terminology.code_system_url('kindreflex-step')}|{Step.STEP_4.value}"
    (decision,) = search(base_url, "Observation", subject=patient_ref, code=step_code)
    _retract(base_url, decision)

    record, findings = load_case_record(fhir, patient_ref, case.flag_identifier)
    assert [f.step for _, f in findings] == [Step.STEP_1, Step.STEP_2]
    assert record.reason_ref is None  # nothing a referral may follow from

    _retract(base_url, record.flag)
    queued = _outbox_entries(database)
    with pytest.raises(CaseNotOnServerError) as refused:
        casework.record_step(social_worker, case.id, decided.row_version, unwilling)
    assert "entered-in-error" in str(refused.value)
    assert _outbox_entries(database) == queued
    assert fhir.read("Flag", record.flag["id"])["status"] == "entered-in-error"


def _outbox_entries(database: Database) -> int:
    """The saves queued (not the AuditEvents of the reads)."""
    with database.session() as session:
        return len(
            session.scalars(select(OutboxEntry.id).where(OutboxEntry.kind == "social")).all()
        )


def test_a_referral_writes_the_facility_as_the_partner_directory_says_it_now(
    database: Database,
    fhir_server: FhirServer,  # noqa: F811
    fhir: FhirClient,
) -> None:
    """The directory's VK moved its intake to another phone number and was renamed: the next
    referral to it names the Organization as the directory says it now, the one the first
    referral created (found by review: its conditional create left the Organization as the
    first referral wrote it, and the case page and the EHR kept showing the old number of
    the mandated facility for good). What the EHR added to the Organization stays."""
    base_url = fhir_server.base_url
    triaged = _triaged_case(database, base_url)
    patient_ref = f"Patient/{triaged.patient_id}"
    run = uuid.uuid4().hex
    tenant_id = triaged.case.tenant_id
    (vk,) = [e for e in default_partners().entries if e.id == "vk-oost-vlaanderen"]
    vk = vk.model_copy(update={"id": f"vk-{run}"})  # this run's own facility
    record, _ = load_case_record(fhir, patient_ref, triaged.case.flag_identifier)
    assert _deliver(database, tenant_id, base_url, record, _step4(record, f"s4-{run}")) is (
        DeliveryState.DELIVERED
    )
    first, _ = load_case_record(fhir, patient_ref, triaged.case.flag_identifier)
    bundle = _referral_to_the_vk(first, f"1-{run}", partners_io.organization(vk))
    assert _deliver(database, tenant_id, base_url, first, bundle) is DeliveryState.DELIVERED
    partner = f"{terminology.identifier_system('partner')}|vk-{run}"
    (created,) = search(base_url, "Organization", identifier=partner)
    with_alias = {**created, "alias": ["VK O-Vl"]}  # the EHR's own
    httpx.put(f"{base_url}/Organization/{created['id']}", json=with_alias, timeout=10)

    moved = vk.model_copy(
        update={
            "name": "Vertrouwenscentrum Kindermishandeling Gent",
            "phones": [PartnerPhone(number="09 999 99 99")],
        }
    )
    second, _ = load_case_record(fhir, patient_ref, triaged.case.flag_identifier)
    bundle = _referral_to_the_vk(second, f"2-{run}", partners_io.organization(moved))
    assert _deliver(database, tenant_id, base_url, second, bundle) is DeliveryState.DELIVERED

    (facility,) = search(base_url, "Organization", identifier=partner)
    assert facility["id"] == created["id"]
    assert facility["name"] == "Vertrouwenscentrum Kindermishandeling Gent"
    phones = [t["value"] for t in facility["telecom"] if t["system"] == "phone"]
    assert phones == ["09 999 99 99"]
    assert facility["alias"] == ["VK O-Vl"]
    assert validate(facility) == []
    third, _ = load_case_record(fhir, patient_ref, triaged.case.flag_identifier)
    bundle = _referral_to_the_vk(third, f"3-{run}", partners_io.organization(moved))
    assert _deliver(database, tenant_id, base_url, third, bundle) is DeliveryState.DELIVERED
    (unchanged,) = search(base_url, "Organization", identifier=partner)
    assert unchanged["meta"]["versionId"] == facility["meta"]["versionId"]  # not written again
    system = terminology.identifier_system("referral")
    for value in (f"r-1-{run}", f"r-2-{run}", f"r-3-{run}"):
        (request,) = search(base_url, "ServiceRequest", identifier=f"{system}|{value}")
        assert request["performer"] == [{"reference": f"Organization/{created['id']}"}]
