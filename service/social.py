"""The social service's case work (issue 5): its list of cases, who works on which case,
and the input of steps 4, 5 and 6 checked against the guide's catalogues and the protocol.

A *case* is a row of the concerns index (``concerns``), which the triage save writes in
the same local transaction as the open-concern Flag. Listing and assigning cases is
served from that index alone, so it stays fast with 10,000 open concerns; the FHIR server
remains the source of truth for what was recorded.

Two social workers may change the same case at once. Every change names the
``row_version`` the user saw and is one conditional UPDATE on it; when another change
came first, :class:`CaseConflict` says so and nothing is overwritten.

The step inputs (:class:`Step4Input`, :class:`Step5Input`, :class:`Step6Input`) are the
request bodies of the step forms. :meth:`finding` turns one into the protocol's finding:
factor codes must exist in the guide's factor catalogue, a step 6 partner in the
hospital's own partner directory, and the protocol's rules apply
(:class:`~service.protocol.ProtocolError`).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Any, Literal, NamedTuple, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import ColumnElement, UnaryExpression, and_, false, or_, select, update
from sqlalchemy.orm import Session

from service.db.models import Concern, OutboxEntry
from service.fhir import terminology
from service.fhir.mapping import FHIR_ID
from service.local_time import LOCAL_ZONE, local
from service.partners import Partner, PartnerDirectory
from service.protocol import (
    MAX_CHILDREN,
    STEP_6_TARGETS,
    AgreedAction,
    Consultation,
    ContactChannel,
    FacilityContact,
    Factor,
    FactorKind,
    HeardChild,
    KeyPerson,
    KeyPersonRole,
    ProgressAssessment,
    ReferralTarget,
    SafetyAction,
    Step4Decision,
    Step5Progress,
    Step6Referral,
    TeamDecision,
    age_in_months,
    check_not_informed_reason,
)
from service.text import Code, OneLine, OptionalText, TypedText, worklist_display

#: The largest case id and ``row_version``: PostgreSQL's INTEGER (SQLite's is larger). A
#: bigger number from a client is refused before it reaches a query, where it failed.
MAX_ID = 2**31 - 1

CaseStatus = Literal["open", "closed"]
CaseView = Literal["all", "mine", "unassigned"]
CaseSort = Literal["newest", "oldest", "acute-first"]

#: Whom a case may be assigned to: a Practitioner or PractitionerRole, relative or
#: absolute (a SMART ``fhirUser`` is often an absolute URL).
_ASSIGNEE = re.compile(
    r"^(?:https?://[^\s?#]+/)?(?:Practitioner|PractitionerRole)/[A-Za-z0-9.-]{1,64}$"
)


def assignable(reference: str) -> bool:
    """Whether a case can be assigned to this user (``fhirUser``) or reference."""
    return _ASSIGNEE.match(reference) is not None


# -- the list of cases ---------------------------------------------------------------------


@dataclass(frozen=True)
class CaseFilter:
    """Which cases to list. ``older_than_days``: flagged more than N whole days ago.
    ``overdue``: only the open cases whose step 5 follow-up date has passed; ignored with
    ``status="closed"``: a closed case has no follow-up due (closing clears its date), and
    the closed list with it came back empty, as if no case had been closed."""

    status: CaseStatus = "open"
    view: CaseView = "all"
    older_than_days: int | None = None
    sort: CaseSort = "newest"
    overdue: bool = False


class Delivery(BaseModel):
    """Where the FHIR writes of the case's latest save stand."""

    state: str = Field(
        description="pending | delivered | failed | conflict | waiting-authorisation"
    )
    error: str | None = Field(None, description="The last error, e.g. the server's rejection.")
    outcome: dict[str, Any] | None = Field(
        None, description="The FHIR server's OperationOutcome when it refused the write."
    )


