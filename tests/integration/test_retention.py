"""Data retention (``kindreflex db purge``) on SQLite and PostgreSQL: delivered payloads are
emptied after the retention period, once monitoring counted them (the purge counts what it
has not yet), nothing else is; dead admin access and expired app sessions (with their EHR
tokens) are deleted. The rows are made with the real outbox, admin and session functions;
a monitoring row may be inserted directly (what ``service.monitoring`` writes when it
reads a save)."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timedelta

import pytest
from sqlalchemy import select, update

from service import audit, retention
from service.admin import access
from service.audit import AuditAction, AuditFact
from service.db.base import Database, utcnow
from service.db.models import (
    AdminBootstrapToken,
    AdminSession,
    AppSession,
    AuditRecord,
    Concern,
    LaunchState,
    MonitoringSave,
    OutboxEntry,
    ShownChild,
)
from service.outbox import DeliveryState, NewEntry, enqueue
from service.settings import Settings
from service.tenancy import TenantContext
from smart_app.session import AppUser, NewSession, SessionStore
from tests.support.casework import index_case
from tests.support.sessions import launched_under
from tests.support.write_path import make_tenant

CHILD_NAME = "Lotte Janssens"  # the nurse's input in every bundle


def _save(
    database: Database,
    tenant: TenantContext,
    state: DeliveryState,
    delivered_at: datetime | None,
    counted: bool,
    session_id: str = "s1",
) -> int:
    """One triage save with its audit row, in ``state``; ``counted``: monitoring read it."""
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"resource": {"resourceType": "RelatedPerson", "name": [{"text": CHILD_NAME}]}}],
    }
    with database.session() as session:
        entry = enqueue(
            session,
            tenant.id,
            NewEntry(
                "triage",
                "ehr",
                "http://fhir.test",
                session_id,
                "Practitioner/n",
                "Patient/p",
                bundle,
            ),
        )
        fact = AuditFact("Practitioner/n", AuditAction.CREATE, "Patient/p", (), "success", utcnow())
        audit.record_local(session, tenant.id, fact, entry.fhir_base_url, entry.id)
        entry.state = state
        entry.delivered_at = delivered_at
        if counted:
            session.add(
                MonitoringSave(
                    tenant_id=tenant.id, outbox_id=entry.id, saved_at=utcnow(), readable=True
                )
            )
        return entry.id


def _bundles(database: Database) -> dict[int, str]:
    with database.session() as session:
        rows = session.execute(select(OutboxEntry.id, OutboxEntry.bundle)).all()
    return {entry_id: str(bundle) for entry_id, bundle in rows}


def test_only_old_delivered_counted_payloads_are_emptied_and_dead_admin_access_dropped(
    database: Database,
) -> None:
    hospital = make_tenant(database, "default", "http://fhir.test")
    other = make_tenant(database, "hospital-b", "http://fhir.test")
    now = utcnow()
    month_ago, recently = now - timedelta(days=31), now - timedelta(days=11)
    old = _save(database, hospital, DeliveryState.DELIVERED, month_ago, counted=True)
    other_old = _save(database, other, DeliveryState.DELIVERED, month_ago, counted=True)
    uncounted = _save(database, hospital, DeliveryState.DELIVERED, month_ago, counted=False)
    recent = _save(database, hospital, DeliveryState.DELIVERED, recently, counted=True)
    needs_a_person = [
        _save(database, hospital, state, None, counted=True)
        for state in (DeliveryState.FAILED, DeliveryState.CONFLICT, DeliveryState.PENDING)
    ]
    live = access.open_session(database, hospital.id, "Els", via="test")
    ended = access.open_session(database, hospital.id, "Jan", via="test")
    access.open_session(database, hospital.id, "Piet", via="test", ttl=timedelta(seconds=-1))
    live_token, _ = access.issue_bootstrap_token(database, hospital.id)
    used_token, _ = access.issue_bootstrap_token(database, hospital.id)
    redeemed = access.redeem_bootstrap_token(database, hospital.id, used_token, "Karel")
    access.issue_bootstrap_token(database, hospital.id, ttl=timedelta(seconds=-1))
    with database.session() as session:
        session.execute(
            update(AdminSession).where(AdminSession.actor == ended.actor).values(ended_at=now)
        )

    purged = retention.purge(database, timedelta(days=30), batch=2)  # in two transactions

    assert purged == retention.Purged(
        payloads=3,
        closed_cases=0,
        admin_sessions=2,
        bootstrap_tokens=2,
        app_sessions=0,
        launch_states=0,
    )
    bundles = _bundles(database)
    # a save nobody's view of the figures had counted is counted by the purge, then emptied:
    # before, a hospital that never opened its figures kept every child's name for good
    for emptied in (old, other_old, uncounted):
        assert CHILD_NAME not in bundles[emptied]
    for kept in (recent, *needs_a_person):
        assert CHILD_NAME in bundles[kept]
    with database.session() as session:
        assert session.scalar(select(MonitoringSave).filter_by(outbox_id=uncounted)) is not None
    with database.session() as session:
        audited = session.scalars(select(AuditRecord.outbox_id).order_by(AuditRecord.id)).all()
        actors = session.scalars(select(AdminSession.actor)).all()
        unused = select(AdminBootstrapToken.id).where(AdminBootstrapToken.used_at.is_(None))
        tokens = session.scalars(unused).all()
    assert audited == [old, other_old, uncounted, recent, *needs_a_person]  # the trail stays
    assert sorted(actors) == sorted([live.actor, redeemed.actor])
    assert access.authenticate(database, live.token) is not None
    assert len(tokens) == 1  # the unused, unexpired one
    again = retention.purge(database, timedelta(days=30))
    assert again == retention.Purged(0, 0, 0, 0, 0, 0)  # safe to run again: nothing left to do
    assert access.redeem_bootstrap_token(database, hospital.id, live_token, "Els").token


def _app_session(
    database: Database,
    tenant: TenantContext,
    expires_in: timedelta,
    access_expires_in: timedelta = timedelta(seconds=-1),
) -> str:
    """A launched app session holding the EHR's tokens, expiring ``expires_in`` from now,
    its access token ``access_expires_in`` from now."""
    store = SessionStore(database, Settings(environment="test", database_url="sqlite://"))
    session_id, _cookie = store.create(
        NewSession(
            tenant_id=tenant.id,
            registration_id="ehr",
            registration_fingerprint=launched_under(tenant, "ehr"),
            path_prefix="",
            fhir_base_url="http://fhir.test",
            token_endpoint="http://ehr.test/token",
            user=AppUser("Practitioner/n", "Sofie Maes", frozenset({"nurse"})),
            language="nl",
            patient_id="p",
            encounter_id="e",
            app_context=None,
            launch_details={},
            scope="launch openid fhirUser patient/*.rs offline_access",
            access_token="access-secret",
            refresh_token="refresh-secret",
            access_expires_at=utcnow() + access_expires_in,
        )
    )
    with database.session() as session:
        expiry = utcnow() + expires_in
        session.execute(
            update(AppSession).where(AppSession.id == session_id).values(expires_at=expiry)
        )
        session.add(
            ShownChild(
                session_id=session_id, ref="RelatedPerson/7/_history/1", fingerprint="0" * 64
            )
        )
    return session_id


def _launch_state(database: Database, tenant: TenantContext, expires_in: timedelta) -> str:
    """An authorization request in flight (as ``/launch`` stores it)."""
    state_hash = os.urandom(32).hex()
    with database.session() as session:
        session.add(
            LaunchState(
                tenant_id=tenant.id,
                state_hash=state_hash,
                browser_hash="b" * 64,
                registration_id="ehr",
                path_prefix="",
                code_verifier="v" * 64,
                nonce="n" * 32,
                server={},
                expires_at=utcnow() + expires_in,
            )
        )
    return state_hash


def test_expired_app_sessions_go_with_their_tokens_and_what_their_pages_showed(
    database: Database,
) -> None:
    """Without any launch to clean up, ``db purge`` deletes expired app sessions."""
    hospital = make_tenant(database, "default", "http://fhir.test")
    _app_session(database, hospital, timedelta(seconds=-1))
    live = _app_session(database, hospital, timedelta(hours=1), timedelta(minutes=5))
    _launch_state(database, hospital, timedelta(seconds=-1))
    in_flight = _launch_state(database, hospital, timedelta(minutes=5))

    purged = retention.purge(database, timedelta(days=30))

    assert (purged.app_sessions, purged.launch_states) == (1, 1)
    with database.session() as session:
        assert session.scalars(select(AppSession.id)).all() == [live]
        assert session.scalars(select(ShownChild.session_id)).all() == [live]
        assert session.scalars(select(LaunchState.state_hash)).all() == [in_flight]


def test_a_payload_delivered_since_a_live_app_session_began_is_kept_whatever_the_retention(
    database: Database,
) -> None:
    """A page of a live session may have shown a save waiting that is delivered since, and
    its later save is merged against that save's payload: ``--days 0`` emptied it, and the
    page's change of a new child was dropped (found by review). Kept until the session
    ends; what was delivered before it began is emptied."""
    hospital = make_tenant(database, "default", "http://fhir.test")
    now = utcnow()
    live = _app_session(database, hospital, timedelta(hours=1), timedelta(minutes=5))
    with database.session() as session:
        began = now - timedelta(hours=2)
        session.execute(update(AppSession).where(AppSession.id == live).values(created_at=began))
    since = _save(database, hospital, DeliveryState.DELIVERED, now - timedelta(hours=1), True)
    before = _save(database, hospital, DeliveryState.DELIVERED, now - timedelta(hours=3), True)

    assert retention.purge(database, timedelta(0), now=now).payloads == 1
    assert CHILD_NAME in _bundles(database)[since]
    assert CHILD_NAME not in _bundles(database)[before]
    assert retention.purge(database, timedelta(0), now=now + timedelta(hours=2)).payloads == 1
    assert CHILD_NAME not in _bundles(database)[since]


def test_a_case_closed_for_the_retention_period_forgets_the_names_an_open_one_keeps_them(
    database: Database,
) -> None:
    """The worklist index kept the patient's name and the children's birth dates of every
    case closed, for good, though the case is on the hospital's FHIR server."""
    hospital = make_tenant(database, "default", "http://fhir.test")
    other = make_tenant(database, "hospital-b", "http://fhir.test")
    now = utcnow()
    month_ago, recently = now - timedelta(days=31), now - timedelta(days=11)
    cases = {
        "closed long ago": _case(database, hospital, "closed", month_ago),
        "of another hospital": _case(database, other, "closed", month_ago),
        "closed recently": _case(database, hospital, "closed", recently),
        "open long": _case(database, hospital, "open", month_ago),
        # the server may still refuse this closing, and the case is open again (found by
        # review): it keeps what the worklist shows
        "closing on its way": _case(
            database, hospital, "closed", month_ago, DeliveryState.WAITING_AUTHORISATION
        ),
    }

    purged = retention.purge(database, timedelta(days=30))

    assert purged.closed_cases == 2
    with database.session() as session:
        rows = {name: session.get(Concern, case_id) for name, case_id in cases.items()}
        kept = {
            name: (row.patient_display, row.children_birth_dates, row.row_version)
            for name, row in rows.items()
            if row is not None
        }
    assert kept == {
        "closed long ago": (None, [], 2),  # a page of it still open cannot save over this
        "of another hospital": (None, [], 2),
        "closed recently": ("Janssens, Eva", ["2019-05-01"], 1),
        "open long": ("Janssens, Eva", ["2019-05-01"], 1),
        "closing on its way": ("Janssens, Eva", ["2019-05-01"], 1),
    }
    assert retention.purge(database, timedelta(days=30)).closed_cases == 0


