"""The migrations build the schema the models describe, on SQLite and PostgreSQL."""

from __future__ import annotations

import secrets
import uuid
from datetime import timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import (
    JSON,
    Engine,
    column,
    create_engine,
    func,
    insert,
    inspect,
    select,
    table,
    text,
    update,
)
from sqlalchemy.orm import Session

from service import monitoring
from service.db import (
    migrate,
    models,  # noqa: F401 - registers every table
)
from service.db.base import Base, Database, UTCDateTime, utcnow
from service.db.models import (
    AuditRecord,
    Concern,
    LaunchState,
    MonitoringFinding,
    MonitoringSave,
    OutboxEntry,
)
from service.fhir import mapping, terminology
from service.local_time import local_today
from service.monitoring import Figure, Period
from service.outbox import DeliveryState, NewEntry, enqueue
from service.protocol import SafetyAssessment, Step2Finding
from service.retention import PURGED_BUNDLE
from tests.support.write_path import make_tenant


def test_upgrade_creates_a_schema_equal_to_the_models(database_url: str) -> None:
    migrate.upgrade(database_url)
    engine = create_engine(database_url)
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    engine.dispose()
    assert differences == [], f"models and migrations differ: {differences}"


def test_downgrade_to_base_and_up_again(database_url: str) -> None:
    migrate.upgrade(database_url)
    migrate.downgrade(database_url, "base")
    engine = create_engine(database_url)
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    engine.dispose()
    migrate.upgrade(database_url)
    engine = create_engine(database_url)
    assert "tenants" in inspect(engine).get_table_names()
    engine.dispose()


def test_0017_gives_old_audit_rows_the_fhir_server_of_their_outbox_entry(
    database_url: str,
) -> None:
    migrate.upgrade(database_url, "0016_outbox_patient_index")
    database = Database(database_url)
    tenant = make_tenant(database, "default", "http://ehr-a.test/fhir")
    server = "http://ehr-b.test/fhir"  # the row's own, not just any of the hospital's
    with database.session() as session:
        entry_id = _old_outbox_entry(session, tenant.id, server)
        row = {
            "tenant_id": tenant.id,
            "recorded_at": utcnow(),
            "actor": "Practitioner/n",
            "action": "read",
            "patient_ref": "Patient/1",
            "entities": [],
            "outcome": "success",
        }
        # the table as 0016 left it: no fhir_base_url column yet
        session.execute(
            insert(AuditRecord),
            [{**row, "outbox_id": entry_id}, {**row, "outbox_id": None}],
        )

    migrate.upgrade(database_url)

    with database.session() as session:
        servers = session.scalars(select(AuditRecord.fhir_base_url).order_by(AuditRecord.id))
        assert list(servers) == [server, None]  # a row without an entry has no known server
    database.dispose()


#: ``outbox_entries`` as migrations 0005 to 0019 left it: the model's later columns (and
#: their defaults) are not there yet.
_OUTBOX_0019 = table(
    "outbox_entries",
    *(
        column(name)
        for name in (
            "id",
            "tenant_id",
            "kind",
            "registration_id",
            "fhir_base_url",
            "session_id",
            "author",
            "patient_ref",
            "state",
            "attempts",
        )
    ),
    column("bundle", JSON),
    column("next_attempt_at", UTCDateTime()),
    column("created_at", UTCDateTime()),
)


def _old_outbox_entry(session: Session, tenant_id: int, server: str, state: str = "pending") -> int:
    """An outbox entry as an older schema takes it (see ``_OUTBOX_0019``)."""
    now = utcnow()
    values = {
        "tenant_id": tenant_id,
        "kind": "triage",
        "registration_id": "ehr",
        "fhir_base_url": server,
        "session_id": "s1",
        "author": "Practitioner/n",
        "patient_ref": "Patient/1",
        "bundle": {},
        "state": state,
        "attempts": 0,
        "next_attempt_at": now,
        "created_at": now,
    }
    return int(
        session.execute(
            insert(_OUTBOX_0019).values(values).returning(_OUTBOX_0019.c.id)
        ).scalar_one()
    )


