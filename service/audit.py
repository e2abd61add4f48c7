"""The audit trail: every read and write of a child's data, kept here and sent to FHIR.

Each event is stored twice:

* locally (``audit_records``): tenant, when, who (fhirUser), action, patient reference and
  the FHIR server it is on (a hospital with two EHRs has two servers, on which
  ``Patient/123`` may be two different people), what (references only — never names or
  clinical content), outcome. For a write it points at the outbox entry that carries the
  data, whose state tells the delivery;
* as a FHIR R4 ``AuditEvent`` on the hospital's server. A write's AuditEvent travels in
  the same transaction as the data (so it exists exactly when the data does, and a
  save stays one FHIR request); a read's AuditEvent is an outbox entry of its own,
  delivered by the worker so that the nurse does not wait for it.

The guide has no AuditEvent profile (``docs/architecture.md``, Audit): the events conform
to base R4, coded with the R4 audit vocabularies. AuditEvent has no business identifier in
R4: a write's AuditEvent is kept single by its transaction's witness (``service.outbox``);
a read's may, rarely, be recorded twice when the answer to its delivery was lost —
harmless for an audit trail, and cheaper than making every read wait.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal
from urllib.parse import urlsplit

from sqlalchemy import ColumnElement, insert, or_, select
from sqlalchemy.orm import Session

from service.db.models import AuditRecord, OutboxEntry
from service.fhir.client import Resource
from service.fhir.mapping import instant_text
from service.outbox import NewEntry, TransactionBuilder, enqueue

# HL7's base R4 vocabularies of AuditEvent (not the guide's: it has no AuditEvent codes).
_EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
_INTERACTION = "http://hl7.org/fhir/restful-interaction"
_ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
_OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
_SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
# A sign-in is not a REST interaction: R4's audit-event-type takes DICOM's codes for it.
_DICOM = "http://dicom.nema.org/resources/ontology/DCM"
_USER_AUTHENTICATION = {"system": _DICOM, "code": "110114", "display": "User Authentication"}
_LOGIN = {"system": _DICOM, "code": "110122", "display": "Login"}

#: How the service names itself as the AuditEvent's observer (a display-only reference).
OBSERVER = "Kindreflex-ED"


class AuditAction(StrEnum):
    """What was done; the value is the R4 restful-interaction code."""

    READ = "read"
    SEARCH = "search-type"
    CREATE = "create"
    UPDATE = "update"
    #: A save that creates some resources and updates others in one FHIR transaction: R4's
    #: code for it; "update" said of resources it created was wrong (found by review).
    TRANSACTION = "transaction"
    LOGIN = "login"  # a SMART launch: the user signed in to the app (DICOM 110122)

    @property
    def crude(self) -> str:
        """AuditEvent.action: C, R, U, or E for a query, a mixed transaction or a sign-in
        (as IHE codes them)."""
        codes = {
            "read": "R",
            "search-type": "E",
            "create": "C",
            "update": "U",
            "transaction": "E",
            "login": "E",
        }
        return codes[self.value]

    @classmethod
    def of_write(cls, stable_references: Sequence[str]) -> AuditAction:
        """What a social save did, from its entries' stable references: a conditional
        create is ``Type?identifier=…``, an update the resource's own reference. (A
        triage save knows only at delivery whether its merges update: ``service.triage``.)"""
        creates = any("?" in ref for ref in stable_references)
        updates = any("?" not in ref for ref in stable_references)
        if creates and updates:
            return cls.TRANSACTION
        return cls.UPDATE if updates else cls.CREATE


Outcome = Literal["success", "failure"]
_OUTCOME_CODE = {"success": "0", "failure": "8"}


def actor_url(fhir_user: str, fhir_base_url: str) -> str:
    """The user as the audit names them: ``fhirUser`` as an absolute URL.

    SMART lets an EHR send ``fhirUser`` relative to the FHIR base of the launch
    (``Practitioner/5``). Kept so, the users of a hospital's two EHRs would share one name
    in the trail: a social worker of one EHR sees the other's patients on the worklist,
    and ``kindreflex audit --actor`` reads the rows of every EHR. The clinical resources
    keep ``fhirUser`` as the EHR sent it (``performer``, Provenance), a reference on the
    server it is written to; only the audit, which spans servers, needs the absolute form.
    """
    if urlsplit(fhir_user).scheme:
        return fhir_user
    return f"{fhir_base_url.rstrip('/')}/{fhir_user.lstrip('/')}"


@dataclass(frozen=True)
class AuditFact:
    """One audited access. ``actor``: a user as :func:`actor_url` names them, or a command
    (``kindreflex audit (alice)``). ``entities`` are references (``RelatedPerson/7``, or
    ``RelatedPerson?identifier=…`` for a resource not yet on the server)."""

    actor: str
    action: AuditAction
    patient_ref: str | None
    entities: tuple[str, ...]
    outcome: Outcome
    at: datetime


@dataclass(frozen=True)
class Channel:
    """Where and on whose behalf a read's AuditEvent is sent (from the launch context)."""

    tenant_id: int
    registration_id: str
    fhir_base_url: str
    session_id: str