def _case(
    database: Database,
    tenant: TenantContext,
    status: str,
    changed_at: datetime,
    latest_save: DeliveryState = DeliveryState.DELIVERED,
) -> int:
    """A case on the worklist index with its patient's name, last changed ``changed_at``
    by a save (its closing, for a closed case) now ``latest_save``."""
    case_id = index_case(database, tenant, "Patient/p", changed_at, status=status)
    delivered = changed_at if latest_save == DeliveryState.DELIVERED else None
    save = _save(database, tenant, latest_save, delivered, counted=True)
    with database.session() as session:
        session.execute(
            update(Concern)
            .where(Concern.id == case_id)
            .values(patient_display="Janssens, Eva", updated_at=changed_at, outbox_id=save)
            .execution_options(synchronize_session=False)
        )
    return case_id


def test_a_negative_retention_is_refused(database: Database) -> None:
    with pytest.raises(ValueError, match="cannot be negative"):
        retention.purge(database, timedelta(days=-1))


def test_the_cli_purges_with_the_retention_given(database_url: str, database: Database) -> None:
    hospital = make_tenant(database, "default", "http://fhir.test")
    long_ago = utcnow() - timedelta(days=10)
    entry = _save(database, hospital, DeliveryState.DELIVERED, long_ago, counted=True)
    env = {**os.environ, "KINDREFLEX_DATABASE_URL": database_url}
    command = [sys.executable, "-m", "service.cli", "db", "purge"]

    kept = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    assert "emptied 0 delivered outbox payloads older than 30 days" in kept.stdout
    assert CHILD_NAME in _bundles(database)[entry]

    emptied = subprocess.run(
        [*command, "--days", "7"], env=env, capture_output=True, text=True, check=True
    )
    assert "emptied 1 delivered outbox payloads older than 7 days" in emptied.stdout
    assert CHILD_NAME not in _bundles(database)[entry]

    refused = subprocess.run([*command, "--days", "-3"], env=env, capture_output=True, text=True)
    assert refused.returncode == 2
    assert "0..3650" in refused.stderr