def test_0018_adds_the_user_names_empty_and_its_downgrade_keeps_the_rows(
    database_url: str,
) -> None:
    migrate.upgrade(database_url, "0017_audit_fhir_server")
    database = Database(database_url)
    tenant = make_tenant(database, "default", "http://ehr-a.test/fhir")
    row = {
        "tenant_id": tenant.id,
        "fhir_base_url": "http://ehr-a.test/fhir",
        "patient_ref": "Patient/1",
        "flag_identifier": "f-1",
        "flagged_at": utcnow(),
        "flagged_by": "Practitioner/n",
        "triggers": [],
        "children_birth_dates": [],
        "last_step": "step-2",
        "assigned_to": "Practitioner/sw",
        "status": "open",
        "updated_at": utcnow(),
        "row_version": 1,
    }
    with database.session() as session:
        session.execute(insert(Concern), [row])  # the table as 0017 left it: no names

    migrate.upgrade(database_url)
    with database.session() as session:
        names = session.execute(select(Concern.flagged_by_display, Concern.assigned_to_display))
        assert list(names) == [(None, None)]  # the case page fills them in
        session.execute(update(Concern).values(flagged_by_display="Sofie Maes"))
    migrate.downgrade(database_url, "0017_audit_fhir_server")

    engine = create_engine(database_url)
    columns = {c["name"] for c in inspect(engine).get_columns("concerns")}
    assert not columns & {"flagged_by_display", "assigned_to_display"}
    with engine.connect() as connection:
        assert connection.scalar(text("SELECT flagged_by FROM concerns")) == "Practitioner/n"
    engine.dispose()
    database.dispose()


def test_0023_names_a_relative_assignee_on_the_cases_fhir_server(database_url: str) -> None:
    """Two EHRs of a hospital may each have a Practitioner/sw: the case one of them claimed
    was "mine" for the other too. A relative assignee becomes absolute on the case's
    server; an absolute one, and no assignee, stay; the downgrade keeps the names."""
    migrate.upgrade(database_url, "0021_outbox_taken_over_at")
    database = Database(database_url)
    tenant = make_tenant(database, "default", "http://ehr-a.test/fhir")
    cases = [
        ("f-1", "http://ehr-a.test/fhir", "Practitioner/sw"),
        ("f-2", "http://ehr-b.test/fhir", "Practitioner/sw"),
        ("f-3", "http://ehr-a.test/fhir", "https://ehr-a.test/fhir/PractitionerRole/7"),
        ("f-4", "http://ehr-a.test/fhir", None),
    ]
    rows: list[dict[str, object]] = [
        {"tenant_id": tenant.id, "fhir_base_url": server, "patient_ref": f"Patient/{flag}",
         "flag_identifier": flag, "flagged_at": utcnow(), "flagged_by": "Practitioner/n",
         "triggers": [], "children_birth_dates": [], "last_step": "step-2",
         "assigned_to": assignee, "status": "open", "updated_at": utcnow(), "row_version": 1}
        for flag, server, assignee in cases
    ]  # fmt: skip
    with database.session() as session:
        session.execute(insert(Concern), rows)

    def assignees() -> list[str | None]:
        with database.session() as session:
            found = select(Concern.assigned_to).order_by(Concern.flag_identifier)
            return list(session.scalars(found))

    migrate.upgrade(database_url)
    named = [
        "http://ehr-a.test/fhir/Practitioner/sw",
        "http://ehr-b.test/fhir/Practitioner/sw",
        "https://ehr-a.test/fhir/PractitionerRole/7",
        None,
    ]
    assert assignees() == named
    migrate.downgrade(database_url, "0021_outbox_taken_over_at")
    assert assignees() == named
    database.dispose()


def _audit_row(tenant_id: int, outbox_id: int | None) -> dict[str, object]:
    """An audit row as 0017 and later keep it."""
    return {
        "tenant_id": tenant_id,
        "recorded_at": utcnow(),
        "actor": "Practitioner/n",
        "action": "create",
        "fhir_base_url": "http://ehr-a.test/fhir",
        "patient_ref": "Patient/1",
        "entities": [],
        "outcome": "success",
        "outbox_id": outbox_id,
    }