def audit_event(fact: AuditFact, entity_references: Sequence[str] = ()) -> Resource:
    """The R4 AuditEvent of ``fact``. ``entity_references`` replace ``fact.entities`` as the
    references written to FHIR (e.g. ``urn:uuid:`` entries of the same transaction)."""
    entities = [_patient_entity(fact.patient_ref)] if fact.patient_ref else []
    entities += [
        {"what": {"reference": ref}, "type": {"system": _ENTITY_TYPE, "code": "2"}}
        for ref in (entity_references or _resolvable(fact.entities))
    ]
    login = fact.action is AuditAction.LOGIN
    return {
        "resourceType": "AuditEvent",
        "type": _USER_AUTHENTICATION if login else {"system": _EVENT_TYPE, "code": "rest"},
        "subtype": [_LOGIN if login else {"system": _INTERACTION, "code": fact.action.value}],
        "action": fact.action.crude,
        "recorded": instant_text(fact.at),
        "outcome": _OUTCOME_CODE[fact.outcome],
        "agent": [{"who": {"reference": fact.actor}, "requestor": True}],
        "source": {
            "observer": {"display": OBSERVER},
            "type": [{"system": _SOURCE_TYPE, "code": "4"}],  # application server
        },
        "entity": entities,
    }


def _patient_entity(patient_ref: str) -> Resource:
    return {
        "what": {"reference": patient_ref},
        "type": {"system": _ENTITY_TYPE, "code": "1"},  # person
        "role": {"system": _OBJECT_ROLE, "code": "1"},  # patient
    }


def _resolvable(entities: Sequence[str]) -> list[str]:
    """Literal references only: a search-style reference is meaningless once stored."""
    return [ref for ref in entities if "?" not in ref]


def record_local(
    session: Session,
    tenant_id: int,
    fact: AuditFact,
    fhir_base_url: str | None,
    outbox_id: int | None = None,
) -> AuditRecord:
    """The local audit row (in the caller's unit of work). ``fhir_base_url`` is the FHIR
    server the patient is on (without a patient: the user's EHR; None: no EHR at all), so
    that one patient's rows are not mixed with another's of the same reference."""
    row = AuditRecord(**_columns(tenant_id, fact, fhir_base_url, outbox_id))
    session.add(row)
    return row


def _columns(
    tenant_id: int, fact: AuditFact, fhir_base_url: str | None, outbox_id: int | None = None
) -> dict[str, Any]:
    """The ``audit_records`` row of ``fact``, column by column."""
    return {
        "tenant_id": tenant_id,
        "recorded_at": fact.at,
        "actor": fact.actor,
        "action": fact.action.value,
        "fhir_base_url": fhir_base_url,
        "patient_ref": fact.patient_ref,
        "entities": list(fact.entities),
        "outcome": fact.outcome,
        "outbox_id": outbox_id,
    }


@dataclass(frozen=True)
class Listed:
    """A patient a listing showed: ``patient_ref`` on the FHIR server ``fhir_base_url``, in
    the hospital ``tenant_id``."""

    tenant_id: int
    fhir_base_url: str
    patient_ref: str


def record_listing(session: Session, actor: str, listed: Iterable[Listed], at: datetime) -> None:
    """A listing that shows patients (the worklist, ``kindreflex outbox waiting``), read by
    ``actor``: a ``search-type`` row per patient listed, once each, on its hospital and FHIR
    server, so that the patient's own trail (``trail`` matches ``patient_ref``) shows who
    saw them listed. A listing of no patient leaves no row: it showed nobody's data.

    One INSERT of all the rows in the caller's unit of work, not a row object each: a
    worklist page lists up to 200 cases and is opened all day."""
    rows = [
        _columns(
            p.tenant_id,
            AuditFact(actor, AuditAction.SEARCH, p.patient_ref, (), "success", at),
            p.fhir_base_url,
        )
        for p in dict.fromkeys(listed)
    ]
    if rows:
        session.execute(insert(AuditRecord), rows)