class CaseSummary(BaseModel):
    id: int
    patient: str = Field(description="Reference to the adult patient, e.g. `Patient/123`.")
    fhir_server: str = Field(
        description="The FHIR server the patient is on: a hospital with two EHRs has two, on "
        "which `Patient/123` may be two different people."
    )
    patient_display: str | None
    status: CaseStatus
    flagged_at: datetime
    flagged_by: str = Field(description="fhirUser of the nurse who flagged the concern.")
    flagged_by_display: str | None = Field(
        None, description="The nurse's name; null when not known (show `flagged_by`)."
    )
    triggers: list[str] = Field(description="Hague trigger codes that prompted the check.")
    children_ages: list[int] = Field(description="Age in whole years of each child, oldest first.")
    children_ages_months: list[int] = Field(
        description="Age in completed months of each child, oldest first (a newborn: 0)."
    )
    last_step: str
    acute_danger: bool = Field(
        description="The case's route comes from an acute-danger finding (parket or police)."
    )
    follow_up_due: date | None = Field(
        description="The first check the latest step 5 planned: its next follow-up or an "
        "agreed action's date, whichever comes first."
    )
    overdue: bool = Field(description="An open case whose follow-up date has passed.")
    days_open: int = Field(
        description="Whole days from the concern's flag to today; for a closed case, to "
        "its closing."
    )
    assigned_to: str | None
    assigned_to_display: str | None = Field(
        None, description="The assignee's name; null when not known (show `assigned_to`)."
    )
    row_version: int = Field(description="Send back to change the case (optimistic locking).")
    delivery: Delivery | None


class CasePage(BaseModel):
    items: list[CaseSummary]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null: done.")


class InvalidCursorError(ValueError):
    """A cursor this service did not hand out (or for another sort order)."""


def list_cases(
    session: Session,
    tenant_id: int,
    user: str,
    wanted: CaseFilter,
    *,
    limit: int,
    cursor: str | None,
    today: date,
) -> CasePage:
    """One page of the tenant's cases. Keyset pagination on ``(flagged_at, id)``, which
    the index ``ix_concerns_worklist`` serves in either direction; ``acute-first`` puts
    the cases with acute danger before the others, each group newest first."""
    query = (
        select(Concern, OutboxEntry.state, OutboxEntry.last_error, OutboxEntry.outcome)
        .outerjoin(OutboxEntry, OutboxEntry.id == Concern.outbox_id)
        .where(Concern.tenant_id == tenant_id, *_conditions(wanted, user, today))
        .order_by(*_ORDER[wanted.sort])
        .limit(limit + 1)
    )
    if cursor is not None:
        query = query.where(_after(decode_cursor(cursor, wanted.sort), wanted.sort))
    rows = session.execute(query).all()
    items = [_summary(*row, today=today) for row in rows[:limit]]
    last = rows[limit - 1][0] if len(rows) > limit else None
    return CasePage(items=items, next_cursor=encode_cursor(last, wanted.sort) if last else None)


_NEWEST = (Concern.flagged_at.desc(), Concern.id.desc())
_ORDER: dict[CaseSort, tuple[UnaryExpression[Any], ...]] = {
    "newest": _NEWEST,
    "oldest": (Concern.flagged_at.asc(), Concern.id.asc()),
    "acute-first": (Concern.acute_danger.desc(), *_NEWEST),
}


def case_summary(
    session: Session, tenant_id: int, case_id: int, *, today: date
) -> CaseSummary | None:
    """One case's row of the list (None: no such case in this hospital)."""
    row = session.execute(
        select(Concern, OutboxEntry.state, OutboxEntry.last_error, OutboxEntry.outcome)
        .outerjoin(OutboxEntry, OutboxEntry.id == Concern.outbox_id)
        .where(Concern.tenant_id == tenant_id, Concern.id == case_id)
    ).one_or_none()
    return None if row is None else _summary(*row, today=today)


def patient_case(
    session: Session, tenant_id: int, fhir_base_url: str, patient_ref: str, *, open_only: bool
) -> int | None:
    """The case a social worker opening the app from a patient's chart means: the patient's
    open one, else (unless ``open_only``) the latest closed one; None: the patient has
    none. The patient is ``patient_ref`` on ``fhir_base_url``: on another EHR's server it
    is someone else."""
    conditions = [
        Concern.tenant_id == tenant_id,
        Concern.fhir_base_url == fhir_base_url,
        Concern.patient_ref == patient_ref,
    ]
    if open_only:
        conditions.append(Concern.status == "open")
    return session.scalar(
        select(Concern.id)
        .where(*conditions)
        .order_by((Concern.status == "open").desc(), *_NEWEST)
        .limit(1)
    )