def _outbox_index(engine: Engine) -> list[list[str | None]]:
    """The columns of each index on ``audit_records.outbox_id`` alone."""
    indexes = inspect(engine).get_indexes("audit_records")
    return [i["column_names"] for i in indexes if i["name"] == "ix_audit_records_outbox"]


def test_0019_indexes_audit_rows_by_outbox_entry_and_its_downgrade_keeps_the_rows(
    database_url: str,
) -> None:
    migrate.upgrade(database_url, "0018_concern_user_names")
    database = Database(database_url)
    tenant = make_tenant(database, "default", "http://ehr-a.test/fhir")
    with database.session() as session:
        session.execute(insert(AuditRecord), [_audit_row(tenant.id, None)])

    migrate.upgrade(database_url)
    engine = create_engine(database_url)
    assert _outbox_index(engine) == [["outbox_id"]]
    migrate.downgrade(database_url, "0018_concern_user_names")
    assert _outbox_index(engine) == []
    with engine.connect() as connection:
        assert connection.scalar(text("SELECT count(*) FROM audit_records")) == 1
    engine.dispose()
    database.dispose()


@pytest.mark.parametrize(
    ("before", "column", "existing"),
    [("0019_audit_outbox_index", "races", 0), ("0020_outbox_races", "taken_over_at", None)],
)
def test_0020_and_0021_fill_existing_entries_and_their_downgrades_keep_them(
    database_url: str, before: str, column: str, existing: object
) -> None:
    """An entry saved before counts no races (0020) and was not taken over (0021). Both
    columns are added and dropped in place on SQLite too: a copy of the table (what batch
    mode does) fails on the audit rows that refer to its entries."""
    migrate.upgrade(database_url, before)
    database = Database(database_url)
    tenant = make_tenant(database, "default", "http://ehr-a.test/fhir")
    with database.session() as session:
        entry_id = _old_outbox_entry(session, tenant.id, "http://ehr-a.test/fhir")
        session.execute(insert(AuditRecord), [_audit_row(tenant.id, entry_id)])

    migrate.upgrade(database_url)
    with database.session() as session:
        assert list(session.scalars(select(getattr(OutboxEntry, column)))) == [existing]
    migrate.downgrade(database_url, before)

    engine = create_engine(database_url)
    assert column not in {c["name"] for c in inspect(engine).get_columns("outbox_entries")}
    with engine.connect() as connection:  # the audit row referring to the entry stays
        assert connection.scalar(text("SELECT count(*) FROM outbox_entries")) == 1
        assert connection.scalar(text("SELECT count(*) FROM audit_records")) == 1
    engine.dispose()
    database.dispose()


def test_0028_gives_closed_cases_their_last_change_as_closing_and_its_downgrade_keeps_them(
    database_url: str,
) -> None:
    """A case closed before 0028 counts its days open up to its row's last change (its
    closing, or a referral's status updated later): the Flag's end is on the FHIR server."""
    migrate.upgrade(database_url, "0023_concern_assignee_absolute")
    database = Database(database_url)
    tenant = make_tenant(database, "default", "http://ehr-a.test/fhir")
    flagged = utcnow() - timedelta(days=400)
    rows: list[dict[str, object]] = [
        {
            "tenant_id": tenant.id,
            "fhir_base_url": "http://ehr-a.test/fhir",
            "patient_ref": f"Patient/{status}",
            "flag_identifier": f"f-{status}",
            "flagged_by": "Practitioner/n",
            "last_step": "step-6",
            "status": status,
            "triggers": [],
            "children_birth_dates": [],
            "flagged_at": flagged,
            "updated_at": flagged + timedelta(days=10),
            "row_version": 1,
        }
        for status in ("open", "closed")
    ]
    with database.session() as session:  # the table as 0023 left it: no closed_at
        session.execute(insert(Concern), rows)

    migrate.upgrade(database_url)
    with database.session() as session:
        closed = dict(session.execute(select(Concern.status, Concern.closed_at)).all())
    assert closed == {"open": None, "closed": flagged + timedelta(days=10)}
    migrate.downgrade(database_url, "0023_concern_assignee_absolute")

    engine = create_engine(database_url)
    assert "closed_at" not in {c["name"] for c in inspect(engine).get_columns("concerns")}
    with engine.connect() as connection:
        assert connection.scalar(text("SELECT count(*) FROM concerns")) == 2
    engine.dispose()
    database.dispose()


