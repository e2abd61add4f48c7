"""Data retention: what this service keeps no longer than it needs (``kindreflex db purge``).

* A delivered outbox entry's bundle holds the nurse's or social worker's input (children's
  names, reasons). Once it is on the FHIR server and monitoring has read it into its own
  tables (``monitoring_saves``), the copy here has done its work: after the retention
  period its payload is emptied. A purge first reads the saves monitoring has not read
  yet (``monitoring.read_new_saves``; a hospital that never opens its figures would
  otherwise keep every child's name for good). The row itself stays, because audit rows
  and the worklist refer to it and monitoring reads its delivery state. Entries not
  delivered (pending, failed, conflict, waiting) or younger are left alone: they may
  still need a person or a retry.
* A closed case's row of the worklist index keeps the patient's name and the children's
  birth dates for the social service's list. Once the case has been closed (unchanged)
  for the retention period, and its closing is on the hospital's FHIR server, both are
  emptied: the case stays there, and the list shows it by its patient reference. An open
  case keeps them, however old: the social service works on it; so does one whose
  closing is still on its way (the server may refuse it, and the case is open again).
* Admin sessions that expired or ended, and bootstrap tokens that expired or were used,
  are deleted (they only hold hashes, but a dead credential has no reason to stay).
* Expired app sessions are deleted with the EHR's access and refresh tokens they hold
  (and what their triage pages showed), and abandoned launch states with them. A launch
  does this too (``SessionStore.purge_expired``), but a quiet service must not keep an
  EHR's refresh token until the next launch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Text, and_, cast, delete, exists, func, or_, select, update
from sqlalchemy.orm import Session

from service import monitoring
from service.db.base import Database, utcnow
from service.db.models import (
    AdminBootstrapToken,
    AdminSession,
    AppSession,
    Concern,
    LaunchState,
    MonitoringSave,
    OutboxEntry,
)
from service.outbox import UNDELIVERED_STATES, DeliveryState

#: How long a delivered entry keeps its payload by default (``--days``).
DEFAULT_RETENTION = timedelta(days=30)
#: What a purged entry's bundle becomes (the column is required): an empty transaction.
PURGED_BUNDLE = {"resourceType": "Bundle", "type": "transaction", "entry": []}
#: As stored (both databases keep the JSON text they were given): purged rows are skipped,
#: so a second purge changes and counts nothing.
_PURGED_TEXT = json.dumps(PURGED_BUNDLE)
_NO_BIRTH_DATES = json.dumps([])


@dataclass(frozen=True)
class Purged:
    """How many rows one purge changed."""

    payloads: int
    closed_cases: int
    admin_sessions: int
    bootstrap_tokens: int
    app_sessions: int
    launch_states: int


#: Delivered payloads emptied per transaction: SQLite has one writer at a time, and one
#: transaction over a backlog held every hook call's and save's write for up to a minute.
PURGE_BATCH = 500


def purge(
    database: Database,
    retention: timedelta,
    now: datetime | None = None,
    batch: int = PURGE_BATCH,
) -> Purged:
    """Empty old delivered payloads, once monitoring has counted them; drop dead admin access.

    In short transactions: the saves not yet counted are read first, then the payloads are
    emptied ``batch`` at a time, then the rest. Each is whole and may run again: a purge
    interrupted halfway leaves what it did consistent, and the next one goes on. (It was
    one transaction: on SQLite a backlog of 20,000 held the one write lock for a minute,
    and the nightly job over its deadline never got anywhere; found by review.)"""
    if retention < timedelta(0):
        raise ValueError("the retention period cannot be negative")
    now = now or utcnow()
    with database.session() as session:
        for tenant_id in session.scalars(select(OutboxEntry.tenant_id).distinct()).all():
            monitoring.read_new_saves(session, tenant_id)
    payloads = 0
    delivered_before = min(now - retention, _oldest_live_session(database, now) or now)
    while emptied := _empty_payloads(database, delivered_before, batch):
        payloads += emptied
    with database.session() as session:
        closed_cases = _forget_closed_cases(session, now - retention)
        sessions = session.execute(
            delete(AdminSession).where(
                or_(AdminSession.expires_at <= now, AdminSession.ended_at.is_not(None))
            )
        )
        tokens = session.execute(
            delete(AdminBootstrapToken).where(
                or_(AdminBootstrapToken.expires_at <= now, AdminBootstrapToken.used_at.is_not(None))
            )
        )
        app_sessions, launch_states = drop_expired_launches(session, now)
        return Purged(
            payloads,
            closed_cases,
            int(sessions.rowcount),  # type: ignore[attr-defined]
            int(tokens.rowcount),  # type: ignore[attr-defined]
            app_sessions,
            launch_states,
        )


def _oldest_live_session(database: Database, now: datetime) -> datetime | None:
    """When the oldest app session still alive began. A payload delivered since is kept,
    whatever the retention: a triage page of that session may have shown its save
    waiting, and a later save from the page is merged against it
    (``service.triage._queued_children``). Emptied (``--days 0``), the page's new child
    became a plain conditional create that found the child and wrote none of her changes
    (found by review)."""
    with database.session() as session:
        return session.scalar(
            select(func.min(AppSession.created_at)).where(AppSession.expires_at > now)
        )


def _empty_payloads(database: Database, delivered_before: datetime, batch: int) -> int:
    """Empty up to ``batch`` payloads delivered before ``delivered_before`` and counted by
    the monitoring; how many (0: none left)."""
    # by the primary key of monitoring_saves (an outbox id is the save's, of one hospital):
    # IN over the hospital's counted saves was evaluated anew for every row of each batch
    counted = select(MonitoringSave.outbox_id).where(MonitoringSave.outbox_id == OutboxEntry.id)
    due = [
        OutboxEntry.state == DeliveryState.DELIVERED,
        OutboxEntry.delivered_at < delivered_before,
        exists(counted),
        cast(OutboxEntry.bundle, Text) != _PURGED_TEXT,
    ]
    with database.session() as session:
        ids = session.scalars(select(OutboxEntry.id).where(*due).limit(batch)).all()
        if not ids:
            return 0
        emptied = session.execute(
            update(OutboxEntry)
            .where(OutboxEntry.id.in_(ids), *due)  # again: another purge may have been first
            .values(bundle=PURGED_BUNDLE, outcome=None, last_error=None)
            .execution_options(synchronize_session=False)
        )
        return int(emptied.rowcount)  # type: ignore[attr-defined]


def _forget_closed_cases(session: Session, closed_before: datetime) -> int:
    """Empty the patient's name and the children's birth dates of the cases closed and
    unchanged since before ``closed_before``, their closing delivered; how many."""
    undelivered = select(OutboxEntry.id).where(
        OutboxEntry.id == Concern.outbox_id, OutboxEntry.state.in_(UNDELIVERED_STATES)
    )
    forgotten = session.execute(
        update(Concern)
        .where(
            Concern.status == "closed",
            Concern.updated_at < closed_before,
            # a closing still on its way may be refused, and the case open again
            ~exists(undelivered),
            or_(
                Concern.patient_display.is_not(None),
                cast(Concern.children_birth_dates, Text) != _NO_BIRTH_DATES,
            ),
        )
        # a new row version: a social worker's page of the case still open cannot save over it
        .values(patient_display=None, children_birth_dates=[], row_version=Concern.row_version + 1)
        .execution_options(synchronize_session=False)
    )
    return int(forgotten.rowcount)  # type: ignore[attr-defined]


#: How long an ended app session no save needs is kept: longer than a save takes to commit.
ENDED_SESSION_GRACE = timedelta(minutes=5)


def drop_expired_launches(session: Session, now: datetime) -> tuple[int, int]:
    """Delete expired app sessions (with their tokens) and abandoned launch states; how
    many of each.

    An ended session that a save still waiting for delivery needs, and whose access token
    still lives, stays until it expires, without its refresh token (an ended session does
    not refresh) nor its launch's context: the save made just before the end is delivered
    with it (``SessionTokens.access_token``). Deleted at once, the save waited for a
    sign-in and held back the patient's later saves (found by review). Any other ended
    session goes: kept while its token lived (up to a year), it held the nurse's name, the
    patient and a live bearer token well past what the README promises (found by review).
    """
    needed = exists().where(
        OutboxEntry.session_id == AppSession.id, OutboxEntry.state.in_(UNDELIVERED_STATES)
    )
    # a save that began just before the end may not have committed its entry yet: its
    # session is given a moment (review: a purge at that moment left it waiting for a sign-in)
    unneeded = and_(AppSession.expires_at <= now - ENDED_SESSION_GRACE, ~needed)
    app_sessions = session.execute(
        delete(AppSession).where(
            AppSession.expires_at <= now, or_(AppSession.access_expires_at <= now, unneeded)
        )
    )
    session.execute(
        update(AppSession)
        .where(AppSession.expires_at <= now)
        .values(refresh_token=None, app_context=None, launch_details={})
    )
    states = session.execute(delete(LaunchState).where(LaunchState.expires_at <= now))
    return int(app_sessions.rowcount), int(states.rowcount)  # type: ignore[attr-defined]
