"""Tables of the foundation. Feature modules add their own models next to their migration.

Every table that holds data or configuration belongs to exactly one tenant (hospital).
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, ClassVar

from sqlalchemy import JSON, Date, ForeignKey, Index, String, Text, UniqueConstraint, false, text
from sqlalchemy.orm import Mapped, declared_attr, mapped_column

from service.db.base import Base, UTCDateTime, utcnow


class Tenant(Base):
    """A hospital served by this deployment."""

    __tablename__ = "tenants"

    id: Mapped[int] = mapped_column(primary_key=True)
    slug: Mapped[str] = mapped_column(String(63), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class TenantScoped:
    """Mixin for every tenant-owned table: a non-null, indexed ``tenant_id``.

    A table whose unique constraint or index already starts with ``tenant_id`` sets
    ``tenant_id_indexed_by_constraint``: a second index would only cost every insert."""

    tenant_id_indexed_by_constraint: ClassVar[bool] = False

    @declared_attr
    def tenant_id(cls) -> Mapped[int]:  # noqa: N805 - SQLAlchemy passes the class
        index = not cls.tenant_id_indexed_by_constraint
        return mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=index)


class TenantConfigVersion(TenantScoped, Base):
    """One saved version of a tenant's configuration document (never updated, only added)."""

    __tablename__ = "tenant_config_versions"
    __table_args__ = (UniqueConstraint("tenant_id", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    version: Mapped[int]
    document: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    created_by: Mapped[str] = mapped_column(String(500))


# --- SMART App Launch and the deployment's signing keys (smart_app/, service/keys.py) ---


class SigningKey(Base):
    """One of the deployment's own signing keys (private_key_jwt client assertions).

    Deliberately NOT tenant-scoped, like ``tenants``: the deployment publishes one JWKS at
    ``/.well-known/jwks.json`` that every hospital's EHR registers.
    """

    __tablename__ = "signing_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    kid: Mapped[str] = mapped_column(String(64), unique=True)
    alg: Mapped[str] = mapped_column(String(10))
    private_key: Mapped[str] = mapped_column(Text)  # PEM, Fernet-sealed when `sealed`
    sealed: Mapped[bool]
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    retired_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    publish_until: Mapped[datetime | None] = mapped_column(UTCDateTime())


class LaunchState(TenantScoped, Base):
    """An authorization request in flight: single-use, expiring, bound to one browser."""

    __tablename__ = "smart_launch_states"
    # Every launch counts its hospital's unexpired states and reads the first expiry
    # (``smart_app.launch._refuse_when_busy``, up to 20 000 rows): a range of this index
    # answers both without reading the rows, and it serves what tenant_id alone served.
    __table_args__ = (Index("ix_smart_launch_states_tenant_expires", "tenant_id", "expires_at"),)
    tenant_id_indexed_by_constraint = True

    state_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    browser_hash: Mapped[str] = mapped_column(String(64))
    registration_id: Mapped[str] = mapped_column(String(63))
    path_prefix: Mapped[str] = mapped_column(String(80))
    code_verifier: Mapped[str] = mapped_column(String(128))
    nonce: Mapped[str] = mapped_column(String(64))
    server: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class AppSession(TenantScoped, Base):
    """A launched app session. The browser holds only a random secret whose hash is here."""

    __tablename__ = "smart_app_sessions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    cookie_hash: Mapped[str] = mapped_column(String(64), unique=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    registration_id: Mapped[str] = mapped_column(String(63))
    # what of its registration the session is bound to, as launched: SHA-256 of its EHR,
    # client and role mapping (``smart_app.session.registration_fingerprint``); NULL for
    # one launched before 0030, which ends at the upgrade
    registration_fingerprint: Mapped[str | None] = mapped_column(String(64))
    path_prefix: Mapped[str] = mapped_column(String(80))
    fhir_base_url: Mapped[str] = mapped_column(String(500))
    token_endpoint: Mapped[str] = mapped_column(String(500))
    fhir_user: Mapped[str] = mapped_column(String(500))
    user_name: Mapped[str] = mapped_column(String(200))
    roles: Mapped[list[str]] = mapped_column(JSON)
    language: Mapped[str] = mapped_column(String(2))
    patient_id: Mapped[str | None] = mapped_column(String(64))
    # the patient's name as the FHIR server gave it to this session's triage page: what the
    # worklist shows for a concern this session raises (never a name the browser posts)
    patient_display: Mapped[str | None] = mapped_column(String(200))
    encounter_id: Mapped[str | None] = mapped_column(String(64))
    app_context: Mapped[str | None] = mapped_column(Text)
    launch_details: Mapped[dict[str, Any]] = mapped_column(JSON)
    scope: Mapped[str] = mapped_column(Text)
    access_token: Mapped[str] = mapped_column(Text)  # Fernet-sealed when `sealed`
    refresh_token: Mapped[str | None] = mapped_column(Text)
    sealed: Mapped[bool]
    access_expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    # the user's last request, to the minute (``SessionStore.touch``): past the idle limit
    # her pages are refused as after ``expires_at``; the outbox still uses the tokens
    last_active_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=utcnow)


class ShownChild(Base):
    """A child the triage page showed from the FHIR server, as shown: the version and a
    fingerprint of the values on screen. A save that posts that version with the same
    values is the nurse's confirmation, not an update (``service.triage``).

    It lives and dies with its app session (the session's purge deletes it). The values
    themselves are not kept here, only their SHA-256."""

    __tablename__ = "triage_shown_children"
    __table_args__ = (UniqueConstraint("session_id", "ref"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("smart_app_sessions.id", ondelete="CASCADE"))
    ref: Mapped[str] = mapped_column(String(200))  # RelatedPerson/<id>/_history/<version>
    fingerprint: Mapped[str] = mapped_column(String(64))


class ShownEdit(Base):
    """An edit of a child's version, waiting in the outbox (or delivered since), that a
    triage page showed: the page, the version the edit was made on and a fingerprint of
    its values (what she saved from the page: :class:`PageSave`). (Likewise a new child a
    waiting save creates, by its ``urn:uuid:``: see ``smart_app.nurse.rows_after_conflict``.)
    Only such an edit is what her page showed of the child: a save from that page lays her
    values over it (``service.triage``); another nurse's edit the page never showed is
    not hers to overwrite (If-Match refuses her save instead). By page, not by session: a
    second tab (or a page reached by Back) that never showed the edit is a page that never
    showed it.

    It lives and dies with its app session, as :class:`ShownChild`."""

    __tablename__ = "triage_shown_edits"
    __table_args__ = (UniqueConstraint("session_id", "page_id", "ref", "fingerprint"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("smart_app_sessions.id", ondelete="CASCADE"))
    page_id: Mapped[str] = mapped_column(String(32))  # service.triage.RecordedChart.page
    ref: Mapped[str] = mapped_column(String(200))  # the version edited, or urn:uuid:<child>
    fingerprint: Mapped[str] = mapped_column(String(64))


class PageSave(Base):
    """A save made from a triage page (its outbox entry). What the page's latest save wrote
    of a waiting child is what the page stands for, whatever else it showed of the child
    or another save wrote since: saved again (the Back button), the page changed nothing
    of what it had saved (``service.triage._as_the_page_stands``).

    It lives and dies with its app session, as :class:`ShownEdit`."""

    __tablename__ = "triage_page_saves"
    __table_args__ = (UniqueConstraint("session_id", "page_id", "outbox_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("smart_app_sessions.id", ondelete="CASCADE"))
    page_id: Mapped[str] = mapped_column(String(32))  # service.triage.RecordedChart.page
    outbox_id: Mapped[int] = mapped_column(
        ForeignKey("outbox_entries.id", ondelete="CASCADE"), index=True
    )


# --- EHR administrator journey (issue 6): bootstrap tokens, admin sessions, admin events ---
# Configuration changes themselves are audited by their TenantConfigVersion rows (who,
# when, the whole document); these tables hold how admins got in and what they did besides.


class AdminBootstrapToken(TenantScoped, Base):
    """A one-time token printed by ``kindreflex admin bootstrap``; only its hash is kept."""

    __tablename__ = "admin_bootstrap_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class AdminSession(TenantScoped, Base):
    """A signed-in administrator of one tenant; the browser or API client holds the token."""

    __tablename__ = "admin_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    actor: Mapped[str] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # the admin's last request, to the minute: past the idle limit the session is refused
    last_active_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=utcnow)


class AdminEvent(TenantScoped, Base):
    """Something an administrator did that is not a configuration version (sign-in, tests)."""

    __tablename__ = "admin_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(500))
    action: Mapped[str] = mapped_column(String(100))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


# --- FHIR write path (issue 4 §4): outbox, audit trail, concerns index ---
# service/outbox.py, service/audit.py; the concerns index is read by service/social.py.
# Migration 0005.


class OutboxEntry(TenantScoped, Base):
    """A FHIR transaction committed here first and delivered to the EHR's FHIR server later.

    ``state``: ``pending`` (due at ``next_attempt_at``), ``delivered``, ``failed`` (the server
    rejected it: not retried), ``conflict`` (If-Match failed: someone else changed a resource)
    or ``waiting-authorisation`` (no token: waits for the next launch for this patient).
    A worker owns an entry while ``lease_until`` lies in the future.
    """

    __tablename__ = "outbox_entries"
    __table_args__ = (
        Index("ix_outbox_entries_due", "state", "next_attempt_at"),
        Index("ix_outbox_entries_witness", "tenant_id", "witness"),
        Index("ix_outbox_entries_patient", "tenant_id", "patient_ref"),  # one patient's saves
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))
    registration_id: Mapped[str] = mapped_column(String(63))
    fhir_base_url: Mapped[str] = mapped_column(String(500))
    session_id: Mapped[str] = mapped_column(String(64))
    author: Mapped[str] = mapped_column(String(500))
    patient_ref: Mapped[str | None] = mapped_column(String(200))
    bundle: Mapped[dict[str, Any]] = mapped_column(JSON)
    witness: Mapped[str | None] = mapped_column(String(500))
    state: Mapped[str] = mapped_column(String(24))
    attempts: Mapped[int] = mapped_column(default=0)
    #: Races at delivery lost: 409/412 after another writer changed a version a
    #: create-or-merge read at delivery, not one the user was shown. Retried up to
    #: ``service.outbox.RACES_RETRIED``; a ``conflict`` with more lost one race too many
    #: (``service.outbox.kept_changing``).
    races: Mapped[int] = mapped_column(default=0, server_default="0")
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime())
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(Text)
    outcome: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    #: When the latest launch for its patient took the entry over from
    #: ``waiting-authorisation`` (``Outbox.adopt_session``); None: never. A pending entry is
    #: deliverable since then, or since its save: the readiness check's ``READY_MAX_AGE``
    #: counts from there, its ``READY_MAX_WAIT`` from ``created_at``, the save's time.
    taken_over_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class AuditRecord(TenantScoped, Base):
    """One read or write of a child's data: who, when, what, which patient, outcome.

    References only (``Patient/1``, ``RelatedPerson/7``): never names or clinical content.
    A patient is ``patient_ref`` on the FHIR server ``fhir_base_url``, as in
    :class:`Concern`. Without a patient, ``fhir_base_url`` is the server of the EHR the user
    launched from; it is None where there is none (the command line, an admin's sign-in)
    and on rows written before migration 0017 without an outbox entry.
    """

    __tablename__ = "audit_records"
    __table_args__ = (
        # one patient's rows in time order, and the servers a patient reference occurs on
        Index(
            "ix_audit_records_patient", "tenant_id", "patient_ref", "fhir_base_url", "recorded_at"
        ),
        # the save's own row of a failed delivery (service.outbox), and ``kindreflex audit``
        Index("ix_audit_records_outbox", "outbox_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    actor: Mapped[str] = mapped_column(String(500))
    action: Mapped[str] = mapped_column(String(20))
    fhir_base_url: Mapped[str | None] = mapped_column(String(500))
    patient_ref: Mapped[str | None] = mapped_column(String(200))
    entities: Mapped[list[str]] = mapped_column(JSON)
    outcome: Mapped[str] = mapped_column(String(20))
    outbox_id: Mapped[int | None] = mapped_column(ForeignKey("outbox_entries.id"))


class Concern(TenantScoped, Base):
    """The worklist index: one open (or closed) Kindreflex concern per patient and Flag.

    The FHIR Flag is the source of truth; this row makes the social service's worklist fast.
    ``row_version`` guards against two social workers changing the same case at once.
    A patient is ``patient_ref`` on the FHIR server ``fhir_base_url``: a hospital with two
    EHRs has two servers, on which ``Patient/123`` may be two different people.
    """

    __tablename__ = "concerns"
    __table_args__ = (
        UniqueConstraint("tenant_id", "flag_identifier"),
        Index("ix_concerns_worklist", "tenant_id", "status", "flagged_at", "id"),
        # the screen's order: acute danger first, then newest (social.list_cases)
        Index(
            "ix_concerns_worklist_acute", "tenant_id", "status", "acute_danger", "flagged_at", "id"
        ),
        Index("ix_concerns_outbox", "outbox_id"),  # the case of a refused save
        Index("ix_concerns_patient", "tenant_id", "patient_ref", "status"),
        Index("ix_concerns_follow_up", "tenant_id", "status", "follow_up_due"),
        # At most one open concern per patient, even when two nurses save at the same moment.
        Index(
            "uq_concerns_open_patient",
            "tenant_id",
            "fhir_base_url",
            "patient_ref",
            unique=True,
            sqlite_where=text("status = 'open'"),
            postgresql_where=text("status = 'open'"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    fhir_base_url: Mapped[str] = mapped_column(String(500))
    patient_ref: Mapped[str] = mapped_column(String(200))
    patient_display: Mapped[str | None] = mapped_column(String(200))
    flag_identifier: Mapped[str] = mapped_column(String(64))
    flagged_at: Mapped[datetime] = mapped_column(UTCDateTime())
    flagged_by: Mapped[str] = mapped_column(String(500))
    #: The flagging nurse's name (None: not known; the worklist shows ``flagged_by``).
    flagged_by_display: Mapped[str | None] = mapped_column(String(200))
    triggers: Mapped[list[str]] = mapped_column(JSON)
    children_birth_dates: Mapped[list[str]] = mapped_column(JSON)
    last_step: Mapped[str] = mapped_column(String(20))
    #: The case's route comes from an acute-danger finding (the protocol's ``acute_danger``):
    #: the worklist marks it.
    acute_danger: Mapped[bool] = mapped_column(default=False, server_default=false())
    #: The next step 5 follow-up (None: none planned); the worklist's overdue filter.
    follow_up_due: Mapped[date | None] = mapped_column(Date)
    assigned_to: Mapped[str | None] = mapped_column(String(500))
    #: The assignee's name (None: not known; the worklist shows ``assigned_to``).
    assigned_to_display: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(20))
    outbox_id: Mapped[int | None] = mapped_column(ForeignKey("outbox_entries.id"))
    #: The index as it was before the social save ``outbox_id`` (last step, status, follow-up,
    #: acute danger): what the row goes back to when the FHIR server refuses that save, be it
    #: at once or later to the worker (``service.casework.undo_refused_save``).
    before_save: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    #: When the case was last closed (None: never): a closed case's days open count up to
    #: it. Kept when the case is reopened, so a refused reopening undone has it again.
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    row_version: Mapped[int] = mapped_column(default=1)

    __mapper_args__ = {"version_id_col": row_version}  # noqa: RUF012 - SQLAlchemy API


# --- CDS Hooks (service/cds) ------------------------------------------------------------


class CdsSeenToken(TenantScoped, Base):
    """A CDS Hooks JWT already accepted: its ``jti`` may not be used again before it expires.

    The unique constraint is the replay check, shared by every instance of the service;
    rows past ``expires_at`` are purged (an expired token is refused anyway).
    """

    __tablename__ = "cds_seen_tokens"
    __table_args__ = (UniqueConstraint("tenant_id", "issuer", "jti"),)
    tenant_id_indexed_by_constraint = True  # every hook call writes a row here

    id: Mapped[int] = mapped_column(primary_key=True)
    issuer: Mapped[str] = mapped_column(String(500))
    jti: Mapped[str] = mapped_column(String(255))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class CdsFeedback(TenantScoped, Base):
    """What the user did with a card (CDS Hooks feedback), for the monitoring figures.

    The user's free-text comment is not kept: it may name the patient, and the figures
    need only the coded outcome and reason.
    """

    __tablename__ = "cds_feedback"
    # the same feedback posted twice (a client retry) is stored once
    __table_args__ = (UniqueConstraint("tenant_id", "card_uuid", "outcome", "outcome_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    service_id: Mapped[str] = mapped_column(String(63))
    card_uuid: Mapped[str] = mapped_column(String(36))
    outcome: Mapped[str] = mapped_column(String(16))
    override_system: Mapped[str | None] = mapped_column(String(500))
    override_code: Mapped[str | None] = mapped_column(String(100))
    outcome_at: Mapped[datetime] = mapped_column(UTCDateTime())
    issuer: Mapped[str | None] = mapped_column(String(500))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


# --- Monitoring (issue 5 §6): the cards the CDS service returned; migration 0008 ---------
# service/monitoring.py counts from these rows, cds_feedback, the outbox and the concerns.


class CdsCard(TenantScoped, Base):
    """One card returned by a CDS hook call, for the monitoring figures.

    ``presentation`` is a one-way key of the ED presentation (``service.monitoring.
    presentation_key``): it counts presentations without keeping a patient or encounter id.
    """

    __tablename__ = "cds_cards"
    __table_args__ = (
        UniqueConstraint("tenant_id", "card_uuid"),
        Index("ix_cds_cards_issued", "tenant_id", "issued_at"),
    )
    tenant_id_indexed_by_constraint = True  # every hook call with a card writes a row here

    id: Mapped[int] = mapped_column(primary_key=True)
    service_id: Mapped[str] = mapped_column(String(63))
    card_uuid: Mapped[str] = mapped_column(String(36))
    indicator: Mapped[str] = mapped_column(String(10))
    reasons: Mapped[list[str]] = mapped_column(JSON)
    presentation: Mapped[str] = mapped_column(String(64))
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime())


#: The monitoring reads the saves of a period per kind (triage, social) from the outbox.
Index(
    "ix_outbox_entries_monitoring",
    OutboxEntry.tenant_id,
    OutboxEntry.kind,
    OutboxEntry.created_at,
)


class MonitoringSave(TenantScoped, Base):
    """An outbox save (kind triage or social) already read for the monitoring figures.

    Reading a save's bundle once, not on every report, keeps a year's report fast. No
    foreign key to the outbox: what was read stays counted if outbox rows are ever purged.
    ``readable`` False: the bundle could not be read back (logged; shown on the report).
    """

    __tablename__ = "monitoring_saves"
    __table_args__ = (Index("ix_monitoring_saves_saved", "tenant_id", "saved_at"),)

    outbox_id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    saved_at: Mapped[datetime] = mapped_column(UTCDateTime())
    readable: Mapped[bool]


class MonitoringFinding(TenantScoped, Base):
    """One step finding of a save, reduced to what the figures count — no patient, no text.

    ``case_key``: the concern Flag's identifier (``save-<outbox id>`` for a save without a
    Flag); ``outcome``: the step's coded value (step 2 assessment, step 4 decision, step 5
    progress, step 6 target); ``acute_danger``: a step 2 marked acute danger (None: read
    before migration 0029 from a save since emptied, not known).
    """

    __tablename__ = "monitoring_findings"
    __table_args__ = (
        UniqueConstraint("outbox_id", "finding_id"),
        Index("ix_monitoring_findings_saved", "tenant_id", "saved_at", "step"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    outbox_id: Mapped[int]
    finding_id: Mapped[str] = mapped_column(String(64))
    step: Mapped[str] = mapped_column(String(10))
    case_key: Mapped[str] = mapped_column(String(200))
    outcome: Mapped[str | None] = mapped_column(String(40))
    acute_danger: Mapped[bool | None]
    children: Mapped[int]
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime())
    saved_at: Mapped[datetime] = mapped_column(UTCDateTime())