def test_an_ended_session_whose_access_token_lives_stays_for_its_saves_without_refreshing(
    database: Database,
) -> None:
    """A save made just before the session ended is delivered with its access token.
    Before, the purge (or any launch) deleted the session at its end: the save waited for
    a sign-in and held back the patient's later saves (found by review). An ended session
    no save needs goes at once: kept while its token lived (up to a year), it held the
    nurse's name, the patient and a live bearer token (found by review)."""
    hospital = make_tenant(database, "default", "http://fhir.test")
    ended = _app_session(database, hospital, timedelta(seconds=-1), timedelta(minutes=5))
    idle = _app_session(database, hospital, timedelta(minutes=-6), timedelta(days=90))
    # ended a moment ago: a save of it may still be committing its entry
    just_ended = _app_session(database, hospital, timedelta(seconds=-1), timedelta(days=90))
    _save(database, hospital, DeliveryState.PENDING, None, counted=False, session_id=ended)
    _save(database, hospital, DeliveryState.DELIVERED, utcnow(), counted=False, session_id=idle)
    with database.session() as session:  # what the EHR told of the launch
        launch = {"app_context": '{"triggers":["domestic-violence"]}', "launch_details": {"a": 1}}
        session.execute(update(AppSession).values(**launch))

    assert retention.purge(database, timedelta(days=30)).app_sessions == 1
    with database.session() as session:
        assert session.get(AppSession, idle) is None
        for kept in (ended, just_ended):
            row = session.get(AppSession, kept)
            assert row is not None
            assert row.refresh_token is None  # an ended session does not refresh
            assert (row.app_context, row.launch_details) == (None, {})

    with database.session() as session:  # its access token expires in turn
        session.execute(update(AppSession).values(access_expires_at=utcnow()))
    assert retention.purge(database, timedelta(days=30)).app_sessions == 2
