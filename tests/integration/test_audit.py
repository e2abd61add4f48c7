"""Every read and write of a child's data is audited: locally and as a FHIR AuditEvent.

Real FHIR server process, real sessions and SessionTokens, SQLite and PostgreSQL.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from sqlalchemy import select

from sandbox.fhir_server import FhirServer, free_port
from sandbox.seed import SeedResult, seed
from service.db.base import Database
from service.db.models import AuditRecord, OutboxEntry
from service.fhir.client import FhirUnavailable
from service.outbox import DeliveryState
from tests.support.triage import World, child_aged, niet_pluis, seeded, world, world_at
from tests.support.validator import validate
from tests.support.write_path import fhir_server, search

__all__ = ["fhir_server", "seeded", "world"]

pytestmark = pytest.mark.fhirserver


def _records(database: Database) -> list[AuditRecord]:
    with database.session() as session:
        return list(session.scalars(select(AuditRecord).order_by(AuditRecord.id)))


def test_loading_children_is_audited_here_and_on_the_fhir_server(
    world: World, seeded: SeedResult
) -> None:
    patient = seeded.patient("els-goossens")
    nurse = f"Practitioner/nurse-{uuid.uuid4().hex[:8]}"  # this test's events on the server
    ctx = world.launch(patient.id, patient.arrived_encounter_id, nurse)

    children = world.triage.load_chart(ctx).children

    (record,) = _records(world.database)
    assert record.tenant_id == world.tenant.id
    # the EHR named her relative to its FHIR base; the trail names her absolutely, so that
    # the nurse-1 of another EHR of the hospital is another actor
    assert record.actor == f"{world.base_url}/{nurse}"
    assert record.action == "search-type"
    assert record.patient_ref == f"Patient/{patient.id}"
    assert record.fhir_base_url == world.base_url  # the server that patient is on
    assert record.outcome == "success"
    assert sorted(record.entities) == sorted(c.ref.split("/_history/")[0] for c in children)
    assert not any(c.name in str(record.entities) for c in children)  # references, no names

    with world.database.session() as session:
        entry = session.get(OutboxEntry, record.outbox_id)
        assert entry is not None
    assert entry.state == DeliveryState.PENDING  # the worker sends it: the nurse does not wait
    world.clock.advance(1)
    assert [d.state for d in world.outbox.run_once()] == [DeliveryState.DELIVERED]
    (stored,) = search(world.base_url, "AuditEvent", agent=nurse)
    assert validate(stored) == []
    assert stored["action"] == "E"
    assert stored["entity"][0]["what"]["reference"] == f"Patient/{patient.id}"


def test_a_failed_read_is_audited_as_a_failure(database: Database, tmp_path: Path) -> None:
    port = free_port()
    with FhirServer(port=port, data_dir=tmp_path / "fhir") as server:
        seeded_here = seed(server.base_url)
        here = world_at(database, server.base_url)
    patient = seeded_here.patient("jan-janssens")
    ctx = here.launch(patient.id, patient.arrived_encounter_id, "Practitioner/nurse-b")

    with pytest.raises(FhirUnavailable):
        here.triage.load_chart(ctx)

    (record,) = _records(database)
    assert (record.action, record.outcome, record.entities) == ("search-type", "failure", [])


def test_a_save_is_audited_here_and_its_audit_event_travels_with_the_data(
    world: World, seeded: SeedResult
) -> None:
    patient = seeded.patient("jan-janssens")
    nurse = f"Practitioner/nurse-{uuid.uuid4().hex[:8]}"  # this test's events on the server
    ctx = world.launch(patient.id, patient.arrived_encounter_id, nurse)

    result = world.triage.record_triage(ctx, niet_pluis(ctx, (child_aged("Lotte", 6),)))

    (record,) = _records(world.database)
    assert record.action == "create"
    assert record.outbox_id == result.outbox_id
    assert (record.fhir_base_url, record.patient_ref) == (world.base_url, f"Patient/{patient.id}")
    assert all("?identifier=" in ref for ref in record.entities)  # findable, no names
    assert "Lotte" not in str(record.entities)
    with world.database.session() as session:
        entry = session.get(OutboxEntry, result.outbox_id)
        assert entry is not None
        bundle = entry.bundle
    (sent,) = [e for e in bundle["entry"] if e["resource"]["resourceType"] == "AuditEvent"]
    assert sent["request"]["method"] == "POST"  # travels in the data's transaction
    (stored,) = search(world.base_url, "AuditEvent", agent=nurse)
    assert validate(stored) == []
    what = [e["what"]["reference"] for e in stored["entity"]]
    assert what[0] == f"Patient/{patient.id}"
    assert all(not ref.startswith("urn:uuid:") for ref in what)  # resolved by the server
