"""The nurse's save (steps 1-3) end to end: real FHIR server, real sessions, both databases.

Every resource that reaches the FHIR server is read back and validated against the
guide's profiles. Counts are taken by business identifier, so tests sharing the module's
FHIR server do not disturb each other.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update

from sandbox.fhir_server import FhirServer, free_port
from sandbox.seed import SeedResult, seed
from service import triage
from service.db.base import Database, utcnow
from service.db.models import AppSession, AuditRecord, Concern, OutboxEntry, ShownChild
from service.fhir import mapping, terminology
from service.fhir.client import FhirClient, FhirConflict
from service.fhir.mapping import display_name
from service.i18n import translate
from service.outbox import RACES_RETRIED, DeliveryState, kept_changing
from service.protocol import (
    Child,
    ChildRelationship,
    HagueTrigger,
    LivesWith,
    SafetyAssessment,
    Step1Finding,
    Step2Finding,
    Step3Support,
    StepOrderError,
    SupportAction,
)
from service.retention import PURGED_BUNDLE, purge
from service.triage import (
    ChildRecordedMeanwhile,
    RecordedChart,
    SaveConflict,
    SaveResult,
    TriageInput,
    unversioned,
)
from smart_app.nurse import ChildRow, TriageForm, rows_after_conflict, with_answers
from smart_app.session import SESSION_LIFETIME, LaunchContext, SessionStore, SessionTokens
from tests.support.relay import SlowRelay
from tests.support.triage import (
    World,
    child_aged,
    conditional_creates,
    edit_first_child,
    niet_pluis,
    no_concern,
    outbox_entry,
    seeded,
    witness_identifier,
    world,
    world_at,
    written_by_kindreflex,
    written_by_save,
)
from tests.support.validator import validate
from tests.support.write_path import (
    Clock,
    LoopbackTokens,
    count,
    fhir_server,
    make_outbox,
    make_tenant,
    search,
)

__all__ = ["fhir_server", "seeded", "world"]  # the fixtures, shared with pytest

pytestmark = pytest.mark.fhirserver

NURSE = "Practitioner/{id}"
CHILD_PROFILE = terminology.profile_url("kindreflex-child")


@pytest.fixture
def counted(database: Database, fhir_server: FhirServer) -> Iterator[tuple[World, SlowRelay]]:
    """The world with its FHIR requests passing a relay that counts each as it arrives,
    before it is answered. Not the server's traffic log: sekmet writes a request's row only
    after sending the answer, so a count taken right after an answer can miss it."""
    with SlowRelay(fhir_server.base_url) as relay:
        yield world_at(database, relay.url), relay


def test_niet_pluis_is_written_as_one_valid_transaction_and_a_second_save_adds_nothing(
    world: World, seeded: SeedResult
) -> None:
    patient = seeded.patient("jan-janssens")
    nurse = NURSE.format(id=seeded.practitioners["nurse"])
    ctx = world.launch(patient.id, patient.arrived_encounter_id, nurse)
    findings = niet_pluis(ctx, (child_aged("Lotte Janssens", 7), child_aged("Wout Janssens", 3)))

    result = world.triage.record_triage(ctx, findings)

    assert result.status == "delivered"
    assert result.concern_flagged
    written = written_by_save(world, result.outbox_id)
    kinds = sorted(r["resourceType"] for r in written)
    assert kinds == sorted(
        ["RelatedPerson"] * 2 + ["Observation"] * 2 + ["Flag", "Provenance", "AuditEvent"]
    )
    for resource in written:
        assert validate(resource) == [], resource["resourceType"]
    plan_revision = str(ctx.tenant.config.plan.revision)
    for finding in (r for r in written if r["resourceType"] == "Observation"):
        shown = [c.get("valueString") for c in finding["component"] if _is_plan_version(c)]
        assert shown == [plan_revision], "each finding records the plan wording shown"
    flag = next(r for r in written if r["resourceType"] == "Flag")
    assert flag["status"] == "active"
    assert flag["subject"]["reference"] == f"Patient/{patient.id}"
    provenance = next(r for r in written if r["resourceType"] == "Provenance")
    targets = {t["reference"] for t in provenance["target"]}
    expected = {
        f"{r['resourceType']}/{r['id']}"
        for r in written
        if r["resourceType"] not in ("Provenance", "AuditEvent")
    }
    assert targets == expected
    assert nurse in {a["who"]["reference"] for a in provenance["agent"]}

    counts = {
        i: count(world.base_url, k, identifier=i)
        for k, i in conditional_creates(_bundle(world, result))
    }
    again = world.triage.record_triage(ctx, findings)  # a double submit, or a retried request
    assert again == result  # joins the first save: nothing is sent twice
    assert {
        i: count(world.base_url, k, identifier=i)
        for k, i in conditional_creates(_bundle(world, again))
    } == counts
    assert set(counts.values()) == {1}
    assert sorted(r["resourceType"] for r in written_by_save(world, again.outbox_id)) == kinds

    with world.database.session() as session:
        concerns = session.scalars(select(Concern)).all()
    assert len(concerns) == 1  # the same open concern, not a second one
    assert concerns[0].patient_ref == f"Patient/{patient.id}"
    assert concerns[0].triggers == ["domestic-violence"]
    assert concerns[0].last_step == "step-2"


def _bundle(world: World, result: Any) -> dict[str, Any]:
    return outbox_entry(world.database, result.outbox_id).bundle


def test_fault_fhir_server_down_at_save_then_delivered_exactly_once_after_restarts(
    database_url: str, database: Database, tmp_path: Path
) -> None:
    """Stop the FHIR server, save (pending), restart our service and the server: once."""
    data_dir, port = tmp_path / "fhir", free_port()
    server = FhirServer(port=port, data_dir=data_dir).start()
    seeded = seed(server.base_url)
    world = world_at(database, server.base_url)
    patient = seeded.patient("jan-janssens")
    ctx = world.launch(patient.id, patient.arrived_encounter_id, "Practitioner/nurse-x")
    findings = niet_pluis(ctx, (child_aged("Lotte Janssens", 7),))
    server.stop()

    result = world.triage.record_triage(ctx, findings)

    assert result.status == "pending"  # "opgeslagen, levering volgt"
    assert result.concern_flagged
    with database.session() as session:
        assert session.scalar(select(func.count()).select_from(Concern)) == 1
        assert session.scalar(select(func.count()).select_from(AuditRecord)) == 1
    identifiers = conditional_creates(outbox_entry(database, result.outbox_id).bundle)

    database.dispose()  # our service restarts: a new Database, SessionTokens and Outbox ...
    restarted = Database(database_url)
    try:
        clock = Clock()
        tokens = SessionTokens(restarted, world.settings)
        outbox = make_outbox(restarted, clock, tokens=tokens)
        with FhirServer(port=port, data_dir=data_dir) as server_again:  # ... and so does FHIR
            clock.advance(120)
            assert [d.state for d in outbox.run_once()] == [DeliveryState.DELIVERED]
            clock.advance(3600)
            assert outbox.run_once() == []
            for kind, identifier in identifiers:
                assert count(server_again.base_url, kind, identifier=identifier) == 1
            for resource in written_by_save(replace(world, database=restarted), result.outbox_id):
                assert validate(resource) == [], resource["resourceType"]
    finally:
        restarted.dispose()


@dataclass
class _OwnServer:
    """A seeded FHIR server process of the test's own: stopped to make saves pend, then
    started again on the same port and data."""

    process: FhirServer
    seeded: SeedResult

    @classmethod
    def start(cls, tmp_path: Path) -> _OwnServer:
        process = FhirServer(port=free_port(), data_dir=tmp_path / "fhir").start()
        return cls(process, seed(process.base_url))

    @property
    def base_url(self) -> str:
        return self.process.base_url

    def stop(self) -> None:
        self.process.stop()

    def restart(self) -> FhirServer:
        """The FHIR server again, on the same port and data (a context manager)."""
        return FhirServer(port=self.process.port, data_dir=self.process.data_dir)


@dataclass
class _Outage:
    """A nurse's edit of a loaded child, saved while the FHIR server was stopped."""

    world: World
    server: _OwnServer
    children: list[Child]  # as the nurse loaded them
    before: dict[str, Any]  # the edited child as stored before the save
    result: SaveResult

    def restart(self) -> FhirServer:
        return self.server.restart()


def _edit_during_outage(
    database: Database, tmp_path: Path, name: str, added: tuple[Child, ...] = ()
) -> _Outage:
    """The first loaded child renamed ``name`` (and the children ``added``), saved while the
    FHIR server is stopped."""
    server = _OwnServer.start(tmp_path)
    patient = server.seeded.patient("els-goossens")
    world = world_at(database, server.base_url)
    ctx = world.launch(patient.id, patient.arrived_encounter_id, "Practitioner/nurse-edit")
    children = world.triage.load_chart(ctx).children
    with FhirClient(server.base_url, lambda: "loopback", 5.0) as client:
        before = client.read("RelatedPerson", children[0].ref.split("/")[1])
    server.stop()
    result = world.triage.record_triage(ctx, edit_first_child(ctx, [*children, *added], name))
    return _Outage(world, server, children, before, result)


@contextlib.contextmanager
def _refused_as_a_conflict(
    database: Database, tmp_path: Path, added: tuple[Child, ...] = ()
) -> Iterator[tuple[_Outage, FhirClient, str]]:
    """An edit of the first child saved during an outage ("Noor Goossens"), with the
    children ``added``, then refused as a conflict: someone else changed the child before
    delivery. Yields the outage, a client of the restarted server and the child's id; the
    server runs until the block ends."""
    outage = _edit_during_outage(database, tmp_path, "Noor Goossens", added)
    child_id = outage.children[0].ref.split("/")[1]
    with outage.restart() as server, FhirClient(server.base_url, lambda: "loopback", 5.0) as client:
        _changed_by_someone_else(client, child_id)
        outage.world.clock.advance(120)
        outage.world.outbox.run_once()
        assert outage.world.outbox.state_of(outage.result.outbox_id) == DeliveryState.CONFLICT
        yield outage, client, child_id


def test_fault_a_loaded_child_edited_while_the_server_is_down_is_delivered_exactly_once(
    database: Database, tmp_path: Path
) -> None:
    """Stop the FHIR server, edit a loaded child, save (pending), start it: once, merged."""
    outage = _edit_during_outage(database, tmp_path, "Noor Goossens")
    world, children, result, before = outage.world, outage.children, outage.result, outage.before
    child_id, version = children[0].ref.split("/")[1], children[0].ref.split("/")[3]

    assert result.status == "pending"  # saved: the edit waits in the outbox
    with outage.restart() as again:
        world.clock.advance(120)
        deliveries = [d for d in world.outbox.run_once() if d.entry_id == result.outbox_id]
        assert [d.state for d in deliveries] == [DeliveryState.DELIVERED]
        world.clock.advance(3600)
        assert all(d.entry_id != result.outbox_id for d in world.outbox.run_once())
        with FhirClient(again.base_url, lambda: "loopback", 5.0) as client:
            after = client.read("RelatedPerson", child_id)
            kept = client.read("RelatedPerson", children[1].ref.split("/")[1])
    assert int(after["meta"]["versionId"]) == int(version) + 1  # one update, not two
    assert "Noor Goossens" in str(after["name"])
    for element in ("identifier", "gender", "active"):  # what the EHR stored besides ours
        assert after[element] == before[element], element
    assert kept["meta"]["versionId"] == children[1].ref.split("/")[3]  # unchanged: untouched
    assert validate(after) == []


@pytest.mark.parametrize("delivered_first", [False, True], ids=["pending", "delivered"])
def test_a_pending_edit_the_nurse_undoes_is_undone_on_the_server(
    database: Database, tmp_path: Path, delivered_first: bool
) -> None:
    """A nurse renamed a child by a slip (saved during an outage: pending), saw the edit
    pending on the chart and put the name back. The undo was lost and both saves said
    delivered: at delivery the undo equals the version she edited, so the outbox took it
    for "nothing to write"; and when the slip was delivered while her page was open, the
    save took the version's values for a confirmation and only referenced the child. The
    server kept the slip. Now the undo is decided against the child as the server has it
    now, over the slip, and the name she put back is the one kept."""
    outage = _edit_during_outage(database, tmp_path, "Noor Goossens")  # the slip, pending
    world, edited_ref = outage.world, outage.children[0].ref
    original = display_name(outage.before)
    assert original is not None
    patient = outage.server.seeded.patient("els-goossens")
    with outage.restart() as server, FhirClient(server.base_url, lambda: "loopback", 5.0) as client:
        nurse = world.launch(patient.id, patient.arrived_encounter_id, "Practitioner/c-2")
        chart = world.triage.load_chart(nurse)
        assert chart.pending == {edited_ref}
        world.clock.advance(120)  # the slip's retry is due
        if delivered_first:  # while her page is open
            world.outbox.run_once()
            assert world.outbox.state_of(outage.result.outbox_id) is DeliveryState.DELIVERED
        undone = tuple(
            replace(c, name=original) if c.ref == edited_ref else c for c in chart.children
        )
        saved = world.triage.record_triage(nurse, no_concern(nurse, undone, page=chart.page))
        world.outbox.run_once()
        world.clock.advance(600)
        world.outbox.run_once()
        states = [world.outbox.state_of(r.outbox_id) for r in (outage.result, saved)]
        after = client.read("RelatedPerson", edited_ref.split("/")[1])
        shown = world.triage.load_chart(nurse)
    assert states == [DeliveryState.DELIVERED, DeliveryState.DELIVERED]
    assert display_name(after) == original
    assert int(after["meta"]["versionId"]) == int(edited_ref.split("/")[3]) + 2  # slip, undo
    assert [c.name for c in shown.children if c.ref.split("/")[1] == after["id"]] == [original]
    assert validate(after) == []


def test_a_conditional_create_another_writer_won_before_delivery_is_delivered_once(
    database: Database, tmp_path: Path
) -> None:
    """A niet-pluis saved while the FHIR server is down (pending). Before the outbox
    delivers it, another writer (a second instance delivering the same concern's save,
    say) creates the concern Flag and the child our conditional creates would create, with
    our identifiers. The delivery finds them (If-None-Exist), creates no second one and
    is delivered once; the rest of the save is written once, pointing at what was found."""
    server = _OwnServer.start(tmp_path)
    patient = server.seeded.patient("jan-janssens")
    world = world_at(database, server.base_url)
    ctx = world.launch(patient.id, patient.arrived_encounter_id, "Practitioner/nurse-x")
    server.stop()
    result = world.triage.record_triage(ctx, niet_pluis(ctx, (child_aged("Lotte Janssens", 7),)))
    assert result.status == "pending"
    bundle = outbox_entry(database, result.outbox_id).bundle
    raced = [
        e for e in bundle["entry"] if e["resource"]["resourceType"] in ("Flag", "RelatedPerson")
    ]
    assert sorted(e["resource"]["resourceType"] for e in raced) == ["Flag", "RelatedPerson"]

    with server.restart() as again:
        theirs = {}  # what the other writer created, by type
        for entry in raced:
            assert "ifNoneExist" in entry["request"]  # conditional creates, both
            answer = httpx.post(
                f"{again.base_url}/{entry['request']['url']}", json=entry["resource"], timeout=10
            )
            answer.raise_for_status()
            theirs[entry["resource"]["resourceType"]] = answer.json()["id"]
        world.clock.advance(120)
        deliveries = [d for d in world.outbox.run_once() if d.entry_id == result.outbox_id]
        world.clock.advance(3600)
        again_later = [d for d in world.outbox.run_once() if d.entry_id == result.outbox_id]

        assert [d.state for d in deliveries] == [DeliveryState.DELIVERED]
        assert again_later == []
        for kind, identifier in conditional_creates(bundle):
            assert count(again.base_url, kind, identifier=identifier) == 1, kind
        (flag,) = search(again.base_url, "Flag", identifier=_identifier_of(bundle, "Flag"))
        assert flag["id"] == theirs["Flag"]
        assert flag["meta"]["versionId"] == "1"  # found, not written again
        focused = [  # the findings about the child point at the child found
            reference["reference"]
            for kind, identifier in conditional_creates(bundle)
            if kind == "Observation"
            for finding in search(again.base_url, kind, identifier=identifier)
            for reference in finding.get("focus", [])
        ]
        assert focused == [f"RelatedPerson/{theirs['RelatedPerson']}"]


def _identifier_of(bundle: dict[str, Any], kind: str) -> str:
    """The identifier search of the bundle's one conditional create of ``kind``."""
    (identifier,) = [q for k, q in conditional_creates(bundle) if k == kind]
    return identifier


def test_returning_patient_children_are_loaded_audited_and_updated_with_if_match(
    world: World, seeded: SeedResult
) -> None:
    patient = seeded.patient("els-goossens")
    ctx = world.launch(patient.id, patient.arrived_encounter_id, "Practitioner/nurse-y")

    children = world.triage.load_chart(ctx).children

    assert len(children) == 2
    assert all("/_history/" in c.ref for c in children)
    findings = edit_first_child(ctx, children, f"{children[0].name} Junior")
    result = world.triage.record_triage(ctx, findings)

    assert result.status == "delivered"
    assert not result.concern_flagged
    changed_id, changed_version = children[0].ref.split("/")[1], children[0].ref.split("/")[3]
    kept_id, kept_version = children[1].ref.split("/")[1], children[1].ref.split("/")[3]
    client = FhirClient(world.base_url, lambda: "loopback", 5.0)
    changed = client.read("RelatedPerson", changed_id)
    kept = client.read("RelatedPerson", kept_id)
    assert int(changed["meta"]["versionId"]) == int(changed_version) + 1
    assert kept["meta"]["versionId"] == kept_version  # unchanged: not rewritten
    assert validate(changed) == []
    bundle = outbox_entry(world.database, result.outbox_id).bundle
    assert not any(e["resource"]["resourceType"] == "Flag" for e in bundle["entry"])
    with world.database.session() as session:
        assert session.scalar(select(func.count()).select_from(Concern)) == 0
        actions = session.scalars(select(AuditRecord.action).order_by(AuditRecord.id)).all()
    # its findings created, a child updated: one FHIR transaction of both (R4's code)
    assert actions == ["search-type", "transaction"]
    client.close()


def test_children_only_confirmed_are_referenced_not_rewritten_and_the_save_is_a_create(
    counted: tuple[World, SlowRelay], seeded: SeedResult
) -> None:
    """The nurse changed nothing of the children the page showed: the findings point at
    them, nothing rewrites them, and neither the Provenance nor the audit says "update".
    The save is one FHIR request: no child's version has to be read at delivery."""
    world, relay = counted
    patient = seeded.patient("els-goossens")
    ctx = world.launch(patient.id, patient.arrived_encounter_id, "Practitioner/nurse-c")
    children = world.triage.load_chart(ctx).children
    versions = {c.ref.split("/_history/")[0]: c.ref.split("/")[3] for c in children}
    before = relay.asked

    result = world.triage.record_triage(ctx, no_concern(ctx, tuple(children)))

    assert result.status == "delivered"
    assert relay.asked - before == 1  # the transaction alone
    bundle = _bundle(world, result)
    assert "RelatedPerson" not in [e["resource"]["resourceType"] for e in bundle["entry"]]
    written = written_by_save(world, result.outbox_id)
    for resource in written:
        assert validate(resource) == [], resource["resourceType"]
    focused = {
        focus["reference"]
        for r in written
        if r["resourceType"] == "Observation"
        for focus in r.get("focus", [])
    }
    assert set(versions) <= focused  # the step 1 finding names the confirmed children
    provenance = next(r for r in written if r["resourceType"] == "Provenance")
    assert provenance["activity"]["coding"][0]["code"] == "CREATE"
    assert not any("RelatedPerson" in t["reference"] for t in provenance["target"])
    assert next(r for r in written if r["resourceType"] == "AuditEvent")["action"] == "C"
    with FhirClient(world.base_url, lambda: "loopback", 5.0) as client:
        for ref, version in versions.items():
            assert client.read(*ref.split("/"))["meta"]["versionId"] == version
    with world.database.session() as session:
        actions = session.scalars(select(AuditRecord.action).order_by(AuditRecord.id)).all()
    assert actions == ["search-type", "create"]