def record_read(session: Session, channel: Channel, fact: AuditFact) -> AuditRecord:
    """A read (or a sign-in: an event that writes no data of its own): the local row and
    its AuditEvent queued in the outbox, in one unit of work."""
    transaction = TransactionBuilder()
    transaction.add(audit_event(fact))
    entry = enqueue(
        session,
        channel.tenant_id,
        NewEntry(
            kind="audit",
            registration_id=channel.registration_id,
            fhir_base_url=channel.fhir_base_url,
            session_id=channel.session_id,
            author=fact.actor,
            patient_ref=fact.patient_ref,
            bundle=transaction.bundle(),
        ),
    )
    return record_local(session, channel.tenant_id, fact, channel.fhir_base_url, entry.id)


# -- reading the trail ----------------------------------------------------------------------


@dataclass(frozen=True)
class TrailQuery:
    """Which audit rows to read: one hospital's, optionally one patient's (``patient_ref``
    on the FHIR server ``fhir_base_url``), one user's, and a period (``since`` included,
    ``until`` excluded). A server also selects the rows that have none recorded (see
    :class:`AuditRecord`): they may be of that server's patient, and are shown as such."""

    tenant_id: int
    patient_ref: str | None = None
    fhir_base_url: str | None = None
    actor: str | None = None
    since: datetime | None = None
    until: datetime | None = None


class AmbiguousPatientError(Exception):
    """A patient reference that the trail has on more than one FHIR server."""

    def __init__(self, patient_ref: str, servers: Sequence[str]) -> None:
        super().__init__(
            f"{patient_ref} has audit rows on {len(servers)} FHIR servers, on which it may be "
            f"different people: {', '.join(servers)}. Nothing was printed: name the patient's "
            "server with --fhir-server."
        )
        self.servers = tuple(servers)


def one_patient(session: Session, query: TrailQuery) -> TrailQuery:
    """``query`` with the FHIR server of its patient filled in when the trail has that
    reference on one server only. Raises :class:`AmbiguousPatientError` when it has it on
    several and the query names none: their rows together would mix people."""
    if query.patient_ref is None or query.fhir_base_url is not None:
        return query
    recorded = select(AuditRecord.fhir_base_url).where(*_matching(query)).distinct()
    servers = sorted(s for s in session.scalars(recorded) if s is not None)
    if len(servers) > 1:
        raise AmbiguousPatientError(query.patient_ref, servers)
    return replace(query, fhir_base_url=next(iter(servers), None))


def _matching(query: TrailQuery) -> list[ColumnElement[bool]]:
    """The conditions of the rows ``query`` selects."""
    conditions = [AuditRecord.tenant_id == query.tenant_id]
    if query.patient_ref is not None:
        conditions.append(AuditRecord.patient_ref == query.patient_ref)
    if query.fhir_base_url is not None:
        on_server = AuditRecord.fhir_base_url == query.fhir_base_url
        conditions.append(or_(on_server, AuditRecord.fhir_base_url.is_(None)))
    if query.actor is not None:
        conditions.append(AuditRecord.actor == query.actor)
    if query.since is not None:
        conditions.append(AuditRecord.recorded_at >= query.since)
    if query.until is not None:
        conditions.append(AuditRecord.recorded_at < query.until)
    return conditions


def trail(
    session: Session, query: TrailQuery, *, leaving_out: int | None = None
) -> Iterator[dict[str, object]]:
    """The rows in the order they were recorded, each with the delivery state of the save
    it belongs to (a write's data travels in an outbox entry), streamed, not loaded whole;
    ``leaving_out``: the row recording this reading."""
    rows = session.execute(
        select(AuditRecord, OutboxEntry.state)
        .outerjoin(OutboxEntry, OutboxEntry.id == AuditRecord.outbox_id)
        .where(*_matching(query), AuditRecord.id != (leaving_out or 0))
        .order_by(AuditRecord.recorded_at, AuditRecord.id)
        .execution_options(yield_per=500)
    )
    for row, delivery in rows:
        yield {
            "recorded_at": row.recorded_at.isoformat(),
            "actor": row.actor,
            "action": row.action,
            "fhir_server": row.fhir_base_url,
            "patient": row.patient_ref,
            "entities": row.entities,
            "outcome": row.outcome,
            "delivery": delivery,
        }