def _step_2_save_read_before_0029(session: Session, tenant_id: int, *, purged: bool) -> int:
    """A nurse's save of an unclear situation with acute danger, delivered, and read for the
    monitoring as a release before 0029 read it (no acute danger); ``purged``: its payload
    emptied since. Its outbox id."""
    finding = Step2Finding(
        recorded_by="Practitioner/n",
        recorded_at=utcnow(),
        assessment=SafetyAssessment.UNCLEAR,
        reasons=("Kinderen vaak alleen thuis.",),
        acute_danger=True,
    )
    finding_id = str(uuid.uuid4())
    observation = mapping.finding_observation(
        finding,
        patient_ref="Patient/1",
        encounter_ref=None,
        child_refs={},
        identifier={"system": terminology.identifier_system("finding"), "value": finding_id},
    )
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": observation}]}
    entry = enqueue(
        session,
        tenant_id,
        NewEntry(
            "triage",
            "ehr",
            "http://ehr-a.test/fhir",
            "s1",
            "Practitioner/n",
            "Patient/1",
            PURGED_BUNDLE if purged else bundle,
        ),
    )
    entry.state = DeliveryState.DELIVERED
    session.flush()
    saved = {"tenant_id": tenant_id, "outbox_id": entry.id, "saved_at": utcnow()}
    session.execute(insert(MonitoringSave), [{**saved, "readable": True}])
    read = {"finding_id": finding_id, "step": "step-2", "case_key": "c", "outcome": "unclear"}
    row = {**saved, **read, "children": 0, "recorded_at": finding.recorded_at}
    session.execute(insert(MonitoringFinding), [row])  # as 0009 left the table
    return entry.id


def test_0029_reads_again_the_step_2_saves_whose_payload_is_kept_for_their_acute_danger(
    database_url: str,
) -> None:
    """The figures did not read a step 2's acute danger. A save read before whose payload is
    still there is read again, its acute danger counted; one the purge emptied keeps its
    finding, the acute danger not known (NULL), since the payload was its only copy."""
    migrate.upgrade(database_url)
    migrate.downgrade(database_url, "0009_monitoring_saves")  # only 0029 undone
    database = Database(database_url)
    tenant = make_tenant(database, "default", "http://ehr-a.test/fhir")
    with database.session() as session:
        _step_2_save_read_before_0029(session, tenant.id, purged=False)
        emptied = _step_2_save_read_before_0029(session, tenant.id, purged=True)

    migrate.upgrade(database_url)
    with database.session() as session:
        assert session.scalars(select(MonitoringSave.outbox_id)).all() == [emptied]
        kept = select(MonitoringFinding.outbox_id, MonitoringFinding.acute_danger)
        assert session.execute(kept).all() == [(emptied, None)]
        today = local_today()
        figures = monitoring.figures(session, tenant.id, Period(today, today))
    assert figures.values[Figure.UNCLEAR].count == 2
    assert figures.values[Figure.STEP_2_ACUTE_DANGER].count == 1
    migrate.downgrade(database_url, "0009_monitoring_saves")

    engine = create_engine(database_url)
    columns = {c["name"] for c in inspect(engine).get_columns("monitoring_findings")}
    assert "acute_danger" not in columns
    with engine.connect() as connection:
        assert connection.scalar(text("SELECT count(*) FROM monitoring_findings")) == 2
    engine.dispose()
    database.dispose()