def _conditions(wanted: CaseFilter, user: str, today: date) -> list[ColumnElement[bool]]:
    conditions = [Concern.status == wanted.status]
    if wanted.view == "mine":
        conditions.append(Concern.assigned_to == user)
    elif wanted.view == "unassigned":
        conditions.append(Concern.assigned_to.is_(None))
    if wanted.overdue and wanted.status == "open":  # a closed case is never overdue
        conditions.append(Concern.follow_up_due < today)
    if wanted.older_than_days is not None:
        # "older than N days" compares whole Belgian days, as ``days_open`` shows them.
        cutoff = datetime.combine(
            today - timedelta(days=wanted.older_than_days), time(), LOCAL_ZONE
        )
        conditions.append(Concern.flagged_at < cutoff)
    return conditions


def _after(position: CursorPosition, sort: CaseSort) -> ColumnElement[bool]:
    at, row_id, acute = position
    if sort == "oldest":
        return or_(Concern.flagged_at > at, and_(Concern.flagged_at == at, Concern.id > row_id))
    later = or_(Concern.flagged_at < at, and_(Concern.flagged_at == at, Concern.id < row_id))
    if sort == "newest":
        return later
    in_same_group = and_(Concern.acute_danger == acute, later)
    # past the last acute case come all the others
    return or_(in_same_group, Concern.acute_danger == false()) if acute else in_same_group


