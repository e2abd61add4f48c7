"""What a refused social save puts back on the worklist (``casework.undo_refused_save``),
for the cases the end-to-end test (``test_social_casework.py``) does not reach: another save
since, and a patient with another open concern by now. Index rows as the casework writes
them, SQLite and PostgreSQL; the outbox's recording of the refusal calls this function in
its transaction (``Outbox.when_refused``)."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import select

from service.casework import KIND, undo_refused_save
from service.db.base import Database, utcnow
from service.db.models import Concern
from service.outbox import NewEntry, enqueue
from service.tenancy import TenantContext
from service.triage import Triage
from smart_app.session import AppUser, LaunchContext
from tests.support.triage import child_aged, niet_pluis
from tests.support.write_path import Clock, LoopbackTokens, make_outbox, make_tenant

FHIR = "http://127.0.0.1:9/fhir"  # never called
PATIENT = "Patient/1"
BEFORE_CLOSING = {
    "last_step": "step-4",
    "status": "open",
    "follow_up_due": None,
    "acute_danger": False,
}


def _save(database: Database, tenant: TenantContext) -> int:
    """An outbox entry of a social save for the patient."""
    with database.session() as session:
        new = NewEntry(KIND, "ehr", FHIR, "s1", "Practitioner/sw-1", PATIENT, {})
        return enqueue(session, tenant.id, new).id


def _concern(tenant: TenantContext, flag: str, last_step: str, status: str) -> Concern:
    return Concern(
        tenant_id=tenant.id,
        fhir_base_url=FHIR,
        patient_ref=PATIENT,
        flag_identifier=flag,
        flagged_at=utcnow(),
        flagged_by="Practitioner/nurse-1",
        triggers=[],
        children_birth_dates=[],
        last_step=last_step,
        status=status,
    )


def _closed_by(database: Database, tenant: TenantContext, outbox_id: int) -> int:
    """The case as a closing left it on the worklist (before the FHIR server answered)."""
    with database.session() as session:
        row = _concern(tenant, "flag-1", "step-4", "closed")
        row.outbox_id, row.before_save = outbox_id, BEFORE_CLOSING
        session.add(row)
        session.flush()
        return row.id


def _row(database: Database, case_id: int) -> Concern:
    with database.session() as session:
        row = session.get(Concern, case_id)
        assert row is not None
        return row


def test_a_refused_closing_opens_the_case_again(database: Database) -> None:
    hospital = make_tenant(database, "default", FHIR)
    closing = _save(database, hospital)
    case_id = _closed_by(database, hospital, closing)
    version = _row(database, case_id).row_version

    with database.session() as session:
        undo_refused_save(session, closing)

    row = _row(database, case_id)
    assert (row.status, row.last_step, row.outbox_id) == ("open", "step-4", closing)
    assert row.row_version == version + 1  # a form still showing the closing is stale
    assert row.before_save is None


def test_a_refusal_after_another_save_leaves_that_save_alone(database: Database) -> None:
    hospital = make_tenant(database, "default", FHIR)
    closing = _save(database, hospital)
    case_id = _closed_by(database, hospital, closing)
    later = _save(database, hospital)
    with database.session() as session:  # a later save points the row at itself
        row = session.get(Concern, case_id)
        assert row is not None
        row.outbox_id, row.last_step, row.row_version = later, "step-5", 4

    with database.session() as session:
        undo_refused_save(session, closing)

    row = _row(database, case_id)
    assert (row.status, row.last_step, row.outbox_id, row.row_version) == (
        "closed",
        "step-5",
        later,
        4,
    )


def test_a_refused_closing_stays_closed_when_the_patient_has_another_open_concern(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    # One open concern per patient: reopening would break the unique index, and the
    # outbox's recording of the refusal with it, on every retry.
    hospital = make_tenant(database, "default", FHIR)
    closing = _save(database, hospital)
    case_id = _closed_by(database, hospital, closing)
    with database.session() as session:  # a later triage raised a new concern
        session.add(_concern(hospital, "flag-2", "step-2", "open"))

    with caplog.at_level(logging.WARNING), database.session() as session:
        undo_refused_save(session, closing)

    assert _row(database, case_id).status == "closed"
    assert "refused closing not undone" in caplog.text
    with database.session() as session:
        open_rows = session.scalars(select(Concern).where(Concern.status == "open")).all()
    assert [r.flag_identifier for r in open_rows] == ["flag-2"]


@pytest.mark.parametrize(("before", "continued"), [("open", True), ("closed", False)])
def test_a_niet_pluis_continues_a_closed_case_only_while_its_closing_waits(
    database: Database, before: str, continued: bool
) -> None:
    """While a case's closing waits in the outbox, the nurse's niet-pluis continues (reopens)
    that concern: a second Flag beside it stayed active with the first when the server
    refused the closing. A closed case whose waiting save is a referral's new status (its
    closing delivered long ago) is not reopened: the patient's concern now is a new case.
    The FHIR server never answers here: every save waits."""
    hospital = make_tenant(database, "default", FHIR)
    waiting = _save(database, hospital)
    case_id = _closed_by(database, hospital, waiting)
    with database.session() as session:
        row = session.get(Concern, case_id)
        assert row is not None
        row.before_save = BEFORE_CLOSING | {"status": before}
    nurse = LaunchContext(
        "s-nurse",
        hospital,
        "ehr",
        FHIR,
        PATIENT.removeprefix("Patient/"),
        "e-2",
        AppUser("Practitioner/nurse-1", "Practitioner/nurse-1", frozenset({"nurse"})),
        language="nl",
        app_context=None,
    )
    triage = Triage(database, make_outbox(database, Clock()), LoopbackTokens(), 1.0)

    saved = triage.record_triage(nurse, niet_pluis(nurse, (child_aged("Lou", 6),)))

    assert saved.status == "pending"
    with database.session() as session:
        rows = session.scalars(select(Concern).order_by(Concern.id)).all()
        statuses = [(r.id == case_id, r.status) for r in rows]
    assert statuses == ([(True, "open")] if continued else [(True, "closed"), (False, "open")])