def test_a_confirmation_counts_only_in_the_session_that_showed_the_children(
    counted: tuple[World, SlowRelay], seeded: SeedResult
) -> None:
    """Versions this session never showed (a reference from another launch) are sent as
    updates on the version named; the outbox reads each of them at delivery and finds
    they change nothing."""
    world, relay = counted
    patient = seeded.patient("els-goossens")
    showed = world.launch(patient.id, patient.arrived_encounter_id, "Practitioner/nurse-d")
    children = world.triage.load_chart(showed).children
    other = world.launch(patient.id, patient.arrived_encounter_id, "Practitioner/nurse-e")
    before = relay.asked

    result = world.triage.record_triage(other, no_concern(other, tuple(children)))

    assert result.status == "delivered"
    assert relay.asked - before == 1 + len(children)  # a read per child
    bundle = _bundle(world, result)
    updates = [e for e in bundle["entry"] if e["resource"]["resourceType"] == "RelatedPerson"]
    assert [e["request"]["ifMatch"] for e in updates] == [
        f'W/"{c.ref.split("/")[3]}"' for c in children
    ]
    with FhirClient(world.base_url, lambda: "loopback", 5.0) as client:
        for child in children:
            stored = client.read("RelatedPerson", child.ref.split("/")[1])
            assert stored["meta"]["versionId"] == child.ref.split("/")[3]


def test_a_name_stored_as_parts_only_is_compared_as_it_reads(
    world: World, seeded: SeedResult
) -> None:
    """The EHR stored the child's name as given and family names without a text; the nurse
    drops the family name. The change is written (our name leaves the family out, which
    only compared part by part would have looked like agreement)."""
    patient = seeded.patient("els-goossens")
    ctx = world.launch(patient.id, patient.arrived_encounter_id, "Practitioner/nurse-h")
    child_id = world.triage.load_chart(ctx).children[1].ref.split("/")[1]
    client = FhirClient(world.base_url, lambda: "loopback", 5.0)
    stored = client.read("RelatedPerson", child_id)
    parts = {"use": "official", "given": ["Mira"], "family": "Goossens"}
    _put(client, {**stored, "name": [parts, *stored["name"][1:]]})

    saved = _saved_with(world, ctx, child_id, name="Mira")

    assert saved.status == "delivered"
    after = client.read("RelatedPerson", child_id)
    assert display_name(after) == "Mira"
    assert after["name"][0]["use"] == "official"  # still the official name, corrected
    assert validate(after, CHILD_PROFILE) == []
    client.close()


def test_what_a_page_showed_is_deleted_with_its_session(world: World, seeded: SeedResult) -> None:
    patient = seeded.patient("els-goossens")
    ctx = world.launch(patient.id, patient.arrived_encounter_id, "Practitioner/nurse-f")
    world.triage.load_chart(ctx)
    world.triage.load_chart(ctx)  # shown again: remembered once
    with world.database.session() as session:
        assert session.scalar(select(func.count()).select_from(ShownChild)) == 2
        over = utcnow() - timedelta(seconds=1)  # the session and its access token
        session.execute(update(AppSession).values(expires_at=over, access_expires_at=over))

    SessionStore(world.database, world.settings).purge_expired()

    with world.database.session() as session:
        assert session.scalar(select(func.count()).select_from(ShownChild)) == 0


def _changed_by_someone_else(client: FhirClient, child_id: str) -> dict[str, Any]:
    """Another user corrects the child's birth date (a new version); returns the old one."""
    current = client.read("RelatedPerson", child_id)
    _put(client, {**current, "birthDate": _day_before(current["birthDate"])})
    return current


def _put(client: FhirClient, resource: dict[str, Any]) -> None:
    """Store a new version of ``resource``, as the EHR would."""
    request = {"method": "PUT", "url": f"{resource['resourceType']}/{resource['id']}"}
    client.transaction(
        {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [{"resource": resource, "request": request}],
        }
    )


def _day_before(iso_date: str) -> str:
    return (date.fromisoformat(iso_date) - timedelta(days=1)).isoformat()


def _as_the_ehr_enriched_it(client: FhirClient, child_id: str) -> dict[str, Any]:
    """The EHR's own parts beside ours: a nickname, a local code and text beside ours, and
    a second relationship after ours."""
    current = client.read("RelatedPerson", child_id)
    (relationship,) = current["relationship"]
    local = {"system": "https://ehr.example.org/relaties", "code": "dochter"}
    natural = {"system": relationship["coding"][0]["system"], "code": "NCHILD"}
    enriched = {
        **current,
        "name": [*current["name"], {"use": "nickname", "text": "Mieke"}],
        "relationship": [
            {**relationship, "coding": [*relationship["coding"], local], "text": "dochter"},
            {"coding": [natural]},
        ],
    }
    _put(client, enriched)
    return enriched


def _saved_with(world: World, ctx: LaunchContext, child_id: str, **change: Any) -> SaveResult:
    """The nurse loads the children, changes one of them, saves."""
    children = world.triage.load_chart(ctx).children
    edited = tuple(replace(c, **change) if c.ref.split("/")[1] == child_id else c for c in children)
    return world.triage.record_triage(ctx, no_concern(ctx, edited))


def test_an_edit_keeps_what_the_ehr_recorded_beside_our_elements(
    world: World, seeded: SeedResult
) -> None:
    """A corrected birth date leaves the EHR's nickname and its relationships as they were;
    a changed relationship replaces the one it stands for, and drops the other answer in
    the same code system, which would contradict it."""
    patient = seeded.patient("els-goossens")
    first = world.launch(patient.id, patient.arrived_encounter_id, "Practitioner/nurse-g")
    child = world.triage.load_chart(first).children[0]
    child_id = child.ref.split("/")[1]
    client = FhirClient(world.base_url, lambda: "loopback", 5.0)
    enriched = _as_the_ehr_enriched_it(client, child_id)

    corrected = _saved_with(world, first, child_id, birth_date=child.birth_date - timedelta(1))

    assert corrected.status == "delivered"
    after = client.read("RelatedPerson", child_id)
    assert after["birthDate"] == _day_before(enriched["birthDate"])
    assert after["name"] == enriched["name"]
    assert after["relationship"] == enriched["relationship"]
    assert validate(after, CHILD_PROFILE) == []

    second = world.launch(patient.id, patient.arrived_encounter_id, "Practitioner/nurse-g")
    # the server outlives a test: whatever an earlier run left, this is a change
    other = next(
        r
        for r in (ChildRelationship.STEPCHILD, ChildRelationship.FOSTER_CHILD)
        if r is not child.relationship
    )
    changed = _saved_with(world, second, child_id, relationship=other)

    assert changed.status == "delivered"
    after = client.read("RelatedPerson", child_id)
    assert [c["code"] for r in after["relationship"] for c in r["coding"]] == [other.value]
    assert after["name"] == enriched["name"]
    assert validate(after, CHILD_PROFILE) == []
    client.close()


def test_a_corrected_name_keeps_the_parts_of_it_we_do_not_write(
    world: World, seeded: SeedResult
) -> None:
    """The EHR stored the child's official name with the period it holds; the nurse
    corrects the name. The merge replaced the name entry with ours and carried over only
    its ``use``: the name's ``period`` was lost."""
    patient = seeded.patient("els-goossens")
    ctx = world.launch(patient.id, patient.arrived_encounter_id, "Practitioner/nurse-p")
    child_id = world.triage.load_chart(ctx).children[1].ref.split("/")[1]
    client = FhirClient(world.base_url, lambda: "loopback", 5.0)
    stored = client.read("RelatedPerson", child_id)
    since = {"start": stored["birthDate"]}
    official = {**stored["name"][0], "use": "official", "period": since}
    _put(client, {**stored, "name": [official, *stored["name"][1:]]})
    corrected = f"Mira {uuid.uuid4().hex[:6].upper()}"  # a change whatever runs left

    saved = _saved_with(world, ctx, child_id, name=corrected)

    assert saved.status == "delivered"
    after = client.read("RelatedPerson", child_id)
    assert display_name(after) == corrected
    assert (after["name"][0]["use"], after["name"][0]["period"]) == ("official", since)
    assert validate(after, CHILD_PROFILE) == []
    client.close()