def test_0031_counts_a_session_open_at_the_upgrade_as_used_then_and_its_downgrade_keeps_it(
    database_url: str,
) -> None:
    """A session open at the upgrade records no last use: it counts as used at the
    upgrade, so that the inactivity limit signs nobody out at the upgrade itself."""
    before = "0030_session_fingerprint"
    migrate.upgrade(database_url, before)
    migrate.upgrade(database_url, "0006_admin")
    database = Database(database_url)
    tenant = make_tenant(database, "default", "http://ehr-a.test/fhir")
    sessions = table(
        "admin_sessions",
        column("tenant_id"),
        column("token_hash"),
        column("actor"),
        column("created_at", UTCDateTime()),
        column("expires_at", UTCDateTime()),
    )
    signed_in = utcnow() - timedelta(hours=3)
    with database.session() as session:
        session.execute(
            insert(sessions).values(
                tenant_id=tenant.id,
                token_hash="0" * 64,
                actor="Els",
                created_at=signed_in,
                expires_at=signed_in + timedelta(hours=8),
            )
        )

    upgraded = utcnow()
    migrate.upgrade(database_url)
    last_used = table("admin_sessions", column("last_active_at", UTCDateTime()))
    with database.session() as session:
        (recorded,) = session.scalars(select(last_used.c.last_active_at)).all()
    assert recorded >= upgraded - timedelta(seconds=1)
    migrate.downgrade(database_url, before)

    engine = create_engine(database_url)
    for name in ("admin_sessions", "smart_app_sessions"):
        assert "last_active_at" not in {c["name"] for c in inspect(engine).get_columns(name)}
    with engine.connect() as connection:
        assert connection.scalar(text("SELECT count(*) FROM admin_sessions")) == 1
    engine.dispose()
    database.dispose()


def test_a_failed_deliverys_audit_row_is_found_by_the_index(postgres_url: str) -> None:
    """The outbox's look-up of a failed entry's audit row (``service.outbox``), among many
    rows of other saves: PostgreSQL's plan reads the index, not the whole trail."""
    migrate.upgrade(postgres_url)
    database = Database(postgres_url)
    tenant = make_tenant(database, "default", "http://ehr-a.test/fhir")
    with database.session() as session:
        entry = enqueue(
            session,
            tenant.id,
            NewEntry("triage", "ehr", "http://ehr-a.test/fhir", "s1", "Practitioner/n",
                     "Patient/1", {}),
        )  # fmt: skip
        session.flush()
        others = [_audit_row(tenant.id, None) for _ in range(5000)]
        session.execute(insert(AuditRecord), [*others, _audit_row(tenant.id, entry.id)])
    lookup = select(AuditRecord).where(AuditRecord.outbox_id == entry.id).order_by(AuditRecord.id)
    engine = create_engine(postgres_url)
    with engine.connect() as connection:
        connection.execute(text("ANALYZE audit_records"))
        statement = lookup.compile(engine, compile_kwargs={"literal_binds": True})
        plan = "\n".join(connection.scalars(text(f"EXPLAIN {statement}")))
    assert "ix_audit_records_outbox" in plan, plan
    engine.dispose()
    database.dispose()


def _launch_state(tenant_id: int, expires_in: timedelta) -> dict[str, object]:
    """A launch state as 0004 and later keep it."""
    return {
        "state_hash": secrets.token_hex(32),
        "browser_hash": secrets.token_hex(32),
        "tenant_id": tenant_id,
        "registration_id": "ehr",
        "path_prefix": "",
        "code_verifier": "v",
        "nonce": "n",
        "server": {},
        "created_at": utcnow(),
        "expires_at": utcnow() + expires_in,
    }


def _launch_state_indexes(engine: Engine) -> list[list[str | None]]:
    """The columns of each index of ``smart_launch_states`` that starts with tenant_id."""
    indexes = inspect(engine).get_indexes("smart_launch_states")
    return sorted(i["column_names"] for i in indexes if i["column_names"][0] == "tenant_id")