def _summary(
    concern: Concern,
    state: str | None,
    error: str | None,
    outcome: dict[str, Any] | None,
    *,
    today: date,
) -> CaseSummary:
    births = sorted(date.fromisoformat(d) for d in concern.children_birth_dates)
    due = concern.follow_up_due
    return CaseSummary(
        id=concern.id,
        patient=concern.patient_ref,
        fhir_server=concern.fhir_base_url,
        patient_display=concern.patient_display,
        status="closed" if concern.status == "closed" else "open",
        flagged_at=concern.flagged_at,
        flagged_by=concern.flagged_by,
        flagged_by_display=concern.flagged_by_display,
        triggers=concern.triggers,
        children_ages=[age_in_months(birth, today) // 12 for birth in births],
        children_ages_months=[age_in_months(birth, today) for birth in births],
        last_step=concern.last_step,
        acute_danger=concern.acute_danger,
        follow_up_due=due,
        overdue=concern.status == "open" and due is not None and due < today,
        days_open=_days_open(concern, today),
        assigned_to=concern.assigned_to,
        assigned_to_display=concern.assigned_to_display,
        row_version=concern.row_version,
        delivery=None if state is None else Delivery(state=state, error=error, outcome=outcome),
    )


def _days_open(concern: Concern, today: date) -> int:
    """Whole Belgian days from the concern's flag to today, or to its closing for a closed
    case: reviewing closed cases, a social worker reads how long each was followed up (a
    case closed after ten days said 400 a year on). Without its closing moment (closed by a
    release before ``closed_at``, none backfilled), the row's last change stands for it."""
    if concern.status == "closed":
        end = local(concern.closed_at or concern.updated_at).date()
    else:
        end = today
    return (end - local(concern.flagged_at).date()).days


class CursorPosition(NamedTuple):
    """Where a page ended: the last row's flag time and id (and, sorted ``acute-first``,
    whether it was an acute case)."""

    flagged_at: datetime
    id: int
    acute_danger: bool


def encode_cursor(concern: Concern, sort: CaseSort) -> str:
    parts = [sort, concern.flagged_at.isoformat(), str(concern.id)]
    if sort == "acute-first":
        parts.append("1" if concern.acute_danger else "0")
    return base64.urlsafe_b64encode("|".join(parts).encode()).decode()


def decode_cursor(cursor: str, sort: CaseSort) -> CursorPosition:
    """The position ``encode_cursor`` wrote; anything else is an ``InvalidCursorError``.

    The id and the time are bounded here, not by the database: an id beyond ``MAX_ID`` or
    a time outside the calendar once in UTC failed in the query (a 500, not a 400).
    """
    try:
        kind, at, row_id, *group = base64.urlsafe_b64decode(cursor.encode()).decode().split("|")
        moment = datetime.fromisoformat(at)
        position = CursorPosition(moment.astimezone(UTC), int(row_id), group == ["1"])
    except (binascii.Error, UnicodeDecodeError, ValueError, OverflowError) as error:
        raise InvalidCursorError("the cursor is not one this endpoint handed out") from error
    if moment.tzinfo is None or not 1 <= position.id <= MAX_ID:
        raise InvalidCursorError("the cursor is not one this endpoint handed out")
    if kind != sort:
        raise InvalidCursorError("the cursor belongs to another sort order; start again")
    if group not in ((["0"], ["1"]) if sort == "acute-first" else ([],)):
        raise InvalidCursorError("the cursor is not one this endpoint handed out")
    return position


# -- who works on a case -------------------------------------------------------------------


class CaseNotFoundError(LookupError):
    """No case with this id in this hospital (another hospital's case is not found either)."""


class CaseConflict(Exception):  # noqa: N818 - a conflict is an outcome, not a failure
    """Someone else changed the case since the user loaded it (``reason="changed"``), or it
    is closed (``reason="closed"``); nothing was written. ``holder``: who has it now (a
    reference); ``holder_display``: their name, or the reference when no name is known."""

    def __init__(
        self,
        reason: Literal["changed", "closed"],
        holder: str | None,
        current_version: int,
        holder_name: str | None = None,
    ) -> None:
        self.reason = reason
        self.holder = holder
        self.holder_display = holder_name or holder
        self.current_version = current_version
        if reason == "closed":
            self.message = "This case is closed; nothing was changed."
        else:
            self.message = (
                "Someone else changed this case since you opened it (it is now assigned to "
                f"{self.holder_display or 'nobody'}). Nothing was overwritten; reload the case "
                "and try again."
            )
        super().__init__(self.message)

    @classmethod
    def of(cls, reason: Literal["changed", "closed"], row: Concern) -> CaseConflict:
        """The conflict with the case's row as it is now (its holder and version)."""
        return cls(reason, row.assigned_to, row.row_version, row.assigned_to_display)


class InvalidAssigneeError(ValueError):
    """The assignee is not a Practitioner or PractitionerRole reference."""


@dataclass(frozen=True)
class Assignment:
    """The case after a change: its patient (for the audit: ``patient_ref`` on the FHIR
    server ``fhir_base_url``) and its new version."""

    case_id: int
    fhir_base_url: str
    patient_ref: str
    flag_identifier: str
    assigned_to: str | None
    row_version: int


def assign_case(
    session: Session,
    tenant_id: int,
    case_id: int,
    *,
    assignee: str | None,
    assignee_name: str | None = None,
    expected_version: int,
    now: datetime,
) -> Assignment:
    """Assign an open case to ``assignee`` (None: unassign), if it is still at
    ``expected_version``. One conditional UPDATE: two concurrent changes cannot both win.

    ``assignee_name``: the assignee's name as the worklist shows it, None when not known.
    A social worker claiming a case knows her own name (her launch's); a colleague she
    assigns it to is named by reference only (the API takes no name for someone else, and
    nothing here looks colleagues up), so the worklist shows the reference until the case
    page finds the colleague's name on the FHIR server (``Casework.open_case``)."""
    if assignee is not None and not assignable(assignee):
        raise InvalidAssigneeError(
            "A case is assigned to a Practitioner or PractitionerRole, e.g. 'Practitioner/123'."
        )
    changed = session.execute(
        update(Concern)
        .where(
            Concern.tenant_id == tenant_id,
            Concern.id == case_id,
            Concern.status == "open",
            Concern.row_version == expected_version,
        )
        # the column's own + 1: a bound parameter of expected + 1 overflowed PostgreSQL's
        # INTEGER for expected = MAX_ID, even with no row at that version
        .values(
            assigned_to=assignee,
            assigned_to_display=worklist_display(assignee_name) if assignee_name else None,
            row_version=Concern.row_version + 1,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    if changed.rowcount != 1:  # type: ignore[attr-defined] # CursorResult of an UPDATE
        raise _why_unchanged(session, tenant_id, case_id)
    refs = session.execute(
        select(Concern.fhir_base_url, Concern.patient_ref, Concern.flag_identifier).where(
            Concern.id == case_id
        )
    ).one()  # the UPDATE above just matched the row
    return Assignment(
        case_id,
        refs.fhir_base_url,
        refs.patient_ref,
        refs.flag_identifier,
        assignee,
        expected_version + 1,
    )


def _why_unchanged(session: Session, tenant_id: int, case_id: int) -> Exception:
    row = session.scalar(
        select(Concern).where(Concern.tenant_id == tenant_id, Concern.id == case_id)
    )
    if row is None:
        return CaseNotFoundError(f"There is no case {case_id} in this hospital.")
    return CaseConflict.of("closed" if row.status != "open" else "changed", row)


# -- the input of steps 4, 5 and 6 -----------------------------------------------------------


class CatalogueError(ValueError):
    """A code that is not in the guide's catalogue or the hospital's partner directory."""


#: A child's reference in a body: one line, bounded like the encounter's.
_ChildRef = Annotated[OneLine, Field(max_length=200)]
#: The most factors a step 4 weighs: each factor of the guide's catalogue (CodeSystem
#: factor, 22 codes) once; a longer list could only repeat a code or name an unknown one.
MAX_FACTORS = 22


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    focus: list[_ChildRef] = Field(
        default_factory=list,
        max_length=MAX_CHILDREN,
        description="The children concerned (their refs), each once; empty: all.",
    )
    note: OptionalText = Field(None, max_length=4000)
    encounter_ref: OneLine | None = Field(
        None,
        max_length=200,
        pattern=rf"^Encounter/{FHIR_ID.pattern}$",
        description="The visit of the case's patient the step was recorded in, when not the "
        "one that raised the concern (Encounter/<id>); checked on the FHIR server.",
    )

    @field_validator("focus")
    @classmethod
    def _each_child_in_focus_once(cls, focus: list[str]) -> list[str]:
        return _once_each(focus, lambda child_ref: child_ref, "child")


class FactorInput(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    code: Code = Field(description="A code of the guide's factor catalogue (CodeSystem factor).")
    text: OptionalText = Field(None, max_length=1000, description="The specifics of this family.")


class HeardChildInput(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    child_ref: _ChildRef
    consent_given: bool
    own_say: OptionalText = Field(None, max_length=2000, description="The child's own say.")


class KeyPersonInput(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    role: KeyPersonRole = Field(description="partner | grandparent | other")
    text: OptionalText = Field(None, max_length=200, description="Who (required for `other`).")


class Step4Input(_Input):
    """Step 4: factors weighed, consultations, worries discussed (and the patient's
    explanation), children and adult key persons heard, the team and its decision."""

    decision: TeamDecision
    factors: list[FactorInput] = Field(default_factory=list, max_length=MAX_FACTORS)
    consultations: set[Consultation] = Field(default_factory=set)
    discussed_with_patient: bool = False
    children_heard: list[HeardChildInput] = Field(default_factory=list, max_length=MAX_CHILDREN)
    key_persons: list[KeyPersonInput] = Field(default_factory=list, max_length=20)
    patient_explanation: OptionalText = Field(None, max_length=4000)
    team_members: list[Annotated[TypedText, Field(max_length=200)]] = Field(
        default_factory=list, max_length=20, description="Who took part (names or roles)."
    )

    @field_validator("factors")
    @classmethod
    def _each_factor_once(cls, factors: list[FactorInput]) -> list[FactorInput]:
        return _once_each(factors, lambda factor: factor.code, "factor")

    @field_validator("children_heard")
    @classmethod
    def _each_child_once(cls, heard: list[HeardChildInput]) -> list[HeardChildInput]:
        return _once_each(heard, lambda child: child.child_ref, "child")

    def finding(self, author: str, at: datetime) -> Step4Decision:
        return Step4Decision(
            recorded_by=author,
            recorded_at=at,
            encounter_ref=self.encounter_ref,
            note=self.note,
            focus=tuple(self.focus),
            decision=self.decision,
            factors=tuple(_factor(f) for f in self.factors),
            consultations=frozenset(self.consultations),
            discussed_with_patient=self.discussed_with_patient,
            children_heard=tuple(
                HeardChild(h.child_ref, h.consent_given, h.own_say) for h in self.children_heard
            ),
            key_persons=tuple(KeyPerson(k.role, k.text) for k in self.key_persons),
            patient_explanation=self.patient_explanation,
            team_members=tuple(m for m in self.team_members if m),
        )


class AgreedActionInput(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    text: TypedText = Field(max_length=1000)
    follow_up_on: date | None = Field(
        None, description="When to check on it: from the day of the save to a year after it."
    )


class Step5Input(_Input):
    """Step 5: the progress, the actions taken and agreed, supporting services,
    consultations and the next follow-up; ``note`` is the progress note."""

    progress: ProgressAssessment
    actions: set[SafetyAction] = Field(default_factory=set)
    services: set[ReferralTarget] = Field(default_factory=set)
    consultations: set[Consultation] = Field(default_factory=set)
    agreed_actions: list[AgreedActionInput] = Field(default_factory=list, max_length=50)
    next_follow_up: date | None = Field(
        None,
        description="The next check, from the day of the save to a year after it; keeps "
        "step 5 open and shows on the worklist.",
    )

    def finding(self, author: str, at: datetime) -> Step5Progress:
        return Step5Progress(
            recorded_by=author,
            recorded_at=at,
            encounter_ref=self.encounter_ref,
            note=self.note,
            focus=tuple(self.focus),
            progress=self.progress,
            actions=frozenset(self.actions),
            services=frozenset(self.services),
            consultations=frozenset(self.consultations),
            agreed_actions=tuple(AgreedAction(a.text, a.follow_up_on) for a in self.agreed_actions),
            next_follow_up=self.next_follow_up,
        )


class ContactInput(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    on: date = Field(description="When: at most a year before the day of the save, not after it.")
    person: TypedText = Field(max_length=200, description="Whom the hospital spoke to or wrote to.")
    channel: ContactChannel = Field(description="phone | letter | email | other")


class Step6Input(_Input):
    """Step 6: the facility from the hospital's partner directory, how it was involved and
    contacted, and what the hospital agreed to do itself (``follow_up_actions``)."""

    partner_id: Code = Field(description="The VK, OCJ, parket or police entry of the directory.")
    with_cooperation: bool
    patient_informed: bool
    not_informed_reason: OptionalText = Field(None, max_length=2000)
    follow_up_actions: list[Annotated[TypedText, Field(max_length=1000)]] = Field(
        default_factory=list, max_length=50
    )
    contact: ContactInput | None = None

    def finding(self, author: str, at: datetime, directory: PartnerDirectory) -> Step6Referral:
        referral = Step6Referral(
            recorded_by=author,
            recorded_at=at,
            encounter_ref=self.encounter_ref,
            note=self.note,
            focus=tuple(self.focus),
            target=self.partner(directory).type,
            with_cooperation=self.with_cooperation,
            patient_informed=self.patient_informed,
            not_informed_reason=self.not_informed_reason,
            follow_up_actions=tuple(a for a in self.follow_up_actions if a),
            contact=None
            if self.contact is None
            else FacilityContact(self.contact.on, self.contact.person, self.contact.channel),
        )
        check_not_informed_reason(referral)
        return referral

    def partner(self, directory: PartnerDirectory) -> Partner:
        """The facility referred to; only step 6 targets of this hospital's directory."""
        partner = directory.get(self.partner_id)
        if partner is None or partner.type not in STEP_6_TARGETS:
            targets = ", ".join(p.id for p in directory.partners if p.type in STEP_6_TARGETS)
            raise CatalogueError(
                f"'{self.partner_id}' is not a VK, OCJ, parket or police entry of this "
                f"hospital's partner directory. Choose one of: {targets or 'none configured'}."
            )
        return partner


_Item = TypeVar("_Item")


def _once_each(items: list[_Item], key: Callable[[_Item], str], what: str) -> list[_Item]:
    """``items`` when no two share a ``key``. A factor or a child given twice would be
    recorded twice (a factor or a child heard each time with other specifics, and neither
    is the one meant): the sender says which (a 422 naming the field), rather than this
    service choosing."""
    seen: set[str] = set()
    for item in items:
        if key(item) in seen:
            raise ValueError(f"the {what} '{key(item)}' is given twice; give each {what} once")
        seen.add(key(item))
    return items


def _factor(given: FactorInput) -> Factor:
    known = {f.code: f for f in terminology.factors()}
    entry = known.get(given.code)
    if entry is None:
        raise CatalogueError(
            f"'{given.code}' is not a factor of the catalogue; use a catalogue code and "
            "describe the specifics in the text."
        )
    return Factor(given.code, FactorKind(entry.kind), given.text)