def test_an_edit_keeps_the_ehrs_tags_and_security_labels_and_adds_our_profile(
    world: World, seeded: SeedResult
) -> None:
    """A child the EHR recorded without our profile, with a tag and a security label:
    the nurse's edit keeps both labels and declares our profile beside them (the merge
    sent the server's meta back as it was read: no profile of ours)."""
    patient = seeded.patient("els-goossens")
    ctx = world.launch(patient.id, patient.arrived_encounter_id, "Practitioner/nurse-m")
    child_id = world.triage.load_chart(ctx).children[0].ref.split("/")[1]
    client = FhirClient(world.base_url, lambda: "loopback", 5.0)
    stored = client.read("RelatedPerson", child_id)
    tag = {"system": "https://ehr.example.org/tags", "code": "reviewed-by-gp"}
    security = {"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}
    _put(client, {**stored, "meta": {"tag": [tag], "security": [security]}})

    saved = _saved_with(world, ctx, child_id, name=f"Noor {uuid.uuid4().hex[:6].upper()}")

    assert saved.status == "delivered"
    meta = client.read("RelatedPerson", child_id)["meta"]
    assert (meta["tag"], meta["security"]) == ([tag], [security])
    assert meta["profile"] == [CHILD_PROFILE]
    assert validate(client.read("RelatedPerson", child_id)) == []
    client.close()


def test_a_child_changed_by_someone_else_while_the_save_waited_is_a_visible_conflict(
    database: Database, tmp_path: Path
) -> None:
    """Saved during an outage; before delivery another user changes the child: no silent
    overwrite — the entry is in conflict (kept for the nurse), audited as a failure."""
    outage = _edit_during_outage(database, tmp_path, "Noor Goossens")
    child_id = outage.children[0].ref.split("/")[1]

    with outage.restart() as again, FhirClient(again.base_url, lambda: "loopback", 5.0) as client:
        _changed_by_someone_else(client, child_id)
        outage.world.clock.advance(120)
        deliveries = [
            d for d in outage.world.outbox.run_once() if d.entry_id == outage.result.outbox_id
        ]
        assert [d.state for d in deliveries] == [DeliveryState.CONFLICT]
        entry = outbox_entry(database, outage.result.outbox_id)
        for kind, identifier in conditional_creates(entry.bundle):
            assert count(again.base_url, kind, identifier=identifier) == 0  # atomic: nothing
        stored = client.read("RelatedPerson", child_id)
    assert "Noor Goossens" not in str(stored)
    assert stored["birthDate"] != outage.before["birthDate"]  # the other user's change stays
    assert entry.state == DeliveryState.CONFLICT
    assert _outcomes(database, entry.id) == ["success", "failure"]


def test_a_child_changed_by_someone_else_is_a_conflict_and_nothing_is_written(
    world: World, seeded: SeedResult
) -> None:
    patient = seeded.patient("els-goossens")
    ctx = world.launch(patient.id, patient.arrived_encounter_id, "Practitioner/nurse-z")
    children = world.triage.load_chart(ctx).children
    client = FhirClient(world.base_url, lambda: "loopback", 5.0)
    other_id = children[0].ref.split("/")[1]
    current = _changed_by_someone_else(client, other_id)
    now = utcnow()
    mine = replace(children[0], name="Someone Else")
    findings = TriageInput(
        step1=Step1Finding(
            recorded_by=ctx.user.fhir_user, recorded_at=now, children=(mine, children[1])
        ),
        step2=Step2Finding(
            recorded_by=ctx.user.fhir_user,
            recorded_at=now,
            assessment=SafetyAssessment.UNCLEAR,
            reasons=("Patiënt antwoordt ontwijkend",),
        ),
    )

    with pytest.raises(SaveConflict) as raised:
        world.triage.record_triage(ctx, findings)

    entry = outbox_entry(world.database, raised.value.outbox_id)
    assert entry.state == DeliveryState.CONFLICT  # the nurse's input is kept
    for kind, identifier in conditional_creates(entry.bundle):
        assert count(world.base_url, kind, identifier=identifier) == 0  # atomic: nothing
    assert client.read("RelatedPerson", other_id)["name"] == current["name"]
    assert _outcomes(world.database, entry.id) == ["success", "failure"]  # audited
    client.close()


def test_a_child_the_ehr_changed_only_where_ours_writes_nothing_takes_both_changes(
    world: World, seeded: SeedResult
) -> None:
    """The EHR adds a phone number to a child while the nurse corrects its name. Before,
    If-Match on the version she saw refused the whole save (the step 2 findings and the
    concern Flag with it, never retried) though nothing of hers clashed (found by review).
    Ours is laid over the child as it is now: her name and the EHR's phone number."""
    patient = seeded.patient("els-goossens")
    ctx = world.launch(patient.id, patient.arrived_encounter_id, "Practitioner/nurse-z")
    children = world.triage.load_chart(ctx).children
    client = FhirClient(world.base_url, lambda: "loopback", 5.0)
    child_id = children[0].ref.split("/")[1]
    stored = client.read("RelatedPerson", child_id)
    phone = {"system": "phone", "value": "+32 9 123 45 67"}
    _put(client, {**stored, "telecom": [phone]})
    now = utcnow()
    renamed = f"Noor {uuid.uuid4().hex[:6].upper()}"
    findings = TriageInput(
        step1=Step1Finding(
            recorded_by=ctx.user.fhir_user,
            recorded_at=now,
            children=(replace(children[0], name=renamed), children[1]),
        ),
        step2=Step2Finding(
            recorded_by=ctx.user.fhir_user,
            recorded_at=now,
            assessment=SafetyAssessment.NIET_PLUIS,
            reasons=("Patiënt antwoordt ontwijkend",),
        ),
    )

    saved = world.triage.record_triage(ctx, findings)

    assert saved.status == "delivered"
    child = client.read("RelatedPerson", child_id)
    assert renamed in str(child["name"])
    assert child["telecom"] == [phone]
    assert validate(child) == []
    entry = outbox_entry(world.database, saved.outbox_id)
    for kind, identifier in conditional_creates(entry.bundle):
        assert count(world.base_url, kind, identifier=identifier) == 1
    client.close()


def test_a_new_childs_identifier_of_another_patients_child_creates_this_patients_own(
    world: World, seeded: SeedResult
) -> None:
    """A new child's identifier comes from the browser (its ``urn:uuid`` ref, the same for a
    form posted twice). One naming another patient's child made the conditional create
    find that child, and the save's findings refer to it (found by review). The create is
    scoped to the patient: this patient gets a child of her own, the other is untouched."""
    returning = seeded.patient("els-goossens")
    other_ctx = world.launch(returning.id, returning.arrived_encounter_id, "Practitioner/n")
    theirs = world.triage.load_chart(other_ctx).children[0]
    client = FhirClient(world.base_url, lambda: "loopback", 5.0)
    their_child = client.read("RelatedPerson", theirs.ref.split("/")[1])
    system = terminology.identifier_system("child")
    (value,) = [i["value"] for i in their_child["identifier"] if i["system"] == system]
    patient = seeded.patient("jan-janssens")
    ctx = world.launch(patient.id, patient.arrived_encounter_id, "Practitioner/n")
    forged = replace(child_aged("Vreemd Kind", 5), ref=f"urn:uuid:{value}")

    result = world.triage.record_triage(ctx, niet_pluis(ctx, (forged,)))

    assert result.status == "delivered"
    found = search(world.base_url, "RelatedPerson", identifier=f"{system}|{value}")
    assert sorted(r["patient"]["reference"] for r in found) == sorted(
        [f"Patient/{returning.id}", f"Patient/{patient.id}"]
    )
    (own,) = [r for r in found if r["patient"]["reference"] == f"Patient/{patient.id}"]
    assert display_name(own) == "Vreemd Kind"
    assert client.read("RelatedPerson", their_child["id"]) == their_child
    client.close()


def test_a_move_the_protocol_refuses_writes_nothing(world: World, seeded: SeedResult) -> None:
    patient = seeded.patient("jan-janssens")
    ctx = world.launch(patient.id, patient.arrived_encounter_id, "Practitioner/nurse-1")
    findings = niet_pluis(ctx, (child_aged("Lotte Janssens", 7),))
    support = Step3Support(
        recorded_by=ctx.user.fhir_user,
        recorded_at=utcnow() + timedelta(minutes=1),
        actions=frozenset({SupportAction.ASK_REGULARLY}),
    )

    with pytest.raises(StepOrderError):  # niet-pluis leads to step 4, not step 3
        world.triage.record_triage(ctx, replace(findings, step3=support))

    with world.database.session() as session:
        assert session.scalar(select(func.count()).select_from(OutboxEntry)) == 0
        assert session.scalar(select(func.count()).select_from(Concern)) == 0
        assert session.scalar(select(func.count()).select_from(AuditRecord)) == 0


def test_a_loaded_child_of_another_patient_is_refused_at_delivery(
    world: World, seeded: SeedResult
) -> None:
    """A versioned ref comes back from the browser: a forged one must not update anything.
    The save is kept (it needs no FHIR server); the outbox refuses it before sending."""
    returning = seeded.patient("els-goossens")
    other_ctx = world.launch(returning.id, returning.arrived_encounter_id, "Practitioner/n")
    foreign = world.triage.load_chart(other_ctx).children[0]
    patient = seeded.patient("jan-janssens")
    ctx = world.launch(patient.id, patient.arrived_encounter_id, "Practitioner/n")
    findings = niet_pluis(ctx, (replace(foreign, name="Vreemd Kind"),))

    result = world.triage.record_triage(ctx, findings)

    assert result.status == "failed"
    entry = outbox_entry(world.database, result.outbox_id)
    assert entry.state == DeliveryState.FAILED
    assert "another patient" in (entry.last_error or "")
    answers = world.triage.refused_answers(ctx)  # offered back, saying the content was refused
    assert answers is not None
    assert answers.refusal == DeliveryState.FAILED
    for kind, identifier in conditional_creates(entry.bundle):
        assert count(world.base_url, kind, identifier=identifier) == 0
    client = FhirClient(world.base_url, lambda: "loopback", 5.0)
    assert "Vreemd" not in str(client.read("RelatedPerson", foreign.ref.split("/")[1]))
    client.close()
    assert _outcomes(world.database, result.outbox_id) == ["success", "failure"]


def _outcomes(database: Database, outbox_id: int) -> list[str]:
    """The local audit rows of one save, in order (the save, then any delivery failure)."""
    with database.session() as session:
        rows = select(AuditRecord.outcome).where(AuditRecord.outbox_id == outbox_id)
        return list(session.scalars(rows.order_by(AuditRecord.id)).all())


def test_two_nurses_flagging_the_same_patient_at_once_share_one_concern(
    world: World, seeded: SeedResult
) -> None:
    patient = seeded.patient("jan-janssens")
    contexts = [
        world.launch(patient.id, patient.arrived_encounter_id, f"Practitioner/nurse-{n}")
        for n in (1, 2)
    ]
    # each another child: the same child typed on both pages is refused to the later save
    # (test_nurse_screens: a child another page saved meanwhile)
    children = (child_aged("Lotte Janssens", 7), child_aged("Noah Janssens", 4))
    inputs = [niet_pluis(ctx, (child,)) for ctx, child in zip(contexts, children, strict=True)]
    start = threading.Barrier(2)
    results: list[Any] = [None, None]

    def save(n: int) -> None:
        start.wait()
        results[n] = world.triage.record_triage(contexts[n], inputs[n])

    threads = [threading.Thread(target=save, args=(n,)) for n in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    # the later entry waits for the earlier one when that is still being delivered: the
    # patient's saves reach the server in save order (the worker then delivers it)
    assert {r.status for r in results} <= {"delivered", "pending"}
    world.clock.advance(120)
    world.outbox.run_once()
    assert {world.outbox.state_of(r.outbox_id) for r in results} == {DeliveryState.DELIVERED}
    with world.database.session() as session:
        (concern,) = session.scalars(select(Concern)).all()  # one open concern, not two
    flag_identifier = f"{terminology.identifier_system('concern')}|{concern.flag_identifier}"
    assert count(world.base_url, "Flag", identifier=flag_identifier) == 1


def test_two_nurses_saving_the_same_new_child_at_once_record_it_once(
    world: World, seeded: SeedResult
) -> None:
    """Two pages of one patient, one child typed on both, saved at the same moment: each
    save read the other's before it committed, and the child was recorded twice (found by
    review). The later one is refused, told which row names the child the other wrote."""
    patient = seeded.patient("an-peeters")
    contexts = [
        world.launch(patient.id, patient.arrived_encounter_id, f"Practitioner/nurse-{n}")
        for n in (1, 2)
    ]
    name = f"Noor {uuid.uuid4().hex[:6]}"
    typed = [child_aged(name, 3) for _ in contexts]  # one child, a row of its own on each page
    typed[1] = replace(typed[1], birth_date=typed[0].birth_date)
    inputs = [no_concern(ctx, (child,)) for ctx, child in zip(contexts, typed, strict=True)]
    start = threading.Barrier(2)
    outcomes: list[Any] = [None, None]

    def save(n: int) -> None:
        start.wait()
        try:
            outcomes[n] = world.triage.record_triage(contexts[n], inputs[n])
        except ChildRecordedMeanwhile as refused:
            outcomes[n] = refused

    threads = [threading.Thread(target=save, args=(n,)) for n in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    refused = [o for o in outcomes if isinstance(o, ChildRecordedMeanwhile)]
    assert len(refused) == 1
    later = outcomes.index(refused[0])
    assert refused[0].refs == {typed[later].ref: typed[1 - later].ref}
    world.clock.advance(120)
    world.outbox.run_once()
    recorded = written_by_kindreflex(world.base_url, f"Patient/{patient.id}")["RelatedPerson"]
    assert [c["name"][0]["text"] for c in recorded].count(name) == 1


def _is_plan_version(component: dict[str, Any]) -> bool:
    return any(c.get("code") == "plan-version" for c in component["code"]["coding"])


def test_a_case_changed_between_reading_and_saving_its_concern_does_not_lose_the_save(
    world: World, seeded: SeedResult, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second triage save for a patient with an open concern updates the concern's row,
    whose ``row_version`` guards it. A social worker assigning the case between the save's
    reading of the row and its flush made that UPDATE match no row (StaleDataError): the
    nurse got a 500 and her save was rolled back. The assignment is a real commit from
    another thread, started from a hook in the save's own reading; on PostgreSQL it lands
    in between, on SQLite it waits for the save's write lock (the join's timeout is that
    wait, not a schedule)."""
    from service import social, triage

    patient = seeded.patient("jan-janssens")
    first = world.launch(patient.id, patient.arrived_encounter_id, "Practitioner/nurse-1")
    world.triage.record_triage(first, niet_pluis(first, (child_aged("Lotte Janssens", 7),)))
    with world.database.session() as session:
        (case,) = session.scalars(select(Concern)).all()

    assigned: list[bool] = []

    def assign() -> None:
        try:
            with world.database.session() as other:
                social.assign_case(
                    other,
                    world.tenant.id,
                    case.id,
                    assignee="Practitioner/sw-1",
                    expected_version=case.row_version,
                    now=utcnow(),
                )
            assigned.append(True)
        except social.CaseConflict:  # it came after the save: the social worker is told
            assigned.append(False)

    social_worker = threading.Thread(target=assign)
    reading = triage._shown_children
    # PostgreSQL: the assignment commits in between, however slow the machine; SQLite: it
    # waits for the save's write lock, and this is how long the save waits for it
    lands_between = world.database.engine.url.get_backend_name() == "postgresql"

    def read_then_someone_assigns(session: Any, session_id: str) -> dict[str, str]:
        if not social_worker.is_alive() and social_worker.ident is None:  # once
            social_worker.start()
            social_worker.join(timeout=60 if lands_between else 3)
        return reading(session, session_id)

    monkeypatch.setattr(triage, "_shown_children", read_then_someone_assigns)
    second = world.launch(patient.id, patient.arrived_encounter_id, "Practitioner/nurse-2")
    result = world.triage.record_triage(second, niet_pluis(second, (child_aged("Wout", 3),)))
    social_worker.join(timeout=60)

    assert result.status == "delivered"
    with world.database.session() as session:
        (row,) = session.scalars(select(Concern)).all()
    assert row.outbox_id == result.outbox_id  # the nurse's save reached the index
    if world.database.engine.dialect.name == "postgresql":
        assert assigned == [True]  # it came in between, and was not overwritten
    assert row.assigned_to == ("Practitioner/sw-1" if assigned[0] else None)
    assert row.row_version == case.row_version + 1 + assigned[0]


def test_a_niet_pluis_saved_as_the_case_is_closed_from_the_ehr_reaches_an_open_case(
    world: World, seeded: SeedResult, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by review: the EHR closed the concern's Flag; a social worker opening the case
    closed it on the worklist between a nurse's save reading it open and updating it. The
    closing kept the row version, so the save joined the closed case: her niet-pluis was
    delivered, "handed off", and on no worklist for good. Closing moves the version on;
    the save reads again and opens a new case. The closing is the real case opening, run
    from a hook in the save's own reading (on SQLite it cannot come in between)."""
    from service import triage
    from service.casework import Casework

    patient = seeded.patient("jan-janssens")
    lotte = child_aged("Lotte Janssens", 7)
    identifier = _concern_raised(world, patient, lotte)
    (flag,) = search(world.base_url, "Flag", identifier=identifier)
    httpx.put(
        f"{world.base_url}/Flag/{flag['id']}", json=_closed_in_the_ehr(flag)
    ).raise_for_status()
    with world.database.session() as session:
        (case,) = session.scalars(select(Concern)).all()
    social_worker = world.launch(patient.id, patient.arrived_encounter_id, "Practitioner/sw-1")
    casework = Casework(world.database, world.outbox, LoopbackTokens(), 5.0)
    reading = triage._open_concern
    in_between = world.database.engine.dialect.name == "postgresql"
    opened: list[str] = []

    def read_then_the_case_is_opened(*args: Any, **kwargs: Any) -> Concern | None:
        row = reading(*args, **kwargs)
        if not opened and in_between:
            opened.append(casework.open_case(social_worker, case.id).status)
        return row

    monkeypatch.setattr(triage, "_open_concern", read_then_the_case_is_opened)
    later = world.launch(patient.id, patient.arrived_encounter_id, "Practitioner/nurse-2")
    result = world.triage.record_triage(later, niet_pluis(later, (lotte,)))

    assert (result.status, result.concern_flagged) == ("delivered", True)
    assert opened == (["closed"] if in_between else [])
    with world.database.session() as session:
        (open_case,) = session.scalars(select(Concern).where(Concern.status == "open")).all()
    assert open_case.outbox_id == result.outbox_id  # her save is the open case's
    flag_of_case = f"{terminology.identifier_system('concern')}|{open_case.flag_identifier}"
    (written,) = search(world.base_url, "Flag", identifier=flag_of_case)
    assert written["status"] == "active"


def test_the_same_form_posted_twice_at_once_is_saved_once(
    world: World, seeded: SeedResult, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A double click posts the same form twice, at the same moment. Both posts looked for
    an entry of the same save (the witness), found none, and each wrote one: the findings
    were kept single by their conditional creates, but the Provenance, the AuditEvent and
    the local audit row were written twice (a concern's save was safe: the unique open
    concern refused the second). A barrier holds each post after its look
    (with a timeout: a post that waits for the other's commit never reaches it)."""
    import threading as threads

    from service import triage

    patient = seeded.patient("jan-janssens")
    ctx = world.launch(patient.id, patient.arrived_encounter_id, "Practitioner/nurse-1")
    no_children = Step1Finding(recorded_by=ctx.user.fhir_user, recorded_at=utcnow(), children=())
    findings = TriageInput(step1=no_children, submission="the-same-page")  # no concern
    looked = threads.Barrier(2)
    look = triage._entry_with_witness

    def look_then_meet(session: Any, tenant_id: int, witness: str) -> int | None:
        found = look(session, tenant_id, witness)
        # the other post may wait for this one's commit: it will find this entry
        with contextlib.suppress(threads.BrokenBarrierError):
            looked.wait(timeout=3)
        return found

    monkeypatch.setattr(triage, "_entry_with_witness", look_then_meet)
    results: list[Any] = [None, None]

    def save(n: int) -> None:
        results[n] = world.triage.record_triage(ctx, findings)

    posts = [threads.Thread(target=save, args=(n,)) for n in (0, 1)]
    for post in posts:
        post.start()
    for post in posts:
        post.join(timeout=60)

    assert results[0].outbox_id == results[1].outbox_id
    with world.database.session() as session:
        entries = session.scalar(select(func.count()).select_from(OutboxEntry))
        audits = session.scalar(
            select(func.count())
            .select_from(AuditRecord)
            .where(AuditRecord.outbox_id == results[0].outbox_id)
        )
    assert (entries, audits) == (1, 1)


def test_fault_a_child_saved_while_the_server_was_down_is_shown_pending_and_written_once(
    database: Database, tmp_path: Path
) -> None:
    """A new child saved while the FHIR server is stopped waits in the outbox. The server is
    back, the entry not yet delivered, and a colleague opens the patient's chart: the
    server does not have the child yet, so the chart shows it from the outbox (its
    ``urn:uuid:`` ref: pending delivery) and the colleague's save reuses its identifier.
    Once both are delivered, the server holds one RelatedPerson for the child. Another
    patient's chart and another hospital's do not show it."""
    server = _OwnServer.start(tmp_path)
    world = world_at(database, server.base_url)
    patient = server.seeded.patient("an-peeters")
    named = child_aged("Lotte Peeters", 4)  # the child the patient names, to each nurse
    nurse = world.launch(patient.id, patient.arrived_encounter_id, "Practitioner/nurse-1")
    server.stop()
    first = world.triage.record_triage(nurse, no_concern(nurse, (named,)))
    assert first.status == "pending"

    with server.restart() as again:
        colleague = world.launch(patient.id, patient.arrived_encounter_id, "Practitioner/nurse-2")
        shown = world.triage.load_chart(colleague).children
        other = server.seeded.patient("jan-janssens")
        elsewhere = [
            world.launch(other.id, other.arrived_encounter_id, "Practitioner/nurse-3"),
            replace(world, tenant=make_tenant(database, "other", again.base_url)).launch(
                patient.id, patient.arrived_encounter_id, "Practitioner/nurse-4"
            ),
        ]
        leaked = [c.name for ctx in elsewhere for c in world.triage.load_chart(ctx).children]
        # the colleague adds the child the patient names when the page does not show it
        added = () if named.name in {c.name for c in shown} else (child_aged(named.name, 4),)
        second = world.triage.record_triage(colleague, no_concern(colleague, (*shown, *added)))
        world.clock.advance(120)
        world.outbox.run_once()
        states = {world.outbox.state_of(r.outbox_id) for r in (first, second)}
        persons = search(again.base_url, "RelatedPerson", patient=f"Patient/{patient.id}")

    assert states == {DeliveryState.DELIVERED}
    assert [display_name(p) for p in persons].count(named.name) == 1
    assert [c.ref for c in shown] == [named.ref]  # shown with its identifier: pending
    assert named.name not in leaked


def _earlier(findings: TriageInput, minutes: int) -> TriageInput:
    """The same findings, recorded ``minutes`` earlier."""
    assert findings.step2 is not None
    back = timedelta(minutes=minutes)
    step1, step2 = findings.step1, findings.step2
    return replace(
        findings,
        step1=replace(step1, recorded_at=step1.recorded_at - back),
        step2=replace(step2, recorded_at=step2.recorded_at - back),
    )


def test_fault_two_pending_concern_saves_keep_the_flag_start_of_the_first(
    database: Database, tmp_path: Path
) -> None:
    """Two niet-pluis saves for one patient while the FHIR server is stopped: one open
    concern, one Flag. The worker delivers entries as they come due (a jittered backoff,
    longer for the entry that failed more often), but one patient's saves in save order:
    the later save's own delivery leaves it to the worker, after the first. The Flag
    starts when the concern was first raised, by whom it was raised."""
    server = _OwnServer.start(tmp_path)
    world = world_at(database, server.base_url)
    patient = server.seeded.patient("jan-janssens")
    lotte = child_aged("Lotte Janssens", 7)
    server.stop()
    saves = []
    for nurse, minutes in (("Practitioner/nurse-1", 10), ("Practitioner/nurse-2", 0)):
        ctx = world.launch(patient.id, patient.arrived_encounter_id, nurse)
        findings = _earlier(niet_pluis(ctx, (lotte,)), minutes)
        saves.append((findings, world.triage.record_triage(ctx, findings)))
    (first_findings, first), (_, second) = saves
    assert [r.status for _, r in saves] == ["pending", "pending"]
    with world.database.session() as session:
        (concern,) = session.scalars(select(Concern)).all()
    identifier = f"{terminology.identifier_system('concern')}|{concern.flag_identifier}"

    with server.restart() as again:
        assert world.outbox.deliver(second.outbox_id) is DeliveryState.PENDING  # not its turn
        world.clock.advance(120)
        assert [(d.entry_id, d.state) for d in world.outbox.run_once()] == [
            (first.outbox_id, DeliveryState.DELIVERED),
            (second.outbox_id, DeliveryState.DELIVERED),
        ]
        (flag,) = search(again.base_url, "Flag", identifier=identifier)

    assert first_findings.step2 is not None
    raised = first_findings.step2.recorded_at
    to_the_millisecond = raised.replace(microsecond=raised.microsecond // 1000 * 1000)
    assert datetime.fromisoformat(flag["period"]["start"]) == to_the_millisecond
    assert flag["author"]["reference"] == "Practitioner/nurse-1"
    assert validate(flag) == []


def _due(database: Database, entry_id: int, minutes: int) -> None:
    """Make an entry due ``minutes`` from now (a retry's backoff), or ago."""
    at = utcnow() + timedelta(minutes=minutes)
    with database.session() as session:
        session.execute(
            update(OutboxEntry).where(OutboxEntry.id == entry_id).values(next_attempt_at=at)
        )


@pytest.mark.parametrize("due_first", ["earlier save", "later save"])
def test_fault_a_pending_child_corrected_and_saved_again_keeps_the_correction(
    database: Database, tmp_path: Path, due_first: str
) -> None:
    """A new child saved while the FHIR server is stopped; the page opened again shows it
    from the outbox (the chart cannot be read), the nurse corrects its birth date and saves
    again: a second entry for the same identifier. Whichever entry comes due first (the
    later save's, here, while the earlier one waits for its retry), the patient's saves
    reach the server in save order, and the second lays the correction over the child the
    first created (it used to be a conditional create too, a no-op: the correction lost).
    One RelatedPerson, with the corrected birth date, valid."""
    server = _OwnServer.start(tmp_path)
    world = world_at(database, server.base_url)
    patient = server.seeded.patient("an-peeters")
    nurse = world.launch(patient.id, patient.arrived_encounter_id, "Practitioner/nurse-1")
    typo = child_aged("Lotte Peeters", 4)
    server.stop()
    first = world.triage.record_triage(nurse, no_concern(nurse, (typo,)))
    (shown,) = world.triage.pending_children(nurse)  # the page, when the chart is unreadable
    corrected = replace(shown, birth_date=typo.birth_date - timedelta(days=400))
    second = world.triage.record_triage(nurse, no_concern(nurse, (corrected,)))
    assert (first.status, second.status) == ("pending", "pending")
    assert shown.ref == typo.ref
    in_order = [first.outbox_id, second.outbox_id]
    _due(database, second.outbox_id, -1)
    _due(database, first.outbox_id, -2 if due_first == "earlier save" else 5)
    identifier = f"{terminology.identifier_system('child')}|{typo.ref.removeprefix('urn:uuid:')}"

    with server.restart() as again:
        delivered = [(d.entry_id, d.state) for d in world.outbox.run_once()]
        world.clock.advance(600)
        delivered += [(d.entry_id, d.state) for d in world.outbox.run_once()]
        persons = search(again.base_url, "RelatedPerson", identifier=identifier)
        chart = world.triage.load_chart(nurse).children
        written = written_by_save(world, second.outbox_id)

    assert delivered == [(i, DeliveryState.DELIVERED) for i in in_order]
    (person,) = persons
    assert person["birthDate"] == corrected.birth_date.isoformat()
    assert validate(person) == []
    assert [(c.name, c.birth_date) for c in chart] == [(typo.name, corrected.birth_date)]
    for resource in written:  # the second save's findings name the child the first created
        assert validate(resource) == [], resource["resourceType"]
    step1 = next(r for r in written if r["resourceType"] == "Observation")
    assert f"RelatedPerson/{person['id']}" in str(step1)
    # the second save updated the child the first created, and says so
    (provenance,) = (r for r in written if r["resourceType"] == "Provenance")
    assert provenance["activity"]["coding"][0]["code"] == "UPDATE"
    (event,) = (r for r in written if r["resourceType"] == "AuditEvent")
    # created its findings and updated the child: "update" said of what it created was wrong
    assert (event["action"], event["subtype"][0]["code"]) == ("E", "transaction")


@dataclass
class _SavedAgain:
    """A new child saved while the FHIR server was stopped and, shown pending, saved again;
    the server is back and the first save delivered, the second not yet (it is due later)."""

    world: World
    client: FhirClient  # of the restarted server
    second: SaveResult
    child_id: str  # the RelatedPerson the first save created


@contextlib.contextmanager
def _a_pending_child_saved_again(
    database: Database, tmp_path: Path, **change: Any
) -> Iterator[_SavedAgain]:
    """The nurse changes ``change`` of the pending child (without: nothing) and saves again."""
    server = _OwnServer.start(tmp_path)
    world = world_at(database, server.base_url)
    patient = server.seeded.patient("an-peeters")
    nurse = world.launch(patient.id, patient.arrived_encounter_id, "Practitioner/nurse-1")
    server.stop()
    first = world.triage.record_triage(nurse, no_concern(nurse, (child_aged("Lotte Peeters", 4),)))
    (shown,) = world.triage.pending_children(nurse)
    second = world.triage.record_triage(nurse, no_concern(nurse, (replace(shown, **change),)))
    assert (first.status, second.status) == ("pending", "pending")
    _due(database, first.outbox_id, -1)
    _due(database, second.outbox_id, 5)
    identifier = f"{terminology.identifier_system('child')}|{_child_uuid(shown)}"
    with server.restart() as again, FhirClient(again.base_url, lambda: "loopback", 5.0) as client:
        assert [(d.entry_id, d.state) for d in world.outbox.run_once()] == [
            (first.outbox_id, DeliveryState.DELIVERED)
        ]
        (person,) = search(again.base_url, "RelatedPerson", identifier=identifier)
        yield _SavedAgain(world, client, second, person["id"])


def _child_uuid(child: Child) -> str:
    return child.ref.removeprefix("urn:uuid:")


def _deliver_later_save(saved: _SavedAgain) -> None:
    saved.world.clock.advance(600)
    assert [(d.entry_id, d.state) for d in saved.world.outbox.run_once()] == [
        (saved.second.outbox_id, DeliveryState.DELIVERED)
    ]


def test_fault_a_pending_child_saved_again_keeps_what_the_ehr_corrected_meanwhile(
    database: Database, tmp_path: Path
) -> None:
    """A new child saved while the FHIR server is stopped; the nurse, shown it pending,
    changes where it lives and saves again. The first save is delivered, then the EHR
    corrects the child's birth date (the population register has the right one). The
    second save lays over the child only what the nurse changed: the EHR's birth date
    stays. It used to lay all of the nurse's values over it, silently putting back the
    birth date the EHR had corrected."""
    with _a_pending_child_saved_again(database, tmp_path, lives_with=LivesWith.PART_TIME) as saved:
        current = saved.client.read("RelatedPerson", saved.child_id)
        corrected = _day_before(current["birthDate"])
        _put(saved.client, {**current, "birthDate": corrected})

        _deliver_later_save(saved)
        person = saved.client.read("RelatedPerson", saved.child_id)

    child = mapping.child_from_related_person(person)
    assert child is not None
    assert (child.birth_date.isoformat(), child.lives_with) == (corrected, LivesWith.PART_TIME)
    assert validate(person) == []


def test_fault_a_pending_child_renamed_and_saved_again_keeps_where_the_ehr_says_it_lives(
    database: Database, tmp_path: Path
) -> None:
    """The same with the nurse correcting the child's name, and the EHR recording meanwhile
    that the child no longer lives with the patient: the name is hers, where the child
    lives the EHR's (it used to be put back to "permanently")."""
    with _a_pending_child_saved_again(database, tmp_path, name="Lotte Claes") as saved:
        current = saved.client.read("RelatedPerson", saved.child_id)
        moved_out = {
            "url": terminology.extension_url("lives-with"),
            "valueCoding": terminology.coding("lives-with", LivesWith.NOT),
        }
        _put(saved.client, {**current, "extension": [moved_out]})

        _deliver_later_save(saved)
        person = saved.client.read("RelatedPerson", saved.child_id)

    child = mapping.child_from_related_person(person)
    assert child is not None
    assert (child.name, child.lives_with) == ("Lotte Claes", LivesWith.NOT)
    assert validate(person) == []


def test_fault_a_pending_child_saved_again_unchanged_is_not_said_to_be_written_again(
    database: Database, tmp_path: Path
) -> None:
    """The pending child saved again as it was (the nurse saved the page once more): the
    child the first save created already says it all, so the second save leaves it alone,
    and its Provenance and AuditEvent name only what it wrote: its findings, created. They
    used to name the child as created by the second save too, a write that never was."""
    with _a_pending_child_saved_again(database, tmp_path) as saved:
        version = saved.client.read("RelatedPerson", saved.child_id)["meta"]["versionId"]

        _deliver_later_save(saved)
        after = saved.client.read("RelatedPerson", saved.child_id)
        activity, targets, action, entities = _said_written(saved.world, saved.second.outbox_id)

    assert after["meta"]["versionId"] == version
    assert (activity, action) == ("CREATE", "C")
    assert f"RelatedPerson/{saved.child_id}" not in targets | entities
    assert {t.split("/")[0] for t in targets} == {"Observation"}


def test_an_open_concern_only_the_fhir_server_knows_is_put_on_the_worklist_and_continued(
    world: World, seeded: SeedResult
) -> None:
    """The patient's open concern Flag is on the FHIR server, but not on the worklist (our
    database restored from an older backup, say). Opening the chart indexes it, so the
    social service sees it, and a niet-pluis now continues that Flag instead of adding a
    second one beside it."""
    patient = seeded.patient("karim-el-amrani")
    assert patient.concern is not None
    nurse = world.launch(patient.id, patient.arrived_encounter_id, "Practitioner/nurse-1")

    world.triage.load_chart(nurse)
    with world.database.session() as session:
        (indexed,) = session.scalars(select(Concern)).all()
    assert (indexed.flag_identifier, indexed.status) == (patient.concern.flag_identifier, "open")
    assert (indexed.flagged_at, indexed.flagged_by) == (
        patient.concern.flagged_at,
        patient.concern.flagged_by,
    )
    assert indexed.patient_display == patient.name
    world.triage.load_chart(nurse)  # again: nothing more

    saved = world.triage.record_triage(nurse, niet_pluis(nurse, (child_aged("Yasmine", 6),)))
    assert saved.status == "delivered"
    with world.database.session() as session:
        assert [c.id for c in session.scalars(select(Concern))] == [indexed.id]
    flags = search(world.base_url, "Flag", patient=f"Patient/{patient.id}", status="active")
    (flag,) = flags
    assert datetime.fromisoformat(flag["period"]["start"]) == patient.concern.flagged_at


def _with_trigger(findings: TriageInput, trigger: HagueTrigger) -> TriageInput:
    assert findings.step2 is not None
    return replace(findings, step2=replace(findings.step2, triggers=frozenset({trigger})))


def _concern_at_step_4(
    world: World,
    seeded: SeedResult,
    stored: Callable[[dict[str, Any]], dict[str, Any]] = lambda flag: flag,
) -> tuple[Child, str]:
    """A concern raised for Jan Janssens (domestic violence, his child Lotte) and moved on
    to step 4 (its worklist row and Flag, as the social service leaves them), its Flag then
    stored on the server as ``stored`` makes it. Returns Lotte as the first save sent her
    and the Flag's identifier search."""
    patient = seeded.patient("jan-janssens")
    lotte = child_aged("Lotte Janssens", 7)
    first = world.launch(patient.id, patient.arrived_encounter_id, "Practitioner/nurse-1")
    assert world.triage.record_triage(first, niet_pluis(first, (lotte,))).status == "delivered"
    with world.database.session() as session:
        (concern,) = session.scalars(select(Concern)).all()
        concern.last_step = "step-4"
    identifier = f"{terminology.identifier_system('concern')}|{concern.flag_identifier}"
    step_url = terminology.extension_url("concern-last-step")
    with FhirClient(world.base_url, lambda: "loopback", 5.0) as client:
        (flag,) = search(world.base_url, "Flag", identifier=identifier)
        others = [e for e in flag["extension"] if e["url"] != step_url]
        step_4 = {"url": step_url, "valueCoding": terminology.coding("kindreflex-step", "step-4")}
        _put(client, stored({**flag, "extension": [*others, step_4]}))
    return lotte, identifier


def _later_niet_pluis_over(
    world: World, seeded: SeedResult, stored: Callable[[dict[str, Any]], dict[str, Any]]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A concern at step 4 (:func:`_concern_at_step_4`, its Flag as ``stored`` makes it)
    and a later visit's niet-pluis with substance abuse: the Flag before and after that
    visit."""
    lotte, identifier = _concern_at_step_4(world, seeded, stored)
    (before,) = search(world.base_url, "Flag", identifier=identifier)
    patient = seeded.patient("jan-janssens")
    later = world.launch(patient.id, patient.arrived_encounter_id, "Practitioner/nurse-2")
    findings = _with_trigger(niet_pluis(later, (lotte,)), HagueTrigger.SUBSTANCE_ABUSE)
    assert world.triage.record_triage(later, findings).status == "delivered"
    (after,) = search(world.base_url, "Flag", identifier=identifier)
    return before, after


def test_a_later_visit_tells_the_open_concerns_flag_what_it_found(
    world: World, seeded: SeedResult
) -> None:
    """A niet-pluis on a patient whose concern is open continues its Flag. The Flag kept
    what its first save said: the triggers of that visit, and the last step the social
    service had reached. It now says this visit too: step 2 again (the team decides anew,
    as the worklist already said) and the triggers of both visits, on the one Flag. (The
    social service's step 4 is stood in for by its Flag and worklist row, as it leaves
    them.) A visit that brings nothing new leaves the Flag as it is."""
    flag, continued = _later_niet_pluis_over(world, seeded, lambda stored: stored)
    patient = seeded.patient("jan-janssens")
    again = world.launch(patient.id, patient.arrived_encounter_id, "Practitioner/nurse-3")
    lotte = child_aged("Lotte Janssens", 7)
    findings = _with_trigger(niet_pluis(again, (lotte,)), HagueTrigger.SUBSTANCE_ABUSE)
    assert world.triage.record_triage(again, findings).status == "delivered"
    with FhirClient(world.base_url, lambda: "loopback", 5.0) as client:
        unchanged = client.read("Flag", continued["id"])

    def codes(url_id: str) -> list[str]:
        url = terminology.extension_url(url_id)
        return sorted(e["valueCoding"]["code"] for e in continued["extension"] if e["url"] == url)

    assert codes("concern-last-step") == ["step-2"]
    assert codes("concern-trigger") == ["domestic-violence", "substance-abuse"]
    assert continued["period"] == flag["period"]
    assert continued["author"] == flag["author"]
    assert validate(continued) == []
    assert unchanged["meta"]["versionId"] == continued["meta"]["versionId"]
    with world.database.session() as session:
        (row,) = session.scalars(select(Concern)).all()
    assert (row.last_step, row.triggers) == ("step-2", ["domestic-violence", "substance-abuse"])


def test_a_later_visit_reopens_a_flag_closed_on_the_server_whole(
    world: World, seeded: SeedResult
) -> None:
    """The worklist says the concern is open, the FHIR server's Flag was closed meanwhile
    (in the EHR, say). The later visit's niet-pluis reopens it: active, and without the
    closed concern's end and close reason (an active Flag with them was what the merge
    made: the case replayed only until that end, and the case page showed it closed)."""
    before, after = _later_niet_pluis_over(world, seeded, _closed_in_the_ehr)

    assert before["status"] == "inactive"
    _assert_reopened_whole(before, after)


def _closed_in_the_ehr(flag: dict[str, Any]) -> dict[str, Any]:
    """The concern Flag as the EHR closes it: inactive, ended, with a close reason."""
    reason = {
        "url": terminology.extension_url("concern-close-reason"),
        "valueCodeableConcept": terminology.codeable_concept("case-close-reason", "other")
        | {"text": "closed in the EHR"},
    }
    period = {**flag["period"], "end": "2026-03-10T10:00:00+01:00"}
    return {
        **flag,
        "status": "inactive",
        "period": period,
        "extension": [*flag["extension"], reason],
    }


def _assert_reopened_whole(before: dict[str, Any], after: dict[str, Any]) -> None:
    closing = terminology.extension_url("concern-close-reason")
    assert after["status"] == "active"
    assert after["period"] == {"start": before["period"]["start"]}
    assert [e for e in after["extension"] if e["url"] == closing] == []
    assert validate(after) == []
    assert mapping.open_concern_of(after) is not None
    assert mapping.closure_from_flag(after) is None


def _concern_raised(world: World, patient: Any, child: Child) -> str:
    """A first nurse's niet-pluis about ``child`` raised the patient's concern: the
    identifier of its Flag, as a search asks for it (``system|value``)."""
    first = world.launch(patient.id, patient.arrived_encounter_id, "Practitioner/nurse-1")
    assert world.triage.record_triage(first, niet_pluis(first, (child,))).status == "delivered"
    with world.database.session() as session:
        (concern,) = session.scalars(select(Concern)).all()
    return f"{terminology.identifier_system('concern')}|{concern.flag_identifier}"


def test_a_later_niet_pluis_with_nothing_new_reopens_a_flag_closed_in_the_ehr(
    world: World, seeded: SeedResult
) -> None:
    """The worklist says the concern is open at step 2 with these triggers; the EHR closed
    its Flag meanwhile. A later visit's niet-pluis with nothing new to the worklist sent a
    plain conditional create, which found the closed Flag and changed nothing: the EHR
    showed no concern though a nurse had just found one. It reopens it now, whole."""
    patient = seeded.patient("jan-janssens")
    lotte = child_aged("Lotte Janssens", 7)
    identifier = _concern_raised(world, patient, lotte)
    (flag,) = search(world.base_url, "Flag", identifier=identifier)
    closed = httpx.put(f"{world.base_url}/Flag/{flag['id']}", json=_closed_in_the_ehr(flag))
    closed.raise_for_status()
    (before,) = search(world.base_url, "Flag", identifier=identifier)

    later = world.launch(patient.id, patient.arrived_encounter_id, "Practitioner/nurse-2")
    assert world.triage.record_triage(later, niet_pluis(later, (lotte,))).status == "delivered"

    assert before["status"] == "inactive"
    (after,) = search(world.base_url, "Flag", identifier=identifier)
    _assert_reopened_whole(before, after)


def test_a_later_visit_drops_the_encounter_an_earlier_version_wrote_on_the_flag(
    world: World, seeded: SeedResult
) -> None:
    """A Flag written before 413344b names the visit that raised it (Flag.encounter: in R4
    "only relevant during the encounter"); the profile now forbids it. The later visit's
    niet-pluis updates that Flag without it, as a social service's step does."""
    patient = seeded.patient("jan-janssens")

    def with_encounter(flag: dict[str, Any]) -> dict[str, Any]:
        return {**flag, "encounter": {"reference": f"Encounter/{patient.arrived_encounter_id}"}}

    before, after = _later_niet_pluis_over(world, seeded, with_encounter)

    assert "encounter" in before
    assert "encounter" not in after
    assert validate(after) == []


def test_a_later_visit_keeps_the_flags_triggers_its_worklist_row_lost(
    world: World, seeded: SeedResult
) -> None:
    """A worklist row saved before e9f6723 kept only the latest visit's triggers, while the
    Flag kept the first visit's. A later visit's niet-pluis laid over that Flag must not
    replace the triggers the Flag has with the ones the row knows: it adds its own."""

    def self_harm_too(flag: dict[str, Any]) -> dict[str, Any]:
        url = terminology.extension_url("concern-trigger")
        coding = terminology.coding("hague-trigger", HagueTrigger.SELF_HARM_PSYCHIATRIC.value)
        return {**flag, "extension": [*flag["extension"], {"url": url, "valueCoding": coding}]}

    _, after = _later_niet_pluis_over(world, seeded, self_harm_too)

    url = terminology.extension_url("concern-trigger")
    triggers = sorted(e["valueCoding"]["code"] for e in after["extension"] if e["url"] == url)
    assert triggers == sorted(
        t.value
        for t in (
            HagueTrigger.DOMESTIC_VIOLENCE,
            HagueTrigger.SUBSTANCE_ABUSE,
            HagueTrigger.SELF_HARM_PSYCHIATRIC,
        )
    )
    assert validate(after) == []


def _flag_history(base_url: str, flag_id: str) -> list[str]:
    """The versions of a Flag the FHIR server holds, newest first."""
    bundle = httpx.get(f"{base_url}/Flag/{flag_id}/_history", timeout=10).json()
    return [entry["resource"]["meta"]["versionId"] for entry in bundle.get("entry", [])]


def test_a_later_visit_whose_triggers_the_flag_has_already_writes_no_new_flag_version(
    world: World, seeded: SeedResult
) -> None:
    """A first visit raised the concern with two Hague triggers; a visit before e9f6723
    with substance abuse alone left the worklist row knowing only that one (the Flag kept
    both). A later visit with domestic violence is news to the row, so its Flag is laid
    over the Flag on the server (create-or-merge), which already says all of it: nothing
    is written. (The merge compared the Flag's triggers keyed by URL, only the last one:
    two triggers never agreed with it, and the Flag got a needless new version.)"""
    patient = seeded.patient("jan-janssens")
    lotte = child_aged("Lotte Janssens", 7)
    first = world.launch(patient.id, patient.arrived_encounter_id, "Practitioner/nurse-1")
    both = frozenset({HagueTrigger.DOMESTIC_VIOLENCE, HagueTrigger.SUBSTANCE_ABUSE})
    findings = niet_pluis(first, (lotte,))
    assert findings.step2 is not None
    findings = replace(findings, step2=replace(findings.step2, triggers=both))
    assert world.triage.record_triage(first, findings).status == "delivered"
    with world.database.session() as session:
        (concern,) = session.scalars(select(Concern)).all()
        concern.triggers = [HagueTrigger.SUBSTANCE_ABUSE.value]  # as a visit before e9f6723
    identifier = f"{terminology.identifier_system('concern')}|{concern.flag_identifier}"
    (flag,) = search(world.base_url, "Flag", identifier=identifier)
    versions = _flag_history(world.base_url, flag["id"])

    later = world.launch(patient.id, patient.arrived_encounter_id, "Practitioner/nurse-2")
    result = world.triage.record_triage(later, niet_pluis(later, (lotte,)))

    assert result.status == "delivered"
    (bundle_flag,) = [
        e
        for e in outbox_entry(world.database, result.outbox_id).bundle["entry"]
        if e["resource"]["resourceType"] == "Flag"
    ]
    assert bundle_flag.get("kindreflexMerge")  # the merge path, not a plain conditional create
    assert _flag_history(world.base_url, flag["id"]) == versions
    (after,) = search(world.base_url, "Flag", identifier=identifier)
    assert after["meta"]["versionId"] == flag["meta"]["versionId"]
    with world.database.session() as session:
        (row,) = session.scalars(select(Concern)).all()
    assert row.triggers == ["domestic-violence", "substance-abuse"]


def test_a_later_niet_pluis_the_open_concern_already_says_is_not_said_to_create_its_flag(
    world: World, seeded: SeedResult
) -> None:
    """A second nurse records niet-pluis for a patient whose concern is open, with nothing
    new for it. The Flag on the server stays as it was, and her save's Provenance and
    AuditEvent name only what she wrote: they said she created the Flag another nurse had
    raised (its conditional create found it and wrote nothing), an audit trail the social
    service and the inspection rely on."""
    patient = seeded.patient("jan-janssens")
    lotte = child_aged("Lotte Janssens", 7)
    identifier = _concern_raised(world, patient, lotte)
    (flag,) = search(world.base_url, "Flag", identifier=identifier)

    later = world.launch(patient.id, patient.arrived_encounter_id, "Practitioner/nurse-2")
    saved = world.triage.record_triage(later, niet_pluis(later, (lotte,)))

    assert saved.status == "delivered"
    assert _flag_history(world.base_url, flag["id"]) == [flag["meta"]["versionId"]]
    activity, targets, action, entities = _said_written(world, saved.outbox_id)
    assert (activity, action) == ("CREATE", "C")
    assert f"Flag/{flag['id']}" not in targets | entities
    assert {t.split("/")[0] for t in targets} == {"Observation"}


def _codes(flag: dict[str, Any], url_id: str) -> list[str]:
    url = terminology.extension_url(url_id)
    return sorted(e["valueCoding"]["code"] for e in flag.get("extension", []) if e["url"] == url)


class _ConcurrentWriter:
    """Another writer of the concern Flag (a second nurse's save, the EHR), or of another
    ``resource_type``, that changes it on the FHIR server at the exact moment between the
    outbox's reads at delivery and its transaction: ``FhirClient.transaction`` is wrapped
    to do so first, whenever the transaction updates such a resource (``times`` times at
    most). The only way to cause this race deterministically; the server, the reads, the
    If-Match and the 412 are real."""

    def __init__(
        self,
        monkeypatch: pytest.MonkeyPatch,
        base_url: str,
        change: Callable[[dict[str, Any], int], dict[str, Any]],
        times: int = 1,
        resource_type: str = "Flag",
    ) -> None:
        self.writes = 0
        original = FhirClient.transaction

        def transaction(client: FhirClient, bundle: dict[str, Any]) -> dict[str, Any]:
            updated = [
                e["request"]["url"]
                for e in bundle.get("entry", [])
                if e["request"]["method"] == "PUT"
                and e["request"]["url"].startswith(f"{resource_type}/")
            ]
            if updated and self.writes < times:
                self.writes += 1
                current = httpx.get(f"{base_url}/{updated[0]}", timeout=10).json()
                changed = change(current, self.writes)
                httpx.put(f"{base_url}/{updated[0]}", json=changed, timeout=10).raise_for_status()
            return original(client, bundle)

        monkeypatch.setattr(FhirClient, "transaction", transaction)


def _self_harm_added(flag: dict[str, Any], _: int) -> dict[str, Any]:
    """A second nurse's visit with a suicide attempt, saved at the same moment."""
    url = terminology.extension_url("concern-trigger")
    coding = terminology.coding("hague-trigger", HagueTrigger.SELF_HARM_PSYCHIATRIC.value)
    return {**flag, "extension": [*flag["extension"], {"url": url, "valueCoding": coding}]}


def _tagged(flag: dict[str, Any], write: int) -> dict[str, Any]:
    """The EHR marks the Flag reviewed: a tag of its own (kept by our merges)."""
    tag = {"system": "https://ehr.example.org/review", "code": f"review-{write}"}
    meta = flag.get("meta", {})
    return {**flag, "meta": {**meta, "tag": [*meta.get("tag", []), tag]}}


def _provenances(world: World, outbox_id: int) -> list[dict[str, Any]]:
    """The Provenances naming the save's step 1 finding (its witness)."""
    witness = witness_identifier(outbox_entry(world.database, outbox_id))
    (step,) = search(world.base_url, "Observation", identifier=witness)
    return search(world.base_url, "Provenance", target=f"Observation/{step['id']}")


def _later_niet_pluis(world: World, seeded: SeedResult, *children: Child) -> SaveResult:
    """A later visit's niet-pluis for Jan Janssens (substance abuse) naming ``children``:
    news for the open concern, so its Flag is a create-or-merge."""
    patient = seeded.patient("jan-janssens")
    later = world.launch(patient.id, patient.arrived_encounter_id, "Practitioner/nurse-2")
    findings = _with_trigger(niet_pluis(later, children), HagueTrigger.SUBSTANCE_ABUSE)
    return world.triage.record_triage(later, findings)


def test_a_flag_changed_between_the_merges_read_and_its_write_is_merged_again(
    world: World, seeded: SeedResult, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A later visit's niet-pluis lays its Flag over the one the outbox finds at delivery,
    with If-Match on that version. Another nurse's save adds a trigger in between: 412.
    Nobody was shown the version read at delivery, so this is a race, not the nurse's
    lost update: the save stays pending and the next attempt reads and merges again. The
    other writer's trigger stays, ours are merged, the save is written once (was: the
    whole save a conflict, told to the nurse as a child someone else had changed)."""
    lotte, identifier = _concern_at_step_4(world, seeded)
    writer = _ConcurrentWriter(monkeypatch, world.base_url, _self_harm_added)

    result = _later_niet_pluis(world, seeded, lotte)

    assert (result.status, writer.writes) == ("pending", 1)
    assert outbox_entry(world.database, result.outbox_id).races == 1
    world.clock.advance(60)
    assert [(d.entry_id, d.state) for d in world.outbox.run_once()] == [
        (result.outbox_id, DeliveryState.DELIVERED)
    ]
    (flag,) = search(world.base_url, "Flag", identifier=identifier)
    assert _codes(flag, "concern-trigger") == sorted(
        ["domestic-violence", "substance-abuse", "self-harm-psychiatric"]
    )
    assert _codes(flag, "concern-last-step") == ["step-2"]
    assert validate(flag) == []
    assert len(_provenances(world, result.outbox_id)) == 1
    assert _outcomes(world.database, result.outbox_id) == ["success"]  # no failure audited


def test_a_flag_that_keeps_changing_under_the_merge_becomes_a_conflict(
    world: World, seeded: SeedResult, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race is merged again RACES_RETRIED times; one more is a conflict, as any 412
    was before: nothing loops, the input is kept and nothing of the save is written. That
    last race is counted too: ``races`` past RACES_RETRIED tells the record kept changing
    under the save (``outbox.kept_changing``), not a lost update of what the nurse saw."""
    lotte, identifier = _concern_at_step_4(world, seeded)
    writer = _ConcurrentWriter(monkeypatch, world.base_url, _tagged, times=100)

    result = _later_niet_pluis(world, seeded, lotte)
    states: list[str] = [result.status]
    for _ in range(RACES_RETRIED + 2):
        world.clock.advance(600)
        states += [d.state for d in world.outbox.run_once() if d.entry_id == result.outbox_id]

    assert states == ["pending", *[DeliveryState.PENDING] * (RACES_RETRIED - 1), "conflict"]
    assert writer.writes == RACES_RETRIED + 1
    entry = outbox_entry(world.database, result.outbox_id)
    assert (entry.state, entry.races) == (DeliveryState.CONFLICT, RACES_RETRIED + 1)
    assert kept_changing(entry.state, entry.races)
    assert str(entry.last_error).startswith(f"race {RACES_RETRIED + 1}: ")  # not a lost update
    findings = [query for kind, query in conditional_creates(entry.bundle) if kind == "Observation"]
    assert findings
    for query in findings:  # atomic: none of the save's findings (Lotte is the first save's)
        assert count(world.base_url, "Observation", identifier=query) == 0
    (flag,) = search(world.base_url, "Flag", identifier=identifier)
    assert _codes(flag, "concern-last-step") == ["step-4"]  # the other writer's, not ours
    assert len(flag["meta"]["tag"]) == RACES_RETRIED + 1
    assert _outcomes(world.database, result.outbox_id) == ["success", "failure"]


def _lotte_on_the_server(world: World, lotte: Child) -> tuple[str, str]:
    """The id and version of the RelatedPerson the first save created for Lotte."""
    uuid_ = lotte.ref.removeprefix("urn:uuid:")
    system = terminology.identifier_system("child")
    (stored,) = search(world.base_url, "RelatedPerson", identifier=f"{system}|{uuid_}")
    return stored["id"], stored["meta"]["versionId"]


def test_a_race_on_the_flag_beside_a_childs_edit_that_still_holds_is_merged_again(
    world: World, seeded: SeedResult, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The later visit also renames Lotte, an update with If-Match on the version the nurse
    was shown. That version is still the child's when the server answers 412, so the
    412 was the Flag's race: merged again, and both the name and the Flag are written."""
    lotte, identifier = _concern_at_step_4(world, seeded)
    child_id, version = _lotte_on_the_server(world, lotte)
    shown = replace(lotte, ref=f"RelatedPerson/{child_id}/_history/{version}", name="Lotte Peeters")
    _ConcurrentWriter(monkeypatch, world.base_url, _self_harm_added)

    result = _later_niet_pluis(world, seeded, shown)

    assert result.status == "pending"
    world.clock.advance(60)
    assert [d.state for d in world.outbox.run_once()] == [DeliveryState.DELIVERED]
    with FhirClient(world.base_url, lambda: "loopback", 5.0) as client:
        child = client.read("RelatedPerson", child_id)
    assert display_name(child) == "Lotte Peeters"
    assert child["meta"]["versionId"] == str(int(version) + 1)
    (flag,) = search(world.base_url, "Flag", identifier=identifier)
    assert "self-harm-psychiatric" in _codes(flag, "concern-trigger")
    assert "substance-abuse" in _codes(flag, "concern-trigger")


def test_a_child_changed_by_someone_else_beside_a_flag_merged_at_delivery_is_a_conflict(
    world: World, seeded: SeedResult
) -> None:
    """The transaction has an If-Match read at delivery (the Flag's) and one the nurse was
    shown (Lotte's); someone else changed Lotte. That is a lost update of what the nurse
    saw: a conflict at once, not retried."""
    lotte, identifier = _concern_at_step_4(world, seeded)
    child_id, version = _lotte_on_the_server(world, lotte)
    with FhirClient(world.base_url, lambda: "loopback", 5.0) as client:
        _changed_by_someone_else(client, child_id)
    shown = replace(lotte, ref=f"RelatedPerson/{child_id}/_history/{version}", name="Lotte Peeters")

    with pytest.raises(SaveConflict) as raised:
        _later_niet_pluis(world, seeded, shown)

    entry = outbox_entry(world.database, raised.value.outbox_id)
    assert (entry.state, entry.races) == (DeliveryState.CONFLICT, 0)
    (flag,) = search(world.base_url, "Flag", identifier=identifier)
    assert _codes(flag, "concern-last-step") == ["step-4"]  # nothing of the save written


def _duplicated(world: World, seeded: SeedResult, child: Child) -> None:
    """Two RelatedPersons on the server with ``child``'s identifier (an EHR's import that
    copied a record twice, say): a conditional create on it matches both."""
    patient_ref = f"Patient/{seeded.patient('jan-janssens').id}"
    identifier = mapping.identifier("child", child.ref.removeprefix("urn:uuid:"))
    resource = mapping.child_related_person(child, patient_ref=patient_ref, identifier=identifier)
    for _ in range(2):
        httpx.post(f"{world.base_url}/RelatedPerson", json=resource, timeout=10).raise_for_status()


def test_a_refusal_that_is_no_version_clash_beside_a_flag_merged_at_delivery_is_failed(
    world: World, seeded: SeedResult
) -> None:
    """The transaction has an If-Match read at delivery (the Flag's) and a new child's
    conditional create whose identifier two RelatedPersons on the server carry: the server
    refuses the create (412, multiple matches), not a version. The Flag is still at the
    version read, so no If-Match failed. This was taken for a race: retried RACES_RETRIED
    times, then a conflict whose error said "race 4", as if the Flag kept changing; and
    any such conflict told the nurse someone had changed her data and to save again,
    which fails the same way. Then it was sent again RACES_RETRIED times, as a refusal
    that may pass would be, which only kept the person who must merge the duplicates
    waiting. The server says it lasts (``multiple-matches``): ``failed`` at the first
    delivery, in the server's words, not sent again."""
    lotte, identifier = _concern_at_step_4(world, seeded)
    (flag_before,) = search(world.base_url, "Flag", identifier=identifier)
    noor = child_aged("Noor Janssens", 3)
    _duplicated(world, seeded, noor)

    result = _later_niet_pluis(world, seeded, lotte, noor)

    assert result.status == "failed"
    world.clock.advance(24 * 3600)
    assert [d for d in world.outbox.run_once() if d.entry_id == result.outbox_id] == []
    entry = outbox_entry(world.database, result.outbox_id)
    assert (entry.state, entry.attempts, entry.races) == (DeliveryState.FAILED, 1, 0)
    assert not kept_changing(entry.state, entry.races)
    assert str(entry.last_error).startswith("refused, no version changed, lasting: ")
    assert "multiple-matches" in str(entry.last_error)  # the server's own outcome
    assert entry.outcome is not None
    assert entry.outcome["issue"][0]["code"] == "multiple-matches"
    sent = [e for e in entry.bundle["entry"] if e["resource"]["resourceType"] == "Flag"]
    assert [e.get("kindreflexMerge") for e in sent] == [True]  # the Flag merged at delivery
    (flag,) = search(world.base_url, "Flag", identifier=identifier)
    assert flag["meta"]["versionId"] == flag_before["meta"]["versionId"]  # nothing written
    for query in (q for kind, q in conditional_creates(entry.bundle) if kind == "Observation"):
        assert count(world.base_url, "Observation", identifier=query) == 0
    assert _outcomes(world.database, entry.id) == ["success", "failure"]


def _locked(monkeypatch: pytest.MonkeyPatch, times: int) -> list[dict[str, Any]]:
    """The next ``times`` transactions are answered 409 ``processing`` without reaching the
    server: HAPI's answer when a concurrent write holds a lock, a refusal that passes.
    sekmet never answers so (it serialises its writes), so that answer is stood in for: the
    only mock of these tests; the re-reads, the later transactions and the server are
    real. Returns the bundles refused."""
    original = FhirClient.transaction
    refused: list[dict[str, Any]] = []

    def transaction(client: FhirClient, bundle: dict[str, Any]) -> dict[str, Any]:
        if len(refused) < times:
            refused.append(bundle)
            issue = {"severity": "error", "code": "processing", "diagnostics": "HAPI-0550: lock"}
            raise FhirConflict(409, {"resourceType": "OperationOutcome", "issue": [issue]})
        return original(client, bundle)

    monkeypatch.setattr(FhirClient, "transaction", transaction)
    return refused


def _mila_saved(world: World, seeded: SeedResult) -> SaveResult:
    """A first niet-pluis for Jan Janssens naming his child Mila: no If-Match at all."""
    patient = seeded.patient("jan-janssens")
    nurse = world.launch(patient.id, patient.arrived_encounter_id, "Practitioner/nurse-1")
    return world.triage.record_triage(nurse, niet_pluis(nurse, (child_aged("Mila Janssens", 4),)))


def _attempts(world: World, outbox_id: int, cycles: int) -> list[str]:
    """The states of the entry's deliveries in ``cycles`` worker cycles, 10 minutes apart."""
    states: list[str] = []
    for _ in range(cycles):
        world.clock.advance(600)
        states += [d.state for d in world.outbox.run_once() if d.entry_id == outbox_id]
    return states


def test_a_refusal_that_may_pass_is_sent_again_and_delivered(
    world: World, seeded: SeedResult, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 409 no version explains whose OperationOutcome says ``processing`` (a lock) is not
    failed: sent again at the next attempt, and then written once."""
    refused = _locked(monkeypatch, times=1)

    result = _mila_saved(world, seeded)

    assert result.status == "pending"
    entry = outbox_entry(world.database, result.outbox_id)
    assert (entry.state, entry.races) == (DeliveryState.PENDING, 1)
    assert str(entry.last_error).startswith("refused 1, no version changed: error/processing")
    assert _attempts(world, result.outbox_id, 1) == [DeliveryState.DELIVERED]
    assert len(refused) == 1
    for kind, query in conditional_creates(entry.bundle):
        assert count(world.base_url, kind, identifier=query) == 1  # written once


def test_a_refusal_that_may_pass_but_does_not_is_failed_after_the_retries(
    world: World, seeded: SeedResult, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lock never goes: sent RACES_RETRIED times more, then ``failed`` for a person."""
    refused = _locked(monkeypatch, times=100)

    result = _mila_saved(world, seeded)
    states = [result.status, *_attempts(world, result.outbox_id, RACES_RETRIED + 1)]

    assert states == ["pending", *[DeliveryState.PENDING] * (RACES_RETRIED - 1), "failed"]
    assert len(refused) == RACES_RETRIED + 1
    entry = outbox_entry(world.database, result.outbox_id)
    assert (entry.state, entry.races) == (DeliveryState.FAILED, RACES_RETRIED + 1)
    assert "lasting" not in str(entry.last_error)
    assert _outcomes(world.database, entry.id) == ["success", "failure"]


def test_a_childs_edit_in_a_save_the_record_kept_changing_under_is_told_as_such(
    world: World, seeded: SeedResult, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The later visit renames Lotte, on the version the nurse was shown, which stays
    Lotte's; another writer changes the concern's Flag before each attempt's write, so
    past RACES_RETRIED races the save is a conflict. Nobody changed Lotte, yet the chart
    told the next nurse "someone else had changed the child first". It now says the edit
    is not in the record because the record kept being changed while it was saved, and
    to save again; Lotte is shown as the record has her."""
    lotte, _ = _concern_at_step_4(world, seeded)
    child_id, version = _lotte_on_the_server(world, lotte)
    shown = replace(lotte, ref=f"RelatedPerson/{child_id}/_history/{version}", name="Lotte Peeters")
    _ConcurrentWriter(monkeypatch, world.base_url, _tagged, times=100)

    result = _later_niet_pluis(world, seeded, shown)
    for _ in range(RACES_RETRIED):
        world.clock.advance(600)
        world.outbox.run_once()
    assert world.outbox.state_of(result.outbox_id) is DeliveryState.CONFLICT
    patient = seeded.patient("jan-janssens")
    nurse = world.launch(patient.id, patient.arrived_encounter_id, "Practitioner/nurse-3")

    chart = world.triage.load_chart(nurse)

    assert chart.conflicts == chart.failed == chart.pending == frozenset()
    assert chart.kept_changing == {shown.ref}  # Lotte, still at the version the nurse saw
    (row,) = [ChildRow.of(child, chart) for child in chart.children if child.ref == shown.ref]
    assert (row.name, row.delivery) == ("Lotte Janssens", "kept-changing")  # the record's
    notice = translate("nl", f"app.{row.marker}")
    assert "het dossier werd telkens opnieuw gewijzigd" in notice
    assert "sla opnieuw op" in notice
    assert "iemand anders" not in notice


def test_fault_a_pending_edit_of_a_loaded_child_is_shown_on_the_chart_and_kept_once_confirmed(
    database: Database, tmp_path: Path
) -> None:
    """A loaded child's name corrected while the FHIR server is stopped: the save waits in
    the outbox. The page opened again showed the server's version once the server was
    back (the entry not yet delivered), as if the correction was lost, and nothing of it
    while the server was still down. It now shows the child with the saved values,
    marked pending, under the ref of the version the edit was made on. A colleague saves
    it unchanged: the child is referenced, not updated a second time on that version
    (which the server would refuse after the first update). Both saves are delivered, the
    child updated once, with the correction."""
    outage = _edit_during_outage(database, tmp_path, "Noor Goossens")
    world, children = outage.world, outage.children
    edited_ref = children[0].ref
    patient = outage.server.seeded.patient("els-goossens")
    nurse = world.launch(patient.id, patient.arrived_encounter_id, "Practitioner/nurse-edit")
    assert outage.result.status == "pending"

    unreadable = world.triage.pending_chart(nurse)  # the page, when the server cannot be read
    with outage.restart() as server:
        colleague = world.launch(patient.id, patient.arrived_encounter_id, "Practitioner/c-1")
        chart = world.triage.load_chart(colleague)
        confirmed = world.triage.record_triage(
            colleague, no_concern(colleague, tuple(chart.children), page=chart.page)
        )
        world.clock.advance(120)
        world.outbox.run_once()
        world.clock.advance(600)
        world.outbox.run_once()
        states = [world.outbox.state_of(r.outbox_id) for r in (outage.result, confirmed)]
        with FhirClient(server.base_url, lambda: "loopback", 5.0) as client:
            after = client.read("RelatedPerson", edited_ref.split("/")[1])
        reloaded = world.triage.load_chart(colleague)

    assert [(c.ref, c.name) for c in unreadable.children] == [(edited_ref, "Noor Goossens")]
    assert unreadable.pending == {edited_ref}
    shown = {c.ref: c for c in chart.children}
    assert set(shown) == {c.ref for c in children}
    assert shown[edited_ref].name == "Noor Goossens"  # the saved edit, not the server's
    assert shown[children[1].ref] == children[1]
    assert chart.pending == {edited_ref}  # the other child is the server's: not pending
    assert chart.conflicts == frozenset()
    bundle = outbox_entry(database, confirmed.outbox_id).bundle
    assert not any(e["request"].get("ifMatch") for e in bundle["entry"])  # referenced only
    assert states == [DeliveryState.DELIVERED, DeliveryState.DELIVERED]
    assert int(after["meta"]["versionId"]) == int(edited_ref.split("/")[3]) + 1
    assert display_name(after) == "Noor Goossens"
    assert validate(after) == []
    assert reloaded.pending == reloaded.conflicts == frozenset()
    assert "Noor Goossens" in {c.name for c in reloaded.children}


def test_fault_an_edit_refused_as_a_conflict_is_told_on_the_chart_until_the_child_is_saved_again(
    database: Database, tmp_path: Path
) -> None:
    """An edit saved during an outage; someone else changes the child before delivery, so
    the server refuses it (conflict). Opened again, the chart showed the server's version
    without a word: the edit silently gone. It now names the child among ``conflicts``
    (the page says the edit was not applied), with the server's version and its ref,
    until the nurse saves the child again; that save is delivered and the notice goes."""
    with _refused_as_a_conflict(database, tmp_path) as (outage, client, child_id):
        world = outage.world
        patient = outage.server.seeded.patient("els-goossens")
        current = client.read("RelatedPerson", child_id)
        nurse = world.launch(patient.id, patient.arrived_encounter_id, "Practitioner/nurse-r")
        chart = world.triage.load_chart(nurse)
        shown = next(c for c in chart.children if c.ref.split("/")[1] == child_id)
        again = world.triage.load_chart(nurse)  # a reload: still told
        redone = replace(shown, name="Noor Goossens")
        saved = world.triage.record_triage(
            nurse, no_concern(nurse, tuple(redone if c is shown else c for c in chart.children))
        )
        after = world.triage.load_chart(nurse)
        stored = client.read("RelatedPerson", child_id)

    assert shown.ref == f"RelatedPerson/{child_id}/_history/{current['meta']['versionId']}"
    assert shown.birth_date.isoformat() == current["birthDate"]  # the server's version
    assert shown.name != "Noor Goossens"
    assert chart.conflicts == again.conflicts == {shown.ref}
    assert chart.pending == frozenset()
    assert saved.status == "delivered"
    assert display_name(stored) == "Noor Goossens"
    assert after.conflicts == frozenset()


def test_fault_her_answers_of_a_save_refused_at_delivery_are_offered_back_to_her_alone(
    database: Database, tmp_path: Path
) -> None:
    """Her save waited for the record (an outage) and was refused at delivery, after she had
    left the page: someone else had changed a child first. Opened again, the page marked
    the child, and her step 2 and 3 answers were gone: to be given again, from memory.
    ``refused_answers`` now has them, with the child she added, for her: not for a
    colleague (the page would save another nurse's judgement under her name), nor once a
    save of the visit came since (the record holds that one), also once retention emptied
    that save (found by review: the older refused answers came back)."""
    mila = child_aged("Mila Peeters", 2)
    with _refused_as_a_conflict(database, tmp_path, (mila,)) as (outage, _client, _child_id):
        world = outage.world
        patient = outage.server.seeded.patient("els-goossens")
        visit = (patient.id, patient.arrived_encounter_id)
        her = world.launch(*visit, "Practitioner/nurse-edit")  # as in _edit_during_outage
        colleague = world.launch(*visit, "Practitioner/nurse-q")
        answers = world.triage.refused_answers(her)
        for_colleague = world.triage.refused_answers(colleague)
        children = tuple(world.triage.load_chart(colleague).children)
        saved = world.triage.record_triage(colleague, no_concern(colleague, children))
        after = world.triage.refused_answers(her)
        # once the app sessions that may save over it have ended (service.retention)
        emptied = purge(database, timedelta(0), now=world.clock.now + SESSION_LIFETIME)
        after_retention = world.triage.refused_answers(her)
        with database.session() as session:
            refused = OutboxEntry.id == outage.result.outbox_id
            saved_at = session.scalars(select(OutboxEntry.created_at).where(refused)).one()

    assert answers is not None
    assert answers.saved_at == saved_at
    assert answers.refusal == DeliveryState.CONFLICT
    assert (answers.no_children, answers.expecting) == (False, None)
    assert answers.step2 is not None
    assert answers.step2.assessment is SafetyAssessment.NO_CONCERN
    assert answers.step3 is not None
    assert answers.step3.actions == {SupportAction.ASK_REGULARLY}
    assert answers.new_children == (mila,)
    assert for_colleague is None
    assert saved.status == "delivered"
    assert after is None
    assert emptied.payloads >= 1
    assert after_retention is None


def test_fault_a_child_her_refused_save_added_is_unmarked_once_her_next_save_creates_it(
    database: Database, tmp_path: Path
) -> None:
    """Her save adding Mila is refused at delivery (someone changed another child first).
    She opens the page again, Mila's row filled back, and saves: Mila is created. The
    record now holds the child her refused save had added: that save is told on the chart
    only until a later save names the child, and creating her names her."""
    mila = child_aged("Mila Peeters", 2)
    with _refused_as_a_conflict(database, tmp_path, (mila,)) as (outage, _client, _child_id):
        world = outage.world
        patient = outage.server.seeded.patient("els-goossens")
        her = world.launch(patient.id, patient.arrived_encounter_id, "Practitioner/nurse-edit")
        chart = world.triage.load_chart(her)
        answers = world.triage.refused_answers(her)
        assert answers is not None
        again = (*chart.children, *answers.new_children)
        saved = world.triage.record_triage(her, no_concern(her, again, page=chart.page))
        after = world.triage.load_chart(her)

    assert answers.new_children == (mila,)
    assert saved.status == "delivered"
    assert mila.name in {c.name for c in after.children}
    assert after.conflicts == frozenset()


@pytest.mark.parametrize("hers", ["renamed", "as-loaded"])
def test_fault_another_nurses_edit_her_page_never_showed_is_not_overwritten(
    database: Database, tmp_path: Path, hers: str
) -> None:
    """Nurse A's page shows the eldest child; nurse B, who opened the chart later, renames
    it and her save is delivered. A's save counted B's delivered edit as what her page had
    shown, and laid her own values over it: renamed, she overwrote B's name without a
    conflict; left as loaded, she put the old name back. Either way B's change was gone
    and nobody was told (found by review). Only an edit her page showed (or she saved)
    counts now: renamed, her save is refused as a conflict, the child as B left it; as
    loaded, it is only confirmed."""
    server = _OwnServer.start(tmp_path)
    try:
        patient = server.seeded.patient("els-goossens")
        world = world_at(database, server.base_url)
        visit = (patient.id, patient.arrived_encounter_id)
        a = world.launch(*visit, "Practitioner/nurse-a")
        a_page = world.triage.load_chart(a)
        seen_by_a = a_page.children
        eldest = seen_by_a[0]
        b = world.launch(*visit, "Practitioner/nurse-b")
        b_page = world.triage.load_chart(b)
        b_saves = tuple(
            replace(c, name="Noor B") if c.ref == eldest.ref else c for c in b_page.children
        )
        b_saved = world.triage.record_triage(b, no_concern(b, b_saves, page=b_page.page))
        assert b_saved.status == "delivered"
        a_saves = (replace(eldest, name="Noor A") if hers == "renamed" else eldest, *seen_by_a[1:])

        refused = None
        try:
            world.triage.record_triage(a, no_concern(a, a_saves, page=a_page.page))
        except SaveConflict as conflict:
            refused = conflict
        with FhirClient(server.base_url, lambda: "loopback", 5.0) as client:
            after = client.read("RelatedPerson", eldest.ref.split("/")[1])
    finally:
        server.stop()

    assert display_name(after) == "Noor B"
    assert (refused is not None) is (hers == "renamed")


def _each_delivered(world: World, saves: list[SaveResult]) -> list[DeliveryState]:
    """Deliver ``saves`` in turn, the FHIR server up (ten minutes apart: past any backoff);
    their states."""
    for _ in saves:
        world.clock.advance(600)
        world.outbox.run_once()
    return [world.outbox.state_of(save.outbox_id) for save in saves]


def _delivered_on_restart(
    server: _OwnServer, world: World, saves: list[SaveResult], child_id: str
) -> tuple[list[DeliveryState], dict[str, Any]]:
    """Start the stopped server again and deliver ``saves`` in turn: their states, and the
    child as the record then holds it."""
    with server.restart() as again:
        states = _each_delivered(world, saves)
        with FhirClient(again.base_url, lambda: "loopback", 5.0) as client:
            return states, client.read("RelatedPerson", child_id)


def _eldest_renamed_waiting(
    database: Database, tmp_path: Path
) -> tuple[_OwnServer, World, tuple[str, str | None], Child, list[SaveResult]]:
    """During an outage nurse C renames the eldest child "Noor C"; her save waits (the FHIR
    server is stopped). Returns the server, the world, the visit (patient, encounter), the
    eldest child as loaded and that save."""
    server = _OwnServer.start(tmp_path)
    patient = server.seeded.patient("els-goossens")
    world = world_at(database, server.base_url)
    visit = (patient.id, patient.arrived_encounter_id)
    c = world.launch(*visit, "Practitioner/nurse-c")
    loaded = world.triage.load_chart(c).children
    eldest = loaded[0]
    server.stop()
    renamed = tuple(replace(x, name="Noor C") if x.ref == eldest.ref else x for x in loaded)
    return server, world, visit, eldest, [world.triage.record_triage(c, no_concern(c, renamed))]


@pytest.mark.parametrize("hers", ["as-loaded", "undone"])
def test_fault_an_edit_her_page_showed_counts_though_one_she_never_saw_followed_it(
    database: Database, tmp_path: Path, hers: str
) -> None:
    """During an outage nurse C renames the eldest child; A's page shows that edit waiting,
    and so does B's, who renames the child again over it. A's save counted only B's later
    edit, which her page never showed, and not C's, which it did: saved as loaded, the
    child was refused as a conflict; with C's rename undone, her undo was taken for a
    confirmation and lost, the save said delivered (found by review). The edit her page
    showed counts: as loaded, the child is confirmed, B's name kept; undone, her undo is
    laid over C's edit, and B's change since makes it a conflict she is told of."""
    server, world, visit, eldest, saves = _eldest_renamed_waiting(database, tmp_path)
    a = world.launch(*visit, "Practitioner/nurse-a")
    a_page = world.triage.pending_chart(a)  # C's edit, waiting
    b = world.launch(*visit, "Practitioner/nurse-b")
    b_page = world.triage.pending_chart(b)
    b_saves = (replace(b_page.children[0], name="Noor B"),)
    saves.append(world.triage.record_triage(b, no_concern(b, b_saves, page=b_page.page)))
    shown = a_page.children[0]
    a_saves = (shown if hers == "as-loaded" else replace(shown, name=eldest.name),)
    saves.append(world.triage.record_triage(a, no_concern(a, a_saves, page=a_page.page)))
    states, after = _delivered_on_restart(server, world, saves, eldest.ref.split("/")[1])

    assert [x.name for x in a_page.children] == ["Noor C"]
    assert display_name(after) == "Noor B"
    expected = DeliveryState.DELIVERED if hers == "as-loaded" else DeliveryState.CONFLICT
    assert states == [DeliveryState.DELIVERED, DeliveryState.DELIVERED, expected]


def test_fault_an_edit_another_tab_showed_is_not_undone_by_a_tab_that_never_showed_it(
    database: Database, tmp_path: Path
) -> None:
    """Nurse A has the chart open in a tab. During an outage nurse C renames the eldest
    child; A opens the chart again in a second tab of the same app session, which shows
    C's edit waiting. A then saves the first tab, as it was loaded. The edits a page
    showed were remembered per app session: the first tab counted C's edit as shown, and
    its old values undid C's rename, both saves "delivered" (found by review). Per page,
    the first tab only confirms the child it showed, and C's name stands."""
    server = _OwnServer.start(tmp_path)
    patient = server.seeded.patient("els-goossens")
    world = world_at(database, server.base_url)
    visit = (patient.id, patient.arrived_encounter_id)
    a = world.launch(*visit, "Practitioner/nurse-a")
    first_tab = world.triage.load_chart(a)
    eldest = first_tab.children[0]
    c = world.launch(*visit, "Practitioner/nurse-c")
    loaded = world.triage.load_chart(c).children
    server.stop()
    renamed = tuple(replace(x, name="Noor C") if x.ref == eldest.ref else x for x in loaded)
    saves = [world.triage.record_triage(c, no_concern(c, renamed))]
    second_tab = world.triage.pending_chart(a)  # the same session: C's edit, waiting
    as_loaded = no_concern(a, tuple(first_tab.children), page=first_tab.page)
    saves.append(world.triage.record_triage(a, as_loaded))
    states, after = _delivered_on_restart(server, world, saves, eldest.ref.split("/")[1])

    assert [x.name for x in second_tab.children] == ["Noor C"]
    assert second_tab.page != first_tab.page
    assert display_name(after) == "Noor C"
    assert states == [DeliveryState.DELIVERED, DeliveryState.DELIVERED]


def _mila_waiting(
    database: Database, tmp_path: Path
) -> tuple[_OwnServer, World, tuple[str, str], list[SaveResult]]:
    """A nurse's save adding Mila (:data:`MILA`), waiting: the FHIR server is stopped.
    Returns the server, the world, the visit (patient, encounter) and that save."""
    server = _OwnServer.start(tmp_path)
    patient = server.seeded.patient("els-goossens")
    world = world_at(database, server.base_url)
    visit = (patient.id, patient.arrived_encounter_id or "")
    first = world.launch(*visit, "Practitioner/nurse-1")
    loaded = tuple(world.triage.load_chart(first).children)
    server.stop()
    saved = world.triage.record_triage(first, no_concern(first, (*loaded, MILA)))
    return server, world, visit, [saved]


#: The new child of :func:`_mila_waiting` (each test has its own FHIR server and database).
MILA = child_aged("Mila Peeters", 2)


def _delivered_mila(
    server: _OwnServer, world: World, saves: list[SaveResult]
) -> tuple[list[DeliveryState], list[str | None]]:
    """Start the server again and deliver ``saves`` in turn: their states, and Mila's name
    as the record then holds each child of her identifier."""
    identifier = f"{terminology.identifier_system('child')}|{MILA.ref.removeprefix('urn:uuid:')}"
    with server.restart() as again:
        states = _each_delivered(world, saves)
        found = search(again.base_url, "RelatedPerson", identifier=identifier)
    return states, [display_name(child) for child in found]


def _b_renamed_mila_then_a_changed_her(
    database: Database, tmp_path: Path, **a_changes: Any
) -> tuple[_OwnServer, World, tuple[str, str], list[SaveResult], LaunchContext, RecordedChart]:
    """:func:`_mila_waiting`; the pages of nurses A and B show Mila waiting. B renames her
    "Mila Janssens"; then A saves her page with ``a_changes`` made to Mila. Every save
    waits. Returns the server, the world, the visit, the saves, A's launch and A's page."""
    server, world, visit, saves = _mila_waiting(database, tmp_path)
    a = world.launch(*visit, "Practitioner/nurse-a")
    a_page = world.triage.pending_chart(a)
    b = world.launch(*visit, "Practitioner/nurse-b")
    b_page = world.triage.pending_chart(b)
    renamed = tuple(replace(c, name="Mila Janssens") for c in b_page.children)
    saves.append(world.triage.record_triage(b, no_concern(b, renamed, page=b_page.page)))
    changed = tuple(replace(c, **a_changes) for c in a_page.children)
    saves.append(world.triage.record_triage(a, no_concern(a, changed, page=a_page.page)))
    return server, world, visit, saves, a, a_page


@pytest.mark.parametrize(
    ("a_changes", "delivered", "name"),
    [
        ({}, True, "Mila Janssens"),
        ({"name": "Mila Claes"}, False, "Mila Janssens"),
        ({"birth_date": MILA.birth_date - timedelta(days=3)}, True, "Mila Janssens"),
    ],
    ids=["as-shown", "the-same-element", "another-element"],
)
def test_fault_a_new_child_renamed_since_her_page_showed_it_waiting(
    database: Database, tmp_path: Path, a_changes: dict[str, Any], delivered: bool, name: str
) -> None:
    """During an outage a nurse adds Mila; her save waits. The pages of nurses A and B show
    Mila waiting. B renames her; then A saves her page; both saves wait.

    * A saves Mila as her page showed her. Her save merged against Mila as the latest
      waiting save wrote her (B's name): A's unchanged name counted as a change back and
      undid B's rename, every save "delivered" (found by review). Against Mila as A's page
      showed her, A changed nothing of her, and B's name stays.
    * A renames Mila too. At delivery her name was laid over B's, every save "delivered",
      nobody told (found by review). An element both changed is A's conflict now, her
      answers offered back, B's name kept.
    * A changes another element of Mila (her birth date): merged with B's rename."""
    server, world, _, saves, a, a_page = _b_renamed_mila_then_a_changed_her(
        database, tmp_path, **a_changes
    )
    states, names = _delivered_mila(server, world, saves)

    assert [c.name for c in a_page.children] == [MILA.name]
    a_state = DeliveryState.DELIVERED if delivered else DeliveryState.CONFLICT
    assert states == [DeliveryState.DELIVERED, DeliveryState.DELIVERED, a_state]
    assert names == [name]
    answers = world.triage.refused_answers(a)
    assert (answers and answers.refusal) == (None if delivered else DeliveryState.CONFLICT)


def test_fault_her_refused_rename_of_a_waiting_child_is_marked_until_she_saves_it_again(
    database: Database, tmp_path: Path
) -> None:
    """During an outage a nurse adds Mila; A's and B's pages show her waiting. B renames
    her, then A does: at delivery A's save is refused (both changed the name). Opened
    again, A's chart showed Mila as the record has her, unmarked: the chart read only the
    refused edits of children the record held when the save was made (found by review).
    Mila is marked as a conflict now, on the form with A's answers too, until A saves her
    again; that save is delivered and the notice goes."""
    server, world, _, saves, a, _ = _b_renamed_mila_then_a_changed_her(
        database, tmp_path, name="Mila Claes"
    )
    with server.restart():
        states = _each_delivered(world, saves)
        chart = world.triage.load_chart(a)
        mila = next(c for c in chart.children if c.name == "Mila Janssens")
        answers = world.triage.refused_answers(a)
        assert answers is not None
        form = with_answers(
            TriageForm(children=[ChildRow.of(c, chart) for c in chart.children]), answers, chart
        )
        redone = tuple(replace(c, name="Mila Claes") if c is mila else c for c in chart.children)
        saved = world.triage.record_triage(a, no_concern(a, redone, page=chart.page))
        after = world.triage.load_chart(a)

    assert states == [DeliveryState.DELIVERED, DeliveryState.DELIVERED, DeliveryState.CONFLICT]
    assert chart.conflicts == {mila.ref}
    assert [row.delivery for row in form.children if row.ref == mila.ref] == ["conflict"]
    assert saved.status == "delivered"
    assert after.conflicts == frozenset()
    assert "Mila Claes" in {c.name for c in after.children}


@pytest.mark.parametrize("mila", ["as-shown", "born-a-day-earlier"])
def test_fault_a_waiting_child_her_refused_save_did_not_change_is_not_marked_a_conflict(
    database: Database, tmp_path: Path, mila: str
) -> None:
    """During an outage a nurse adds Mila; her save waits. The server is back before the
    outbox runs: A's chart shows the children and Mila waiting. A renames the eldest child,
    and someone else changes it first: A's save is refused. Mila was marked too,
    "someone else changed the child first", though A's save only carried her as shown
    (every waiting child is saved again with the page) and nobody changed her (found by
    review). Left as shown: not marked. Her birth date corrected by A: marked as refused
    with the rest of the save, not as changed by someone else."""
    server, world, visit, saves = _mila_waiting(database, tmp_path)
    with server.restart() as again:
        a = world.launch(*visit, "Practitioner/nurse-a")
        page = world.triage.load_chart(a)
        eldest = next(c for c in page.children if c.ref.startswith("RelatedPerson/"))
        waiting = next(c for c in page.children if c.name == MILA.name)
        earlier = MILA.birth_date - timedelta(days=1)
        by_a = tuple(
            replace(c, name="Noor A")
            if c is eldest
            else replace(c, birth_date=earlier)
            if c is waiting and mila == "born-a-day-earlier"
            else c
            for c in page.children
        )
        saves.append(world.triage.record_triage(a, no_concern(a, by_a, page=page.page)))
        with FhirClient(again.base_url, lambda: "loopback", 5.0) as client:
            _changed_by_someone_else(client, eldest.ref.split("/")[1])
        states = _each_delivered(world, saves)
        chart = world.triage.load_chart(a)

    recorded = next(c for c in chart.children if c.name == MILA.name)
    assert waiting.ref in page.pending
    assert states == [DeliveryState.DELIVERED, DeliveryState.CONFLICT]
    assert recorded.ref not in chart.conflicts
    if mila == "as-shown":
        marked = chart.conflicts | chart.changed_elsewhere | chart.failed | chart.kept_changing
        assert recorded.ref not in marked
    else:
        assert recorded.ref in chart.changed_elsewhere


@pytest.mark.parametrize("a_changes", ["the-name", "the-birth-date"])
def test_fault_her_change_of_a_waiting_child_whose_shown_rename_was_refused_is_delivered(
    database: Database, tmp_path: Path, a_changes: str
) -> None:
    """During an outage a nurse adds Mila; nurse X renames her and the eldest child, and
    A's page shows X's rename of Mila waiting. The EHR changes the eldest first: X's save
    is refused, Mila stays as added. A then saves her page with Mila renamed, or with
    another birth date. Nobody changed Mila since X's page saw her: A's change is laid
    over her, and the name X gave her, which A left as shown, is not. The merge base of
    what A changed is what X's refused save was based on: taken for X's values, the name
    A gave Mila was a conflict with nobody (found with the review's fixes)."""
    server, world, visit, saves = _mila_waiting(database, tmp_path)
    x = world.launch(*visit, "Practitioner/nurse-x")
    with server.restart():  # X's page: the record's children and Mila waiting
        loaded = world.triage.load_chart(x)
    eldest = next(c for c in loaded.children if c.ref.startswith("RelatedPerson/"))
    by_x = tuple(
        replace(c, name="Mila X")
        if c.name == MILA.name
        else replace(c, name="Noor X")
        if c is eldest
        else c
        for c in loaded.children
    )
    saves.append(world.triage.record_triage(x, no_concern(x, by_x, page=loaded.page)))
    a = world.launch(*visit, "Practitioner/nurse-a")
    a_page = world.triage.pending_chart(a)
    earlier = MILA.birth_date - timedelta(days=1)
    changes: dict[str, dict[str, Any]] = {
        "the-name": {"name": "Mila A"},
        "the-birth-date": {"birth_date": earlier},
    }
    change = changes[a_changes]
    # the eldest as the record had it (what X's refused save was made on): nothing to write
    by_a = tuple(
        replace(c, **change) if c.name == "Mila X" else eldest if c.name == "Noor X" else c
        for c in a_page.children
    )
    with server.restart() as again, FhirClient(again.base_url, lambda: "loopback", 5.0) as client:
        _changed_by_someone_else(client, eldest.ref.split("/")[1])
        _each_delivered(world, saves)
        saves.append(world.triage.record_triage(a, no_concern(a, by_a, page=a_page.page)))
        states = [world.outbox.state_of(save.outbox_id) for save in saves]
        chart = world.triage.load_chart(a)

    (mila,) = (c for c in chart.children if c.name.startswith("Mila"))
    assert "Mila X" in {c.name for c in a_page.children}
    assert states == [DeliveryState.DELIVERED, DeliveryState.CONFLICT, DeliveryState.DELIVERED]
    if a_changes == "the-name":
        assert (mila.name, mila.birth_date) == ("Mila A", MILA.birth_date)
    else:
        assert (mila.name, mila.birth_date) == (MILA.name, earlier)


@pytest.mark.parametrize("c_changes", ["nothing", "the-birth-date"])
def test_fault_a_page_drawn_before_her_refusal_does_not_clear_its_notice(
    database: Database, tmp_path: Path, c_changes: str
) -> None:
    """During an outage a nurse adds Mila; B and A rename her while she waits, and A's save
    is refused at delivery. Nurse C's page showed Mila waiting too (as A's save named
    her), before any of it was delivered; C saves it, Mila as it showed her or with
    another birth date. C's save came after the refusal and named Mila: it cleared A's
    notice, though C's page never showed the refusal, and A's rename was gone unseen (her
    answers are not offered back either: a save of the visit came since; found by
    review). A page that showed Mila waiting was drawn before she was on the record: A is
    still told. And C's save laid A's refused name, which C's page showed and C left as it
    was, over B's (found with it): C changed nothing of the name, and B's stays."""
    server, world, visit, saves, a, _ = _b_renamed_mila_then_a_changed_her(
        database, tmp_path, name="Mila Claes"
    )
    c = world.launch(*visit, "Practitioner/nurse-c")
    c_page = world.triage.pending_chart(c)  # still waiting: the server is down
    earlier = MILA.birth_date - timedelta(days=1)
    by_c = tuple(
        replace(x, birth_date=earlier) if c_changes == "the-birth-date" else x
        for x in c_page.children
    )
    with server.restart():
        states = _each_delivered(world, saves)
        told = world.triage.load_chart(a)
        saved = world.triage.record_triage(c, no_concern(c, by_c, page=c_page.page))
        after = world.triage.load_chart(a)

    assert [x.name for x in c_page.children] == ["Mila Claes"]
    assert states == [DeliveryState.DELIVERED, DeliveryState.DELIVERED, DeliveryState.CONFLICT]
    assert saved.status == "delivered"
    (mila,) = (x for x in after.children if x.name.startswith("Mila"))
    assert mila.name == "Mila Janssens"
    assert mila.birth_date == (earlier if c_changes == "the-birth-date" else MILA.birth_date)
    assert [unversioned(ref) for ref in told.conflicts] == [unversioned(mila.ref)]
    assert after.conflicts == {mila.ref}


def test_fault_her_undo_of_her_own_rename_of_a_waiting_child_from_the_same_page_is_kept(
    database: Database, tmp_path: Path
) -> None:
    """During an outage a nurse adds Mila; her save waits. Nurse A's page shows Mila
    waiting; A renames her and saves; then, from the same page (the Back button), puts the
    name back and saves again. The second save merged against Mila as the page first
    showed her, not as A had saved her from it: the name put back counted as no change,
    and A's rename stayed, every save "delivered" (found by review). Her page stands for
    what she saved from it: the undo is written."""
    server, world, visit, saves = _mila_waiting(database, tmp_path)
    a = world.launch(*visit, "Practitioner/nurse-a")
    page = world.triage.pending_chart(a)
    renamed = tuple(replace(c, name="Mila Janssens") for c in page.children)
    saves.append(world.triage.record_triage(a, no_concern(a, renamed, page=page.page)))
    put_back = no_concern(a, tuple(page.children), page=page.page)  # the page as first drawn
    saves.append(world.triage.record_triage(a, put_back))
    states, names = _delivered_mila(server, world, saves)

    assert len({save.outbox_id for save in saves}) == 3  # three saves, none joined another
    assert states == [DeliveryState.DELIVERED] * 3
    assert names == ["Mila Peeters"]


def _mila_renamed_then_put_back(
    database: Database, tmp_path: Path
) -> tuple[_OwnServer, World, list[SaveResult], LaunchContext, RecordedChart, RecordedChart]:
    """:func:`_mila_waiting`; then nurse A's page shows Mila waiting and A renames her
    "Mila Janssens"; nurse B's page shows that name waiting and B puts Mila's back. Every
    save waits. Returns the server, the world, the saves, A's launch, A's page and B's."""
    server, world, visit, saves = _mila_waiting(database, tmp_path)
    return server, world, saves, *_renamed_and_put_back(world, visit, saves, "Mila Janssens")


def _renamed_and_put_back(
    world: World, visit: tuple[str, str | None], saves: list[SaveResult], name: str
) -> tuple[LaunchContext, RecordedChart, RecordedChart]:
    """Nurse A's page shows the waiting children and A renames them ``name``; nurse B's
    page shows that name waiting and B puts back the name A's page showed. Both saves
    wait (added to ``saves``). Returns A's launch, A's page and B's."""
    a = world.launch(*visit, "Practitioner/nurse-a")
    a_page = world.triage.pending_chart(a)
    renamed = tuple(replace(c, name=name) for c in a_page.children)
    saves.append(world.triage.record_triage(a, no_concern(a, renamed, page=a_page.page)))
    b = world.launch(*visit, "Practitioner/nurse-b")
    b_page = world.triage.pending_chart(b)
    first = {c.ref: c.name for c in a_page.children}
    put_back = tuple(replace(c, name=first[c.ref]) for c in b_page.children)
    saves.append(world.triage.record_triage(b, no_concern(b, put_back, page=b_page.page)))
    return a, a_page, b_page


def test_fault_a_colleagues_revert_to_what_her_page_first_showed_is_kept(
    database: Database, tmp_path: Path
) -> None:
    """During an outage a nurse adds Mila; her save waits. Nurse A's page shows Mila
    waiting; A renames her and saves. Nurse B's page shows A's name waiting; B puts the
    first name back and saves. A saves her page again (the Back button), her name as she
    had saved it. Her page remembered the name it first showed and the name she saved, by
    values alone, and B's save had the first: taken for what A's page stood for, A's name
    counted as a change and undid B's revert, every save "delivered". Her page stands for
    what she saved from it: she changed nothing, and B's name stays."""
    server, world, saves, a, a_page, b_page = _mila_renamed_then_put_back(database, tmp_path)
    renamed = tuple(replace(c, name="Mila Janssens") for c in a_page.children)
    again = no_concern(a, renamed, page=a_page.page)  # the page as she had saved it
    saves.append(world.triage.record_triage(a, again))
    states, names = _delivered_mila(server, world, saves)

    assert [c.name for c in b_page.children] == ["Mila Janssens"]
    assert len({save.outbox_id for save in saves}) == 4  # none joined another
    assert states == [DeliveryState.DELIVERED] * 4
    assert names == [MILA.name]


def _form_after_her_conflict(
    world: World, a: LaunchContext, a_page: RecordedChart, name: str
) -> tuple[list[ChildRow], list[str]]:
    """A saves her page again with Mila renamed ``name``: a conflict. The child rows of the
    form after it, and the names it says are gone (``rows_after_conflict``)."""
    renamed = tuple(replace(c, name=name) for c in a_page.children)
    with pytest.raises(SaveConflict):
        world.triage.record_triage(a, no_concern(a, renamed, page=a_page.page))
    chart = world.triage.load_chart(a)
    typed = [ChildRow.of(child, a_page) for child in renamed]
    return rows_after_conflict(typed, chart, world.triage.edits_shown(a, a_page.page))


def test_fault_the_form_after_a_conflict_shows_a_colleagues_revert_of_her_save(
    database: Database, tmp_path: Path
) -> None:
    """As above, everything delivered: Mila is the record's again, B's revert of A's name.
    A saves her page again with another name: a conflict. The form after it kept A's row,
    not the record's Mila: the record held a name A's page had shown (before A renamed
    her), and the page's memory judged by values alone. Saved, it overwrote B's revert
    unseen (found by review). Her page stands for her save: the form shows B's Mila."""
    server, world, saves, a, a_page, _ = _mila_renamed_then_put_back(database, tmp_path)
    with server.restart():
        delivered = _each_delivered(world, saves)
        rows, gone = _form_after_her_conflict(world, a, a_page, "Mila Smet")

    assert delivered == [DeliveryState.DELIVERED] * 3
    assert gone == []
    assert "Mila Smet" not in [row.name for row in rows]
    assert MILA.name in [row.name for row in rows]


@pytest.mark.parametrize("saved_by", ["this-release", "the-release-before"])
def test_fault_the_form_after_a_conflict_does_not_count_her_refused_save_as_shown(
    database: Database, tmp_path: Path, saved_by: str
) -> None:
    """During an outage a nurse adds Mila; A's and B's pages show her waiting. B renames
    her "Mila Janssens", A "Mila Claes": at delivery A's save is refused (both changed the
    name). Nurse C then renames Mila "Mila Claes", and A saves her page again with another
    name: a conflict. The form after it kept A's row: the page remembered what A's save
    wrote when she made it, and the record now held those values, though not from her
    refused save. Saved, it overwrote C's name unseen (found by review). A refused save
    wrote nothing: the form shows C's name. So for a page open across the upgrade, whose
    save the release before remembered as shown (found by review)."""
    server, world, visit, saves, a, a_page = _b_renamed_mila_then_a_changed_her(
        database, tmp_path, name="Mila Claes"
    )
    if saved_by == "the-release-before":  # what it remembered at A's save
        bundle = outbox_entry(database, saves[-1].outbox_id).bundle
        with database.session() as session:
            saved = triage._children_saved(bundle["entry"], f"Patient/{visit[0]}")
            triage._remember_shown_edits(session, a.session_id, a_page.page, saved)
    with server.restart():
        states = _each_delivered(world, saves)
        c = world.launch(*visit, "Practitioner/nurse-c")
        c_page = world.triage.load_chart(c)
        by_c = tuple(
            replace(x, name="Mila Claes") if x.name == "Mila Janssens" else x
            for x in c_page.children
        )
        by_c_saved = world.triage.record_triage(c, no_concern(c, by_c, page=c_page.page))
        rows, gone = _form_after_her_conflict(world, a, a_page, "Mila Smet")

    assert states == [DeliveryState.DELIVERED, DeliveryState.DELIVERED, DeliveryState.CONFLICT]
    assert by_c_saved.status == "delivered"
    assert gone == []
    assert "Mila Smet" not in [row.name for row in rows]
    assert "Mila Claes" in [row.name for row in rows]


def test_fault_a_colleagues_revert_to_the_edit_her_page_first_showed_is_kept(
    database: Database, tmp_path: Path
) -> None:
    """The same with an edit of a child on the record. During an outage nurse C renames the
    eldest child; A's page shows C's edit waiting, A renames the child again and saves; B's
    page shows A's name waiting and puts C's name back; A saves her page again, her name
    as she had saved it. B's revert had the values A's page first showed and was taken
    for them: A's name was laid over it. Her page stands for her save: she changed
    nothing, and B's revert stays."""
    server, world, visit, eldest, saves = _eldest_renamed_waiting(database, tmp_path)
    a, a_page, b_page = _renamed_and_put_back(world, visit, saves, "Noor A")
    by_a = tuple(replace(x, name="Noor A") for x in a_page.children)
    saves.append(world.triage.record_triage(a, no_concern(a, by_a, page=a_page.page)))
    states, after = _delivered_on_restart(server, world, saves, eldest.ref.split("/")[1])

    assert [x.name for x in a_page.children] == ["Noor C"]
    assert [x.name for x in b_page.children] == ["Noor A"]
    assert display_name(after) == "Noor C"
    assert states == [DeliveryState.DELIVERED] * 4


@dataclass
class _HerRename:
    """Nurse A's page of a returning patient, the eldest child renamed "Noor A" and saved:
    delivered (:func:`_her_rename_delivered`)."""

    world: World
    seeded: SeedResult
    client: FhirClient  # to the FHIR server, as the EHR
    visit: tuple[str, str]
    a: LaunchContext
    a_page: RecordedChart
    by_a: tuple[Child, ...]  # her page as she saved it
    eldest: Child  # as her page showed it

    @property
    def child_id(self) -> str:
        return self.eldest.ref.split("/")[1]

    def put_back(self) -> dict[str, Any]:
        """Nurse B opens the chart and puts the eldest's name back; the child as stored."""
        b = self.world.launch(*self.visit, "Practitioner/nurse-b")
        b_page = self.world.triage.load_chart(b)
        put_back = tuple(
            replace(c, name=self.eldest.name) if c.name == "Noor A" else c for c in b_page.children
        )
        saved = self.world.triage.record_triage(b, no_concern(b, put_back, page=b_page.page))
        assert saved.status == "delivered"
        return self.client.read("RelatedPerson", self.child_id)

    def saved_again(self, **change: Any) -> str:
        """A saves her page again (the Back button), "Noor A" with ``change``: the save's
        status, "conflict" when it is refused as one while she waits."""
        again = tuple(replace(c, **change) if c.name == "Noor A" else c for c in self.by_a)
        findings = no_concern(self.a, again, page=self.a_page.page)
        try:
            return self.world.triage.record_triage(self.a, findings).status
        except SaveConflict:
            return "conflict"


@contextlib.contextmanager
def _her_rename_delivered(
    database: Database, tmp_path: Path, *, ours_before: bool = True
) -> Iterator[_HerRename]:
    """A FHIR server of the test's own; with ``ours_before``, a save of ours wrote the
    eldest child first (our profile and identifier), as the EHR's seed does not."""
    server = _OwnServer.start(tmp_path)
    try:
        patient = server.seeded.patient("els-goossens")
        world = world_at(database, server.base_url)
        visit = (patient.id, patient.arrived_encounter_id or "")
        z = world.launch(*visit, "Practitioner/nurse-z")
        eldest_id = world.triage.load_chart(z).children[0].ref.split("/")[1]
        if ours_before:
            _saved_with(world, z, eldest_id, name="Noor Goossens")
        a = world.launch(*visit, "Practitioner/nurse-a")
        a_page = world.triage.load_chart(a)
        eldest = next(c for c in a_page.children if c.ref.split("/")[1] == eldest_id)
        by_a = tuple(replace(c, name="Noor A") if c is eldest else c for c in a_page.children)
        first = world.triage.record_triage(a, no_concern(a, by_a, page=a_page.page))
        assert first.status == "delivered"
        with FhirClient(world.base_url, lambda: "loopback", 5.0) as client:
            yield _HerRename(world, server.seeded, client, visit, a, a_page, by_a, eldest)
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("ours_before", "hers"),
    [
        (False, "as-saved"),
        (True, "as-saved"),
        (True, "renamed-again"),
        (True, "born-a-day-earlier"),
    ],
    ids=["as-seeded-as-saved", "as-saved", "renamed-again", "born-a-day-earlier"],
)
def test_a_colleagues_revert_of_her_delivered_edit_is_kept_when_she_saves_her_page_again(
    database: Database, tmp_path: Path, ours_before: bool, hers: str
) -> None:
    """Nurse A renames the eldest child; her save is delivered. Nurse B opens the chart and
    puts the name back; delivered. A saves her page again (the Back button):

    * the child as she had saved it: she changed nothing since, and B's revert stays, her
      save delivered writing nothing. Her save was judged against the version her page
      showed: B's revert looked like no change there, and A's name was laid over it,
      "delivered", nobody told (a child our app had written before: found by review); a
      child as the EHR recorded it refused her whole save as a conflict;
    * renamed again: both changed the name since her save; a conflict, B's name kept;
    * with another birth date: merged, B's name and A's date."""
    with _her_rename_delivered(database, tmp_path, ours_before=ours_before) as rename:
        earlier = rename.eldest.birth_date - timedelta(days=1)
        changes: dict[str, dict[str, Any]] = {
            "as-saved": {},
            "renamed-again": {"name": "Noor A2"},
            "born-a-day-earlier": {"birth_date": earlier},
        }
        by_b = rename.put_back()
        status = rename.saved_again(**changes[hers])
        stored = rename.client.read("RelatedPerson", rename.child_id)

    assert status == ("conflict" if hers == "renamed-again" else "delivered")
    assert display_name(stored) == rename.eldest.name
    if hers == "born-a-day-earlier":
        assert stored["birthDate"] == earlier.isoformat()
    else:  # nothing written since B's save
        assert stored["meta"]["versionId"] == by_b["meta"]["versionId"]


def test_a_colleagues_revert_of_her_edit_just_before_her_save_is_written_is_merged_again(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As above, A saves her page again with another birth date; the child is as her save
    left it, and her date goes over it, If-Match on that version. B puts the name back
    between the outbox's read and its write: a 412. It was told as a conflict, though
    nobody changed what she changed; had B's revert come a moment earlier, it merged
    (found by review). It is a race now, merged again: B's name and A's date."""
    with _her_rename_delivered(database, tmp_path) as hers:
        as_shown = hers.eldest.ref.removeprefix("RelatedPerson/")  # the version her page showed
        first_name = hers.client.read("RelatedPerson", as_shown)["name"]
        hers.client.close()  # the writer below is the EHR's own connection

        def put_back(child: dict[str, Any], _: int) -> dict[str, Any]:
            return {**child, "name": first_name}

        writer = _ConcurrentWriter(
            monkeypatch, hers.world.base_url, put_back, resource_type="RelatedPerson"
        )
        earlier = hers.eldest.birth_date - timedelta(days=1)
        status = hers.saved_again(birth_date=earlier)
        hers.world.clock.advance(600)
        hers.world.outbox.run_once()
        with FhirClient(hers.world.base_url, lambda: "loopback", 5.0) as client:
            stored = client.read("RelatedPerson", hers.child_id)

    assert writer.writes == 1
    assert status != "conflict"
    assert display_name(stored) == hers.eldest.name
    assert stored["birthDate"] == earlier.isoformat()


def test_her_page_saved_again_is_refused_once_the_child_moved_to_another_patient(
    database: Database, tmp_path: Path
) -> None:
    """As above, B puts the name back; then the EHR moves the child to another patient's
    record (recorded on the wrong mother, corrected). A saves her page again as she had
    saved it: with nothing of hers to write, her save left the child out unchecked,
    "delivered", her findings referring to another patient's child (found by review). It
    is refused, as any save of a child on another patient's record."""
    with _her_rename_delivered(database, tmp_path) as hers:
        hers.put_back()
        moved = hers.client.read("RelatedPerson", hers.child_id)
        elsewhere = f"Patient/{hers.seeded.patient('jan-janssens').id}"
        _put(hers.client, {**moved, "patient": {"reference": elsewhere}})
        status = hers.saved_again()
        stored = hers.client.read("RelatedPerson", hers.child_id)

    assert status == "failed"
    assert stored["patient"]["reference"] == elsewhere


def _named(client: FhirClient, child_id: str, **parts: Any) -> dict[str, Any]:
    """The child's first name as the EHR stores it, with ``parts`` (a prefix, a suffix)."""
    stored = client.read("RelatedPerson", child_id)
    _put(client, {**stored, "name": [{**stored["name"][0], **parts}, *stored["name"][1:]]})
    return client.read("RelatedPerson", child_id)


def test_a_renamed_child_loses_the_old_names_prefix_and_suffix(
    world: World, seeded: SeedResult
) -> None:
    """The EHR stored the child's name with a prefix and a suffix; the nurse types another
    name. The name she typed replaces the old one: its prefix and suffix belonged to the
    old name and are not written into the new one (its use stays: another test)."""
    patient = seeded.patient("els-goossens")
    ctx = world.launch(patient.id, patient.arrived_encounter_id, "Practitioner/nurse-n")
    child_id = world.triage.load_chart(ctx).children[1].ref.split("/")[1]
    client = FhirClient(world.base_url, lambda: "loopback", 5.0)
    _named(client, child_id, prefix=["Jhr."], suffix=["II"])
    renamed = f"Mira {uuid.uuid4().hex[:6].upper()}"

    saved = _saved_with(world, ctx, child_id, name=renamed)

    assert saved.status == "delivered"
    after = client.read("RelatedPerson", child_id)
    client.close()
    assert display_name(after) == renamed
    assert "prefix" not in after["name"][0]
    assert "suffix" not in after["name"][0]


def test_a_child_edited_without_a_new_name_keeps_its_names_prefix_and_suffix(
    world: World, seeded: SeedResult
) -> None:
    """The same child's birth date corrected, the name as it was: the name, with its prefix
    and suffix, stays as the EHR stored it."""
    patient = seeded.patient("els-goossens")
    ctx = world.launch(patient.id, patient.arrived_encounter_id, "Practitioner/nurse-s")
    child = world.triage.load_chart(ctx).children[1]
    child_id = child.ref.split("/")[1]
    client = FhirClient(world.base_url, lambda: "loopback", 5.0)
    stored = _named(client, child_id, prefix=["Jhr."], suffix=["II"])
    ctx = world.launch(patient.id, patient.arrived_encounter_id, "Practitioner/nurse-s")

    saved = _saved_with(world, ctx, child_id, birth_date=child.birth_date - timedelta(days=1))

    assert saved.status == "delivered"
    after = client.read("RelatedPerson", child_id)
    client.close()
    assert after["birthDate"] != stored["birthDate"]
    assert after["name"] == stored["name"]
    assert (after["name"][0]["prefix"], after["name"][0]["suffix"]) == (["Jhr."], ["II"])


def test_an_edit_another_save_already_delivered_then_changed_by_someone_else_is_a_conflict(
    world: World, seeded: SeedResult
) -> None:
    """Two nurses' pages show the same version of a child; the first renames it (delivered),
    then someone else renames it again. The second nurse, on her page of the first version,
    types the first nurse's name: hers was referenced, not written (an earlier save had made
    that edit of that version), so the other user's name stayed and nobody was told. Her
    edit is an update of the version she saw: refused as a conflict, the other's name kept."""
    patient = seeded.patient("els-goossens")
    second = world.launch(patient.id, patient.arrived_encounter_id, "Practitioner/nurse-b2")
    children = world.triage.load_chart(second).children
    child_id = children[0].ref.split("/")[1]
    first = world.launch(patient.id, patient.arrived_encounter_id, "Practitioner/nurse-b1")
    renamed = f"Noor {uuid.uuid4().hex[:6].upper()}"
    assert _saved_with(world, first, child_id, name=renamed).status == "delivered"
    client = FhirClient(world.base_url, lambda: "loopback", 5.0)
    current = client.read("RelatedPerson", child_id)
    # another name each run: the FHIR server is the module's, and a name the child already
    # had when the second nurse's page was read would be no change of what she writes
    someone_else = f"Someone Else {uuid.uuid4().hex[:6].upper()}"
    _put(client, {**current, "name": [{"text": someone_else}]})

    with pytest.raises(SaveConflict):
        world.triage.record_triage(second, edit_first_child(second, children, renamed))

    assert display_name(client.read("RelatedPerson", child_id)) == someone_else
    client.close()
    shown = world.triage.load_chart(second)
    assert [c.ref for c in shown.children if c.ref.split("/")[1] == child_id] == list(
        shown.conflicts
    )


def test_an_edit_another_save_already_delivered_is_not_a_conflict_nor_written_again(
    world: World, seeded: SeedResult
) -> None:
    """The same, without the other user's change: the record already has the name she typed,
    so her save is delivered and the child not updated a second time."""
    patient = seeded.patient("els-goossens")
    second = world.launch(patient.id, patient.arrived_encounter_id, "Practitioner/nurse-c2")
    children = world.triage.load_chart(second).children
    child_id = children[0].ref.split("/")[1]
    first = world.launch(patient.id, patient.arrived_encounter_id, "Practitioner/nurse-c1")
    renamed = f"Noor {uuid.uuid4().hex[:6].upper()}"
    assert _saved_with(world, first, child_id, name=renamed).status == "delivered"
    client = FhirClient(world.base_url, lambda: "loopback", 5.0)
    version = client.read("RelatedPerson", child_id)["meta"]["versionId"]

    saved = world.triage.record_triage(second, edit_first_child(second, children, renamed))

    assert saved.status == "delivered"
    after = client.read("RelatedPerson", child_id)
    client.close()
    assert after["meta"]["versionId"] == version
    assert display_name(after) == renamed
    assert world.triage.load_chart(second).conflicts == frozenset()
    # nor said to be: the save's Provenance and AuditEvent name what it created, no update
    activity, targets, action, entities = _said_written(world, saved.outbox_id)
    assert (activity, action) == ("CREATE", "C")
    assert f"RelatedPerson/{child_id}" not in targets | entities


def _said_written(world: World, outbox_id: int) -> tuple[str, set[str], str, set[str]]:
    """What a delivered save's Provenance (its activity, its targets) and AuditEvent (its
    action, its entities: the patient and what it wrote) say it wrote; both valid."""
    written = written_by_save(world, outbox_id)
    (provenance,) = (r for r in written if r["resourceType"] == "Provenance")
    (event,) = (r for r in written if r["resourceType"] == "AuditEvent")
    assert validate(provenance) == []
    assert validate(event) == []
    targets = {t["reference"] for t in provenance["target"]}
    entities = {e["what"]["reference"] for e in event["entity"]}
    return provenance["activity"]["coding"][0]["code"], targets, event["action"], entities


def test_fault_a_conflict_notice_cleared_by_a_later_save_stays_cleared_once_it_is_purged(
    database: Database, tmp_path: Path
) -> None:
    """A conflict is told until a later save names the child. That save delivered, its
    payload emptied by retention (``kindreflex db purge``): the chart could no longer see
    that it named the child, and told the long-redone conflict again."""
    with _refused_as_a_conflict(database, tmp_path) as (outage, _client, _child_id):
        world = outage.world
        patient = outage.server.seeded.patient("els-goossens")
        nurse = world.launch(patient.id, patient.arrived_encounter_id, "Practitioner/nurse-p")
        chart = world.triage.load_chart(nurse)
        assert len(chart.conflicts) == 1
        shown = next(c for c in chart.children if c.ref in chart.conflicts)
        redone = replace(shown, name="Noor Goossens")
        saved = world.triage.record_triage(
            nurse, no_concern(nurse, tuple(redone if c is shown else c for c in chart.children))
        )
        assert saved.status == "delivered"
        assert world.triage.load_chart(nurse).conflicts == frozenset()
        with database.session() as session:  # as retention.purge leaves a delivered entry
            session.execute(
                update(OutboxEntry)
                .where(OutboxEntry.id == saved.outbox_id)
                .values(bundle=PURGED_BUNDLE)
            )

        after = world.triage.load_chart(nurse)

    assert after.conflicts == frozenset()
    assert "Noor Goossens" in {c.name for c in after.children}


def test_fault_an_edit_of_a_child_deleted_before_delivery_is_a_conflict(
    database: Database, tmp_path: Path
) -> None:
    """The EHR deletes the child (a duplicate merged away) while the nurse's edit waits: the
    update is refused as a conflict, as any change since the version she saw, and the
    chart no longer shows the child; reading the deleted child (410) does not make the
    save a failure."""
    outage = _edit_during_outage(database, tmp_path, "Noor Goossens")
    child_id = outage.children[0].ref.split("/")[1]

    with outage.restart() as server:
        deleted = httpx.delete(f"{server.base_url}/RelatedPerson/{child_id}", timeout=10)
        deleted.raise_for_status()
        outage.world.clock.advance(120)
        outage.world.outbox.run_once()

        assert outage.world.outbox.state_of(outage.result.outbox_id) == DeliveryState.CONFLICT


def test_fault_an_edit_the_server_refused_for_another_reason_is_told_on_the_chart(
    database: Database, tmp_path: Path
) -> None:
    """An edit saved during an outage whose save the server refuses at delivery, not as a
    conflict (a 4xx for its content: here an entry it cannot take, added to the queued
    bundle): the entry is failed, for a person. The chart showed the server's version as
    'already in the record' without a word, the edit silently gone; it now names the child
    among ``failed`` (shown as the server has it) until a later save names it again."""
    outage = _edit_during_outage(database, tmp_path, "Noor Goossens")
    world = outage.world
    child_id = outage.children[0].ref.split("/")[1]
    patient = outage.server.seeded.patient("els-goossens")
    bundle = outbox_entry(database, outage.result.outbox_id).bundle
    refused = {
        "resource": {"resourceType": "NoSuchType"},
        "request": {"method": "POST", "url": "NoSuchType"},
    }
    with database.session() as session:
        session.execute(
            update(OutboxEntry)
            .where(OutboxEntry.id == outage.result.outbox_id)
            .values(bundle={**bundle, "entry": [*bundle["entry"], refused]})
        )

    with outage.restart() as server, FhirClient(server.base_url, lambda: "loopback", 5.0) as client:
        world.clock.advance(120)
        world.outbox.run_once()
        assert world.outbox.state_of(outage.result.outbox_id) == DeliveryState.FAILED
        stored = client.read("RelatedPerson", child_id)
        nurse = world.launch(patient.id, patient.arrived_encounter_id, "Practitioner/nurse-f")
        chart = world.triage.load_chart(nurse)
        shown = next(c for c in chart.children if c.ref.split("/")[1] == child_id)
        redone = replace(shown, name="Noor Goossens")
        saved = world.triage.record_triage(
            nurse, no_concern(nurse, tuple(redone if c is shown else c for c in chart.children))
        )
        after = world.triage.load_chart(nurse)

    assert shown.ref == f"RelatedPerson/{child_id}/_history/{stored['meta']['versionId']}"
    assert shown.name != "Noor Goossens"  # the server's version
    assert chart.failed == {shown.ref}
    assert chart.conflicts == chart.pending == frozenset()
    assert saved.status == "delivered"
    assert after.failed == after.conflicts == frozenset()


def test_fault_a_pending_edit_corrected_on_the_chart_is_delivered_with_the_correction(
    database: Database, tmp_path: Path
) -> None:
    """The chart shows an edit waiting for delivery and asks to correct it where needed.
    A colleague corrects it: her save updated the version the edit was made on, which the
    first save's delivery had replaced, so the server refused it as a conflict (her whole
    save with it) though nobody else had changed the child. Her correction now applies
    over the edit once it is delivered: both saves delivered, the child has her name."""
    outage = _edit_during_outage(database, tmp_path, "Noor Goossens")
    world = outage.world
    edited_ref = outage.children[0].ref
    patient = outage.server.seeded.patient("els-goossens")

    with outage.restart() as server, FhirClient(server.base_url, lambda: "loopback", 5.0) as client:
        colleague = world.launch(patient.id, patient.arrived_encounter_id, "Practitioner/c-2")
        chart = world.triage.load_chart(colleague)
        assert chart.pending == {edited_ref}
        corrected = tuple(
            replace(c, name="Noor Goossens-Peeters") if c.ref == edited_ref else c
            for c in chart.children
        )
        saved = world.triage.record_triage(
            colleague, no_concern(colleague, corrected, page=chart.page)
        )
        world.clock.advance(120)
        world.outbox.run_once()
        world.clock.advance(600)
        world.outbox.run_once()
        states = [world.outbox.state_of(r.outbox_id) for r in (outage.result, saved)]
        after = client.read("RelatedPerson", edited_ref.split("/")[1])

    assert states == [DeliveryState.DELIVERED, DeliveryState.DELIVERED]
    assert display_name(after) == "Noor Goossens-Peeters"
    assert validate(after) == []


def _x_loaded_then_outage(
    database: Database, tmp_path: Path
) -> tuple[_OwnServer, World, tuple[str, str], LaunchContext, RecordedChart]:
    """Nurse X's page of the returning patient, loaded from a FHIR server of the test's
    own; then the server stops. Returns the server, the world, the visit, X's launch and
    X's page."""
    server = _OwnServer.start(tmp_path)
    patient = server.seeded.patient("els-goossens")
    world = world_at(database, server.base_url)
    visit = (patient.id, patient.arrived_encounter_id or "")
    x = world.launch(*visit, "Practitioner/nurse-x")
    loaded = world.triage.load_chart(x)
    server.stop()
    return server, world, visit, x, loaded


def test_fault_a_colleagues_refused_edit_her_page_showed_is_not_written_under_her_name(
    database: Database, tmp_path: Path
) -> None:
    """During an outage nurse X renames the two children; X's save waits. Nurse A's page
    shows both renames waiting; A corrects the eldest's birth date and leaves the rest as
    shown. The EHR changes the second child first: X's save is refused, and the eldest
    stays as it was. A's save wrote X's refused name of the eldest with her date, under
    her name: she had only left it as her page showed it (found by review). Of what her
    page showed, only what she changed is hers: her date, the eldest's own name."""
    server, world, visit, x, loaded = _x_loaded_then_outage(database, tmp_path)
    eldest, second = loaded.children[0], loaded.children[1]
    by_x = tuple(
        replace(c, name="Noor X")
        if c is eldest
        else replace(c, name="Emma X")
        if c is second
        else c
        for c in loaded.children
    )
    saves = [world.triage.record_triage(x, no_concern(x, by_x, page=loaded.page))]
    a = world.launch(*visit, "Practitioner/nurse-a")
    a_page = world.triage.pending_chart(a)
    earlier = eldest.birth_date - timedelta(days=1)
    by_a = tuple(
        replace(c, birth_date=earlier) if c.name == "Noor X" else c for c in a_page.children
    )
    saves.append(world.triage.record_triage(a, no_concern(a, by_a, page=a_page.page)))
    with server.restart() as again, FhirClient(again.base_url, lambda: "loopback", 5.0) as client:
        _changed_by_someone_else(client, second.ref.split("/")[1])
        states = _each_delivered(world, saves)
        stored = client.read("RelatedPerson", eldest.ref.split("/")[1])

    assert sorted(c.name for c in a_page.children) == ["Emma X", "Noor X"]
    assert states == [DeliveryState.CONFLICT, DeliveryState.DELIVERED]
    assert display_name(stored) == eldest.name
    assert stored["birthDate"] == earlier.isoformat()


def test_fault_a_delivered_edit_her_refused_save_left_as_shown_is_not_marked(
    database: Database, tmp_path: Path
) -> None:
    """A renames the eldest; delivered. Someone else changes the second child. A saves her
    page again (the Back button), the eldest as she had saved it, the second child renamed:
    refused (the second child). The eldest was marked "someone else changed it first",
    though the record holds it as her page showed it and as her refused save wrote it
    (found by review). A child the record holds as the refused save wrote it is not
    marked."""
    with _her_rename_delivered(database, tmp_path) as hers:
        second = next(c for c in hers.by_a if c.name != "Noor A")
        _changed_by_someone_else(hers.client, second.ref.split("/")[1])
        again = tuple(replace(c, name="Emma A") if c is second else c for c in hers.by_a)
        with pytest.raises(SaveConflict):
            hers.world.triage.record_triage(
                hers.a, no_concern(hers.a, again, page=hers.a_page.page)
            )
        chart = hers.world.triage.load_chart(hers.a)

    eldest = next(c for c in chart.children if c.name == "Noor A")
    recorded_second = next(c for c in chart.children if c.ref.startswith(unversioned(second.ref)))
    assert eldest.ref not in chart.conflicts | chart.changed_elsewhere
    assert recorded_second.ref in chart.conflicts


def test_fault_a_waiting_child_a_later_save_created_as_entered_is_not_marked_failed(
    database: Database, tmp_path: Path
) -> None:
    """During an outage nurse 1 renames the eldest and adds Mila; her save waits. Nurse A's
    page shows both waiting. Nurse 1's save is refused (failed: an entry the server cannot
    take). A saves her page as it showed it: delivered, the eldest renamed and Mila created
    as nurse 1 entered them. Mila stayed marked "failed" on nurse 1's chart, though on the
    record as entered (A's page showed her waiting, so A's save did not count as naming
    her; found by review). The record holds what the refused save wrote: no mark."""
    server = _OwnServer.start(tmp_path)
    patient = server.seeded.patient("els-goossens")
    world = world_at(database, server.base_url)
    visit = (patient.id, patient.arrived_encounter_id or "")
    first = world.launch(*visit, "Practitioner/nurse-1")
    loaded = world.triage.load_chart(first).children
    server.stop()
    by_1 = (replace(loaded[0], name="Noor 1"), *loaded[1:], MILA)
    s0 = world.triage.record_triage(first, no_concern(first, by_1))
    bundle = outbox_entry(database, s0.outbox_id).bundle
    unknown = {  # refused by the server: the save fails as a whole
        "resource": {"resourceType": "NoSuchType"},
        "request": {"method": "POST", "url": "NoSuchType"},
    }
    with database.session() as session:
        session.execute(
            update(OutboxEntry)
            .where(OutboxEntry.id == s0.outbox_id)
            .values(bundle={**bundle, "entry": [*bundle["entry"], unknown]})
        )
    a = world.launch(*visit, "Practitioner/nurse-a")
    a_page = world.triage.pending_chart(a)
    with server.restart():
        states = _each_delivered(world, [s0])
        saved = world.triage.record_triage(
            a, no_concern(a, tuple(a_page.children), page=a_page.page)
        )
        chart = world.triage.load_chart(first)

    assert states == [DeliveryState.FAILED]
    assert saved.status == "delivered"
    mila = next(c for c in chart.children if c.name == MILA.name)
    eldest = next(c for c in chart.children if c.name == "Noor 1")
    assert eldest.ref not in chart.failed
    assert mila.ref not in chart.failed


def test_fault_her_correction_of_a_waiting_edit_of_a_child_since_deleted_is_a_conflict(
    database: Database, tmp_path: Path
) -> None:
    """During an outage nurse X renames the eldest and corrects its birth date; A's page
    shows X's edit waiting, and A puts the name back, keeping X's date. The EHR deletes
    the child before delivery: X's save is a conflict, and A's save was "delivered", her
    findings naming a deleted child (the read of the child now, gone, was taken for "not
    changed since", and her undo of X's name for nothing to write: found by review). It
    is a conflict too."""
    server, world, visit, x, loaded = _x_loaded_then_outage(database, tmp_path)
    eldest = loaded.children[0]
    earlier = eldest.birth_date - timedelta(days=1)
    by_x = tuple(
        replace(c, name="Noor X", birth_date=earlier) if c is eldest else c for c in loaded.children
    )
    saves = [world.triage.record_triage(x, no_concern(x, by_x, page=loaded.page))]
    a = world.launch(*visit, "Practitioner/nurse-a")
    a_page = world.triage.pending_chart(a)
    by_a = tuple(replace(c, name=eldest.name) if c.name == "Noor X" else c for c in a_page.children)
    saves.append(world.triage.record_triage(a, no_concern(a, by_a, page=a_page.page)))
    with server.restart() as again:
        child = f"{again.base_url}/RelatedPerson/{eldest.ref.split('/')[1]}"
        httpx.delete(child, timeout=10).raise_for_status()
        states = _each_delivered(world, saves)

    assert states == [DeliveryState.CONFLICT, DeliveryState.CONFLICT]


@pytest.mark.parametrize("theirs", ["birth-date", "name"])
def test_fault_a_pending_edit_corrected_then_changed_by_someone_else_is_merged_or_a_conflict(
    database: Database, tmp_path: Path, theirs: str
) -> None:
    """The same correction, but someone else changed the child after the first save's
    edit was delivered. Another element (the birth date): merged, her name and their date
    (until 2026-12-06 her correction was refused, though nobody changed what she changed).
    The name: her correction is refused as a conflict, their name kept."""
    outage = _edit_during_outage(database, tmp_path, "Noor Goossens")
    world = outage.world
    edited_ref = outage.children[0].ref
    child_id = edited_ref.split("/")[1]
    patient = outage.server.seeded.patient("els-goossens")

    with outage.restart() as server, FhirClient(server.base_url, lambda: "loopback", 5.0) as client:
        colleague = world.launch(patient.id, patient.arrived_encounter_id, "Practitioner/c-3")
        chart = world.triage.load_chart(colleague)
        world.clock.advance(120)
        world.outbox.run_once()
        assert world.outbox.state_of(outage.result.outbox_id) == DeliveryState.DELIVERED
        if theirs == "name":
            _named(client, child_id, text="Noor-Marie Goossens", given=["Noor-Marie"])
        else:
            _changed_by_someone_else(client, child_id)
        changed = client.read("RelatedPerson", child_id)
        corrected = tuple(
            replace(c, name="Noor Goossens-Peeters") if c.ref == edited_ref else c
            for c in chart.children
        )
        findings = no_concern(colleague, corrected, page=chart.page)
        status: str
        try:
            status = world.triage.record_triage(colleague, findings).status
        except SaveConflict:
            status = "conflict"
        after = client.read("RelatedPerson", child_id)

    assert after["birthDate"] == changed["birthDate"]
    if theirs == "name":
        assert status == "conflict"
        assert after["name"] == changed["name"]
    else:
        assert status == "delivered"
        assert display_name(after) == "Noor Goossens-Peeters"