def test_0022_indexes_launch_states_by_tenant_and_expiry_and_its_downgrade_keeps_the_rows(
    database_url: str,
) -> None:
    """The composite index replaces the one on tenant_id alone, which it covers."""
    migrate.upgrade(database_url, "0011_triage_shown_children")
    database = Database(database_url)
    tenant = make_tenant(database, "default", "http://ehr-a.test/fhir")
    with database.session() as session:
        session.execute(insert(LaunchState), [_launch_state(tenant.id, timedelta(minutes=10))])
    engine = create_engine(database_url)
    assert _launch_state_indexes(engine) == [["tenant_id"]]

    migrate.upgrade(database_url)
    assert _launch_state_indexes(engine) == [["tenant_id", "expires_at"]]
    migrate.downgrade(database_url, "0011_triage_shown_children")
    assert _launch_state_indexes(engine) == [["tenant_id"]]
    with engine.connect() as connection:
        assert connection.scalar(text("SELECT count(*) FROM smart_launch_states")) == 1
    engine.dispose()
    database.dispose()


@pytest.mark.postgres
def test_a_launch_counts_its_hospitals_launches_in_flight_from_the_index(
    postgres_url: str,
) -> None:
    """The count of ``_refuse_when_busy`` while another hospital is flooded (20 000 states
    in flight) and this one's abandoned states of the day wait for the daily purge: the
    plan reads this hospital's states in flight from the composite index, not every state
    in flight nor every one of the hospital's."""
    migrate.upgrade(postgres_url)
    database = Database(postgres_url)
    launching = make_tenant(database, "default", "http://ehr-a.test/fhir")
    flooded = make_tenant(database, "az-brugge", "http://ehr-b.test/fhir")
    with database.session() as session:
        flood = [_launch_state(flooded.id, timedelta(minutes=5)) for _ in range(20_000)]
        abandoned = [_launch_state(launching.id, -timedelta(hours=1)) for _ in range(2000)]
        in_flight = [_launch_state(launching.id, timedelta(minutes=5)) for _ in range(10)]
        session.execute(insert(LaunchState), [*flood, *abandoned, *in_flight])
    count = select(func.count(), func.min(LaunchState.expires_at)).where(
        LaunchState.tenant_id == launching.id, LaunchState.expires_at > utcnow()
    )
    engine = create_engine(postgres_url)
    with engine.connect() as connection:
        connection.execute(text("ANALYZE smart_launch_states"))
        statement = count.compile(engine, compile_kwargs={"literal_binds": True})
        plan = "\n".join(connection.scalars(text(f"EXPLAIN {statement}")))
    assert "ix_smart_launch_states_tenant_expires" in plan, plan
    engine.dispose()
    database.dispose()


def _heads(engine: Engine) -> set[str]:
    with engine.connect() as connection:
        return set(MigrationContext.configure(connection).get_current_heads())


@pytest.mark.postgres
def test_a_migration_waiting_for_a_lock_gives_up_and_changes_nothing(postgres_url: str) -> None:
    # A long report holds a read lock on `concerns`; migration 0013 alters that table. Without
    # a lock timeout the ALTER would wait, and every query of the running service on the
    # table would queue behind it.
    migrate.upgrade(postgres_url, "0010_concern_follow_up")
    engine = create_engine(postgres_url)
    before = _heads(engine)
    with engine.connect() as report:
        # ended by the server after 20 s: without the lock timeout the migration would then
        # go through, and the test fail instead of hanging
        report.execute(text("SET idle_in_transaction_session_timeout = '20s'"))
        report.execute(text("SELECT count(*) FROM concerns"))  # its transaction stays open
        with pytest.raises(migrate.MigrationLockedError, match="nothing was changed"):
            migrate.upgrade(postgres_url, lock_timeout_ms=200)
        assert _heads(engine) == before
        assert "fhir_base_url" not in {c["name"] for c in inspect(engine).get_columns("concerns")}
        report.rollback()
    migrate.upgrade(postgres_url)  # the lock released, the same command goes through
    assert "fhir_base_url" in {c["name"] for c in inspect(engine).get_columns("concerns")}
    engine.dispose()
